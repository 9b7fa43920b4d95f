"""``textgan report``: metrics.jsonl as a table, one row per evaluation."""

import json

import pytest

from textgan.cli import main
from textgan.commands.report import best_row, read_records, table_rows


def _write(path, records, tail=""):
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (path / "metrics.jsonl").write_text(text, encoding="utf-8")
    return path


RECORDS = [
    {"step": 10, "phase": "pretrain", "nll_train": 3.0, "time": 1000.0},
    {"step": 20, "phase": "pretrain", "nll_train": 2.0, "time": 1060.0},
    {"step": 20, "phase": "pretrain", "nll_test": 2.5, "bleu2": 0.5, "unique": 1.0,
     "time": 1070.0},
    {"step": 10, "phase": "adversarial", "g_entropy": 0.75, "fake_max": 0.8, "tau": 0.9,
     "time": 1120.0},
    {"step": 20, "phase": "adversarial", "g_entropy": 0.25, "fake_max": 0.9, "tau": 0.8,
     "time": 1180.0},
    {"step": 20, "phase": "adversarial", "nll_test": 3.0, "bleu2": 0.7, "unique": 0.5,
     "tau": 0.8, "time": 1190.0},
    {"step": 30, "phase": "adversarial", "g_entropy": 0.5, "fake_max": 1.0, "tau": 0.7,
     "time": 1240.0},
    {"step": 30, "phase": "adversarial", "nll_test": 3.5, "bleu2": 0.6, "unique": 0.25,
     "tau": 0.7, "time": 1250.0},
]


def test_rows_are_evaluations_and_training_stats_are_window_means():
    keys, rows = table_rows(RECORDS, ["bleu2", "g_entropy", "nll_train", "tau"], "unique")
    assert keys == ["bleu2", "g_entropy", "nll_train", "tau"]
    got = [(r["phase"], r["step"], r["bleu2"], r["g_entropy"], r["nll_train"], r["tau"])
           for r in rows]
    assert got == [
        ("pretrain", 20, 0.5, None, 2.5, None),  # nll_train: mean of steps 10 and 20
        ("adversarial", 20, 0.7, 0.5, None, 0.8),  # tau: the evaluation record's own
        ("adversarial", 30, 0.6, 0.5, None, 0.7),  # g_entropy: step 30 only, (20, 30]
    ]


def test_default_keys_are_the_evaluation_keys_and_phase_filters():
    keys, rows = table_rows(RECORDS, None, "unique", phase="adversarial")
    assert keys == ["nll_test", "bleu2", "unique", "tau"]
    assert [r["step"] for r in rows] == [20, 30]


def test_rows_key_picks_other_records():
    _, rows = table_rows(RECORDS, ["g_entropy"], "fake_max")
    assert [(r["phase"], r["step"], r["g_entropy"]) for r in rows] == [
        ("adversarial", 10, 0.75), ("adversarial", 20, 0.25), ("adversarial", 30, 0.5)]


def test_a_rewritten_record_wins():
    again = RECORDS + [{"step": 30, "phase": "adversarial", "nll_test": 3.25, "bleu2": 0.65,
                        "unique": 0.3, "tau": 0.7, "time": 2000.0}]
    _, rows = table_rows(again, ["nll_test"], "unique")
    assert rows[-1]["nll_test"] == 3.25 and len(rows) == 3


def test_best_row_direction():
    _, rows = table_rows(RECORDS, None, "unique")
    assert best_row(rows, "nll_test")[1]["step"] == 20  # lower is better
    assert best_row(rows, "bleu2")[1]["step"] == 20  # higher is better: 0.7
    assert best_row(rows, "bleu2:min")[1]["phase"] == "pretrain"
    assert best_row(rows, "unique")[1]["phase"] == "pretrain"
    assert best_row(rows, "self_bleu4") == ("self_bleu4", None)
    with pytest.raises(ValueError, match="KEY:min or KEY:max"):
        best_row(rows, "bleu2:lowest")


def test_partial_last_line_is_left_out_and_bad_lines_are_errors(tmp_path):
    run = _write(tmp_path / "r", RECORDS, tail='{"step": 40, "phase": "adv')
    assert len(read_records(run)) == len(RECORDS)
    (run / "metrics.jsonl").write_text(json.dumps(RECORDS[0]) + "\nnot json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON record"):
        read_records(run)
    (run / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match="'step' and 'phase'"):
        read_records(run)


def test_cli_markdown_table_with_best_and_minutes(tmp_path, capsys):
    run = _write(tmp_path / "r", RECORDS)
    assert main(["report", str(run), "--keys", "bleu2,g_entropy", "--best", "bleu2",
                 "--minutes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "| phase | step | min | bleu2 | g_entropy |",
        "|---|---|---|---|---|",
        "| pretrain | 20 | 1.2 | 0.5000 |  |",
        "| adversarial | 20 | 3.2 | 0.7000 | 0.5000 |",
        "| adversarial | 30 | 4.2 | 0.6000 | 0.5000 |",
        f"best bleu2 of {run}: 0.7000 at adversarial step 20",
    ]


def test_cli_several_runs_and_csv(tmp_path, capsys):
    a = _write(tmp_path / "a", RECORDS)
    b = _write(tmp_path / "b", RECORDS[:3])
    assert main(["report", str(a), str(b), "--keys", "nll_test", "--phase", "pretrain",
                 "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "run,phase,step,nll_test", f"{a},pretrain,20,2.5000", f"{b},pretrain,20,2.5000"]


def test_cli_errors_name_the_argument_and_suggest(tmp_path, capsys):
    run = _write(tmp_path / "r", RECORDS)
    assert main(["report", str(run), "--keys", "bleu"]) == 2
    err = capsys.readouterr().err
    assert "metric 'bleu' is in no run" in err and "did you mean 'bleu2'" in err
    assert main(["report", str(run), "--phase", "adversarail"]) == 2
    assert "did you mean 'adversarial'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    assert main(["report", str(_write(tmp_path / "old", RECORDS[:2]))]) == 2  # no evaluation
    assert "choose the rows with --rows KEY" in capsys.readouterr().err
    assert main(["report", str(run), "--keys", ","]) == 2
    assert "`--keys` is empty" in capsys.readouterr().err


def test_cli_a_key_of_one_run_only_leaves_the_others_blank_and_plots(tmp_path, capsys):
    a = _write(tmp_path / "a", RECORDS)
    b = _write(tmp_path / "b", RECORDS[:3])  # MLE only: no g_entropy
    png = tmp_path / "curve.png"
    assert main(["report", str(a), str(b), "--keys", "g_entropy,nll_test", "--phase",
                 "adversarial", "--plot", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2:] == [f"| {a} | adversarial | 20 | 0.5000 | 3.0000 |",
                       f"| {a} | adversarial | 30 | 0.5000 | 3.5000 |",
                       f"wrote {png}"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(b), "--keys", "g_entropy"]) == 2  # in no run given
    assert "metric 'g_entropy' is in no run" in capsys.readouterr().err

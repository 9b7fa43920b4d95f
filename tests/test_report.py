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
    {"step": 10, "phase": "adversarial", "g_entropy": 0.75, "fake_max": 0.75, "tau": 0.9,
     "time": 1120.0},
    {"step": 20, "phase": "adversarial", "g_entropy": 0.25, "fake_max": 1.0, "tau": 0.8,
     "time": 1180.0},
    {"step": 20, "phase": "adversarial", "nll_test": 3.0, "bleu2": 0.7, "unique": 0.5,
     "tau": 0.8, "time": 1190.0},
    {"step": 30, "phase": "adversarial", "g_entropy": 0.5, "fake_max": 0.5, "tau": 0.7,
     "time": 1240.0},
    {"step": 30, "phase": "adversarial", "nll_test": 3.5, "bleu2": 0.6, "unique": 0.25,
     "tau": 0.7, "time": 1250.0},
]


def test_rows_are_evaluations_and_training_stats_are_window_means():
    keys, rows = table_rows(RECORDS, ["bleu2", "fake_max", "nll_train", "tau"], "unique")
    assert keys == ["bleu2", "fake_max", "nll_train", "tau"]
    got = [(r["phase"], r["step"], r["bleu2"], r["fake_max"], r["nll_train"], r["tau"])
           for r in rows]
    assert got == [
        ("pretrain", 20, 0.5, None, 2.5, None),  # nll_train: mean of steps 10 and 20
        ("adversarial", 20, 0.7, 0.875, None, 0.8),  # tau: the evaluation record's own
        ("adversarial", 30, 0.6, 0.5, None, 0.7),  # fake_max: step 30 only, (20, 30]
    ]


def test_default_keys_are_the_evaluation_keys_and_phase_filters():
    keys, rows = table_rows(RECORDS, None, "unique", phase="adversarial")
    assert keys == ["nll_test", "bleu2", "unique", "tau"]
    assert [r["step"] for r in rows] == [20, 30]


def test_rows_key_picks_other_records():
    _, rows = table_rows(RECORDS, ["g_entropy"], "fake_max")
    assert [(r["phase"], r["step"], r["g_entropy"]) for r in rows] == [
        ("adversarial", 10, 0.75), ("adversarial", 20, 0.25), ("adversarial", 30, 0.5)]


def test_a_rewritten_record_replaces_the_one_with_the_same_keys():
    again = RECORDS + [
        {"step": 30, "phase": "adversarial", "nll_test": 3.25, "bleu2": 0.65, "unique": 0.3,
         "tau": 0.7, "time": 2000.0},
        {"step": 30, "phase": "adversarial", "g_entropy": 0.125, "fake_max": 0.5, "tau": 0.7,
         "time": 1990.0},
        {"step": 20, "phase": "adversarial", "nll_test": 9.0, "unique": 0.1, "time": 2100.0}]
    _, rows = table_rows(again, ["nll_test", "bleu2", "g_entropy"], "unique")
    assert [(r["step"], r["nll_test"], r["bleu2"], r["g_entropy"]) for r in rows[1:]] == [
        (20, 9.0, 0.7, 0.5),  # other keys: a second record, merged with the first
        (30, 3.25, 0.65, 0.125)]
    shuffled = [RECORDS[i] for i in (0, 7, 6, 5, 1, 4, 3, 2)]  # pretrain first still
    assert table_rows(shuffled, ["fake_max"], "unique")[1] == table_rows(
        RECORDS, ["fake_max"], "unique")[1]


def test_best_row_direction():
    _, rows = table_rows(RECORDS, None, "unique")
    assert best_row(rows, "nll_test")[1]["step"] == 20  # lower is better
    assert best_row(rows, "bleu2")[1]["bleu2"] == 0.7  # higher is better
    assert best_row(rows, "bleu2:min")[1]["phase"] == "pretrain"
    assert best_row(rows, "unique")[1]["phase"] == "pretrain"
    assert best_row(rows, "self_bleu4") == ("self_bleu4", None)
    with pytest.raises(ValueError, match="KEY:min or KEY:max"):
        best_row(rows, "bleu2:lowest")


def test_partial_last_line_is_left_out_and_bad_lines_are_errors(tmp_path):
    run = _write(tmp_path / "r", RECORDS, tail='{"step": 40, "phase": "adv')
    assert len(read_records(run)) == len(RECORDS)
    run = _write(tmp_path / "r", RECORDS, tail='{"step": 40, "phase": "adversarial"}')
    assert read_records(run)[-1] == {"step": 40, "phase": "adversarial"}  # whole: kept
    (run / "metrics.jsonl").write_text(json.dumps(RECORDS[0]) + "\nnot json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON record"):
        read_records(run)
    (run / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match="'step' and 'phase'"):
        read_records(run)


def test_cli_markdown_table_with_best_and_minutes(tmp_path, capsys):
    run = _write(tmp_path / "r", RECORDS)
    assert main(["report", str(run), "--keys", "bleu2,g_entropy,bleu2", "--best", "bleu2",
                 "--minutes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "| phase | step | minutes | bleu2 | g_entropy |",
        "|---|---|---|---|---|",
        "| pretrain | 20 | 1.2 | 0.5000 |  |",
        "| adversarial | 20 | 3.2 | 0.7000 | 0.5000 |",
        "| adversarial | 30 | 4.2 | 0.6000 | 0.5000 |",
        f"best bleu2 of {run}: 0.7000 at adversarial step 20 (g_entropy=0.5000)",
    ]


def test_cli_best_of_a_key_that_is_not_a_column(tmp_path, capsys):
    run = _write(tmp_path / "r", RECORDS)
    assert main(["report", str(run), "--keys", "bleu2", "--best", "nll_test"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"best nll_test of {run}: 2.5000 at pretrain step 20 (bleu2=0.5000)")


def test_cli_several_runs_and_csv(tmp_path, capsys):
    a = _write(tmp_path / "a", RECORDS)
    b = _write(tmp_path / "b", RECORDS[:3])
    b = _write(tmp_path / "b,c", [{**r, "lr": 3e-6} for r in RECORDS[:3]])
    assert main(["report", str(a), str(b), "--keys", "nll_test,lr", "--phase", "pretrain",
                 "--csv", "--best", "nll_test"]) == 0
    got = capsys.readouterr()
    assert got.out.splitlines() == [  # full precision, quoted; the best lines on stderr
        "run,phase,step,nll_test,lr", f"{a},pretrain,20,2.5,", f'"{b}",pretrain,20,2.5,3e-06']
    assert got.err.count("best nll_test of") == 2
    assert main(["report", str(b), "--keys", "lr"]) == 0
    assert "| pretrain | 20 | 3e-06 |" in capsys.readouterr().out


def test_cli_errors_name_the_argument_and_suggest(tmp_path, capsys):
    run = _write(tmp_path / "r", RECORDS)
    assert main(["report", str(run), "--keys", "bleu"]) == 2
    err = capsys.readouterr().err
    assert "`--keys` 'bleu' is not a metric of any run" in err and "did you mean 'bleu2'" in err
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
    assert "`--keys` 'g_entropy' is not a metric of any run" in capsys.readouterr().err


def test_cli_empty_tables_and_bad_plot_paths_are_errors(tmp_path, capsys):
    run = _write(tmp_path / "r", RECORDS)
    assert main(["report", str(run), "--phase", "adversarial", "--keys", "nll_train"]) == 2
    assert "`--keys` 'nll_train' is not a metric of phase 'adversarial'" in (
        capsys.readouterr().err)
    assert main(["report", str(run), "--phase", "pretrain", "--rows", "tau"]) == 2
    assert "`--rows` 'tau' is not a metric of phase 'pretrain'" in capsys.readouterr().err
    assert main(["report", str(run), "--plot", str(tmp_path / "no" / "p.png")]) == 2
    assert "`--plot`" in capsys.readouterr().err
    assert main(["report", str(run), "--plot", str(tmp_path / "p.txt")]) == 2
    assert "must be a .png file" in capsys.readouterr().err
    assert main(["report", str(_write(tmp_path / "e", []))]) == 2
    assert "has no records yet" in capsys.readouterr().err
    assert main(["report", str(run), "--best", "bleu2:top"]) == 2
    assert "KEY:min or KEY:max" in capsys.readouterr().err

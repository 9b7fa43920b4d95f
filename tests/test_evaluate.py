"""textgan.evaluate: the ``eval`` subcommand on files and (with a fake handle) on runs."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from textgan import evaluate as E
from textgan import metrics as M
from textgan.evaluate import add_arguments, run

HYP = ["a cat sits on the mat", "the dog runs in the park", "a a a a", "the cat"]
REF = ["the cat sat on the mat", "a dog runs in a park", "there is a cat on the mat",
       "two dogs play in the park", "a man rides a wave"]


def parse(*argv):
    parser = argparse.ArgumentParser(prog="textgan eval")
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def files(tmp_path):
    hyp, ref, train = tmp_path / "hyp.txt", tmp_path / "ref.txt", tmp_path / "train.txt"
    hyp.write_text("\n".join(HYP) + "\n", encoding="utf-8")
    ref.write_text("\n".join(REF) + "\n", encoding="utf-8")
    train.write_text("the cat\nsomething else\n", encoding="utf-8")
    return hyp, ref, train


def test_file_mode_json_values(files, capsys, tmp_path):
    hyp, ref, train = files
    out = tmp_path / "out" / "m.json"
    args = parse("--hyp", str(hyp), "--ref", str(ref), "--train", str(train), "--json",
                 "--metrics", "bleu2,bleu4,Self-BLEU3,distinct2,mean_length,novelty",
                 "--out", str(out))
    assert run(args) == 0
    got = json.loads(capsys.readouterr().out)
    assert list(got) == ["bleu2", "bleu4", "self_bleu3", "distinct2", "mean_length", "novelty"]
    hyps, refs = [s.split() for s in HYP], [s.split() for s in REF]
    assert got["bleu2"] == M.bleu(hyps, refs, 2)
    assert got["bleu4"] == M.bleu(hyps, refs, 4)
    assert got["self_bleu3"] == M.self_bleu(hyps, 3)
    assert got["distinct2"] == M.distinct_n(hyps, 2)
    assert got["mean_length"] == pytest.approx(4.5)
    assert got["novelty"] == pytest.approx(3 / 4)
    assert json.loads(out.read_text()) == got


def test_file_mode_limits_table_and_sacrebleu(files, capsys):
    hyp, ref, _ = files
    args = parse("--hyp", str(hyp), "--ref", str(ref), "--num-hyps", "2", "--num-refs", "2",
                 "--metrics", "bleu3,sacrebleu")
    assert run(args) == 0
    text = capsys.readouterr().out
    hyps, refs = [s.split() for s in HYP[:2]], [s.split() for s in REF[:2]]
    line = next(ln for ln in text.splitlines() if ln.startswith("bleu3"))
    assert float(line.split("|")[1]) == pytest.approx(M.bleu(hyps, refs, 3), abs=1e-6)
    assert "sacrebleu_signature" in text and "nrefs:1" in text


def test_file_mode_default_metrics(files, capsys):
    hyp, ref, _ = files
    assert run(parse("--hyp", str(hyp), "--ref", str(ref), "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == set(E.DEFAULT_FILE_METRICS.split(","))


def test_file_mode_errors(files, tmp_path):
    hyp, ref, _ = files
    with pytest.raises(ValueError, match="does not exist"):
        run(parse("--hyp", str(tmp_path / "nope.txt"), "--ref", str(ref)))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        run(parse("--hyp", str(hyp), "--ref", str(empty)))
    with pytest.raises(ValueError, match="did you mean bleu4"):
        run(parse("--hyp", str(hyp), "--ref", str(ref), "--metrics", "bleu4,blue4"))
    with pytest.raises(ValueError, match="1..5"):
        run(parse("--hyp", str(hyp), "--ref", str(ref), "--metrics", "bleu7"))
    with pytest.raises(ValueError, match="--train"):
        run(parse("--hyp", str(hyp), "--ref", str(ref), "--metrics", "novelty"))
    with pytest.raises(ValueError, match="parallel"):
        run(parse("--hyp", str(hyp), "--ref", str(ref), "--metrics", "sacrebleu"))
    with pytest.raises(ValueError, match="--ref"):
        run(parse("--hyp", str(hyp)))
    with pytest.raises(ValueError, match="RUN"):
        run(parse("--hyp", str(hyp), "--ref", str(ref), "--temperature-sweep", "1.0"))


# --------------------------------------------------------------------------------------------
# Run mode with a fake handle
# --------------------------------------------------------------------------------------------


class FakeHandle:
    """Lower temperature -> fewer distinct words (higher BLEU and Self-BLEU)."""

    def __init__(self, oracle=False):
        self.is_oracle = oracle
        self.references = [s.split() for s in REF]
        self.calls = []

    def sample(self, n, tau, seed):
        import random

        self.calls.append((n, tau, seed))
        rng = random.Random(seed)
        words = "a the cat dog mat park on in runs sat is two man wave".split()
        k = max(2, int(len(words) * min(tau, 1.5) / 1.5))
        if self.is_oracle:
            return [[str(rng.randrange(k)) for _ in range(5)] for _ in range(n)]
        return [[rng.choice(words[:k]) for _ in range(rng.randint(3, 7))] for _ in range(n)]

    def nll_test(self, tau):
        return 2.0 + (tau - 1.0) ** 2

    def nll_oracle(self, samples):
        return None if not self.is_oracle else 1.0 + len({t for s in samples for t in s}) / 10


@pytest.mark.parametrize("oracle", [False, True])
def test_temperature_sweep_writes_csv_json_png(tmp_path, monkeypatch, capsys, oracle):
    handle = FakeHandle(oracle)
    monkeypatch.setattr(E, "_load_handle", lambda path: handle)
    out = tmp_path / "sweep"
    args = parse(str(tmp_path), "--temperature-sweep", "0.6,1.0,1.5", "--n", "20",
                 "--out", str(out))
    assert run(args) == 0
    assert [c[1] for c in handle.calls] == [0.6, 1.0, 1.5]
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["temperature"] for r in rows] == [0.6, 1.0, 1.5]
    keys = ["nll_oracle", "nll_test"] if oracle else ["bleu4", "self_bleu4", "nll_test"]
    assert all(set(r) == {"temperature", *keys} for r in rows)
    if not oracle:
        samples = handle.sample(20, 1.0, 0)
        assert rows[1]["bleu4"] == M.bleu(samples, handle.references, 4)
        assert rows[1]["self_bleu4"] == M.self_bleu(samples, 4)
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and float(table[2]["nll_test"]) == pytest.approx(2.25)
    png = (out / "quality_diversity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_run_mode_single_temperature(tmp_path, monkeypatch, capsys):
    handle = FakeHandle(False)
    monkeypatch.setattr(E, "_load_handle", lambda path: handle)
    assert run(parse(str(tmp_path), "--n", "10", "--tau", "0.8", "--json",
                     "--out", str(tmp_path / "ev"))) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"bleu2", "bleu3", "bleu4", "bleu5", "self_bleu4", "nll_test"}
    assert handle.calls == [(10, 0.8, 0)]
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"] == got
    with pytest.raises(ValueError, match="tau"):
        run(parse(str(tmp_path), "--tau", "0"))
    with pytest.raises(ValueError, match="not both"):
        run(parse(str(tmp_path), "--hyp", "x.txt"))


def test_plot_skips_missing_values(tmp_path):
    rows = [{"temperature": 1.0, "bleu4": 0.3, "self_bleu4": None}]
    path = E.plot_quality_diversity(rows, tmp_path / "p.png", "bleu4", "self_bleu4")
    assert path.exists()
    with pytest.raises(ValueError, match="> 0"):
        E.parse_temperatures("1.0,-1")

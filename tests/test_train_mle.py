"""MLE trainer through the real CLI entry point: metrics, checkpoints, resume, sampling."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from textgan.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "mle" / "oracle.yaml")
TINY = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=128",
        "data.num_test=64", "generator.embed_dim=8", "generator.hidden_dim=8",
        "train.batch_size=16", "train.log_every=1", "eval.every=3", "eval.num_samples=32",
        "eval.batch_size=32"]


def _train(out, *extra):
    return main(["train", RECIPE, f"output_dir={out}", *TINY, *extra])


def _records(out, phase="mle", key="nll_train"):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["phase"] == phase and key in r]


def test_mle_run_writes_metrics_checkpoints_and_samples(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "train.steps=6", "train.checkpoint_every=2", "train.keep_last=2") == 0
    losses = _records(out)
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(v)) for _, v in losses)
    evals = _records(out, key="nll_oracle")
    assert [s for s, _ in evals] == [3, 6]
    assert _records(out, key="nll_test")
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_4", "step_6"]  # keep_last=2, no temporary directories left
    assert (out / "checkpoints" / "step_6" / "config.yaml").exists()
    assert (out / "samples" / "mle_step6.txt").exists()
    assert (out / "config.yaml").exists() and (out / "meta.json").exists()


def _subnormal_survives() -> bool:
    return (torch.tensor([1e-39]) * 1.0).item() != 0.0


@pytest.mark.parametrize("flush", [True, False])
def test_training_sets_flush_denormal_from_the_recipe(tmp_path, flush):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal)")
    assert _subnormal_survives()
    extra = [] if flush else ["flush_denormal=false"]  # the default is true
    assert _train(tmp_path / "run", "train.steps=1", *extra) == 0
    assert _subnormal_survives() is not flush
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert f"flush_denormal: {str(flush).lower()}" in cfg


def test_mle_learns(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "train.steps=60", "eval.every=60", "train.lr=0.02") == 0
    losses = [v for _, v in _records(out)]
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.3


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full, "train.steps=8", "train.checkpoint_every=4") == 0
    assert _train(part, "train.steps=4", "train.checkpoint_every=4") == 0
    # continue the 4-step run to 8 steps from its checkpoint
    assert _train(part, "train.steps=8", "train.checkpoint_every=4", "resume=auto") == 0
    a, b = dict(_records(full)), dict(_records(part))
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bit-exact on CPU


def test_grad_accumulation_is_equivalent(tmp_path):
    one, acc = tmp_path / "one", tmp_path / "acc"
    assert _train(one, "train.steps=5") == 0
    assert _train(acc, "train.steps=5", "train.grad_accum=4") == 0
    a, b = [v for _, v in _records(one)], [v for _, v in _records(acc)]
    assert a == pytest.approx(b, rel=1e-4)


def test_corrupt_checkpoint_is_skipped_and_missing_is_an_error(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="textgan")
    out = tmp_path / "run"
    assert _train(out, "train.steps=4", "train.checkpoint_every=2") == 0
    # corrupt the newest checkpoint: resume=auto falls back to the previous one
    (out / "checkpoints" / "step_4" / "trainer_state.pt").write_bytes(b"garbage")
    assert _train(out, "train.steps=4", "resume=auto") == 0
    assert "skipping incomplete or corrupted checkpoint" in caplog.text
    assert "resumed from" in caplog.text and "step_2" in caplog.text
    empty = tmp_path / "empty"
    assert _train(empty, "train.steps=2", "resume=auto") == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_resume_with_other_vocabulary_or_shape_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "train.steps=2") == 0
    assert _train(out, "train.steps=4", "resume=auto", "data.vocab_size=31") == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
    assert _train(out, "train.steps=4", "resume=auto", "generator.hidden_dim=9") == 2
    assert "generator mismatch" in capsys.readouterr().err


def test_sample_command_is_reproducible(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "train.steps=2") == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "5", "--seed", "3", "--out",
                 str(tmp_path / "a.txt")]) == 0
    assert main(["sample", str(out / "checkpoints" / "step_2"), "--n", "5", "--seed", "3",
                 "--out", str(tmp_path / "b.txt")]) == 0
    a = (tmp_path / "a.txt").read_text().splitlines()
    assert a == (tmp_path / "b.txt").read_text().splitlines()
    assert len(a) == 5 and all(len(line.split()) == 6 for line in a)
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_text_corpus_mle_reports_bleu(tmp_path, tiny_corpus_dir):
    out = tmp_path / "run"
    code = main(["train", str(REPO / "recipes" / "mle" / "coco.yaml"), f"output_dir={out}",
                 f"data.path={tiny_corpus_dir}", "data.max_len=12", "generator.embed_dim=8",
                 "generator.hidden_dim=8", "train.steps=3", "train.batch_size=16",
                 "eval.every=3", "eval.num_samples=20"])
    assert code == 0
    assert _records(out, key="bleu2") and _records(out, key="nll_test")
    assert (out / "vocab.json").exists()
    lines = (out / "samples" / "mle_step3.txt").read_text().splitlines()
    assert len(lines) == 20 and "<pad>" not in " ".join(lines)


def test_novelty_is_the_share_of_samples_not_copied_from_the_training_set(tmp_path):
    """A corpus of four training sentences, learnt by heart: most samples copy one of them,
    and ``novelty`` is the share of the written samples that are not a training sentence."""
    data = tmp_path / "four"
    data.mkdir()
    four = ["a man rides a horse .", "two dogs play in the snow .", "a red bus on a street .",
            "a cat sleeps on a bed ."]
    (data / "train.txt").write_text("\n".join(four * 16) + "\n", encoding="utf-8")
    (data / "test.txt").write_text("a man rides a bus .\ntwo cats play .\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(REPO / "recipes" / "mle" / "coco.yaml"), f"output_dir={out}",
                 f"data.path={data}", "data.max_len=8", "generator.embed_dim=16",
                 "generator.hidden_dim=16", "train.steps=60", "train.batch_size=16",
                 "train.lr=0.05", "eval.every=60", "eval.num_samples=100",
                 "eval.self_bleu=[]", "eval.bleu=[2]"]) == 0
    (step, novelty), = _records(out, key="novelty")
    samples = (out / "samples" / "mle_step60.txt").read_text(encoding="utf-8").splitlines()
    assert len(samples) == 100
    copies = sum(line in four for line in samples)
    assert (step, novelty) == (60, pytest.approx(1 - copies / 100, abs=1e-6))
    assert copies >= 50  # learnt by heart: most samples are training sentences


def test_interrupt_saves_a_checkpoint(tmp_path, monkeypatch):
    from textgan.train import common

    real = common.make_run

    def make_run(cfg):
        run = real(cfg)
        run.interrupted = True  # as if SIGTERM arrived before the first step finished
        return run

    monkeypatch.setattr(common, "make_run", make_run)
    out = tmp_path / "run"
    assert _train(out, "train.steps=5") == 130
    assert (out / "checkpoints" / "step_1").is_dir()
    shutil.rmtree(out)


def test_eval_command_on_a_run_and_temperature_sweep(tmp_path, tiny_corpus_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", str(REPO / "recipes" / "mle" / "coco.yaml"), f"output_dir={out}",
                 f"data.path={tiny_corpus_dir}", "data.max_len=12", "generator.embed_dim=8",
                 "generator.hidden_dim=8", "train.steps=2", "train.batch_size=16",
                 "eval.every=2", "eval.num_samples=10"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "30", "--json"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("{"):])
    assert {"bleu2", "bleu4", "self_bleu4", "nll_test"} <= set(result)
    assert 0.0 <= result["bleu2"] <= 1.0 and result["nll_test"] > 0
    sweep = tmp_path / "sweep"
    assert main(["eval", str(out), "--n", "30", "--temperature-sweep", "0.7,1.3",
                 "--out", str(sweep)]) == 0
    rows = json.loads((sweep / "sweep.json").read_text())
    assert [r["temperature"] for r in rows] == [0.7, 1.3]
    assert (sweep / "quality_diversity.png").stat().st_size > 1000


def _word_tokenizer(path, sentences):
    """A tiny word-level HF tokenizer built offline and saved to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in sentences for w in s.split()})
    vocab = {w: i for i, w in enumerate(["[UNK]", "[EOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                            eos_token="[EOS]").save_pretrained(str(path))


def test_gpt2_with_hf_tokenizer_corpus_trains_and_samples(tmp_path, tiny_corpus_dir, capsys):
    lines = (tiny_corpus_dir / "train.txt").read_text().splitlines()
    _word_tokenizer(tmp_path / "tok", lines + (tiny_corpus_dir / "test.txt").read_text().split())
    out = tmp_path / "run"
    code = main(["train", str(REPO / "recipes" / "mle" / "coco_gpt2.yaml"), f"output_dir={out}",
                 f"data.path={tiny_corpus_dir}", f"data.tokenizer={tmp_path / 'tok'}",
                 "data.max_len=12",
                 "generator.model_config={n_layer: 1, n_head: 2, n_embd: 16, n_positions: 16}",
                 "train.steps=2", "train.batch_size=16", "eval.every=2", "eval.num_samples=8"])
    assert code == 0
    assert _records(out, key="bleu2") and _records(out, key="nll_test")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pad"] != meta["eos"] and meta["vocab_size"] >= 3
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "3", "--seed", "1"]) == 0
    words = capsys.readouterr().out.split()
    assert words and not any(w.startswith("[") for w in words)
    assert all(w in set(" ".join(lines).split()) | {"[UNK]"} for w in words)


def test_bench_mle_quick_rows():
    """``textgan bench mle --quick``: one row per generator on the oracle's shape, and the RMC
    as the COCO recipe builds it (``relgan_code``) on a longer sequence."""
    from textgan.bench.mle import CONFIGS, run

    rows = run(quick=True)
    coco = "rmc 1x2x256 relgan_code, COCO fixed length"
    assert [r["generator"] for r in rows] == [*CONFIGS, coco]
    assert [r["T"] for r in rows] == [10, 10, 10, 12]
    assert all(r["steps/s"] > 0 and r["tokens/s"] == r["steps/s"] * r["B"] * r["T"] for r in rows)
    # the relgan_code RMC has no qkv / gate biases: fewer parameters than the paper variant
    assert rows[3]["params"] < rows[1]["params"]

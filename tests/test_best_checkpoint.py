"""``eval.best``: every trainer keeps the generator of its best evaluation so far in
``<output_dir>/checkpoints/best``, which survives stops and resumes exactly, is never taken by
``resume=auto``, and goes away when the run is rewound past it."""

import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file
from test_fault_tolerance import _ckpts, _rows, _signal_on_call, _state, _train

from textgan.cli import main
from textgan.commands import report
from textgan.train import common

# every step evaluated and checkpointed: on this tiny oracle run NLL_oracle is best at pre-training
# step 1, then 2, then at adversarial step 3 (checkpoint index 3 + 3 = 6)
BEST = ["eval.best=nll_oracle", "eval.every=1", "train.checkpoint_every=1",
        "pretrain.checkpoint_every=1", "pretrain.keep_last=10"]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("best") / "full"
    assert _train("relgan", out, *BEST) == 0
    return out


def _same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "model_1.safetensors"):  # G and D
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        assert all((x[k] == y[k]).all() for k in x), name


def test_best_checkpoint_holds_the_best_evaluation(best_run, capsys):
    evals = [r for r in _rows(best_run) if "nll_oracle" in r]
    assert len(evals) == 9  # 3 pre-training + 6 adversarial evaluations
    first_min = min(evals, key=lambda r: r["nll_oracle"])  # the first of equal values
    best = best_run / "checkpoints" / "best"
    state = _state(best)
    assert (state["phase"], state["step"], state["index"]) == ("adversarial", 3, 6)
    assert state["best"] == {"key": "nll_oracle", "how": "min", "value": first_min["nll_oracle"],
                             "phase": first_min["phase"], "step": first_min["step"], "index": 6}
    # strictly lower than every other evaluation, and the weights of that step's checkpoint
    assert all(r["nll_oracle"] > first_min["nll_oracle"] for r in evals if r is not first_min)
    _same_weights(best, best_run / "checkpoints" / "step_6")
    # written once: the step's checkpoint hard-links the best's files
    assert (best / "model.safetensors").stat().st_ino == \
        (best_run / "checkpoints" / "step_6" / "model.safetensors").stat().st_ino
    # `textgan report --best` over all phases picks the same evaluation
    _, rows = report.table_rows(report.read_records(best_run), ["nll_oracle"], "unique")
    key, row = report.best_row(rows, "nll_oracle")
    assert (row["phase"], row["step"]) == ("adversarial", 3)
    # resume=auto takes the newest step, not the best; the best samples like any checkpoint
    assert common.find_checkpoint(best_run, "auto").name == "step_9"
    assert main(["sample", str(best), "--n", "3", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_stopped_run_resumes_with_its_best_so_far(best_run, tmp_path, monkeypatch, caplog):
    from textgan.train import relgan

    caplog.set_level("INFO", logger="textgan")
    out = tmp_path / "stopped"
    with monkeypatch.context() as mp:
        _signal_on_call(mp, relgan, "g_step", 2, signal.SIGTERM)  # stops after adversarial 2
        assert _train("relgan", out, *BEST) == 130
    assert _ckpts(out)[-1] == "step_5"
    pre = {"key": "nll_oracle", "how": "min", "phase": "pretrain", "step": 2, "index": 2}
    for ckpt in ("best", "step_5"):  # the best so far is pre-training step 2, in both
        assert {k: v for k, v in _state(out / "checkpoints" / ckpt)["best"].items()
                if k != "value"} == pre
    _same_weights(out / "checkpoints" / "best", out / "checkpoints" / "step_2")
    assert _train("relgan", out, *BEST, "resume=auto") == 0
    assert _rows(out) == _rows(best_run)
    assert _state(out / "checkpoints" / "best")["best"] == \
        _state(best_run / "checkpoints" / "best")["best"]
    _same_weights(out / "checkpoints" / "best", best_run / "checkpoints" / "best")


@pytest.mark.parametrize("ckpt, removed", [
    ("step_5", ["step_6", "step_7", "step_8", "step_9"]),  # before the best
    ("best", ["step_7", "step_8", "step_9"]),  # the best itself (index 6)
])
def test_resuming_an_earlier_checkpoint_rewinds_the_run_and_keeps_the_best(
        best_run, tmp_path, caplog, ckpt, removed):
    caplog.set_level("INFO", logger="textgan")
    out = tmp_path / "run"
    shutil.copytree(best_run, out)
    best_ino = (out / "checkpoints" / "best" / "model.safetensors").stat().st_ino
    assert _train("relgan", out, *BEST, f"resume={out / 'checkpoints' / ckpt}") == 0
    gone = [r.getMessage().rsplit("/", 1)[-1] for r in caplog.records
            if "rewinds the run: removing the later checkpoint" in r.getMessage()]
    assert gone == removed
    # written again by the resumed run: the uninterrupted run's records and checkpoints; the
    # best was kept (its evaluation, replayed, ties with it: not written again)
    assert _rows(out) == _rows(best_run)
    assert _ckpts(out) == _ckpts(best_run)
    assert (out / "checkpoints" / "best" / "model.safetensors").stat().st_ino == best_ino
    _same_weights(out / "checkpoints" / "best", best_run / "checkpoints" / "best")


def _snapshot(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_a_refused_resume_changes_nothing(best_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(best_run, out)
    before = _snapshot(out)
    # refused after loading the checkpoint, before the first step
    assert _train("relgan", out, *BEST, f"resume={out / 'checkpoints' / 'step_5'}",
                  "train.rng_blocks=3") == 2
    assert ("`train.batch_size` 16 must be divisible by 3 row blocks; change "
            "`train.batch_size` or `train.rng_blocks`") in capsys.readouterr().err
    assert _snapshot(out) == before


def test_a_kill_between_the_best_and_the_step_checkpoint(best_run, tmp_path, monkeypatch):
    """The best is written first; killed before the step's own checkpoint, the run resumes
    from the previous step and keeps that best (replayed, the evaluation ties with it)."""
    out = tmp_path / "killed"
    real = common.save_checkpoint

    def dies(run, step, phase, *args, like=None, **kwargs):
        if like is not None and (phase, step) == ("adversarial", 3):  # after its best
            raise SystemExit(137)
        return real(run, step, phase, *args, like=like, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(common, "save_checkpoint", dies)
        with pytest.raises(SystemExit):
            _train("relgan", out, *BEST)
    assert _ckpts(out)[-1] == "step_5"
    assert _state(out / "checkpoints" / "best")["best"]["index"] == 6
    best_ino = (out / "checkpoints" / "best" / "model.safetensors").stat().st_ino
    assert _train("relgan", out, *BEST, "resume=auto") == 0
    assert _rows(out) == _rows(best_run)
    assert (out / "checkpoints" / "best" / "model.safetensors").stat().st_ino == best_ino
    assert _state(out / "checkpoints" / "best")["best"] == \
        _state(best_run / "checkpoints" / "best")["best"]
    _same_weights(out / "checkpoints" / "best", best_run / "checkpoints" / "best")


def test_a_run_resumed_from_another_directory_keeps_its_own_best(best_run, tmp_path):
    out = tmp_path / "branch"
    start = best_run / "checkpoints" / "step_7"  # after best_run's best (index 6)
    assert _train("relgan", out, *BEST, f"resume={start}") == 0
    _, rows = report.table_rows(report.read_records(out), ["nll_oracle"], "unique")
    _, row = report.best_row(rows, "nll_oracle")
    state = _state(out / "checkpoints" / "best")
    assert (state["phase"], state["step"]) == (row["phase"], row["step"]) == ("adversarial", 5)
    assert (best_run / "checkpoints" / "best").is_dir()  # the other run is left alone


def test_an_interrupted_replacement_of_the_best_is_put_back(best_run, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(best_run, out)
    root = out / "checkpoints"
    os.replace(root / "best", root / ".old_best")  # killed between the two renames
    run = common.Run(cfg=None, accelerator=SimpleNamespace(is_main_process=True,
                                                           wait_for_everyone=lambda: None),
                     corpus=None, out_dir=out)
    assert common.best_so_far(run) == _state(best_run / "checkpoints" / "best")["best"]
    assert not (root / ".old_best").exists()
    _same_weights(root / "best", best_run / "checkpoints" / "best")
    shutil.rmtree(root / "best")
    assert common.best_so_far(run) is None


@pytest.mark.parametrize("algorithm, best, extra", [
    ("mle", "nll_test", ["train.checkpoint_every=4"]),
    ("seqgan", "unique", []),
    ("vae", "recon_bleu", []),
    ("relgan_text", "self_bleu2", ["eval.self_bleu=[2]"]),
])
def test_every_trainer_keeps_a_best_and_records_the_keys_it_checks(tmp_path, tiny_corpus_dir,
                                                                   algorithm, best, extra):
    """``eval_keys`` (what ``eval.best`` is checked against before training) are exactly the
    metrics that the trainer's evaluations record."""
    out = tmp_path / "run"
    if algorithm == "relgan_text":
        from test_fault_tolerance import RELGAN

        args = ["train", "recipes/relgan/coco.yaml", f"data.path={tiny_corpus_dir}",
                "data.max_len=12", f"output_dir={out}", *RELGAN, f"eval.best={best}", *extra]
        assert main(args) == 0
    else:
        assert _train(algorithm, out, f"eval.best={best}", *extra) == 0
    evals = [r for r in _rows(out) if "unique" in r]
    text = algorithm == "relgan_text"
    cfg = SimpleNamespace(algorithm=algorithm.split("_")[0],
                          eval=SimpleNamespace(bleu=[2, 3, 4, 5], self_bleu=[2] if text else []))
    keys = common.eval_keys(cfg, SimpleNamespace(oracle=None if text else object()))
    assert {k for r in evals for k in r} - {"step", "phase", "tau"} == set(keys)
    key, how = best, ("min" if best.startswith(("nll", "self_bleu")) else "max")
    pick = max if how == "max" else min
    target = pick(evals, key=lambda r: r[key])
    state = _state(out / "checkpoints" / "best")
    assert (state["phase"], state["step"]) == (target["phase"], target["step"])
    assert state["best"]["value"] == target[key] and state["best"]["how"] == how


def _fake_run(tmp_path, spec):
    return common.Run(cfg=SimpleNamespace(eval=SimpleNamespace(best=spec)),
                      accelerator=SimpleNamespace(num_processes=1, is_main_process=True),
                      corpus=None, out_dir=tmp_path)


def test_update_best_direction_ties_nan_and_a_changed_key(tmp_path):
    run = _fake_run(tmp_path, "unique")  # higher is better
    seq = [(0.5, True), (0.5, False), (float("nan"), False), (0.4, False), (0.75, True)]
    for step, (value, expected) in enumerate(seq, 1):
        assert common.update_best(run, step, "adversarial", {"unique": value}) is expected
    assert run.best == {"key": "unique", "how": "max", "value": 0.75, "phase": "adversarial",
                        "step": 5, "index": 5}
    run.cfg.eval.best = "unique:min"  # resumed with another direction: starts again
    assert common.update_best(run, 6, "adversarial", {"unique": 0.9}, offset=10) is True
    assert run.best["how"] == "min" and run.best["index"] == 16
    assert common.update_best(run, 7, "adversarial", {"unique": 0.95}) is False
    # compared as metrics.jsonl records it (6 decimals): a difference below that is a tie
    run.cfg.eval.best = "nll_test"
    assert common.update_best(run, 8, "mle", {"nll_test": 2.0000001}) is True
    assert common.update_best(run, 9, "mle", {"nll_test": 2.0000004}) is False
    assert common.update_best(run, 10, "mle", {"nll_test": 1.999999}) is True
    assert _fake_run(tmp_path, None).best is None
    assert common.update_best(_fake_run(tmp_path, None), 1, "mle", {"nll_test": 1.0}) is False


@pytest.mark.parametrize("spec, expected", [
    ("nll_oracle", ("nll_oracle", "min")), ("bleu4", ("bleu4", "max")),
    ("self_bleu4", ("self_bleu4", "min")), ("recon_argmax", ("recon_argmax", "min")),
    ("recon_acc", ("recon_acc", "max")), ("unique", ("unique", "max")),
    ("unique:min", ("unique", "min")), ("nll_test:max", ("nll_test", "max")),
])
def test_best_direction(spec, expected):
    from textgan.metrics import best_direction

    assert best_direction(spec) == expected


@pytest.mark.parametrize("spec", ["nll_test:", ":min", "bleu4:highest", ""])
def test_best_direction_rejects(spec):
    from textgan.metrics import best_direction

    with pytest.raises(ValueError, match=r"`eval.best` must be KEY, KEY:min or KEY:max"):
        best_direction(spec, "eval.best")

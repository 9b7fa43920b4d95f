"""Fault tolerance of every trainer: a run killed (SIGKILL) or stopped (SIGINT/SIGTERM) in the
middle of its adversarial phase continues with ``resume=auto`` exactly as if it had never
stopped; damaged checkpoints are skipped, never loaded; a non-finite loss stops the run with the
step, the last finite metrics and the checkpoint to go back to.

The real-process tests slow every adversarial step down by a sleep (no effect on the numbers) so
that the signal lands in the middle of the adversarial phase, after its first checkpoint.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from textgan.cli import main
from textgan.train import common

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
ORACLE = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=128",
          "data.num_test=64"]
RELGAN = ["generator={name: lstm, embed_dim: 8, hidden_dim: 8}", "discriminator.embed_dim=8",
          "discriminator.num_rep=4", "discriminator.filter_sizes=[2,3]",
          "discriminator.num_filters=[6,6]", "pretrain.steps=3", "pretrain.batch_size=16",
          "pretrain.checkpoint_every=3", "train.batch_size=16", "train.d_steps=2",
          "train.log_every=1", "train.checkpoint_every=2", "train.keep_last=10",
          "train.adv_steps=6", "eval.every=2", "eval.num_samples=32", "eval.batch_size=32"]
PRE = 3  # RelGAN pre-training steps: adversarial checkpoint k is checkpoints/step_<3 + k>
SEQGAN = ["generator.embed_dim=8", "generator.hidden_dim=8",
          "discriminator={name: seqgan_cnn, embed_dim: 8, filter_sizes: [2, 3], "
          "num_filters: [6, 6]}", "pretrain.steps=2", "pretrain.batch_size=16",
          "pretrain.checkpoint_every=2", "train.batch_size=16", "train.num_rollouts=2",
          "train.d_steps=2", "train.d_pretrain_steps=2", "train.log_every=1",
          "train.checkpoint_every=2", "train.keep_last=10", "train.adv_steps=4",
          "train.baseline=ema", "eval.every=2", "eval.num_samples=32", "eval.batch_size=32"]
VAE = ["train.batch_size=16", "train.latent_vars=3", "train.latent_classes=4",
       "train.encoder_embed_dim=8", "train.encoder_hidden_dim=8", "train.baseline_hidden=8",
       "generator.embed_dim=8", "generator.hidden_dim=8", "train.log_every=1",
       "eval.num_samples=16", "eval.batch_size=32", "train.eval_sentences=32", "train.steps=4",
       "train.checkpoint_every=2", "eval.every=2", "train.latent_method=score_function",
       "train.baseline=nvil"]
MLE = ["generator.embed_dim=8", "generator.hidden_dim=8", "train.batch_size=16",
       "train.log_every=1", "eval.every=2", "eval.num_samples=32", "eval.batch_size=32",
       "train.steps=4", "train.checkpoint_every=2"]
ARGS = {"mle": ["mle/oracle.yaml", *ORACLE, *MLE],
        "relgan": ["relgan/oracle.yaml", *ORACLE, *RELGAN],
        "seqgan": ["seqgan/oracle.yaml", *ORACLE, *SEQGAN],
        "vae": ["vae/oracle.yaml", *ORACLE, *VAE]}


def _argv(algorithm: str, out: Path, *extra) -> list[str]:
    recipe, *overrides = ARGS[algorithm]
    return ["train", str(RECIPES / recipe), f"output_dir={out}", *overrides, *extra]


def _train(algorithm: str, out: Path, *extra) -> int:
    return main(_argv(algorithm, out, *extra))


def _rows(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock ``time``."""
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def _ckpts(out: Path) -> list[str]:
    return [p.name for p in common.checkpoint_dirs(out)]


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt / common.STATE_FILE, map_location="cpu", weights_only=True)


def _assert_resume_reproduces(reference: list[dict], out: Path, algorithm: str, phase: str,
                              ckpt: str, step: int, caplog) -> None:
    """``resume=auto`` continues from ``ckpt`` (``phase`` step ``step``): metrics.jsonl ends up
    record for record the uninterrupted run's (records the stopped run wrote after ``ckpt``
    are dropped and written again)."""
    caplog.clear()
    assert _train(algorithm, out, "resume=auto") == 0
    assert f"resumed from {out / 'checkpoints' / ckpt} (phase {phase}, step {step})" \
        in caplog.text
    assert _rows(out) == reference


@pytest.fixture(scope="module")
def relgan_reference(tmp_path_factory):
    """An uninterrupted tiny RelGAN run: 3 pre-training + 6 adversarial steps, every
    checkpoint kept (step_3, then step_5, step_7, step_9 for adversarial steps 2, 4, 6)."""
    out = tmp_path_factory.mktemp("relgan") / "full"
    assert _train("relgan", out) == 0
    assert _ckpts(out) == ["step_3", "step_5", "step_7", "step_9"]
    return out, _rows(out)


# --------------------------------------------------------------------------------------------
# (a, c) a real process killed or stopped in the adversarial phase
# --------------------------------------------------------------------------------------------

SLOW_RELGAN = """
import sys, time
from textgan.train import relgan
real = relgan.g_step
def slow(*args, **kwargs):  # a sleep per adversarial step: the numbers are unchanged
    time.sleep(float(sys.argv[1]))
    return real(*args, **kwargs)
relgan.g_step = slow
from textgan.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _logged(out: Path, phase: str, step: int) -> bool:
    log = out / "metrics.jsonl"
    return log.is_file() and f'{{"step": {step}, "phase": "{phase}"' in log.read_text()


def _start_and_signal(out: Path, sig: int, tmp_path: Path, adv_step: int, delay: float = 0.5):
    """Start the slowed-down RelGAN run in a process, wait until it has logged adversarial step
    ``adv_step`` (of 6; the first adversarial checkpoint is at step 2, ``step_5``) and send
    ``sig``; returns the exit status and stderr."""
    err_path = tmp_path / f"stderr_{sig}.txt"
    with open(err_path, "w") as err, open(tmp_path / f"stdout_{sig}.txt", "w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_RELGAN, str(delay), *_argv("relgan", out)],
            stdout=stdout, stderr=err, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        try:
            deadline = time.monotonic() + 240
            while not _logged(out, "adversarial", adv_step):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, f"adversarial step {adv_step} not in 240 s"
                time.sleep(0.01)
            proc.send_signal(sig)
            code = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, err_path.read_text()


def test_sigkill_mid_adversarial_then_resume_matches_the_uninterrupted_run(
        relgan_reference, tmp_path, caplog):
    caplog.set_level("INFO", logger="textgan")
    reference_dir, reference = relgan_reference
    out = tmp_path / "killed"
    # killed after logging adversarial step 3, which has no checkpoint (every 2 steps)
    code, _ = _start_and_signal(out, signal.SIGKILL, tmp_path, adv_step=3)
    assert code == -signal.SIGKILL
    done = _ckpts(out)
    assert done[:2] == ["step_3", "step_5"] and "step_9" not in done  # killed mid-phase
    last = done[-1]
    k = int(last[len("step_"):]) - PRE
    assert _state(out / "checkpoints" / last)["phase"] == "adversarial" and k in (2, 4)
    if k == 2:  # the usual case: the record of step 3 lies past the checkpoint (dropped later)
        assert (out / "metrics.jsonl").stat().st_size > \
            _state(out / "checkpoints" / last)["metrics_bytes"]
    _assert_resume_reproduces(reference, out, "relgan", "adversarial", last, k, caplog)
    assert _ckpts(out) == _ckpts(reference_dir)
    # the final weights are the uninterrupted run's, bit for bit
    for name in ("model.safetensors", "model_1.safetensors"):
        assert (out / "checkpoints" / "step_9" / name).read_bytes() == \
            (reference_dir / "checkpoints" / "step_9" / name).read_bytes()


def test_sigterm_saves_a_checkpoint_exits_130_and_resume_reproduces(relgan_reference,
                                                                     tmp_path, caplog):
    caplog.set_level("INFO", logger="textgan")
    _, reference = relgan_reference
    out = tmp_path / "stopped"
    code, err = _start_and_signal(out, signal.SIGTERM, tmp_path, adv_step=3)
    assert code == 130, err
    assert "Traceback" not in err
    found = re.findall(r"^textgan train: interrupted at adversarial step (\d+); checkpoint saved "
                       r"under (.*); continue with resume=auto$", err, re.M)
    assert len(found) == 1 and found[0][1] == str(out / "checkpoints"), err
    k = int(found[0][0])
    assert 3 <= k < 6  # the signal came after step 3 was logged
    assert "SIGTERM: stopping after this step and saving a checkpoint" in err
    # the checkpoint of the interrupted step (usually 3: not a multiple of checkpoint_every)
    state = _state(out / "checkpoints" / f"step_{PRE + k}")
    assert (state["phase"], state["step"]) == ("adversarial", k)
    assert _ckpts(out)[-1] == f"step_{PRE + k}"
    _assert_resume_reproduces(reference, out, "relgan", "adversarial", f"step_{PRE + k}", k,
                              caplog)


# --------------------------------------------------------------------------------------------
# (c) SIGINT / SIGTERM in SeqGAN and the VAE (in-process: a real signal to this process, taken
# by the trainer's handler, which the CLI then gives back)
# --------------------------------------------------------------------------------------------


def _signal_on_call(monkeypatch, module, name: str, call: int, sig: int, times: int = 1):
    """``module.name`` sends ``sig`` to this process ``times`` times on its ``call``-th call,
    before running; returns the list of calls made."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            for _ in range(times):
                os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("algorithm, sig, phase, k, ckpt", [
    ("seqgan", signal.SIGINT, "adversarial", 3, "step_7"),  # 2 pretrain + 2 d_pretrain + 3
    pytest.param("seqgan", signal.SIGTERM, "d_pretrain", 1, "step_3",  # 2 pretrain + 1
                 marks=pytest.mark.slow),
    ("vae", signal.SIGTERM, "vae", 3, "step_3"),
])
def test_signal_saves_checkpoint_and_resume_reproduces(tmp_path, monkeypatch, capsys, caplog,
                                                       algorithm, sig, phase, k, ckpt):
    from textgan.train import seqgan, vae

    caplog.set_level("INFO", logger="textgan")
    reference = tmp_path / "full"
    assert _train(algorithm, reference) == 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out = tmp_path / "stopped"
    with monkeypatch.context() as mp:
        if algorithm == "vae":
            _signal_on_call(mp, vae, "vae_step", k, sig)
        elif phase == "adversarial":
            _signal_on_call(mp, seqgan, "g_step", k, sig)
        else:
            _signal_on_call(mp, seqgan, "d_step", k, sig)
        capsys.readouterr()
        assert _train(algorithm, out) == 130
    err = capsys.readouterr().err
    assert (f"textgan train: interrupted at {phase} step {k}; checkpoint saved under "
            f"{out / 'checkpoints'}; continue with resume=auto") in err.splitlines()
    assert f"{signal.Signals(sig).name}: stopping after this step" in caplog.text
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the CLI gave them back
    assert _ckpts(out)[-1] == ckpt
    assert (_state(out / "checkpoints" / ckpt)["phase"], _state(out / "checkpoints" / ckpt)[
        "step"]) == (phase, k)
    _assert_resume_reproduces(_rows(reference), out, algorithm, phase, ckpt, k, caplog)


@pytest.mark.parametrize("algorithm, function, k", [
    ("mle", "mle_step", 3), ("relgan", "g_step", 3), ("seqgan", "g_step", 3),
    ("vae", "vae_step", 3),
])
def test_stop_inside_a_logging_window_resumes_the_same_records(tmp_path, monkeypatch, caplog,
                                                              algorithm, function, k):
    """With ``log_every=2`` a stop after step 3 leaves step 3's stats unlogged; the checkpoint
    carries them, so the resumed run's step-4 record averages steps 3 and 4 as the
    uninterrupted run's does."""
    import importlib

    caplog.set_level("INFO", logger="textgan")
    extra = ("train.log_every=2",)
    reference = tmp_path / "full"
    assert _train(algorithm, reference, *extra) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as mp:
        _signal_on_call(mp, importlib.import_module(f"textgan.train.{algorithm}"), function, k,
                        signal.SIGTERM)
        assert _train(algorithm, out, *extra) == 130
    assert _train(algorithm, out, *extra, "resume=auto") == 0
    assert _rows(out) == _rows(reference)


def test_second_signal_aborts_at_once_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                      capsys, caplog):
    from textgan.train import mle

    caplog.set_level("INFO", logger="textgan")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _signal_on_call(mp, mle, "mle_step", 3, signal.SIGINT, times=2)  # in step 3 of 4
        capsys.readouterr()
        assert _train("mle", out) == 130
    err = capsys.readouterr().err
    assert "textgan train: interrupted\n" in err and "Traceback" not in err
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert _ckpts(out) == ["step_2"]  # nothing saved for the aborted step
    assert common.is_complete(out / "checkpoints" / "step_2")
    caplog.clear()
    assert _train("mle", out, "resume=auto") == 0
    assert "(phase mle, step 2)" in caplog.text and _ckpts(out) == ["step_2", "step_4"]


def test_ctrl_c_outside_a_training_loop_exits_130(tmp_path, monkeypatch, capsys):
    import textgan.config

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(textgan.config, "load_recipe", interrupted)
    assert _train("mle", tmp_path / "run") == 130
    assert capsys.readouterr().err == "textgan train: interrupted\n"
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# (b) damaged checkpoints of the adversarial phase are skipped with a warning, never loaded
# --------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "truncated G weights": lambda c: _truncate(c / "model.safetensors"),
    "truncated D weights": lambda c: _truncate(c / "model_1.safetensors"),
    "missing D weights": lambda c: (c / "model_1.safetensors").unlink(),
    "truncated D optimizer": lambda c: _truncate(c / "optimizer_2.bin"),
    "missing RNG state": lambda c: (c / "random_states_0.pkl").unlink(),
    "truncated config": lambda c: _truncate(c / "config.yaml"),
    "garbage trainer state": lambda c: (c / common.STATE_FILE).write_bytes(b"\x00garbage"),
    "empty trainer state": lambda c: (c / common.STATE_FILE).write_bytes(b""),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_adversarial_checkpoint_is_skipped(relgan_reference, tmp_path, caplog, damage):
    reference_dir, _ = relgan_reference
    out = tmp_path / "run"
    shutil.copytree(reference_dir / "checkpoints", out / "checkpoints")
    assert sorted(p.name for p in (out / "checkpoints" / "step_9").iterdir()) == [
        "config.yaml", "meta.json", "model.safetensors", "model_1.safetensors", "optimizer.bin",
        "optimizer_1.bin", "optimizer_2.bin", "random_states_0.pkl", "trainer_state.pt"]
    assert common.is_complete(out / "checkpoints" / "step_9")
    DAMAGE[damage](out / "checkpoints" / "step_9")
    assert not common.is_complete(out / "checkpoints" / "step_9")
    caplog.clear()
    assert common.find_checkpoint(out, "auto") == out / "checkpoints" / "step_7"
    assert caplog.messages == [
        f"skipping incomplete or corrupted checkpoint {out / 'checkpoints' / 'step_9'}"]


def test_resume_skips_a_damaged_checkpoint_and_a_half_written_one(relgan_reference, tmp_path,
                                                                    caplog, capsys, monkeypatch):
    caplog.set_level("INFO", logger="textgan")
    reference_dir, reference = relgan_reference
    out = tmp_path / "run"
    shutil.copytree(reference_dir, out)
    with open(out / "metrics.jsonl", "a") as f:  # a line cut short by a kill
        f.write('{"step": 7, "phase": "adversa')
    _truncate(out / "checkpoints" / "step_9" / "model_1.safetensors")
    # what a kill during save_checkpoint leaves: a temporary directory, never a step_N one
    shutil.copytree(out / "checkpoints" / "step_7", out / "checkpoints" / ".tmp_step_11")
    _truncate(out / "checkpoints" / ".tmp_step_11" / "model.safetensors")
    # an explicit resume= of the damaged checkpoint is refused (exit 2), nothing written
    bad = out / "checkpoints" / "step_9"
    capsys.readouterr()
    assert _train("relgan", out, f"resume={bad}") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"textgan train: error: `resume` checkpoint '{bad}' is incomplete or corrupted; give an "
        f"earlier checkpoint, or resume=auto (which skips incomplete ones)")
    assert (out / "metrics.jsonl").read_text().endswith('{"step": 7, "phase": "adversa')
    # resume=auto: never reads step_9 (a load of it would raise here), continues from step_7
    load = common.load_checkpoint

    def load_checkpoint(run, ckpt):
        assert Path(ckpt).name == "step_7", f"loaded {ckpt}"
        return load(run, ckpt)

    monkeypatch.setattr(common, "load_checkpoint", load_checkpoint)
    caplog.clear()
    assert _train("relgan", out, "resume=auto") == 0
    assert f"skipping incomplete or corrupted checkpoint {bad}" in caplog.text
    assert f"resumed from {out / 'checkpoints' / 'step_7'} (phase adversarial, step 4)" \
        in caplog.text
    # metrics.jsonl was cut back to step_7's records, then steps 5 and 6 were written again
    assert f"{out / 'metrics.jsonl'}: dropped the records written after step_7 (they are " \
        "written again)" in caplog.text
    assert _rows(out) == reference
    assert common.is_complete(out / "checkpoints" / "step_9")  # rewritten whole


# --------------------------------------------------------------------------------------------
# (d) a non-finite loss stops the run: the step, the last finite metrics, the checkpoint
# --------------------------------------------------------------------------------------------


def _poison(monkeypatch, module, name: str, call: int, key: str | None, value: float):
    """``module.name`` returns ``value`` (for ``key`` of its dict) from its ``call``-th call."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            return value if key is None else {**out, key: value}
        return out

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("algorithm, function, call, key, value, phase, step, ckpts", [
    ("mle", "mle_step", 3, None, math.nan, "mle", 3, ["step_2"]),
    ("relgan", "g_step", 3, "g_loss", math.nan, "adversarial", 3, ["step_3", "step_5"]),
    ("relgan", "d_step", 4, "d_loss", math.inf, "adversarial", 2, ["step_3"]),
    # the first of step 2's two D updates: caught at step 2, not one step late
    ("relgan", "d_step", 3, "d_loss", math.nan, "adversarial", 2, ["step_3"]),
    ("seqgan", "g_step", 2, "g_loss", -math.inf, "adversarial", 2, ["step_2", "step_4"]),
    ("seqgan", "d_step", 1, "d_loss", math.nan, "d_pretrain", 1, ["step_2"]),
    ("vae", "vae_step", 3, "neg_elbo", math.nan, "vae", 3, ["step_2"]),
])
def test_non_finite_loss_stops_with_step_metrics_and_checkpoint(
        tmp_path, monkeypatch, capsys, algorithm, function, call, key, value, phase, step, ckpts):
    import importlib

    module = importlib.import_module(f"textgan.train.{algorithm}")
    _poison(monkeypatch, module, function, call, key, value)
    out = tmp_path / "run"
    capsys.readouterr()
    assert _train(algorithm, out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # the last record logged before the failing step is what the message quotes
    last = {k: v for k, v in _rows(out)[-1].items() if k != "phase"}
    bad = {"nll_train" if key is None else key: value}
    assert err.splitlines()[-1] == (
        f"textgan train: error: non-finite loss at {phase} step {step}: {bad}; last finite "
        f"metrics: {last}; the newest checkpoint is '{out / 'checkpoints' / ckpts[-1]}'. Lower "
        f"the learning rate or enable gradient clipping (`grad_clip`).")
    assert _ckpts(out) == ckpts  # nothing saved after the non-finite step
    for ckpt in ckpts:
        assert common.is_complete(out / "checkpoints" / ckpt)


# --------------------------------------------------------------------------------------------
# resuming with other optimizer settings
# --------------------------------------------------------------------------------------------


def test_resume_uses_the_recipe_learning_rate_and_the_checkpoint_moments(tmp_path, monkeypatch,
                                                                          caplog):
    from textgan.train import mle

    caplog.set_level("INFO", logger="textgan")
    out = tmp_path / "run"
    assert _train("mle", out, "train.steps=2", "train.lr=0.01") == 0
    seen = []
    real = mle.mle_step

    def record(run, G, opt, *args, **kwargs):
        adam_steps = {int(s["step"]) for s in opt.state.values()}
        seen.append((opt.param_groups[0]["lr"], adam_steps))
        return real(run, G, opt, *args, **kwargs)

    monkeypatch.setattr(mle, "mle_step", record)
    assert _train("mle", out, "train.steps=4", "train.lr=0.001", "resume=auto") == 0
    # the lowered lr is used; Adam's moments and step count come from the checkpoint
    assert seen == [(0.001, {2}), (0.001, {3})]
    assert "optimizer settings from the recipe, not the checkpoint: lr 0.01 -> 0.001" \
        in caplog.text

"""``textgan bench relgan``: seconds per adversarial iteration (1 G step + 5 D steps).

Setting of RelGAN's synthetic experiment: B=64, T=20, V=5000, RMC generator 1 slot x 2 heads x
256 (embedding 32), discriminator with 64 representations (filters 2-5 x 300), RSGAN loss,
Gumbel-Softmax with hard feeding. The speed-up column divides TextGAN-PyTorch's time per
iteration by ours: measured in the same run when ``--textgan-pytorch DIR`` names a checkout of it
(:mod:`textgan.bench.textgan_pytorch_relgan` is timed in a subprocess before and after our rows,
with the same thread count, and the mean is used), else the RelGAN issue's 31 s (measured by the
issue's author on a 2-core CPU; the same-machine figure is the one to quote).
With ``--textgan-pytorch`` a last row alternates single iterations of TextGAN-PyTorch's and
ours in the like-for-like configuration (:func:`paired_iterations`) and gives the median of the
pairs' ratios: the figure least moved by a shared machine's slow phases.
The profile rows give the share of time of the top operators (torch.profiler, one float32
iteration). ``bf16`` rows run the same steps under ``torch.autocast("cpu", torch.bfloat16)`` (what
``mixed_precision: bf16`` does; matmuls in bfloat16, the sampler core in float32); they are
left out on CPUs without native bfloat16 (:func:`textgan.bench.native_bf16`), where emulated
bf16 matmuls are 10-40x slower than float32.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from textgan.bench import native_bf16
from textgan.models import build_discriminator, build_generator
from textgan.sampling import EMABaseline
from textgan.train.relgan import RelGANConfig, d_steps, g_step

TEXTGAN_PYTORCH_S = 31.0  # s per 1 G + 5 D iteration, measured by the issue author on this CPU


def _setup(V, B, T, head_size, reps, filters, highway="separate"):
    torch.manual_seed(0)
    G = build_generator("rmc", vocab_size=V, embed_dim=32, mem_slots=1, num_heads=2,
                        head_size=head_size)
    D = build_discriminator("relgan_cnn", vocab_size=V, embed_dim=64, num_rep=reps,
                            num_filters=(filters,) * 4, highway=highway)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-4)
    real = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    return G, D, opt_g, opt_d, real


def _time(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _step_times(G, D, opt_g, opt_d, real, estimator: str, repeats: int) -> tuple[float, float]:
    """Seconds per G step and per D step (in the caller's autocast context); the D steps are
    timed as the trainer runs them, 5 at a time (their fakes drawn together)."""
    cfg, base = RelGANConfig(estimator=estimator), EMABaseline()
    t_g = _time(lambda: g_step(G, D, opt_g, real, 0.5, cfg, baseline=base), repeats)
    return t_g, _time(lambda: d_steps(G, D, opt_d, [real] * 5, 0.5, cfg), repeats) / 5


def _harness(checkout: str | Path, quick: bool, *flags: str) -> tuple[list[str], dict, Path]:
    """The command, environment and directory that run
    :mod:`textgan.bench.textgan_pytorch_relgan` in a TextGAN-PyTorch ``checkout`` with this
    process's torch thread count."""
    checkout = Path(checkout)
    if not (checkout / "models" / "RelGAN_D.py").is_file():
        raise FileNotFoundError(f"`--textgan-pytorch` '{checkout}' is not a TextGAN-PyTorch "
                                f"checkout (no models/RelGAN_D.py); clone "
                                f"github.com/williamSYSU/TextGAN-PyTorch and pass its directory")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(checkout.resolve()), str(Path(__file__).resolve().parents[2])])}
    cmd = [sys.executable, "-m", "textgan.bench.textgan_pytorch_relgan",
           str(torch.get_num_threads()), *(["--quick"] if quick else []), *flags]
    return cmd, env, checkout


def textgan_pytorch_times(checkout: str | Path, quick: bool = False) -> tuple[float, float]:
    """``(G step s, D step s)`` of TextGAN-PyTorch's RelGAN in ``checkout``, timed in a subprocess
    with this process's torch thread count (:mod:`textgan.bench.textgan_pytorch_relgan`)."""
    cmd, env, checkout = _harness(checkout, quick)
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("RESULT "):
        raise RuntimeError(f"timing TextGAN-PyTorch in {checkout} failed (exit "
                           f"{proc.returncode}):\n{proc.stderr[-2000:]}")
    g, d = (float(v) for v in lines[-1].split()[1:3])
    return g, d


def paired_iterations(checkout: str | Path, ours: Callable[[], None], pairs: int,
                      quick: bool = False) -> list[tuple[float, float]]:
    """``pairs`` pairs ``(TextGAN-PyTorch s, ours s)`` of single iterations (1 G + 5 D steps)
    run alternately: TextGAN-PyTorch's in a subprocess that waits between them
    (``textgan_pytorch_relgan --serve``), ours by calling ``ours()``; every other pair runs ours
    first. The two times of a pair are taken seconds apart, so a slow phase of a shared machine
    lands on both (the before/after means of :func:`textgan_pytorch_times` are minutes apart)."""
    cmd, env, checkout = _harness(checkout, quick, "--serve")
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
            cmd, cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, text=True) as proc:

        def died(before: str) -> RuntimeError:
            proc.kill()
            err.seek(0)
            return RuntimeError(f"TextGAN-PyTorch's harness in {checkout} stopped before "
                                f"'{before}' (exit {proc.wait()}):\n{err.read()[-2000:]}")

        def expect(prefix: str) -> str:
            line = proc.stdout.readline()
            while line and not line.startswith(prefix):
                line = proc.stdout.readline()
            if not line:
                raise died(prefix)
            return line

        def theirs() -> float:
            try:
                proc.stdin.write("iteration\n")
                proc.stdin.flush()
            except BrokenPipeError:
                raise died("TIME ") from None
            return float(expect("TIME ").split()[1])

        def mine() -> float:
            start = time.perf_counter()
            ours()
            return time.perf_counter() - start

        expect("READY")
        out = []
        for k in range(pairs):
            if k % 2:
                b = mine()
                out.append((theirs(), b))
            else:
                a = theirs()
                out.append((a, mine()))
        proc.stdin.write("quit\n")
        proc.stdin.close()
    return out


def run(quick: bool = False, textgan_pytorch: str | Path | None = None) -> list[dict]:
    V, B, T, hs, reps, nf = (500, 16, 10, 32, 8, 16) if quick else (5000, 64, 20, 256, 64, 300)
    repeats = 1 if quick else 3
    models = {hw: _setup(V, B, T, hs, reps, nf, hw) for hw in ("separate", "shared")}
    rows = []
    theirs = [textgan_pytorch_times(textgan_pytorch, quick)] if textgan_pytorch else []
    # the official D (separate highway matrices) with both estimators, and TextGAN-PyTorch's own
    # D (one shared highway matrix): the like-for-like configuration of its timing
    cases = [("separate", "gumbel_softmax"), ("separate", "score_function"),
             ("shared", "gumbel_softmax")]
    for precision in ("fp32", "bf16") if native_bf16() else ("fp32",):
        for highway, estimator in cases:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                t_g, t_d = _step_times(*models[highway], estimator, repeats)
            label = "official D" if highway == "separate" else "TextGAN-PyTorch's D: shared highway"
            rows.append({"what": f"iteration 1G+5D ({estimator}, {precision}, {label})",
                         "seconds": t_g + 5 * t_d, "g_step_s": t_g, "d_step_s": t_d,
                         "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    if textgan_pytorch:
        theirs.append(textgan_pytorch_times(textgan_pytorch, quick))
        t_g, t_d = (sum(x) / len(theirs) for x in zip(*theirs, strict=True))
        ref, label = t_g + 5 * t_d, "speedup_vs_TextGAN-PyTorch_same_run"
        rows.append({"what": "TextGAN-PyTorch iteration 1G+5D (fp32, mean of 2 runs: "
                             + ", ".join(f"{g + 5 * d:.2f}" for g, d in theirs) + " s)",
                     "seconds": ref, "g_step_s": t_g, "d_step_s": t_d})
    else:
        ref, label = TEXTGAN_PYTORCH_S, "speedup_vs_TextGAN-PyTorch_issue_31s"
    for row in rows:
        if not quick or textgan_pytorch:
            row[label] = ref / row["seconds"]
    if textgan_pytorch:
        rows.append(_paired_row(textgan_pytorch, models["shared"], 2 if quick else PAIRS, quick))
    rows += _profile(*models["separate"])
    return rows


PAIRS = 6  # alternating iteration pairs of the like-for-like configuration


def _paired_row(checkout, model, pairs: int, quick: bool) -> dict:
    """The like-for-like speed-up (TextGAN-PyTorch's D, Gumbel-Softmax, float32) from
    :func:`paired_iterations`: the median of the pairs' ratios, and each ratio."""
    G, D, opt_g, opt_d, real = model
    cfg = RelGANConfig()

    def ours() -> None:
        g_step(G, D, opt_g, real, 0.5, cfg)
        d_steps(G, D, opt_d, [real] * 5, 0.5, cfg)

    ours()  # warm-up
    pairs_s = paired_iterations(checkout, ours, pairs, quick)
    ratios = [t / o for t, o in pairs_s]
    return {"what": f"paired: {pairs} alternating iterations, TextGAN-PyTorch vs ours like for "
                    f"like (gumbel_softmax, fp32, TextGAN-PyTorch's D); seconds: ours' median",
            "seconds": statistics.median(o for _, o in pairs_s),
            "speedup_vs_TextGAN-PyTorch_same_run": statistics.median(ratios),
            "each_pair_TextGAN-PyTorch_s/ours_s": ", ".join(f"{t:.2f}/{o:.2f}"
                                                           for t, o in pairs_s)}


def _profile(G, D, opt_g, opt_d, real, top: int = 8) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    cfg = RelGANConfig()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        g_step(G, D, opt_g, real, 0.5, cfg)
        d_steps(G, D, opt_d, [real] * 5, 0.5, cfg)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"what": f"profile: {e.key}", "seconds": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:top]]

"""Timings behind recipes/README.md's session-6 speed figures (the bench's models, B=64, T=20,
V=5000, RMC 1x2x256, D 64 reps x filters 2-5 x 300). Run from any directory with the code to time
on PYTHONPATH (a checkout of each commit for the paired before/after runs):

    python docs/bench/relgan_parts.py iteration shared 3 2   # median of 3 iterations, 2 threads
    python docs/bench/relgan_parts.py conv-backward OLD_discriminators.py 1
    python docs/bench/relgan_parts.py ops shared             # per-operator time of one iteration
    python docs/bench/relgan_parts.py ops shared gpu         # operator calls with GPU chunking

Paired before/after: alternate ``iteration`` runs of the two commits (one process each) and
compare pair by pair; the machine's speed drifts too much for a single run of each.
"""

from __future__ import annotations

import collections
import importlib.util
import statistics
import sys
import time

import torch


def _models(highway: str):
    from textgan.models import build_discriminator, build_generator
    from textgan.train import relgan
    from textgan.train.relgan import RelGANConfig, g_step

    torch.manual_seed(0)
    D = build_discriminator("relgan_cnn", vocab_size=5000, embed_dim=64, num_rep=64,
                            num_filters=(300,) * 4, highway=highway)
    G = build_generator("rmc", vocab_size=5000, embed_dim=32, mem_slots=1, num_heads=2,
                        head_size=256)
    real, cfg = torch.randint(0, 5000, (64, 20)), RelGANConfig()
    opt_d = torch.optim.Adam(D.parameters(), 1e-4)
    opt_g = torch.optim.Adam(G.parameters(), 1e-4)

    def iteration() -> tuple[float, float]:
        start = time.perf_counter()
        g_step(G, D, opt_g, real, 0.5, cfg)
        mid = time.perf_counter()
        if hasattr(relgan, "d_steps"):  # the D steps as the trainer runs them
            relgan.d_steps(G, D, opt_d, [real] * 5, 0.5, cfg)
        else:  # commits before draw_fakes
            for _ in range(5):
                relgan.d_step(G, D, opt_d, real, 0.5, cfg)
        return mid - start, time.perf_counter() - mid

    return iteration


def iteration(highway: str, repeats: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    step = _models(highway)
    step()  # warm-up
    times = [step() for _ in range(int(repeats))]
    g = statistics.median(t[0] for t in times)
    d = statistics.median(t[1] for t in times)
    print(f"G {g:.3f}  5D {d:.3f}  iter {g + d:.3f}")


def conv_backward(old_file: str, threads: str) -> None:
    """The four filter sizes' ``_ConvMaxPool`` backward, old file vs the installed one."""
    from textgan.models import discriminators as new

    torch.set_num_threads(int(threads))
    spec = importlib.util.spec_from_file_location("old_discriminators", old_file)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    total = {"old": 0.0, "new": 0.0}
    for rep in range(5):  # alternating order; the first round is a warm-up
        for f in (2, 3, 4, 5):
            emb = torch.randn(64, 20, 64, 1, requires_grad=True)
            w = torch.randn(300, 1, f, 1, requires_grad=True)
            pairs = [("old", old), ("new", new)]
            for name, module in pairs if rep % 2 else pairs[::-1]:
                y = module._ConvMaxPool.apply(emb, w, f)
                g = torch.randn_like(y)
                start = time.perf_counter()
                torch.autograd.grad(y, (emb, w), g)
                if rep:
                    total[name] += time.perf_counter() - start
    print({k: f"{v / 4 * 1e3:.1f} ms per 4 filter sizes" for k, v in total.items()})


def ops(highway: str, chunks: str = "cpu") -> None:
    """Seconds per operator (matrix products by shape) in one 2-thread iteration, and the number
    of operator calls; ``chunks=gpu``: D's convolutions chunked as on a GPU (all rows at once)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    if chunks == "gpu":
        from textgan.models import discriminators

        discriminators._rows_per_chunk = lambda elements, budget, rows, device: rows
    torch.set_num_threads(2)
    step = _models(highway)
    step()
    stats = collections.defaultdict(float)
    calls = collections.Counter()

    class Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            name = str(func).split(".")[1]
            if name in ("mm", "addmm", "bmm"):
                name += str([tuple(a.shape) for a in args if isinstance(a, torch.Tensor)])
            stats[name] += time.perf_counter() - start
            calls[name.split("[")[0]] += 1
            return out

    with Timer():
        step()
    products = sum(v for k, v in stats.items() if k.startswith(("mm", "addmm", "bmm")))
    print(f"operators {sum(stats.values()):.3f} s, matrix products {products:.3f} s; "
          f"{sum(calls.values())} operator calls (~ kernel launches on a GPU)")
    for name, seconds in sorted(stats.items(), key=lambda kv: -kv[1])[:20]:
        print(f"{seconds * 1e3:9.1f} ms  {name}")
    print("most called:", ", ".join(f"{k} {v}" for k, v in calls.most_common(12)))


if __name__ == "__main__":
    modes = {"iteration": iteration, "conv-backward": conv_backward, "ops": ops}
    modes[sys.argv[1]](*sys.argv[2:])

"""Timings behind recipes/README.md's session-6 speed figures (the bench's models, B=64, T=20,
V=5000, RMC 1x2x256, D 64 reps x filters 2-5 x 300). Run from any directory with the code to time
on PYTHONPATH (a checkout of each commit for the paired before/after runs):

    python docs/bench/relgan_parts.py iteration shared 3 2   # median of 3 iterations, 2 threads
    python docs/bench/relgan_parts.py conv-backward OLD_discriminators.py 1
    python docs/bench/relgan_parts.py ops shared             # per-operator time of one iteration
    python docs/bench/relgan_parts.py ops shared gpu         # operator calls with GPU chunking
    python docs/bench/relgan_parts.py kernels 2              # compiled CPU kernels vs PyTorch ops

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


def kernels(threads: str) -> None:
    """The discriminator's two compiled CPU kernels against the PyTorch ops they replace, on one
    batch of the bench's D (B=64, T=20, 64 representations, filters 2-5 x 300; the head on the
    resulting 4,096 x 1,200 features, shared highway, dropout 0.25): forward, and forward +
    backward, in ms (median of 9 after a warm-up)."""
    from textgan.models import cpu_kernels
    from textgan.models import discriminators as Dm

    assert cpu_kernels.available(), "the kernels could not be built"
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    D = Dm.RelGANDiscriminator(5000, highway="shared").train()
    emb = torch.randn(64, 20, 64, 1, requires_grad=True)
    weights, bias = [c.weight for c in D.convs], torch.cat([c.bias for c in D.convs])
    x = torch.rand(4096, 1200, requires_grad=True)
    v = torch.randn(1200, requires_grad=True)
    W, b = D.highway.lin.weight, D.highway.lin.bias

    def conv_ops():
        pooled = [Dm._conv_max_pool(emb, c.weight, c.bias) for c in D.convs]
        return torch.relu(torch.cat(pooled, dim=-1))

    def head_kernel():
        keep, threshold = D.dropout.keep_bytes(x)
        return Dm._KernelHead.apply(x, W, b, v, keep, threshold, 4 / 3, True)

    cases = {
        "conv + max-over-time, PyTorch ops": conv_ops,
        "conv + max-over-time, kernel": lambda: Dm._KernelConvMaxPool.apply(emb, bias, *weights),
        "head, PyTorch ops": lambda: D.dropout(D.highway(x)) @ v,
        "head, kernel": head_kernel,
    }

    def timed(fn, backward):
        out = fn()
        if backward:
            out.sum().backward()
        start = time.perf_counter()
        out = fn()
        if backward:
            out.sum().backward()
        return (time.perf_counter() - start) * 1e3

    for name, fn in cases.items():
        fwd = statistics.median(timed(fn, False) for _ in range(10))
        both = statistics.median(timed(fn, True) for _ in range(10))
        print(f"{name:36s} forward {fwd:6.1f} ms   forward + backward {both:6.1f} ms")


if __name__ == "__main__":
    modes = {"iteration": iteration, "conv-backward": conv_backward, "ops": ops,
             "kernels": kernels}
    modes[sys.argv[1]](*sys.argv[2:])

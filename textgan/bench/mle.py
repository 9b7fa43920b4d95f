"""``textgan bench mle``: MLE training throughput (tokens/s) of the three generators on CPU.

Setting: V=5000, B=64, T=20 (the SeqGAN oracle shape), Adam, teacher forcing, float32; and the
RMC on COCO's shape in RelGAN's text form (``data.fixed_length``: every caption padded to
T=37; V=4,650 words as ``word_split=punctuation`` gives them), where the backward of the unrolled
core is most of a step.
"""

from __future__ import annotations

import resource
import time

import torch
import torch.nn.functional as F

from textgan.models import build_generator

CONFIGS = {
    "lstm 32/32": ("lstm", {"embed_dim": 32, "hidden_dim": 32}),
    "rmc 1x2x256": ("rmc", {"embed_dim": 32, "mem_slots": 1, "num_heads": 2, "head_size": 256}),
    "gpt2 2x128": ("hf", {"model_config": {"n_layer": 2, "n_head": 4, "n_embd": 128,
                                           "n_positions": 64}}),
}


def _steps_per_second(G, V: int, B: int, T: int, steps: int) -> float:
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (B, T), generator=g)
    inputs = torch.cat([torch.zeros(B, 1, dtype=torch.long), data[:, :-1]], 1)

    def step():
        loss = F.cross_entropy(G(inputs).flatten(0, 1), data.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def run(quick: bool = False) -> list[dict]:
    V, B, T = (500, 16, 10) if quick else (5000, 64, 20)
    steps = 3 if quick else 20
    cases = [(name, kind, kwargs, V, T) for name, (kind, kwargs) in CONFIGS.items()]
    kind, kwargs = CONFIGS["rmc 1x2x256"]  # as recipes/relgan/coco.yaml, on COCO's shape
    cases.append(("rmc 1x2x256 relgan_code, COCO fixed length", kind,
                  {**kwargs, "variant": "relgan_code"}, 500 if quick else 4650,
                  12 if quick else 37))
    rows = []
    torch.manual_seed(0)
    for name, kind, kwargs, V, T in cases:
        G = build_generator(kind, vocab_size=V, **kwargs)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sps = _steps_per_second(G, V, B, T, steps)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows.append({"generator": name, "params": sum(p.numel() for p in G.parameters()),
                     "V": V, "B": B, "T": T, "steps/s": sps, "tokens/s": sps * B * T,
                     "peak_rss_MiB": peak / 1024, "rss_growth_MiB": (peak - before) / 1024,
                     "threads": torch.get_num_threads()})
    return rows

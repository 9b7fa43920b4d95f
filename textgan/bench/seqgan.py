"""``textgan bench seqgan``: one adversarial SeqGAN generator step, batched rollouts vs a loop.

Setting of SeqGAN's synthetic experiment: B=64 sequences of T=20 tokens over V=5000, LSTM
generator (embedding and hidden 32), 16 Monte-Carlo rollouts per prefix, SeqGAN's CNN
discriminator (the ``seqgan_cnn`` defaults). One G step = sample the batch, rollout rewards
for all 19 prefixes, the REINFORCE loss and its Adam update (:func:`textgan.train.seqgan.g_step`).

Two reward implementations, run on the same sampled batch (same seed, same weights):
    * ``batched``: :func:`textgan.train.seqgan.rollout_rewards`: prefix states reused, the
      ``B * N`` completions of a prefix drawn together by Gumbel-max, D on chunks of rollouts;
    * ``per-rollout loop``: the straightforward reference below (:func:`reference_rewards`): for
      each rollout ``i`` and prefix length ``t``, re-run the prefix step by step, sample the
      continuation with ``torch.multinomial``, one D call per ``(i, t)``.

A third row runs the batched version under ``torch.autocast("cpu", torch.bfloat16)`` (what
``mixed_precision: bf16`` does: D's and G's matmuls in bfloat16, the sampling in float32).
Left out on CPUs without native bfloat16 (emulated bf16 matmuls are 10-40x slower).

Checks: the batched and loop reward estimates (float32) agree within Monte-Carlo error (paired
z-score of the mean difference over the ``B * (T - 1)`` rollout rewards; ``|z| < 4``) and the
last position (D of the full sample, no rollout) is identical. Peak memory is the growth of the
resident set during the call, sampled from ``/proc/self/statm`` every 2 ms (``ru_maxrss`` growth
elsewhere).
"""

from __future__ import annotations

import copy
import os
import resource
import threading
import time

import torch

from textgan.bench import native_bf16
from textgan.models import build_discriminator, build_generator
from textgan.train.seqgan import SeqGANConfig, g_step, make_rollout_policy, rollout_rewards


@torch.no_grad()
def reference_rewards(G_roll, D, tokens, num_rollouts, **_ignored):
    """The per-rollout reference: a Python loop over rollouts and prefixes (no batching)."""
    B, T = tokens.shape
    was_training = D.training
    D.eval()
    rewards = torch.zeros(B, T)
    for _ in range(num_rollouts):
        for P in range(1, T):
            state = G_roll.init_state(B)
            x = tokens.new_full((B,), G_roll.start_token)
            seq = []
            for s in range(T):
                logits, state = G_roll.step(x, state)
                if s < P:
                    x = tokens[:, s]  # re-run the prefix
                else:
                    probs = torch.softmax(logits.float(), -1)
                    x = torch.multinomial(probs, 1).squeeze(1)
                seq.append(x)
            rewards[:, P - 1] += torch.sigmoid(D(torch.stack(seq, 1)).float()) / num_rollouts
    rewards[:, T - 1] = torch.sigmoid(D(tokens).float())
    D.train(was_training)
    return rewards


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def _measure(fn):
    """``(result, seconds, peak resident-set growth in MiB)`` of ``fn()``."""
    start_rss = _rss()
    peak = [start_rss or 0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss() or 0)
            time.sleep(0.002)

    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    thread = threading.Thread(target=poll, daemon=True) if start_rss is not None else None
    if thread is not None:
        thread.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        if thread is not None:
            thread.join()
    if start_rss is not None:
        peak_mib = (max(peak[0], _rss() or 0) - start_rss) / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) / 1024
    return out, seconds, peak_mib


class _TimedD(torch.nn.Module):
    """Wraps D to add up the seconds spent in its forward calls."""

    def __init__(self, D):
        super().__init__()
        self.inner, self.seconds = D, 0.0

    def forward(self, x):
        t0 = time.perf_counter()
        out = self.inner(x)
        self.seconds += time.perf_counter() - t0
        return out


def _setup(quick: bool):
    if quick:
        V, B, T, N = 50, 8, 6, 4
        d_kwargs = dict(embed_dim=8, filter_sizes=[1, 2, 3], num_filters=[4, 4, 4])
    else:
        V, B, T, N = 5000, 64, 20, 16
        d_kwargs = {}
    torch.manual_seed(0)
    G = build_generator("lstm", vocab_size=V, embed_dim=32, hidden_dim=32)
    D = build_discriminator("seqgan_cnn", vocab_size=V, **d_kwargs)
    return G, D, dict(V=V, B=B, T=T, N=N)


def run(quick: bool = False) -> list[dict]:
    G0, D, size = _setup(quick)
    B, T, N = size["B"], size["T"], size["N"]
    cfg = SeqGANConfig(batch_size=B, num_rollouts=N)
    results = {}
    impls = (("batched", rollout_rewards, False), ("batched, bf16 autocast", rollout_rewards, True),
             ("per-rollout loop", reference_rewards, False))
    if not native_bf16():  # emulated bf16 matmuls: 10-40x slower than float32, not a mode to use
        impls = tuple(i for i in impls if not i[2])
    for name, fn, bf16 in impls:
        G = copy.deepcopy(G0)
        G_roll = make_rollout_policy(G0)
        opt = torch.optim.Adam(G.parameters(), lr=cfg.g_lr)
        record = {}
        timed = _TimedD(D)

        def reward_fn(*args, _fn=fn, _record=record, **kwargs):
            t0 = time.perf_counter()
            r = _fn(*args, **kwargs)
            _record.update(rewards=r, tokens=args[2], seconds=time.perf_counter() - t0)
            return r

        if name == "batched":  # warm-up (allocator, kernels) on a smaller batch
            torch.manual_seed(1)
            Gw = copy.deepcopy(G0)
            g_step(Gw, G_roll, D, torch.optim.Adam(Gw.parameters()), 4, T, cfg)
        torch.manual_seed(123)  # same sampled batch for both implementations
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            metrics, seconds, peak = _measure(
                lambda G=G, G_roll=G_roll, timed=timed, opt=opt, reward_fn=reward_fn:
                g_step(G, G_roll, timed, opt, B, T, cfg, reward_fn=reward_fn))
        results[name] = dict(record, g_step_s=seconds, peak=peak, metrics=metrics,
                             d_s=timed.seconds)
    a, b = results["batched"], results["per-rollout loop"]
    assert torch.equal(a["tokens"], b["tokens"]), "both implementations must see the same batch"
    diff = (a["rewards"][:, :-1] - b["rewards"][:, :-1]).flatten().double()
    z = float(diff.mean() / (diff.std() / diff.numel() ** 0.5).clamp_min(1e-12))
    last_equal = bool(torch.allclose(a["rewards"][:, -1], b["rewards"][:, -1], atol=1e-6))
    rows = []
    for name, r in results.items():
        rows.append({
            "implementation": name,
            "g_step_s": r["g_step_s"],
            "rewards_s": r["seconds"],
            "speedup": b["g_step_s"] / r["g_step_s"],
            "d_calls_s": r["d_s"],
            "sampling_s": r["seconds"] - r["d_s"],
            "sampling_speedup": (b["seconds"] - b["d_s"]) / (r["seconds"] - r["d_s"]),
            "reward_mean": float(r["rewards"][:, :-1].mean()),
            "mc_z": z,
            "same_in_mc_error": abs(z) < 4 and last_equal,
            "peak_mem_MiB": r["peak"],
            "B": B, "T": T, "V": size["V"], "rollouts": N,
            "threads": torch.get_num_threads(),
        })
    return rows

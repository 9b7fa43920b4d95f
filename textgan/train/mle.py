"""Maximum-likelihood (teacher-forced) training of a generator, on accelerate.

The same loop is the pre-training phase of RelGAN and SeqGAN (:func:`run_mle`).

Loss: ``sum over counted tokens of -log p(x_t | x_<t)`` divided by the number of counted tokens
in the *global* batch (targets equal to ``pad`` do not count; ``eos`` does). Dividing by the
global count, not the shard's, makes gradient accumulation and any number of processes give the
same update as one process on the whole batch. The only randomness, the generator's dropout (if
any), is drawn row block by row block (:class:`textgan.train.common.Blocks`,
``rng_blocks``), so that it too is the same for any number of processes dividing
``rng_blocks``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from textgan.train import common as C


@dataclass
class MLEConfig:
    """The ``train:`` section of ``algorithm: mle`` (and the ``pretrain:`` section of GANs)."""

    steps: int = 2000  # optimizer steps (0 skips the phase)
    batch_size: int = 64  # global batch (all processes, all accumulation micro-batches)
    lr: float = 1e-2  # Adam learning rate
    weight_decay: float = 0.0
    betas: list | None = None  # Adam betas; None = (0.9, 0.999)
    grad_clip: float = 5.0  # max global gradient norm (0 disables)
    grad_accum: int = 1  # micro-batches per optimizer step
    checkpoint_every: int = 1000  # steps between checkpoints (the final state is always saved)
    keep_last: int = 2  # checkpoints kept on disk
    log_every: int = 50  # steps between training-loss records in metrics.jsonl
    rng_blocks: int | None = None  # row blocks with their own random streams (None: processes)

    def __post_init__(self):
        for name in ("steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                bound = ">= 0" if name == "steps" else ">= 1"
                raise ValueError(f"`{name}` must be {bound}, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"`grad_accum` ({self.grad_accum}) must be >= 1 and divide `batch_size` "
                f"({self.batch_size})"
            )
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}")
        if self.rng_blocks is not None and self.rng_blocks < 1:
            raise ValueError(f"`rng_blocks` must be >= 1, got {self.rng_blocks}")


class MLEResult(NamedTuple):
    step: int
    metrics: dict
    checkpoint: str | None


def make_optimizer(params, cfg: MLEConfig) -> torch.optim.Optimizer:
    betas = tuple(cfg.betas) if cfg.betas else (0.9, 0.999)
    return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


def nll_sum(G, batch: Tensor, start_token: int, pad: int | None) -> tuple[Tensor, Tensor]:
    """Summed token NLL of ``batch`` ``(B, T)`` and the number of counted tokens."""
    logits = G(C.teacher_forcing(batch, start_token))  # (B, T, V)
    ignore = -100 if pad is None else pad
    nll = F.cross_entropy(logits.float().flatten(0, 1), batch.flatten(), ignore_index=ignore,
                          reduction="sum")  # float32 even under autocast
    count = batch.numel() if pad is None else (batch != pad).sum()
    return nll, torch.as_tensor(count)


def mle_step(run: C.Run, G, opt, step: int, cfg: MLEConfig, data: Tensor,
             phase: str = "mle") -> float:
    """One optimizer step on the global batch of ``step``; returns the global mean NLL.

    Each micro-batch is run block by block (one forward/backward per row block, gradients
    synchronised by DDP on the last one)."""
    acc, corpus = run.accelerator, run.corpus
    blocks = C.row_blocks(run, cfg.rng_blocks, phase, step, cfg.batch_size, cfg.grad_accum)
    rows = C.global_batch(data, step, cfg.batch_size, run.cfg.seed)
    n_global = rows.numel() if corpus.pad is None else int((rows != corpus.pad).sum())
    local = rows[acc.process_index::acc.num_processes].to(acc.device)
    micro = local.chunk(cfg.grad_accum)
    total = torch.zeros((), device=acc.device)
    # DDP averages gradients over processes: scale by num_processes to get the global sum.
    scale = acc.num_processes / n_global
    for i, mb in enumerate(micro):
        for m, (part,) in enumerate(blocks.each(mb)):
            sync = i == len(micro) - 1 and m == len(blocks) - 1
            with acc.no_sync(G) if not sync else nullcontext(), acc.autocast():
                nll, _ = nll_sum(G, part, corpus.start_token, corpus.pad)
            acc.backward(nll * scale)
            total += nll.detach()
    if cfg.grad_clip > 0:
        acc.clip_grad_norm_(G.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return (acc.reduce(total, "sum") / n_global).item()


def run_mle(run: C.Run, G, opt, cfg: MLEConfig, *, phase: str = "mle", start_step: int = 0,
            ckpt_offset: int = 0, window: list | None = None) -> int:
    """The MLE loop from ``start_step`` to ``cfg.steps``; evaluates, logs and checkpoints.

    Checkpoint directories are named by ``ckpt_offset + step`` so that several phases of one
    run sort in order. ``window``: the losses of the steps since the last log record, as saved
    in the checkpoint being resumed (so the next record averages the same steps as the
    uninterrupted run). Returns the final step.
    """
    data = run.corpus.train
    G.train()
    bar = C.progress(run, cfg.steps, start_step, phase)
    step = start_step
    losses = list(window or [])
    while step < cfg.steps:
        C.set_step_seed(run, phase, step)
        loss = mle_step(run, G, opt, step, cfg, data, phase)
        C.check_finite(run, step, phase, {"nll_train": loss})
        losses.append(loss)
        step += 1
        bar.update(1)
        bar.set_postfix(nll=f"{loss:.3f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            C.log_metrics(run, step, phase, {"nll_train": sum(losses) / len(losses)})
            losses = []
        best = False
        if step % run.cfg.eval.every == 0 or step == cfg.steps:
            metrics = C.evaluate_generator(run, G, step, phase)
            C.log_metrics(run, step, phase, metrics)
            bar.write(f"[{phase} {step}] " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            best = C.update_best(run, step, phase, metrics, ckpt_offset)
        stop = C.stop_requested(run)
        C.save_checkpoints(run, step, phase, {"window": losses},
                           periodic=step % cfg.checkpoint_every == 0 or step == cfg.steps or stop,
                           best=best, keep_last=cfg.keep_last, offset=ckpt_offset)
        if stop:
            bar.close()
            raise C.Interrupted(run.out_dir, phase, step)
    bar.close()
    return step


def train(cfg) -> MLEResult:
    """``textgan train`` entry point for ``algorithm: mle``."""
    run = C.make_run(cfg)
    G = C.build_generator(cfg, run.corpus)
    opt = make_optimizer(G.parameters(), cfg.train)
    G, opt = run.accelerator.prepare(G, opt)
    start, window = 0, None
    if run.resume_from is not None:
        state = C.load_checkpoint(run, run.resume_from)
        start, window = state["step"], (state.get("extra") or {}).get("window")
    C.start_outputs(run, ("train", cfg.train))  # after the resume checks: refused, writes nothing
    step = run_mle(run, G, opt, cfg.train, phase="mle", start_step=start, window=window)
    ckpts = C.checkpoint_dirs(run.out_dir)
    run.accelerator.end_training()
    return MLEResult(step, dict(run.last_metrics), str(ckpts[-1]) if ckpts else None)

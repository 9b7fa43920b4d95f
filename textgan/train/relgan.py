"""RelGAN: a generator whose Gumbel-Softmax one-hots feed a multi-representation CNN discriminator.

Nie, Narodytska, Patel. RelGAN: Relational Generative Adversarial Networks for Text Generation.
ICLR 2019. https://openreview.net/forum?id=rJedV3R5tm

Phases: MLE pre-training (:func:`textgan.train.mle.run_mle`, or ``generator.init_from``), then
``adv_steps`` adversarial steps of ``g_steps`` generator updates followed by ``d_steps``
discriminator updates (paper: 1 and 5; Adam 1e-4 both). The inverse temperature follows
``sampler.schedule`` up to ``sampler.beta_max``; ``tau = 1 / beta`` divides the logits.

``train.estimator`` chooses how D's signal reaches G, everything else fixed:
    * ``gumbel_softmax``: D scores the relaxed one-hots ``softmax((logits + g) / tau)``;
    * ``gumbel_st``: D scores straight-through one-hots (exact forward, soft backward);
    * ``score_function``: D scores discrete samples; REINFORCE with an EMA or leave-one-out
      baseline (:func:`textgan.sampling.score_function_loss`).

As in the official code the generator's next input is the sampled token (``sampler.feed=hard``);
``sampler.feed=soft`` feeds the relaxed one-hot instead. Models are called unwrapped and
gradients are averaged across processes by :func:`textgan.train.common.sync_grads`, so frozen
models never trip DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from textgan import losses
from textgan import sampling as S
from textgan.errors import choice_error
from textgan.train import common as C
from textgan.train import mle

ESTIMATORS = ("gumbel_softmax", "gumbel_st", "score_function")
BASELINES = ("ema", "loo", "none")


@dataclass
class RelGANConfig:
    """The ``train:`` section of ``algorithm: relgan`` (adversarial phase)."""

    adv_steps: int = 3000  # adversarial steps (each: g_steps G updates, then d_steps D updates)
    batch_size: int = 64  # global batch of real and of generated sequences
    loss: str = "rsgan"  # standard | rsgan | hinge | lsgan | wgan_gp
    estimator: str = "gumbel_softmax"  # gumbel_softmax | gumbel_st | score_function
    baseline: str = "ema"  # score_function only: ema | loo | none
    baseline_beta: float = 0.9  # EMA baseline decay
    g_lr: float = 1e-4
    d_lr: float = 1e-4
    g_steps: int = 1
    d_steps: int = 5
    grad_clip: float = 5.0  # max gradient norm for G and D (0 disables)
    gp_weight: float = 10.0  # wgan_gp gradient-penalty weight
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 2

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(choice_error("train.estimator", self.estimator, ESTIMATORS))
        if self.baseline not in BASELINES:
            raise ValueError(choice_error("train.baseline", self.baseline, BASELINES))
        if self.loss not in losses.GAN_LOSSES:
            raise ValueError(choice_error("train.loss", self.loss, losses.GAN_LOSSES))
        for name in ("batch_size", "g_steps", "d_steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`train.{name}` must be >= 1, got {getattr(self, name)}")
        if self.adv_steps < 0:
            raise ValueError(f"`train.adv_steps` must be >= 0, got {self.adv_steps}")


class RelGANResult(NamedTuple):
    step: int
    metrics: dict
    checkpoint: str | None


# --------------------------------------------------------------------------------------------
# Steps (unit-testable without a run: plain modules and optimizers)
# --------------------------------------------------------------------------------------------


def sample_fake(G, batch_size: int, seq_len: int, tau: float, estimator: str, feed: str,
                eos=None, pad=None) -> S.Sample:
    method = {"gumbel_softmax": "gumbel_softmax", "gumbel_st": "gumbel_st",
              "score_function": "multinomial"}[estimator]
    return S.sample_sequence(G, batch_size, seq_len, method=method, tau=tau, feed=feed,
                             eos=eos, pad=pad)


def d_step(G, D, opt_d, real: Tensor, tau: float, cfg: RelGANConfig, *, feed: str = "hard",
           eos=None, pad=None, sync=None, backward=None) -> dict:
    """One discriminator update on ``real`` ids ``(B, T)`` against fresh fakes (G frozen)."""
    with torch.no_grad():
        fake = sample_fake(G, real.shape[0], real.shape[1], tau, cfg.estimator, feed, eos, pad)
    fake_in = fake.one_hot if cfg.estimator != "score_function" else fake.tokens
    d_real, d_fake = D(real), D(fake_in.detach())
    loss = losses.d_loss(cfg.loss, d_real, d_fake)
    if cfg.loss == "wgan_gp":
        real_oh = torch.nn.functional.one_hot(real, fake.one_hot.shape[-1]).float()
        loss = loss + losses.gradient_penalty(D, real_oh, fake.one_hot.detach(),
                                              weight=cfg.gp_weight)
    opt_d.zero_grad(set_to_none=True)
    (backward or Tensor.backward)(loss)
    _finish(D, opt_d, cfg.grad_clip, sync)
    return {"d_loss": loss.item(), "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}


def g_step(G, D, opt_g, real: Tensor, tau: float, cfg: RelGANConfig, *, feed: str = "hard",
           baseline: S.EMABaseline | None = None, eos=None, pad=None, sync=None,
           backward=None) -> dict:
    """One generator update (D frozen: its parameters get no gradient)."""
    D.requires_grad_(False)
    try:
        fake = sample_fake(G, real.shape[0], real.shape[1], tau, cfg.estimator, feed, eos, pad)
        with torch.no_grad():
            d_real = D(real)
        if cfg.estimator == "score_function":
            with torch.no_grad():
                d_fake = D(fake.tokens)
                reward = -per_sample_g_loss(cfg.loss, d_real, d_fake)  # (B,)
            if cfg.baseline == "ema":
                b = baseline(reward)
            elif cfg.baseline == "loo":
                b = S.leave_one_out(reward, reward.shape[0])
            else:
                b = None
            loss = S.score_function_loss(fake.log_prob, reward, baseline=b, mask=fake.mask)
            g_loss = -reward.mean()
        else:
            d_fake = D(fake.one_hot)
            loss = g_loss = losses.g_loss(cfg.loss, d_real, d_fake)
        opt_g.zero_grad(set_to_none=True)
        (backward or Tensor.backward)(loss)
        _finish(G, opt_g, cfg.grad_clip, sync)
    finally:
        D.requires_grad_(True)
    return {"g_loss": float(g_loss.detach())}


def per_sample_g_loss(kind: str, d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The generator loss of each sample ``(B,)``: the loss restricted to row ``i``."""
    return torch.stack([losses.g_loss(kind, d_real[i:i + 1], d_fake[i:i + 1])
                        for i in range(d_fake.shape[0])])


def _finish(model, opt, grad_clip: float, sync) -> None:
    if sync is not None:
        sync(model)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(cfg) -> RelGANResult:
    """``textgan train`` entry point for ``algorithm: relgan``."""
    run = C.make_run(cfg)
    acc, corpus, tc = run.accelerator, run.corpus, cfg.train
    G, D = C.build_models(cfg, corpus, "relgan_cnn")
    baseline = S.EMABaseline(tc.baseline_beta).to(acc.device)
    opt_pre = mle.make_optimizer(G.parameters(), cfg.pretrain)
    opt_g = torch.optim.Adam(G.parameters(), lr=tc.g_lr)
    opt_d = torch.optim.Adam(D.parameters(), lr=tc.d_lr)
    G, D, opt_pre, opt_g, opt_d = acc.prepare(G, D, opt_pre, opt_g, opt_d)

    pre_steps = cfg.pretrain.steps
    pre_start, adv_start = 0, 0
    if run.resume_from is not None:
        state = C.load_checkpoint(run, run.resume_from)
        if state["phase"] == "pretrain":
            pre_start = state["step"]
        else:
            pre_start, adv_start = pre_steps, state["step"]
            baseline.load_state_dict(state["extra"]["baseline"])
    if pre_start < pre_steps:
        mle.run_mle(run, G, opt_pre, cfg.pretrain, phase="pretrain", start_step=pre_start)
    step = adversarial(run, G, D, opt_g, opt_d, baseline, adv_start, ckpt_offset=pre_steps)
    ckpts = C.checkpoint_dirs(run.out_dir)
    acc.end_training()
    return RelGANResult(step, dict(run.last_metrics), str(ckpts[-1]) if ckpts else None)


def adversarial(run: C.Run, G, D, opt_g, opt_d, baseline, start: int, ckpt_offset: int) -> int:
    cfg, tc, corpus, acc = run.cfg, run.cfg.train, run.corpus, run.accelerator
    tau_of = S.temperature_schedule(cfg.sampler.schedule, beta_max=cfg.sampler.beta_max,
                                    total_steps=max(tc.adv_steps, 2), rate=cfg.sampler.anneal_rate,
                                    tau_min=cfg.sampler.tau_min)
    g, d = acc.unwrap_model(G), acc.unwrap_model(D)
    sync = (lambda m: C.sync_grads(acc, m)) if acc.num_processes > 1 else None
    kw = dict(feed=cfg.sampler.feed, eos=corpus.eos, pad=corpus.pad, sync=sync,
              backward=acc.backward)
    per_step = tc.g_steps + tc.d_steps  # real batches consumed per adversarial step
    bar = C.progress(run, tc.adv_steps, start, "adversarial")
    step, window = start, []
    while step < tc.adv_steps:
        C.set_step_seed(run, "adversarial", step)
        tau = tau_of(step)
        g.train()
        d.train()
        with acc.autocast():
            for k in range(tc.g_steps):
                real = C.local_batch(run, corpus.train, step * per_step + k, tc.batch_size)
                gm = g_step(g, d, opt_g, real, tau, tc, baseline=baseline, **kw)
            for k in range(tc.d_steps):
                real = C.local_batch(run, corpus.train, step * per_step + tc.g_steps + k,
                                     tc.batch_size)
                dm = d_step(g, d, opt_d, real, tau, tc, **kw)
        C.check_finite(run, step, "adversarial", {**gm, **dm})
        window.append({**gm, **dm})
        step += 1
        bar.update(1)
        bar.set_postfix(g=f"{gm['g_loss']:.3f}", d=f"{dm['d_loss']:.3f}", tau=f"{tau:.3g}")
        if step % tc.log_every == 0 or step == tc.adv_steps:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            C.log_metrics(run, step, "adversarial", {**mean, "tau": tau})
            window = []
        if step % cfg.eval.every == 0 or step == tc.adv_steps:
            metrics = C.evaluate_generator(run, g, step, "adversarial")
            C.log_metrics(run, step, "adversarial", metrics)
            bar.write(f"[adversarial {step}] tau={tau:.4g} "
                      + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if step % tc.checkpoint_every == 0 or step == tc.adv_steps or run.interrupted:
            C.save_checkpoint(run, step, "adversarial", {"baseline": baseline.state_dict()},
                              tc.keep_last, offset=ckpt_offset)
        if run.interrupted:
            bar.close()
            raise C.Interrupted(run.out_dir, "adversarial", step)
    bar.close()
    return step

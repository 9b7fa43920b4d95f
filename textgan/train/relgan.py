"""RelGAN: a generator whose Gumbel-Softmax one-hots feed a multi-representation CNN discriminator.

Nie, Narodytska, Patel. RelGAN: Relational Generative Adversarial Networks for Text Generation.
ICLR 2019. https://openreview.net/forum?id=rJedV3R5tm

Phases: MLE pre-training (:func:`textgan.train.mle.run_mle`, or ``generator.init_from``), then
``adv_steps`` adversarial steps of ``g_steps`` generator updates followed by ``d_steps``
discriminator updates (paper: 1 and 5; Adam 1e-4 both). The inverse temperature follows
``sampler.schedule`` up to ``sampler.beta_max``; ``tau = 1 / beta`` divides the logits. Each
D update gets its own fresh fakes; G being the same for all D updates of a step, their fakes are
drawn in one sampling loop (:func:`draw_fakes`).

``train.estimator`` chooses how D's signal reaches G, everything else fixed:
    * ``gumbel_softmax``: D scores the relaxed one-hots ``softmax((logits + g) / tau)``;
    * ``gumbel_st``: D scores straight-through one-hots (exact forward, soft backward);
    * ``score_function``: D scores discrete samples; REINFORCE with an EMA or leave-one-out
      baseline (:func:`textgan.sampling.score_function_loss`). The samples are G's own (at
      temperature 1, whatever the schedule's ``tau``: the same tokens the relaxed estimators
      draw with the same seed), so all three estimate the gradient of the same objective.

As in the official code the generator's next input is the sampled token (``sampler.feed=hard``);
``sampler.feed=soft`` feeds the relaxed one-hot instead.

Several processes. Models are called unwrapped and gradients are averaged across processes by
:func:`textgan.train.common.sync_grads`, so frozen models never trip DDP. Each process takes its
rows ``rank::n`` of every real batch and draws its share of the fakes, row block by row block
(:class:`textgan.train.common.Blocks`, ``train.rng_blocks``): the fakes of block ``j`` and D's
dropout masks on block ``j`` (real and fake rows, gradient-penalty interpolates) come from a
stream seeded by ``(seed, step, j)``, so with the same ``rng_blocks`` one process and ``n``
processes draw the same global set of fakes and make the same updates (every loss is a mean over
the global batch; the relativistic losses pair real row ``i`` with fake row ``i`` in both).
The score-function baselines use the rewards of all processes (gathered): the EMA is updated
with the global mean reward and the leave-one-out baseline is the mean of the other ``B - 1``
rewards of the global batch; the surrogate is normalised by the global number of counted
tokens. Logged losses are means over processes. One float effect shows: with losses that depend
on ``D(real) - D(fake)`` only (``rsgan``, ``wgan_gp``) the gradient of D's output biases is 0 up
to rounding, and Adam, which divides by the gradient's RMS, turns that rounding noise (which
depends on the summation order) into small drifts of the common shift of ``d_real`` and
``d_fake``; their difference and the losses are unaffected.
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
    rng_blocks: int | None = None  # row blocks with their own random streams (None: processes)
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
        if self.rng_blocks is not None and self.rng_blocks < 1:
            raise ValueError(f"`train.rng_blocks` must be >= 1, got {self.rng_blocks}")


class RelGANResult(NamedTuple):
    step: int
    metrics: dict
    checkpoint: str | None


# --------------------------------------------------------------------------------------------
# Steps (unit-testable without a run: plain modules and optimizers)
# --------------------------------------------------------------------------------------------


def sample_fake(G, batch_size: int, seq_len: int, tau: float, estimator: str, feed: str,
                eos=None, pad=None, blocks: C.Blocks | None = None,
                tokens_only: bool = False) -> S.Sample:
    """``batch_size`` fakes of G for ``estimator``; with ``blocks``, drawn block by block;
    ``tokens_only`` (score function only): no one-hots or log-probs, the same draws.

    ``tau`` shapes the relaxed one-hots only: every estimator draws its tokens from G itself
    (Gumbel-max is unchanged by dividing the perturbed logits by ``tau``), so the score function
    samples at temperature 1 and, with the same seed, gets the very tokens that the relaxed
    estimators feed forward; its log-probabilities are G's own."""
    method = {"gumbel_softmax": "gumbel_softmax", "gumbel_st": "gumbel_st",
              "score_function": "multinomial"}[estimator]
    tau = 1.0 if method == "multinomial" else tau

    def draw(rows: int) -> S.Sample:
        return S.sample_sequence(G, rows, seq_len, method=method, tau=tau, feed=feed, eos=eos,
                                 pad=pad, tokens_only=tokens_only)

    return draw(batch_size) if blocks is None else blocks.map(draw, rows=batch_size)


def draw_fakes(G, count: int, batch_size: int, seq_len: int, tau: float, estimator: str,
               feed: str, eos=None, pad=None, blocks: C.Blocks | None = None) -> list[S.Sample]:
    """``count`` batches of ``batch_size`` fakes of G (no gradient) from one sampling loop over
    ``count * batch_size`` rows, cut into consecutive batches (with ``blocks``: each block draws
    ``count`` times its rows, and batch ``i`` holds rows ``i b .. (i + 1) b - 1`` of every
    block, ``b`` rows per block and batch, whichever process holds it). For the score function
    only the tokens are kept (the draws are the same)."""
    with torch.no_grad():
        fake = sample_fake(G, count * batch_size, seq_len, tau, estimator, feed, eos, pad, blocks,
                           tokens_only=estimator == "score_function")
    return [S.Sample(*(None if x is None else x[i * batch_size:(i + 1) * batch_size]
                       for x in fake)) for i in range(count)]


_FAKE_DRAW_ELEMENTS = 1 << 26  # one-hot floats of the global batch per fake draw (256 MB)


def fakes_per_draw(count: int, global_batch: int, seq_len: int, vocab_size: int,
                   estimator: str) -> int:
    """Of ``count`` D steps, how many get their fakes from one sampling loop of :func:`d_steps`:
    all of them, unless their one-hots (for the global batch, so that every process layout draws
    the same way) would pass ``_FAKE_DRAW_ELEMENTS`` floats: all 5 of RelGAN's for V = 5,000,
    T = 20; one at a time for GPT-2's vocabulary; a draw briefly holds about twice its one-hots
    (the per-step ones and their stack). The score function keeps no one-hots: all of them."""
    if estimator == "score_function":
        return count
    return max(1, min(count, _FAKE_DRAW_ELEMENTS // max(1, global_batch * seq_len * vocab_size)))


def d_steps(G, D, opt_d, reals: list[Tensor], tau: float, cfg: RelGANConfig, *,
            feed: str = "hard", eos=None, pad=None, sync=None, backward=None,
            blocks: C.Blocks | None = None) -> list[dict]:
    """The discriminator updates of one adversarial step, one per real batch of ``reals``
    (each ``(B, T)`` ids: this process's rows of ``cfg.batch_size``); their metrics.

    Each update gets fresh fakes. G does not change between them, so the fakes of ``k``
    updates (:func:`fakes_per_draw`) are drawn as one ``k B``-row batch (:func:`draw_fakes`):
    ``k`` independent batches from the same G, and one sampling loop over ``k B`` rows is ~15%
    cheaper on CPU than ``k`` loops (wider matrix products, fewer operators). Each group is
    drawn just before its updates and dropped after them."""
    B, T = reals[0].shape
    group = fakes_per_draw(len(reals), cfg.batch_size, T, G.vocab_size, cfg.estimator)
    out = []
    for start in range(0, len(reals), group):
        batch = reals[start:start + group]
        fakes = draw_fakes(G, len(batch), B, T, tau, cfg.estimator, feed, eos, pad, blocks)
        out += [d_step(G, D, opt_d, real, tau, cfg, feed=feed, eos=eos, pad=pad, sync=sync,
                       backward=backward, blocks=blocks, fake=fake)
                for real, fake in zip(batch, fakes, strict=True)]
        del fakes
    return out


def d_step(G, D, opt_d, real: Tensor, tau: float, cfg: RelGANConfig, *, feed: str = "hard",
           eos=None, pad=None, sync=None, backward=None, blocks: C.Blocks | None = None,
           fake: S.Sample | None = None) -> dict:
    """One discriminator update on ``real`` ids ``(B, T)`` against ``fake`` (a
    :class:`~textgan.sampling.Sample` of the same shape), or fresh fakes of G (frozen).

    ``blocks`` (several processes, ``train.rng_blocks``): fakes, D's dropout masks and the
    gradient-penalty interpolates are drawn block by block (see the module docstring)."""
    D_ = D if blocks is None else blocks.wrap(D)
    if fake is None:
        fake = draw_fakes(G, 1, real.shape[0], real.shape[1], tau, cfg.estimator, feed, eos,
                          pad, blocks)[0]
    if fake.tokens.shape != real.shape:
        raise ValueError(f"fakes of shape {tuple(fake.tokens.shape)} for real batch of shape "
                         f"{tuple(real.shape)}")
    fake_in = fake.one_hot if cfg.estimator != "score_function" else fake.tokens
    d_real, d_fake = D_(real), D_(fake_in.detach())
    loss = losses.d_loss(cfg.loss, d_real, d_fake)
    if cfg.loss == "wgan_gp":
        real_oh = torch.nn.functional.one_hot(real, G.vocab_size).float()
        fake_oh = (fake.one_hot if fake.one_hot is not None  # score function: tokens only
                   else torch.nn.functional.one_hot(fake.tokens, G.vocab_size).float())

        def penalty(r: Tensor, f: Tensor) -> Tensor:
            return losses.gradient_penalty(D, r, f, weight=cfg.gp_weight)

        if blocks is None:
            loss = loss + penalty(real_oh, fake_oh.detach())
        else:  # a mean over rows: the mean of the equal blocks' means
            parts = blocks.map(penalty, real_oh, fake_oh.detach(), merge=False)
            loss = loss + torch.stack(parts).mean()
    opt_d.zero_grad(set_to_none=True)
    (backward or Tensor.backward)(loss)
    _finish(D, opt_d, cfg.grad_clip, sync)
    return {"d_loss": loss.item(), "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}


def g_step(G, D, opt_g, real: Tensor, tau: float, cfg: RelGANConfig, *, feed: str = "hard",
           baseline: S.EMABaseline | None = None, eos=None, pad=None, sync=None,
           backward=None, blocks: C.Blocks | None = None, gather=None) -> dict:
    """One generator update (D frozen: its parameters get no gradient).

    Several processes: ``blocks`` as in :func:`d_step`; ``gather`` concatenates a ``(B_local,)``
    tensor over processes, for the score-function baselines and normalisation."""
    D.requires_grad_(False)
    D_ = D if blocks is None else blocks.wrap(D)
    try:
        fake = sample_fake(G, real.shape[0], real.shape[1], tau, cfg.estimator, feed, eos, pad,
                           blocks)
        with torch.no_grad():
            d_real = D_(real)
        if cfg.estimator == "score_function":
            with torch.no_grad():
                d_fake = D_(fake.tokens)
                reward = -per_sample_g_loss(cfg.loss, d_real, d_fake)  # (B,)
                everyone = reward if gather is None else gather(reward)
            if cfg.baseline == "ema":
                b = baseline(everyone)[0]
            elif cfg.baseline == "loo":
                if everyone.shape[0] < 2:
                    raise ValueError("a leave-one-out baseline needs a batch of >= 2 sequences")
                b = (everyone.sum() - reward) / (everyone.shape[0] - 1)
            else:
                b = None
            loss = S.score_function_loss(fake.log_prob, reward, baseline=b, mask=fake.mask)
            if gather is not None:  # normalise by the global count of counted tokens
                loss = loss * C.count_share(fake.mask, gather)
            g_loss = -reward.mean()
        else:
            d_fake = D_(fake.one_hot)
            loss = g_loss = losses.g_loss(cfg.loss, d_real, d_fake)
        opt_g.zero_grad(set_to_none=True)
        (backward or Tensor.backward)(loss)
        _finish(G, opt_g, cfg.grad_clip, sync)
    finally:
        D.requires_grad_(True)
    return {"g_loss": float(g_loss.detach()), **fake_stats(fake, cfg.estimator, gather)}


@torch.no_grad()
def fake_stats(fake: S.Sample, estimator: str, gather=None) -> dict:
    """What a G step's fakes say about collapse, over their counted tokens (0.0 when none):

    * ``g_entropy``: the mean of ``-log p_G(token)`` over the sampled tokens, an unbiased
      estimate of G's per-token entropy along its own samples (nats). MLE starts leave it near
      the data's; a generator collapsing onto a few sentences drives it towards 0;
    * ``fake_max`` (``gumbel_softmax`` only): the mean largest component of the relaxed
      one-hots D scores. Real one-hots have 1; the gap is a cue D can use whatever the words,
      and at ``tau`` near 1 G can close it only by sharpening (lowering ``g_entropy``).

    Several processes log the mean of the processes' values (like the losses); ``gather``
    (:func:`textgan.train.common.gather_rows`) weights each by its share of the counted tokens
    (:func:`~textgan.train.common.count_share`), so that mean is the mean over all processes'
    tokens, as one process computes it, also when sequences end at ``eos`` at different steps."""
    m = fake.mask
    n = int(m.sum())
    share = 1.0 if gather is None else float(C.count_share(m, gather))
    out = {"g_entropy": (float(-fake.log_prob[m].sum()) / n if n else 0.0) * share}
    if estimator == "gumbel_softmax":
        out["fake_max"] = (float(fake.one_hot.max(-1).values[m].sum()) / n if n else 0.0) * share
    return out


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
    cfg.sampler.tau_schedule(cfg.train.adv_steps)  # a bad schedule fails before pre-training
    run = C.make_run(cfg)
    acc, corpus, tc = run.accelerator, run.corpus, cfg.train
    G, D = C.build_models(cfg, corpus, "relgan_cnn")
    baseline = S.EMABaseline(tc.baseline_beta).to(acc.device)
    opt_pre = mle.make_optimizer(G.parameters(), cfg.pretrain)
    opt_g = torch.optim.Adam(G.parameters(), lr=tc.g_lr)
    opt_d = torch.optim.Adam(D.parameters(), lr=tc.d_lr)
    G, D, opt_pre, opt_g, opt_d = acc.prepare(G, D, opt_pre, opt_g, opt_d)

    pre_steps = cfg.pretrain.steps
    pre_start, adv_start, window = 0, 0, None
    if run.resume_from is not None:
        state = C.load_checkpoint(run, run.resume_from)
        window = (state.get("extra") or {}).get("window")
        if state["phase"] == "pretrain":
            pre_start = state["step"]
        else:
            pre_start, adv_start = pre_steps, state["step"]
            baseline.load_state_dict(state["extra"]["baseline"])
    # after the resume checks: a refused start writes nothing
    C.start_outputs(run, ("pretrain", cfg.pretrain) if pre_start < pre_steps else None,
                    ("train", tc) if adv_start < tc.adv_steps else None)
    if pre_start < pre_steps:
        mle.run_mle(run, G, opt_pre, cfg.pretrain, phase="pretrain", start_step=pre_start,
                    window=window)
        window = None
    step = adversarial(run, G, D, opt_g, opt_d, baseline, adv_start, ckpt_offset=pre_steps,
                       window=window)
    ckpts = C.checkpoint_dirs(run.out_dir)
    acc.end_training()
    return RelGANResult(step, dict(run.last_metrics), str(ckpts[-1]) if ckpts else None)


def adversarial(run: C.Run, G, D, opt_g, opt_d, baseline, start: int, ckpt_offset: int,
                window: list | None = None) -> int:
    """Adversarial steps ``start .. adv_steps``; ``window``: the per-step stats since the last log
    record, from the checkpoint being resumed."""
    cfg, tc, corpus, acc = run.cfg, run.cfg.train, run.corpus, run.accelerator
    tau_of = cfg.sampler.tau_schedule(tc.adv_steps)
    g, d = acc.unwrap_model(G), acc.unwrap_model(D)
    sync = C.grad_sync(acc, [(g, opt_g), (d, opt_d)])
    kw = dict(feed=cfg.sampler.feed, eos=corpus.eos, pad=corpus.pad, sync=sync,
              backward=acc.backward)
    gather = C.gather_rows(run)
    per_step = tc.g_steps + tc.d_steps  # real batches consumed per adversarial step
    bar = C.progress(run, tc.adv_steps, start, "adversarial")
    step, window = start, list(window or [])
    while step < tc.adv_steps:
        C.set_step_seed(run, "adversarial", step)
        blocks = C.row_blocks(run, tc.rng_blocks, "adversarial", step, tc.batch_size)
        tau = tau_of(step)
        g.train()
        d.train()
        with acc.autocast():
            gms = []
            for k in range(tc.g_steps):
                real = C.local_batch(run, corpus.train, step * per_step + k, tc.batch_size)
                gms.append(g_step(g, d, opt_g, real, tau, tc, baseline=baseline, blocks=blocks,
                                  gather=gather, **kw))
            reals = [C.local_batch(run, corpus.train, step * per_step + tc.g_steps + k,
                                   tc.batch_size) for k in range(tc.d_steps)]
            dms = d_steps(g, d, opt_d, reals, tau, tc, blocks=blocks, **kw)
        stats = C.mean_over_processes(run, {**C.last_update(gms), **C.last_update(dms)})
        C.check_finite(run, step, "adversarial", stats)
        window.append(stats)
        step += 1
        bar.update(1)
        bar.set_postfix(g=f"{stats['g_loss']:.3f}", d=f"{stats['d_loss']:.3f}",
                        H=f"{stats['g_entropy']:.2f}", tau=f"{tau:.3g}")
        if step % tc.log_every == 0 or step == tc.adv_steps:
            C.log_metrics(run, step, "adversarial", {**C.mean_records(window), "tau": tau})
            window = []
        best = False
        if step % cfg.eval.every == 0 or step == tc.adv_steps:
            metrics = C.evaluate_generator(run, g, step, "adversarial")
            # the temperature of the updates just evaluated, to plot metrics against it
            C.log_metrics(run, step, "adversarial", {**metrics, "tau": tau})
            bar.write(f"[adversarial {step}] tau={tau:.4g} "
                      + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            best = C.update_best(run, step, "adversarial", metrics, ckpt_offset)
        stop = C.stop_requested(run)
        C.save_checkpoints(run, step, "adversarial",
                           {"baseline": baseline.state_dict(), "window": window},
                           periodic=step % tc.checkpoint_every == 0 or step == tc.adv_steps
                           or stop, best=best, keep_last=tc.keep_last, offset=ckpt_offset)
        if stop:
            bar.close()
            raise C.Interrupted(run.out_dir, "adversarial", step)
    bar.close()
    return step

"""SeqGAN: an LSTM generator trained by policy gradient on Monte-Carlo rollout rewards of a CNN.

Yu, Zhang, Wang, Yu. SeqGAN: Sequence Generative Adversarial Nets with Policy Gradient.
AAAI 2017. https://arxiv.org/abs/1609.05473 (official code: github.com/LantaoYu/SeqGAN)

Phases, each checkpointed and resumable on its own:
    1. ``pretrain``: MLE pre-training of G (:func:`textgan.train.mle.run_mle`).
    2. ``d_pretrain``: ``d_pretrain_steps`` discriminator updates on real batches against fresh
       multinomial samples of G (official code: 50 rounds of 10,000 negatives x 3 epochs).
    3. ``adversarial``: ``adv_steps`` steps of ``g_steps`` policy-gradient updates of G, each
       followed by the rollout-policy update, then ``d_steps`` discriminator updates.

Rewards (:func:`rollout_rewards`). For a sampled sequence ``y_1..y_T`` the action-value of token
``t`` is ``Q(t) = E[sigmoid(D(y_1..y_t, Y_{t+1..T}))]`` with the completion ``Y`` drawn from the
rollout policy; it is estimated with ``num_rollouts`` (N) completions for ``t < T`` and is
``sigmoid(D(y))`` itself at ``t = T`` (D's probability of "real", as SeqGAN). The generator loss
is the score-function surrogate :func:`textgan.sampling.score_function_loss` of the
teacher-forced log-probabilities of the sampled tokens with these per-token rewards, averaged
over the counted tokens (SeqGAN sums; Adam makes the scale immaterial).

Batched rollouts. G_roll runs over the sampled sequences once (``B`` rows, ``T`` steps); after
consuming ``y_1..y_{P-1}`` its state is repeated ``N`` times (``repeat_state``, rows ``b * N + n``)
and :func:`textgan.sampling.sample_sequence` (``prefix=``, ``state=``, ``tokens_only=True``: no
one-hots; ``draw="inverse_cdf"``: exact draws, one uniform per row instead of one Gumbel per
vocabulary entry, 5x faster at ``V = 5000``) feeds ``y_P`` and draws the ``T - P`` remaining tokens
of all ``B * N`` completions together. Prefix states are never recomputed, so the work is ``B * N *
T (T - 1) / 2`` row-steps in ``T (T - 1) / 2`` batched steps (no loop over rollouts), half of what
re-running each prefix or a single masked time loop over all ``B * N * (T - 1)`` rows would cost.
All ``B * N * (T - 1)`` completions plus the ``B`` full samples are then scored by D in eval mode
(no dropout, as the official code's ``dropout_keep_prob: 1.0``), ``rollout_chunk`` sequences per
call.

Rollout policy. A delayed copy of G, as the official code: after every G update
``theta_roll <- rate * theta_roll + (1 - rate) * theta_G`` (``rollout_update_rate``, 0.8; the
official code copies the embedding outright and averages the rest; here every parameter is
averaged). ``rollout_update_rate: 0`` makes the rollout policy G itself, as in the paper.

Baselines (``train.baseline``), all independent of the token whose log-probability they
multiply, so the estimator stays unbiased:
    * ``none``: SeqGAN's estimator, ``(Q_i(t)) * grad log p(y_i,t | y_i,<t)``.
    * ``ema``: a scalar exponential moving average of past batches' mean reward
      (:class:`textgan.sampling.EMABaseline`, checkpointed).
    * ``loo``: leave-one-out across the batch at each position,
      ``b_i(t) = mean_{j != i} Q_j(t)`` (:func:`textgan.sampling.leave_one_out` with the whole
      local batch as the group). Sequences ``j != i`` are independent of sequence ``i``, so
      ``E[b_i(t) grad log p(y_i,t | .)] = 0``. (A leave-one-out over the N rollouts of one
      prefix would not be valid for ``Q(t)``: the rollouts all share, and depend on, ``y_t``.)

Defaults follow the official code where CPU cost allows: G and D Adam with 1e-2 and 1e-4,
gradient clipping 5.0 for G, 16 rollouts, rate 0.8 (D's L2 weight 0.2 and dropout 0.25 are
``discriminator:`` keys of ``seqgan_cnn``). The official
code trains D on 5 x 3 epochs of 10,000 fresh negatives per adversarial step; here
``d_steps`` batches of fresh negatives, each used for ``d_epochs`` updates (default 3 x 1).

Several processes. Models are called unwrapped and gradients averaged across processes with
:func:`textgan.train.common.sync_grads`. Each process draws its share of the generated batch and
computes its rollouts, and takes its rows ``rank::n`` of the real batches; samples, rollouts and
D's dropout masks are drawn row block by row block (:class:`textgan.train.common.Blocks`,
``train.rng_blocks``) from streams seeded by ``(seed, step, block)``, so with the same
``rng_blocks`` one process and ``n`` processes draw the same global samples and rollouts. The
baselines use all processes' rewards (``ema``: the global mean counted reward; ``loo``: the other
``B - 1`` sequences of the global batch) and the surrogate is normalised by the global count of
counted tokens, so the averaged gradient is the one-process gradient; logged values are means
over processes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from textgan import losses
from textgan import sampling as S
from textgan.train import common as C
from textgan.train import mle

BASELINES = ("none", "ema", "loo")


@dataclass
class SeqGANConfig:
    """The ``train:`` section of ``algorithm: seqgan`` (D pre-training and adversarial phase)."""

    adv_steps: int = 200  # adversarial steps (official TOTAL_BATCH: 200)
    batch_size: int = 64  # global batch of generated sequences (G) and of real/fake (D)
    num_rollouts: int = 16  # Monte-Carlo completions per prefix (official: 16)
    rollout_update_rate: float = 0.8  # theta_roll <- rate*theta_roll + (1-rate)*theta_G
    rollout_chunk: int = 1024  # max sequences per D call when scoring rollouts (memory bound)
    baseline: str = "none"  # none (SeqGAN) | ema | loo (leave-one-out across the batch)
    baseline_beta: float = 0.9  # EMA baseline decay
    g_lr: float = 1e-2  # Adam, as the official code's adversarial G updates
    d_lr: float = 1e-4  # Adam, as the official code
    g_steps: int = 1  # G updates per adversarial step (official: 1)
    d_steps: int = 3  # D rounds per adversarial step, each on fresh negatives (official: 5)
    d_epochs: int = 1  # D updates per round on the same real/fake batch (official: 3 epochs)
    d_pretrain_steps: int = 500  # D pre-training rounds (official: 50 x 3 epochs of 10k)
    rng_blocks: int | None = None  # row blocks with their own random streams (None: processes)
    grad_clip: float = 5.0  # max gradient norm of G's updates (0 disables; D is not clipped)
    log_every: int = 10
    checkpoint_every: int = 50  # adversarial and D-pretraining steps between checkpoints
    keep_last: int = 2

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise ValueError(_choices("train.baseline", self.baseline, BASELINES))
        for name in ("batch_size", "num_rollouts", "rollout_chunk", "g_steps", "d_steps",
                     "d_epochs", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`train.{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("adv_steps", "d_pretrain_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"`train.{name}` must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.rollout_update_rate <= 1.0:
            raise ValueError(
                f"`train.rollout_update_rate` must be in [0, 1] (0: the rollout policy is G), "
                f"got {self.rollout_update_rate}"
            )
        if not 0.0 <= self.baseline_beta < 1.0:
            raise ValueError(f"`train.baseline_beta` must be in [0, 1), got {self.baseline_beta}")
        for name in ("g_lr", "d_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`train.{name}` must be > 0, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"`train.grad_clip` must be >= 0, got {self.grad_clip}")
        if self.baseline == "loo" and self.batch_size < 2:
            raise ValueError("`train.baseline: loo` needs `train.batch_size` >= 2")
        if self.rng_blocks is not None and self.rng_blocks < 1:
            raise ValueError(f"`train.rng_blocks` must be >= 1, got {self.rng_blocks}")


def _choices(key, value, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"`{key}` must be one of {list(choices)}, got '{value}'{hint}"


class SeqGANResult(NamedTuple):
    step: int
    metrics: dict
    checkpoint: str | None


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


def _map_state(state, fn):
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        out = [_map_state(s, fn) for s in state]
        return type(state)(out) if not hasattr(state, "_fields") else type(state)(*out)
    if isinstance(state, dict):
        return {k: _map_state(v, fn) for k, v in state.items()}
    return state


def repeat_state(generator, state, n: int):
    """Repeat every batch row of ``state`` ``n`` times consecutively (row ``b`` -> ``b*n..``).

    Uses ``generator.repeat_state`` when the model has one (its batch dimension may not be the
    first, e.g. ``(num_layers, B, H)``); otherwise ``repeat_interleave`` along dimension 0 of
    every tensor in a nested tuple/list/dict state.
    """
    fn = getattr(generator, "repeat_state", None)
    if fn is not None:
        return fn(state, n)
    return _map_state(state, lambda x: x.repeat_interleave(n, 0))


@torch.no_grad()
def rollout_rewards(G_roll, D, tokens: Tensor, num_rollouts: int, *, chunk: int = 1024,
                    eos: int | None = None, pad: int | None = None,
                    rng: torch.Generator | None = None) -> Tensor:
    """SeqGAN's per-token rewards ``(B, T)`` of the sequences ``tokens`` ``(B, T)`` (no grad).

    ``rewards[:, t]`` (0-based) estimates ``E[sigmoid(D(y_<=t, Y_>t))]`` with ``num_rollouts``
    completions ``Y`` drawn from ``G_roll`` for ``t < T - 1``; ``rewards[:, T - 1]`` is
    ``sigmoid(D(tokens))``. All rollouts of all prefixes are drawn with batched Gumbel-max steps
    (see the module docstring); D runs in eval mode on at most ``chunk`` sequences per call.
    With ``eos``, a completion stops at its first ``eos`` and continues with ``pad`` (default
    ``eos``), as :func:`textgan.sampling.sample_sequence` does.
    """
    if tokens.dim() != 2:
        raise ValueError(f"`tokens` must be (B, T), got shape {tuple(tokens.shape)}")
    if num_rollouts < 1:
        raise ValueError(f"`num_rollouts` must be >= 1, got {num_rollouts}")
    B, T = tokens.shape
    N = num_rollouts
    tokens = tokens.long()
    completions = []  # (B * N, T) for prefix lengths 1 .. T-1
    state = G_roll.init_state(B)
    _, state = G_roll.step(tokens.new_full((B,), G_roll.start_token), state)
    for P in range(1, T):
        # ``state`` has consumed [start] + y_<P-1; sample_sequence feeds y_{P-1} next, then
        # draws the T - P remaining tokens of all B * N completions at once.
        roll = S.sample_sequence(G_roll, B * N, T, prefix=tokens[:, :P].repeat_interleave(N, 0),
                                 state=repeat_state(G_roll, state, N), rng=rng, eos=eos,
                                 pad=pad, tokens_only=True, draw="inverse_cdf")
        completions.append(roll.tokens)
        if P < T - 1:
            _, state = G_roll.step(tokens[:, P - 1], state)
    seqs = torch.cat([*completions, tokens], 0)  # ((T-1) * B * N + B, T)
    scores = score_sequences(D, seqs, chunk)
    rewards = tokens.new_empty((B, T), dtype=torch.float32)
    if T > 1:
        rewards[:, :-1] = scores[:-B].view(T - 1, B, N).mean(-1).t()
    rewards[:, -1] = scores[-B:]
    return rewards


@torch.no_grad()
def score_sequences(D, seqs: Tensor, chunk: int = 1024) -> Tensor:
    """``sigmoid(D(seqs))`` ``(n,)`` in float32, D in eval mode, ``chunk`` rows per call."""
    was_training = D.training
    D.eval()
    try:
        out = [torch.sigmoid(D(part).float()).reshape(-1) for part in seqs.split(chunk)]
    finally:
        D.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def update_rollout(G_roll, G, rate: float) -> None:
    """``theta_roll <- rate * theta_roll + (1 - rate) * theta_G`` (buffers copied)."""
    for p_roll, p in zip(G_roll.parameters(), G.parameters(), strict=True):
        p_roll.mul_(rate).add_(p.detach().to(p_roll.dtype), alpha=1.0 - rate)
    for b_roll, b in zip(G_roll.buffers(), G.buffers(), strict=True):
        b_roll.copy_(b)


def make_rollout_policy(G):
    """A frozen copy of ``G`` (unwrapped) in eval mode, the initial rollout policy."""
    G_roll = copy.deepcopy(G)
    G_roll.requires_grad_(False)
    return G_roll.eval()


# --------------------------------------------------------------------------------------------
# Steps (unit-testable without a run: plain modules and optimizers)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_tokens(G, batch_size: int, seq_len: int, *, eos=None, pad=None,
                  rng: torch.Generator | None = None) -> S.Sample:
    """Exact (multinomial) samples of G, no gradient."""
    return S.sample_sequence(G, batch_size, seq_len, method="multinomial", eos=eos, pad=pad,
                             rng=rng)


def policy_loss(G, tokens: Tensor, rewards: Tensor, mask: Tensor | None = None, *,
                baseline: str = "none", ema: S.EMABaseline | None = None,
                reduce: Callable[[Tensor], Tensor] | None = None,
                gather: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The REINFORCE surrogate of SeqGAN on sampled ``tokens`` ``(B, T)``.

    ``log p(y_t | y_<t)`` comes from one teacher-forced pass of G; ``rewards`` are per-token
    ``(B, T)`` (or per-sequence ``(B,)``); the baseline is ``none``, ``ema`` (``ema`` called on
    the counted rewards: the value from previous batches, then updated) or ``loo``
    (``b_i(t) = mean_{j != i} Q_j(t)`` over the batch).

    Several processes (``tokens`` this process's rows): ``gather`` concatenates a batch-first
    tensor over processes (:func:`textgan.train.common.gather_rows`); the EMA is then updated
    with the mean counted reward of all processes (every process keeps the EMA the main process
    checkpoints), the leave-one-out mean runs over the global batch and the loss is scaled by
    :func:`textgan.train.common.count_share`, so that the gradients averaged over processes are
    those of one process on the global batch. ``reduce`` (older alternative for ``ema``
    only) averages the processes' mean rewards.
    """
    logits = G(C.teacher_forcing(tokens, G.start_token))
    log_prob = S.categorical_log_prob(logits, tokens)
    if baseline == "none":
        b = None
    elif baseline == "ema":
        if ema is None:
            raise ValueError("`baseline='ema'` needs an EMABaseline `ema`")
        counted = rewards if mask is None or rewards.shape != mask.shape else rewards[mask.bool()]
        if gather is not None:
            sums = gather(torch.stack([counted.double().sum(),
                                       counted.new_tensor(counted.numel(), dtype=torch.float64)]))
            total, count = sums.view(-1, 2).sum(0)
            counted = (total / count.clamp_min(1.0)).float().reshape(1)
        elif reduce is not None:
            counted = reduce(counted.float().mean()).reshape(1)
        b = ema(counted).reshape(-1)[0]
    elif baseline == "loo":
        everyone = rewards if gather is None else gather(rewards)
        if everyone.shape[0] < 2:
            raise ValueError("a leave-one-out baseline needs a batch of >= 2 sequences")
        if gather is None:
            b = S.leave_one_out(rewards, rewards.shape[0])
        else:
            b = (everyone.sum(0) - rewards).detach() / (everyone.shape[0] - 1)
    else:
        raise ValueError(_choices("baseline", baseline, BASELINES))
    loss = S.score_function_loss(log_prob, rewards, baseline=b, mask=mask)
    if gather is not None and mask is not None:
        loss = loss * C.count_share(mask, gather)
    return loss


RewardFn = Callable[..., Tensor]


def g_step(G, G_roll, D, opt_g, batch_size: int, seq_len: int, cfg: SeqGANConfig, *,
           ema: S.EMABaseline | None = None, eos=None, pad=None, sync=None, backward=None,
           rng: torch.Generator | None = None, reward_fn: RewardFn | None = None,
           reduce: Callable[[Tensor], Tensor] | None = None,
           gather: Callable[[Tensor], Tensor] | None = None,
           blocks: C.Blocks | None = None) -> dict:
    """One policy-gradient update of G on ``batch_size`` fresh samples (D and G_roll frozen).

    ``reward_fn(G_roll, D, tokens, num_rollouts, chunk=, eos=, pad=, rng=)`` defaults to
    :func:`rollout_rewards`. The rollout policy is not updated here (see
    :func:`update_rollout`). ``reduce``, ``gather``: see :func:`policy_loss`. ``blocks``
    (several processes, :class:`textgan.train.common.Blocks`): the samples, their rollouts and
    G's teacher-forced pass run block by block, each block on its seeded stream (``rng`` is then
    not used).
    """
    reward = reward_fn or rollout_rewards
    D.requires_grad_(False)
    try:
        if blocks is None:
            sample = sample_tokens(G, batch_size, seq_len, eos=eos, pad=pad, rng=rng)
            rewards = reward(G_roll, D, sample.tokens, cfg.num_rollouts,
                             chunk=cfg.rollout_chunk, eos=eos, pad=pad, rng=rng)
        else:
            sample = blocks.map(lambda rows: sample_tokens(G, rows, seq_len, eos=eos, pad=pad),
                                rows=batch_size)
            rewards = blocks.map(lambda t: reward(G_roll, D, t, cfg.num_rollouts,
                                                  chunk=cfg.rollout_chunk, eos=eos, pad=pad),
                                 sample.tokens)
        mask = sample.mask if eos is not None else None
        loss = policy_loss(G if blocks is None else blocks.wrap(G), sample.tokens, rewards, mask,
                           baseline=cfg.baseline, ema=ema, reduce=reduce, gather=gather)
        opt_g.zero_grad(set_to_none=True)
        (backward or Tensor.backward)(loss)
        if sync is not None:
            sync(G)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(G.parameters(), cfg.grad_clip)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
    finally:
        D.requires_grad_(True)
    return {"g_loss": loss.item(), "reward": rewards[:, -1].mean().item(),
            "q_mean": rewards.mean().item()}


def d_loss(D, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SeqGAN's D loss: the mean binary cross-entropy over the ``2B`` sequences (real -> 1,
    fake -> 0; the official 2-class softmax on a balanced batch), i.e. half of
    :func:`textgan.losses.d_loss` ``"standard"``, plus ``D.l2_loss()`` when D has one (the
    SeqGAN CNN's ``l2_reg`` times the L2 of its output layer). Returns the loss and D's logits
    on real and fake."""
    d_real, d_fake = D(real).float(), D(fake).float()
    loss = 0.5 * losses.d_loss("standard", d_real, d_fake)
    if hasattr(D, "l2_loss"):
        loss = loss + D.l2_loss()
    return loss, d_real, d_fake


def d_step(G, D, opt_d, real: Tensor, cfg: SeqGANConfig, *, eos=None, pad=None, sync=None,
           backward=None, rng: torch.Generator | None = None,
           blocks: C.Blocks | None = None) -> dict:
    """``cfg.d_epochs`` D updates on ``real`` ids ``(B, T)`` against one batch of fresh
    multinomial samples of G (G frozen: sampled without gradient). ``blocks``: the fakes and
    D's dropout masks are drawn block by block (see :func:`g_step`)."""
    if blocks is None:
        fake = sample_tokens(G, real.shape[0], real.shape[1], eos=eos, pad=pad, rng=rng).tokens
    else:
        fake = blocks.map(lambda rows: sample_tokens(G, rows, real.shape[1], eos=eos,
                                                     pad=pad).tokens, rows=real.shape[0])
    D_ = D if blocks is None else blocks.wrap(D)
    stats = {"d_loss": 0.0, "d_real": 0.0, "d_fake": 0.0, "d_acc": 0.0}
    for _ in range(cfg.d_epochs):
        loss, d_real, d_fake = d_loss(D_, real, fake)
        opt_d.zero_grad(set_to_none=True)
        (backward or Tensor.backward)(loss)
        if sync is not None:
            sync(D)
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        acc = ((d_real > 0).float().sum() + (d_fake <= 0).float().sum()) / (2 * real.shape[0])
        for k, v in (("d_loss", loss), ("d_real", d_real.mean()), ("d_fake", d_fake.mean()),
                     ("d_acc", acc)):
            stats[k] += v.item() / cfg.d_epochs
    return stats


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _tensor_state(module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train(cfg) -> SeqGANResult:
    """``textgan train`` entry point for ``algorithm: seqgan``."""
    run = C.make_run(cfg)
    acc, corpus, tc = run.accelerator, run.corpus, cfg.train
    G, D = C.build_models(cfg, corpus, "seqgan_cnn")
    G_roll = make_rollout_policy(G).to(acc.device)
    ema = S.EMABaseline(tc.baseline_beta).to(acc.device)
    opt_pre = mle.make_optimizer(G.parameters(), cfg.pretrain)
    opt_g = torch.optim.Adam(G.parameters(), lr=tc.g_lr)
    opt_d = torch.optim.Adam(D.parameters(), lr=tc.d_lr)
    G, D, opt_pre, opt_g, opt_d = acc.prepare(G, D, opt_pre, opt_g, opt_d)

    pre_steps, dpre_steps = cfg.pretrain.steps, tc.d_pretrain_steps
    pre_start = dpre_start = adv_start = 0
    rollout_state = window = None
    if run.resume_from is not None:
        state = C.load_checkpoint(run, run.resume_from)
        window = (state.get("extra") or {}).get("window")  # stats since the last log record
        phase_step = state["step"]  # the step within its phase (directories add an offset)
        if state["phase"] == "pretrain":
            pre_start = phase_step
        elif state["phase"] == "d_pretrain":
            pre_start, dpre_start = pre_steps, phase_step
        else:
            pre_start, dpre_start, adv_start = pre_steps, dpre_steps, phase_step
            ema.load_state_dict(state["extra"]["baseline"])
            rollout_state = state["extra"]["rollout"]
    # after the resume checks: a refused start writes nothing
    C.start_outputs(run, ("pretrain", cfg.pretrain) if pre_start < pre_steps else None,
                    ("train", tc) if dpre_start < dpre_steps or adv_start < tc.adv_steps
                    else None)
    if pre_start < pre_steps:
        mle.run_mle(run, G, opt_pre, cfg.pretrain, phase="pretrain", start_step=pre_start,
                    window=window)
        window = None
    if dpre_start < dpre_steps:
        d_pretrain(run, G, D, opt_d, dpre_start, ckpt_offset=pre_steps, window=window)
        window = None
    # the rollout policy starts as the pre-trained G (or continues from its checkpoint)
    G_roll.load_state_dict(rollout_state if rollout_state is not None
                           else acc.unwrap_model(G).state_dict())
    step = adversarial(run, G, G_roll, D, opt_g, opt_d, ema, adv_start,
                       ckpt_offset=pre_steps + dpre_steps, window=window)
    ckpts = C.checkpoint_dirs(run.out_dir)
    acc.end_training()
    return SeqGANResult(step, dict(run.last_metrics), str(ckpts[-1]) if ckpts else None)


def _kwargs(run: C.Run, pairs) -> dict:
    """Step keywords; ``pairs``: the ``(model, optimizer)`` updated (see ``C.grad_sync``)."""
    acc = run.accelerator
    return dict(eos=run.corpus.eos, pad=run.corpus.pad, sync=C.grad_sync(acc, pairs),
                backward=acc.backward)


def d_pretrain(run: C.Run, G, D, opt_d, start: int, ckpt_offset: int,
               window: list | None = None) -> int:
    """Phase ``d_pretrain``: D on real batches against fresh samples of the pre-trained G."""
    tc, corpus, acc = run.cfg.train, run.corpus, run.accelerator
    g, d = acc.unwrap_model(G), acc.unwrap_model(D)
    kw = _kwargs(run, [(d, opt_d)])
    bar = C.progress(run, tc.d_pretrain_steps, start, "d_pretrain")
    step, window = start, list(window or [])
    while step < tc.d_pretrain_steps:
        C.set_step_seed(run, "d_pretrain", step)
        blocks = C.row_blocks(run, tc.rng_blocks, "d_pretrain", step, tc.batch_size)
        g.eval()
        d.train()
        real = C.local_batch(run, corpus.train, step, tc.batch_size)
        with acc.autocast():
            dm = C.mean_over_processes(run, d_step(g, d, opt_d, real, tc, blocks=blocks, **kw))
        C.check_finite(run, step, "d_pretrain", dm)
        window.append(dm)
        step += 1
        bar.update(1)
        bar.set_postfix(d=f"{dm['d_loss']:.3f}", acc=f"{dm['d_acc']:.2f}")
        if step % tc.log_every == 0 or step == tc.d_pretrain_steps:
            C.log_metrics(run, step, "d_pretrain", C.mean_records(window))
            window = []
        stop = C.stop_requested(run)
        if step % tc.checkpoint_every == 0 or step == tc.d_pretrain_steps or stop:
            C.save_checkpoint(run, step, "d_pretrain", {"window": window}, tc.keep_last,
                              offset=ckpt_offset)
        if stop:
            bar.close()
            raise C.Interrupted(run.out_dir, "d_pretrain", step)
    bar.close()
    g.train()
    return step


def adversarial(run: C.Run, G, G_roll, D, opt_g, opt_d, ema, start: int,
                ckpt_offset: int, window: list | None = None) -> int:
    cfg, tc, corpus, acc = run.cfg, run.cfg.train, run.corpus, run.accelerator
    g, d = acc.unwrap_model(G), acc.unwrap_model(D)
    G_roll.eval()
    kw = _kwargs(run, [(g, opt_g), (d, opt_d)])
    if tc.batch_size % acc.num_processes:
        raise ValueError(
            f"`train.batch_size` {tc.batch_size} must be divisible by the number of processes "
            f"{acc.num_processes}"
        )
    local_bs = tc.batch_size // acc.num_processes
    gather = C.gather_rows(run)
    bar = C.progress(run, tc.adv_steps, start, "adversarial")
    step, window = start, list(window or [])
    while step < tc.adv_steps:
        C.set_step_seed(run, "adversarial", step)
        blocks = C.row_blocks(run, tc.rng_blocks, "adversarial", step, tc.batch_size)
        g.train()
        d.train()
        with acc.autocast():
            gms, dms = [], []
            for _ in range(tc.g_steps):
                gms.append(g_step(g, G_roll, d, opt_g, local_bs, corpus.seq_len, tc, ema=ema,
                                  gather=gather, blocks=blocks, **kw))
                update_rollout(G_roll, g, tc.rollout_update_rate)
            for k in range(tc.d_steps):
                real = C.local_batch(run, corpus.train, step * tc.d_steps + k, tc.batch_size)
                dms.append(d_step(g, d, opt_d, real, tc, blocks=blocks, **kw))
        stats = C.mean_over_processes(run, {**C.last_update(gms), **C.last_update(dms)})
        C.check_finite(run, step, "adversarial", stats)
        window.append(stats)
        step += 1
        bar.update(1)
        bar.set_postfix(g=f"{stats['g_loss']:.3f}", d=f"{stats['d_loss']:.3f}",
                        r=f"{stats['reward']:.3f}")
        if step % tc.log_every == 0 or step == tc.adv_steps:
            C.log_metrics(run, step, "adversarial", C.mean_records(window))
            window = []
        best = False
        if step % cfg.eval.every == 0 or step == tc.adv_steps:
            metrics = C.evaluate_generator(run, g, step, "adversarial")
            C.log_metrics(run, step, "adversarial", metrics)
            bar.write(f"[adversarial {step}] "
                      + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            best = C.update_best(run, step, "adversarial", metrics, ckpt_offset)
        stop = C.stop_requested(run)
        periodic = step % tc.checkpoint_every == 0 or step == tc.adv_steps or stop
        if periodic or best:
            C.save_checkpoints(run, step, "adversarial",
                               {"baseline": ema.state_dict(), "rollout": _tensor_state(G_roll),
                                "window": window},
                               periodic=periodic, best=best, keep_last=tc.keep_last,
                               offset=ckpt_offset)
        if stop:
            bar.close()
            raise C.Interrupted(run.out_dir, "adversarial", step)
    bar.close()
    return step

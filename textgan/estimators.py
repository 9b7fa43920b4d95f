"""Gradient estimators for ``d/dθ E_{z ~ Cat(softmax θ)}[f(z)]``: score function vs relaxations.

Every estimator is built on the sampler core (:mod:`textgan.sampling`) and follows one design.

The contract: a *surrogate scalar*
    ``estimator(logits, f, *, n_samples, tau, rng, ...) -> Tensor`` returns a scalar ``s`` whose
    gradient ``torch.autograd.grad(s, logits)`` is the gradient estimate. Nothing is returned
    directly; call ``.backward()`` (or ``autograd.grad``) on the surrogate, exactly as one would
    on a training loss (it is an *ascent* direction: the estimate of ``+grad E[f]``).

    * ``logits``: ``(..., K)`` with ``requires_grad`` (or a function of parameters that do).
      The leading dimensions ``...`` are **independent problems** ("rows"), e.g. a batch of
      seeded draws: the surrogate is the *sum* over rows of each row's surrogate, so the gradient
      for row ``r`` is that row's own estimate. ``compare`` vectorises 1,000 draws this way.
    * ``f``: ``(..., K) -> (...)`` acting on the last dimension and broadcasting over any leading
      dimensions. Score-function estimators evaluate it on exact one-hots; relaxations on relaxed
      (``gs``), straight-through (``st_gs``, ``st``, ``gumbel_rao``) or both (``rebar``,
      ``relax``) one-hots, so ``f`` must accept floats in the simplex.
    * ``n_samples``: samples per row; a row's estimate is the mean over its samples. Samples are
      drawn with shape ``(n_samples, ..., K)``.
    * ``tau``: temperature (> 0), dividing the perturbed logits as in :mod:`textgan.sampling`.
      Estimators that do not use it (``sf*``, ``st``) accept and ignore it.
    * ``rng``: optional ``torch.Generator``; every random number comes from it.
    * The surrogate's *value* is the sample mean of ``f`` summed over rows (the relaxed objective
      for ``gs``); only its gradient is part of the contract.

Sequences
    :data:`SEQUENCE_ESTIMATORS` holds the same estimators for an autoregressive generator (the
    :class:`textgan.sampling.Generator` protocol) and a reward ``R(one_hot (B, T, V)) -> (B,)``:
    ``fn(generator, reward, max_len, *, n_samples, tau, rng, groups, ...)`` draws
    ``groups * n_samples`` sequences (``groups`` independent estimates in consecutive blocks of
    ``n_samples`` rows) and returns the surrogate (sum over groups of each group's mean). SF
    variants use ``sample_sequence(method="multinomial")`` log-probs; ``gs`` / ``st_gs`` use
    ``sample_sequence(method="gumbel_softmax" / "gumbel_st")`` (hard feed, as RelGAN); ``st`` and
    ``gumbel_rao`` use the same loop with their own per-step relaxation. ``rebar`` and ``relax``
    are **single-categorical only**: with hard-fed tokens the relaxed path ``c(σ(z))`` jumps when
    an earlier token changes, so its pathwise gradient is not the gradient of its expectation and
    the REBAR identity fails (``compare`` marks them ``n/a`` on sequences).

References:
    Williams. Simple statistical gradient-following algorithms for connectionist reinforcement
        learning (REINFORCE). Machine Learning 1992.
    Kool, van Hoof, Welling. Buy 4 REINFORCE Samples, Get a Baseline for Free! ICLR-W 2019.
        https://openreview.net/forum?id=r1lgTGL5DE
    Jang, Gu, Poole. Categorical Reparameterization with Gumbel-Softmax. ICLR 2017.
        https://arxiv.org/abs/1611.01144
    Maddison, Mnih, Teh. The Concrete Distribution. ICLR 2017. https://arxiv.org/abs/1611.00712
    Bengio, Léonard, Courville. Estimating or Propagating Gradients Through Stochastic Neurons
        for Conditional Computation. 2013. https://arxiv.org/abs/1308.3432
    Paulus, Maddison, Krause. Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
        Estimator. ICLR 2021. https://arxiv.org/abs/2010.04838
    Tucker, Mnih, Maddison, Lawson, Sohl-Dickstein. REBAR: Low-variance, unbiased gradient
        estimates for discrete latent variable models. NeurIPS 2017.
        https://arxiv.org/abs/1703.07370
    Grathwohl, Choi, Wu, Roeder, Duvenaud. Backpropagation through the Void: Optimizing control
        variates for black-box gradient estimation (RELAX). ICLR 2018.
        https://arxiv.org/abs/1711.00123
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textgan.sampling import (
    EMABaseline,
    categorical_log_prob,
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    leave_one_out,
    sample_sequence,
    score_function_loss,
)

__all__ = [
    "ESTIMATORS",
    "SEQUENCE_ESTIMATORS",
    "TAU_FREE",
    "MIN_SAMPLES",
    "get_estimator",
    "conditional_gumbel",
    "sf",
    "sf_ema",
    "sf_rloo",
    "gs",
    "st_gs",
    "st",
    "gumbel_rao",
    "rebar",
    "relax",
    "RelaxControl",
    "fit_relax_control",
    "seq_sf",
    "seq_sf_ema",
    "seq_sf_rloo",
    "seq_gs",
    "seq_st_gs",
    "seq_st",
    "seq_gumbel_rao",
]

F_T = Callable[[Tensor], Tensor]

# float32 ``torch.rand`` gives U >= 2**-24 except U == 0, so a finite Gumbel is >= -2.81; the
# clamp only replaces the probability-6e-8 value -inf, which would poison the conditional max.
_G_MIN = -3.0


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check(tau: float, n_samples: int) -> None:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau <= 0:
        raise ValueError(f"`tau` must be a positive number, got {tau!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"`n_samples` must be an integer >= 1, got {n_samples!r}")


def _rows(logits: Tensor) -> int:
    return math.prod(logits.shape[:-1])


def _expand(logits: Tensor, n_samples: int) -> Tensor:
    """``(..., K) -> (n, ..., K)`` (a view: gradients sum back into ``logits``)."""
    return logits.unsqueeze(0).expand(n_samples, *logits.shape)


def _attach(value: Tensor, grad_term: Tensor) -> Tensor:
    """A scalar equal to ``value`` whose gradient is ``grad_term``'s."""
    return value.detach() + (grad_term - grad_term.detach())


def _one_hot(tokens: Tensor, k: int) -> Tensor:
    return F.one_hot(tokens, k).float()


def _score_surrogate(logits: Tensor, f: F_T, n_samples: int, rng, baseline_fn) -> Tensor:
    """Shared body of the score-function estimators (exact one-hots, ``score_function_loss``)."""
    lg = _expand(logits, n_samples)
    tokens = gumbel_max(lg, rng)
    with torch.no_grad():
        fb = f(_one_hot(tokens, logits.shape[-1])).float()
    log_prob = categorical_log_prob(lg, tokens)  # (n, ...)
    baseline = baseline_fn(fb)
    loss = score_function_loss(log_prob, fb, baseline=baseline)  # -mean_{n, rows}(adv * logp)
    # -loss * rows = sum over rows of (1/n) sum_j adv_j grad log p_j.
    return _attach(fb.mean(0).sum(), -loss * _rows(logits))


def _ema_stream(rewards: Tensor, ema: EMABaseline) -> Tensor:
    """EMA baselines for rewards ``(n, ...)`` consumed as a stream of ``n`` mini-batches.

    Mini-batch ``j`` (sample ``j`` of every row) gets the EMA of mini-batches ``< j`` (and of
    earlier calls sharing ``ema``), never its own rewards, so the estimator stays unbiased.
    """
    return torch.stack([ema(rewards[j]) for j in range(rewards.shape[0])])


# --------------------------------------------------------------------------------------------
# 1. Score function (REINFORCE)
# --------------------------------------------------------------------------------------------


def sf(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
       rng: torch.Generator | None = None) -> Tensor:
    """Score function without baseline: ``mean_j f(z_j) grad log p(z_j)`` (Williams 1992).

    Unbiased; ``tau`` is ignored. See the module docstring for the surrogate contract.
    """
    _check(tau, n_samples)
    return _score_surrogate(logits, f, n_samples, rng, lambda fb: None)


def sf_ema(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
           rng: torch.Generator | None = None, baseline: EMABaseline | None = None,
           beta: float = 0.9) -> Tensor:
    """Score function with an exponential-moving-average baseline (:class:`EMABaseline`).

    The ``n_samples`` samples are consumed as a stream of ``n`` mini-batches (sample ``j`` of
    every row); mini-batch ``j`` uses the EMA of the mean reward of mini-batches ``< j``. Pass a
    persistent ``baseline`` to carry the EMA across calls, as in training; a fresh one (the
    default) starts at 0, so with ``n_samples=1`` and no warm baseline this equals :func:`sf`.
    The baseline pools rows (it is the EMA of the mean over rows, as over a training batch); it
    never sees the rewards it is subtracted from, so the estimate stays unbiased.
    """
    _check(tau, n_samples)
    ema = EMABaseline(beta) if baseline is None else baseline
    return _score_surrogate(logits, f, n_samples, rng, lambda fb: _ema_stream(fb, ema))


def sf_rloo(logits: Tensor, f: F_T, *, n_samples: int = 2, tau: float = 1.0,
            rng: torch.Generator | None = None) -> Tensor:
    """Score function with the leave-one-out baseline (RLOO, Kool et al. 2019).

    Each sample's baseline is the mean reward of the other ``n - 1`` samples of its row
    (:func:`textgan.sampling.leave_one_out`). Unbiased; needs ``n_samples >= 2``.
    """
    _check(tau, n_samples)
    if n_samples < 2:
        raise ValueError(f"sf_rloo needs `n_samples` >= 2 (leave-one-out), got {n_samples}")

    def loo(fb: Tensor) -> Tensor:  # (n, ...) -> rows-major groups of n -> back
        r = fb.movedim(0, -1)
        b = leave_one_out(r.reshape(-1), n_samples).reshape(r.shape)
        return b.movedim(-1, 0)

    return _score_surrogate(logits, f, n_samples, rng, loo)


# --------------------------------------------------------------------------------------------
# 2. Relaxations and straight-through
# --------------------------------------------------------------------------------------------


def gs(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
       rng: torch.Generator | None = None) -> Tensor:
    """Gumbel-Softmax / Concrete (Jang et al. 2017; Maddison et al. 2017).

    Reparameterised gradient of the *relaxed* objective ``E_g[f(softmax((θ + g) / tau))]``:
    ``f`` is evaluated at the relaxed sample, so the estimate is biased for ``E[f(z)]`` at every
    ``tau > 0`` (even for linear ``f``: ``E[softmax((θ + g) / tau)] != softmax(θ)``); the bias
    shrinks as ``tau -> 0`` while the variance grows.
    """
    _check(tau, n_samples)
    y = gumbel_softmax(_expand(logits, n_samples), tau, rng=rng).one_hot
    return f(y).mean(0).sum()


def st_gs(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
          rng: torch.Generator | None = None) -> Tensor:
    """Straight-through Gumbel-Softmax (Jang et al. 2017): ``f`` at the exact one-hot
    ``argmax(θ + g)``, gradient of ``softmax((θ + g) / tau)`` from the same ``g``. Biased."""
    _check(tau, n_samples)
    y = gumbel_softmax(_expand(logits, n_samples), tau, hard=True, rng=rng).one_hot
    return f(y).mean(0).sum()


def _st_relax(logits: Tensor, rng) -> tuple[Tensor, Tensor]:
    tokens = gumbel_max(logits, rng)
    p = F.softmax(logits.float(), dim=-1)
    return tokens, _one_hot(tokens, logits.shape[-1]) - p.detach() + p


def st(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
       rng: torch.Generator | None = None) -> Tensor:
    """Plain straight-through (Bengio et al. 2013): forward the exact sample ``z ~ Cat(p)``,
    backward through the probabilities: ``one_hot(z) - p.detach() + p``. Biased; ``tau`` is
    ignored (no noise enters the backward pass)."""
    _check(tau, n_samples)
    _, y = _st_relax(_expand(logits, n_samples), rng)
    return f(y).mean(0).sum()


def conditional_gumbel(logits: Tensor, tokens: Tensor, *, rng: torch.Generator | None = None,
                       k: int | None = None) -> Tensor:
    """Perturbed logits ``z ~ p(θ + G | argmax(θ + G) = tokens)``, reparameterised in ``logits``.

    The maximum ``M = logsumexp(θ) + g_b`` (a Gumbel independent of the argmax) goes to the
    chosen class ``b``; every other class gets a Gumbel truncated below ``M``:
    ``z_i = -log(exp(-θ_i - g_i) + exp(-M))`` (Maddison et al. 2014; REBAR appendix).

    Shape:
        logits ``(..., K)``, tokens ``(...)`` -> ``(k, ..., K)`` (or ``(..., K)`` when ``k`` is
        None). Float32. Differentiable in ``logits``; detach it for a fixed-noise Jacobian.
    """
    shape = logits.shape if k is None else (k, *logits.shape)
    g = gumbel_noise(shape, rng, device=logits.device).clamp_min(_G_MIN)
    lg = logits.float().expand(shape)
    mask = F.one_hot(tokens, logits.shape[-1]).bool().expand(shape)
    lse = logits.float().logsumexp(-1, keepdim=True)
    top = lse + (g * mask).sum(-1, keepdim=True)
    others = -torch.logaddexp(-(lg + g), -top)
    return torch.where(mask, top.expand(shape), others)


def _gr_relax(logits: Tensor, tau: float, k: int, rng) -> tuple[Tensor, Tensor]:
    tokens = gumbel_max(logits, rng)
    with torch.no_grad():
        noise = conditional_gumbel(logits.detach(), tokens, rng=rng, k=k) - logits.detach().float()
    soft = F.softmax((logits.float() + noise) / tau, dim=-1).mean(0)
    return tokens, _one_hot(tokens, logits.shape[-1]) - soft.detach() + soft


def gumbel_rao(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
               rng: torch.Generator | None = None, k: int = 10) -> Tensor:
    """Gumbel-Rao: Rao-Blackwellised straight-through Gumbel-Softmax (Paulus et al. 2021).

    Forward: ``f`` at the exact one-hot ``D``. Backward: ``E[d softmax((θ + G) / tau) / dθ | D]``
    estimated with ``k`` conditional Gumbels ``G | D`` (:func:`conditional_gumbel`). The
    derivative is taken with ``G`` held fixed (the noise is detached), which makes ``k = 1``
    distributed exactly as :func:`st_gs` and, for every ``k``, the same mean with a variance
    that is never larger (Rao-Blackwell); the paper's text also differentiates through the
    conditional reparameterisation of ``G``, which changes the mean (see nshepperd's
    gumbel-rao-pytorch note). Biased like ST-GS.
    """
    _check(tau, n_samples)
    if k < 1:
        raise ValueError(f"`k` (inner conditional samples) must be >= 1, got {k}")
    _, y = _gr_relax(_expand(logits, n_samples), tau, k, rng)
    return f(y).mean(0).sum()


# --------------------------------------------------------------------------------------------
# 3. REBAR and RELAX (unbiased control variates from the relaxation)
# --------------------------------------------------------------------------------------------


def _rebar_parts(logits: Tensor, n_samples: int, rng, crn: bool):
    """``(tokens b, z, z_tilde, log p(b))``; z reparameterised, z_tilde ~ p(z | b) reparameterised.

    With common random numbers (``crn``) ``z_tilde`` *is* ``z`` (a valid draw from ``p(z | b)``)
    carrying the derivative of the conditional reparameterisation at the noise that produces it:
    ``dz_b = d logsumexp θ`` and, for ``i != b`` with ``w_i = exp(z_i - z_b)``,
    ``dz_i = (1 - w_i) dθ_i + w_i d logsumexp θ``.
    """
    lg = _expand(logits, n_samples).float()
    g = gumbel_noise(lg, rng).clamp_min(_G_MIN)
    z = lg + g
    tokens = z.detach().argmax(-1)
    log_prob = categorical_log_prob(lg, tokens)
    if crn:
        top = z.detach().max(-1, keepdim=True).values
        w = torch.exp(z.detach() - top)  # 1 at b, in (0, 1) elsewhere
        lse = lg.logsumexp(-1, keepdim=True)
        z_tilde = z.detach() + (1 - w) * (lg - lg.detach()) + w * (lse - lse.detach())
    else:
        z_tilde = conditional_gumbel(lg, tokens, rng=rng)
    return tokens, z, z_tilde, log_prob


def rebar(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
          rng: torch.Generator | None = None, eta: float = 1.0, crn: bool = True) -> Tensor:
    """REBAR (Tucker et al. 2017), categorical, with a fixed control-variate scale ``eta``.

    ``[f(b) - eta c(z~)] grad log p(b) + eta grad c(z) - eta grad c(z~)`` with
    ``c(z) = f(softmax(z / tau))``, ``z = θ + g``, ``b = argmax z`` and ``z~ ~ p(z | b)`` by the
    conditional Gumbel reparameterisation. Unbiased for every ``eta`` and ``tau``; the paper also
    learns ``eta`` and ``tau`` by minimising the variance, here ``eta`` is fixed (default 1) and
    ``tau`` is the argument. ``crn=True`` uses common random numbers (``z~ = z`` in value, see
    :func:`_rebar_parts`), which the paper recommends; ``crn=False`` draws ``z~`` afresh.
    """
    _check(tau, n_samples)
    k = logits.shape[-1]
    tokens, z, z_tilde, log_prob = _rebar_parts(logits, n_samples, rng, crn)
    with torch.no_grad():
        fb = f(_one_hot(tokens, k)).float()
    c_z = f(F.softmax(z / tau, dim=-1))
    c_zt = f(F.softmax(z_tilde / tau, dim=-1))
    loss = score_function_loss(log_prob, fb, baseline=eta * c_zt)
    grad_term = -loss * _rows(logits) + eta * (c_z - c_zt).mean(0).sum()
    return _attach(fb.mean(0).sum(), grad_term)


class RelaxControl(nn.Module):
    """RELAX control variate ``c(z) = eta * f(softmax(z / tau)) + r(softmax(z / tau))``.

    ``eta`` starts at 1 and the MLP ``r`` (``K -> hidden -> 1``, tanh) at 0, so an unfitted
    control gives REBAR; :func:`fit_relax_control` minimises the estimator's variance.
    """

    def __init__(self, num_classes: int, hidden: int = 16, eta: float = 1.0):
        super().__init__()
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.net = nn.Sequential(nn.Linear(num_classes, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, z: Tensor, f: F_T, tau: float) -> Tensor:
        y = F.softmax(z / tau, dim=-1)
        return self.eta * f(y) + self.net(y).squeeze(-1)


def relax(logits: Tensor, f: F_T, *, n_samples: int = 1, tau: float = 1.0,
          rng: torch.Generator | None = None, control: RelaxControl | None = None,
          crn: bool = True) -> Tensor:
    """RELAX (Grathwohl et al. 2018) with a small learned control variate :class:`RelaxControl`.

    ``[f(b) - c(z~)] grad log p(b) + grad c(z) - grad c(z~)``; unbiased for every control.
    The control's parameters also receive gradient through the surrogate's gradient (use
    ``create_graph=True``), which :func:`fit_relax_control` uses to minimise the variance. With
    ``control=None`` a fresh control is used (= :func:`rebar` with ``eta = 1``).
    """
    _check(tau, n_samples)
    k = logits.shape[-1]
    if control is None:
        control = RelaxControl(k).to(logits.device)
    tokens, z, z_tilde, log_prob = _rebar_parts(logits, n_samples, rng, crn)
    with torch.no_grad():
        fb = f(_one_hot(tokens, k)).float()
    c_z = control(z, f, tau)
    c_zt = control(z_tilde, f, tau)
    # The score term's control must carry gradient to the control (not to θ): evaluate it at a
    # θ-detached z~ (same value), outside score_function_loss, which detaches its advantage.
    c_fixed = control(z_tilde.detach(), f, tau)
    loss = score_function_loss(log_prob, fb)
    rows = _rows(logits)
    grad_term = (-loss * rows - (c_fixed * log_prob).mean(0).sum()
                 + (c_z - c_zt).mean(0).sum())
    return _attach(fb.mean(0).sum(), grad_term)


def fit_relax_control(logits: Tensor, f: F_T, control: RelaxControl, *, tau: float,
                      steps: int = 200, rows: int = 256, n_samples: int = 1, lr: float = 1e-2,
                      rng: torch.Generator | None = None) -> list[float]:
    """Fit ``control`` by Adam on ``E||g||^2`` (= variance + a constant, since ``E[g]`` does not
    depend on the control), ``rows`` seeded estimates per step at fixed ``logits (K,)``.

    Returns the per-step mean squared norm of the estimates.
    """
    opt = torch.optim.Adam(control.parameters(), lr=lr)
    history = []
    base = logits.detach().float().reshape(-1)
    for _ in range(steps):
        leaf = base.expand(rows, base.shape[0]).clone().requires_grad_(True)
        s = relax(leaf, f, n_samples=n_samples, tau=tau, rng=rng, control=control)
        (g,) = torch.autograd.grad(s, leaf, create_graph=True)
        loss = g.pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "sf": sf,
    "sf_ema": sf_ema,
    "sf_rloo": sf_rloo,
    "gs": gs,
    "st_gs": st_gs,
    "st": st,
    "gumbel_rao": gumbel_rao,
    "rebar": rebar,
    "relax": relax,
}

#: Estimators whose estimate does not depend on ``tau``.
TAU_FREE = frozenset({"sf", "sf_ema", "sf_rloo", "st"})
#: The smallest ``n_samples`` each estimator accepts (1 unless listed).
MIN_SAMPLES = {"sf_rloo": 2}


def get_estimator(name: str, registry: dict | None = None) -> Callable[..., Tensor]:
    """Look ``name`` up in ``registry`` (default :data:`ESTIMATORS`); unknown names raise
    ``ValueError`` with a close-match suggestion."""
    registry = ESTIMATORS if registry is None else registry
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(str(name), list(ESTIMATORS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown estimator '{name}'; choose from {list(ESTIMATORS)}{hint}")
    return registry[name]


# --------------------------------------------------------------------------------------------
# 4. Sequences (autoregressive generator, reward on whole sequences)
# --------------------------------------------------------------------------------------------

Reward = Callable[[Tensor], Tensor]


def _seq_check(tau: float, n_samples: int, groups: int) -> None:
    _check(tau, n_samples)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"`groups` must be an integer >= 1, got {groups!r}")


def _seq_score(generator, reward: Reward, max_len: int, n_samples: int, groups: int, rng,
               baseline_fn) -> Tensor:
    rows = groups * n_samples
    s = sample_sequence(generator, rows, max_len, method="multinomial", rng=rng)
    with torch.no_grad():
        r = reward(s.one_hot).float()  # (B,)
    baseline = baseline_fn(r)
    loss = score_function_loss(s.log_prob, r, baseline=baseline, mask=s.mask)
    # loss = -sum(adv * logp * mask) / mask.sum(); the group estimates are that sum / n.
    scale = s.mask.sum().clamp_min(1).float() / n_samples
    return _attach(r.view(groups, n_samples).mean(1).sum(), -loss * scale)


def seq_sf(generator, reward: Reward, max_len: int, *, n_samples: int = 1, tau: float = 1.0,
           rng: torch.Generator | None = None, groups: int = 1) -> Tensor:
    """Score function on sequences: ``R(x) sum_t grad log p(x_t | x_<t)``; ``tau`` ignored."""
    _seq_check(tau, n_samples, groups)
    return _seq_score(generator, reward, max_len, n_samples, groups, rng, lambda r: None)


def seq_sf_ema(generator, reward: Reward, max_len: int, *, n_samples: int = 1, tau: float = 1.0,
               rng: torch.Generator | None = None, groups: int = 1,
               baseline: EMABaseline | None = None, beta: float = 0.9) -> Tensor:
    """:func:`sf_ema` on sequences (sample ``j`` of every group is mini-batch ``j`` of the EMA
    stream)."""
    _seq_check(tau, n_samples, groups)
    ema = EMABaseline(beta) if baseline is None else baseline

    def stream(r: Tensor) -> Tensor:
        return _ema_stream(r.view(groups, n_samples).t(), ema).t().reshape(-1)

    return _seq_score(generator, reward, max_len, n_samples, groups, rng, stream)


def seq_sf_rloo(generator, reward: Reward, max_len: int, *, n_samples: int = 2, tau: float = 1.0,
                rng: torch.Generator | None = None, groups: int = 1) -> Tensor:
    """:func:`sf_rloo` on sequences (leave-one-out within each group of ``n_samples``)."""
    _seq_check(tau, n_samples, groups)
    if n_samples < 2:
        raise ValueError(f"sf_rloo needs `n_samples` >= 2 (leave-one-out), got {n_samples}")
    return _seq_score(generator, reward, max_len, n_samples, groups, rng,
                      lambda r: leave_one_out(r, n_samples))


def _seq_relaxed(generator, reward: Reward, max_len: int, n_samples: int, groups: int, tau,
                 rng, method: str, feed: str) -> Tensor:
    s = sample_sequence(generator, groups * n_samples, max_len, method=method, tau=tau, rng=rng,
                        feed=feed)
    return reward(s.one_hot).view(groups, n_samples).mean(1).sum()


def seq_gs(generator, reward: Reward, max_len: int, *, n_samples: int = 1, tau: float = 1.0,
           rng: torch.Generator | None = None, groups: int = 1, feed: str = "hard") -> Tensor:
    """Gumbel-Softmax on sequences: ``R`` at the relaxed one-hots of
    ``sample_sequence(method="gumbel_softmax")`` (hard-fed by default, as RelGAN). Biased."""
    _seq_check(tau, n_samples, groups)
    return _seq_relaxed(generator, reward, max_len, n_samples, groups, tau, rng,
                        "gumbel_softmax", feed)


def seq_st_gs(generator, reward: Reward, max_len: int, *, n_samples: int = 1, tau: float = 1.0,
              rng: torch.Generator | None = None, groups: int = 1, feed: str = "hard") -> Tensor:
    """Straight-through Gumbel-Softmax on sequences (``sample_sequence(method="gumbel_st")``)."""
    _seq_check(tau, n_samples, groups)
    return _seq_relaxed(generator, reward, max_len, n_samples, groups, tau, rng, "gumbel_st",
                        feed)


def _rollout(generator, rows: int, max_len: int, relax_fn) -> Tensor:
    """Hard-fed autoregressive loop with a custom per-step ``relax_fn(logits) -> (tok, one_hot)``
    (``sample_sequence`` has no plain-ST or Gumbel-Rao method). Returns one-hots ``(B, T, V)``."""
    state = generator.init_state(rows)
    device = getattr(generator, "device", None)
    if device is None and isinstance(generator, nn.Module):
        device = next((p.device for p in generator.parameters()), None)
    device = "cpu" if device is None else device
    x = torch.full((rows,), generator.start_token, dtype=torch.long, device=device)
    out = []
    for _ in range(max_len):
        logits, state = generator.step(x, state)
        x, y = relax_fn(logits.float())
        out.append(y)
    return torch.stack(out, 1)


def seq_st(generator, reward: Reward, max_len: int, *, n_samples: int = 1, tau: float = 1.0,
           rng: torch.Generator | None = None, groups: int = 1) -> Tensor:
    """Plain straight-through (Bengio et al. 2013) at every step of a hard-fed rollout."""
    _seq_check(tau, n_samples, groups)
    y = _rollout(generator, groups * n_samples, max_len, lambda lg: _st_relax(lg, rng))
    return reward(y).view(groups, n_samples).mean(1).sum()


def seq_gumbel_rao(generator, reward: Reward, max_len: int, *, n_samples: int = 1,
                   tau: float = 1.0, rng: torch.Generator | None = None, groups: int = 1,
                   k: int = 10) -> Tensor:
    """Gumbel-Rao (:func:`gumbel_rao`) at every step of a hard-fed rollout."""
    _seq_check(tau, n_samples, groups)
    if k < 1:
        raise ValueError(f"`k` (inner conditional samples) must be >= 1, got {k}")
    y = _rollout(generator, groups * n_samples, max_len, lambda lg: _gr_relax(lg, tau, k, rng))
    return reward(y).view(groups, n_samples).mean(1).sum()


SEQUENCE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "sf": seq_sf,
    "sf_ema": seq_sf_ema,
    "sf_rloo": seq_sf_rloo,
    "gs": seq_gs,
    "st_gs": seq_st_gs,
    "st": seq_st,
    "gumbel_rao": seq_gumbel_rao,
}

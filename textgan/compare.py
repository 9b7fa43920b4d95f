"""``textgan compare-estimators``: gradient estimators measured against *exact* gradients.

For every problem, estimator (:data:`textgan.estimators.ESTIMATORS`), temperature ``tau`` and
number of samples ``n`` it draws ``--draws`` seeded estimates (vectorised: one call yields a whole
batch of independent estimates) and reports, against the exact gradient ``g``:

* ``bias_l2``  ``||mean - g||`` of the mean estimate (includes Monte-Carlo noise of size about
  ``bias_se = sqrt(variance / draws)``: an unbiased estimator shows ``bias_l2 ~ bias_se``);
* ``cosine``   cosine similarity of the mean estimate and ``g``;
* ``variance`` trace of the covariance of the estimates (sum of per-coordinate variances);
* ``mse``      ``mean ||estimate - g||^2`` (= bias^2 + variance, up to ``1/draws``);
* ``ms_per_estimate`` wall time of the vectorised calls (sampling, ``f`` and ``autograd.grad``)
  divided by the number of draws: amortised, not the latency of a single call.

Problems (:data:`PROBLEMS`; each factory returns a list of :class:`Problem`):

``toy``
    single categoricals ``E_{z ~ Cat(softmax θ)}[f(z)]``: the binary toy of REBAR / RELAX,
    ``f(b) = (b - t)^2`` with ``t = 0.499`` and ``t = 0.45`` (two categories, ``θ = 0``; on a
    relaxed one-hot ``y``, ``f(y) = (y_1 - t)^2``), and ``K = 5`` with random ``θ`` and a random
    vector ``v`` of values, extended off the vertices linearly (``toy_cat5``: ``f(y) = y . v``)
    or quadratically (``toy_cat5_sq``: ``f(y) = (y * y) . v``); same values on exact one-hots,
    hence the same exact gradient, different relaxations. Exact gradient: autograd of
    ``sum_z softmax(θ)_z f(z)``. Two properties to read the table with: plain ``st`` is exact
    for a linear ``f`` (its backward pass is ``v . dp/dθ`` whatever the sample), and at
    ``p = 0.5`` (the binary toys' ``θ = 0``, REBAR's starting point) ``st`` is unbiased for the
    quadratic ``(b - t)^2`` too (its mean ``2(p - t) p(1 - p)`` equals ``(1 - 2t) p(1 - p)``
    only there); ``toy_cat5_sq`` shows its bias.
``sequence``
    a tiny autoregressive GRU generator (:class:`TinyGRUGenerator`, ``V = 4``, ``T = 4``) and a
    frozen random MLP reward on the flattened one-hots ``(B, T*V)``; exact gradient by
    enumerating all ``V^T = 256`` sequences (teacher-forced log-probs). ``rebar`` / ``relax`` are
    ``n/a`` here (single-categorical only, see :mod:`textgan.estimators`).
``vae``, ``checkpoint``
    plug-ins (:data:`PLUGIN_MODULES`): the factory imports ``textgan.models.vae`` (resp.
    :mod:`textgan.compare_models`, with ``--checkpoint PATH`` or ``--problem checkpoint PATH``)
    and calls its ``estimator_problems(args) -> list[Problem]`` (e.g. :class:`ToyProblem`
    objects whose ``f`` is a model's objective on a one-hot latent). Without the module or the
    hook, the command raises a clear ``ValueError`` ("problem 'vae' needs textgan.models.vae
    (not available yet)").
``checkpoint``
    a trained RelGAN / SeqGAN (discriminator as reward) or VAE (ELBO of a fixed batch) run or
    checkpoint: model-scale problems (``model_scale = True``) that have no exact gradient in
    general; :func:`run` hands them to :func:`textgan.compare_models.run_problems`, which
    reports variance, SNR and cosine to a reference gradient instead of bias against an exact
    one (see that module; its own ``--params``, ``--batch`` and ``--ref-samples`` options).
    ``--draws`` defaults to 200 there (1000 elsewhere).

Problem definitions are fixed (seed 0); ``--seed`` seeds the estimator draws only. ``sf_ema`` is
measured in steady state: its EMA is warmed by one discarded call first. ``relax`` first fits its
control variate (``RELAX_FIT_STEPS`` Adam steps, not timed). ``gumbel_rao`` uses ``k = --gr-k``
inner samples. The run uses ``--threads`` torch threads (default 1; restored afterwards).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import math
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textgan import estimators as E
from textgan.sampling import EMABaseline

__all__ = [
    "Problem",
    "ToyProblem",
    "SequenceProblem",
    "TinyGRUGenerator",
    "PROBLEMS",
    "make_problems",
    "toy_problems",
    "sequence_problems",
    "evaluate",
    "write_results",
    "add_arguments",
    "run",
]

COLUMNS = ("problem", "estimator", "tau", "samples", "bias_l2", "cosine", "variance", "mse",
           "ms_per_estimate", "bias_se")
_MAX_ELEMENTS = 4_000_000  # per vectorised call (chunks of draws)
_PROBLEM_SEED = 0
RELAX_FIT_STEPS = 100


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


class Problem:
    """A differentiable expectation with an exact gradient.

    Subclasses implement :meth:`params`, :meth:`exact_grad` and :meth:`_estimate_chunk`, and may
    override :meth:`unsupported`. Gradients are flattened over :meth:`params`, in order.
    """

    name: str = "problem"
    registry: dict[str, Callable[..., Tensor]] = E.ESTIMATORS

    def params(self) -> list[Tensor]:
        raise NotImplementedError

    def exact_grad(self) -> Tensor:
        """``(P,)`` float64."""
        raise NotImplementedError

    def unsupported(self, estimator: str, n_samples: int) -> str | None:
        """Why ``estimator`` cannot run with ``n_samples`` here (``None`` if it can)."""
        if estimator not in self.registry:
            return f"{estimator} is not implemented for the {self.name} problem"
        need = E.MIN_SAMPLES.get(estimator, 1)
        if n_samples < need:
            return f"{estimator} needs samples >= {need}"
        return None

    def _row_cost(self, n_samples: int, k: int) -> int:
        return n_samples * k

    def _estimate_chunk(self, fn, rows: int, n_samples: int, tau: float, rng, kwargs) -> Tensor:
        raise NotImplementedError

    def _prepare(self, estimator: str, tau: float, n_samples: int, rng, draws: int,
                 k: int) -> dict:
        kwargs: dict = {}
        if estimator == "gumbel_rao":
            kwargs["k"] = k
        if estimator == "sf_ema":  # steady state: warm the EMA with one discarded call
            kwargs["baseline"] = EMABaseline(0.9)
            self._estimate_chunk(self.registry[estimator], min(draws, 256), n_samples, tau, rng,
                                 kwargs)
        return kwargs

    def estimate(self, estimator: str, tau: float, n_samples: int,
                 rng: torch.Generator | None = None, *, draws: int = 1, k: int = 10) -> Tensor:
        """``draws`` independent estimates, ``(draws, P)`` float64 (vectorised in chunks)."""
        reason = self.unsupported(estimator, n_samples)
        if reason:
            raise ValueError(reason)
        fn = self.registry[estimator]
        kwargs = self._prepare(estimator, tau, n_samples, rng, draws, k)
        inner = k if estimator == "gumbel_rao" else 1
        chunk = max(1, _MAX_ELEMENTS // max(1, self._row_cost(n_samples, inner)))
        out = []
        for start in range(0, draws, chunk):
            rows = min(chunk, draws - start)
            out.append(self._estimate_chunk(fn, rows, n_samples, tau, rng, kwargs))
        return torch.cat(out).double()


class ToyProblem(Problem):
    """``E_{z ~ Cat(softmax θ)}[f(z)]`` for one categorical; ``f: (..., K) -> (...)``."""

    def __init__(self, name: str, logits: Tensor, f: Callable[[Tensor], Tensor]):
        self.name = name
        self.theta = logits.detach().float().clone().requires_grad_(True)
        self.f = f
        self._controls: dict[float, E.RelaxControl] = {}

    def params(self) -> list[Tensor]:
        return [self.theta]

    def objective(self, theta: Tensor) -> Tensor:
        k = theta.shape[-1]
        values = self.f(torch.eye(k, dtype=torch.float64))
        return (F.softmax(theta.double(), -1) * values).sum(-1)

    def exact_grad(self) -> Tensor:
        theta = self.theta.detach().double().requires_grad_(True)
        (g,) = torch.autograd.grad(self.objective(theta), theta)
        return g

    def _row_cost(self, n_samples: int, k: int) -> int:
        return n_samples * max(k, 1) * self.theta.shape[-1]

    def _prepare(self, estimator, tau, n_samples, rng, draws, k) -> dict:
        kwargs = super()._prepare(estimator, tau, n_samples, rng, draws, k)
        if estimator == "relax":
            if tau not in self._controls:
                control = E.RelaxControl(self.theta.shape[-1])
                E.fit_relax_control(self.theta, self.f, control, tau=tau, steps=RELAX_FIT_STEPS,
                                    lr=2e-2, rng=rng)
                self._controls[tau] = control.requires_grad_(False)
            kwargs["control"] = self._controls[tau]
        return kwargs

    def _estimate_chunk(self, fn, rows, n_samples, tau, rng, kwargs) -> Tensor:
        leaf = self.theta.detach().expand(rows, self.theta.shape[-1]).clone().requires_grad_(True)
        s = fn(leaf, self.f, n_samples=n_samples, tau=tau, rng=rng, **kwargs)
        (g,) = torch.autograd.grad(s, leaf)
        return g


def _binary_f(t: float) -> Callable[[Tensor], Tensor]:
    def f(y: Tensor) -> Tensor:
        return (y[..., 1] - t) ** 2

    return f


def _linear_f(v: Tensor) -> Callable[[Tensor], Tensor]:
    def f(y: Tensor) -> Tensor:
        return y @ v.to(y.dtype)

    return f


def _square_f(v: Tensor) -> Callable[[Tensor], Tensor]:
    def f(y: Tensor) -> Tensor:
        return (y * y) @ v.to(y.dtype)

    return f


def toy_problems(args=None) -> list[Problem]:
    """The binary toys (``t = 0.499``, ``t = 0.45``) and a ``K = 5`` categorical, the latter
    with two extensions of the same values ``v`` off the vertices (same exact gradient)."""
    gen = torch.Generator().manual_seed(_PROBLEM_SEED)
    theta5 = torch.randn(5, generator=gen)
    v = torch.randn(5, generator=gen)
    return [
        ToyProblem("toy_binary_t0.499", torch.zeros(2), _binary_f(0.499)),
        ToyProblem("toy_binary_t0.45", torch.zeros(2), _binary_f(0.45)),
        ToyProblem("toy_cat5", theta5, _linear_f(v)),
        ToyProblem("toy_cat5_sq", theta5, _square_f(v)),
    ]


# --------------------------------------------------------------------------------------------
# The tiny autoregressive generator and the sequence problem
# --------------------------------------------------------------------------------------------


class _BatchedGRU:
    """:class:`TinyGRUGenerator`'s step with ``D`` parameter vectors ``theta (D, P)``.

    A batch of ``B = D * n`` rows is split into ``D`` consecutive blocks of ``n``; block ``d``
    uses ``theta[d]``. Gradients w.r.t. ``theta`` are thus per block (one estimate per draw)
    without materialising ``B`` copies of the weights.
    """

    def __init__(self, owner: TinyGRUGenerator, theta: Tensor):
        self.owner = owner
        self.theta = theta
        self.start_token = owner.start_token
        self.vocab_size = owner.vocab_size
        self.device = theta.device

    def _weights(self) -> dict[str, Tensor]:
        out, i, d = {}, 0, self.theta.shape[0]
        for name, shape in self.owner.shapes.items():
            size = math.prod(shape)
            out[name] = self.theta[:, i:i + size].reshape(d, *shape)
            i += size
        return out

    def init_state(self, batch_size: int) -> Tensor:
        d = self.theta.shape[0]
        if batch_size % d:
            raise ValueError(f"batch size {batch_size} must be a multiple of the {d} parameter "
                             f"blocks")
        return self.theta.new_zeros(d, batch_size // d, self.owner.hidden)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        d, n, _ = state.shape
        v = self.vocab_size
        if x_t.dim() == 1:
            x = F.one_hot(x_t.long(), v + 1).to(self.theta.dtype)
        else:  # (relaxed) one-hot over the vocabulary; the start token has no column
            x = F.pad(x_t.to(self.theta.dtype), (0, 1))
        x = x.reshape(d, n, v + 1)
        w = self._weights()
        emb = torch.bmm(x, w["emb"])
        gi = torch.bmm(emb, w["w_ih"]) + w["b_ih"].unsqueeze(1)
        gh = torch.bmm(state, w["w_hh"]) + w["b_hh"].unsqueeze(1)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        cand = torch.tanh(i_n + r * h_n)
        h = (1 - z) * cand + z * state
        logits = torch.bmm(h, w["w_out"]) + w["b_out"].unsqueeze(1)
        return logits.reshape(d * n, v), h


class TinyGRUGenerator(nn.Module):
    """Embedding + GRU cell + linear, all weights in one flat parameter ``theta (P,)``.

    Satisfies :class:`textgan.sampling.Generator`: ``start_token = V`` (an extra embedding row),
    ``vocab_size = V``, ``init_state(B)``, ``step(ids (B,) or one-hot (B, V), state)``.
    :meth:`with_params` gives the same model with ``D`` parameter vectors (per-draw gradients).
    """

    def __init__(self, vocab_size: int = 4, hidden: int = 8, embed: int = 4, *,
                 seed: int = _PROBLEM_SEED, scale: float = 0.8):
        super().__init__()
        v, h, e = vocab_size, hidden, embed
        self.vocab_size, self.start_token, self.hidden = v, v, h
        self.shapes = {"emb": (v + 1, e), "w_ih": (e, 3 * h), "b_ih": (3 * h,),
                       "w_hh": (h, 3 * h), "b_hh": (3 * h,), "w_out": (h, v), "b_out": (v,)}
        size = sum(math.prod(s) for s in self.shapes.values())
        gen = torch.Generator().manual_seed(seed)
        self.theta = nn.Parameter(scale * torch.randn(size, generator=gen))

    def with_params(self, theta: Tensor) -> _BatchedGRU:
        return _BatchedGRU(self, theta if theta.dim() == 2 else theta.unsqueeze(0))

    def init_state(self, batch_size: int) -> Tensor:
        return self.with_params(self.theta).init_state(batch_size)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.with_params(self.theta).step(x_t, state)


class MLPReward:
    """A frozen random MLP ``(B, T, V) -> (B,)`` on the flattened (relaxed) one-hots."""

    def __init__(self, max_len: int, vocab_size: int, hidden: int = 16, *,
                 seed: int = _PROBLEM_SEED + 1):
        gen = torch.Generator().manual_seed(seed)
        d = max_len * vocab_size
        self.w1 = torch.randn(d, hidden, generator=gen) / math.sqrt(d) * 2.0
        self.b1 = 0.5 * torch.randn(hidden, generator=gen)
        self.w2 = torch.randn(hidden, generator=gen) / math.sqrt(hidden) * 2.0

    def __call__(self, one_hot: Tensor) -> Tensor:
        x = one_hot.reshape(one_hot.shape[0], -1)
        h = torch.tanh(x @ self.w1.to(x.dtype) + self.b1.to(x.dtype))
        return h @ self.w2.to(x.dtype)


class SequenceProblem(Problem):
    """``E_{x ~ G}[R(x)]`` for :class:`TinyGRUGenerator` and :class:`MLPReward`."""

    registry = E.SEQUENCE_ESTIMATORS

    def __init__(self, vocab_size: int = 4, max_len: int = 4, name: str = "sequence"):
        if not (2 <= vocab_size <= 5 and 1 <= max_len <= 5):
            raise ValueError("the sequence problem needs 2 <= V <= 5 and 1 <= T <= 5 (it "
                             f"enumerates V^T sequences), got V={vocab_size}, T={max_len}")
        self.name = name
        self.generator = TinyGRUGenerator(vocab_size)
        self.reward = MLPReward(max_len, vocab_size)
        self.max_len = max_len

    def params(self) -> list[Tensor]:
        return [self.generator.theta]

    def unsupported(self, estimator: str, n_samples: int) -> str | None:
        if estimator in ("rebar", "relax"):
            return f"{estimator} is single-categorical only (not defined for sequences here)"
        return super().unsupported(estimator, n_samples)

    def all_sequences(self) -> Tensor:
        v, t = self.generator.vocab_size, self.max_len
        return torch.cartesian_prod(*[torch.arange(v)] * t).reshape(-1, t)

    def log_prob(self, theta: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced ``log p(x)`` ``(N,)`` (in ``theta``'s dtype)."""
        model = self.generator.with_params(theta)
        n = tokens.shape[0]
        state = model.init_state(n)
        x = torch.full((n,), model.start_token, dtype=torch.long)
        total = theta.new_zeros(n)
        for t in range(tokens.shape[1]):
            logits, state = model.step(x, state)
            total = total + F.log_softmax(logits, -1).gather(1, tokens[:, t:t + 1]).squeeze(1)
            x = tokens[:, t]
        return total

    def objective(self, theta: Tensor) -> Tensor:
        tokens = self.all_sequences()
        rewards = self.reward(F.one_hot(tokens, self.generator.vocab_size).to(theta.dtype))
        return (self.log_prob(theta, tokens).exp() * rewards).sum()

    def exact_grad(self) -> Tensor:
        theta = self.generator.theta.detach().double().requires_grad_(True)
        (g,) = torch.autograd.grad(self.objective(theta), theta)
        return g

    def _row_cost(self, n_samples: int, k: int) -> int:
        return n_samples * max(k, 1) * self.max_len * 8

    def _estimate_chunk(self, fn, rows, n_samples, tau, rng, kwargs) -> Tensor:
        theta = self.generator.theta.detach()
        leaf = theta.expand(rows, theta.shape[0]).clone().requires_grad_(True)
        model = self.generator.with_params(leaf)
        s = fn(model, self.reward, self.max_len, n_samples=n_samples, tau=tau, rng=rng,
               groups=rows, **kwargs)
        (g,) = torch.autograd.grad(s, leaf)
        return g


def sequence_problems(args=None) -> list[Problem]:
    return [SequenceProblem()]


def _plugin(problem: str, module: str, args) -> list[Problem]:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise ValueError(f"problem '{problem}' needs {module} (not available yet)") from None
        raise
    hook = getattr(mod, "estimator_problems", None)
    if hook is None:
        raise ValueError(f"problem '{problem}' needs {module}.estimator_problems(args) "
                         f"(not available yet)")
    return list(hook(args))


#: where the plug-in problems live (each module defines ``estimator_problems(args)``).
PLUGIN_MODULES = {"vae": "textgan.models.vae", "checkpoint": "textgan.compare_models"}


def _vae_problems(args) -> list[Problem]:
    return _plugin("vae", PLUGIN_MODULES["vae"], args)


def _checkpoint_problems(args) -> list[Problem]:
    path = getattr(args, "checkpoint", None)
    if not path:
        raise ValueError("problem 'checkpoint' needs --checkpoint PATH (or --problem checkpoint "
                         "PATH): a relgan, seqgan or vae run directory or checkpoint")
    if not Path(path).exists():
        raise FileNotFoundError(f"--checkpoint {path}: no such file or directory; pass the "
                                f"output_dir of a relgan, seqgan or vae run or one of its "
                                f"checkpoints/step_N directories")
    return _plugin("checkpoint", PLUGIN_MODULES["checkpoint"], args)


#: name -> factory(args) -> list[Problem]; new problems register here.
PROBLEMS: dict[str, Callable[..., list[Problem]]] = {
    "toy": toy_problems,
    "sequence": sequence_problems,
    "vae": _vae_problems,
    "checkpoint": _checkpoint_problems,
}


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def make_problems(name: str, args=None) -> list[Problem]:
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem '{name}'; choose one of {list(PROBLEMS)}"
                         f"{_suggest(name, PROBLEMS)}")
    return PROBLEMS[name](args)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _stats(G: Tensor, exact: Tensor) -> dict:
    G, exact = G.double(), exact.double()
    mean = G.mean(0)
    variance = float(G.var(0, unbiased=True).sum()) if G.shape[0] > 1 else float("nan")
    denom = float(mean.norm() * exact.norm())
    return {
        "bias_l2": float((mean - exact).norm()),
        "cosine": float(mean @ exact) / denom if denom > 0 else None,
        "variance": variance,
        "mse": float((G - exact).pow(2).sum(1).mean()),
        "bias_se": math.sqrt(variance / G.shape[0]),
    }


def _seed_for(seed: int, *parts) -> int:
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**63)


def evaluate(problems: list[Problem], estimators: list[str], taus: list[float],
             samples: list[int], draws: int = 1000, seed: int = 0, *, k: int = 10,
             progress: bool = True) -> list[dict]:
    """One row per (problem, estimator, tau, samples); ``n/a`` rows have ``None`` metrics and a
    ``note``. Tau-independent estimators (:data:`textgan.estimators.TAU_FREE`) are computed once
    per sample count and repeated for every tau."""
    from tqdm.auto import tqdm

    for name in estimators:
        E.get_estimator(name)
    for tau in taus:
        _check_tau(tau)
    if draws < 2:
        raise ValueError(f"--draws must be >= 2 (variance over draws), got {draws}")
    total = len(problems) * len(estimators) * len(taus) * len(samples)
    bar = tqdm(total=total, desc="compare-estimators", disable=not progress, file=sys.stderr)
    rows = []
    for problem in problems:
        exact = problem.exact_grad()
        for name in estimators:
            for n in samples:
                cached = None
                for tau in taus:
                    bar.set_postfix_str(f"{problem.name} {name} tau={tau} n={n}")
                    row = {"problem": problem.name, "estimator": name, "tau": tau, "samples": n}
                    reason = problem.unsupported(name, n)
                    if reason:
                        row.update(dict.fromkeys(COLUMNS[4:]), note=reason)
                    elif cached is not None:
                        row.update(cached)
                    else:
                        rng = torch.Generator().manual_seed(_seed_for(seed, problem.name, name,
                                                                      tau, n))
                        problem.estimate(name, tau, n, rng, draws=min(draws, 8), k=k)  # warm-up
                        t0 = time.perf_counter()
                        G = problem.estimate(name, tau, n, rng, draws=draws, k=k)
                        ms = 1000 * (time.perf_counter() - t0) / draws
                        row.update(_stats(G, exact), ms_per_estimate=ms)
                        if name in E.TAU_FREE:
                            cached = {**{c: row[c] for c in COLUMNS[4:]},
                                      "note": "tau-independent"}
                            row["note"] = "tau-independent"
                    rows.append(row)
                    bar.update()
    bar.close()
    return rows


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], problems: list[str], out: Path, *, x: str, y: str, panel: str,
          file: str, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    panels = sorted({r[panel] for r in rows})
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r["estimator"]
                                                                        for r in rows))}
    handles = {}
    fig = Figure(figsize=(3.6 * len(problems) + 1.4, 2.8 * len(panels) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), len(problems), squeeze=False)
    for i, pv in enumerate(panels):
        for j, prob in enumerate(problems):
            ax = axes[i][j]
            sub = [r for r in rows if r["problem"] == prob and r[panel] == pv
                   and r.get(y) is not None and not math.isnan(r[y])]
            for name in dict.fromkeys(r["estimator"] for r in sub):
                pts = sorted((r[x], r[y]) for r in sub if r["estimator"] == name)
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                  label=name, color=colors[name])
                handles.setdefault(name, line)
            ax.set_xscale("log")
            xs = sorted({r[x] for r in sub})
            if xs:  # ticks at the measured settings only: fewer tick artists, faster drawing
                ax.set_xticks(xs, [f"{v:g}" for v in xs])
            ax.xaxis.set_minor_locator(NullLocator())
            if sub and all(r[y] > 0 for r in sub):
                ax.set_yscale("log")
                ax.yaxis.set_minor_locator(NullLocator())
            ax.set_title(f"{prob}, {panel}={pv}", fontsize=9)
            ax.set_xlabel(x)
            ax.set_ylabel(y)
    if handles:
        names = [n for n in colors if n in handles]
        fig.legend([handles[n] for n in names], names, loc="upper right", fontsize=8,
                   bbox_to_anchor=(1.0, 0.9))  # below the title line
    left = 0.8 / fig.get_figwidth()  # 0.8 inch for the y tick labels (10^-5 ...)
    fig.subplots_adjust(left=left, right=1 - 1.3 / fig.get_figwidth(), bottom=0.08, top=0.9,
                        wspace=0.35, hspace=0.55)
    fig.suptitle(title, x=left, ha="left")
    path = out / file
    fig.savefig(path, dpi=90)
    return path


def write_results(out: Path, rows: list[dict], meta: dict,
                  exact: dict[str, list[float]]) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the plots; return the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "exact_grad": exact, "rows": rows}, indent=2) + "\n")
    md = [f"# compare-estimators: {meta['problem']}", "",
          f"`{meta['command']}`", "",
          f"draws={meta['draws']} seed={meta['seed']} gumbel_rao k={meta['gr_k']}; exact "
          "gradient norms: " + ", ".join(f"{p}={math.sqrt(sum(v * v for v in g)):.4g}"
                                         for p, g in exact.items()), "",
          markdown_table(rows),
          "bias_l2 includes Monte-Carlo noise of about bias_se = sqrt(variance / draws). "
          "ms_per_estimate is amortised over vectorised draws. sf, sf_ema, sf_rloo and st do "
          "not use tau. sf_ema is measured with a warm EMA.", ""]
    return finish_report(out, md, rows, "bias_l2", [
        ("tau", "bias_l2", "samples", "bias_vs_tau.png", "bias (L2) of the mean estimate vs tau"),
        ("tau", "variance", "samples", "variance_vs_tau.png", "variance (trace) vs tau"),
        ("samples", "mse", "tau", "mse_vs_samples.png", "MSE vs samples")])


def finish_report(out: Path, md: list[str], rows: list[dict], metric: str,
                  plots: list[tuple[str, str, str, str, str]]) -> list[Path]:
    """Append to ``md`` the notes of the rows without ``metric`` (why it is n/a), write it as
    ``results.md``, draw ``plots`` (``(x, y, panel, file, title)`` each) and return the paths
    written (``results.json`` first: the caller has written it)."""
    notes = sorted({f"{r['estimator']} ({r['problem']}): {r['note']}" for r in rows
                    if r.get("note") and r.get(metric) is None})
    if notes:
        md = [*md, "n/a:", *[f"- {n}" for n in notes], ""]
    (out / "results.md").write_text("\n".join(md))
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    paths = [out / "results.json", out / "results.md"]
    for x, y, panel, file, title in plots:
        paths.append(_plot(rows, problems, out, x=x, y=y, panel=panel, file=file, title=title))
    return paths


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _check_tau(tau: float) -> None:
    if not tau > 0 or math.isinf(tau):
        raise ValueError(f"tau must be a positive finite number, got tau={tau}")


def _parse_list(text: str, kind: type, flag: str) -> list:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag} is empty; give a comma-separated list")
    try:
        return [kind(s) for s in items]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list of {kind.__name__}s, "
                         f"got '{text}'") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problem", default="toy", nargs="+", metavar="NAME",
                        help=f"one of {list(PROBLEMS)} (default: toy); 'checkpoint PATH' is "
                             f"the same as --problem checkpoint --checkpoint PATH")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="relgan, seqgan or vae run directory or checkpoint for --problem "
                             "checkpoint")
    parser.add_argument("--params", default=None, choices=("auto", "output", "all", "logits"),
                        help="checkpoint only: parameter subset of the gradients; auto (default):"
                             " the generator's output layer (GAN) or all encoder parameters "
                             "(VAE); all: every generator / encoder parameter; output: the "
                             "generator's output layer / the encoder's latent head; logits: "
                             "the VAE's latent logits")
    parser.add_argument("--batch", type=int, default=None,
                        help="checkpoint only: sentences in the VAE's fixed batch / real "
                             "sequences of RelGAN's rsgan reward (default 32)")
    parser.add_argument("--ref-samples", type=int, default=None, dest="ref_samples",
                        help="checkpoint only: samples of the sf_rloo reference gradient when "
                             "the exact one cannot be enumerated (default 20000)")
    parser.add_argument("--estimators", default=",".join(E.ESTIMATORS),
                        help=f"comma-separated subset of {list(E.ESTIMATORS)} (default: all)")
    parser.add_argument("--taus", default="0.1,0.5,1.0", help="temperatures (default 0.1,0.5,1.0)")
    parser.add_argument("--samples", default="1,10,100",
                        help="samples per estimate (default 1,10,100)")
    parser.add_argument("--draws", type=int, default=None,
                        help="seeded estimates per setting (default 1000; 200 for checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the estimator draws")
    parser.add_argument("--gr-k", type=int, default=10, dest="gr_k",
                        help="Gumbel-Rao inner conditional samples (default 10)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads during the run (default 1: these tensors are "
                             "tiny, and extra threads only add contention)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")


def _problem_arg(args) -> tuple[str, str | None]:
    """``--problem NAME`` or ``--problem checkpoint PATH`` -> (name, checkpoint)."""
    value, checkpoint = args.problem, getattr(args, "checkpoint", None)
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and value[0] == "checkpoint":
            if checkpoint and checkpoint != value[1]:
                raise ValueError(f"two checkpoints given ({value[1]} and --checkpoint "
                                 f"{checkpoint}); give one: --problem checkpoint PATH")
            return "checkpoint", value[1]
        if len(value) != 1:
            raise ValueError(f"--problem takes one name (or 'checkpoint PATH'), got "
                             f"'{' '.join(map(str, value))}'")
        value = value[0]
    return value, checkpoint


def run(args) -> int:
    problem, checkpoint = _problem_arg(args)
    args.problem, args.checkpoint = problem, checkpoint
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem '{problem}'; choose one of {list(PROBLEMS)}"
                         f"{_suggest(problem, PROBLEMS)}")
    if getattr(args, "checkpoint", None) and problem != "checkpoint":
        raise ValueError("--checkpoint is only used with --problem checkpoint")
    for flag, key in (("--params", "params"), ("--batch", "batch"),
                      ("--ref-samples", "ref_samples")):
        if getattr(args, key, None) is not None and problem != "checkpoint":
            raise ValueError(f"{flag} is only used with --problem checkpoint")
    names = _parse_list(args.estimators, str, "--estimators")
    for name in names:
        if name not in E.ESTIMATORS:
            raise ValueError(f"unknown estimator '{name}' in --estimators; choose from "
                             f"{list(E.ESTIMATORS)}{_suggest(name, E.ESTIMATORS)}")
    taus = _parse_list(args.taus, float, "--taus")
    for tau in taus:
        if not tau > 0 or math.isinf(tau):
            raise ValueError(f"--taus: tau must be > 0 (and finite), got tau={tau}")
    samples = _parse_list(args.samples, int, "--samples")
    if any(n < 1 for n in samples):
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    draws = args.draws if args.draws is not None else (200 if problem == "checkpoint" else 1000)
    args.draws = draws
    if draws < 2:
        raise ValueError(f"--draws must be >= 2 (variance over draws), got {draws}")
    if args.gr_k < 1:
        raise ValueError(f"--gr-k must be >= 1, got {args.gr_k}")
    threads = getattr(args, "threads", 1)
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    problems = make_problems(problem, args)
    if problems and all(getattr(p, "model_scale", False) for p in problems):
        from textgan.compare_models import run_problems

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run_problems(args, problems, list(dict.fromkeys(names)), taus, samples,
                                draws)
        finally:
            torch.set_num_threads(previous)
    t0 = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = evaluate(problems, list(dict.fromkeys(names)), taus, samples, args.draws,
                        args.seed, k=args.gr_k, progress=not args.no_progress)
    finally:
        torch.set_num_threads(previous)
    meta = {"problem": problem, "estimators": names, "taus": taus, "samples": samples,
            "draws": args.draws, "seed": args.seed, "gr_k": args.gr_k,
            "seconds": round(time.perf_counter() - t0, 3),
            "command": "textgan compare-estimators " + " ".join(
                [f"--problem {problem}", f"--estimators {','.join(names)}",
                 f"--taus {args.taus}", f"--samples {args.samples}", f"--draws {args.draws}",
                 f"--seed {args.seed}"])}
    exact = {p.name: p.exact_grad().tolist() for p in problems}
    paths = write_results(Path(args.out), rows, meta, exact)
    print(f"wrote {', '.join(str(p) for p in paths)} ({meta['seconds']:.1f} s)")
    return 0

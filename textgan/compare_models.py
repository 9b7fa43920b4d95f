"""``textgan compare-estimators --problem checkpoint PATH``: estimators at a trained model's state.

At model scale there is no exact gradient to compare with (except on tiny models, see below), so
this module measures, for each estimator, temperature ``tau`` and number of samples ``n``, the
spread of ``D = --draws`` independent seeded estimates ``g_1..g_D`` of the *same* gradient at the
checkpoint's fixed weights, flattened over a documented parameter subset (``--params``).

Problems (one per checkpoint; :func:`estimator_problems`)
    ``relgan``, ``seqgan``: ``grad E_{x ~ G}[R(x)]`` for the generator ``G`` (sequences of the
    checkpoint's length ``T``, untempered: ``tau`` only enters the relaxations) and a reward from
    the checkpoint's discriminator ``D`` in eval mode (no dropout):

    * RelGAN: ``R(x) = -l(D(x))``, the generator loss of the run's ``train.loss`` for one
      sample, as :func:`textgan.train.relgan.per_sample_g_loss`; for ``rsgan`` (which pairs a
      fake with a real sample) it is averaged over a fixed batch of ``--batch`` training
      sequences, ``R(x) = -mean_j softplus(-(D(x) - D(real_j)))`` (mean over representations);
    * SeqGAN: ``R(x) = sigmoid(D(x))``, D's probability that ``x`` is real (SeqGAN's reward of
      a complete sequence; the Monte-Carlo rollout rewards of intermediate tokens are a
      variance reduction of the same gradient and are not measured here).

    Relaxed estimators feed ``D`` the relaxed or straight-through one-hots (``D(one_hot @ E)``);
    score-function estimators feed it token ids (same values). With an end token (text corpora),
    a sequence is padded after its first ``eos`` (the policy puts probability 1 on ``pad``), as
    the trainers' ``sample_sequence(eos=...)``.

    ``vae``: the ELBO of a fixed batch of the first ``--batch`` test sentences,
    ``mean_b [E_{z ~ q(z|x_b)} log p(x_b | z) - KL(q(z|x_b) || uniform)]``, as a function of the
    encoder. Each sentence's ``M`` latent variables are sampled as a length-``M`` "sequence" with
    fixed logits (the encoder's), so the sequence estimators apply unchanged: ``sf`` is the
    trainer's ``score_function`` without baseline, ``sf_ema`` with its EMA baseline (pooled over
    sentences, as in training), ``gs`` is ``gumbel_softmax``, ``st_gs`` is ``gumbel_st``. The
    closed-form KL adds the same (noise-free) gradient to every draw. One estimate with ``n``
    samples draws ``n`` latents per sentence.

    Estimators: those of :data:`textgan.estimators.SEQUENCE_ESTIMATORS` (``sf``, ``sf_ema``,
    ``sf_rloo``, ``gs``, ``st_gs``, ``st``, ``gumbel_rao``); ``rebar`` / ``relax`` are ``n/a``
    (single-categorical only).

Parameter subsets (``--params``; ``auto``: ``output`` for GANs, ``all`` for the VAE)
    * GAN ``output``: the generator's output layer (``W_out (V, H)``, ``b_out (V,)``);
      vectorised: per draw ``sum_{rows, t} dS/dlogits_t (x) h_t``.
    * GAN ``all``: every generator parameter; per draw one teacher-forced pass over the draw's
      sampled tokens, back-propagating the captured ``dS/dlogits`` (slower: a loop over draws).
    * VAE ``all``: every encoder parameter (:meth:`CategoricalTextVAE.encoder_parameters`),
      ``J^T dELBO/dlogits`` by one batched vector-Jacobian product through the encoder.
    * VAE ``output``: the encoder's latent head ``to_logits``; VAE ``logits``: the latent logits
      ``(B, M, K)`` themselves.

    With hard-fed sequences every gradient reaches the parameters through the per-step logits,
    so these per-draw gradients are exact, not approximations (checked against the summed
    gradient in ``tests/test_compare_models.py``).

Statistics (one row per estimator, ``tau``, ``n``; ``g_bar`` the mean of the ``D`` draws)
    * ``variance``: ``tr Cov[g]``, the sum over the subset's coordinates of the unbiased
      variance of one estimate (with ``n`` samples) over the draws.
    * ``mean_norm``: ``||g_bar||``.
    * ``snr``: the signal-to-noise ratio of *one* estimate, ``||E g||^2 / tr Cov[g]``, estimated
      as ``(||g_bar||^2 - variance / D) / variance`` (``||g_bar||^2`` overestimates
      ``||E g||^2`` by ``variance / D`` on average; values below about ``1 / D`` are not
      resolved by ``D`` draws and may come out negative).
    * ``cosine_ref``: cosine of ``g_bar`` and the reference gradient ``g_ref``;
      ``bias_ref``: ``||g_bar - g_ref||``; ``bias_z``: ``bias_ref / sqrt(variance / D +
      ref_se^2)``, about 1 for an unbiased estimator (``E||g_bar - g_ref||^2`` is exactly the
      squared denominator when both are unbiased and independent), much larger for a biased one.
    * ``ms_per_estimate``: wall time of the vectorised estimator calls (sampling, reward, and the
      backward pass to the per-step logits) divided by ``D``; the per-draw parameter-gradient
      extraction is a measurement artefact and is not timed.

Reference gradient ``g_ref``
    *Exact* when the model is small enough to enumerate: ``V^T <= EXACT_MAX`` sequences (GANs
    without an end token) or ``K^M <= EXACT_MAX`` latent configurations (VAE): autograd of
    ``sum_x p(x) R(x)`` (float64 copy of G) or of the enumerated ELBO. Otherwise an *estimate*,
    labelled as such: the mean of ``--ref-samples / REF_GROUP`` independent ``sf_rloo`` estimates
    with ``REF_GROUP`` samples each (unbiased), with its standard error ``ref_se =
    sqrt(tr Cov / groups)`` reported next to its norm. At model scale the score function's
    single-sample SNR can be ~1e-5, so even 20,000 samples leave a reference that is mostly
    noise; ``results.md`` flags a reference whose ``ref_se`` exceeds :data:`NOISY_REFERENCE` of
    its norm (then ``cosine_ref`` and ``bias_z`` say little, variance and SNR still hold).

Draws are seeded per (problem, estimator, tau, n) from ``--seed`` as in :mod:`textgan.compare`;
``sf_ema`` is measured with a warm EMA (one discarded chunk). Draws are vectorised: one call of a
sequence estimator with ``groups = c`` yields ``c`` estimates (``c`` limited by
:data:`MAX_ELEMENTS` one-hot entries per call).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textgan import estimators as E
from textgan.sampling import EMABaseline

__all__ = [
    "EXACT_MAX",
    "REF_GROUP",
    "COLUMNS",
    "ModelProblem",
    "GANProblem",
    "VAEProblem",
    "relgan_reward",
    "seqgan_reward",
    "estimator_problems",
    "measure",
    "evaluate",
    "write_results",
    "run_problems",
]

#: enumerate (exact gradient) up to this many sequences / latent configurations
EXACT_MAX = 5000
#: samples per sf_rloo estimate of the sampled reference gradient
REF_GROUP = 100
#: one-hot (or decoder-logit) entries per vectorised call
MAX_ELEMENTS = 16_000_000
#: per-draw gradient entries held per call
GRAD_ELEMENTS = 16_000_000
#: a sampled reference whose standard error exceeds this fraction of its norm is flagged
NOISY_REFERENCE = 0.3
COLUMNS = ("problem", "estimator", "tau", "samples", "variance", "mean_norm", "snr",
           "cosine_ref", "bias_ref", "bias_z", "ms_per_estimate")
PARAMS = ("auto", "output", "all", "logits")
SUPPORTED = ("relgan", "seqgan", "vae")
_FORCED = -1.0e4  # logit of the impossible tokens after eos (exp(-1e4 / tau) == 0 in float32)


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


class ModelProblem:
    """Per-draw gradients of a model-scale objective w.r.t. a parameter subset.

    Subclasses set ``name``, ``params_label``, ``param_names``, ``num_params``, ``info`` and
    implement :meth:`_calls` and :meth:`exact_grad`.
    """

    model_scale = True  # textgan.compare hands these problems to this module
    registry: dict[str, Callable[..., Tensor]] = E.SEQUENCE_ESTIMATORS
    name = "model"
    params_label = ""
    num_params = 0

    def __init__(self):
        self.info: dict = {}

    def unsupported(self, estimator: str, n_samples: int) -> str | None:
        if estimator in ("rebar", "relax"):
            return f"{estimator} is single-categorical only (not defined for sequences here)"
        if estimator not in self.registry:
            return f"{estimator} is not implemented for the {self.name} problem"
        need = E.MIN_SAMPLES.get(estimator, 1)
        if n_samples < need:
            return f"{estimator} needs samples >= {need}"
        return None

    def exact_grad(self) -> Tensor | None:
        """``(P,)`` float64 exact gradient, or None when the model is too big to enumerate."""
        return None

    def draws_per_call(self, n_samples: int, k: int) -> int:
        raise NotImplementedError

    def draw_grads(self, fn, draws: int, n_samples: int, tau: float, rng,
                   kwargs: dict) -> tuple[Tensor, float]:
        """``(draws, P)`` float64 independent estimates and the seconds spent in the estimator
        calls and their backward passes to the logits."""
        raise NotImplementedError

    def prepare(self, estimator: str, tau: float, n_samples: int, rng, draws: int,
                k: int) -> dict:
        kwargs: dict = {}
        if estimator == "gumbel_rao":
            kwargs["k"] = k
        if estimator == "sf_ema":  # steady state: warm the EMA with one discarded chunk
            kwargs["baseline"] = EMABaseline(0.9)
            c = min(draws, self.draws_per_call(n_samples, 1))
            self.draw_grads(self.registry[estimator], c, n_samples, tau, rng, kwargs)
        return kwargs


# -- GANs ------------------------------------------------------------------------------------


class _Policy(nn.Module):
    """The generator as a :class:`textgan.sampling.Generator` that records, per step, the
    logits it produced and the token ids it was fed (and pads after ``eos``)."""

    def __init__(self, generator: nn.Module, eos: int | None = None, pad: int | None = None):
        super().__init__()
        self.generator = generator
        self.start_token, self.vocab_size = generator.start_token, generator.vocab_size
        self.eos, self.pad = eos, (eos if pad is None else pad)
        self.logits: list[Tensor] = []
        self.inputs: list[Tensor] = []

    def clear(self) -> None:
        self.logits, self.inputs = [], []

    def init_state(self, batch_size: int):
        done = torch.zeros(batch_size, dtype=torch.bool, device=_device(self.generator))
        return self.generator.init_state(batch_size), done, 0

    def step(self, x_t: Tensor, state):
        inner, done, t = state
        if x_t.is_floating_point():
            raise ValueError("compare-estimators feeds token ids (hard feed) to the generator")
        if self.eos is not None and t > 0:
            done = done | (x_t == self.eos)
        logits, inner = self.generator.step(x_t, inner)
        self.logits.append(logits)
        self.inputs.append(x_t)
        if self.eos is not None and bool(done.any()):
            forced = torch.full_like(logits, _FORCED).detach()
            forced[:, self.pad] = 0.0
            logits = torch.where(done[:, None], forced, logits)
        return logits, (inner, done, t + 1)


def _device(module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _output_layer(G: nn.Module) -> nn.Linear:
    head = getattr(G, "out", None)
    model = getattr(G, "model", None)
    if not isinstance(head, nn.Linear) and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"--params output: cannot find the output layer (an nn.Linear `out`) "
                         f"of {type(G).__name__}; use --params all")
    for m in G.modules():
        if isinstance(m, nn.Embedding) and m.weight is head.weight:
            raise ValueError("--params output: the generator's output layer shares its weight "
                             "with the input embedding (tied weights); use --params all")
    return head


def _flat(grads, params) -> Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def _all_sequences(v: int, t: int) -> Tensor:
    return torch.cartesian_prod(*[torch.arange(v)] * t).reshape(-1, t)


class GANProblem(ModelProblem):
    """``grad E_{x ~ G}[R(x)]`` at a generator's fixed weights (see the module docstring)."""

    def __init__(self, name: str, generator: nn.Module, reward: Callable[[Tensor], Tensor],
                 max_len: int, *, eos: int | None = None, pad: int | None = None,
                 params: str = "output", info: dict | None = None):
        super().__init__()
        if params not in ("output", "all"):
            raise ValueError(f"--params {params} does not apply to a GAN generator; choose "
                             f"output (its output layer) or all (every generator parameter)")
        self.name, self.reward, self.max_len = name, reward, int(max_len)
        self.eos, self.pad = eos, pad
        self.G = generator.eval()
        self.policy = _Policy(self.G, eos, pad)
        self.mode = params
        if params == "output":
            self.head = _output_layer(self.G)
            self.G.requires_grad_(False)
            self.head.requires_grad_(True)
            names = {id(p): n for n, p in self.G.named_parameters()}
            self.params = [p for p in (self.head.weight, self.head.bias) if p is not None]
            self.param_names = [names[id(p)] for p in self.params]
            self.params_label = "generator output layer (" + ", ".join(self.param_names) + ")"
        else:
            self.G.requires_grad_(True)
            named = list(self.G.named_parameters())
            self.params = [p for _, p in named]
            self.param_names = [n for n, _ in named]
            self.params_label = f"all generator parameters ({len(named)} tensors)"
        self.num_params = sum(p.numel() for p in self.params)
        self.info = {**(info or {}), "params": self.params_label,
                     "num_params": self.num_params, "vocab_size": self.G.vocab_size,
                     "max_len": self.max_len}

    # -- exact gradient (tiny models) --------------------------------------------------------
    def exact_reason(self) -> str | None:
        v, t = self.G.vocab_size, self.max_len
        if self.eos is not None:
            return "the corpus has an end token (enumeration not implemented)"
        if v ** t > EXACT_MAX:
            return f"V^T = {v}^{t} > {EXACT_MAX} sequences"
        return None

    def exact_grad(self) -> Tensor | None:
        if self.exact_reason():
            return None
        G64 = copy.deepcopy(self.G).double()
        named = dict(G64.named_parameters())
        params = [named[n] for n in self.param_names]
        seqs = _all_sequences(self.G.vocab_size, self.max_len).to(_device(self.G))
        n = seqs.shape[0]
        state = G64.init_state(n)
        x = torch.full((n,), self.G.start_token, dtype=torch.long, device=seqs.device)
        log_p = torch.zeros(n, dtype=torch.float64, device=seqs.device)
        for t in range(self.max_len):
            logits, state = G64.step(x, state)
            log_p = log_p + F.log_softmax(logits.double(), -1).gather(1, seqs[:, t:t + 1])[:, 0]
            x = seqs[:, t]
        with torch.no_grad():
            rewards = self.reward(F.one_hot(seqs, self.G.vocab_size).float()).double()
        grads = torch.autograd.grad((log_p.exp() * rewards).sum(), params, allow_unused=True)
        return _flat(grads, params).double()

    # -- estimates --------------------------------------------------------------------------
    def draws_per_call(self, n_samples: int, k: int) -> int:
        per_draw = n_samples * max(k, 1) * self.max_len * self.G.vocab_size
        return max(1, min(MAX_ELEMENTS // per_draw, GRAD_ELEMENTS // max(1, self.num_params)))

    def draw_grads(self, fn, draws, n_samples, tau, rng, kwargs):
        pol = self.policy
        pol.clear()
        hidden: list[Tensor] = []
        hook = None
        if self.mode == "output":
            hook = self.head.register_forward_hook(
                lambda m, inp, out: hidden.append(inp[0].detach()))
        try:
            t0 = time.perf_counter()
            s = fn(pol, self.reward, self.max_len, n_samples=n_samples, tau=tau, rng=rng,
                   groups=draws, **kwargs)
            gl = torch.autograd.grad(s, pol.logits, allow_unused=True)
            seconds = time.perf_counter() - t0
        finally:
            if hook is not None:
                hook.remove()
        rows, v = draws * n_samples, self.G.vocab_size
        g = torch.stack([torch.zeros(rows, v, device=s.device) if gi is None else gi.float()
                         for gi in gl], 1)  # (rows, T, V): dS/dlogits of every row and step
        inputs = torch.stack(pol.inputs, 1)  # (rows, T): start token, then the fed tokens
        pol.clear()
        if self.mode == "output":
            h = torch.stack([x.reshape(rows, -1) for x in hidden], 1).float()  # (rows, T, H)
            gd = g.reshape(draws, -1, v)  # rows of draw d are d * n .. (d + 1) * n - 1
            gw = torch.bmm(gd.transpose(1, 2), h.reshape(draws, gd.shape[1], -1))  # (c, V, H)
            parts = [gw.reshape(draws, -1)]
            if len(self.params) > 1:
                parts.append(gd.sum(1))
            return torch.cat(parts, 1).double(), seconds
        out = []
        for d in range(draws):  # teacher-forced pass over the draw's tokens, backward dS/dlogits
            rows_d = slice(d * n_samples, (d + 1) * n_samples)
            logits = self.G(inputs[rows_d])
            grads = torch.autograd.grad(logits, self.params, g[rows_d].to(logits.dtype),
                                        allow_unused=True)
            out.append(_flat(grads, self.params))
        return torch.stack(out).double(), seconds


def relgan_reward(D: nn.Module, loss: str, d_real: Tensor | None = None) -> Callable:
    """``R(y) = -`` the per-sample RelGAN generator loss of ``D``'s logits on one-hots ``y``
    ``(B, T, V)`` (ids when ``y`` carries no gradient); ``rsgan`` averages over the real
    logits ``d_real (J, R)`` (see the module docstring)."""
    if loss == "rsgan" and d_real is None:
        raise ValueError("the rsgan reward needs the discriminator's logits on real data")

    def reward(y: Tensor) -> Tensor:
        f = D(y if y.requires_grad else y.argmax(-1)).float()
        f = f.reshape(f.shape[0], -1)  # (B, num_rep)
        if loss == "standard":
            lo = F.softplus(-f).mean(-1)
        elif loss == "rsgan":
            real = d_real.reshape(d_real.shape[0], -1).to(f)
            lo = F.softplus(-(f[:, None, :] - real[None])).mean((-1, -2))
        elif loss == "lsgan":
            lo = (f - 1.0).pow(2).mean(-1)
        else:  # hinge, wgan_gp: -D(fake)
            lo = -f.mean(-1)
        return -lo

    return reward


def seqgan_reward(D: nn.Module) -> Callable:
    """``R(y) = sigmoid(D(y))`` (ids when ``y`` carries no gradient)."""

    def reward(y: Tensor) -> Tensor:
        return torch.sigmoid(D(y if y.requires_grad else y.argmax(-1)).float()).reshape(-1)

    return reward


# -- the VAE ---------------------------------------------------------------------------------


class _LatentPolicy:
    """The ``M`` latent variables of each row as a length-``M`` sequence with fixed logits
    ``(rows, M, K)`` (a :class:`textgan.sampling.Generator` that ignores its inputs)."""

    def __init__(self, logits: Tensor):
        self.logits = logits
        self.start_token, self.vocab_size = 0, logits.shape[-1]

    def init_state(self, batch_size: int) -> int:
        if batch_size != self.logits.shape[0]:
            raise ValueError(f"batch size {batch_size} != {self.logits.shape[0]} latent rows")
        return 0

    def step(self, x_t: Tensor, t: int) -> tuple[Tensor, int]:
        return self.logits[:, t], t + 1


class VAEProblem(ModelProblem):
    """``grad`` of the batch-mean ELBO w.r.t. the encoder (see the module docstring)."""

    def __init__(self, name: str, vae: nn.Module, x: Tensor, *, params: str = "all",
                 info: dict | None = None):
        super().__init__()
        if params not in ("all", "output", "logits"):
            raise ValueError(f"--params {params} does not apply to a VAE; choose all (every "
                             f"encoder parameter), output (the latent head to_logits) or logits")
        self.name, self.mode = name, params
        self.vae = vae.eval()
        self.vae.requires_grad_(False)
        self.x = x
        self.enc_params = list(vae.encoder_parameters())
        for p in self.enc_params:
            p.requires_grad_(True)
        summary, logits = vae.encode(x)  # graph kept for the vector-Jacobian products
        self.summary, self.logits = summary.detach().float(), logits
        self.B, self.M, self.K = logits.shape
        lg = logits.detach().float().requires_grad_(True)
        (self.kl_grad,) = torch.autograd.grad(_kl(lg).sum(), lg)  # (B, M, K)
        enc = {id(p): f"encoder.{n}" for n, p in vae.named_parameters()}
        if params == "all":
            self.params = self.enc_params
            self.params_label = f"all encoder parameters ({len(self.params)} tensors)"
        elif params == "output":
            self.params = [vae.to_logits.weight, vae.to_logits.bias]
            self.params_label = "encoder latent head (to_logits.weight, to_logits.bias)"
        else:
            self.params = []
            self.params_label = f"latent logits ({self.B} x {self.M} x {self.K})"
        self.param_names = [enc.get(id(p), "?") for p in self.params] or ["logits"]
        self.num_params = (sum(p.numel() for p in self.params) if self.params
                           else self.logits.numel())
        self.info = {**(info or {}), "params": self.params_label,
                     "num_params": self.num_params, "sentences": self.B,
                     "latent_vars": self.M, "latent_classes": self.K}

    def _recon_reward(self, groups_rows: int, n_samples: int, first: int) -> Callable:
        # rows are (group, sample); group g of this call is sentence (first + g) % B
        idx = (torch.arange(groups_rows, device=self.x.device) + first) % self.B
        x_rows = self.x[idx].repeat_interleave(n_samples, 0)

        def reward(y: Tensor) -> Tensor:
            return -self.vae.recon_nll(x_rows, y.float())

        return reward

    def exact_reason(self) -> str | None:
        if self.K ** self.M > EXACT_MAX:
            return f"K^M = {self.K}^{self.M} > {EXACT_MAX} latent configurations"
        return None

    def _map(self, g_logits: Tensor) -> Tensor:
        """Per-draw gradients w.r.t. the latent logits ``(c, B, M, K)`` -> ``(c, P)``."""
        c = g_logits.shape[0]
        if self.mode == "logits":
            return g_logits.reshape(c, -1).double()
        if self.mode == "output":
            gl = g_logits.reshape(c, self.B, -1)
            gw = torch.einsum("cbo,bh->coh", gl, self.summary)
            return torch.cat([gw.reshape(c, -1), gl.sum(1)], 1).double()
        grads = torch.autograd.grad(self.logits, self.params, g_logits.to(self.logits.dtype),
                                    is_grads_batched=True, retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros(c, p.numel()) if g is None else g.reshape(c, -1))
                          for g, p in zip(grads, self.params, strict=True)], 1).double()

    def exact_grad(self) -> Tensor | None:
        if self.exact_reason():
            return None
        vae, B, M, K = self.vae, self.B, self.M, self.K
        z = _all_sequences(K, M).to(self.x.device)  # (Z, M)
        nz = z.shape[0]
        one_hot = F.one_hot(z, K).float()
        with torch.no_grad():
            per = max(1, MAX_ELEMENTS // max(1, nz * self.x.shape[1] * vae.vocab_size))
            recon = torch.cat([vae.recon_nll(self.x[b0:b0 + per].repeat_interleave(nz, 0),
                                             one_hot.repeat(min(per, B - b0), 1, 1))
                               for b0 in range(0, B, per)]).view(B, nz).double()
        _, logits = vae.encode(self.x)  # a fresh graph through the encoder
        leaf = logits if self.mode != "logits" else logits.detach().requires_grad_(True)
        logq = F.log_softmax(leaf.double(), -1)  # (B, M, K)
        logq_z = logq[:, torch.arange(M)[None, :], z].sum(-1)  # (B, Z)
        elbo = (logq_z.exp() * -recon).sum(1) - _kl(leaf.double())
        target = [leaf] if self.mode == "logits" else self.params
        grads = torch.autograd.grad(elbo.mean(), target, allow_unused=True)
        return _flat(grads, target).double()

    def draws_per_call(self, n_samples: int, k: int) -> int:
        per_group = n_samples * max(k, 1) * self.x.shape[1] * self.vae.vocab_size
        groups = max(1, MAX_ELEMENTS // per_group)
        return max(1, min(groups // self.B, GRAD_ELEMENTS // max(1, self.num_params)))

    def draw_grads(self, fn, draws, n_samples, tau, rng, kwargs):
        B = self.B
        leaf = self.logits.detach().float().expand(draws, B, self.M, self.K).clone()
        leaf.requires_grad_(True)
        flat = leaf.view(draws * B, self.M, self.K)  # group (d, b) = d * B + b
        per_group = n_samples * max(kwargs.get("k", 1), 1) * self.x.shape[1] \
            * self.vae.vocab_size
        per_call = max(1, MAX_ELEMENTS // per_group)  # groups per estimator call
        g = torch.zeros_like(leaf)
        seconds = 0.0
        for g0 in range(0, draws * B, per_call):
            g1 = min(draws * B, g0 + per_call)
            t0 = time.perf_counter()
            rows = flat[g0:g1].repeat_interleave(n_samples, 0)  # (groups * n, M, K)
            s = fn(_LatentPolicy(rows), self._recon_reward(g1 - g0, n_samples, g0), self.M,
                   n_samples=n_samples, tau=tau, rng=rng, groups=g1 - g0, **kwargs)
            (gi,) = torch.autograd.grad(s, leaf)
            seconds += time.perf_counter() - t0
            g += gi
        # dELBO/dlogits per draw: (E-step gradient - KL gradient), mean over the B sentences
        return self._map((g - self.kl_grad) / B), seconds


def _kl(logits: Tensor) -> Tensor:
    from textgan.models.vae import kl_uniform

    if logits.dtype == torch.float64:
        logq = F.log_softmax(logits, -1)
        return (logq.exp() * (logq + math.log(logits.shape[-1]))).sum((-1, -2))
    return kl_uniform(logits)


# --------------------------------------------------------------------------------------------
# Loading a checkpoint (the plug-in hook of textgan.compare)
# --------------------------------------------------------------------------------------------

_FIX = ("pass the output_dir of a relgan, seqgan or vae run (`textgan train ...`) or one of its "
        "checkpoints/step_N directories")


def _resolve(path) -> Path:
    from textgan.runs import resolve_checkpoint

    try:
        return resolve_checkpoint(path)
    except FileNotFoundError:
        if not Path(path).exists():
            raise FileNotFoundError(f"--checkpoint {path}: no such file or directory; "
                                    f"{_FIX}") from None
        raise ValueError(f"--checkpoint {path}: not a run directory (with checkpoints/step_N/) "
                         f"or a checkpoint directory (with trainer_state.pt); {_FIX}") from None
    except ValueError as e:
        raise ValueError(f"--checkpoint {path}: {e}; {_FIX}") from None


def _algorithm(ckpt: Path, path) -> str:
    import yaml

    try:
        raw = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8"))
        algorithm = raw["algorithm"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise ValueError(f"--checkpoint {path}: '{ckpt}' has no readable config.yaml with an "
                         f"`algorithm`; {_FIX}") from None
    if algorithm not in SUPPORTED:
        hint = (" (an MLE generator has neither a discriminator to give rewards nor latent "
                "variables; train a GAN from it with generator.init_from=PATH, or use "
                "--problem sequence for a generator-level toy)") if algorithm == "mle" else ""
        raise ValueError(f"--checkpoint {path}: a '{algorithm}' run is not supported by "
                         f"--problem checkpoint{hint}; {_FIX}")
    return algorithm


def _trainer_state(ckpt: Path) -> dict:
    from textgan.train.common import STATE_FILE

    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    return {"phase": state.get("phase"), "phase_step": state.get("step")}


def estimator_problems(args) -> list[ModelProblem]:
    """The plug-in hook of ``textgan compare-estimators --problem checkpoint``: one
    :class:`GANProblem` or :class:`VAEProblem` for ``args.checkpoint`` (a run or checkpoint
    directory), with ``args.params`` (``auto``), ``args.batch`` (32) sentences."""
    from textgan.runs import load_for_eval

    path = getattr(args, "checkpoint", None)
    params = getattr(args, "params", None) or "auto"
    batch = getattr(args, "batch", None)
    batch = 32 if batch is None else batch
    if params not in PARAMS:
        raise ValueError(f"--params must be one of {list(PARAMS)}, got '{params}'")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    ref_samples = getattr(args, "ref_samples", None)
    if ref_samples is not None and ref_samples < 2 * REF_GROUP:
        raise ValueError(f"--ref-samples must be >= {2 * REF_GROUP} (sf_rloo groups of "
                         f"{REF_GROUP}), got {ref_samples}")
    ckpt = _resolve(path)
    algorithm = _algorithm(ckpt, path)
    handle = load_for_eval(ckpt)
    info = {"algorithm": algorithm, "checkpoint": str(ckpt), **_trainer_state(ckpt)}
    name = f"{algorithm}_{ckpt.name}"
    meta = handle.meta
    if algorithm == "vae":
        x = handle.corpus.test[:batch]
        info["batch"] = f"the first {x.shape[0]} test sentences"
        info["objective"] = "mean ELBO of the batch (nats per sentence)"
        return [VAEProblem(name, handle.generator.vae, x,
                           params="all" if params == "auto" else params, info=info)]
    D = handle.load_discriminator().requires_grad_(False)
    if info["phase"] == "pretrain":
        info["warning"] = "checkpoint from the MLE pretrain phase: the discriminator is untrained"
    if algorithm == "relgan":
        loss = handle.cfg.train.loss
        if info["phase"] == "adversarial":  # the temperature the run was training at
            tau_of = handle.cfg.sampler.tau_schedule(handle.cfg.train.adv_steps)
            info["train_tau"] = round(tau_of(info["phase_step"]), 4)
        d_real = None
        if loss == "rsgan":
            real = handle.corpus.train[:batch]
            with torch.no_grad():
                d_real = D(real).float()
            info["batch"] = f"real logits of the first {real.shape[0]} training sequences"
        reward = relgan_reward(D, loss, d_real)
        info["reward"] = f"-(per-sample {loss} generator loss of D)"
    else:
        reward = seqgan_reward(D)
        info["reward"] = "sigmoid(D(x))"
    return [GANProblem(name, handle.generator, reward, meta["seq_len"], eos=meta["eos"],
                       pad=meta["pad"], params="output" if params == "auto" else params,
                       info=info)]


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def measure(problem: ModelProblem, estimator: str, tau: float, n_samples: int, draws: int,
            rng: torch.Generator | None = None, *, k: int = 10) -> dict:
    """``D = draws`` estimates, streamed: ``{"mean" (P,), "variance", "draws", "seconds"}``.

    ``variance`` is the trace of the unbiased covariance, accumulated chunk by chunk with Chan
    et al.'s pairwise update (no ``(draws, P)`` matrix is held)."""
    reason = problem.unsupported(estimator, n_samples)
    if reason:
        raise ValueError(reason)
    if draws < 2:
        raise ValueError(f"--draws must be >= 2 (variance over draws), got {draws}")
    fn = problem.registry[estimator]
    kwargs = problem.prepare(estimator, tau, n_samples, rng, draws, k)
    chunk = problem.draws_per_call(n_samples, k if estimator == "gumbel_rao" else 1)
    problem.draw_grads(fn, 1, n_samples, tau, rng, kwargs)  # warm-up (lazy init), not counted
    mean, m2, count, seconds = None, 0.0, 0, 0.0
    while count < draws:
        c = min(chunk, draws - count)
        G, sec = problem.draw_grads(fn, c, n_samples, tau, rng, kwargs)
        seconds += sec
        m_c = G.mean(0)
        m2_c = float((G - m_c).pow(2).sum())
        if mean is None:
            mean, m2 = m_c, m2_c
        else:
            delta = m_c - mean
            total = count + c
            mean = mean + delta * (c / total)
            m2 += m2_c + float(delta.dot(delta)) * count * c / total
        count += c
    return {"mean": mean, "variance": m2 / (draws - 1), "draws": draws, "seconds": seconds}


def reference(problem: ModelProblem, ref_samples: int = 20_000, seed: int = 0, *,
              kind: str = "auto") -> dict:
    """The reference gradient: exact when enumerable (``kind="auto"``), else (or with
    ``kind="sampled"``) the mean of ``ref_samples / REF_GROUP`` ``sf_rloo`` estimates."""
    from textgan.compare import _seed_for

    if kind not in ("auto", "sampled"):
        raise ValueError(f"reference kind must be 'auto' or 'sampled', got '{kind}'")
    exact = problem.exact_grad() if kind == "auto" else None
    if exact is not None:
        return {"kind": "exact", "grad": exact, "se": 0.0, "samples": None,
                "norm": float(exact.norm())}
    groups = max(2, ref_samples // REF_GROUP)
    rng = torch.Generator().manual_seed(_seed_for(seed, problem.name, "reference"))
    m = measure(problem, "sf_rloo", 1.0, REF_GROUP, groups, rng)
    se = math.sqrt(m["variance"] / groups)
    why = getattr(problem, "exact_reason", lambda: None)()
    return {"kind": f"sf_rloo estimate ({groups} x {REF_GROUP} samples)", "grad": m["mean"],
            "se": se, "samples": groups * REF_GROUP, "norm": float(m["mean"].norm()),
            "not_exact": why or "sampled reference requested"}


def row_stats(m: dict, ref: dict) -> dict:
    """The row's statistics (module docstring) from :func:`measure` output and a reference."""
    mean, var, d = m["mean"], m["variance"], m["draws"]
    sq = float(mean.dot(mean))
    bias_se = math.sqrt(max(var, 0.0) / d)
    g = ref["grad"]
    denom = float(mean.norm() * g.norm())
    bias = float((mean - g).norm())
    z_den = math.sqrt(bias_se ** 2 + ref["se"] ** 2)
    return {"variance": var, "mean_norm": math.sqrt(sq),
            "snr": (sq - var / d) / var if var > 0 else None,
            "cosine_ref": float(mean.dot(g)) / denom if denom > 0 else None,
            "bias_ref": bias, "bias_z": bias / z_den if z_den > 0 else None,
            "bias_se": bias_se, "ms_per_estimate": 1000 * m["seconds"] / d}


def evaluate(problems: list[ModelProblem], estimators: list[str], taus: list[float],
             samples: list[int], draws: int = 200, seed: int = 0, *, k: int = 10,
             ref_samples: int = 20_000, progress: bool = True,
             references: dict | None = None) -> tuple[list[dict], dict]:
    """Rows (one per problem, estimator, tau, samples; ``n/a`` rows carry a ``note``) and the
    references ``{problem: reference dict}`` (computed unless given)."""
    from tqdm.auto import tqdm

    from textgan.compare import _seed_for

    for name in estimators:
        E.get_estimator(name)
    total = len(problems) * (1 + len(estimators) * len(taus) * len(samples))
    bar = tqdm(total=total, desc="compare-estimators", disable=not progress, file=sys.stderr)
    refs = dict(references or {})
    rows = []
    for problem in problems:
        bar.set_postfix_str(f"{problem.name} reference")
        if problem.name not in refs:
            refs[problem.name] = reference(problem, ref_samples, seed)
        bar.update()
        for name in estimators:
            for n in samples:
                cached = None
                for tau in taus:
                    bar.set_postfix_str(f"{problem.name} {name} tau={tau} n={n}")
                    row = {"problem": problem.name, "estimator": name, "tau": tau, "samples": n}
                    reason = problem.unsupported(name, n)
                    if reason:
                        row.update(dict.fromkeys((*COLUMNS[4:], "bias_se")), note=reason)
                    elif cached is not None:
                        row.update(cached)
                    else:
                        rng = torch.Generator().manual_seed(_seed_for(seed, problem.name, name,
                                                                      tau, n))
                        m = measure(problem, name, tau, n, draws, rng, k=k)
                        row.update(row_stats(m, refs[problem.name]))
                        if name in E.TAU_FREE:
                            row["note"] = "tau-independent"
                            cached = {c: row[c] for c in (*COLUMNS[4:], "bias_se", "note")}
                    rows.append(row)
                    bar.update()
    bar.close()
    return rows, refs


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict]) -> str:
    from textgan.compare import _fmt

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


DEFINITIONS = (
    "Definitions (D = draws, g_bar = mean of the D estimates, each with `samples` samples): "
    "variance = tr Cov[g] (sum of per-coordinate unbiased variances of one estimate); "
    "mean_norm = ||g_bar||; snr = (||g_bar||^2 - variance/D) / variance, an estimate of the "
    "single-estimate signal-to-noise ratio ||E g||^2 / tr Cov[g]; cosine_ref = cos(g_bar, "
    "g_ref); bias_ref = ||g_bar - g_ref||; bias_z = bias_ref / sqrt(variance/D + ref_se^2), "
    "about 1 for an unbiased estimator; |snr| below about 1/D is not resolved by D draws; "
    "ms_per_estimate = wall time of the vectorised estimator "
    "calls (sampling, reward, backward to the logits) / D. Gradients are ascent directions of "
    "the objective. sf, sf_ema, sf_rloo and st do not use tau; sf_ema is measured with a warm "
    "EMA.")


def write_results(out: Path, rows: list[dict], meta: dict, refs: dict,
                  problems: dict[str, dict]) -> list[Path]:
    """Write ``results.json``, ``results.md`` and three plots; return the written paths."""
    from textgan.compare import finish_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref_json = {p: {k: v for k, v in r.items() if k != "grad"} for p, r in refs.items()}
    for p, r in refs.items():
        ref_json[p]["rel_se"] = r["se"] / r["norm"] if r["norm"] > 0 else None
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "problems": problems, "reference": ref_json, "rows": rows},
        indent=2) + "\n")
    md = [f"# compare-estimators: {meta['problem']}", "", f"`{meta['command']}`", "",
          f"draws={meta['draws']} seed={meta['seed']} gumbel_rao k={meta['gr_k']}", ""]
    for name, info in problems.items():
        ref = ref_json[name]
        md.append(f"- **{name}**: " + "; ".join(f"{k}: {v}" for k, v in info.items()))
        label = ("exact (enumerated)" if ref["kind"] == "exact"
                 else f"{ref['kind']}, NOT exact ({ref.get('not_exact')}), standard error "
                      f"{ref['se']:.4g} ({100 * (ref['rel_se'] or 0):.2g}% of its norm)")
        md.append(f"  - reference gradient g_ref: {label}; ||g_ref|| = {ref['norm']:.4g}")
        if (ref["rel_se"] or 0) > NOISY_REFERENCE:
            md.append(f"  - **the reference is mostly noise** (standard error > "
                      f"{NOISY_REFERENCE:.0%} of its norm): cosine_ref is pulled towards 0 and "
                      f"bias_z towards 1 whatever the estimator; read variance and snr, or "
                      f"raise --ref-samples (the error falls as 1/sqrt(samples))")
    md += ["", markdown_table(rows), DEFINITIONS, ""]
    return finish_report(out, md, rows, "variance", [
        ("tau", "variance", "samples", "variance_vs_tau.png", "gradient variance (trace) vs tau"),
        ("tau", "snr", "samples", "snr_vs_tau.png", "single-estimate SNR vs tau"),
        ("samples", "variance", "tau", "variance_vs_samples.png", "gradient variance vs samples")])


def run_problems(args, problems: list[ModelProblem], estimators: list[str], taus: list[float],
                 samples: list[int], draws: int) -> int:
    """``textgan compare-estimators --problem checkpoint``: evaluate and write (called by
    :func:`textgan.compare.run` once the common arguments are checked)."""
    ref_samples = getattr(args, "ref_samples", None)
    ref_samples = 20_000 if ref_samples is None else ref_samples
    if ref_samples < 2 * REF_GROUP:
        raise ValueError(f"--ref-samples must be >= {2 * REF_GROUP} (sf_rloo groups of "
                         f"{REF_GROUP}), got {ref_samples}")
    t0 = time.perf_counter()
    rows, refs = evaluate(problems, estimators, taus, samples, draws, args.seed, k=args.gr_k,
                          ref_samples=ref_samples, progress=not args.no_progress)
    opts = [f"--problem checkpoint {args.checkpoint}", f"--estimators {','.join(estimators)}",
            f"--taus {args.taus}", f"--samples {args.samples}", f"--draws {draws}",
            f"--seed {args.seed}", f"--gr-k {args.gr_k}"]
    for flag, value in (("--params", getattr(args, "params", None)),
                        ("--batch", getattr(args, "batch", None)),
                        ("--ref-samples", getattr(args, "ref_samples", None))):
        if value is not None:
            opts.append(f"{flag} {value}")
    meta = {"problem": "checkpoint", "checkpoint": str(args.checkpoint),
            "estimators": estimators, "taus": taus, "samples": samples, "draws": draws,
            "seed": args.seed, "gr_k": args.gr_k, "ref_samples": ref_samples,
            "seconds": round(time.perf_counter() - t0, 3),
            "command": "textgan compare-estimators " + " ".join(opts)}
    info = {p.name: p.info for p in problems}
    paths = write_results(Path(args.out), rows, meta, refs, info)
    print(f"wrote {', '.join(str(p) for p in paths)} ({meta['seconds']:.1f} s)")
    return 0

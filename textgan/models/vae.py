"""A categorical-latent text VAE: Jang, Gu, Poole (ICLR 2017) Table 1, on sentences.

    encoder   bidirectional LSTM/GRU over ``x``; its final states ``h (B, 2H)`` give the logits
              ``(B, M, K)`` of ``M`` categorical latent variables with ``K`` classes each
    latent    ``z (B, M, K)`` drawn through the sampler core (:mod:`textgan.sampling`):
                * ``gumbel_softmax``: the relaxed one-hots ``softmax((logits + g) / tau)``;
                * ``gumbel_st``: straight-through (exact one-hot forward, relaxed backward);
                * ``score_function``: an exact one-hot (Gumbel-max, no pathwise gradient) and
                  REINFORCE on the reconstruction term, with an EMA baseline and/or a learned,
                  input-dependent baseline (NVIL, Mnih & Gregor 2014)
    decoder   any registry generator (``lstm``, ``rmc``, ``hf``; :mod:`textgan.models`)
              conditioned on ``flatten(z)`` (``M * K`` values):
                * ``init``: the initial state is ``init_state(B)`` plus a linear map of ``z``
                  (every tensor of the state, e.g. the LSTM's ``h_0`` and ``c_0``); for ``hf``
                  decoders, whose state is a key/value cache, a linear map of ``z`` is the input
                  embedding of one extra leading position (a soft prefix);
                * ``input``: a linear map of ``z`` is added to the token embedding at every
                  position (a forward hook on the decoder's input ``nn.Embedding``, so token
                  *ids* must be fed: relaxed one-hot inputs bypass the module and are refused);
                * ``both``: the two together.

Loss (per sentence, nats): the negative ELBO ``recon + KL`` with
    ``recon = -sum_t log p(x_t | x_<t, z)`` over the non-pad tokens, and
    ``KL(q(z|x) || uniform) = sum_m sum_k q_mk log(q_mk K)`` in closed form (the prior is uniform,
    as in Jang et al.). ``kl_weight`` (KL warm-up) multiplies the KL term of the training loss.

For ``score_function`` the training *surrogate* is
    ``recon(z_discrete)`` (decoder gradient only) ``+ score_function_loss(log q(z|x), -recon,
    baseline)`` ``+ kl_weight * KL`` (pathwise, closed form) ``+`` the baseline's MSE loss,
so the encoder receives gradient only through ``log q`` and the KL. Baselines:
    * ``ema``: :class:`textgan.sampling.EMABaseline` of the reward;
    * ``learned``: ``b(x) = MLP(h.detach())`` trained by MSE to the reward;
    * ``nvil``: ``EMA + MLP(h.detach())``, the MLP fitted to ``reward - EMA`` (NVIL's constant
      plus input-dependent baselines; NVIL's variance normalisation is not used);
    * ``none``.
The baseline net reads the *detached* encoder summary, so its MSE never trains the encoder and
the estimator stays unbiased (see ``tests/test_vae.py``).

References:
    Jang, Gu, Poole. Categorical Reparameterization with Gumbel-Softmax. ICLR 2017.
        https://arxiv.org/abs/1611.01144
    Mnih, Gregor. Neural Variational Inference and Learning in Belief Networks (NVIL). ICML 2014.
        https://arxiv.org/abs/1402.0030
    Bowman et al. Generating Sentences from a Continuous Space. CoNLL 2016 (text VAE, KL
        warm-up). https://arxiv.org/abs/1511.06349
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textgan import sampling as S
from textgan.errors import choice_error
from textgan.models.common import run_rnn

__all__ = [
    "LATENT_METHODS",
    "BASELINES",
    "CONDITIONS",
    "ENCODERS",
    "CategoricalTextVAE",
    "ELBOTerms",
    "LatentState",
    "LatentDecoder",
    "PriorDecoder",
    "kl_uniform",
    "vae_loss",
    "interpolate_latents",
    "encoder_gradient_variance",
    "estimator_problems",
]

LATENT_METHODS = ("gumbel_softmax", "gumbel_st", "score_function")
BASELINES = ("ema", "learned", "nvil", "none")
CONDITIONS = ("init", "input", "both")
ENCODERS = ("lstm", "gru")



# --------------------------------------------------------------------------------------------
# Closed-form KL
# --------------------------------------------------------------------------------------------


def kl_uniform(logits: Tensor, per_variable: bool = False) -> Tensor:
    """``KL(q || uniform)`` summed over the latent variables, in float32.

    ``sum_m sum_k q_mk (log q_mk + log K)`` with ``q = softmax(logits)``.

    Shape:
        logits ``(..., M, K)`` -> ``(...)``, or ``(..., M)`` with ``per_variable=True``.
    """
    logq = F.log_softmax(logits.float(), dim=-1)
    k = logits.shape[-1]
    kl = (logq.exp() * (logq + math.log(k))).sum(-1)
    return kl if per_variable else kl.sum(-1)


def free_bits_kl(logits: Tensor, free_bits: float) -> Tensor:
    """The KL term the loss sees with *free bits*: ``sum_m max(free_bits, KL_m)`` per sentence.

    Each latent variable's KL counts only above ``free_bits`` nats (Kingma et al. 2016, here
    per sentence rather than per batch, so the loss stays a mean of per-sentence terms and
    ``n`` processes equal one): below it the KL has no gradient, so the optimizer cannot
    buy a lower loss by switching a variable off, the usual road to posterior collapse.
    ``free_bits = 0`` is the plain KL.

    Shape:
        logits ``(B, M, K)`` -> ``(B,)`` float32.
    """
    if free_bits <= 0:
        return kl_uniform(logits)
    return kl_uniform(logits, per_variable=True).clamp_min(free_bits).sum(-1)


def drop_words(inputs: Tensor, p: float, unk: int, *, keep_first: bool = True,
                 pad: int | None = None, rng: torch.Generator | None = None) -> Tensor:
    """Replace each decoder input token by ``unk`` with probability ``p`` (Bowman et al. 2016).

    The decoder then has to take what it cannot read from its inputs from ``z``.
    ``keep_first`` keeps column 0 (the start token); ``pad`` positions are left alone.
    """
    if p <= 0:
        return inputs
    u = torch.rand(inputs.shape, generator=rng,
                   device=rng.device if rng is not None else inputs.device)
    drop = u.to(inputs.device) < p
    if keep_first:
        drop[:, 0] = False
    if pad is not None:
        drop &= inputs != pad
    return inputs.masked_fill(drop, unk)


# --------------------------------------------------------------------------------------------
# Decoder conditioning helpers
# --------------------------------------------------------------------------------------------


def _leaves(state) -> list[Tensor] | None:
    """The tensors of a decoder state that is a tensor or a tuple/list of tensors, else None."""
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)) and state and all(isinstance(s, Tensor) for s in state):
        return list(state)
    return None


def _rebuild(template, leaves: list[Tensor]):
    if isinstance(template, Tensor):
        return leaves[0]
    return type(template)(leaves)


def _is_hf(decoder) -> bool:
    model = getattr(decoder, "model", None)
    return model is not None and hasattr(model, "get_input_embeddings")


def _input_embedding(decoder) -> nn.Embedding | None:
    if _is_hf(decoder):
        emb = decoder.model.get_input_embeddings()
    else:
        emb = getattr(decoder, "embedding", None)
    return emb if isinstance(emb, nn.Embedding) else None


class LatentState(NamedTuple):
    """A decoder state conditioned on ``z``: the decoder's own state plus the per-step input
    bias ``(B, E)`` (``None`` without ``input`` conditioning)."""

    inner: object
    bias: Tensor | None


class ELBOTerms(NamedTuple):
    """Per-sentence terms of the ELBO for one latent draw (all ``(B,)`` float32 unless noted).

    Attributes:
        recon: ``-log p(x | z)`` summed over the counted (non-pad) tokens.
        kl: closed-form ``KL(q(z|x) || uniform)``.
        log_q: ``log q(z|x)`` of the exact sample ``z_tokens`` (summed over the ``M`` variables).
        z_tokens: ``(B, M)`` long, the exact (Gumbel-max or argmax) latent classes.
        z: ``(B, M, K)`` the one-hots the decoder saw (relaxed, straight-through or exact).
        logits: ``(B, M, K)`` the encoder's latent logits.
        baseline: ``(B,)`` the learned baseline's prediction (None without a baseline net).
        n_tokens: ``(B,)`` counted tokens per sentence.
    """

    recon: Tensor
    kl: Tensor
    log_q: Tensor
    z_tokens: Tensor
    z: Tensor
    logits: Tensor
    baseline: Tensor | None
    n_tokens: Tensor


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class CategoricalTextVAE(nn.Module):
    """Sentence VAE with ``M`` categorical latent variables of ``K`` classes each.

    Args:
        vocab_size: ``V``.
        start_token: the decoder's first input.
        latent_vars: ``M`` (Jang et al.: 20).
        latent_classes: ``K`` (Jang et al.: 10).
        embed_dim: encoder token-embedding size.
        hidden_dim: encoder hidden size per direction (the summary has ``2 * hidden_dim``).
        encoder: ``"lstm"`` or ``"gru"`` (bidirectional, one layer).
        decoder: a registry generator name (built with ``decoder_kwargs``, ``vocab_size`` and
            ``start_token``) or a ready generator module (e.g. with ``generator.init_from``
            weights).
        decoder_kwargs: keyword arguments of the registry generator.
        condition: ``"init"``, ``"input"`` or ``"both"`` (see the module docstring).
        pad: padding id of the corpus (not counted in the reconstruction, skipped by the
            encoder); None when every position counts (the oracle).
        learned_baseline: build the input-dependent baseline net (``learned`` / ``nvil``).
        baseline_hidden: hidden units of the baseline MLP.
        unk: the token that word dropout substitutes (the corpus's ``<unk>``); None: word
            dropout is unavailable (the oracle has no such token).

    Raises:
        ValueError: unknown choices, sizes < 1, or a decoder that cannot be conditioned as asked.
    """

    def __init__(self, vocab_size: int, start_token: int = 0, latent_vars: int = 20,
                 latent_classes: int = 10, embed_dim: int = 64, hidden_dim: int = 128,
                 encoder: str = "lstm", decoder: str | nn.Module = "lstm",
                 decoder_kwargs: dict | None = None, condition: str = "both",
                 pad: int | None = None, learned_baseline: bool = False,
                 baseline_hidden: int = 64, unk: int | None = None):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(choice_error("encoder", encoder, ENCODERS))
        if condition not in CONDITIONS:
            raise ValueError(choice_error("condition", condition, CONDITIONS))
        for name, value in (("latent_vars", latent_vars), ("embed_dim", embed_dim),
                            ("hidden_dim", hidden_dim), ("baseline_hidden", baseline_hidden)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        if latent_classes < 2:
            raise ValueError(f"`latent_classes` must be >= 2, got {latent_classes}")
        if isinstance(decoder, str):
            from textgan.models import build_generator

            decoder = build_generator(decoder, vocab_size=vocab_size, start_token=start_token,
                                      **dict(decoder_kwargs or {}))
        elif decoder_kwargs:
            raise ValueError("`decoder_kwargs` only applies when `decoder` is a registry name")
        if decoder.vocab_size != vocab_size or decoder.start_token != start_token:
            raise ValueError(
                f"the decoder has vocab_size={decoder.vocab_size}, start_token="
                f"{decoder.start_token}; the VAE needs {vocab_size}, {start_token}"
            )
        self.vocab_size, self.start_token = int(vocab_size), int(start_token)
        self.latent_vars, self.latent_classes = int(latent_vars), int(latent_classes)
        self.condition, self.pad, self.unk = condition, pad, unk
        latent_dim = self.latent_vars * self.latent_classes

        # encoder
        self.enc_embedding = nn.Embedding(vocab_size, embed_dim)
        rnn = nn.LSTM if encoder == "lstm" else nn.GRU
        self.encoder = rnn(embed_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.to_logits = nn.Linear(2 * hidden_dim, latent_dim)

        # decoder and its conditioning on z
        self.decoder = decoder
        self._prefix = False
        self.init_maps = nn.ModuleList()
        self._batch_dims: list[int] = []
        if condition in ("init", "both"):
            template1 = decoder.init_state(1)
            leaves1 = _leaves(template1)
            if leaves1 is not None:
                leaves2 = _leaves(decoder.init_state(2))
                for a, b in zip(leaves1, leaves2, strict=True):
                    dims = [i for i, (p, q) in enumerate(zip(a.shape, b.shape, strict=True))
                            if p != q]
                    if len(dims) != 1:
                        raise ValueError("cannot find the batch dimension of the decoder state")
                    self._batch_dims.append(dims[0])
                    self.init_maps.append(nn.Linear(latent_dim, a.numel()))
            elif _is_hf(decoder):
                self._prefix = True
                width = decoder.model.get_input_embeddings().embedding_dim
                self.prefix_map = nn.Linear(latent_dim, width)
            else:
                raise ValueError(
                    f"condition '{condition}' needs a decoder whose state is a tensor or a tuple "
                    f"of tensors (lstm, rmc) or an hf decoder; {type(decoder).__name__} has "
                    f"neither; use condition=input"
                )
        self.input_map = None
        if condition in ("input", "both"):
            emb = _input_embedding(decoder)
            if emb is None:
                raise ValueError(
                    f"condition '{condition}' needs a decoder with an nn.Embedding input layer "
                    f"(`embedding`, or an hf model); {type(decoder).__name__} has none"
                )
            self.input_map = nn.Linear(latent_dim, emb.embedding_dim)
            self._input_bias: Tensor | None = None
            emb.register_forward_hook(self._add_input_bias)

        # NVIL's input-dependent baseline (reads the detached encoder summary)
        self.baseline_net = None
        if learned_baseline:
            self.baseline_net = nn.Sequential(nn.Linear(2 * hidden_dim, baseline_hidden),
                                              nn.Tanh(), nn.Linear(baseline_hidden, 1))

    # -- encoder ---------------------------------------------------------------------------------
    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of ``q(z|x)``: encoder embedding, RNN and latent head."""
        return [*self.enc_embedding.parameters(), *self.encoder.parameters(),
                *self.to_logits.parameters()]

    def lengths(self, x: Tensor) -> Tensor:
        """Counted tokens per sentence ``(B,)`` (non-pad positions)."""
        if self.pad is None:
            return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return (x != self.pad).sum(1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder summary ``(B, 2H)`` and latent logits ``(B, M, K)`` of sentences ``(B, T)``.

        Pad positions (trailing) are skipped with a packed sequence, so the backward direction
        starts at each sentence's last real token."""
        emb = self.enc_embedding(x)
        if self.pad is not None:
            lengths = self.lengths(x).clamp_min(1).cpu()
            emb = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first=True,
                                                    enforce_sorted=False)
        _, h = run_rnn(self.encoder, emb)  # float32 under CPU autocast
        if isinstance(h, tuple):  # LSTM: (h_n, c_n)
            h = h[0]
        summary = torch.cat([h[-2], h[-1]], -1)  # last layer, forward and backward
        logits = self.to_logits(summary).view(-1, self.latent_vars, self.latent_classes)
        return summary, logits

    def sample_latent(self, logits: Tensor, method: str, tau: float = 1.0,
                      rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(z one-hots (B, M, K) float32, z classes (B, M))`` for ``method``.

        ``gumbel_softmax`` / ``gumbel_st`` go through :func:`textgan.sampling.gumbel_softmax`;
        ``score_function`` draws an exact sample (Gumbel-max) with no gradient; ``argmax`` takes
        the mode."""
        if method in ("gumbel_softmax", "gumbel_st"):
            tokens, z = S.gumbel_softmax(logits, tau, hard=method == "gumbel_st", rng=rng)
            return z, tokens
        if method == "score_function":
            tokens = S.gumbel_max(logits.detach(), rng)
        elif method == "argmax":
            tokens = logits.detach().argmax(-1)
        else:
            raise ValueError(choice_error("method", method, (*LATENT_METHODS, "argmax")))
        return F.one_hot(tokens, self.latent_classes).float(), tokens

    def prior_sample(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        """``n`` latent one-hots ``(n, M, K)`` from the uniform prior."""
        device = self.to_logits.weight.device
        tokens = torch.randint(self.latent_classes, (n, self.latent_vars), generator=rng,
                               device=rng.device if rng is not None else device)
        return F.one_hot(tokens.to(device), self.latent_classes).float()

    # -- decoder ---------------------------------------------------------------------------------
    def _add_input_bias(self, module, args, output):
        bias = self._input_bias
        if bias is None:
            return None
        shape = (bias.shape[0],) + (1,) * (output.dim() - 2) + (bias.shape[-1],)
        return output + bias.view(shape).to(output.dtype)

    @contextmanager
    def _conditioned(self, bias: Tensor | None):
        if self.input_map is None:
            yield
            return
        previous, self._input_bias = self._input_bias, bias
        try:
            yield
        finally:
            self._input_bias = previous

    def decoder_state(self, z: Tensor) -> LatentState:
        """The decoder's initial state conditioned on ``z (B, M, K)`` (or flattened ``(B, M*K)``).
        """
        z = z.reshape(z.shape[0], -1)
        B = z.shape[0]
        bias = self.input_map(z) if self.input_map is not None else None
        if self._prefix:  # hf: a soft prefix position carries z into the key/value cache
            from transformers import DynamicCache

            model = self.decoder.model
            prefix = self.prefix_map(z).unsqueeze(1).to(model.get_input_embeddings().weight.dtype)
            cache = DynamicCache(config=model.config)
            inner = model(inputs_embeds=prefix, past_key_values=cache,
                          use_cache=True).past_key_values
            return LatentState(inner, bias)
        inner = self.decoder.init_state(B)
        if self.init_maps:
            leaves = _leaves(inner)
            out = []
            for leaf, dim, lin in zip(leaves, self._batch_dims, self.init_maps, strict=True):
                row = leaf.shape[:dim] + leaf.shape[dim + 1:]
                offset = lin(z).view(B, *row).movedim(0, dim)
                out.append(leaf + offset.to(leaf.dtype))
            inner = _rebuild(inner, out)
        return LatentState(inner, bias)

    def decode_step(self, x_t: Tensor, state: LatentState) -> tuple[Tensor, LatentState]:
        """One decoder position: ids ``(B,)`` -> logits ``(B, V)`` and the new state."""
        if self.input_map is not None and x_t.is_floating_point():
            raise ValueError("with `input` conditioning the decoder must be fed token ids "
                             "(one-hot inputs bypass the embedding layer that adds z)")
        with self._conditioned(state.bias):
            logits, inner = self.decoder.step(x_t, state.inner)
        return logits, LatentState(inner, state.bias)

    def decode(self, inputs: Tensor, z: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for input ids ``(B, T)`` given ``z``.

        ``lstm`` and ``hf`` decoders run the whole sequence in one call; other generators step
        position by position (the same numbers, see the tests)."""
        from textgan.models.lstm import LSTMGenerator

        if inputs.is_floating_point():
            raise ValueError("`decode` takes token ids (B, T)")
        state = self.decoder_state(z)
        dec = self.decoder
        with self._conditioned(state.bias):
            if isinstance(dec, LSTMGenerator):
                h, _ = run_rnn(dec.lstm, dec.embedding(inputs), state.inner)
                return dec.out(h)
            if _is_hf(dec):
                emb = dec.model.get_input_embeddings()(inputs)
                if self._prefix:
                    prefix = self.prefix_map(z.reshape(z.shape[0], -1)).unsqueeze(1)
                    emb = torch.cat([prefix.to(emb.dtype), emb], 1)
                dec._check_length(0, emb.shape[1])
                logits = dec.model(inputs_embeds=emb, use_cache=False).logits
                return logits[:, 1:] if self._prefix else logits
        logits, inner = [], state.inner
        with self._conditioned(state.bias):
            for t in range(inputs.shape[1]):
                lg, inner = dec.step(inputs[:, t], inner)
                logits.append(lg)
        return torch.stack(logits, 1)

    def recon_nll(self, x: Tensor, z: Tensor, *, word_dropout: float = 0.0,
                  rng: torch.Generator | None = None) -> Tensor:
        """``-log p(x | z)`` per sentence ``(B,)`` (float32), pad targets excluded.

        ``word_dropout``: probability of replacing each teacher-forced input token (not the
        start token) by ``unk`` (training only; needs the model's ``unk``)."""
        start = x.new_full((x.shape[0], 1), self.start_token)
        inputs = torch.cat([start, x[:, :-1]], 1)
        if word_dropout > 0:
            if self.unk is None:
                raise ValueError(f"`word_dropout` ({word_dropout}) needs an <unk> token: build the "
                                 f"VAE with `unk` (the vocabulary's <unk> id) or set it to 0")
            inputs = drop_words(inputs, word_dropout, self.unk, pad=self.pad, rng=rng)
        logits = self.decode(inputs, z)
        ignore = -100 if self.pad is None else self.pad
        nll = F.cross_entropy(logits.float().flatten(0, 1), x.flatten(), ignore_index=ignore,
                              reduction="none")
        return nll.view(x.shape).sum(1)

    def conditioned(self, z: Tensor) -> LatentDecoder:
        """The decoder for fixed latents ``z``, as a :class:`textgan.sampling.Generator`."""
        return LatentDecoder(self, z)

    @torch.no_grad()
    def greedy_decode(self, z: Tensor, max_len: int, eos: int | None = None,
                      pad: int | None = None) -> Tensor:
        """Argmax decoding ``(B, max_len)``; after ``eos`` every token is ``pad`` (or ``eos``)."""
        B = z.shape[0]
        state = self.decoder_state(z)
        x = torch.full((B,), self.start_token, dtype=torch.long, device=z.device)
        alive = torch.ones(B, dtype=torch.bool, device=z.device)
        fill = eos if pad is None else pad
        out = []
        for _ in range(max_len):
            logits, state = self.decode_step(x, state)
            x = logits.argmax(-1)
            if eos is not None:
                x = torch.where(alive, x, torch.full_like(x, fill))
                alive = alive & (x != eos)
            out.append(x)
        return torch.stack(out, 1)

    # -- the ELBO ----------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, method: str, tau: float = 1.0,
                   rng: torch.Generator | None = None, *,
                   logits: Tensor | None = None, word_dropout: float = 0.0) -> ELBOTerms:
        """Encode ``x (B, T)``, draw ``z`` by ``method`` and score the reconstruction.

        Args:
            method: ``gumbel_softmax``, ``gumbel_st``, ``score_function`` (exact ``z``, no
                pathwise gradient) or ``argmax`` (the posterior mode, for evaluation).
            logits: optional latent logits ``(B, M, K)`` to use instead of the encoder's (tests
                and gradient studies); the learned baseline is then not evaluated.
            word_dropout: decoder input word dropout (training; see :meth:`recon_nll`).
        """
        summary = None
        if logits is None:
            summary, logits = self.encode(x)
        z, tokens = self.sample_latent(logits, method, tau, rng)
        recon = self.recon_nll(x, z, word_dropout=word_dropout, rng=rng)
        kl = kl_uniform(logits)
        log_q = S.categorical_log_prob(logits, tokens).sum(-1)
        baseline = None
        if self.baseline_net is not None and summary is not None:
            baseline = self.baseline_net(summary.detach()).squeeze(-1).float()
        return ELBOTerms(recon, kl, log_q, tokens, z, logits, baseline, self.lengths(x))

    def forward(self, x: Tensor, method: str = "gumbel_softmax", tau: float = 1.0,
                rng: torch.Generator | None = None) -> ELBOTerms:
        return self.elbo_terms(x, method, tau, rng)


def vae_loss(terms: ELBOTerms, method: str, *, kl_weight: float = 1.0, baseline: str = "ema",
             ema: S.EMABaseline | None = None, gather=None,
             free_bits: float = 0.0) -> tuple[Tensor, dict]:
    """The training loss (mean over the rows of ``terms``) and detached statistics.

    Relaxed methods: ``mean(recon + kl_weight * kl)``, differentiated pathwise through ``z``.
    ``score_function``: ``mean(recon) + score_function_loss(log_q, -recon, b) + kl_weight *
    mean(kl) + MSE(baseline net)``, where ``recon`` was computed at a discrete ``z``.

    Args:
        baseline: ``ema`` | ``learned`` | ``nvil`` | ``none`` (score_function only).
        ema: the :class:`~textgan.sampling.EMABaseline` for ``ema`` / ``nvil``.
        gather: optional function gathering a ``(B,)`` tensor over processes, so that every
            process updates its EMA with the same global rewards.
        free_bits: nats per latent variable below which its KL is not penalised
            (:func:`free_bits_kl`; 0 = the plain KL). The logged ``kl`` / ``neg_elbo`` are
            always the true ones; ``kl_loss`` is the term the loss used.

    Returns:
        ``(loss, stats)``; ``stats`` holds per-batch means (``neg_elbo``, ``recon``, ``kl``; with
        ``free_bits > 0`` also ``kl_loss``, the floored KL before the warm-up weight; for
        score_function also ``reward``, ``advantage_std`` and ``baseline_mse``).
    """
    recon, kl = terms.recon, terms.kl
    stats = {"neg_elbo": (recon + kl).mean().detach(), "recon": recon.mean().detach(),
             "kl": kl.mean().detach()}
    if free_bits > 0:
        kl = free_bits_kl(terms.logits, free_bits)
        stats["kl_loss"] = kl.mean().detach()
    if method in ("gumbel_softmax", "gumbel_st"):
        return (recon + kl_weight * kl).mean(), stats
    if method != "score_function":
        raise ValueError(choice_error("method", method, LATENT_METHODS))
    if baseline not in BASELINES:
        raise ValueError(choice_error("baseline", baseline, BASELINES))
    reward = -recon.detach()  # the reconstruction log-likelihood
    b: Tensor | None = None
    mse = recon.new_zeros(())
    if baseline in ("ema", "nvil"):
        if ema is None:
            raise ValueError(f"baseline '{baseline}' needs an EMABaseline (`ema`)")
        everyone = gather(reward) if gather is not None else reward
        b = ema(everyone)[: reward.shape[0]]
    if baseline in ("learned", "nvil"):
        if terms.baseline is None:
            raise ValueError(f"baseline '{baseline}' needs a model built with "
                             f"learned_baseline=True")
        target = reward if b is None else reward - b
        mse = F.mse_loss(terms.baseline, target)
        b = terms.baseline.detach() if b is None else b + terms.baseline.detach()
    sf = S.score_function_loss(terms.log_q, reward, baseline=b)
    loss = recon.mean() + sf + kl_weight * kl.mean() + mse
    adv = reward if b is None else reward - b
    stats.update(reward=reward.mean(), advantage_std=adv.std(unbiased=False).detach(),
                 baseline_mse=mse.detach())
    return loss, stats


# --------------------------------------------------------------------------------------------
# Generators over a VAE's decoder (for textgan.sampling.sample_sequence)
# --------------------------------------------------------------------------------------------


class LatentDecoder(nn.Module):
    """``vae``'s decoder for fixed latents ``z (B, M, K)``: a :class:`~textgan.sampling.Generator`.

    ``init_state(B)`` requires ``B == z.shape[0]``. Token ids must be fed (``feed="hard"``)."""

    def __init__(self, vae: CategoricalTextVAE, z: Tensor):
        super().__init__()
        self.vae, self.z = vae, z
        self.start_token, self.vocab_size = vae.start_token, vae.vocab_size

    def init_state(self, batch_size: int) -> LatentState:
        if batch_size != self.z.shape[0]:
            raise ValueError(f"batch size {batch_size} != {self.z.shape[0]} latents")
        return self.vae.decoder_state(self.z)

    def step(self, x_t: Tensor, state: LatentState):
        return self.vae.decode_step(x_t, state)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.vae.decode(inputs, self.z)


class PriorDecoder(nn.Module):
    """A VAE as an unconditional generator: each ``init_state(B)`` draws ``B`` latents from the
    uniform prior (from its own seeded ``torch.Generator``), so ``sample_sequence`` and
    ``textgan sample`` produce prior samples ``x ~ p(x | z), z ~ p(z)``.

    ``manual_seed(seed)`` restarts the latent stream. ``forward`` is not defined: a VAE has no
    tractable ``log p(x)``; use the negative ELBO (:func:`textgan.train.vae.evaluate_vae`).
    """

    def __init__(self, vae: CategoricalTextVAE, seed: int = 0):
        super().__init__()
        self.vae = vae
        self.start_token, self.vocab_size = vae.start_token, vae.vocab_size
        self.rng = torch.Generator().manual_seed(seed)

    def manual_seed(self, seed: int) -> PriorDecoder:
        self.rng.manual_seed(seed)
        return self

    def init_state(self, batch_size: int) -> LatentState:
        z = self.vae.prior_sample(batch_size, self.rng)
        return self.vae.decoder_state(z)

    def step(self, x_t: Tensor, state: LatentState):
        return self.vae.decode_step(x_t, state)

    def forward(self, inputs: Tensor) -> Tensor:
        raise ValueError("a VAE has no tractable log p(x) (NLL_test); report the negative ELBO "
                         "instead (textgan.train.vae.evaluate_vae / nll_bound)")


def interpolate_latents(za: Tensor, zb: Tensor) -> Tensor:
    """Latent classes ``(M + 1, M)`` from ``za (M,)`` to ``zb (M,)``: row ``i`` takes its first
    ``i`` variables from ``zb`` and the rest from ``za``."""
    if za.shape != zb.shape or za.dim() != 1:
        raise ValueError(f"`za` and `zb` must both be (M,), got {tuple(za.shape)}, "
                         f"{tuple(zb.shape)}")
    m = za.shape[0]
    steps = torch.arange(m + 1, device=za.device)[:, None]
    take_b = torch.arange(m, device=za.device)[None, :] < steps
    return torch.where(take_b, zb[None, :], za[None, :])


# --------------------------------------------------------------------------------------------
# Gradient studies
# --------------------------------------------------------------------------------------------


def encoder_gradient_variance(model: CategoricalTextVAE, batch: Tensor,
                              method: str | Sequence[str], tau: float = 1.0,
                              n_draws: int = 100, seed: int = 0, *, baseline: str = "ema",
                              kl_weight: float = 1.0, warmup: int = 10) -> dict:
    """Variance of the encoder's gradient over ``n_draws`` seeded latent draws at fixed weights.

    Each draw ``i`` uses ``torch.Generator().manual_seed(seed + i)`` (on the model's device) for
    the latent noise, computes the training loss of ``method`` on ``batch`` (``kl_weight``; for
    ``score_function`` the ``baseline``, with the EMA warmed by ``warmup`` discarded draws and
    then updated as in training) and flattens the gradients of
    :meth:`CategoricalTextVAE.encoder_parameters`.

    Returns:
        for one method: ``{"method", "tau", "n_draws", "num_params", "trace_cov",
        "mean_grad_norm", "mean_sq_norm"}`` where ``trace_cov`` is the trace of the (unbiased)
        covariance of the ``n_draws`` gradients, ``mean_grad_norm`` the norm of their mean and
        ``mean_sq_norm`` the mean squared norm; for a sequence of methods: ``{method: that
        dict}``. Model weights and gradients are left as they were.
    """
    if not isinstance(method, str):
        return {m: encoder_gradient_variance(model, batch, m, tau, n_draws, seed,
                                             baseline=baseline, kl_weight=kl_weight,
                                             warmup=warmup) for m in method}
    if method not in LATENT_METHODS:
        raise ValueError(choice_error("method", method, LATENT_METHODS))
    if n_draws < 2:
        raise ValueError(f"`n_draws` must be >= 2 (a covariance needs two draws), got {n_draws}")
    params = model.encoder_parameters()
    device = params[0].device
    saved = [p.grad for p in model.parameters()]
    ema = S.EMABaseline().to(device)
    needs_ema = method == "score_function" and baseline in ("ema", "nvil")
    kind = baseline if method == "score_function" else "none"
    was_training = model.training
    model.eval()  # no dropout; the draws differ only in the latent noise
    grads = []
    try:
        for i in range(-(warmup if needs_ema else 0), n_draws):
            rng = torch.Generator(device=device).manual_seed(seed + i + 10**6 * (i < 0))
            terms = model.elbo_terms(batch, method, tau, rng)
            loss, _ = vae_loss(terms, method, kl_weight=kl_weight, baseline=kind, ema=ema)
            g = torch.autograd.grad(loss, params, allow_unused=True)
            if i >= 0:
                grads.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                                        for p, gi in zip(params, g, strict=True)]).double())
    finally:
        model.train(was_training)
        for p, g in zip(model.parameters(), saved, strict=True):
            p.grad = g
    G = torch.stack(grads)
    mean = G.mean(0)
    return {"method": method, "tau": float(tau), "n_draws": int(n_draws),
            "num_params": int(G.shape[1]), "trace_cov": float(G.var(0, unbiased=True).sum()),
            "mean_grad_norm": float(mean.norm()), "mean_sq_norm": float(G.pow(2).sum(1).mean())}


def estimator_problems(args=None) -> list:
    """``textgan compare-estimators --problem vae``: VAE reconstruction gradients.

    One :class:`textgan.compare.ToyProblem` per latent size: a tiny seeded VAE (``V = 8``,
    sentence length 6, one categorical latent with ``K`` classes, input + initial-state
    conditioning with enlarged weights so that ``z`` matters) and a fixed sentence ``x``; the
    objective is the ELBO's reconstruction term ``E_{z ~ Cat(softmax theta)}[log p(x | z)]`` as a
    function of seeded latent logits ``theta (K,)`` (standing for the encoder's output ``q(z|x)``),
    with ``f(y) = log p(x | y)`` on (relaxed) one-hots ``y``; the exact gradient enumerates the
    ``K`` classes. Problem definitions are fixed (seeds ``1000 + K``).
    """
    from textgan.compare import ToyProblem

    problems = []
    for k in (4, 10):
        gen = torch.Generator().manual_seed(1000 + k)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(1000 + k)
        try:
            vae = CategoricalTextVAE(8, start_token=0, latent_vars=1, latent_classes=k,
                                     embed_dim=8, hidden_dim=8, decoder="lstm",
                                     decoder_kwargs={"embed_dim": 8, "hidden_dim": 16},
                                     condition="both")
        finally:
            torch.random.set_rng_state(torch_state)
        with torch.no_grad():
            for lin in [*vae.init_maps, vae.input_map]:
                lin.weight.mul_(4.0)
        vae.requires_grad_(False).eval()
        x = torch.randint(1, 8, (1, 6), generator=gen)
        theta = 1.5 * torch.randn(k, generator=gen)
        problems.append(ToyProblem(f"vae_recon_k{k}", theta, _recon_f(vae, x)))
    return problems


def _recon_f(vae: CategoricalTextVAE, x: Tensor):
    def f(y: Tensor) -> Tensor:
        lead = y.shape[:-1]
        z = y.reshape(-1, 1, y.shape[-1]).float()
        recon = vae.recon_nll(x.expand(z.shape[0], -1), z)
        return (-recon).reshape(lead).to(y.dtype)

    return f

"""A generator wrapping any ``transformers`` causal language model (GPT-2 style).

Discrete inputs go through the model's own embeddings (``input_ids``); float (relaxed) one-hots
go in as ``inputs_embeds = one_hot @ model.get_input_embeddings().weight``, so Gumbel-Softmax
gradients reach the transformer. Step-wise decoding uses the model's key/value cache.

State
    A ``transformers`` ``DynamicCache`` holding the keys/values of the positions consumed so far
    (the position of the next token is its length; ``init_state`` is an empty cache). States are
    treated as immutable: ``step`` and ``repeat_state`` work on a shallow copy (the cache's
    dynamic layers grow by concatenation into new tensors), so one state can be continued many
    times, e.g. by SeqGAN's Monte-Carlo rollouts.

Nothing here downloads: ``HF_HUB_OFFLINE=1`` is set at import unless already set, and
``pretrained_path`` must be a local directory (``local_files_only=True``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache  # noqa: E402
from transformers.cache_utils import DynamicLayer  # noqa: E402

from textgan.models.common import embed_with_weight  # noqa: E402

__all__ = ["HFGenerator"]


def _copy_cache(cache: DynamicCache) -> DynamicCache:
    """A copy of ``cache`` that a forward pass can extend without touching ``cache``.

    Shallow: the per-layer key/value tensors are shared; dynamic layers replace (never write
    into) them when they grow.
    """
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    return new


class HFGenerator(nn.Module):
    """A ``transformers`` causal LM as a generator.

    Args:
        vocab_size: ``V``. Required when building from a config; with ``pretrained_path`` it
            defaults to the model's and must match it when given.
        start_token: the first input of every sequence.
        model_config: keyword arguments of the model config (e.g. ``n_layer``, ``n_head``,
            ``n_embd``, ``n_positions`` for GPT-2); with ``pretrained_path`` they override the
            saved config (e.g. dropout rates).
        pretrained_path: a local directory saved by ``save_pretrained`` to load weights from;
            without it the model is randomly initialised from ``model_config``.
        model_type: the ``transformers`` model type when building from a config (``"gpt2"``).

    Raises:
        FileNotFoundError: ``pretrained_path`` does not exist.
        ValueError: no ``vocab_size`` for a config-built model, or a ``vocab_size`` that does
            not match the pretrained model's.
    """

    def __init__(self, vocab_size: int | None = None, start_token: int = 0,
                 model_config: dict | None = None, pretrained_path: str | None = None,
                 model_type: str = "gpt2"):
        super().__init__()
        overrides = dict(model_config or {})
        if "vocab_size" in overrides:
            if vocab_size is not None and int(overrides["vocab_size"]) != int(vocab_size):
                raise ValueError(
                    f"`model_config.vocab_size` ({overrides['vocab_size']}) conflicts with "
                    f"`vocab_size` ({vocab_size}); give it once"
                )
            vocab_size = overrides.pop("vocab_size")
        if pretrained_path is not None:
            path = Path(pretrained_path).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"pretrained model directory '{path}' does not exist; textgan never "
                    f"downloads models: save one locally with `save_pretrained` and point "
                    f"`generator.pretrained_path` at it"
                )
            config = AutoConfig.from_pretrained(path, local_files_only=True, **overrides)
            model = AutoModelForCausalLM.from_pretrained(path, config=config,
                                                         local_files_only=True)
            if vocab_size is not None and int(vocab_size) != model.config.vocab_size:
                raise ValueError(
                    f"`vocab_size` {vocab_size} does not match the pretrained model's "
                    f"{model.config.vocab_size} ('{path}'); use the model's tokenizer or omit "
                    f"`vocab_size`"
                )
        else:
            if vocab_size is None:
                raise ValueError("`vocab_size` is required to build a model from `model_config`")
            # Special-token ids of the model type's defaults (GPT-2: 50256) may lie outside a
            # small vocabulary; only generate() uses them, so default them to in-range ids.
            overrides.setdefault("bos_token_id", int(start_token))
            overrides.setdefault("eos_token_id", None)
            overrides.setdefault("pad_token_id", None)
            config = AutoConfig.for_model(model_type, vocab_size=int(vocab_size), **overrides)
            model = AutoModelForCausalLM.from_config(config)
        self.model = model
        self.model.train()  # from_pretrained returns eval mode; follow nn.Module's default
        self.vocab_size = int(model.config.vocab_size)
        if not 0 <= int(start_token) < self.vocab_size:
            raise ValueError(f"`start_token` must be in [0, {self.vocab_size}), got {start_token}")
        self.start_token = int(start_token)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    # -- helpers ------------------------------------------------------------------------------
    def _run(self, x: Tensor, cache: DynamicCache | None):
        """Run the model on ids ``(B, T)`` or one-hots ``(B, T, V)``."""
        use_cache = cache is not None
        if x.is_floating_point():
            emb = embed_with_weight(self.model.get_input_embeddings().weight, x)
            return self.model(inputs_embeds=emb, past_key_values=cache, use_cache=use_cache)
        return self.model(input_ids=x.long(), past_key_values=cache, use_cache=use_cache)

    def _check_length(self, past: int, new: int) -> None:
        if self.max_positions is not None and past + new > self.max_positions:
            raise ValueError(
                f"sequence length {past + new} exceeds the model's maximum number of positions "
                f"({self.max_positions}); raise `n_positions` in `model_config`"
            )

    # -- generator protocol -------------------------------------------------------------------
    def init_state(self, batch_size: int) -> DynamicCache:
        """An empty key/value cache (its batch size is set by the first ``step``)."""
        return DynamicCache(config=self.model.config)

    def step(self, x_t: Tensor, state: DynamicCache) -> tuple[Tensor, DynamicCache]:
        """One position: ids ``(B,)`` or one-hots ``(B, V)`` -> logits ``(B, V)``, new cache.

        ``state`` is not modified."""
        self._check_length(state.get_seq_length(), 1)
        out = self._run(x_t.unsqueeze(1), _copy_cache(state))
        return out.logits[:, -1], out.past_key_values

    def forward(self, inputs: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for ids ``(B, T)`` or one-hots ``(B, T, V)``."""
        self._check_length(0, inputs.shape[1])
        return self._run(inputs, None).logits

    def repeat_state(self, state: DynamicCache, n: int) -> DynamicCache:
        """Repeat each batch row ``n`` times consecutively (``repeat_interleave`` on batch)."""
        new = _copy_cache(state)
        new.batch_repeat_interleave(n)  # in place on the copy: rebinds the layers' tensors
        return new

    def forward_states(self, inputs: Tensor) -> tuple[Tensor, list[DynamicCache]]:
        """Teacher-forced logits ``(B, T, V)`` and the cache after each position.

        One cached forward pass; ``states[t]`` is its cache cut to the first ``t + 1`` positions
        (causal attention: keys/values at ``<= t`` depend only on inputs ``<= t``). Models whose
        cache has other than plain dynamic layers (sliding windows, recurrent states) fall back
        to stepping.
        """
        B, T = inputs.shape[:2]
        self._check_length(0, T)
        out = self._run(inputs, DynamicCache(config=self.model.config))
        full = out.past_key_values
        if not all(type(layer) is DynamicLayer for layer in full.layers):
            state, logits, states = self.init_state(B), [], []
            for x_t in inputs.unbind(1):  # one-hots: unbind's backward stacks once
                lg, state = self.step(x_t, state)
                logits.append(lg)
                states.append(state)
            return torch.stack(logits, 1), states
        states = []
        for t in range(T):
            cut = _copy_cache(full)
            for layer in cut.layers:
                if layer.is_initialized and layer.keys is not None and layer.keys.numel():
                    layer.keys = layer.keys[..., : t + 1, :]
                    layer.values = layer.values[..., : t + 1, :]
            states.append(cut)
        return out.logits, states

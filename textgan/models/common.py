"""Helpers shared by the models: embedding token ids *or* (relaxed) one-hots; float32 RNNs.

Every generator's ``step`` and ``forward`` accept either discrete token ids (long) or float
one-hots over the vocabulary (exact, straight-through or Gumbel-Softmax relaxed). A one-hot is
embedded as ``one_hot @ E`` (``E`` the ``(V, D)`` embedding matrix), which equals the table
lookup for exact one-hots and lets gradients flow back into relaxed ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["embed_tokens", "embed_with_weight", "run_rnn"]


def embed_with_weight(weight: Tensor, x: Tensor) -> Tensor:
    """Embed ids ``(...)`` or one-hots ``(..., V)`` with an embedding matrix ``weight (V, D)``.

    Ids go through a lookup; float inputs are treated as (relaxed) one-hots and multiplied by
    ``weight`` (cast to its dtype), so ``d out / d x = weight^T`` and gradients reach ``x``.

    Returns:
        ``(..., D)``.

    Raises:
        ValueError: if a float input's last dimension is not ``V``.
    """
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"inputs must be token ids (integer) or float one-hots, got {x.dtype}")
    if not x.is_floating_point():
        return nn.functional.embedding(x.long(), weight)
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"one-hot inputs must have last dimension vocab_size={weight.shape[0]}, got shape "
            f"{tuple(x.shape)}"
        )
    return x.to(weight.dtype) @ weight


def embed_tokens(embedding: nn.Embedding, x: Tensor) -> Tensor:
    """Embed token ids ``(...)`` with ``embedding``, or float one-hots ``(..., V)`` as
    ``x @ embedding.weight`` (gradients flow into ``x``). See :func:`embed_with_weight`."""
    if not x.is_floating_point() and x.dtype != torch.bool:
        return embedding(x.long())
    return embed_with_weight(embedding.weight, x)



def run_rnn(rnn: nn.Module, x, state=None):
    """``rnn(x, state)`` for an ``nn.LSTM`` / ``nn.GRU``; under CPU autocast it runs in float32.

    PyTorch's oneDNN LSTM kernel takes autocast's bfloat16 only on CPUs with native bfloat16
    (avx512_bf16 / AMX); elsewhere it fails ("could not create a primitive descriptor for the
    LSTM forward propagation primitive"). GRUs are never autocast on CPU. The layers around the
    RNN still autocast. ``x`` may be a tensor or a ``PackedSequence``; ``state`` a tensor or an
    LSTM's ``(h, c)``.
    """
    is_packed = isinstance(x, nn.utils.rnn.PackedSequence)
    device = x.data.device if is_packed else x.device
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return rnn(x, state)
    dtype = next(rnn.parameters()).dtype
    if state is not None:
        state = (tuple(s.to(dtype) for s in state) if isinstance(state, tuple)
                 else state.to(dtype))
    with torch.autocast("cpu", enabled=False):
        return rnn(x.to(dtype), state)

"""CNN discriminators over token ids or (relaxed) one-hots: RelGAN's multi-representation CNN and
SeqGAN's CNN classifier.

Both accept discrete token ids ``(B, T)`` (long) or float one-hots ``(B, T, V)`` (exact,
straight-through or Gumbel-Softmax relaxed). Ids are embedded with :func:`F.embedding`, one-hots
as ``x @ E`` (``E`` the ``(V, D)`` embedding matrix) so that gradients reach ``x``; for exact
one-hots both give the same values, hence ``D(ids) == D(one_hot(ids))``.

Convolution + max-over-time is computed as an ``unfold`` of the embedded sequence into windows
followed by one matmul per filter size (equal to ``F.conv2d`` with the stored ``nn.Conv2d``
weights, ~30% faster on CPU than ``conv2d``); the bias and the ReLU are applied *after* the
max-pool, which gives the same values because both are monotone: ``max_t relu(s_t + b) =
relu(max_t s_t + b)``. Only differentiable built-in ops are used, so double backward (the WGAN-GP
gradient penalty) works. On the CPU, RelGAN's discriminator runs all filter sizes' convolution +
max-over-time + bias + ReLU in compiled kernels, and both discriminators run what follows the
highway's matrix product (the highway mix, dropout, the linear output) in one
(:mod:`textgan.models.cpu_kernels`, built on first use; the ops above when they cannot be built,
for a double backward, under autocast (the head) or with ``TEXTGAN_CPU_KERNELS=0``).

References:
    * Nie, Narodytska, Patel. RelGAN: Relational Generative Adversarial Networks for Text
      Generation. ICLR 2019. https://openreview.net/forum?id=rJedV3R5tm (official code:
      github.com/weilinie/RelGAN, ``models/rmc_vanilla.py:discriminator``).
    * Yu, Zhang, Wang, Yu. SeqGAN: Sequence Generative Adversarial Nets with Policy Gradient.
      AAAI 2017 (official code: github.com/LantaoYu/SeqGAN, ``discriminator.py``).
    * Kim. Convolutional Neural Networks for Sentence Classification. EMNLP 2014.
    * Srivastava, Greff, Schmidhuber. Highway Networks. 2015.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textgan.models import cpu_kernels

__all__ = ["RelGANDiscriminator", "SeqGANDiscriminator", "Highway"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _embed(weight: Tensor, x: Tensor) -> Tensor:
    """Embed ids ``(B, T)`` by lookup or float one-hots ``(B, T, V)`` as ``x @ weight``.

    Returns ``(B, T, D)``; ``weight`` is ``(V, D)``.
    """
    if not x.is_floating_point():
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"inputs must be token ids (integer) or float one-hots, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"token ids must have shape (B, T), got {tuple(x.shape)}")
        return F.embedding(x.long(), weight)
    if x.dim() != 3 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"one-hot inputs must have shape (B, T, vocab_size={weight.shape[0]}), got "
            f"{tuple(x.shape)}"
        )
    return torch.matmul(x.to(weight.dtype), weight)  # (B, T, V) @ (V, D): one 2-D GEMM


def _windows(emb: Tensor, f: int) -> Tensor:
    """Sliding windows ``(B, T-f+1, R, f*d)`` (order ``(f, d)``) of ``emb`` ``(B, T, R, d)``."""
    B, T, R, d = emb.shape
    return emb.unfold(1, f, 1).transpose(-1, -2).reshape(B, T - f + 1, R, f * d)


_CHUNK_ELEMENTS = 1 << 21  # scores computed per chunk of batch rows: ~8 MB, cache-friendly
_BACKWARD_CHUNK_ELEMENTS = 1 << 17  # (b, R, n) gradients per chunk in backward: ~0.5 MB


def _rows_per_chunk(row_elements: int, budget: int, rows: int, device: torch.device) -> int:
    """Batch rows per chunk: ``budget`` elements' worth on the CPU, where cache-sized pieces are
    faster (measured); all ``rows`` at once on other devices, where every chunk costs kernel
    launches (a RelGAN iteration on an H200 is bound by launching its operators)."""
    if device.type != "cpu":
        return max(1, rows)
    return max(1, budget // max(1, row_elements))


def _max_over_time(scores: Tensor) -> tuple[Tensor, Tensor]:
    """``scores.max(dim=1)`` of ``(b, T', R, n)`` scores: values and first argmax ``(b, R, n)``.

    The scores' memory layout is NHWC (``n`` innermost), so ``max_pool2d`` over the whole time
    axis runs its channels-last kernel: the same values and indices (first maximum on ties, NaN
    propagates) ~2.5x faster on CPU than ``max(dim=1)``, whose index search over a strided
    dimension dominates the discriminator's convolutions (measured; see ``textgan bench relgan``).
    """
    b, Tp, R, n = scores.shape
    values, flat = F.max_pool2d_with_indices(scores.permute(0, 3, 1, 2), kernel_size=(Tp, 1))
    flat = flat[:, :, 0]  # t * R + r
    # R a power of two (RelGAN's 64): a shift, ~8x faster than an integer division
    index = flat >> (R.bit_length() - 1) if R & (R - 1) == 0 else flat.div(R, rounding_mode="floor")
    return values[:, :, 0].transpose(1, 2), index.transpose(1, 2)


class _ConvMaxPool(torch.autograd.Function):
    """``max_t (windows_t @ W^T)`` that keeps only the argmax for backward.

    The eager version materialises the ``(B, T', R, n)`` score tensor, keeps it for the max's
    backward and, in backward, fills an equally large zero tensor to scatter into: for RelGAN's
    discriminator (``R = 64``, ``n = 300``, four filter sizes, real and fake) that is ~750 MB of
    memory traffic per step. Here the scores are computed in chunks of batch rows and dropped
    after the max; backward uses the saved argmax: ``dW[c] = sum g[b,r,c] * window[b, t*, r]``
    via a gather (when the window is narrower than the sequence, RelGAN's case) or one dense
    scatter + matmul (wide windows, SeqGAN's case). Backward is written with differentiable ops,
    so double backward (the WGAN-GP penalty) works; both are checked by ``gradcheck``.
    """

    @staticmethod
    def forward(ctx, emb: Tensor, weight: Tensor, f: int) -> Tensor:
        B, T, R, _ = emb.shape
        n = weight.shape[0]
        chunk = _rows_per_chunk((T - f + 1) * R * n, _CHUNK_ELEMENTS, B, emb.device)
        if R == 1:  # one representation (SeqGAN): a plain conv1d, ~2.7x faster than the windows
            x, w = emb[:, :, 0].transpose(1, 2), weight[:, 0].transpose(1, 2)  # (B,d,T) (n,d,f)
            parts = [F.conv1d(x[s:s + chunk], w).max(dim=2) for s in range(0, B, chunk)]
            parts = [(p.values[:, None], p.indices[:, None]) for p in parts]  # (b, 1, n)
        else:
            wt = weight.reshape(n, -1).t()
            win = _windows(emb, f)
            parts = [_max_over_time(torch.matmul(win[s:s + chunk], wt))
                     for s in range(0, B, chunk)]
        values, index = (torch.cat(x) for x in zip(*parts, strict=True))  # (B, R, n) each
        ctx.save_for_backward(emb, weight, index)
        ctx.f = f
        return values  # (B, R, n)

    @staticmethod
    def backward(ctx, grad: Tensor):
        emb, weight, index = ctx.saved_tensors
        grad_emb, grad_w = _conv_max_pool_grad(emb, weight, index, grad, ctx.f,
                                               *ctx.needs_input_grad[:2])
        return grad_emb, grad_w, None


def _conv_max_pool_grad(emb: Tensor, weight: Tensor, index: Tensor, grad: Tensor, f: int,
                        need_emb: bool, need_weight: bool) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :class:`_ConvMaxPool`'s output for ``emb`` and ``weight`` (``None`` where not
    needed) from the argmax ``index`` ``(B, R, n)``, written with differentiable ops."""
    B, T, R, d = emb.shape
    n, K, Tp = weight.shape[0], f * d, T - f + 1
    w = weight.reshape(n, K)
    grad = grad.to(w.dtype)
    grad_emb = grad_w = None
    if K <= Tp:  # gather the winning windows, one window element (j, e) at a time
        # win[b, r, t, j d + e] = emb[b, t + j, r, e]: for each (j, e) the (B, R, T')
        # slice is a view of emb; gathering and scattering (b, R, n) values per element is
        # ~2x faster than one gather / scatter over an expanded (B, R, n, K) index, and
        # doing it for a few batch rows at a time (the (b, R, n) tensors stay in the
        # core's cache) another ~20% (measured, 1 thread).
        src = emb.to(w.dtype).permute(0, 2, 3, 1)  # (B, R, d, T)
        rows = _rows_per_chunk(R * n, _BACKWARD_CHUNK_ELEMENTS, B, emb.device)
        acc = src.new_zeros(B, R, d, T) if need_emb else None
        for s in range(0, B, rows):
            g, x = grad[s:s + rows], src[s:s + rows]
            shifted = [index[s:s + rows] + j for j in range(f)]  # t* + j: element j's row
            if need_weight:
                cols = torch.stack([(g * x[:, :, e].gather(2, shifted[j])).sum((0, 1))
                                    for j in range(f) for e in range(d)], dim=-1)
                grad_w = cols if grad_w is None else grad_w + cols  # (n, K), K as (j, e)
            if acc is not None:
                for j in range(f):
                    for e in range(d):
                        acc[s:s + rows, :, e].scatter_add_(2, shifted[j], g * w[:, j * d + e])
        if acc is not None:
            grad_emb = acc.permute(0, 3, 1, 2).to(emb.dtype)  # (B, T, R, d)
    else:  # dense scatter of the pooled gradient: B*R*T'*n values
        win = _windows(emb, f).to(w.dtype).permute(0, 2, 1, 3)  # (B, R, T', K)
        dense = grad.new_zeros(B, R, n, Tp).scatter(3, index.unsqueeze(-1), grad.unsqueeze(-1))
        dense = dense.transpose(2, 3)  # (B, R, T', n)
        if need_weight:
            grad_w = torch.einsum("brtn,brtk->nk", dense, win)
        if need_emb:
            grad_win = torch.matmul(dense, w)
            grad_win = grad_win.reshape(B, R, Tp, f, d).permute(0, 2, 1, 3, 4)  # (B,T',R,f,d)
            grad_emb = sum(F.pad(grad_win[:, :, :, j], (0, 0, 0, 0, j, f - 1 - j))
                           for j in range(f))
            grad_emb = grad_emb.to(emb.dtype)
    if grad_w is not None:
        grad_w = grad_w.reshape(weight.shape).to(weight.dtype)
    return grad_emb, grad_w


class _KernelConvMaxPool(torch.autograd.Function):
    """``relu(cat_i(_ConvMaxPool(emb, w_i)) + bias)`` for all filter sizes at once through the
    compiled CPU kernels (:mod:`textgan.models.cpu_kernels`): ``emb`` ``(B, T, R, d)``, ``bias``
    ``(sum n_i,)``, weights ``(n_i, 1, f_i, d)`` -> ``(B, R, sum n_i)``. The kernels compute each
    (batch row, representation)'s scores in registers and keep the running maximum and its time
    step, so the ``(B, T', R, n)`` scores never reach memory; backward accumulates the winning
    windows' gradients per row. A backward that must itself be differentiable (the WGAN-GP
    penalty's double backward) takes the PyTorch ops of :func:`_conv_max_pool_grad` instead."""

    @staticmethod
    def forward(ctx, emb: Tensor, bias: Tensor, *weights: Tensor) -> Tensor:
        features, index = cpu_kernels.conv_max_pool(emb, list(weights), bias)
        ctx.save_for_backward(emb, index, features, *weights)
        return features

    @staticmethod
    def backward(ctx, grad: Tensor):
        emb, index, features, *weights = ctx.saved_tensors
        need_emb, need_bias = ctx.needs_input_grad[:2]
        need_w = any(ctx.needs_input_grad[2:])
        if torch.is_grad_enabled():
            grad = grad * (~(features <= 0)).to(grad.dtype)  # the ReLU's (NaN passes)
            grad_emb, grad_ws, col = None, [], 0
            for w in weights:
                n = w.shape[0]
                g_e, g_w = _conv_max_pool_grad(emb, w, index[..., col:col + n].long(),
                                               grad[..., col:col + n], w.shape[2], need_emb,
                                               need_w)
                grad_emb = g_e if grad_emb is None else grad_emb + g_e
                grad_ws.append(g_w)
                col += n
            grad_bias = grad.sum((0, 1))
        else:
            grad_emb, grad_ws, grad_bias = cpu_kernels.conv_max_pool_backward(
                emb, weights, index, features, grad, need_emb, need_w)
        if grad_ws is None:
            grad_ws = [None] * len(weights)
        return (grad_emb, grad_bias if need_bias else None,
                *(g if need else None
                  for g, need in zip(grad_ws, ctx.needs_input_grad[2:], strict=True)))


def _conv_max_pool(emb: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Max-over-time of a VALID convolution whose kernel spans whole representations.

    Args:
        emb: ``(B, T, R, d)``: ``R`` representations of ``d`` dims each.
        weight: ``(n, 1, f, d)`` (an ``nn.Conv2d(1, n, (f, d), stride=(1, d))`` weight).
        bias: ``(n,)`` or ``None``.

    Returns:
        ``(B, R, n)`` equal to ``F.conv2d(emb.view(B, 1, T, R*d), weight, bias, stride=(1, d))
        .amax(dim=2).transpose(1, 2)`` (see :class:`_ConvMaxPool`).
    """
    # Always in the parameters' precision, also under autocast: on CPU a bfloat16 product over
    # the unfolded windows (and the max over its scores) is ~13x slower than float32 for
    # SeqGAN's wide windows and slower for RelGAN's narrow, memory-bound ones (measured).
    device = emb.device.type
    with torch.autocast(device, enabled=False):
        pooled = _ConvMaxPool.apply(emb.to(weight.dtype), weight, weight.shape[2])
    return pooled if bias is None else pooled + bias


def _trunc_normal_(t: Tensor, std: float) -> Tensor:
    """TensorFlow's ``truncated_normal_initializer``: N(0, std^2) cut at 2 std."""
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def _check_filters(filter_sizes, num_filters) -> tuple[tuple[int, ...], tuple[int, ...]]:
    fs, nf = tuple(int(f) for f in filter_sizes), tuple(int(n) for n in num_filters)
    if not fs or len(fs) != len(nf):
        raise ValueError(
            f"filter_sizes {list(fs)} and num_filters {list(nf)} must be non-empty and of the "
            "same length"
        )
    if min(fs) < 1 or min(nf) < 1:
        raise ValueError(f"filter sizes and counts must be >= 1, got {list(fs)} and {list(nf)}")
    return fs, nf


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPU, from the same distribution.

    When ``256 p`` is an integer (RelGAN's and SeqGAN's ``p = 0.25``), an element is kept when a
    uniform random byte is ``>= 256 p``, which has probability exactly ``1 - p``; the bytes come
    from one 64-bit draw per 8 elements, so mask and product take about half the time of
    ``rand_like(x) >= p`` (one float draw per element; itself ~3x faster than ``bernoulli_``) on
    the discriminators' ``(B, R, 1200)`` activations. Other ``p``: the mask is ``rand >= p``.
    """

    def __init__(self, p: float):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        super().__init__(float(p))

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0

    def keep_bytes(self, x: Tensor) -> tuple[Tensor, int]:
        """The mask for ``x`` as uint8 values and a threshold: keep where ``values >=
        threshold`` (random bytes and ``256 p``, or 0/1 and 1 for other ``p``)."""
        threshold = self.p * 256
        if threshold == int(threshold):
            n = x.numel()
            words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device)
            random = words.random_(torch.iinfo(torch.int64).min, None).view(torch.uint8)
            return random[:n].view(x.shape), int(threshold)
        return torch.rand_like(x).ge_(self.p).to(torch.uint8), 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.active:
            return x
        values, threshold = self.keep_bytes(x)
        return x * values.ge(threshold).to(x.dtype).mul_(1.0 / (1.0 - self.p))


class Highway(nn.Module):
    """One highway layer: ``t * relu(W_h x [+ b_h]) + (1 - t) * x`` with ``t = sigmoid(W_t x
    [+ b_t])`` (Srivastava et al. 2015, as in the SeqGAN/RelGAN code with gate bias offset 0).

    With ``shared=True``, TextGAN-PyTorch's variant: one matrix serves as both, ``a = W x [+ b]``,
    ``sigmoid(a) * relu(a) + (1 - sigmoid(a)) * x``: half the parameters and half the FLOPs.

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int, bias: bool = True, shared: bool = False):
        super().__init__()
        self.lin = nn.Linear(dim, dim, bias=bias)
        self.gate = None if shared else nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is None:
            h = F.linear(x, self.lin.weight, self.lin.bias)
            return torch.addcmul(x, torch.sigmoid(h), torch.relu(h) - x)
        # One (dim -> 2 dim) matmul instead of two, and x + t (h - x) == t h + (1 - t) x with
        # fewer passes over the (rows, dim) tensors.
        weight = torch.cat([self.lin.weight, self.gate.weight])
        bias = None if self.lin.bias is None else torch.cat([self.lin.bias, self.gate.bias])
        h, g = F.linear(x, weight, bias).chunk(2, dim=-1)
        return torch.addcmul(x, torch.sigmoid(g), torch.relu(h) - x)


def _highway_matrix(highway: Highway) -> tuple[Tensor, Tensor | None, bool]:
    """The highway's product as one ``(F or 2F, F)`` weight (transform rows first), its bias
    and whether gate and transform are shared."""
    if highway.gate is None:
        return highway.lin.weight, highway.lin.bias, True
    weight = torch.cat([highway.lin.weight, highway.gate.weight])
    bias = None if highway.lin.bias is None else torch.cat([highway.lin.bias, highway.gate.bias])
    return weight, bias, False


def _head_eager(x: Tensor, weight: Tensor, bias: Tensor | None, v: Tensor, keep: Tensor | None,
                threshold: int, scale: float, shared: bool) -> Tensor:
    """:class:`_KernelHead` in PyTorch ops (for its double backward): ``(N, F) -> (N,)``."""
    H = F.linear(x, weight, bias)
    h, g = (H, H) if shared else H.chunk(2, dim=-1)
    y = torch.addcmul(x, torch.sigmoid(g), torch.relu(h) - x)
    if keep is not None:
        y = y * keep.ge(threshold).to(y.dtype).mul_(scale)
    return y @ v


class _KernelHead(torch.autograd.Function):
    """``dropout(highway(x)) @ v`` for ``x`` ``(N, F)``, the highway's product in PyTorch and
    everything after it in one compiled CPU kernel (:func:`cpu_kernels.head`): the
    ``(N, F)`` activations are read once forward and once backward instead of once per
    elementwise operator (sigmoid, relu, the mix, the dropout mask and product, and their
    gradients). Arguments as :func:`_head_eager`; the dropout mask comes in as bytes drawn by
    :meth:`Dropout.keep_bytes`, so the random stream is the module path's. A backward that must
    be differentiable (double backward) recomputes :func:`_head_eager` instead."""

    @staticmethod
    def forward(ctx, x, weight, bias, v, keep, threshold, scale, shared):
        H = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight, bias, v, keep, H)
        ctx.args = threshold, scale, shared
        return cpu_kernels.head(H, x, keep, threshold, scale, v, shared)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, v, keep, H = ctx.saved_tensors
        threshold, scale, shared = ctx.args
        need = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():
            inputs = [t for t, n in zip((x, weight, bias, v), need, strict=True) if n]
            out = _head_eager(x, weight, bias, v, keep, threshold, scale, shared)
            grads = iter(torch.autograd.grad(out, inputs, grad, create_graph=True))
            return (*(next(grads) if n else None for n in need), None, None, None, None)
        grad_H, grad_x, grad_v = cpu_kernels.head_backward(H, x, keep, threshold, scale, v, grad,
                                                           shared)
        return (torch.addmm(grad_x, grad_H, weight) if need[0] else None,
                grad_H.t() @ x if need[1] else None,
                grad_H.sum(0) if need[2] and bias is not None else None,
                grad_v if need[3] else None, None, None, None, None)


def _head(highway: Highway, dropout: Dropout, x: Tensor, v: Tensor, c: Tensor) -> Tensor:
    """``dropout(highway(x)) @ v + c``: ``(..., F) -> (...)``. On the CPU through
    :class:`_KernelHead` when the compiled kernels are available (outside autocast), else the
    modules; both draw the same dropout mask from the same random stream."""
    flat = x.reshape(-1, x.shape[-1])
    weight, bias, shared = _highway_matrix(highway)
    if cpu_kernels.supports_head(flat, weight):
        keep, threshold = dropout.keep_bytes(flat) if dropout.active else (None, 0)
        scale = 1.0 / (1.0 - dropout.p) if keep is not None else 1.0
        out = _KernelHead.apply(flat, weight, bias, v, keep, threshold, scale, shared)
    else:
        out = dropout(highway(flat)) @ v
    return (out + c).view(x.shape[:-1])


# --------------------------------------------------------------------------------------------
# RelGAN
# --------------------------------------------------------------------------------------------


class RelGANDiscriminator(nn.Module):
    """RelGAN's CNN discriminator with multiple embedded representations (Nie et al. 2019).

    One embedding matrix ``(V, embed_dim)``; its output is split into ``num_rep`` representations
    of ``d = embed_dim / num_rep`` dims, and the *same* CNN scores every one of them: for each
    filter size ``f`` a ``Conv2d(1, n_f, kernel=(f, d), stride=(1, d))`` over the ``(T,
    embed_dim)`` "image" gives ``(B, n_f, T-f+1, num_rep)``; ReLU; max-pool over time ``(B, n_f,
    num_rep)``; concatenation over filters ``(B, num_rep, sum n_f)``; a highway layer (no biases,
    as in the official code); dropout (``0.25`` = keep 0.75); a *linear* ``hidden_dim``-unit
    layer (no activation: the official code applies ``linear(..., 100)`` then ``linear(..., 1)``
    with nothing in between); a linear output: one logit per representation.

    Initialisation follows the official TF code: embedding and linear weights truncated normal
    with std ``1/sqrt(fan_in)`` (embedding: ``1/sqrt(V)``), conv weights truncated normal with
    std ``sqrt(2 / (f * d))``, all biases zero.

    Args:
        vocab_size: ``V``.
        embed_dim: total embedding size; must be divisible by ``num_rep``.
        num_rep: number of representations (paper: 64).
        filter_sizes, num_filters: CNN filter heights and counts (paper: 2-5 x 300).
        hidden_dim: size of the linear layer before the output (paper: 100).
        dropout: dropout probability after the highway layer.
        max_len: optional maximum sequence length (the official graph is built for a fixed
            length); when set, longer inputs raise. The parameters do not depend on it.
        highway: ``"separate"`` (default, the official code: gate and transform matrices, no
            biases) or ``"shared"`` (TextGAN-PyTorch's discriminator: one ``Linear(F, F)`` with
            bias as both, see :class:`Highway`; half the highway's cost, which is most of a D
            step on CPU; ``textgan bench relgan`` times both). Only the structure is
            TextGAN-PyTorch's: the initialisation is the official one below (bias zero).

    Shapes:
        ``forward``: ids ``(B, T)`` or one-hots ``(B, T, V)`` -> logits ``(B, num_rep)``; the GAN
        losses (:mod:`textgan.losses`) average over all of them.

    Raises:
        ValueError: ``embed_dim`` not divisible by ``num_rep``; in ``forward``, ``T`` shorter
            than the largest filter (or longer than ``max_len``).
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, num_rep: int = 64,
                 filter_sizes: Sequence[int] = (2, 3, 4, 5),
                 num_filters: Sequence[int] = (300, 300, 300, 300), hidden_dim: int = 100,
                 dropout: float = 0.25, max_len: int | None = None, highway: str = "separate"):
        super().__init__()
        if highway not in ("separate", "shared"):
            raise ValueError(f"highway must be 'separate' (official RelGAN) or 'shared' "
                             f"(TextGAN-PyTorch), got {highway!r}")
        if vocab_size < 1 or embed_dim < 1 or num_rep < 1 or hidden_dim < 1:
            raise ValueError(
                "vocab_size, embed_dim, num_rep and hidden_dim must be >= 1, got "
                f"{vocab_size}, {embed_dim}, {num_rep}, {hidden_dim}"
            )
        if embed_dim % num_rep:
            raise ValueError(
                f"embed_dim={embed_dim} must be divisible by num_rep={num_rep} (each "
                f"representation gets embed_dim / num_rep dims)"
            )
        fs, nf = _check_filters(filter_sizes, num_filters)
        if max_len is not None and max_len < max(fs):
            raise ValueError(f"max_len={max_len} is shorter than the largest filter {max(fs)}")
        self.vocab_size, self.embed_dim, self.num_rep = vocab_size, embed_dim, num_rep
        self.rep_dim = embed_dim // num_rep
        self.filter_sizes, self.num_filters = fs, nf
        self.max_len = max_len
        d = self.rep_dim

        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.convs = nn.ModuleList(
            nn.Conv2d(1, n, (f, d), stride=(1, d)) for f, n in zip(fs, nf, strict=True)
        )
        total = sum(nf)
        shared = highway == "shared"
        self.highway = Highway(total, bias=shared, shared=shared)
        self.dropout = Dropout(dropout)
        self.hidden = nn.Linear(total, hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (see the class docstring)."""
        _trunc_normal_(self.embedding.weight, 1.0 / math.sqrt(self.vocab_size))
        for conv in self.convs:
            f, d = conv.kernel_size
            _trunc_normal_(conv.weight, math.sqrt(2.0 / (f * d)))
            nn.init.zeros_(conv.bias)
        for lin in (self.highway.lin, self.highway.gate, self.hidden, self.out):
            if lin is None:  # shared highway
                continue
            _trunc_normal_(lin.weight, 1.0 / math.sqrt(lin.in_features))
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def _check_length(self, T: int) -> None:
        if T < max(self.filter_sizes):
            raise ValueError(
                f"sequence length T={T} is shorter than the largest filter size "
                f"{max(self.filter_sizes)} of {type(self).__name__} (filter_sizes="
                f"{list(self.filter_sizes)})"
            )
        if self.max_len is not None and T > self.max_len:
            raise ValueError(f"sequence length T={T} exceeds max_len={self.max_len}")

    def features(self, x: Tensor) -> Tensor:
        """Pooled CNN features ``(B, num_rep, sum(num_filters))`` of ids or one-hots."""
        emb = _embed(self.embedding.weight, x)  # (B, T, embed_dim)
        B, T, _ = emb.shape
        self._check_length(T)
        emb = emb.view(B, T, self.num_rep, self.rep_dim)
        weights = [c.weight for c in self.convs]
        with torch.autocast(emb.device.type, enabled=False):  # see _conv_max_pool
            e = emb.to(weights[0].dtype)
            if all(c.bias is not None for c in self.convs) and cpu_kernels.supports(e, weights):
                bias = torch.cat([c.bias for c in self.convs])
                return _KernelConvMaxPool.apply(e, bias, *weights)
        pooled = [_conv_max_pool(emb, c.weight, c.bias) for c in self.convs]  # (B, R, n_f) each
        return torch.relu(torch.cat(pooled, dim=-1))

    def forward(self, x: Tensor) -> Tensor:
        """Ids ``(B, T)`` or (relaxed) one-hots ``(B, T, V)`` -> logits ``(B, num_rep)``."""
        # hidden and out are both linear (nothing between them, as in the official code), so
        # out(hidden(h)) = h @ (W_out W_hidden)^T + (W_out b_hidden + b_out): one (F,) vector
        # per row instead of a (B R, F) x (F, hidden_dim) product (and its two backward
        # products); autograd still gives both layers their exact gradients.
        weight = (self.out.weight @ self.hidden.weight)[0]  # (F,)
        bias = self.out.weight @ self.hidden.bias + self.out.bias  # (1,)
        return _head(self.highway, self.dropout, self.features(x), weight, bias)  # (B, R)


# --------------------------------------------------------------------------------------------
# SeqGAN
# --------------------------------------------------------------------------------------------


class SeqGANDiscriminator(nn.Module):
    """SeqGAN's CNN text classifier (Yu et al. 2017, after Kim 2014): one logit per sequence.

    Embedding ``(V, embed_dim)``; for each filter size ``f`` a ``Conv2d(1, n_f, (f,
    embed_dim))`` over the sequence, ReLU, max-pool over time; concatenation ``(B, sum n_f)``;
    a highway layer; dropout; a linear output. The official code has a 2-class softmax output;
    one logit ``s`` is equivalent (``softmax([0, s])[1] = sigmoid(s)``) and fits the losses of
    :mod:`textgan.losses`. Initialisation as in the official code: embedding ``U(-1, 1)``, conv
    and output weights truncated normal (std 0.1) with biases 0.1; the highway keeps PyTorch's
    defaults.

    Args:
        vocab_size: ``V``.
        embed_dim: embedding size (paper: 64).
        filter_sizes, num_filters: CNN filter widths and counts (paper: 1..10, 15, 20 with
            100-200 filters each).
        dropout: dropout probability before the output layer (paper: keep 0.75).
        l2_reg: weight of :meth:`l2_loss` (paper: 0.2).
        allow_short: if ``False`` (default), sequences shorter than the widest filter raise; if
            ``True``, filters wider than ``T`` are dropped for that input (their pooled features
            are zeros) and a warning is logged once per length.

    Shapes:
        ``forward``: ids ``(B, T)`` or one-hots ``(B, T, V)`` -> logits ``(B,)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64,
                 filter_sizes: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20),
                 num_filters: Sequence[int] = (100, 200, 200, 200, 200, 100, 100, 100, 100, 100,
                                               160, 160),
                 dropout: float = 0.25, l2_reg: float = 0.2, allow_short: bool = False):
        super().__init__()
        if vocab_size < 1 or embed_dim < 1:
            raise ValueError(
                f"vocab_size and embed_dim must be >= 1, got {vocab_size} and {embed_dim}"
            )
        if l2_reg < 0:
            raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
        fs, nf = _check_filters(filter_sizes, num_filters)
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        self.filter_sizes, self.num_filters = fs, nf
        self.l2_reg, self.allow_short = float(l2_reg), bool(allow_short)
        self._warned_lengths: set[int] = set()

        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.convs = nn.ModuleList(
            nn.Conv2d(1, n, (f, embed_dim)) for f, n in zip(fs, nf, strict=True)
        )
        total = sum(nf)
        self.highway = Highway(total, bias=True)
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(total, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (see the class docstring)."""
        nn.init.uniform_(self.embedding.weight, -1.0, 1.0)
        for layer in (*self.convs, self.out):
            _trunc_normal_(layer.weight, 0.1)
            nn.init.constant_(layer.bias, 0.1)
        self.highway.lin.reset_parameters()
        self.highway.gate.reset_parameters()

    def features(self, x: Tensor) -> Tensor:
        """Pooled CNN features ``(B, sum(num_filters))`` of ids or one-hots."""
        emb = _embed(self.embedding.weight, x)  # (B, T, E)
        B, T, E = emb.shape
        widest = max(self.filter_sizes)
        if T < widest:
            if not self.allow_short:
                raise ValueError(
                    f"sequence length T={T} is shorter than the widest filter size {widest} of "
                    f"SeqGANDiscriminator (filter_sizes={list(self.filter_sizes)}); pass "
                    "allow_short=True to drop the wider filters or use shorter filters"
                )
            if T not in self._warned_lengths:
                self._warned_lengths.add(T)
                log.warning("SeqGANDiscriminator: T=%d is shorter than filters %s; their "
                            "features are set to zero", T, [f for f in self.filter_sizes if f > T])
        emb = emb.view(B, T, 1, E)
        pooled = []
        for f, n, conv in zip(self.filter_sizes, self.num_filters, self.convs, strict=True):
            if f > T:
                pooled.append(emb.new_zeros(B, n))
            else:
                pooled.append(torch.relu(_conv_max_pool(emb, conv.weight, conv.bias)[:, 0]))
        return torch.cat(pooled, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Ids ``(B, T)`` or (relaxed) one-hots ``(B, T, V)`` -> logits ``(B,)``."""
        return _head(self.highway, self.dropout, self.features(x), self.out.weight[0],
                     self.out.bias)

    def l2_loss(self) -> Tensor:
        """``l2_reg * (||W_out||^2 + ||b_out||^2) / 2`` (``tf.nn.l2_loss`` on the output layer),
        for the trainer to add to the discriminator loss."""
        return self.l2_reg * 0.5 * (self.out.weight.pow(2).sum() + self.out.bias.pow(2).sum())

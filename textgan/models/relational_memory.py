"""The relational memory core (RMC) generator of RelGAN.

Santoro et al., "Relational recurrent neural networks", NeurIPS 2018 (arXiv:1806.01822), as the
generator of Nie, Narodytska, Patel, "RelGAN: Relational Generative Adversarial Networks for
Text Generation", ICLR 2019. Written from the paper's equations.

Notation: ``N = mem_slots`` rows of memory, each of size ``d = num_heads * head_size``;
``H = num_heads``; ``M_{t-1}`` is ``(N, d)`` per sequence. At each step:

1. Input:  ``e_t = embed(x_t)`` (ids: lookup; one-hots: ``x_t @ E``), ``x~_t = e_t W_in + b_in``
   (one row of size ``d``).
2. Attention of the memory over ``[M; x~]`` (multi-head dot-product attention, MHDPA)::

       [Q; K; V]^h = LN_qkv([M; x~] W_qkv)           per head h, key/value size head_size
       A^h = softmax(Q^h K^h^T / sqrt(head_size)) V^h   queries: the N memory rows only
       A = concat_h A^h                                 (N, d)

   (``LN_qkv``, a layer norm of the projected queries/keys/values, is optional:
   ``qkv_layer_norm``.) Queries come from the memory rows only: the input row's own update is
   discarded by the RMC, so computing it would change nothing.
3. Residual + layer norm, then a 2-layer MLP (ReLU between) + residual + layer norm::

       M1 = LN_1(M + A)          M~ = LN_2(M1 + MLP(M1))

4. LSTM-style gating of the memory, per unit (``gate_style="unit"``)::

       i = x~ W_i + tanh(M_{t-1}) U_i + b_i       f = x~ W_f + tanh(M_{t-1}) U_f + b_f
       M_t = sigmoid(i + input_bias) * tanh(M~) + sigmoid(f + forget_bias) * M_{t-1}

5. Output: ``logits_t = flatten(M_t) W_out + b_out`` (``N * d -> V``).

Initial memory: the identity ``I_N`` padded with zeros (``d > N``) or truncated (``d < N``) to
``(N, d)``, the same for every sequence (Santoro et al.'s choice). RelGAN: ``embed_dim=32``,
``mem_slots=1``, ``num_heads=2``, ``head_size=256`` (``d = 512``).

``variant="relgan_code"``: the RMC exactly as RelGAN's official TensorFlow code computes it
(``utils/models/relational_memory.py`` of weilinie/RelGAN), which differs from the equations
above in four ways: (a) its three layer norms are ``tf.contrib.layers.layer_norm`` on
``(B, N + 1, F)`` tensors, whose default ``begin_norm_axis=1`` normalises over the ``N + 1`` rows
*and* the features jointly (gain and bias per feature; epsilon 1e-12), so the input row's
attention update enters the memory rows' statistics and is computed (queries from all ``N + 1``
rows); (b) the attention logits are scaled by ``(2 key_size + head_size) ** -0.5 = (3 S) ** -0.5``
instead of ``S ** -0.5``; (c) the query/key/value projection and the gates have no bias; (d) the
initialisation: every weight truncated normal (2 std) with std ``1 / sqrt(fan_in)`` (embedding:
``1 / sqrt(V)``), biases zero. The default ``variant="paper"`` is the equations above, per-row
layer norms, PyTorch's initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textgan.errors import choice_error
from textgan.models.common import embed_tokens

__all__ = ["RMCGenerator", "VARIANTS"]

VARIANTS = ("paper", "relgan_code")


def _joint_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``tf.contrib.layers.layer_norm`` of ``(B, R, F)``: statistics over the rows and features
    together (its ``begin_norm_axis=1``), gain and bias per feature (``norm``'s)."""
    return F.layer_norm(x, x.shape[-2:], eps=norm.eps) * norm.weight + norm.bias


class RMCGenerator(nn.Module):
    """Relational-memory generator (RelGAN's).

    Args:
        vocab_size: ``V``.
        embed_dim: token embedding size.
        mem_slots: ``N``, rows of memory.
        num_heads: attention heads ``H``.
        head_size: per-head size; the memory row size is ``d = num_heads * head_size``.
        start_token: the first input of every sequence.
        mlp_layers: layers of the memory MLP (paper: 2).
        forget_bias, input_bias: added to the gate pre-activations (1 and 0: the memory is
            mostly kept at initialisation).
        qkv_layer_norm: layer-normalise the projected queries/keys/values.
        dropout: dropout on the attention weights (0 in RelGAN).
        variant: ``"paper"`` (the module docstring's equations) or ``"relgan_code"`` (RelGAN's
            TensorFlow code: joint layer norms over the rows, attention scale, no qkv / gate
            bias, its initialisation; see the module docstring).

    State:
        the memory ``(B, mem_slots, d)``.
    """

    CHOICES = {"variant": VARIANTS}  # checked with the recipe, before anything runs

    def __init__(self, vocab_size: int, embed_dim: int = 32, mem_slots: int = 1,
                 num_heads: int = 2, head_size: int = 256, start_token: int = 0,
                 mlp_layers: int = 2, forget_bias: float = 1.0, input_bias: float = 0.0,
                 qkv_layer_norm: bool = True, dropout: float = 0.0, variant: str = "paper"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(choice_error("variant", variant, VARIANTS))
        code = variant == "relgan_code"
        if code and not qkv_layer_norm:
            raise ValueError("`qkv_layer_norm=False` is not RelGAN's code; use variant='paper'")
        if vocab_size < 1:
            raise ValueError(f"`vocab_size` must be >= 1, got {vocab_size}")
        if not 0 <= start_token < vocab_size:
            raise ValueError(f"`start_token` must be in [0, {vocab_size}), got {start_token}")
        for name, v in (("mem_slots", mem_slots), ("num_heads", num_heads),
                        ("head_size", head_size), ("mlp_layers", mlp_layers)):
            if v < 1:
                raise ValueError(f"`{name}` must be >= 1, got {v}")
        self.vocab_size, self.start_token = int(vocab_size), int(start_token)
        self.embed_dim, self.mem_slots = embed_dim, mem_slots
        self.num_heads, self.head_size = num_heads, head_size
        self.mem_size = d = num_heads * head_size
        self.forget_bias, self.input_bias = float(forget_bias), float(input_bias)
        self.dropout = float(dropout)
        self.variant = variant
        eps = 1e-12 if code else 1e-5  # tf.contrib.layers.layer_norm's / PyTorch's

        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.input_proj = nn.Linear(embed_dim, d)
        self.qkv = nn.Linear(d, 3 * d, bias=not code)
        self.qkv_norm = nn.LayerNorm(3 * d, eps=eps) if qkv_layer_norm else nn.Identity()
        self.norm1 = nn.LayerNorm(d, eps=eps)
        mlp: list[nn.Module] = []
        for k in range(mlp_layers):
            mlp.append(nn.Linear(d, d))
            if k < mlp_layers - 1:
                mlp.append(nn.ReLU())
        self.mlp = nn.Sequential(*mlp)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.gate_input = nn.Linear(d, 2 * d, bias=not code)  # x~ -> (i, f)
        self.gate_memory = nn.Linear(d, 2 * d, bias=False)  # tanh(M) -> (i, f)
        self.out = nn.Linear(mem_slots * d, vocab_size)
        if code:
            self._init_as_relgan_code()

        init = torch.eye(mem_slots)
        if d > mem_slots:
            init = F.pad(init, (0, d - mem_slots))
        else:
            init = init[:, :d]
        self.register_buffer("initial_memory", init, persistent=False)

    @torch.no_grad()
    def _init_as_relgan_code(self) -> None:
        """RelGAN's ``create_linear_initializer``: truncated normal (at 2 std, TensorFlow's)
        with std ``1 / sqrt(fan_in)`` for every weight (the embedding's fan-in: ``V``), zero
        biases; layer norms gain 1, bias 0."""
        def trunc(t: Tensor, fan_in: int) -> None:
            std = 1.0 / math.sqrt(fan_in)
            nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)

        trunc(self.embedding.weight, self.vocab_size)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc(module.weight, module.in_features)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- the core -----------------------------------------------------------------------------
    def _attend(self, memory: Tensor, x_qkv: Tensor) -> Tensor:
        """MHDPA of the memory ``(B, N, d)`` over ``[memory; x~]`` -> ``(B, N, d)``, given the
        input row's projected ``x_qkv = LN_qkv(x~ W_qkv)`` ``(B, 3d)``."""
        B, N, d = memory.shape
        H, S = self.num_heads, self.head_size
        qkv = torch.cat([self.qkv_norm(self.qkv(memory)), x_qkv.unsqueeze(1)], 1)  # (B, N+1, 3d)
        q, k, v = qkv.split(d, dim=-1)
        q = q[:, :N].reshape(B, N, H, S).transpose(1, 2)  # (B, H, N, S)
        k = k.reshape(B, N + 1, H, S).transpose(1, 2)
        v = v.reshape(B, N + 1, H, S).transpose(1, 2)
        w = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(S), dim=-1)
        if self.dropout > 0:
            w = F.dropout(w, self.dropout, self.training)
        return (w @ v).transpose(1, 2).reshape(B, N, d)

    def _attend_joint(self, memory: Tensor, x_row: Tensor, x_qkv: Tensor) -> Tensor:
        """``variant="relgan_code"``: the attention block over all ``N + 1`` rows of ``[M; x~]``
        with layer norms over rows and features jointly; the memory rows of its output."""
        B, N, d = memory.shape
        H, S = self.num_heads, self.head_size
        rows = torch.cat([memory, x_row.unsqueeze(1)], 1)  # (B, N+1, d)
        qkv = _joint_norm(torch.cat([self.qkv(memory), x_qkv.unsqueeze(1)], 1), self.qkv_norm)
        q, k, v = (z.reshape(B, N + 1, H, S).transpose(1, 2) for z in qkv.split(d, dim=-1))
        w = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(3 * S), dim=-1)
        if self.dropout > 0:
            w = F.dropout(w, self.dropout, self.training)
        m1 = _joint_norm(rows + (w @ v).transpose(1, 2).reshape(B, N + 1, d), self.norm1)
        return _joint_norm(m1 + self.mlp(m1), self.norm2)[:, :N]

    def _core(self, memory: Tensor, x_row: Tensor, x_qkv: Tensor, x_gates: Tensor) -> Tensor:
        """One memory update, given the input row and its projections (see :meth:`_inputs`)."""
        if self.variant == "relgan_code":
            m_new = self._attend_joint(memory, x_row, x_qkv)
        else:
            m1 = self.norm1(memory + self._attend(memory, x_qkv))
            m_new = self.norm2(m1 + self.mlp(m1))
        gates = self.gate_memory(torch.tanh(memory)) + x_gates.unsqueeze(1)  # (B, N, 2d)
        i, f = gates.chunk(2, dim=-1)
        return (torch.sigmoid(i + self.input_bias) * torch.tanh(m_new)
                + torch.sigmoid(f + self.forget_bias) * memory)

    def _logits(self, memory: Tensor) -> Tensor:
        return self.out(memory.flatten(-2))

    def _inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Everything that depends on the input alone, for any leading shape: the input row
        ``x~`` ``(..., d)``, its ``LN_qkv(x~ W_qkv)`` ``(..., 3d)`` (``relgan_code``: before the
        layer norm, which is joint with the memory rows) and gate pre-activations ``x~ W_g + b_g``
        ``(..., 2d)`` (``forward`` computes them for all positions in one matmul each)."""
        x_row = self.input_proj(embed_tokens(self.embedding, x))
        x_qkv = self.qkv(x_row)
        if self.variant == "paper":
            x_qkv = self.qkv_norm(x_qkv)
        return x_row, x_qkv, self.gate_input(x_row)

    # -- generator protocol -------------------------------------------------------------------
    def init_state(self, batch_size: int) -> Tensor:
        w = self.out.weight
        mem = self.initial_memory.to(device=w.device, dtype=w.dtype)
        return mem.unsqueeze(0).expand(batch_size, -1, -1).contiguous()

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One position: ids ``(B,)`` or one-hots ``(B, V)`` -> logits ``(B, V)``, new memory."""
        memory = self._core(state, *self._inputs(x_t))
        return self._logits(memory), memory

    def forward_states(self, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Teacher-forced logits ``(B, T, V)`` and the memory after each position
        (``states[t]``: after consuming ``inputs[:, : t + 1]``)."""
        x_row, x_qkv, x_gates = self._inputs(inputs)  # for all positions at once
        memory = self.init_state(inputs.shape[0])
        states = []
        # unbind, not x[:, t]: the backward of T slices of a (B, T, F) tensor fills and adds T
        # full-size gradients (O(T^2) memory traffic, ~20% of an MLE step at T = 37);
        # unbind's backward stacks the T pieces once (the same values)
        for row, qkv, gates in zip(x_row.unbind(1), x_qkv.unbind(1), x_gates.unbind(1),
                                   strict=True):
            memory = self._core(memory, row, qkv, gates)
            states.append(memory)
        logits = self._logits(torch.stack(states, 1))  # one output matmul for all positions
        return logits, states

    def forward(self, inputs: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for ids ``(B, T)`` or one-hots ``(B, T, V)``."""
        return self.forward_states(inputs)[0]

    def repeat_state(self, state: Tensor, n: int) -> Tensor:
        """Repeat each batch row ``n`` times consecutively (``repeat_interleave`` on batch)."""
        return state.repeat_interleave(n, dim=0)

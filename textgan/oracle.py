"""The synthetic benchmark of SeqGAN (Yu et al., AAAI 2017) and RelGAN: an oracle LSTM.

Semantics (``../shared/data/README.md``): vocabulary 5,000, embedding and hidden size 32,
sequence length 20; ``h0 = c0 = 0``; the first input is the embedding of token 0 (the start
token, also an ordinary vocabulary id); each next input is the embedding of the token just
emitted; every sequence has exactly ``seq_len`` tokens (no end token).

    i = sigmoid(x Wi + h Ui + bi)      f = sigmoid(x Wf + h Uf + bf)
    o = sigmoid(x Wo + h Uo + bo)      cand = tanh(x Wc + h Uc + bc)
    c = f * c + i * cand               h = o * tanh(c)        logits = h W_out + b_out

NLL_oracle of a sequence is the mean over its positions of ``-log softmax(logits)[token]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textgan.sampling import gumbel_max

_KEYS = ("embedding", "Wi", "Ui", "bi", "Wf", "Uf", "bf", "Wo_gate", "Uo_gate", "bo_gate",
         "Wc", "Uc", "bc", "W_out", "b_out")


# RelGAN's utils/models/OracleLstm.py (from Texygen): shape and op seed of every parameter.
_RELGAN_GRAPH_SEED = 1234
_RELGAN_SEEDS = {
    "embedding": ((5000, 32), 123314154),
    "Wi": ((32, 32), 111), "Ui": ((32, 32), 211), "bi": ((32,), 311),
    "Wf": ((32, 32), 114), "Uf": ((32, 32), 115), "bf": ((32,), 116),
    "Wo_gate": ((32, 32), 997), "Uo_gate": ((32, 32), 998), "bo_gate": ((32,), 999),
    "Wc": ((32, 32), 110), "Uc": ((32, 32), 111), "bc": ((32,), 112),
    "W_out": ((32, 5000), 12341), "b_out": ((5000,), 56865246),
}


class OracleLSTM(nn.Module):
    """A frozen LSTM language model that defines the "real" data distribution.

    It also satisfies the sampler core's generator protocol (``start_token``, ``vocab_size``,
    ``init_state``, ``step``), so ``sampling.sample_sequence`` works on it too.
    """

    def __init__(self, params: dict[str, Tensor], seq_len: int = 20, start_token: int = 0):
        super().__init__()
        missing = [k for k in _KEYS if k not in params]
        if missing:
            raise ValueError(f"oracle parameters are missing keys {missing}; expected {_KEYS}")
        for k in _KEYS:
            self.register_buffer(k, torch.as_tensor(params[k], dtype=torch.float32).clone())
        V, E = self.embedding.shape
        H = self.Ui.shape[0]
        if self.W_out.shape != (H, V):
            raise ValueError(f"`W_out` has shape {tuple(self.W_out.shape)}, expected {(H, V)}")
        self.vocab_size, self.embed_dim, self.hidden_dim = V, E, H
        self.seq_len, self.start_token = seq_len, start_token
        # Fused gate weights, order (i, f, o, cand): one matmul per step instead of eight.
        self.register_buffer("W", torch.cat([self.Wi, self.Wf, self.Wo_gate, self.Wc], 1),
                             persistent=False)
        self.register_buffer("U", torch.cat([self.Ui, self.Uf, self.Uo_gate, self.Uc], 1),
                             persistent=False)
        self.register_buffer("b", torch.cat([self.bi, self.bf, self.bo_gate, self.bc]),
                             persistent=False)
        self.requires_grad_(False)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_npz(cls, path: str | Path, seq_len: int = 20) -> OracleLSTM:
        """Load the official SeqGAN oracle parameters (``seqgan_oracle_lstm.npz``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"oracle parameter file '{path}' does not exist; point `data.params` at "
                f"seqgan_oracle_lstm.npz (see data/README.md)"
            )
        with np.load(path) as z:
            params = {k: torch.from_numpy(z[k]) for k in z.files}
        return cls(params, seq_len=seq_len)

    @classmethod
    def random(cls, seed: int = 0, vocab_size: int = 5000, hidden_dim: int = 32,
               seq_len: int = 20, embed_dim: int | None = None) -> OracleLSTM:
        """An oracle with SeqGAN's N(0, 1) initialisation of every parameter, from ``seed``."""
        E = hidden_dim if embed_dim is None else embed_dim
        H, V = hidden_dim, vocab_size
        g = torch.Generator().manual_seed(seed)
        shapes = {"embedding": (V, E), "W_out": (H, V), "b_out": (V,)}
        for suffix in ("i", "f", "o_gate", "c"):
            shapes[f"W{suffix}"] = (E, H)
            shapes[f"U{suffix}"] = (H, H)
            shapes[f"b{suffix}"] = (H,)
        params = {k: torch.randn(shapes[k], generator=g) for k in _KEYS}
        return cls(params, seq_len=seq_len)

    @classmethod
    def relgan_code(cls, seq_len: int = 20) -> OracleLSTM:
        """The oracle that RelGAN's official code builds (Texygen's ``OracleLstm``), not SeqGAN's
        parameter file: every parameter ``tf.random_normal(shape, 0, 1, seed=...)`` with the op
        seeds of that code under graph seed 1234, repeated by :func:`textgan.tf_random.
        random_normal` (TensorFlow's draws to a few units in the last place). V = 5000, E = H =
        32. Its own samples score NLL_oracle ~5.83 under it (SeqGAN's file: ~5.75)."""
        from textgan.tf_random import op_seeds, random_normal

        params = {k: torch.from_numpy(random_normal(shape, *op_seeds(_RELGAN_GRAPH_SEED, seed)))
                  for k, (shape, seed) in _RELGAN_SEEDS.items()}
        return cls(params, seq_len=seq_len)

    # -- generator protocol -------------------------------------------------------------------
    def init_state(self, batch_size: int) -> tuple[Tensor, Tensor]:
        z = self.W.new_zeros(batch_size, self.hidden_dim)
        return z, z.clone()

    def step(self, x_t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple]:
        x = self.embedding[x_t] if x_t.dtype == torch.long else x_t.float() @ self.embedding
        h, c = self._cell(x, *state)
        return h @ self.W_out + self.b_out, (h, c)

    def forward(self, inputs: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for inputs ``(B, T)`` (``[start] + tokens[:-1]``)."""
        h, c = self.init_state(inputs.shape[0])
        xw = self.embedding[inputs] @ self.W  # (B, T, 4H): input projections for all steps at once
        hs = []
        for xw_t in xw.unbind(1):  # views whose backward stacks once (x[:, t]'s fills per step)
            h, c = self._cell(None, h, c, xw_t)
            hs.append(h)
        return torch.stack(hs, 1) @ self.W_out + self.b_out

    def _cell(self, x, h, c, xw=None):
        gates = (x @ self.W if xw is None else xw) + h @ self.U + self.b  # (B, 4H)
        i, f, o, cand = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cand)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    # -- the two things a benchmark needs -----------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, rng: torch.Generator | None = None, batch_size: int = 1000) -> Tensor:
        """``n`` sequences of ``seq_len`` tokens, ``LongTensor (n, seq_len)``; exact draws."""
        out = []
        for start in range(0, n, batch_size):
            B = min(batch_size, n - start)
            h, c = self.init_state(B)
            x = torch.full((B,), self.start_token, dtype=torch.long, device=self.W.device)
            toks = []
            for _ in range(self.seq_len):
                h, c = self._cell(self.embedding[x], h, c)
                x = gumbel_max(h @ self.W_out + self.b_out, rng)
                toks.append(x)
            out.append(torch.stack(toks, 1))
        return torch.cat(out, 0)

    @torch.no_grad()
    def nll(self, tokens: Tensor, batch_size: int = 1000) -> Tensor:
        """Mean per-token NLL in nats of each sequence: ``Tensor (n,)``."""
        tokens = tokens.long().to(self.W.device)
        if tokens.dim() != 2:
            raise ValueError(f"`tokens` must be (n, T), got shape {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"`tokens` must be ids in [0, {self.vocab_size}), got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        out = []
        for chunk in tokens.split(batch_size):
            start = chunk.new_full((chunk.shape[0], 1), self.start_token)
            logits = self(torch.cat([start, chunk[:, :-1]], 1))
            nll = F.cross_entropy(logits.transpose(1, 2), chunk, reduction="none")
            out.append(nll.mean(1))
        return torch.cat(out)

"""An LSTM language-model generator (SeqGAN / MLE baseline).

    e_t = embed(x_t)                      (ids: table lookup; one-hots: x_t @ E)
    (h_t, c_t) = LSTM(e_t, (h_{t-1}, c_{t-1}))       (num_layers stacked layers, h_0 = c_0 = 0)
    logits_t = h_t W_out + b_out

Teacher-forced ``forward`` runs one ``nn.LSTM`` call over the whole sequence; ``step`` runs the
same module on one position with the carried ``(h, c)``, so both give the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from textgan.models.common import embed_tokens, run_rnn

__all__ = ["LSTMGenerator"]

State = tuple[Tensor, Tensor]


class LSTMGenerator(nn.Module):
    """LSTM generator over a vocabulary of ``vocab_size`` tokens.

    Args:
        vocab_size: ``V``.
        embed_dim: token embedding size (SeqGAN: 32).
        hidden_dim: LSTM hidden size (SeqGAN: 32).
        num_layers: stacked LSTM layers.
        start_token: the first input of every sequence.
        dropout: dropout between stacked LSTM layers (``nn.LSTM``'s; unused for one layer).
        init_std: if set, every parameter is drawn from ``N(0, init_std)`` (SeqGAN initialises
            with ``N(0, 0.1)``); otherwise PyTorch's default initialisation.

    State:
        ``(h, c)``, each ``(num_layers, B, hidden_dim)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, hidden_dim: int = 32,
                 num_layers: int = 1, start_token: int = 0, dropout: float = 0.0,
                 init_std: float | None = None):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"`vocab_size` must be >= 1, got {vocab_size}")
        if not 0 <= start_token < vocab_size:
            raise ValueError(f"`start_token` must be in [0, {vocab_size}), got {start_token}")
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1, got {num_layers}")
        self.vocab_size = int(vocab_size)
        self.start_token = int(start_token)
        self.embed_dim, self.hidden_dim, self.num_layers = embed_dim, hidden_dim, num_layers
        self.dropout = float(dropout)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                            dropout=self.dropout if num_layers > 1 else 0.0)
        self.out = nn.Linear(hidden_dim, vocab_size)
        if init_std is not None:
            if not init_std > 0:
                raise ValueError(f"`init_std` must be > 0, got {init_std}")
            with torch.no_grad():
                for p in self.parameters():
                    p.normal_(0.0, init_std)

    # -- generator protocol -------------------------------------------------------------------
    def init_state(self, batch_size: int) -> State:
        w = self.out.weight
        z = w.new_zeros(self.num_layers, batch_size, self.hidden_dim)
        return z, z.clone()

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One position: ids ``(B,)`` or one-hots ``(B, V)`` -> logits ``(B, V)``, new state."""
        e = embed_tokens(self.embedding, x_t).unsqueeze(1)  # (B, 1, E)
        h, state = run_rnn(self.lstm, e, state)
        return self.out(h[:, 0]), state

    def forward(self, inputs: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for ids ``(B, T)`` or one-hots ``(B, T, V)``."""
        h, _ = run_rnn(self.lstm, embed_tokens(self.embedding, inputs))
        return self.out(h)

    def repeat_state(self, state: State, n: int) -> State:
        """Repeat each batch row ``n`` times consecutively (``repeat_interleave`` on batch)."""
        h, c = state
        return h.repeat_interleave(n, dim=1), c.repeat_interleave(n, dim=1)

    def forward_states(self, inputs: Tensor) -> tuple[Tensor, list[State]]:
        """Teacher-forced logits ``(B, T, V)`` and the state after each position.

        ``states[t]`` is the ``(h, c)`` after consuming ``inputs[:, : t + 1]`` (views into
        stacked tensors). The cell is unrolled by hand with ``nn.LSTM``'s weights (input
        projections for all positions in one matmul per layer), since ``nn.LSTM`` does not
        return the per-position cell states.
        """
        x = embed_tokens(self.embedding, inputs)  # (B, T, E)
        B, T = x.shape[:2]
        h0, c0 = self.init_state(B)
        hs_layers, cs_layers = [], []
        for layer in range(self.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
            bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            xw = torch.addmm(bias, x.reshape(B * T, -1), w_ih.t()).view(B, T, -1)
            h, c = h0[layer], c0[layer]
            hs, cs = [], []
            for xw_t in xw.unbind(1):  # not xw[:, t]: see RMCGenerator.forward_states
                gates = torch.addmm(xw_t, h, w_hh.t())
                i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                hs.append(h)
                cs.append(c)
            x = torch.stack(hs, 1)  # (B, T, H): the next layer's input
            hs_layers.append(x)
            cs_layers.append(torch.stack(cs, 1))
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = nn.functional.dropout(x, self.dropout, self.training)
        logits = self.out(hs_layers[-1])
        h_all = torch.stack(hs_layers, 0)  # (L, B, T, H)
        c_all = torch.stack(cs_layers, 0)
        states = [(h_all[:, :, t], c_all[:, :, t]) for t in range(T)]
        return logits, states

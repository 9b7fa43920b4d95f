import pytest
import torch

from textgan import sampling as S
from textgan.oracle import OracleLSTM


def test_random_oracle_is_seeded_and_shaped():
    a = OracleLSTM.random(seed=3, vocab_size=50, hidden_dim=8, seq_len=6)
    b = OracleLSTM.random(seed=3, vocab_size=50, hidden_dim=8, seq_len=6)
    c = OracleLSTM.random(seed=4, vocab_size=50, hidden_dim=8, seq_len=6)
    assert torch.equal(a.W_out, b.W_out) and not torch.equal(a.W_out, c.W_out)
    x = a.sample(7, rng=torch.Generator().manual_seed(0))
    y = b.sample(7, rng=torch.Generator().manual_seed(0))
    assert x.shape == (7, 6) and x.dtype == torch.long and torch.equal(x, y)
    # SeqGAN's N(0, 1) initialisation
    assert abs(a.W_out.std().item() - 1.0) < 0.1


def test_nll_matches_manual_recurrence():
    o = OracleLSTM.random(seed=1, vocab_size=11, hidden_dim=5, seq_len=4)
    tokens = torch.tensor([[3, 0, 7, 10], [1, 1, 1, 1]])
    p = {k: getattr(o, k) for k in ("embedding", "Wi", "Ui", "bi", "Wf", "Uf", "bf", "Wo_gate",
                                     "Uo_gate", "bo_gate", "Wc", "Uc", "bc", "W_out", "b_out")}
    expected = []
    for row in tokens.tolist():
        h = c = torch.zeros(5)
        x, total = 0, 0.0
        for t in row:
            e = p["embedding"][x]
            i = torch.sigmoid(e @ p["Wi"] + h @ p["Ui"] + p["bi"])
            f = torch.sigmoid(e @ p["Wf"] + h @ p["Uf"] + p["bf"])
            og = torch.sigmoid(e @ p["Wo_gate"] + h @ p["Uo_gate"] + p["bo_gate"])
            cand = torch.tanh(e @ p["Wc"] + h @ p["Uc"] + p["bc"])
            c = f * c + i * cand
            h = og * torch.tanh(c)
            total -= torch.log_softmax(h @ p["W_out"] + p["b_out"], -1)[t].item()
            x = t
        expected.append(total / len(row))
    assert torch.allclose(o.nll(tokens), torch.tensor(expected), atol=1e-5)


def test_step_protocol_matches_forward_and_accepts_one_hot():
    o = OracleLSTM.random(seed=2, vocab_size=9, hidden_dim=4, seq_len=5)
    inputs = torch.randint(0, 9, (3, 5))
    logits = o(inputs)
    state = o.init_state(3)
    for t in range(5):
        step_logits, state = o.step(inputs[:, t], state)
        assert torch.allclose(step_logits, logits[:, t], atol=1e-5)
    oh_logits, _ = o.step(torch.nn.functional.one_hot(inputs[:, 0], 9).float(), o.init_state(3))
    assert torch.allclose(oh_logits, logits[:, 0], atol=1e-5)


def test_nll_rejects_out_of_range_tokens():
    o = OracleLSTM.random(seed=0, vocab_size=5, hidden_dim=3, seq_len=2)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        o.nll(torch.tensor([[0, 5]]))


def test_from_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.params"):
        OracleLSTM.from_npz(tmp_path / "nope.npz")


def test_self_samples_score_lower_than_uniform():
    o = OracleLSTM.random(seed=0, vocab_size=200, hidden_dim=16, seq_len=10)
    own = o.nll(o.sample(500, rng=torch.Generator().manual_seed(0))).mean()
    uniform = o.nll(torch.randint(0, 200, (500, 10))).mean()
    assert own < uniform - 1.0


@pytest.mark.shared
def test_official_oracle_reference_values(shared_data):
    """10,000 oracle samples score ~5.75 (RelGAN: 5.750); uniform sequences ~11.4."""
    o = OracleLSTM.from_npz(shared_data / "oracle" / "seqgan_oracle_lstm.npz")
    assert (o.vocab_size, o.hidden_dim, o.seq_len) == (5000, 32, 20)
    own = o.nll(o.sample(10_000, rng=torch.Generator().manual_seed(0))).mean().item()
    uniform = o.nll(torch.randint(0, 5000, (10_000, 20),
                                  generator=torch.Generator().manual_seed(1))).mean().item()
    assert own == pytest.approx(5.75, abs=0.03)
    assert uniform == pytest.approx(11.4, abs=0.1)
    # it is the sampler core's generator protocol too
    out = S.sample_sequence(o, 4, 20, rng=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (4, 20)

import numpy as np
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


# ------------------------------------------------------------------------------------------
# RelGAN's own oracle: TensorFlow's seeded random_normal, repeated without TensorFlow


@pytest.mark.parametrize("counter, key, expected", [  # Random123's known-answer vectors
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox4x32_10_known_answers(counter, key, expected):
    from textgan.tf_random import philox4x32

    out = philox4x32([np.array([c], dtype=np.uint32) for c in counter], key)
    assert out.dtype == np.uint32 and [int(x) for x in out[:, 0]] == list(expected)


def test_relgan_code_oracle_equals_tensorflows_draws():
    """Values TensorFlow 2.21.0 gives for RelGAN's OracleLstm (``data/oracle/
    relgan_code_oracle.py``): within a few float32 units in the last place."""
    o = OracleLSTM.relgan_code()
    assert (o.vocab_size, o.embed_dim, o.hidden_dim, o.seq_len) == (5000, 32, 32, 20)
    tf = {  # from TensorFlow (graph seed 1234, the code's op seeds)
        "embedding": (o.embedding[0, :4], [-0.79246074, 0.17660606, -0.52380502, -0.47045174]),
        "W_out": (o.W_out[31, -4:], [-0.32402548, 0.24076274, 0.89253664, -0.70909822]),
        "b_out": (o.b_out[-4:], [-0.17795536, -0.10356821, 0.10457096, 1.14023888]),
        "bc": (o.bc[:4], [0.31101730, -0.25143015, -0.08366486, 0.96238959]),
    }
    for name, (got, want) in tf.items():
        assert torch.allclose(got, torch.tensor(want), rtol=0, atol=3e-7), name
    sums = {"embedding": 168.27122326, "W_out": 267.35475628, "b_out": 11.14874416}  # TF's
    for name, want in sums.items():
        assert getattr(o, name).double().sum().item() == pytest.approx(want, abs=1e-5), name
    assert torch.equal(o.Wi, o.Uc)  # the code draws both with op seed 111: the same values
    assert not torch.equal(o.Wi, o.Wf)
    # its own samples (seeded): a floor ~0.08 nats above SeqGAN's oracle (5.834 vs 5.755 at
    # 5,000 samples, recipes/README.md)
    own = o.nll(o.sample(300, rng=torch.Generator().manual_seed(0))).mean().item()
    assert own == pytest.approx(5.8688, abs=1e-3)


def test_tf_random_normal_is_standard_normal_and_seeded():
    from textgan.tf_random import op_seeds, random_normal

    x = random_normal((400, 500), *op_seeds(1, 2)).astype(np.float64)
    assert x.dtype == np.float64 and x.shape == (400, 500)
    n = x.size
    assert abs(x.mean()) < 4 / n**0.5 and abs(x.var() - 1) < 4 * (2 / n) ** 0.5
    assert abs((np.abs(x) < 1).mean() - 0.6826895) < 4 * (0.683 * 0.317 / n) ** 0.5
    assert np.array_equal(random_normal((7,), 1, 2), random_normal((9,), 1, 2)[:7])  # prefix
    assert not np.array_equal(random_normal((8,), 1, 2), random_normal((8,), 1, 3))
    assert op_seeds(1234, 123314154) == (1234, 123314154) and op_seeds(0, 0) == (0, 2**31 - 1)
    assert op_seeds(5, 2**31 + 4) == (5, 5)


def test_data_oracle_relgan_code_and_its_errors():
    from textgan.data import DataConfig, load_corpus

    c = load_corpus(DataConfig(name="oracle", oracle="relgan_code", num_train=8, num_test=8))
    assert torch.equal(c.oracle.embedding, OracleLSTM.relgan_code().embedding)
    assert c.train.shape == (8, 20) and c.vocab_size == 5000
    with pytest.raises(ValueError, match=r"`data.oracle` must be one of \['random', "
                                         r"'relgan_code'\], got 'relgan' \(did you mean"):
        DataConfig(name="oracle", oracle="relgan")
    with pytest.raises(ValueError, match=r"`data.params` \('o.npz'\) and "
                                         r"`data.oracle=relgan_code` both name an oracle"):
        DataConfig(name="oracle", oracle="relgan_code", params="o.npz")

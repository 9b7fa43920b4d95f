"""Tests of the sampler core.

Note on randomized statistical tests (after torch's test_distributions): every statistical test
here uses a fixed seed and a failure rate of about 1e-3 for a correct implementation. If one
fails after an RNG change, bump its seed once; a second failure means a real bug.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from textgan import sampling as S
from textgan.oracle import OracleLSTM

LOGITS = torch.tensor([1.0, -0.5, 0.3, 2.0, -2.0, 0.0])


def _chi2_pvalue(tokens, probs):
    counts = torch.bincount(tokens.flatten(), minlength=len(probs)).double()
    probs = probs.double() / probs.double().sum()
    expected = probs * counts.sum()
    return stats.chisquare(counts.numpy(), expected.numpy()).pvalue


def test_gumbel_noise_is_standard_gumbel():
    g = S.gumbel_noise((200_000,), rng=torch.Generator().manual_seed(0))
    assert g.dtype == torch.float32
    # Gumbel(0,1): mean = Euler-Mascheroni, variance = pi^2 / 6
    assert abs(g.mean().item() - 0.5772157) < 4 * math.sqrt(math.pi**2 / 6 / 200_000)
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03
    assert stats.kstest(g[:20000].numpy(), stats.gumbel_r.cdf).pvalue > 1e-3


def test_inverse_cdf_matches_softmax_chi_square_and_never_draws_zero_probability():
    logits = LOGITS.clone()
    logits[0] = -math.inf  # probability 0, first in the CDF: u = 0 must not pick it
    tokens = S.inverse_cdf(logits.expand(60_000, -1), rng=torch.Generator().manual_seed(1))
    assert tokens.dtype == torch.long and tokens.shape == (60_000,)
    assert (tokens != 0).all() and tokens.max() < len(LOGITS)
    probs = torch.softmax(logits, -1)[1:]  # the chi-square over the tokens 1..5
    assert _chi2_pvalue(tokens - 1, probs) > 1e-3
    # a wrong inversion (off by one token) fails the same test
    assert _chi2_pvalue(tokens % (len(LOGITS) - 1), probs) < 1e-6
    G = OracleLSTM.random(seed=2, vocab_size=4, hidden_dim=4, seq_len=6)
    out = S.sample_sequence(G, 3, 6, draw="inverse_cdf", tokens_only=True,
                            rng=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (3, 6)
    with pytest.raises(ValueError, match="`draw` must be 'gumbel' or 'inverse_cdf', got 'x'"):
        S.sample_sequence(G, 3, 6, draw="x")
    with pytest.raises(ValueError, match="needs method='multinomial'"):
        S.sample_sequence(G, 3, 6, method="gumbel_st", draw="inverse_cdf")


def test_gumbel_max_matches_softmax_chi_square():
    logits = LOGITS.expand(60_000, -1)
    tokens = S.gumbel_max(logits, rng=torch.Generator().manual_seed(1))
    assert tokens.dtype == torch.long and tokens.shape == (60_000,)
    assert _chi2_pvalue(tokens, LOGITS.softmax(-1)) > 1e-3


def test_gumbel_max_detects_wrong_distribution():
    # the same test rejects draws from a different distribution (so it can fail)
    tokens = S.gumbel_max(LOGITS.expand(60_000, -1) * 1.1, rng=torch.Generator().manual_seed(1))
    assert _chi2_pvalue(tokens, LOGITS.softmax(-1)) < 1e-6


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_tokens_match_softmax(hard):
    out = S.gumbel_softmax(LOGITS.expand(60_000, -1), 0.5, hard=hard,
                           rng=torch.Generator().manual_seed(2))
    assert _chi2_pvalue(out.tokens, LOGITS.softmax(-1)) > 1e-3
    assert torch.equal(out.tokens, out.one_hot.argmax(-1))


def test_gumbel_softmax_uses_same_noise_for_tokens_and_relaxation():
    rng = torch.Generator().manual_seed(3)
    logits = torch.randn(500, 7)
    out = S.gumbel_softmax(logits, 0.3, rng=rng)
    g = S.gumbel_noise(logits, torch.Generator().manual_seed(3))
    assert torch.allclose(out.one_hot, F.softmax((logits + g) / 0.3, -1), atol=1e-6)
    assert torch.equal(out.tokens, (logits + g).argmax(-1))


def test_straight_through_forward_one_hot_backward_soft():
    logits = torch.randn(50, 5, requires_grad=True)
    w = torch.randn(5)
    hard = S.gumbel_softmax(logits, 0.7, hard=True, rng=torch.Generator().manual_seed(4))
    soft = S.gumbel_softmax(logits, 0.7, hard=False, rng=torch.Generator().manual_seed(4))
    assert torch.equal(hard.one_hot.detach(), F.one_hot(hard.tokens, 5).float())
    assert set(hard.one_hot.detach().unique().tolist()) <= {0.0, 1.0}
    (g_hard,) = torch.autograd.grad((hard.one_hot * w).sum(), logits)
    (g_soft,) = torch.autograd.grad((soft.one_hot * w).sum(), logits)
    assert torch.allclose(g_hard, g_soft, atol=1e-7) and g_soft.abs().sum() > 0


def test_straight_through_function():
    soft = torch.tensor([[0.2, 0.5, 0.3]], requires_grad=True)
    st = S.straight_through(soft)
    assert torch.equal(st.detach(), torch.tensor([[0.0, 1.0, 0.0]]))
    (st * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(soft.grad, torch.tensor([[1.0, 2.0, 3.0]]))


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_tau_must_be_positive(tau):
    with pytest.raises(ValueError, match="`tau` must be > 0"):
        S.gumbel_softmax(LOGITS, tau)


def test_same_seed_same_draws():
    logits = torch.randn(100, 9)
    a = S.gumbel_softmax(logits, 1.0, rng=torch.Generator().manual_seed(5))
    b = S.gumbel_softmax(logits, 1.0, rng=torch.Generator().manual_seed(5))
    c = S.gumbel_softmax(logits, 1.0, rng=torch.Generator().manual_seed(6))
    assert torch.equal(a.one_hot, b.one_hot) and torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.one_hot, c.one_hot)


def test_categorical_log_prob():
    logits = torch.randn(4, 3, 5)
    tokens = torch.randint(0, 5, (4, 3))
    expected = torch.distributions.Categorical(logits=logits).log_prob(tokens)
    assert torch.allclose(S.categorical_log_prob(logits, tokens), expected, atol=1e-6)
    assert S.categorical_log_prob(logits.bfloat16(), tokens).dtype == torch.float32
    with pytest.raises(ValueError, match="tokens"):
        S.categorical_log_prob(logits, tokens[:, :2])


# --- score function ------------------------------------------------------------------------

F_VALUES = torch.tensor([1.0, 3.0, -2.0, 0.5])
THETA = torch.tensor([0.2, -0.4, 0.9, 0.0])


def _exact_grad():
    theta = THETA.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((theta.softmax(-1) * F_VALUES).sum(), theta)
    return grad


def _sf_per_sample(n, seed, baseline=None, offset=0.0):
    theta = THETA.expand(n, -1)
    z = S.gumbel_max(theta, rng=torch.Generator().manual_seed(seed))
    reward = F_VALUES[z] + offset  # a constant offset leaves the exact gradient unchanged
    b = 0.0 if baseline is None else baseline(reward)
    # per-sample gradient of (r - b) * log p(z): (r - b) (e_z - p)
    return (reward - b)[:, None] * (F.one_hot(z, 4).float() - THETA.softmax(-1))


def test_score_function_loss_gradient_is_reinforce():
    theta = THETA.expand(1000, -1).clone().requires_grad_(True)
    z = S.gumbel_max(theta.detach(), rng=torch.Generator().manual_seed(7))
    loss = S.score_function_loss(S.categorical_log_prob(theta, z), F_VALUES[z])
    (grad,) = torch.autograd.grad(loss, theta)
    per_sample = F_VALUES[z][:, None] * (F.one_hot(z, 4).float() - THETA.softmax(-1))
    # the surrogate's gradient, summed over samples, is minus the mean REINFORCE estimate
    assert torch.allclose(grad.sum(0), -per_sample.mean(0), atol=1e-5)


def test_score_function_unbiased_and_baseline_reduces_variance():
    n = 200_000
    exact = _exact_grad()
    plain = _sf_per_sample(n, 8, offset=10.0)
    mean, stderr = plain.mean(0), plain.std(0) / math.sqrt(n)
    assert ((mean - exact).abs() < 4 * stderr).all()
    # leave-one-out baseline in groups of 4: still unbiased, lower variance
    loo = _sf_per_sample(n, 9, baseline=lambda r: S.leave_one_out(r, 4), offset=10.0)
    mean_b, stderr_b = loo.mean(0), loo.std(0) / math.sqrt(n)
    assert ((mean_b - exact).abs() < 4 * stderr_b).all()
    assert loo.var(0).sum() < 0.2 * plain.var(0).sum()
    # a biased "estimator" fails the same check (the test can fail)
    biased = plain + 0.05
    assert not ((biased.mean(0) - exact).abs() < 4 * stderr).all()


def test_score_function_loss_baseline_mask_and_shapes():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    reward = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = S.score_function_loss(lp, reward, baseline=1.0, mask=mask)
    expected = -((0 * -1.0) + (1 * -2.0) + (3 * -0.5)) / 3
    assert loss.item() == pytest.approx(expected)
    # per-sequence reward broadcasts over time
    seq = S.score_function_loss(lp, torch.tensor([1.0, 2.0]))
    assert seq.item() == pytest.approx(-(1 * -6.0 + 2 * -1.5) / 6)
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        S.score_function_loss(lp, reward[:, :2])
    with pytest.raises(ValueError, match="baseline"):
        S.score_function_loss(lp, reward, baseline=torch.zeros(3))
    # the baseline is detached: no gradient reaches it
    b = torch.ones(2, 3, requires_grad=True)
    S.score_function_loss(lp, reward, baseline=b).backward()
    assert b.grad is None


def test_leave_one_out_values():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    assert torch.allclose(S.leave_one_out(r, 3), torch.tensor([2.5, 2.0, 1.5, 25.0, 20.0, 15.0]))
    with pytest.raises(ValueError, match="group_size"):
        S.leave_one_out(r, 4)


def test_ema_baseline_state_and_values():
    ema = S.EMABaseline(beta=0.5)
    assert ema(torch.tensor([2.0, 4.0])).tolist() == [0.0, 0.0]  # before any update
    assert ema(torch.tensor([10.0])).item() == 3.0  # initialised to the first mean
    assert ema.value.item() == pytest.approx(0.5 * 3 + 0.5 * 10)
    fresh = S.EMABaseline(beta=0.5)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.value.item() == ema.value.item() and bool(fresh.initialized)


# --- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["no", "lin", "exp", "log", "sigmoid", "quad", "sqrt"])
def test_temperature_schedules_pinned(kind):
    b, n = 100.0, 1000
    formulas = {
        "no": lambda i: b,
        "lin": lambda i: 1 + i / (n - 1) * (b - 1),
        "exp": lambda i: b ** (i / n),
        "log": lambda i: 1 + (b - 1) / math.log(n) * math.log(i + 1),
        "sigmoid": lambda i: (b - 1) / (1 + math.exp((n / 2 - i) * 20 / n)) + 1,
        "quad": lambda i: (b - 1) / (n - 1) ** 2 * i**2 + 1,
        "sqrt": lambda i: (b - 1) / math.sqrt(n - 1) * math.sqrt(i) + 1,
    }
    tau = S.temperature_schedule(kind, beta_max=b, total_steps=n)
    for step in (0, n // 2, n):
        assert tau(step) == pytest.approx(1 / formulas[kind](step), rel=1e-12)
    if kind not in ("no", "sigmoid"):
        assert tau(0) == pytest.approx(1.0)


def test_exp_schedule_pinned_numbers():
    tau = S.temperature_schedule("exp", beta_max=100.0, total_steps=1000)
    assert tau(500) == pytest.approx(0.1)
    assert tau(1000) == pytest.approx(0.01)


def test_anneal_schedule_and_errors():
    tau = S.temperature_schedule("anneal", rate=1e-3, tau_min=0.5)
    assert tau(0) == 1.0 and tau(100) == pytest.approx(math.exp(-0.1)) and tau(10_000) == 0.5
    with pytest.raises(ValueError, match="beta_max"):
        S.temperature_schedule("exp", beta_max=0.5, total_steps=10)
    with pytest.raises(ValueError, match="did you mean 'exp'"):
        S.temperature_schedule("expo", beta_max=10, total_steps=10)


# --- sample_sequence -----------------------------------------------------------------------


@pytest.fixture
def tiny_oracle():
    return OracleLSTM.random(seed=3, vocab_size=3, hidden_dim=4, seq_len=2)


def test_sample_sequence_distribution_matches_exact(tiny_oracle):
    """Multinomial sequences follow the model's joint distribution (chi-square over V^T)."""
    out = S.sample_sequence(tiny_oracle, 30_000, 2, rng=torch.Generator().manual_seed(10))
    ids = out.tokens[:, 0] * 3 + out.tokens[:, 1]
    all_seqs = torch.tensor([[a, b] for a in range(3) for b in range(3)])
    probs = (-tiny_oracle.nll(all_seqs) * 2).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert _chi2_pvalue(ids, probs / probs.sum()) > 1e-3


@pytest.mark.parametrize("method", S.METHODS)
def test_sample_sequence_outputs(method):
    G = OracleLSTM.random(seed=0, vocab_size=7, hidden_dim=5, seq_len=4)
    G.W_out.requires_grad_(True)
    out = S.sample_sequence(G, 8, 4, method=method, tau=0.5, rng=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (8, 4) and out.one_hot.shape == (8, 4, 7)
    assert out.log_prob.shape == (8, 4) and out.mask.all()
    assert torch.equal(out.tokens, out.one_hot.argmax(-1))
    assert out.one_hot.dtype == torch.float32 and out.log_prob.dtype == torch.float32
    # log_prob equals the teacher-forced log-probability (tempered for multinomial)
    inputs = torch.cat([torch.zeros(8, 1, dtype=torch.long), out.tokens[:, :-1]], 1)
    logits = G(inputs) / (0.5 if method == "multinomial" else 1.0)
    assert torch.allclose(out.log_prob, S.categorical_log_prob(logits, out.tokens), atol=1e-5)
    assert out.one_hot.requires_grad == (method != "multinomial")
    assert out.log_prob.requires_grad


def test_sample_sequence_prefix_and_state(tiny_oracle):
    G = OracleLSTM.random(seed=1, vocab_size=6, hidden_dim=4, seq_len=5)
    prefix = torch.tensor([[1, 2], [3, 4]])
    a = S.sample_sequence(G, 2, 5, prefix=prefix, rng=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens[:, :2], prefix)
    assert not a.mask[:, :2].any() and a.mask[:, 2:].all()
    assert (a.log_prob[:, :2] == 0).all()
    # the same continuation from an explicitly computed state
    state = G.init_state(2)
    _, state = G.step(torch.zeros(2, dtype=torch.long), state)
    _, state = G.step(prefix[:, 0], state)
    b = S.sample_sequence(G, 2, 5, prefix=prefix, state=state,
                          rng=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens)
    with pytest.raises(ValueError, match="prefix"):
        S.sample_sequence(G, 2, 2, prefix=prefix)


def test_sample_sequence_tokens_only_draws_the_same_tokens():
    G = OracleLSTM.random(seed=2, vocab_size=4, hidden_dim=4, seq_len=6)
    prefix = torch.tensor([[1, 2], [3, 1], [0, 0]])
    for kw in ({}, {"prefix": prefix}, {"eos": 1, "pad": 0}):
        full = S.sample_sequence(G, 3, 6, rng=torch.Generator().manual_seed(0), **kw)
        lean = S.sample_sequence(G, 3, 6, rng=torch.Generator().manual_seed(0), tokens_only=True,
                                 **kw)
        assert torch.equal(lean.tokens, full.tokens) and torch.equal(lean.mask, full.mask)
        assert lean.one_hot is None and lean.log_prob is None
    with pytest.raises(ValueError, match="`tokens_only=True` needs method='multinomial'"):
        S.sample_sequence(G, 3, 6, method="gumbel_softmax", tokens_only=True)


def test_sample_sequence_eos_masks_and_pads():
    G = OracleLSTM.random(seed=2, vocab_size=4, hidden_dim=4, seq_len=6)
    out = S.sample_sequence(G, 500, 6, eos=1, pad=0, rng=torch.Generator().manual_seed(0))
    for row, mask in zip(out.tokens.tolist(), out.mask.tolist(), strict=True):
        if 1 in row:
            k = row.index(1)
            assert all(t == 0 for t in row[k + 1:])
            assert mask == [True] * (k + 1) + [False] * (5 - k)
        else:
            assert all(mask)
    assert (out.log_prob[~out.mask] == 0).all()


def test_feed_soft_gives_pathwise_gradient_through_inputs():
    G = OracleLSTM.random(seed=4, vocab_size=5, hidden_dim=4, seq_len=3)
    G.W_out.requires_grad_(True)
    seen = []
    step = G.step
    G.step = lambda x, state: (seen.append(x), step(x, state))[1]
    for feed in ("hard", "soft"):
        seen.clear()
        out = S.sample_sequence(G, 4, 3, method="gumbel_softmax", feed=feed,
                                rng=torch.Generator().manual_seed(0))
        if feed == "hard":  # RelGAN: the next input is the sampled token
            assert seen[1].dtype == torch.long and torch.equal(seen[1], out.tokens[:, 0])
        else:  # the relaxed one-hot itself, with its gradient
            assert torch.equal(seen[1], out.one_hot[:, 0]) and seen[1].requires_grad
            (g,) = torch.autograd.grad(out.one_hot[:, -1].pow(2).sum(), seen[1])
            assert g.abs().sum() > 0


def test_sampling_math_float32_under_autocast():
    logits = torch.randn(4, 10).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = S.gumbel_softmax(logits, 0.5)
        lp = S.categorical_log_prob(logits, out.tokens)
    assert out.one_hot.dtype == torch.float32 and lp.dtype == torch.float32


def test_unknown_method_and_feed():
    G = OracleLSTM.random(seed=0, vocab_size=4, hidden_dim=3, seq_len=2)
    with pytest.raises(ValueError, match="gumbel_softmax"):
        S.sample_sequence(G, 2, 2, method="gumbel")
    with pytest.raises(ValueError, match="feed"):
        S.sample_sequence(G, 2, 2, feed="medium")

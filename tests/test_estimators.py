"""Gradient estimators against exact gradients (seeded Monte-Carlo tests).

An estimator is "unbiased" here when every coordinate of its mean over many seeded draws lies
within a few standard errors of the exact gradient; the draw counts are chosen so that the
biased estimators (GS, ST-GS) fail the very same check by a wide margin.
"""

import math

import numpy as np
import pytest
import torch

from textgan import estimators as E
from textgan.compare import SequenceProblem, TinyGRUGenerator, ToyProblem, toy_problems
from textgan.sampling import sample_sequence

# Tiny tensors: extra threads only add contention (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _toys():
    return {p.name: p for p in toy_problems()}


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _z(G: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|mean - exact| / stderr per coordinate (coordinates with zero spread dropped)."""
    G = G.double()
    se = G.std(0) / math.sqrt(G.shape[0])
    keep = se > 1e-12
    assert keep.any()
    return ((G.mean(0) - exact.double()).abs() / se)[keep]


def _assert_unbiased(G, exact, bound=4.0):
    z = _z(G, exact)
    assert float(z.max()) < bound, f"max z = {float(z.max()):.2f}"


# --------------------------------------------------------------------------------------------
# exact gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.499, 0.45])
@pytest.mark.parametrize("theta", [(0.0, 0.0), (0.25, -0.75), (-1.25, 0.5)])
def test_binary_exact_gradient_closed_form(t, theta):
    # E = (1 - p) t^2 + p (1 - t)^2 with p = softmax(θ)_1 = sigmoid(θ1 - θ0):
    # dE/dp = 1 - 2t, dp/dθ1 = p(1 - p) = -dp/dθ0.
    problem = ToyProblem("b", torch.tensor(theta), lambda y: (y[..., 1] - t) ** 2)
    p = 1 / (1 + math.exp(-(theta[1] - theta[0])))
    d = (1 - 2 * t) * p * (1 - p)
    assert torch.allclose(problem.exact_grad(), torch.tensor([-d, d], dtype=torch.float64),
                          rtol=1e-10, atol=1e-14)


def test_sequence_exact_objective_is_a_distribution():
    problem = SequenceProblem()
    theta = problem.generator.theta.detach().double()
    logp = problem.log_prob(theta.unsqueeze(0), problem.all_sequences())
    assert logp.shape == (4**4,)
    assert abs(float(logp.exp().sum()) - 1) < 1e-10
    g = problem.exact_grad()
    assert g.shape == problem.generator.theta.shape and float(g.norm()) > 1e-3


def test_tiny_generator_works_with_sample_sequence():
    gen = TinyGRUGenerator(vocab_size=4)
    for method in ("multinomial", "gumbel_softmax", "gumbel_st"):
        s = sample_sequence(gen, 6, 4, method=method, tau=0.5, rng=_rng(), feed="soft")
        assert s.tokens.shape == (6, 4) and s.one_hot.shape == (6, 4, 4)
        assert int(s.tokens.max()) < 4
    # with D parameter blocks, block d's rows only reach theta[d]
    theta = gen.theta.detach().expand(3, -1).clone().requires_grad_(True)
    s = sample_sequence(gen.with_params(theta), 6, 4, rng=_rng())
    (g,) = torch.autograd.grad(s.log_prob[:2].sum(), theta)
    assert g[0].abs().sum() > 0 and g[1:].abs().sum() == 0


# --------------------------------------------------------------------------------------------
# unbiasedness (and detectable bias)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["toy_binary_t0.45", "toy_cat5"])
@pytest.mark.parametrize("estimator,n", [("sf", 1), ("sf_rloo", 2), ("sf_ema", 2)])
def test_score_function_unbiased_on_toys(name, estimator, n):
    problem = _toys()[name]
    G = problem.estimate(estimator, 1.0, n, _rng(1), draws=100_000)
    _assert_unbiased(G, problem.exact_grad())


def test_gumbel_softmax_is_detectably_biased_on_binary_toy():
    problem = _toys()["toy_binary_t0.45"]
    exact = problem.exact_grad()
    G = problem.estimate("gs", 1.0, 1, _rng(1), draws=100_000)
    assert float(_z(G, exact).min()) > 10  # fails the unbiasedness check above by far
    # theory at θ = 0, τ = 1: y = sigmoid(logistic) is uniform, E[2(y - t) y (1 - y)] =
    # (1 - 2t) / 6 against the exact (1 - 2t) / 4
    assert abs(float(G[:, 1].mean()) - (1 - 2 * 0.45) / 6) < 4 * float(G[:, 1].std()) / 316


@pytest.mark.parametrize("name", ["toy_binary_t0.45", "toy_cat5", "toy_cat5_sq"])
@pytest.mark.parametrize("crn", [True, False])
def test_rebar_unbiased(name, crn):
    problem = _toys()[name]
    exact = problem.exact_grad()
    leaf = problem.theta.detach().expand(50_000, -1).clone().requires_grad_(True)
    (G,) = torch.autograd.grad(E.rebar(leaf, problem.f, tau=0.5, rng=_rng(2), crn=crn), leaf)
    _assert_unbiased(G, exact)
    # the same check catches ST-GS at the same tau on the non-symmetric problems
    if name != "toy_binary_t0.45":
        B = problem.estimate("st_gs", 0.5, 1, _rng(2), draws=50_000)
        assert float(_z(B, exact).max()) > 6


def test_relax_unbiased_and_lower_variance_than_rebar():
    problem = _toys()["toy_binary_t0.45"]
    exact = problem.exact_grad()
    G = problem.estimate("relax", 0.5, 1, _rng(3), draws=20_000)  # fits its control first
    _assert_unbiased(G, exact)
    R = problem.estimate("rebar", 0.5, 1, _rng(3), draws=20_000)
    assert float(G.var(0).sum()) < 0.5 * float(R.var(0).sum())


@pytest.mark.parametrize("estimator,n", [("sf", 4), ("sf_rloo", 4), ("sf_ema", 4)])
def test_score_function_unbiased_on_sequences(estimator, n):
    problem = SequenceProblem()
    exact = problem.exact_grad()
    G = problem.estimate(estimator, 1.0, n, _rng(4), draws=4000)
    z = _z(G, exact)
    assert float(z.max()) < 5.0  # ~500 coordinates: a 5-sigma bound
    assert float((z**2).mean()) < 1.3  # ~1 when unbiased


def test_relaxed_estimators_are_biased_on_sequences():
    problem = SequenceProblem()
    exact = problem.exact_grad()
    for estimator in ("gs", "st_gs", "st", "gumbel_rao"):
        G = problem.estimate(estimator, 1.0, 4, _rng(5), draws=4000)
        assert float((_z(G, exact) ** 2).mean()) > 3.0, estimator


# --------------------------------------------------------------------------------------------
# variance and temperature
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["toy_binary_t0.45", "toy_cat5", "toy_cat5_sq"])
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_gumbel_rao_has_lower_variance_than_st_gs(name, tau):
    problem = _toys()[name]
    gr = problem.estimate("gumbel_rao", tau, 1, _rng(6), draws=20_000, k=10)
    st = problem.estimate("st_gs", tau, 1, _rng(6), draws=20_000)
    assert float(gr.var(0).sum()) < 0.9 * float(st.var(0).sum())
    # same mean: Gumbel-Rao Rao-Blackwellises ST-GS, it does not change what it estimates
    diff = gr.mean(0) - st.mean(0)
    se = ((gr.var(0) + st.var(0)) / 20_000).sqrt()
    assert float((diff.abs() / se).max()) < 4.5


def test_gumbel_rao_with_one_inner_sample_is_st_gs_in_distribution():
    problem = _toys()["toy_cat5_sq"]
    gr = problem.estimate("gumbel_rao", 0.5, 1, _rng(7), draws=40_000, k=1)
    st = problem.estimate("st_gs", 0.5, 1, _rng(8), draws=40_000)
    ratio = float(gr.var(0).sum() / st.var(0).sum())
    assert 0.9 < ratio < 1.1


def _relaxed_binary_grad(t: float, tau: float) -> float:
    """d/dθ1 E[(sigmoid(L / tau) - t)^2] at θ = 0, L ~ Logistic: numerical quadrature."""
    L = np.linspace(-60, 60, 600_001)
    y = 1 / (1 + np.exp(-L / tau))
    pdf = np.exp(-np.abs(L)) / (1 + np.exp(-np.abs(L))) ** 2
    return float(np.sum(2 * (y - t) * y * (1 - y) / tau * pdf) * (L[1] - L[0]))


def test_gumbel_softmax_bias_shrinks_with_tau_on_binary_toy():
    problem = _toys()["toy_binary_t0.45"]
    exact = problem.exact_grad()
    biases = []
    for tau in (1.0, 0.5, 0.25):
        G = problem.estimate("gs", tau, 1, _rng(9), draws=200_000)
        se = float(G[:, 1].std()) / math.sqrt(G.shape[0])
        assert abs(float(G[:, 1].mean()) - _relaxed_binary_grad(0.45, tau)) < 4 * se
        biases.append(float((G.mean(0) - exact).norm()))
    assert biases[0] > biases[1] > biases[2]
    assert biases[0] > 4 * biases[2]


# --------------------------------------------------------------------------------------------
# building blocks and contract
# --------------------------------------------------------------------------------------------


def test_conditional_gumbel_matches_unconditional_marginal():
    theta = torch.tensor([0.5, -1.0, 0.0, 1.5])
    n = 200_000
    tokens = torch.multinomial(theta.softmax(-1), n, replacement=True, generator=_rng(10))
    z = E.conditional_gumbel(theta.expand(n, 4), tokens, rng=_rng(11))
    assert torch.equal(z.argmax(-1), tokens)
    # marginally z = θ + Gumbel(0, 1): mean θ + Euler-gamma, variance pi^2 / 6
    assert torch.allclose(z.mean(0), theta + 0.5772157, atol=0.02)
    assert torch.allclose(z.var(0), torch.full((4,), math.pi**2 / 6), atol=0.05)


def test_conditional_gumbel_is_differentiable_and_k_shaped():
    theta = torch.randn(3, 5, requires_grad=True)
    tokens = torch.tensor([0, 4, 2])
    z = E.conditional_gumbel(theta, tokens, rng=_rng(), k=7)
    assert z.shape == (7, 3, 5)
    (g,) = torch.autograd.grad(z.sum(), theta)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("name", list(E.ESTIMATORS))
def test_rows_are_independent_estimates(name):
    f = toy_problems()[3].f
    theta = torch.randn(3, 5, generator=_rng(14))
    grads = []
    for other in (0.0, 2.0):  # change rows 1 and 2 only
        rows = theta.clone()
        rows[1:, 0] += other
        leaf = rows.requires_grad_(True)
        s = E.ESTIMATORS[name](leaf, f, n_samples=2, tau=0.5, rng=_rng(12))
        assert s.dim() == 0
        (g,) = torch.autograd.grad(s, leaf)
        assert g.shape == (3, 5) and torch.isfinite(g).all()
        grads.append(g)
    if name != "sf_ema":  # the EMA baseline pools rows by design (as over a training batch)
        assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert not torch.allclose(grads[0][1:], grads[1][1:])


@pytest.mark.parametrize("name", list(E.ESTIMATORS))
def test_bad_tau_and_samples_raise(name):
    leaf = torch.zeros(2, requires_grad=True)
    f = toy_problems()[1].f
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            E.ESTIMATORS[name](leaf, f, n_samples=2, tau=tau)
    with pytest.raises(ValueError, match="n_samples"):
        E.ESTIMATORS[name](leaf, f, n_samples=0, tau=1.0)


def test_rloo_needs_two_samples_and_unknown_names_suggest():
    with pytest.raises(ValueError, match="n_samples"):
        E.sf_rloo(torch.zeros(3, requires_grad=True), lambda y: y[..., 0], n_samples=1)
    with pytest.raises(ValueError, match="did you mean 'gumbel_rao'"):
        E.get_estimator("gumbel_rau")


def test_surrogate_value_is_the_sample_mean_of_f():
    theta = torch.zeros(4, 3, requires_grad=True)
    v = torch.tensor([1.0, 2.0, 3.0])
    s = E.sf(theta, lambda y: y @ v, n_samples=1000, rng=_rng(13))
    assert abs(float(s.detach()) / 4 - 2.0) < 0.1  # 4 rows, E[f] = 2 under the uniform distribution

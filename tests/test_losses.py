"""GAN losses at hand-computed values, RSGAN symmetry, the WGAN-GP penalty in closed form, MLE."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textgan import losses
from textgan.losses import GAN_LOSSES, d_loss, g_loss, gan_losses, gradient_penalty, mle_loss

REAL, FAKE = [2.0, -1.0], [0.5, 1.0]


def _sp(x):  # softplus: BCE(s, 1) = sp(-s), BCE(s, 0) = sp(s)
    return math.log1p(math.exp(x))


def _mean(xs):
    return sum(xs) / len(xs)


EXPECTED = {  # kind: (d_loss, g_loss) for REAL, FAKE
    "standard": (_mean([_sp(-2.0), _sp(1.0)]) + _mean([_sp(0.5), _sp(1.0)]),
                 _mean([_sp(-0.5), _sp(-1.0)])),
    "rsgan": (_mean([_sp(-1.5), _sp(2.0)]),  # real - fake = [1.5, -2]
              _mean([_sp(1.5), _sp(-2.0)])),  # fake - real = [-1.5, 2]
    "hinge": (_mean([0.0, 2.0]) + _mean([1.5, 2.0]), -0.75),
    "lsgan": (_mean([1.0, 4.0]) + _mean([0.25, 1.0]), _mean([0.25, 0.0])),
    "wgan_gp": (0.75 - 0.5, -0.75),
}


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_losses_at_hand_computed_values(kind):
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    d_exp, g_exp = EXPECTED[kind]
    assert d_loss(kind, real, fake).item() == pytest.approx(d_exp, rel=1e-6, abs=1e-7)
    assert g_loss(kind, real, fake).item() == pytest.approx(g_exp, rel=1e-6, abs=1e-7)
    both = gan_losses(kind, real, fake)
    assert isinstance(both, losses.GANLoss)
    assert both.d_loss.item() == pytest.approx(d_exp, rel=1e-6, abs=1e-7)
    assert both.g_loss.item() == pytest.approx(g_exp, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_any_shape_is_averaged_and_gradients_flow(kind):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(4, 3, generator=g)
    fake = torch.randn(4, 3, generator=g).requires_grad_(True)
    out = gan_losses(kind, real, fake)
    assert out.d_loss.dim() == 0 and out.g_loss.dim() == 0
    flat = gan_losses(kind, real.flatten(), fake.flatten())
    assert torch.allclose(out.d_loss, flat.d_loss) and torch.allclose(out.g_loss, flat.g_loss)
    (grad,) = torch.autograd.grad(out.g_loss, fake)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_rsgan_symmetry():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert torch.allclose(g_loss("rsgan", real, fake), d_loss("rsgan", fake, real))
    assert torch.allclose(d_loss("rsgan", real + 3.0, fake + 3.0), d_loss("rsgan", real, fake))


def test_standard_generator_loss_is_non_saturating():
    fake = torch.tensor([-20.0], requires_grad=True)  # D is sure it is fake
    (grad,) = torch.autograd.grad(g_loss("standard", torch.zeros(1), fake), fake)
    assert grad.item() == pytest.approx(-1.0, rel=1e-6)  # d/ds softplus(-s) = -sigmoid(-s)


def test_unknown_kind_and_shape_mismatch():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=r"unknown GAN loss 'rsgna'.*did you mean 'rsgan'"):
        d_loss("rsgna", x, x)
    with pytest.raises(ValueError, match="hinge"):
        gan_losses("wasserstein", x, x)
    with pytest.raises(ValueError, match="same shape"):
        g_loss("rsgan", torch.zeros(2), torch.zeros(3))


# ------------------------------------------------------------------------------------------
# gradient penalty


class _Linear(nn.Module):
    """D(x) = sum_t x[:, t] @ W: (B, T, V) -> (B, R); its input gradient is sum_r W[:, r] at
    every position, so ||grad|| = sqrt(T) * ||W.sum(1)|| whatever the interpolation."""

    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(W)

    def forward(self, x):
        return (x @ self.W).sum(1)


def _one_hots(seed, Bn=5, T=4, V=6):
    g = torch.Generator().manual_seed(seed)
    real = F.one_hot(torch.randint(0, V, (Bn, T), generator=g), V).float()
    fake = torch.softmax(torch.randn(Bn, T, V, generator=g), -1)
    return real, fake


@pytest.mark.parametrize("R", [1, 3])
def test_gradient_penalty_closed_form_for_linear_d(R):
    T, V = 4, 6
    W = torch.randn(V, R, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.3
    D = _Linear(W.clone())
    real, fake = (t.double() for t in _one_hots(3, T=T, V=V))
    w_norm = math.sqrt(sum(float(W[v].sum()) ** 2 for v in range(V)))
    expected = 10.0 * (math.sqrt(T) * w_norm - 1.0) ** 2
    gp = gradient_penalty(D, real, fake, rng=torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx(expected, rel=1e-9)
    assert gradient_penalty(D, real, fake, weight=2.5).item() == pytest.approx(expected / 4,
                                                                              rel=1e-9)
    # create_graph: the penalty trains D. For R=1, d/dW 10 (sqrt(T)|W| - 1)^2 =
    # 20 (sqrt(T)|W| - 1) sqrt(T) W / |W|
    gp.backward()
    if R == 1:
        w = W[:, 0]
        grad = 20.0 * (math.sqrt(T) * w_norm - 1.0) * math.sqrt(T) * w / w_norm
        assert torch.allclose(D.W.grad[:, 0], grad, rtol=1e-9)


def test_gradient_penalty_interpolates_with_per_sample_eps():
    """D(x) = 0.5 ||x||^2 has gradient x: the penalty sees the interpolate itself."""
    real, fake = (t.double() for t in _one_hots(4))
    Bn = real.shape[0]
    gp = gradient_penalty(lambda x: 0.5 * x.pow(2).sum((1, 2)), real, fake,
                          rng=torch.Generator().manual_seed(7), weight=1.0)
    eps = torch.rand(Bn, generator=torch.Generator().manual_seed(7)).double()
    total = 0.0
    for i in range(Bn):
        x = eps[i] * real[i] + (1 - eps[i]) * fake[i]
        total += (math.sqrt(float(x.pow(2).sum())) - 1.0) ** 2
    assert gp.item() == pytest.approx(total / Bn, rel=1e-9)
    again = gradient_penalty(lambda x: 0.5 * x.pow(2).sum((1, 2)), real, fake,
                             rng=torch.Generator().manual_seed(7), weight=1.0)
    assert gp.item() == again.item()


def test_gradient_penalty_through_relgan_discriminator():
    from textgan.models.discriminators import RelGANDiscriminator

    D = RelGANDiscriminator(6, embed_dim=8, num_rep=4, filter_sizes=(2, 3), num_filters=(4, 4))
    real, fake = _one_hots(5)
    gp = gradient_penalty(D, real, fake, rng=torch.Generator().manual_seed(0))
    assert gp.dim() == 0 and torch.isfinite(gp)
    gp.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    with pytest.raises(ValueError, match="float one-hots"):
        gradient_penalty(D, real.long(), fake.long())


# ------------------------------------------------------------------------------------------
# MLE


def test_mle_loss_hand_computed_and_masked():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
                           [[2.0, 0.0, -1.0], [1.0, 1.0, 5.0]]])
    targets = torch.tensor([[2, 1], [0, 0]])
    lse = [math.log(math.exp(1) + math.exp(2) + math.exp(3)), math.log(3.0),
           math.log(math.exp(2) + 1 + math.exp(-1)), math.log(2 * math.e + math.exp(5))]
    nll = [lse[0] - 3.0, lse[1] - 0.0, lse[2] - 2.0, lse[3] - 1.0]
    assert mle_loss(logits, targets).item() == pytest.approx(sum(nll) / 4, rel=1e-6)
    mask = torch.tensor([[True, False], [True, True]])
    assert mle_loss(logits, targets, mask).item() == pytest.approx(
        (nll[0] + nll[2] + nll[3]) / 3, rel=1e-6)
    assert mle_loss(logits, targets, mask.float()).item() == pytest.approx(
        (nll[0] + nll[2] + nll[3]) / 3, rel=1e-6)
    assert mle_loss(logits, targets, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0
    out = mle_loss(logits.bfloat16(), targets)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="targets"):
        mle_loss(logits, targets[:, :1])

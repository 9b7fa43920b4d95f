"""GAN losses from discriminator scores, the WGAN-GP gradient penalty, and the MLE loss.

Scores (logits) ``real = D(x_real)`` and ``fake = D(x_fake)`` may have any shape (``(B,)`` for
SeqGAN's discriminator, ``(B, num_rep)`` for RelGAN's) but must have the same one; every loss is
a mean over all entries. ``BCE(s, y)`` is binary cross entropy with logits:
``BCE(s, 1) = softplus(-s)``, ``BCE(s, 0) = softplus(s)``.

========== ============================================ =====================================
kind       discriminator loss                           generator loss
========== ============================================ =====================================
standard   ``BCE(real, 1) + BCE(fake, 0)``              ``BCE(fake, 1)`` (non-saturating)
rsgan      ``BCE(real - fake, 1)``                      ``BCE(fake - real, 1)``
hinge      ``relu(1 - real) + relu(1 + fake)``          ``-fake``
lsgan      ``(real - 1)^2 + fake^2``                    ``(fake - 1)^2``
wgan_gp    ``fake - real`` (+ :func:`gradient_penalty`)  ``-fake``
========== ============================================ =====================================

Notes:
    * ``rsgan`` (relativistic standard GAN, Jolicoeur-Martineau 2019) is RelGAN's default; it
      pairs ``real[i]`` with ``fake[i]``.
    * ``standard`` uses the non-saturating generator loss of Goodfellow et al. (2014); the
      official RelGAN code's ``standard`` uses the saturating ``-BCE(fake, 0)`` instead.
    * ``lsgan`` follows the official RelGAN code (a=0, b=c=1 without the 1/2 factors of Mao et
      al. 2017, i.e. twice their losses; a constant scale that Adam ignores).
    * ``wgan_gp`` (Gulrajani et al. 2017): the trainer adds :func:`gradient_penalty` to the
      discriminator loss; :func:`d_loss` does not include it.

For efficiency the trainer computes the discriminator loss with the fakes detached
(:func:`d_loss`) and the generator loss separately (:func:`g_loss`).
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GAN_LOSSES", "GANLoss", "gan_losses", "d_loss", "g_loss", "gradient_penalty",
           "mle_loss"]

GAN_LOSSES = ("standard", "rsgan", "hinge", "lsgan", "wgan_gp")


class GANLoss(NamedTuple):
    """Scalar discriminator and generator losses."""

    d_loss: Tensor
    g_loss: Tensor


def _check(kind: str, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    if kind not in GAN_LOSSES:
        close = difflib.get_close_matches(str(kind), GAN_LOSSES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown GAN loss '{kind}'; choose one of {list(GAN_LOSSES)}{hint}")
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake scores must have the same shape, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    return real.float(), fake.float()


def d_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    """Discriminator loss (scalar) of ``kind`` from scores ``real`` and ``fake`` (same shape).

    For ``wgan_gp`` the gradient penalty is not included (see :func:`gradient_penalty`).
    """
    real, fake = _check(kind, real, fake)
    if kind == "standard":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "rsgan":
        return F.softplus(-(real - fake)).mean()
    if kind == "hinge":
        return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()
    if kind == "lsgan":
        return (real - 1.0).pow(2).mean() + fake.pow(2).mean()
    return fake.mean() - real.mean()  # wgan_gp


def g_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    """Generator loss (scalar) of ``kind``; only ``rsgan`` uses ``real`` (pass it detached)."""
    real, fake = _check(kind, real, fake)
    if kind == "standard":
        return F.softplus(-fake).mean()
    if kind == "rsgan":
        return F.softplus(-(fake - real)).mean()
    if kind == "lsgan":
        return (fake - 1.0).pow(2).mean()
    return -fake.mean()  # hinge, wgan_gp


def gan_losses(kind: str, real: Tensor, fake: Tensor) -> GANLoss:
    """Both losses of ``kind``: ``GANLoss(d_loss, g_loss)`` (see the module table)."""
    return GANLoss(d_loss(kind, real, fake), g_loss(kind, real, fake))


def gradient_penalty(discriminator, real_one_hot: Tensor, fake_one_hot: Tensor,
                     rng: torch.Generator | None = None, weight: float = 10.0) -> Tensor:
    """WGAN-GP penalty ``weight * mean_i (||grad_x D(x_i)||_2 - 1)^2`` (Gulrajani et al. 2017).

    ``x_i = eps_i * real_i + (1 - eps_i) * fake_i`` interpolates one-hots ``(B, T, V)`` (any
    ``(B, ...)`` shape works) with ``eps = torch.rand(B, generator=rng)``, drawn on ``rng``'s
    device (or the inputs' when ``rng`` is ``None``). Both inputs are detached: the penalty trains
    the discriminator only. ``grad_x D(x_i)`` is the gradient of the sum of the discriminator's
    outputs for sample ``i`` (all ``num_rep`` logits for RelGAN, as in the official code) and its
    norm is taken over all of the sample's entries. The graph is kept (``create_graph=True``) so
    the penalty can be backpropagated into the discriminator's parameters.

    Returns:
        A scalar.
    """
    if real_one_hot.shape != fake_one_hot.shape:
        raise ValueError(
            f"real and fake one-hots must have the same shape, got {tuple(real_one_hot.shape)} "
            f"and {tuple(fake_one_hot.shape)}"
        )
    if not (real_one_hot.is_floating_point() and fake_one_hot.is_floating_point()):
        raise ValueError("gradient_penalty needs float one-hots; convert ids with F.one_hot")
    B = real_one_hot.shape[0]
    device = rng.device if rng is not None else real_one_hot.device
    eps = torch.rand(B, generator=rng, device=device)
    eps = eps.to(real_one_hot.device, real_one_hot.dtype).view(B, *[1] * (real_one_hot.dim() - 1))
    with torch.enable_grad():
        x = eps * real_one_hot.detach() + (1.0 - eps) * fake_one_hot.detach()
        x.requires_grad_(True)
        scores = discriminator(x)
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
        flat = grad.reshape(B, -1)
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        norms = torch.linalg.vector_norm(flat, dim=1)
        return weight * (norms - 1.0).pow(2).mean()


def mle_loss(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Token-level cross entropy (float32), averaged over the counted tokens.

    Args:
        logits: ``(B, T, V)``.
        targets: ``(B, T)`` token ids.
        mask: optional ``(B, T)`` bool or 0/1 tensor of the tokens to count (e.g. up to and
            including EOS); ``None`` counts all. If nothing is counted the loss is 0.

    Returns:
        A float32 scalar.
    """
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(
            f"logits must be (B, T, V) and targets (B, T), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1).long(),
                         reduction="none").view(targets.shape)
    if mask is None:
        return ce.mean()
    if mask.shape != targets.shape:
        raise ValueError(f"mask must have shape {tuple(targets.shape)}, got {tuple(mask.shape)}")
    m = mask.to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp_min(1.0)

"""Training losses: reconstruction, vector-quantisation (codebook + commitment) and SSIM.

The commitment weight multiplies the encoder term ``||z - sg(e)||^2`` as in van den Oord et al.
(2017); taming's ``legacy=True`` puts it on the codebook term instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import ssim
from ..models.quantizer import QuantizerOutput


def vq_losses(q: QuantizerOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook loss ``||sg(z) - e||^2``, commitment loss ``||z - sg(e)||^2``), float32 means."""
    codebook = F.mse_loss(q.codes, q.latents.detach())
    commitment = F.mse_loss(q.latents, q.codes.detach())
    return codebook, commitment


def reconstruction_losses(rec: torch.Tensor, x: torch.Tensor, x01_range: tuple[float, float]) -> dict[str, torch.Tensor]:
    """L1, L2 and (1 - SSIM) between ``rec`` and ``x`` (both ``[B, 3, H, W]`` in ``x01_range``)."""
    rec, x = rec.float(), x.float()
    lo, hi = x01_range
    to01 = lambda t: ((t - lo) / (hi - lo)).clamp(0, 1)
    return {
        "l1": (rec - x).abs().mean(),
        "l2": F.mse_loss(rec, x),
        "ssim": 1.0 - ssim(to01(rec), to01(x)).mean(),
    }


def d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss (taming ``hinge_d_loss`` / ``vanilla_d_loss``), a float32 scalar.

    hinge: ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``;
    non_saturating: ``0.5 * (mean(softplus(-real)) + mean(softplus(fake)))``.
    """
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator loss: hinge ``-mean(fake)`` (as taming); non_saturating ``mean(softplus(-fake))``."""
    fake = logits_fake.float()
    if kind == "hinge":
        return -fake.mean()
    if kind == "non_saturating":
        return F.softplus(-fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def adaptive_weight(nll: torch.Tensor, gen: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """taming's ``calculate_adaptive_weight``: ``||d nll/d w|| / (||d gen/d w|| + 1e-4)``, clamped to
    ``[0, max_weight]`` and detached, where ``w`` is the decoder's last layer weight.

    Both losses keep their graphs (``retain_graph``) for the backward pass that follows.
    """
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, last_layer, retain_graph=True)[0]
    return (g_nll.float().norm() / (g_gen.float().norm() + 1e-4)).clamp(0.0, max_weight).detach()

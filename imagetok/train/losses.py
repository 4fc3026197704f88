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
    to01 = lambda t: ((t - lo) / (hi - lo)).clamp(0, 1)  # noqa: E731
    return {
        "l1": (rec - x).abs().mean(),
        "l2": F.mse_loss(rec, x),
        "ssim": 1.0 - ssim(to01(rec), to01(x)).mean(),
    }

"""Reconstruction metrics on float images in [0, 1]: PSNR and SSIM (Wang et al. 2004)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[B, C, H, W]`` tensors in [0, 1] (data range 1). Returns ``[B]``."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float32) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of ``[B, C, H, W]`` tensors in [0, 1]: 11x11 Gaussian window (sigma 1.5),
    K1=0.01, K2=0.03, valid region only, averaged over channels and positions. Returns ``[B]``.

    Differentiable, so training code can use ``1 - ssim`` as a loss.
    """
    c = x.shape[1]
    g = _gaussian().to(x.device, torch.float32)
    win = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()
    x, y = x.float(), y.float()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)

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


# The 24 ColorChecker Classic patches (X-Rite's published sRGB values, row by row from "dark skin"
# to "black 2") followed by the six saturated primaries and secondaries: a colour chart for testing
# whether a tokenizer keeps colours. uint8 sRGB triples.
COLOR_CHART: dict[str, tuple[int, int, int]] = {
    "dark skin": (115, 82, 68), "light skin": (194, 150, 130), "blue sky": (98, 122, 157),
    "foliage": (87, 108, 67), "blue flower": (133, 128, 177), "bluish green": (103, 189, 170),
    "orange": (214, 126, 44), "purplish blue": (80, 91, 166), "moderate red": (193, 90, 99),
    "purple": (94, 60, 108), "yellow green": (157, 188, 64), "orange yellow": (224, 163, 46),
    "blue": (56, 61, 150), "green": (70, 148, 73), "red": (175, 54, 60),
    "yellow": (231, 199, 31), "magenta": (187, 86, 149), "cyan": (8, 133, 161),
    "white 9.5": (243, 243, 242), "neutral 8": (200, 200, 200), "neutral 6.5": (160, 160, 160),
    "neutral 5": (122, 122, 121), "neutral 3.5": (85, 85, 85), "black 2": (52, 52, 52),
    "primary red": (255, 0, 0), "primary green": (0, 255, 0), "primary blue": (0, 0, 255),
    "secondary cyan": (0, 255, 255), "secondary magenta": (255, 0, 255), "secondary yellow": (255, 255, 0),
}  # fmt: skip


def mean_color_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Colour shift of ``[B, 3, H, W]`` images in [0, 1]: per image, the largest per-channel
    absolute difference of the mean colours, in units of 1/255. Returns ``[B]`` (float32)."""
    return ((x.float().mean((2, 3)) - y.float().mean((2, 3))).abs().amax(1) * 255).float()

"""The shipped bundled model keeps colours and has no edge or corner artefacts.

These run the real bundled weights (imagetok/bundled/) on small synthetic inputs; they are the
acceptance tests of issue 16. A requirement the shipped model does not meet is marked
``xfail(strict=True)`` with the measured numbers, never passed by loosening its tolerance.
"""

from __future__ import annotations

import pytest
import torch

from imagetok import Tokenizer
from imagetok.metrics import COLOR_CHART, mean_color_error

CHART_TOLERANCE = 6.0  # 1/255 per channel, on the mean colour of a flat 64x64 tile
EDGE_TOLERANCE = 2.0  # 1/255: the worst border cell may be at most this much worse than the worst interior cell
CELL = 8  # the model's downsampling factor: one token per 8x8 cell


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    torch.set_num_threads(1)
    return Tokenizer.from_pretrained()


def _reconstruct(tok: Tokenizer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tok.decode_pixels(tok.encode_pixels(x)).clamp(0, 1).float()


def _flat(rgb, h: int, w: int) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255).view(1, 3, 1, 1).expand(1, 3, h, w).contiguous()


@pytest.mark.xfail(
    strict=True,
    reason="bundled v2 misses it: 0 of 30 patches within 6/255 (measured: neutral 5 6.8, neutral 6.5 6.9, "
    "white 7.5, dark skin 10.3, green 63.1, yellow green 63.5, primary green 192.3 -> (47, 63, 69), "
    "secondary magenta 179.8 -> grey); issue 16",
)
def test_color_chart_patches_keep_their_mean_colour(tok):
    """Each ColorChecker patch and saturated primary/secondary, as a flat 64x64 image, comes back
    with its mean colour within 6/255 in every channel."""
    x = torch.cat([_flat(rgb, 64, 64) for rgb in COLOR_CHART.values()])
    err = mean_color_error(x, _reconstruct(tok, x))
    bad = {name: round(float(e), 1) for name, e in zip(COLOR_CHART, err) if e > CHART_TOLERANCE}
    assert not bad, f"patches off by more than {CHART_TOLERANCE}/255 (largest channel error): {bad}"


def _smooth_inputs(h: int = 128, w: int = 128) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2).sqrt() / 0.71
    return {
        "mid grey": _flat((128, 128, 128), h, w),
        "white": _flat((245, 245, 245), h, w),
        "leaf green": _flat((80, 179, 40), h, w),
        "saturated blue": _flat((30, 30, 200), h, w),
        "horizontal ramp": torch.stack([xx, 0.3 + 0.4 * yy, 1 - xx])[None],
        "radial ramp": torch.stack([0.2 + 0.6 * r, 0.7 - 0.5 * r, 0.4 + 0.3 * xx])[None],
    }


def _cell_errors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (in 1/255) of each CELL x CELL block: ``[H/CELL, W/CELL]``."""
    return torch.nn.functional.avg_pool2d((x - y).abs().mean(1, keepdim=True), CELL)[0, 0] * 255


@pytest.mark.xfail(
    strict=True,
    reason="bundled v2 misses it: worst border vs worst interior cell error (1/255): mid grey 15.9 vs 9.1, "
    "white 15.5 vs 8.8, leaf green 51.8 vs 49.4, saturated blue 48.3 vs 40.4, horizontal ramp 79.8 vs 29.1, "
    "radial ramp 53.6 vs 42.5; issue 16",
)
def test_border_tokens_decode_as_well_as_interior_ones(tok):
    """On flat and smooth 128x128 inputs (16x16 tokens), no border or corner cell is more than
    EDGE_TOLERANCE/255 (mean absolute error over the cell) worse than the worst interior cell."""
    failures = {}
    for name, x in _smooth_inputs().items():
        e = _cell_errors(x, _reconstruct(tok, x))
        interior = e[1:-1, 1:-1].max()
        border = torch.cat([e[0], e[-1], e[:, 0], e[:, -1]]).max()
        if border > interior + EDGE_TOLERANCE:
            failures[name] = (round(float(border), 2), round(float(interior), 2))
    assert not failures, f"border cell error vs worst interior cell (1/255): {failures}"

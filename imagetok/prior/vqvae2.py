"""Two-level prior for VQ-VAE-2 tokens: a top prior, then a bottom prior conditioned on the top codes.

The reference (rosinality's PixelSNAIL pair) conditions the bottom prior on the top codes through
``CondResNet``: top codes are embedded, passed through convolutions, upsampled to the bottom grid
and added to the bottom network's features at every position. Here both levels are causal
transformers (:class:`~imagetok.prior.transformer.TransformerPrior`, KV-cached sampling) and
``cond`` plays CondResNet's role: its output at bottom position ``i`` is added to the bottom
transformer's input at ``i``. The bottom prior sees the whole top grid (it is given) and the bottom
tokens before ``i``; the top prior sees only the top tokens before ``i``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import TransformerPrior


class CondNet(nn.Module):
    """Top codes ``[B, ht, wt]`` -> float ``[B, hb * wb, width]`` features on the bottom grid."""

    def __init__(self, vocab: int, width: int, scale: int):
        super().__init__()
        self.scale = scale
        self.embedding = nn.Embedding(vocab, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, top: torch.Tensor) -> torch.Tensor:
        x = self.embedding(top).permute(0, 3, 1, 2)
        x = x + self.conv2(F.gelu(self.conv1(x)))
        x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return x.flatten(2).transpose(1, 2)


class TwoLevelPrior(nn.Module):
    """``top`` and ``bottom`` transformers plus ``cond`` (top codes -> bottom conditioning)."""

    def __init__(self, vocabs: tuple[int, int], grids: tuple[tuple[int, int], tuple[int, int]], width: int, depth: int,
                 heads: int, dropout: float = 0.0, num_classes: int = 0):  # fmt: skip
        super().__init__()
        (ht, wt), (hb, wb) = grids
        self.grids = grids
        self.top = TransformerPrior(vocabs[0], ht * wt, width, depth, heads, dropout, num_classes)
        self.bottom = TransformerPrior(vocabs[1], hb * wb, width, depth, heads, dropout, num_classes)
        self.cond = CondNet(vocabs[0], width, hb // ht)

    def forward(self, top: torch.Tensor, bottom: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 ``[B, ht, wt]``, ``[B, hb, wb]``, ``[B]`` -> logits ``[B, ht*wt, K0]``, ``[B, hb*wb, K1]``."""
        return self.top(top.flatten(1), labels), self.bottom(bottom.flatten(1), labels, self.cond(top))

    def start(self, level: int, labels: torch.Tensor, top: torch.Tensor | None = None, use_cache: bool = True) -> dict[str, Any]:
        """Sampling state for ``level`` 0 (top) or 1 (bottom, given the sampled ``top`` grid)."""
        if level == 0:
            return {"level": 0, **self.top.start(labels, None, use_cache)}
        return {"level": 1, **self.bottom.start(labels, self.cond(top), use_cache)}

    def step(self, state: dict[str, Any], pos: int, prev: torch.Tensor | None) -> torch.Tensor:
        return (self.top if state["level"] == 0 else self.bottom).step(state, pos, prev)

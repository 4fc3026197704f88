"""Gated PixelCNN prior (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders") over a VQ-VAE token grid, class-conditional: the VQ-VAE paper's stage 2.

Layout and names follow the common PyTorch reference (ritheshkumar95/pytorch-vqvae): token
``embedding``, a stack of ``layers`` (``GatedMaskedConv2d``: a vertical stack that sees the rows
above, a horizontal stack that sees the pixels to the left, gated ``tanh * sigmoid`` units with a
class embedding added inside the gates), and ``output_conv`` (1x1 convs to K logits). The first
layer uses mask A (excludes the current position), later ones mask B. Masks are applied to the
weights at every forward, so training cannot make the model peek at the current or later tokens.
No KV cache: sampling runs one full forward per position (fine for VQ-VAE's small grids).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedMaskedConv2d(nn.Module):
    def __init__(self, mask_type: str, dim: int, kernel: int, residual: bool, num_labels: int):
        super().__init__()
        self.mask_type, self.residual = mask_type, residual
        self.class_cond_embedding = nn.Embedding(num_labels, 2 * dim)
        self.vert_stack = nn.Conv2d(dim, 2 * dim, (kernel // 2 + 1, kernel), 1, (kernel // 2, kernel // 2))
        self.vert_to_horiz = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.horiz_stack = nn.Conv2d(dim, 2 * dim, (1, kernel // 2 + 1), 1, (0, kernel // 2))
        self.horiz_resid = nn.Conv2d(dim, dim, 1)
        vmask, hmask = torch.ones_like(self.vert_stack.weight), torch.ones_like(self.horiz_stack.weight)
        if mask_type == "A":  # the first layer must not see the current row (vertical) or pixel (horizontal)
            vmask[:, :, -1] = 0
            hmask[:, :, :, -1] = 0
        self.register_buffer("vmask", vmask, persistent=False)
        self.register_buffer("hmask", hmask, persistent=False)

    def forward(self, x_v: torch.Tensor, x_h: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = x_v.shape[-2:]
        v = F.conv2d(x_v, self.vert_stack.weight * self.vmask, self.vert_stack.bias, padding=self.vert_stack.padding)[:, :, :H]
        out_v = _gate(v + h[:, :, None, None])
        hz = F.conv2d(x_h, self.horiz_stack.weight * self.hmask, self.horiz_stack.bias, padding=self.horiz_stack.padding)[:, :, :, :W]
        out = _gate(self.vert_to_horiz(v) + hz + h[:, :, None, None])
        out_h = self.horiz_resid(out)
        return out_v, (out_h + x_h if self.residual else out_h)


class GatedPixelCNN(nn.Module):
    """Class-conditional gated PixelCNN over ``[B, h, w]`` grids of a ``vocab``-sized codebook.

    Args:
        dim: channels (reference default 64). depth: layers (reference 15). kernel: first-layer
        kernel (7). num_classes: 0 for unconditional; label ``num_classes`` is the null class.
    """

    def __init__(self, vocab: int, grid: tuple[int, int], dim: int, depth: int, kernel: int = 7, num_classes: int = 0):
        super().__init__()
        self.vocab, self.grid, self.num_classes = vocab, tuple(grid), num_classes
        self.embedding = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            GatedMaskedConv2d("A" if i == 0 else "B", dim, kernel if i == 0 else 3, i > 0, num_classes + 1) for i in range(depth)
        )
        self.output_conv = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.ReLU(True), nn.Conv2d(4 * dim, vocab, 1))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """int64 ``[B, h, w]`` tokens, ``[B]`` labels -> float ``[B, h * w, vocab]`` logits (raster order)."""
        x = self.embedding(tokens).permute(0, 3, 1, 2)
        x_v = x_h = x
        for layer in self.layers:
            x_v, x_h = layer(x_v, x_h, layer.class_cond_embedding(labels))
        return self.output_conv(x_h).flatten(2).transpose(1, 2)

    def start(self, labels: torch.Tensor, use_cache: bool = True) -> dict[str, Any]:
        h, w = self.grid
        return {"labels": labels, "canvas": labels.new_zeros(len(labels), h, w)}

    def step(self, state: dict[str, Any], pos: int, prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``[B, vocab]`` of position ``pos`` (raster order) given the previous token ``prev``."""
        w = self.grid[1]
        if prev is not None:
            state["canvas"][:, (pos - 1) // w, (pos - 1) % w] = prev
        r = pos // w  # rows below r cannot influence position pos: run the rows up to r only
        return self.forward(state["canvas"][:, : r + 1], state["labels"])[:, pos]

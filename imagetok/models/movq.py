"""MoVQ decoder (Zheng et al. 2022, arXiv:2209.09002): taming's VQGAN decoder with every GroupNorm
replaced by a *spatial norm* conditioned on the quantized codes ``zq``::

    SpatialNorm(f, zq) = GroupNorm(f) * conv_y(zq') + conv_b(zq'),  zq' = nearest-resize(zq, f's size)

Used by Kandinsky 2.x's MoVQ (diffusers ``VQModel(norm_type="spatial")``) and Emu3's VisionTokenizer.
Names follow the MoVQ / Emu3 originals on taming's trunk: ``decoder.up.{i}.block.{j}.norm1.norm_layer``,
``.conv_y``, ``.conv_b``; ``decoder.mid.attn_1.norm.*``; ``decoder.norm_out.*``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VQGANConfig
from .vqgan import VQGAN, AttnBlock, Normalize, ResnetBlock, Upsample


class SpatialNorm(nn.Module):
    """``f [B, C, H, W]``, ``zq [B, D, h, w]`` -> ``[B, C, H, W]`` (zq resized to H x W, nearest)."""

    def __init__(self, f_channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = Normalize(f_channels)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, 1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        if zq.shape[-2:] != f.shape[-2:]:
            zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class SpatialResnetBlock(ResnetBlock):
    """taming's ResnetBlock with both norms spatial (same parameter names below ``norm1`` / ``norm2``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, zq_channels: int):
        super().__init__(in_channels, out_channels, dropout)
        self.norm1 = SpatialNorm(in_channels, zq_channels)
        self.norm2 = SpatialNorm(out_channels, zq_channels)

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = self.conv1(F.silu(self.norm1(x, zq)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h, zq))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class SpatialAttnBlock(AttnBlock):
    """taming's single-head AttnBlock whose input norm is spatial."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__(channels)
        self.norm = SpatialNorm(channels, zq_channels)

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, c, h, w = x.shape
        y = self.norm(x, zq).flatten(2).transpose(1, 2)
        q, k, v = (F.linear(y, m.weight.reshape(c, c), m.bias).unsqueeze(1) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        y = F.linear(y, self.proj_out.weight.reshape(c, c), self.proj_out.bias)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class MoVQDecoder(nn.Module):
    """``z [B, z_channels, h, w]`` and codes ``zq [B, embed_dim, h, w]`` -> ``[B, 3, h*f, w*f]`` (unclamped).

    Args:
        c: a config with taming's decoder fields (``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``,
            ``embed_dim``, ``dropout``, ``mid_attn``, ``out_ch``) and ``attn_levels`` (level indices
            with attention, as a set).
    """

    def __init__(self, c: Any, attn_levels: set[int]):
        super().__init__()
        n, zq = len(c.ch_mult), c.embed_dim
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = SpatialResnetBlock(block_in, block_in, c.dropout, zq)
        if c.mid_attn:
            self.mid.attn_1 = SpatialAttnBlock(block_in, zq)
        self.mid.block_2 = SpatialResnetBlock(block_in, block_in, c.dropout, zq)
        up: list[nn.Module] = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = c.ch * c.ch_mult[i]
            for _ in range(c.num_res_blocks + 1):
                level.block.append(SpatialResnetBlock(block_in, block_out, c.dropout, zq))
                block_in = block_out
                if i in attn_levels:
                    level.attn.append(SpatialAttnBlock(block_in, zq))
            if i != 0:
                level.upsample = Upsample(block_in)
            up.insert(0, level)  # up[i] is resolution level i, as in taming
        self.up = nn.ModuleList(up)
        self.norm_out = SpatialNorm(block_in, zq)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = zq.to(z.dtype)
        h = self.mid.block_1(self.conv_in(z), zq)
        if hasattr(self.mid, "attn_1"):
            h = self.mid.attn_1(h, zq)
        h = self.mid.block_2(h, zq)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h, zq)
                if len(level.attn) > 0:
                    h = level.attn[j](h, zq)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h, zq)))


class MoVQ(VQGAN):
    """A VQGAN (``norm_type="spatial"``) whose decoder is :class:`MoVQDecoder`, conditioned on the codes.

    Same interface and names as :class:`~imagetok.models.vqgan.VQGAN`; attention levels follow
    ``attn_resolutions`` (feature sizes relative to ``resolution``, taming's rule).
    """

    def _make_decoder(self, c: VQGANConfig) -> nn.Module:
        n = len(c.ch_mult)
        return MoVQDecoder(c, {i for i in range(n) if c.resolution >> i in c.attn_resolutions})

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, embed_dim, h, w]`` codes -> ``[B, 3, H, W]`` images (unclamped)."""
        codes = codes.to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(codes), codes)

"""Emu3's VisionTokenizer (Wang et al. 2024, arXiv:2409.18869; BAAI ``Emu3VisionVQModel``).

A MoVQ: taming's 2-D encoder trunk, then causal Conv3d temporal layers; nearest-code VQ; a decoder
that runs temporal layers on the latents *and* the codes, then a spatial-norm 2-D decoder
(:class:`~imagetok.models.movq.MoVQDecoder`). Parameter names are Emu3's originals
(``emu3/tokenizer/modeling_emu3visionvq.py``): ``encoder.down.{i}.block.{j}``, ``encoder.time_conv.{i}.conv.conv``,
``encoder.time_res_stack.{i}.norm1`` (BatchNorm3d), ``quant_conv.conv`` (Conv3d), ``decoder.time_res_stack``,
``decoder.time_conv``, ``decoder.up.{i}.block.{j}.norm1.norm_layer``...

Images: Emu3 repeats an image over ``temporal_downsample_factor`` frames, encodes the clip to one token
grid, and decodes a grid to that many frames, of which it returns the first. This module computes the
same numbers with less work: the 2-D encoder trunk runs once per image (the repeated frames are
identical) and the 2-D decoder only on the first frame (the others are discarded).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Emu3Config
from .movq import MoVQDecoder
from .quantizer import VectorQuantizer
from .vqgan import Encoder


class CausalConv3d(nn.Module):
    """Conv3d padded by ``kernel - stride`` in H and W (more on the first side) and 2 frames in front."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int, int] = (3, 1, 1), stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        pad: tuple[int, ...] = ()
        for k, s in reversed(list(zip(kernel[1:], stride[1:]))):
            p = k - s
            pad += (p // 2 + p % 2, p // 2)
        self.padding = pad + (2, 0)
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class TemporalDownsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (4, 3, 3), (2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TemporalUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.repeat_interleave(x, 2, dim=2))  # nearest x2 along time


class ResnetTemporalBlock(nn.Module):
    """BatchNorm3d -> SiLU -> causal 3x3x3 conv, twice, plus the (1x1x1 conv) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.norm1 = nn.BatchNorm3d(in_ch)
        self.conv1 = CausalConv3d(in_ch, out_ch, (3, 3, 3))
        self.norm2 = nn.BatchNorm3d(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_ch, out_ch, (3, 3, 3))
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


def _trunk_config(c: Emu3Config) -> SimpleNamespace:
    """The 2-D trunk in taming's terms: attention levels become feature sizes of a 2**(L-1) "image"."""
    res = 2 ** (len(c.ch_mult) - 1)
    return SimpleNamespace(
        in_channels=c.in_channels, ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks, dropout=c.dropout,
        resolution=res, attn_resolutions=tuple(res >> i for i in c.attn_resolutions), mid_attn=True,
        z_channels=c.z_channels, embed_dim=c.embed_dim, out_ch=c.out_channels,
    )  # fmt: skip


class Emu3Encoder(Encoder):
    """2-D trunk ``[N, 3, H, W] -> [N, z, h, w]`` (:meth:`spatial`), then temporal layers over ``[B, z, T, h, w]``."""

    def __init__(self, c: Emu3Config):
        super().__init__(_trunk_config(c))  # type: ignore[arg-type]
        z = c.z_channels
        self.time_conv = nn.ModuleList(TemporalDownsample(z) for _ in range(int(math.log2(c.temporal_downsample_factor))))
        self.time_res_stack = nn.Sequential(*(ResnetTemporalBlock(z, z, c.dropout) for _ in range(c.num_res_blocks)))

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        return Encoder.forward(self, x)

    def temporal(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, z, T, h, w]`` -> ``[B, z, T / temporal_downsample_factor, h, w]``."""
        for conv in self.time_conv:
            h = F.silu(conv(h))
        return self.time_res_stack(h)


class Emu3Decoder(MoVQDecoder):
    """Temporal layers over latents and codes together, then the MoVQ 2-D decoder frame by frame."""

    def __init__(self, c: Emu3Config):
        super().__init__(_trunk_config(c), set(c.attn_resolutions))
        z = c.z_channels
        self.time_res_stack = nn.Sequential(*(ResnetTemporalBlock(z, z, c.dropout) for _ in range(c.num_res_blocks)))
        self.time_conv = nn.ModuleList(TemporalUpsample(z) for _ in range(int(math.log2(c.temporal_downsample_factor))))

    def temporal(self, z: torch.Tensor, zq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, t, h, w]`` twice -> both ``[B, C, t * temporal_downsample_factor, h, w]``."""
        h = self.time_res_stack(torch.cat([z, zq.to(z.dtype)], 0))  # Emu3 runs both through the same layers
        for conv in self.time_conv:
            h = F.silu(conv(h))
        return h.chunk(2, 0)


class Emu3VisionVQ(nn.Module):
    """Emu3's VisionTokenizer for images (and clips).

    ``encode_indices``: ``[B, 3, H, W]`` in [-1, 1], H and W multiples of 8 -> ``[B, H/8, W/8]`` int64.
    ``decode_indices``: the inverse, ``[B, 3, H, W]`` unclamped. ``encode_video_indices`` /
    ``decode_video_indices`` handle ``[B, T, 3, H, W]`` clips (T a multiple of the temporal factor).
    """

    def __init__(self, config: Emu3Config):
        super().__init__()
        c = self.config = config
        self.encoder = Emu3Encoder(c)
        self.decoder = Emu3Decoder(c)
        self.quantize = VectorQuantizer(c.codebook_size, c.embed_dim)
        self.quant_conv = CausalConv3d(c.z_channels, c.embed_dim)
        self.post_quant_conv = CausalConv3d(c.embed_dim, c.z_channels)

    def to(self, *args, **kwargs):  # type: ignore[override]
        """``nn.Module.to``; a ``memory_format`` (the Tokenizer's fast path) applies to the 2-D convs only."""
        fmt = kwargs.pop("memory_format", None)
        out = super().to(*args, **kwargs)
        if fmt is not None:
            for p in self.parameters():
                if p.ndim == 4:
                    p.data = p.data.contiguous(memory_format=fmt)
        return out

    def _quantize(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, z, t, h, w]`` latents -> ``[B, t, h, w]`` tokens."""
        e = self.quant_conv(h)
        b, d, t, hh, ww = e.shape
        return self.quantize.codes_to_indices(e.transpose(1, 2).reshape(b * t, d, hh, ww)).view(b, t, hh, ww)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, h, w]`` int64 (the image as a clip of identical frames)."""
        h = self.encoder.spatial(x)  # once: every frame of the repeated clip gives these values
        h = h.unsqueeze(2).expand(-1, -1, self.config.temporal_downsample_factor, -1, -1)
        return self._quantize(self.encoder.temporal(h))[:, 0]

    def encode_video_indices(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> ``[B, T / temporal_downsample_factor, h, w]`` int64."""
        b, t = x.shape[:2]
        h = self.encoder.spatial(x.flatten(0, 1))
        h = h.view(b, t, *h.shape[1:]).transpose(1, 2)
        return self._quantize(self.encoder.temporal(h))

    def _decode(self, indices: torch.Tensor, frames: slice) -> torch.Tensor:
        """``[B, t, h, w]`` -> ``[B, T', 3, H, W]`` for the output frames selected by ``frames``."""
        codes = self.quantize.indices_to_codes(indices.flatten(0, 1))  # [B*t, D, h, w]
        b, t = indices.shape[:2]
        codes = codes.view(b, t, *codes.shape[1:]).transpose(1, 2).to(self.post_quant_conv.conv.weight.dtype)
        z, zq = self.decoder.temporal(self.post_quant_conv(codes), codes)
        z, zq = z[:, :, frames], zq[:, :, frames]
        n = z.shape[2]
        y = MoVQDecoder.forward(self.decoder, z.transpose(1, 2).flatten(0, 1), zq.transpose(1, 2).flatten(0, 1))
        return y.view(b, n, *y.shape[1:])

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 -> ``[B, 3, 8h, 8w]`` (the first decoded frame, as Emu3 returns for images)."""
        return self._decode(indices.unsqueeze(1), slice(0, 1))[:, 0]

    def decode_video_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, t, h, w]`` int64 -> ``[B, t * temporal_downsample_factor, 3, 8h, 8w]``."""
        return self._decode(indices, slice(None))

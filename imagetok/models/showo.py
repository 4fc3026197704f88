"""Show-o's MAGVIT-v2 image tokenizer (``showlab/Show-o`` ``models/modeling_magvitv2.py``, ``showlab/magvitv2``).

Module and parameter names follow the original (``encoder.down.{i}.block.{j}``, ``encoder.quant_conv``,
``decoder.post_quant_conv``, ``decoder.up.{i}.upsample.conv``...). The trunk is taming's VQGAN
(same ResnetBlock / AttnBlock / padded stride-2 Downsample / nearest Upsample, reused from
:mod:`.vqgan`) with three differences: every level has its own number of ResnetBlocks, the encoder
and decoder have their own channel multipliers, and the 1x1 ``quant_conv`` / ``post_quant_conv`` live
inside the encoder / decoder. The quantizer is LFQ over ``z_channels`` sign bits with channel 0 the
**most** significant bit (``power_vals = 2 ** arange(K-1, -1, -1)``), the reverse of Open-MAGVIT2.
Attention goes where taming would put it (sizes relative to ``resolution``); the released
``attn_resolutions=[5]`` puts none outside the middle blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ShowoConfig
from .lfq import LFQuantizer
from .quantizer import QuantizerOutput
from .vqgan import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, _mid, _run_mid


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[j](h)
    return h


class Encoder(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, z_channels, H/f, W/f]`` (after ``quant_conv``)."""

    def __init__(self, c: ShowoConfig):
        super().__init__()
        n = len(c.encoder_ch_mult)
        self.conv_in = nn.Conv2d(3, c.ch, 3, 1, 1)
        in_mult = (1, *c.encoder_ch_mult)
        res = c.resolution
        self.down = nn.ModuleList()
        for i in range(n):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = c.ch * in_mult[i], c.ch * c.encoder_ch_mult[i]
            for _ in range(c.encoder_num_res_blocks[i]):
                level.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != n - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _mid(block_in, c.dropout, True)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, 3, 1, 1)
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """``[B, z_channels, h, w]`` codes -> ``[B, 3, h*f, w*f]`` (``post_quant_conv`` first; unclamped)."""

    def __init__(self, c: ShowoConfig):
        super().__init__()
        n = len(c.decoder_ch_mult)
        block_in = c.ch * c.decoder_ch_mult[-1]
        res = c.resolution // 2 ** (n - 1)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 1)
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in, c.dropout, True)
        up: list[nn.Module] = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = c.ch * c.decoder_ch_mult[i]
            for _ in range(c.decoder_num_res_blocks[i]):
                level.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ShowoMagvit2(nn.Module):
    """encoder -> LFQ (MSB-first sign bits) -> decoder.

    Inputs ``[B, 3, H, W]`` in [-1, 1] with H, W multiples of ``2**(L-1)``; tokens ``[B, h, w]`` int64
    in ``[0, 2**z_channels)``.
    """

    def __init__(self, config: ShowoConfig):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quantize = LFQuantizer(c.z_channels, msb_first=True)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """LFQ input ``[B, z_channels, h, w]``."""
        return self.encoder(x)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, h, w]`` int64 tokens."""
        return self.quantize.codes_to_indices(self.encode_latents(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, z_channels, h, w]`` codes -> ``[B, 3, H, W]`` images (unclamped)."""
        return self.decoder(codes.to(self.decoder.conv_in.weight.dtype))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 tokens -> ``[B, 3, H, W]`` images (unclamped)."""
        return self.decode_codes(self.quantize.indices_to_codes(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[QuantizerOutput]]:
        """Training pass: (reconstruction, (quantizer output,)) with straight-through codes."""
        q = self.quantize(self.encode_latents(x))
        return self.decode_codes(q.quantized), (q,)

"""Open-MAGVIT2 (SEED-Voken ``src/Open_MAGVIT2``) image tokenizer: a MAGVIT-v2 trunk with LFQ.

Module and parameter names follow ``improved_model.py`` and ``lfqgan.py`` exactly
(``encoder.down.{i}.block.{j}``, ``encoder.mid_block.{j}``, ``decoder.adaptive.{i}``,
``decoder.up.{i}.upsample.conv1``...), so a checkpoint's ``state_dict`` without ``loss.*`` and
``model_ema.*`` loads with no renaming. Differences from taming's VQGAN:

- ResBlocks: GN-swish-conv-GN-swish-conv with **bias-free** convs (also the 1x1 ``nin_shortcut``
  and the encoder's ``conv_in``); ``num_res_blocks`` per level in both encoder and decoder and in
  the middle (``mid_block``), no attention anywhere.
- Downsampling: conv 3x3 stride 2 with symmetric padding 1. Upsampling: conv 3x3 to 4C channels then
  depth-to-space in DCR order (``out[c, 2y+i, 2x+j] = in[(2i+j)C + c, y, x]``; not ``pixel_shuffle``).
- No ``quant_conv``/``post_quant_conv``: the encoder's 1x1 ``conv_out`` gives the K = log2(codebook)
  bits directly and the decoder reads the +-1 codes.
- Decoder: before each level's blocks, ``AdaptiveGroupNorm``: ``GN(x) * gamma(std(q)) + beta(mean(q))``
  with per-channel statistics of the whole quantized latent q (unbiased variance, +1e-6).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Magvit2Config
from .lfq import LFQuantizer
from .quantizer import QuantizerOutput


def swish(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)``, written as in the original (``F.silu`` can differ in the last bit)."""
    return x * torch.sigmoid(x)


def _gn(channels: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=affine)


class ResBlock(nn.Module):
    def __init__(self, in_filters: int, out_filters: int):
        super().__init__()
        self.norm1 = _gn(in_filters)
        self.norm2 = _gn(out_filters)
        self.conv1 = nn.Conv2d(in_filters, out_filters, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_filters, out_filters, 3, padding=1, bias=False)
        if in_filters != out_filters:
            self.nin_shortcut = nn.Conv2d(in_filters, out_filters, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return h + x


def depth_to_space(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """DCR depth-to-space: ``[B, b*b*C, H, W]`` -> ``[B, C, H*b, W*b]``, ``out[c, by+i, bx+j] = in[(b i + j) C + c, y, x]``."""
    b, c, h, w = x.shape
    c_out = c // (block * block)
    x = x.view(b, block, block, c_out, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c_out, h * block, w * block)


class Upsampler(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    def __init__(self, z_channel: int, in_filters: int):
        super().__init__()
        self.gn = _gn(in_filters, affine=False)
        self.gamma = nn.Linear(z_channel, in_filters)
        self.beta = nn.Linear(z_channel, in_filters)
        self.eps = 1e-6

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = q.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt()).view(b, c, 1, 1)  # unbiased variance
        bias = self.beta(flat.mean(dim=-1)).view(b, c, 1, 1)
        return self.gn(x) * scale + bias


class Encoder(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, z_channels, H/f, W/f]`` (pre-quantization latents)."""

    def __init__(self, c: Magvit2Config):
        super().__init__()
        n = len(c.ch_mult)
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        in_mult = (1, *c.ch_mult)
        for i in range(n):
            level = nn.Module()
            level.block = nn.ModuleList()
            block_in, block_out = c.ch * in_mult[i], c.ch * c.ch_mult[i]
            for _ in range(c.num_res_blocks):
                level.block.append(ResBlock(block_in, block_out))
                block_in = block_out
            if i < n - 1:
                level.downsample = nn.Conv2d(block_out, block_out, 3, stride=2, padding=1)
            self.down.append(level)
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in) for _ in range(c.num_res_blocks))
        self.norm_out = _gn(block_out)
        self.conv_out = nn.Conv2d(block_out, c.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))


class Decoder(nn.Module):
    """``[B, z_channels, h, w]`` codes -> ``[B, 3, h*f, w*f]`` (unclamped)."""

    def __init__(self, c: Magvit2Config):
        super().__init__()
        n = len(c.ch_mult)
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in) for _ in range(c.num_res_blocks))
        up: list[nn.Module] = []
        adaptive: list[nn.Module] = []
        for i in reversed(range(n)):
            block_out = c.ch * c.ch_mult[i]
            adaptive.insert(0, AdaptiveGroupNorm(c.z_channels, block_in))
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                level.block.append(ResBlock(block_in, block_out))
                block_in = block_out
            if i > 0:
                level.upsample = Upsampler(block_in)
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = _gn(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        style = z
        h = self.conv_in(z)
        for block in self.mid_block:
            h = block(h)
        for i in reversed(range(len(self.up))):
            h = self.adaptive[i](h, style)
            for block in self.up[i].block:
                h = block(h)
            if hasattr(self.up[i], "upsample"):
                h = self.up[i].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class Magvit2(nn.Module):
    """encoder -> LFQ (sign bits) -> decoder.

    Inputs are ``[B, 3, H, W]`` in ``config.input_range`` with H, W multiples of ``2**(L-1)``;
    tokens are ``[B, h, w]`` int64 in ``[0, 2**embed_dim)`` (or, with ``factorized_bits``, a tuple of
    sub-token grids).
    """

    def __init__(self, config: Magvit2Config):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quantize = LFQuantizer(c.embed_dim, c.factorized_bits)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents ``[B, embed_dim, h, w]`` (the LFQ input)."""
        return self.encoder(x)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``[B, 3, H, W]`` -> ``[B, h, w]`` int64 tokens (a tuple of sub-token grids when factorised)."""
        return self.quantize.codes_to_indices(self.encode_latents(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, embed_dim, h, w]`` codes -> ``[B, 3, H, W]`` images (unclamped).

        The codes enter the decoder in channels-last layout, as in the original (its LFQ output and
        ``get_codebook_entry`` are einops permutations of a ``[B, h, w, C]`` tensor): PyTorch's CPU
        GroupNorm rounds differently for that layout (by up to ~4e-3 on the golden model), and this
        keeps the decoded images equal to the original's.
        """
        codes = codes.to(self.decoder.conv_in.weight.dtype)
        return self.decoder(codes.contiguous(memory_format=torch.channels_last))

    def decode_indices(self, indices: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Tokens (as :meth:`encode_indices` returns them) -> ``[B, 3, H, W]`` images (unclamped)."""
        return self.decode_codes(self.quantize.indices_to_codes(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[QuantizerOutput]]:
        """Training pass: (reconstruction, (quantizer output,)) with straight-through codes."""
        q = self.quantize(self.encode_latents(x))
        return self.decode_codes(q.quantized), (q,)

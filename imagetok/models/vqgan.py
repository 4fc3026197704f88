"""VQGAN in taming-transformers' layout (Esser et al. 2021, arXiv:2012.09841).

Module and parameter names follow ``taming/modules/diffusionmodules/model.py`` and
``taming/models/vqgan.py`` exactly (``encoder.down.{i}.block.{j}``, ``quant_conv``,
``quantize.embedding.weight``, ``post_quant_conv``, ``decoder.up.{i}``...), so a taming or LDM
checkpoint without its ``loss.*`` entries loads with no renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VQGANConfig
from ..errors import NoDecoderError
from .ibq import IBQuantizer
from .quantizer import GumbelQuantizer, QuantizerOutput, VectorQuantizer


NO_DECODER = (
    "this tokenizer is encoder-only (decoder=False): its source had no decoder weights (Hugging Face's "
    "Chameleon/Anole conversion drops them). It encodes images, but cannot decode tokens. For a decoder, convert "
    "the original Chameleon VQGAN instead: tokenizer/vqgan.ckpt + tokenizer/vqgan.yaml from Meta's gated Chameleon "
    "download (or the GAIR/Anole-7b-v0.1 mirror, same file; Chameleon Research License, non-commercial) with "
    "`imagetok convert tokenizer/vqgan.ckpt --from chameleon --config tokenizer/vqgan.yaml`"
)


def Normalize(channels: int) -> nn.GroupNorm:  # noqa: N802 - taming's name
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right/bottom only


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections (taming's AttnBlock)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # The 1x1 convs run as matmuls on [b, h*w, c] rows (same weights): faster than conv on CPU
        # and the layout scaled_dot_product_attention wants (no transposed copies).
        y = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = (F.linear(y, m.weight.reshape(c, c), m.bias).unsqueeze(1) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # softmax(q k^T / sqrt(c)) v
        y = F.linear(y, self.proj_out.weight.reshape(c, c), self.proj_out.bias)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


def _mid(channels: int, dropout: float, attn: bool) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    if attn:
        mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    h = mid.block_1(h)
    if hasattr(mid, "attn_1"):
        h = mid.attn_1(h)
    return mid.block_2(h)


class Encoder(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, z_channels, H/f, W/f]``."""

    def __init__(self, c: VQGANConfig):
        super().__init__()
        self.num_res_blocks = c.num_res_blocks
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, 1, 1)
        in_mult = (1, *c.ch_mult)
        res = c.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(c.ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = c.ch * in_mult[i], c.ch * mult
            for _ in range(c.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(c.ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _mid(block_in, c.dropout, c.mid_attn)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``[B, z_channels, h, w]`` -> ``[B, 3, h*f, w*f]`` (unclamped, in the model's input range)."""

    def __init__(self, c: VQGANConfig):
        super().__init__()
        n = len(c.ch_mult)
        block_in = c.ch * c.ch_mult[-1]
        res = c.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in, c.dropout, c.mid_attn)
        up: list[nn.Module] = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = c.ch * c.ch_mult[i]
            for _ in range(c.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, level)  # up[i] is resolution level i, as in taming
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQGAN(nn.Module):
    """encoder -> quant_conv -> quantize -> post_quant_conv -> decoder.

    Inputs are ``[B, 3, H, W]`` in ``config.input_range`` with H, W multiples of ``2**(L-1)``;
    tokens are ``[B, H/f, W/f]`` int64 in ``[0, n_embed)``.
    """

    def __init__(self, config: VQGANConfig):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c)
        if c.decoder:  # encoder-only models (decoder=False) have neither decoder nor post_quant_conv
            self.decoder = self._make_decoder(c)
        if c.quantizer == "ibq":
            self.quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, 1)
            self.quantize = IBQuantizer(c.n_embed, c.embed_dim)
        elif c.quantizer == "gumbel":
            self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 1)
            self.quantize: nn.Module = GumbelQuantizer(c.z_channels, c.embed_dim, c.n_embed)
        else:
            self.quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, 1)
            self.quantize = VectorQuantizer(c.n_embed, c.embed_dim, c.codebook_norm)
        if c.decoder:
            self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)

    def _make_decoder(self, c: VQGANConfig) -> nn.Module:
        return Decoder(c)  # imagetok.models.movq.MoVQ builds a spatial-norm decoder instead

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents ``[B, C, h, w]`` (after ``quant_conv``; C = embed_dim, or z_channels for Gumbel)."""
        return self.quant_conv(self.encoder(x))

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, h, w]`` int64 tokens."""
        return self.quantize.codes_to_indices(self.encode_latents(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, embed_dim, h, w]`` codes -> ``[B, 3, H, W]`` images (unclamped)."""
        if not self.config.decoder:
            raise NoDecoderError(NO_DECODER)
        return self.decoder(self.post_quant_conv(codes.to(self.post_quant_conv.weight.dtype)))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 tokens -> ``[B, 3, H, W]`` images (unclamped)."""
        return self.decode_codes(self.quantize.indices_to_codes(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[QuantizerOutput]]:
        """Training pass: (reconstruction ``[B, 3, H, W]``, (quantizer output,)); straight-through codes."""
        if not isinstance(self.quantize, VectorQuantizer):
            raise NotImplementedError("training the Gumbel quantizer is not supported; use quantizer='vq'")
        q = self.quantize(self.encode_latents(x))
        return self.decode_codes(q.quantized), (q,)

"""NVIDIA Cosmos-Tokenizer discrete image tokenizers (DI8x8, DI16x16): wavelet patching + FSQ.

Module and parameter names follow ``cosmos_tokenizer/networks/discrete_image.py`` and
``modules/layers2d.py`` (``encoder.down.{i}.block.{j}``, ``quant_conv``, ``post_quant_conv``,
``decoder.up.{i}.upsample.conv``...), so the autoencoder's state dict (or the one inside the
``.jit`` files, minus its non-persistent buffers) loads with no renaming. The network:

- ``encoder.patcher``: Haar wavelet patching, ``log2(patch_size)`` rounds; each round filters along
  W then H with ``[1, 1]/sqrt2`` and ``[1, -1]/sqrt2`` (stride 2), concatenates ``[LL, LH, HL, HH]``
  and divides by 2 (``patch_method="rearrange"``: plain space-to-depth). ``decoder.unpatcher``
  inverts it (transposed convolutions, x2 per round).
- taming-like ResnetBlocks/attention (GroupNorm 32, eps 1e-6, swish), but only
  ``log2(spatial_compression / patch_size)`` levels resample: encoder levels ``i < n_down``
  downsample (pad (0,1,0,1) + stride-2 conv), decoder levels ``i >= L - n_down`` upsample (nearest x2
  + conv). Attention placement repeats the original's bookkeeping: the encoder tracks the size it
  really has, the decoder starts from ``(resolution / patch_size) / 2**(L-1)`` and doubles only at
  upsampling levels (so the two sides can disagree, as in the released DI8x8 layout).
- ``quant_conv`` -> FSQ (``quantizer``) -> ``post_quant_conv``; tokens are FSQ mixed-radix indices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CosmosConfig
from .fsq import FSQuantizer
from .quantizer import QuantizerOutput

_HAAR = 0.7071067811865476


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def Normalize(channels: int) -> nn.GroupNorm:  # noqa: N802 - the original's name
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def _filters(method: str, g: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    h = torch.tensor([_HAAR, _HAAR] if method == "haar" else [1.0, 1.0], device=device)
    lo = h.flip(0).reshape(1, 1, -1).repeat(g, 1, 1).to(dtype)
    hi = (h * torch.tensor([1.0, -1.0], device=device)).reshape(1, 1, -1).repeat(g, 1, 1).to(dtype)
    return lo, hi, h.shape[0]


class Patcher(nn.Module):
    """``[B, C, H, W]`` -> ``[B, C * p * p, H / p, W / p]`` (Haar wavelet or space-to-depth)."""

    def __init__(self, patch_size: int = 1, patch_method: str = "haar"):
        super().__init__()
        self.patch_size, self.patch_method = patch_size, patch_method
        self.rounds = int(math.log2(patch_size))
        # non-persistent, as in Cosmos (a traced copy exposes them; the converter drops them)
        self.register_buffer("wavelets", torch.tensor([_HAAR, _HAAR] if patch_method == "haar" else [1.0, 1.0]), persistent=False)
        self.register_buffer("_arange", torch.arange(2), persistent=False)

    def _dwt(self, x: torch.Tensor) -> torch.Tensor:
        g = x.shape[1]
        lo, hi, n = _filters("haar", g, x.dtype, x.device)
        x = F.pad(x, (n - 2, n - 1, n - 2, n - 1), mode="reflect")
        xl = F.conv2d(x, lo.unsqueeze(2), groups=g, stride=(1, 2))
        xh = F.conv2d(x, hi.unsqueeze(2), groups=g, stride=(1, 2))
        out = torch.cat(
            [
                F.conv2d(xl, lo.unsqueeze(3), groups=g, stride=(2, 1)),
                F.conv2d(xl, hi.unsqueeze(3), groups=g, stride=(2, 1)),
                F.conv2d(xh, lo.unsqueeze(3), groups=g, stride=(2, 1)),
                F.conv2d(xh, hi.unsqueeze(3), groups=g, stride=(2, 1)),
            ],
            dim=1,
        )
        return out / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_method == "rearrange":
            p = self.patch_size
            b, c, h, w = x.shape
            return x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)
        for _ in range(self.rounds):
            x = self._dwt(x)
        return x


class UnPatcher(nn.Module):
    """Inverse of :class:`Patcher`."""

    def __init__(self, patch_size: int = 1, patch_method: str = "haar"):
        super().__init__()
        self.patch_size, self.patch_method = patch_size, patch_method
        self.rounds = int(math.log2(patch_size))
        self.register_buffer("wavelets", torch.tensor([_HAAR, _HAAR] if patch_method == "haar" else [1.0, 1.0]), persistent=False)
        self.register_buffer("_arange", torch.arange(2), persistent=False)

    def _idwt(self, x: torch.Tensor) -> torch.Tensor:
        g = x.shape[1] // 4
        lo, hi, n = _filters("haar", g, x.dtype, x.device)
        xll, xlh, xhl, xhh = torch.chunk(x, 4, dim=1)
        ct = F.conv_transpose2d
        yl = ct(xll, lo.unsqueeze(3), groups=g, stride=(2, 1), padding=(n - 2, 0))
        yl = yl + ct(xlh, hi.unsqueeze(3), groups=g, stride=(2, 1), padding=(n - 2, 0))
        yh = ct(xhl, lo.unsqueeze(3), groups=g, stride=(2, 1), padding=(n - 2, 0))
        yh = yh + ct(xhh, hi.unsqueeze(3), groups=g, stride=(2, 1), padding=(n - 2, 0))
        y = ct(yl, lo.unsqueeze(2), groups=g, stride=(1, 2), padding=(0, n - 2))
        y = y + ct(yh, hi.unsqueeze(2), groups=g, stride=(1, 2), padding=(0, n - 2))
        return y * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_method == "rearrange":
            p = self.patch_size
            b, c, h, w = x.shape
            c0 = c // (p * p)
            return x.reshape(b, c0, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c0, h * p, w * p)
        for _ in range(self.rounds):
            x = self._idwt(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


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
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (scale C^-0.5) with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, c, h * w) for m in (self.q, self.k, self.v))
        attn = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * (int(c) ** -0.5), dim=2)  # [b, hw(q), hw(k)]
        out = torch.bmm(v, attn.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


def level_sizes(c: CosmosConfig) -> tuple[list[int], list[int]]:
    """Feature sizes the original compares with ``attn_resolutions``, per level (encoder, decoder).

    Encoder level i: ``(resolution / patch_size) / 2**min(i, n_down)`` (the size it really has).
    Decoder level i: starts from ``(resolution / patch_size) / 2**(L-1)`` at level L-1 and doubles after
    each upsampling level ``i >= L - n_down`` -- the original's bookkeeping, even where that is not
    the real size.
    """
    n, n_res = len(c.channels_mult), c.num_resampling
    base = c.resolution // c.patch_size
    enc = [base // 2 ** min(i, n_res) for i in range(n)]
    dec, res = [0] * n, base // 2 ** (n - 1)
    for i in reversed(range(n)):
        dec[i] = res
        if i >= n - n_res:
            res *= 2
    return enc, dec


def attention_levels(c: CosmosConfig) -> tuple[list[int], list[int]]:
    """Levels with attention blocks: (encoder levels, decoder levels)."""
    enc, dec = level_sizes(c)
    return [i for i, r in enumerate(enc) if r in c.attn_resolutions], [i for i, r in enumerate(dec) if r in c.attn_resolutions]


def _mid(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_levels(levels, h: torch.Tensor, order, resample: str) -> torch.Tensor:
    for i in order:
        level = levels[i]
        for j, block in enumerate(level.block):
            h = block(h)
            if len(level.attn) > 0:
                h = level.attn[j](h)
        if hasattr(level, resample):
            h = getattr(level, resample)(h)
    return h


class Encoder(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, z_channels, H/s, W/s]`` (s = spatial_compression)."""

    def __init__(self, c: CosmosConfig):
        super().__init__()
        n = len(c.channels_mult)
        self.patcher = Patcher(c.patch_size, c.patch_method)
        n_down = c.num_resampling
        attn = attention_levels(c)[0]
        self.conv_in = nn.Conv2d(c.in_channels * c.patch_size**2, c.channels, 3, 1, 1)
        in_mult = (1, *c.channels_mult)
        self.down = nn.ModuleList()
        for i in range(n):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = c.channels * in_mult[i], c.channels * c.channels_mult[i]
            for _ in range(c.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if i in attn:
                    level.attn.append(AttnBlock(block_in))
            if i < n_down:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _mid(block_in, c.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.patcher(x))
        h = _run_levels(self.down, h, range(len(self.down)), "downsample")
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """``[B, z_channels, h, w]`` -> ``[B, 3, h*s, w*s]`` (unclamped)."""

    def __init__(self, c: CosmosConfig):
        super().__init__()
        n = len(c.channels_mult)
        n_up = c.num_resampling
        self.unpatcher = UnPatcher(c.patch_size, c.patch_method)
        block_in = c.channels * c.channels_mult[-1]
        attn = attention_levels(c)[1]  # the original's bookkeeping (see level_sizes)
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in, c.dropout)
        up: list[nn.Module] = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = c.channels * c.channels_mult[i]
            for _ in range(c.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
                if i in attn:
                    level.attn.append(AttnBlock(block_in))
            if i >= n - n_up:
                level.upsample = Upsample(block_in)
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_channels * c.patch_size**2, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = _run_levels(self.up, h, reversed(range(len(self.up))), "upsample")
        return self.unpatcher(self.conv_out(swish(self.norm_out(h))))


class CosmosDI(nn.Module):
    """encoder -> quant_conv -> FSQ -> post_quant_conv -> decoder (Cosmos ``DiscreteImageTokenizer``).

    Inputs ``[B, 3, H, W]`` in ``config.input_range`` ([-1, 1]), H and W multiples of
    ``spatial_compression``; tokens ``[B, H/s, W/s]`` int64 in ``[0, prod(levels))``.
    """

    def __init__(self, config: CosmosConfig):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(c.z_channels, c.embedding_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embedding_dim, c.z_channels, 1)
        self.quantizer = FSQuantizer(c.levels)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """FSQ input ``[B, embedding_dim, h, w]`` (after ``quant_conv``)."""
        return self.quant_conv(self.encoder(x))

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, h, w]`` int64 tokens."""
        return self.quantizer.codes_to_indices(self.encode_latents(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, embedding_dim, h, w]`` codes -> ``[B, 3, H, W]`` images (unclamped)."""
        return self.decoder(self.post_quant_conv(codes.to(self.post_quant_conv.weight.dtype)))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 tokens -> ``[B, 3, H, W]`` images (unclamped)."""
        return self.decode_codes(self.quantizer.indices_to_codes(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[QuantizerOutput]]:
        """Training pass: (reconstruction, (quantizer output,)) with straight-through rounding."""
        q = self.quantizer(self.encode_latents(x))
        return self.decode_codes(q.quantized), (q,)

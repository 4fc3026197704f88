"""VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937): strided convolutions and a residual stack.

The encoder and decoder are the ones of rosinality/vq-vae-2-pytorch (``Encoder``/``Decoder`` with
``blocks`` Sequentials), which are also the building blocks of :mod:`imagetok.models.vqvae2`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VQVAEConfig
from .quantizer import QuantizerOutput, VectorQuantizer


class ResBlock(nn.Module):
    """x + Conv1x1(ReLU(Conv3x3(ReLU(x))))."""

    def __init__(self, in_channel: int, channel: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.ReLU(), nn.Conv2d(in_channel, channel, 3, padding=1), nn.ReLU(), nn.Conv2d(channel, in_channel, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class Encoder(nn.Module):
    """Downsamples by ``stride`` (2 or 4) with 4x4 stride-2 convolutions, then a residual stack."""

    def __init__(self, in_channel: int, channel: int, n_res_block: int, n_res_channel: int, stride: int):
        super().__init__()
        if stride == 4:
            blocks = [
                nn.Conv2d(in_channel, channel // 2, 4, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(channel // 2, channel, 4, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(channel, channel, 3, padding=1),
            ]  # fmt: skip
        elif stride == 2:
            blocks = [
                nn.Conv2d(in_channel, channel // 2, 4, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(channel // 2, channel, 3, padding=1),
            ]  # fmt: skip
        else:
            raise ValueError(f"stride must be 2 or 4, got {stride}")
        blocks += [ResBlock(channel, n_res_channel) for _ in range(n_res_block)]
        blocks.append(nn.ReLU())
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """A residual stack, then upsamples by ``stride`` (2 or 4) with 4x4 transposed convolutions."""

    def __init__(self, in_channel: int, out_channel: int, channel: int, n_res_block: int, n_res_channel: int, stride: int):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channel, channel, 3, padding=1)]
        blocks += [ResBlock(channel, n_res_channel) for _ in range(n_res_block)]
        blocks.append(nn.ReLU())
        if stride == 4:
            blocks += [
                nn.ConvTranspose2d(channel, channel // 2, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(channel // 2, out_channel, 4, stride=2, padding=1),
            ]  # fmt: skip
        elif stride == 2:
            blocks.append(nn.ConvTranspose2d(channel, out_channel, 4, stride=2, padding=1))
        else:
            raise ValueError(f"stride must be 2 or 4, got {stride}")
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class VQVAE(nn.Module):
    """encoder (f4) -> quant_conv -> quantize -> decoder.

    Inputs ``[B, 3, H, W]`` in ``config.input_range``, H and W multiples of 4; tokens
    ``[B, H/4, W/4]`` int64 in ``[0, n_embed)``.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c.in_channels, c.channel, c.n_res_block, c.n_res_channel, stride=4)
        self.quant_conv = nn.Conv2d(c.channel, c.embed_dim, 1)
        self.quantize = VectorQuantizer(c.n_embed, c.embed_dim)
        self.decoder = Decoder(c.embed_dim, c.in_channels, c.channel, c.n_res_block, c.n_res_channel, stride=4)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, embed_dim, H/4, W/4]`` pre-quantisation latents."""
        return self.quant_conv(self.encoder(x))

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize.codes_to_indices(self.encode_latents(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes.to(self.quant_conv.weight.dtype))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 -> ``[B, 3, 4h, 4w]`` images (unclamped)."""
        return self.decode_codes(self.quantize.indices_to_codes(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[QuantizerOutput]]:
        """Training pass: (reconstruction ``[B, 3, H, W]``, (quantizer output,)); straight-through codes."""
        q = self.quantize(self.encode_latents(x))
        return self.decode_codes(q.quantized), (q,)

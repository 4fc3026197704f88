"""Two-level VQ-VAE-2 (Razavi et al. 2019, arXiv:1906.00446), numerically matching
rosinality/vq-vae-2-pytorch's ``VQVAE``.

Names follow rosinality (``enc_b``, ``enc_t``, ``quantize_conv_t``, ``dec_t``, ``upsample_t``,
``dec``...) except the codebooks, which are ``nn.Embedding``-style ``quantize_{t,b}.embedding.weight``
``[n_embed, embed_dim]`` instead of rosinality's ``[embed_dim, n_embed]`` EMA buffers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VQVAE2Config
from .quantizer import QuantizerOutput, VectorQuantizer
from .vqvae import Decoder, Encoder


class VQVAE2(nn.Module):
    """Top codes at 1/8 resolution, bottom codes at 1/4, the bottom conditioned on the decoded top.

    Inputs ``[B, 3, H, W]`` in ``config.input_range``, H and W multiples of 8. Tokens are a tuple
    ``(top [B, H/8, W/8], bottom [B, H/4, W/4])`` of int64 in ``[0, n_embed)``.
    """

    def __init__(self, config: VQVAE2Config):
        super().__init__()
        c = self.config = config
        ch, nrb, nrc, d = c.channel, c.n_res_block, c.n_res_channel, c.embed_dim
        self.enc_b = Encoder(c.in_channels, ch, nrb, nrc, stride=4)
        self.enc_t = Encoder(ch, ch, nrb, nrc, stride=2)
        self.quantize_conv_t = nn.Conv2d(ch, d, 1)
        self.quantize_t = VectorQuantizer(c.n_embed, d)
        self.dec_t = Decoder(d, d, ch, nrb, nrc, stride=2)
        self.quantize_conv_b = nn.Conv2d(d + ch, d, 1)
        self.quantize_b = VectorQuantizer(c.n_embed, d)
        self.upsample_t = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)
        self.dec = Decoder(d + d, c.in_channels, ch, nrb, nrc, stride=4)

    def encode_indices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` -> ``(top [B, H/8, W/8], bottom [B, H/4, W/4])`` int64."""
        enc_b = self.enc_b(x)
        enc_t = self.enc_t(enc_b)
        id_t = self.quantize_t.codes_to_indices(self.quantize_conv_t(enc_t))
        quant_t = self.quantize_t.indices_to_codes(id_t).to(enc_b.dtype)
        h_b = self.quantize_conv_b(torch.cat([self.dec_t(quant_t), enc_b], 1))
        return id_t, self.quantize_b.codes_to_indices(h_b)

    def decode_codes(self, quant_t: torch.Tensor, quant_b: torch.Tensor) -> torch.Tensor:
        dtype = self.upsample_t.weight.dtype
        return self.dec(torch.cat([self.upsample_t(quant_t.to(dtype)), quant_b.to(dtype)], 1))

    def decode_indices(self, indices: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``(top, bottom)`` int64 -> ``[B, 3, H, W]`` images (unclamped)."""
        id_t, id_b = indices
        return self.decode_codes(self.quantize_t.indices_to_codes(id_t), self.quantize_b.indices_to_codes(id_b))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[QuantizerOutput, QuantizerOutput]]:
        """Training pass: (reconstruction, (top output, bottom output)); straight-through codes."""
        enc_b = self.enc_b(x)
        q_t = self.quantize_t(self.quantize_conv_t(self.enc_t(enc_b)))
        h_b = self.quantize_conv_b(torch.cat([self.dec_t(q_t.quantized.to(enc_b.dtype)), enc_b], 1))
        q_b = self.quantize_b(h_b)
        return self.decode_codes(q_t.quantized, q_b.quantized), (q_t, q_b)

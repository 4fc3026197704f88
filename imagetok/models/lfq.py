"""Lookup-free quantization (LFQ; MAGVIT-v2, arXiv:2310.05737; Open-MAGVIT2, Show-o).

Each of the K latent channels becomes one bit: ``bit_k = z_k > 0`` (strictly: 0 gives bit 0), the
code vector is ``2 * bit - 1`` in {-1, +1} (no scaling), and the token is
``index = sum_k bit_k * 2**k`` -- **channel 0 is the least significant bit** (SEED-Voken's code
builds ``mask = 2 ** arange(K)``; its docstrings saying "big endian" are wrong). Show-o's MAGVIT-v2
uses the opposite order (``power_vals = 2 ** arange(K-1, -1, -1)``: channel 0 is the most significant
bit): ``msb_first=True``.

Token factorisation (Open-MAGVIT2's AR stage) splits the K bits into groups, e.g. ``(6, 4)``:
sub-token ``j`` holds channels ``sum(bits[:j]) ..``, again LSB first, so for two groups
``pre = index & (2**b0 - 1)`` and ``post = index >> b0``.

No parameters and no state-dict entries. Bits are read from the float32 latents (a half-precision
network's output is widened first), so a token depends only on its own latent vector.
"""

from __future__ import annotations

import torch
from torch import nn

from .quantizer import QuantizerOutput, _no_autocast


class LFQuantizer(nn.Module):
    """Sign-bit quantizer over ``dim`` channels: codebook size ``2**dim``.

    Args:
        dim: bits per token (K).
        factorized_bits: ``()`` for one token per position, or bit counts summing to ``dim`` to
            split each token into sub-tokens (coarse = low bits first).
        msb_first: channel 0 is the *most* significant bit (Show-o's MAGVIT-v2:
            ``index = sum_k bit_k * 2**(K-1-k)``) instead of the least (Open-MAGVIT2).
    """

    def __init__(self, dim: int, factorized_bits: tuple[int, ...] = (), msb_first: bool = False):
        super().__init__()
        if factorized_bits and sum(factorized_bits) != dim:
            raise ValueError(f"factorized_bits {list(factorized_bits)} must sum to dim={dim}")
        if factorized_bits and msb_first:
            raise ValueError("token factorisation is defined for LSB-first bits only")
        self.dim = dim
        self.n_embed = 2**dim
        self.factorized_bits = tuple(factorized_bits)
        self.msb_first = msb_first

    def _weights(self, n: int, device: torch.device) -> torch.Tensor:
        w = 2 ** torch.arange(n, device=device, dtype=torch.long)
        return w.flip(0) if self.msb_first else w

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Vocabulary of each sub-token (one entry without factorisation)."""
        return tuple(2**b for b in self.factorized_bits) if self.factorized_bits else (self.n_embed,)

    def bits(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` latents -> bool bits ``z > 0`` (float32 comparison)."""
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected latents [B, {self.dim}, h, w], got {tuple(z.shape)}")
        with _no_autocast(z.device):
            return z.detach().float() > 0

    def codes_to_indices(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``[B, K, h, w]`` latents -> ``[B, h, w]`` int64 in ``[0, 2**K)`` (a tuple of sub-token grids
        when factorised)."""
        bits = self.bits(z).long()
        weights = self._weights(self.dim, z.device)
        if not self.factorized_bits:
            return (bits * weights[None, :, None, None]).sum(1)
        out, start = [], 0
        for nb in self.factorized_bits:
            out.append((bits[:, start : start + nb] * weights[None, :nb, None, None]).sum(1))
            start += nb
        return tuple(out)

    def indices_to_codes(self, indices: torch.Tensor | tuple[torch.Tensor, ...] | list) -> torch.Tensor:
        """``[B, h, w]`` int64 tokens (or the sub-token tuple) -> ``[B, K, h, w]`` float32 codes in {-1, 1}."""
        parts = tuple(indices) if isinstance(indices, (tuple, list)) else (indices,)
        sizes = self.factorized_bits or (self.dim,)
        if len(parts) != len(sizes):
            raise ValueError(f"expected {len(sizes)} token grid(s) (bits {list(sizes)}), got {len(parts)}")
        codes = []
        for t, nb in zip(parts, sizes):
            mask = self._weights(nb, t.device)
            codes.append(((t.long()[:, None] & mask[None, :, None, None]) != 0).float() * 2.0 - 1.0)
        return torch.cat(codes, 1)

    def combine(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Sub-token grids -> full ``[B, h, w]`` indices (``pre + post << b0`` ...)."""
        out, shift = torch.zeros_like(parts[0]), 0
        for t, nb in zip(parts, self.factorized_bits or (self.dim,)):
            out = out + (t.long() << shift)
            shift += nb
        return out

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Training pass: codes ``sign(z)`` with the straight-through gradient; float32.

        ``indices`` are the full ``[B, h, w]`` indices (not factorised); ``latents`` the float32 ``z``.
        """
        with _no_autocast(z.device):
            latents = z.float()
            codes = torch.where(latents > 0, 1.0, -1.0).to(latents.dtype)
            quantized = latents + (codes - latents).detach()
        bits = (latents.detach() > 0).long()
        weights = self._weights(self.dim, z.device)
        return QuantizerOutput(quantized, (bits * weights[None, :, None, None]).sum(1), latents, codes)


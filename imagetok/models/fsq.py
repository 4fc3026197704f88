"""Finite scalar quantization (FSQ, arXiv:2309.15505) as in NVIDIA Cosmos-Tokenizer.

Channel ``i`` of a latent is bounded and rounded to one of ``L_i`` levels:

- ``bound(z) = tanh(z + atanh(offset / half_l)) * half_l - offset`` with
  ``half_l = (L - 1) * (1 + 1e-3) / 2`` and ``offset = 0.5`` for even ``L`` (else 0);
- ``digit = round(bound(z)) + L // 2`` in ``[0, L)`` (``torch.round``: half to even);
- ``code = (digit - L // 2) / (L // 2)`` (e.g. L=8: -1, -0.75, ..., 0.75; L=5: -1, -0.5, ..., 1).

Tokens are mixed-radix numbers, **channel 0 least significant**: ``index = sum_i digit_i * basis_i``,
``basis = cumprod([1, L_0, ..., L_{d-2}])``. All of this runs in float32 (codes are recomputed from
the formula, never read from a reduced-precision table: Cosmos' ``implicit_codebook`` buffer is
built in bfloat16). No parameters; the buffers below are non-persistent (as in Cosmos) so that a
traced copy exposes the same names.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .quantizer import QuantizerOutput, _no_autocast

EPS = 1e-3


class FSQuantizer(nn.Module):
    """FSQ over ``len(levels)`` channels; codebook size ``prod(levels)``.

    Args:
        levels: levels per channel, e.g. ``(8, 8, 8, 5, 5, 5)`` (Cosmos DI: 64000 codes).
    """

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        self.dim = len(self.levels)
        self.n_embed = math.prod(self.levels)
        basis = [1]
        for v in self.levels[:-1]:
            basis.append(basis[-1] * v)
        self.basis = tuple(basis)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int32), persistent=False)
        self.register_buffer("_basis", torch.tensor(self.basis, dtype=torch.int32), persistent=False)

    def _consts(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(half_l, offset, shift, half_width) as float32 ``[d, 1, 1]`` on ``device`` (Cosmos' arithmetic)."""
        lv = torch.tensor(self.levels, dtype=torch.int32, device=device)
        half_l = (lv - 1) * (1 + EPS) / 2  # int32 * python float -> float32
        offset = torch.where(lv % 2 == 0, 0.5, 0.0).to(torch.float32)
        shift = (offset / half_l).atanh()
        half_width = (lv // 2).to(torch.float32)
        return tuple(t.view(-1, 1, 1) for t in (half_l, offset, shift, half_width))  # type: ignore[return-value]

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected latents [B, {self.dim}, h, w], got {tuple(z.shape)}")

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, d, h, w]`` -> float32 bounded values (before rounding), in ``(-L/2, L/2)``."""
        half_l, offset, shift, _ = self._consts(z.device)
        return (z.float() + shift).tanh() * half_l - offset

    def digits(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, d, h, w]`` latents -> int64 digits ``[B, d, h, w]``, digit i in ``[0, L_i)``."""
        self._check(z)
        with torch.no_grad(), _no_autocast(z.device):
            _, _, _, half_width = self._consts(z.device)
            return (torch.round(self.bound(z)) + half_width).long()

    def codes_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, d, h, w]`` latents (any float dtype) -> ``[B, h, w]`` int64 mixed-radix indices."""
        basis = torch.tensor(self.basis, dtype=torch.long, device=z.device)
        return (self.digits(z) * basis.view(1, -1, 1, 1)).sum(1)

    def indices_to_digits(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 -> ``[B, d, h, w]`` int64 digits."""
        basis = torch.tensor(self.basis, dtype=torch.long, device=indices.device).view(1, -1, 1, 1)
        levels = torch.tensor(self.levels, dtype=torch.long, device=indices.device).view(1, -1, 1, 1)
        return (indices.long()[:, None] // basis) % levels

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 -> ``[B, d, h, w]`` float32 codes in [-1, 1]."""
        _, _, _, half_width = self._consts(indices.device)
        return (self.indices_to_digits(indices).float() - half_width) / half_width

    def all_codes(self) -> torch.Tensor:
        """``[prod(levels), d]`` float32: row i is the code of index i (the exact implicit codebook)."""
        idx = torch.arange(self.n_embed, device=self._levels.device).view(1, -1, 1)
        return self.indices_to_codes(idx)[0, :, :, 0].t().contiguous()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Training pass: straight-through rounding of the bounded latents; float32.

        ``latents`` are the bounded values scaled like the codes (``bound(z) / (L // 2)``), ``codes``
        the rounded ones; FSQ needs no codebook or commitment loss.
        """
        self._check(z)
        with _no_autocast(z.device):
            _, _, _, half_width = self._consts(z.device)
            bounded = self.bound(z)
            rounded = torch.round(bounded)
            latents = bounded / half_width
            codes = rounded / half_width
            quantized = latents + (codes - latents).detach()
        basis = torch.tensor(self.basis, dtype=torch.long, device=z.device).view(1, -1, 1, 1)
        indices = ((rounded.detach() + half_width).long() * basis).sum(1)
        return QuantizerOutput(quantized, indices, latents, codes.detach())

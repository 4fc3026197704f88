"""Quantizers: nearest-code lookup (plain or l2-normalised) and taming's Gumbel tokeniser.

Both are pure functions of their weights: nothing here changes a codebook (EMA updates and
dead-code restarts live in ``imagetok.train``). Distances and argmins always run in float32,
whatever dtype the surrounding network uses, and the search is chunked so memory stays bounded
for large codebooks and many vectors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Elements of one distance block (float32): 2**22 -> 16 MiB. A block holds `rows` vectors against
# the whole codebook, so 16384 codes x 65536 vectors is searched 256 vectors at a time.
CHUNK_ELEMENTS = 2**22
MAX_ROWS = 1024


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each row of ``z``.

    Args:
        z: ``[N, D]`` vectors; computed in float32.
        codebook: ``[K, D]`` codes; computed in float32.
        chunk_elements: upper bound on the elements of one ``[rows, K]`` distance block.

    Returns:
        LongTensor ``[N]`` in ``[0, K)``. Ties go to the lowest index.

    Every block has the same number of rows (the last one is zero-padded), so a vector's
    distances are computed by the same kernel call shape whatever the batch size: tokens do not
    change with how many images are encoded together.
    """
    z = z.float()
    codebook = codebook.float()
    n, k = z.shape[0], codebook.shape[0]
    rows = max(1, min(MAX_ROWS, chunk_elements // k))
    e_sq = codebook.pow(2).sum(1)  # [K]; |z|^2 is constant per row and does not change the argmin
    e_t = codebook.t()
    out = torch.empty(n, dtype=torch.long, device=z.device)
    for start in range(0, n, rows):
        block = z[start : start + rows]
        m = block.shape[0]
        if m < rows:
            block = torch.cat([block, block.new_zeros(rows - m, block.shape[1])])
        dist = torch.addmm(e_sq, block, e_t, beta=1.0, alpha=-2.0)
        out[start : start + m] = dist.argmin(1)[:m]
    return out


class QuantizerOutput(NamedTuple):
    """What a quantizer's ``forward`` returns (used by training code).

    quantized: ``[B, D, h, w]`` codes with the straight-through gradient to ``latents``.
    indices: ``[B, h, w]`` int64.
    latents: ``[B, D, h, w]`` float32 encoder vectors as compared with the codes (l2-normalised
        when the codebook is).
    codes: ``[B, D, h, w]`` float32 selected codes, differentiable w.r.t. the codebook.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    latents: torch.Tensor
    codes: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer over an ``nn.Embedding`` codebook.

    Args:
        n_embed: codebook size K.
        embed_dim: code dimension D.
        norm: ``"none"``, or ``"l2"`` to l2-normalise latents and codes before the search and use
            the normalised codes for decoding (LlamaGen, ViT-VQGAN).

    State dict: ``embedding.weight`` ``[K, D]`` (taming's name).
    """

    def __init__(self, n_embed: int, embed_dim: int, norm: str = "none"):
        super().__init__()
        self.n_embed, self.embed_dim, self.norm = n_embed, embed_dim, norm
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)  # taming's init

    def codebook(self) -> torch.Tensor:
        """``[K, D]`` float32 codes as used for lookup (normalised when ``norm == "l2"``)."""
        w = self.embedding.weight.float()
        return F.normalize(w, dim=1) if self.norm == "l2" else w

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"expected latents [B, {self.embed_dim}, h, w], got {tuple(z.shape)}")
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
        return F.normalize(flat, dim=1) if self.norm == "l2" else flat

    def codes_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, h, w]`` latents (any float dtype) -> ``[B, h, w]`` int64 nearest-code indices."""
        b, _, h, w = z.shape
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):  # float32 even under autocast
            idx = nearest_code(self._flat(z), self.codebook())
        return idx.view(b, h, w)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 indices -> ``[B, D, h, w]`` float32 codes."""
        return F.embedding(indices, self.codebook()).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize with a straight-through estimator; see :class:`QuantizerOutput`."""
        b, _, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):  # float32 even under autocast
            flat = self._flat(z)
            with torch.no_grad():
                idx = nearest_code(flat, self.codebook())
            latents = flat.view(b, h, w, -1).permute(0, 3, 1, 2)
            codes = self.indices_to_codes(idx.view(b, h, w))
        quantized = latents + (codes - latents).detach()
        return QuantizerOutput(quantized, idx.view(b, h, w), latents, codes)


class GumbelQuantizer(nn.Module):
    """taming's ``GumbelQuantize`` used deterministically: token = argmax of ``proj(h)``.

    Args:
        num_hiddens: channels of ``h`` (taming feeds ``quant_conv`` output with z_channels).
        embed_dim: code dimension D.
        n_embed: codebook size K.

    State dict: ``proj.{weight,bias}`` ``[K, num_hiddens, 1, 1]``, ``embed.weight`` ``[K, D]``.
    """

    def __init__(self, num_hiddens: int, embed_dim: int, n_embed: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def codebook(self) -> torch.Tensor:
        return self.embed.weight.float()

    def codes_to_indices(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, num_hiddens, h, w]`` -> ``[B, h, w]`` int64 (argmax of the float32 logits)."""
        with torch.no_grad():
            # One image at a time: logits are [K, h, w] per image, bounded for big codebooks.
            return torch.stack(
                [F.conv2d(x[None].float(), self.proj.weight.float(), self.proj.bias.float()).argmax(1)[0] for x in h]
            )

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 -> ``[B, D, h, w]`` float32 codes."""
        return F.embedding(indices, self.codebook()).permute(0, 3, 1, 2)

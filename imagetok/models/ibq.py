"""Index Propagation Quantization (IBQ, SEED-Voken, arXiv:2412.02692): the code with the largest dot product.

``IndexPropagationQuantize`` picks ``argmax_n softmax(z . E_n)`` = ``argmax_n z . E_n`` with no
normalisation of ``z`` or ``E`` -- *not* the nearest code: with an unnormalised codebook the two
disagree almost everywhere. The token of a vector is the exact argmax of the float32 inputs: a
float32 product is certified by a rigorous error bound, rows it cannot decide are recomputed in
float64, so tokens never depend on the batch, the device's matmul blocking or autocast.

State dict: ``embedding.weight`` ``[K, D]`` (SEED-Voken's name).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import _F32_EPS, QuantizerOutput, _fp32_matmul_input_eps, _no_autocast

CHUNK_ELEMENTS = 2**22  # [rows, K] logits per block: 16 MiB in float32


def max_dot_code(z: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Index of the codebook row with the largest dot product, for each row of ``z``.

    Args:
        z: ``[N, D]`` vectors (any float dtype; used as their float32 values).
        codebook: ``[K, D]`` codes (used as float32 values).
        chunk_elements: bound on one ``[rows, K]`` block of logits.

    Returns:
        LongTensor ``[N]`` in ``[0, K)``: the exact argmax (lowest index on ties) of ``z . e`` over the
        float32 inputs, decided per row (independent of the other rows). Non-finite rows get 0.
    """
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1] or codebook.shape[0] == 0:
        raise ValueError(f"expected z [N, D] and codebook [K, D], K > 0; got {tuple(z.shape)} and {tuple(codebook.shape)}")
    with torch.no_grad(), _no_autocast(z.device):
        e = codebook.detach().to(device=z.device, dtype=torch.float32).contiguous()
        z = z.detach().float().contiguous()
        k, d = e.shape
        # |fl(z.e) - z.e| <= c |z| |e| (float32 sums of d products; inputs rounded when TF32/bf16 is allowed)
        u = _fp32_matmul_input_eps()
        gamma = (d + 2) * _F32_EPS / (1 - (d + 2) * _F32_EPS)
        c = 2 * u + u * u + gamma * (1 + u) ** 2
        e_max = float(torch.linalg.vector_norm(e, dim=1).max()) * (1 + 2 * gamma)
        rows = max(1, min(1024, chunk_elements // k))
        out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
        for s in range(0, z.shape[0], rows):
            zb = z[s : s + rows]
            logits = zb @ e.t()  # [n, K]
            if k == 1:
                out[s : s + rows] = 0
                continue
            top = logits.topk(2, dim=1)
            err = c * torch.linalg.vector_norm(zb.double(), dim=1) * e_max * (1 + 4 * _F32_EPS)
            gap = top.values[:, 0].double() - top.values[:, 1].double()
            idx = top.indices[:, 0].clone()
            unsure = ~(gap > 2 * err)  # also NaN
            rows_u = unsure.nonzero()[:, 0]
            if rows_u.numel():
                exact = zb[rows_u].double() @ e.double().t()
                best = exact.argmax(1)  # first maximum
                bad = ~torch.isfinite(zb[rows_u]).all(1)
                idx[rows_u] = best.masked_fill(bad, 0)
            out[s : s + rows] = idx
        return out


class IBQuantizer(nn.Module):
    """SEED-Voken's ``IndexPropagationQuantize`` at inference: token = argmax of ``z . E``.

    Args:
        n_embed: codebook size K.
        embed_dim: code dimension D.
    """

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.embedding = nn.Embedding(n_embed, embed_dim)  # N(0, 1) init, as IndexPropagationQuantize

    def codebook(self) -> torch.Tensor:
        """``[K, D]`` float32 codes."""
        return self.embedding.weight.float()

    def codes_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, h, w]`` latents (any float dtype) -> ``[B, h, w]`` int64 (argmax of float32 ``z . E``)."""
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"expected latents [B, {self.embed_dim}, h, w], got {tuple(z.shape)}")
        b, _, h, w = z.shape
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
        return max_dot_code(flat, self.codebook()).view(b, h, w)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 -> ``[B, D, h, w]`` float32 codes (``E[index]``)."""
        return F.embedding(indices, self.codebook()).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Training pass (IBQ's straight-through: ``(hard - sg(soft) + soft) @ E``); float32."""
        b, _, h, w = z.shape
        with _no_autocast(z.device):
            latents = z.float()
            e = self.codebook()
            logits = torch.einsum("bdhw,nd->bnhw", latents, e)
            soft = logits.softmax(1)
            idx = self.codes_to_indices(latents)
            hard = F.one_hot(idx, self.n_embed).permute(0, 3, 1, 2).to(soft.dtype)
            quantized = torch.einsum("bnhw,nd->bdhw", hard - soft.detach() + soft, e)
            codes = self.indices_to_codes(idx)
        return QuantizerOutput(quantized, idx, latents, codes)

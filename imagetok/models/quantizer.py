"""Quantizers: nearest-code lookup (plain or l2-normalised) and taming's Gumbel tokeniser.

Both are pure functions of their weights: nothing here changes a codebook (EMA updates and
dead-code restarts live in ``imagetok.train``). Latents are searched as float32 values, whatever
dtype or autocast the surrounding network uses, and :func:`nearest_code` returns their exact
nearest code (a fast bf16/float32 screen with a rigorous error bound, float64 where it cannot
decide); the search is chunked so memory stays bounded for large codebooks and many vectors.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Elements of one distance block: 2**22 -> 16 MiB in float32. A block holds `rows` vectors against
# the whole codebook, so 16384 codes x 65536 vectors are searched 256 vectors at a time.
CHUNK_ELEMENTS = 2**22
MAX_ROWS = 1024
# Codes of at most this dimension are searched in blocks of at most 2**20 elements (4 MiB in
# float32): the distance matrix, not the arithmetic, is the cost there, so blocks stay in cache.
SMALL_DIM, SMALL_DIM_ELEMENTS = 32, 2**20
# Screening in bfloat16 pays off from this code dimension on (CPUs with AVX512-BF16 or AMX).
BF16_MIN_DIM = 64
# A row with more candidate codes than this after float32 screening is decided over the whole
# codebook in float64.
MAX_CANDIDATES = 32
# Rows decided over the whole codebook are processed in groups of this many (zero-padded, so the
# float64 blocks have one shape whatever the batch), against codes in blocks of at most this many
# float64 elements ([group, codes, D]: 32 MiB).
DENSE_GROUP = 16
DENSE_BLOCK = 2**22

_F32_EPS, _BF16_EPS = 2.0**-24, 2.0**-8  # unit roundoffs (round to nearest)


def _gamma(n: int) -> float:
    """Bound on the relative error of an n-term float32 sum of products (Higham's gamma_n)."""
    return n * _F32_EPS / (1 - n * _F32_EPS)


@functools.lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - a torch without these probes: assume no
        return False


def _fp32_matmul_input_eps() -> float:
    """Relative rounding of float32 matmul inputs: 0, or bf16's when TF32/bf16 matmuls are allowed."""
    if torch.get_float32_matmul_precision() != "highest":
        return _BF16_EPS
    for backend in ("cuda", "mkldnn"):
        matmul = getattr(getattr(torch.backends, backend, None), "matmul", None)
        if getattr(matmul, "allow_tf32", False) or getattr(matmul, "fp32_precision", "none") not in ("none", "ieee"):
            return _BF16_EPS
    return 0.0


def _no_autocast(device: torch.device):
    """Switch autocast off on ``device`` (a bf16/fp16 autocast region must not reach the search)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class _CodeSearch:
    """Exact nearest-code search against one codebook, prepared once per call.

    ``screen="f64"``: float64 distances in the direct form ``sum((z - e)**2)``, argmin directly (a
    reference; much slower).

    ``"bf16"`` / ``"fp32"``: a block of vectors is *screened* with one matrix product in that
    precision. A rigorous bound ``|approx - exact| <= A + u*|approx|`` on the screening error then
    certifies the screened argmin of nearly every row (its distance is below every other code's
    by more than the error). Rows the bf16 screen cannot certify are screened again in float32;
    rows still open get their candidates' exact squared distances ``sum((z - e)**2)`` in float64
    (past ``MAX_CANDIDATES`` candidates, a float64 search of the whole codebook).

    Either way the answer is the argmin of the direct-form float64 distances of the float32 inputs
    (exact up to float64 rounding of ``(z - e)**2`` and its sum) whatever the screening precision,
    the hardware or the other vectors in the batch. The
    argmin over codes is taken in two cheap steps (minima of groups of codes, then inside the
    best group), since a plain argmin or min-with-index is several times slower than ``amin``.
    """

    def __init__(self, e: torch.Tensor, screen: str, norms: torch.Tensor | None = None):
        self.e, (self.k, self.d) = e, e.shape
        self.screen = screen
        self.group = math.gcd(self.k, 64)
        self._fp32: _CodeSearch | None = None
        self._e64: torch.Tensor | None = None
        if screen == "f64":
            self._dense_setup()
            return
        if norms is None:
            norms = torch.linalg.vector_norm(e, dim=1)  # float32: relative error <= gamma_d + eps
        self.norms = norms
        self.e_max = float(norms.max()) * (1 + 2 * _gamma(self.d + 1))
        e_sq = norms.double() ** 2
        if screen == "bf16":
            # One product gives |z|^2 + |e|^2 - 2 z.e, accumulated in float32 before a single
            # rounding to bfloat16: codes [e | |e|^2 hi, lo | 1, 1 | 0 pad] against vectors
            # [-2z | 1, 1 | |z|^2 hi, lo | 0 pad]; -2z is exact in bf16, norms are split hi + lo.
            self.cols = -(-(self.d + 4) // 16) * 16
            ea = torch.empty(self.k, self.cols, dtype=torch.bfloat16, device=e.device)
            ea[:, : self.d] = e
            ea[:, self.d + 4 :] = 0.0
            hi = e_sq.to(torch.bfloat16)
            ea[:, self.d], ea[:, self.d + 1] = hi, (e_sq - hi.double()).to(torch.bfloat16)
            ea[:, self.d + 2 : self.d + 4] = 1.0
            self.ea = ea
            u = _BF16_EPS
            # A = c_prod |z||e| + c_sq (|z| + |e|)^2: z and e rounded to bf16 in the products;
            # |e|^2 from the float32 norm, hi/lo splits, float32 sums. Then x2 margin.
            self.c_prod = 2 * (4 * u + 2 * u * u)
            self.c_sq = 2 * (2 * u * u + 3 * _gamma(self.cols + 2) * (1 + 2 * u))
            self.u_out = 2.0**-7  # the final rounding to bf16 (one ulp: any rounding mode)
        else:
            self.e_sq = e_sq.float()  # |e|^2 rounded to float32
            u = _fp32_matmul_input_eps()  # 0 unless TF32/bf16 matmuls are allowed
            self.c_prod = 2 * 2 * (2 * u + u * u)
            self.c_sq = 2 * 3 * _gamma(self.d + 2) * (1 + 2 * u)
            self.u_out = 0.0

    def rows(self, chunk_elements: int) -> int:
        """Vectors per block: ``chunk_elements // K``, capped."""
        elements = min(chunk_elements, SMALL_DIM_ELEMENTS) if self.d <= SMALL_DIM else chunk_elements
        return max(1, min(MAX_ROWS, elements // self.k))

    def search(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` [n, D] float32 contiguous -> [n] int64 exact nearest codes."""
        n = z.shape[0]
        if self.k == 1 or n == 0:
            return torch.zeros(n, dtype=torch.long, device=z.device)
        if self.screen == "f64":
            return self._dense(z)
        z_sq = (z.double() ** 2).sum(1)
        if self.screen == "bf16":
            za = torch.empty(n, self.cols, dtype=torch.bfloat16, device=z.device)
            za[:, : self.d] = z * -2.0
            za[:, self.d : self.d + 2] = 1.0
            za[:, self.d + 4 :] = 0.0
            hi = z_sq.to(torch.bfloat16)
            za[:, self.d + 2], za[:, self.d + 3] = hi, (z_sq - hi.double()).to(torch.bfloat16)
            approx = torch.mm(self.ea, za.t()).t()  # [n, K] view of a [K, n] product: |z - e|^2, bf16
            # Non-negative bf16 values order like their int16 bit patterns (faster reductions).
            k1, v1, v2 = self._two_smallest(approx.view(torch.int16), torch.iinfo(torch.int16).max)
            m1, m2 = v1.view(torch.bfloat16).double(), v2.view(torch.bfloat16).double()
            shift = torch.zeros_like(z_sq)
        else:
            approx = torch.addmm(self.e_sq, z, self.e.t(), beta=1.0, alpha=-2.0)  # [n, K], |z-e|^2 - |z|^2
            k1, v1, v2 = self._two_smallest(approx, float("inf"))
            m1, m2 = v1.double(), v2.double()
            shift = z_sq  # approx + |z|^2 ~ |z - e|^2
        upper1, err = self._bounds(z_sq.sqrt(), m1, m2, shift)
        lower2 = m2 - self.u_out * m2.abs() - err
        unsure = ~(upper1 < lower2)  # also true for NaN
        if self.screen == "bf16":
            unsure |= v1 < 0  # a negative (or -0) bf16 value breaks the int16 order: redo the row
        rows = unsure.nonzero()[:, 0]
        if rows.numel():
            if self.screen == "bf16":
                if self._fp32 is None:
                    self._fp32 = _CodeSearch(self.e, "fp32", self.norms)
                k1[rows] = self._fp32.search(z[rows].contiguous())
            else:
                k1[rows] = self._decide(z[rows], approx[rows], upper1[rows], err[rows])
        return k1

    def _err(self, nz: torch.Tensor, e_norm: torch.Tensor) -> torch.Tensor:
        return self.c_prod * nz * e_norm + self.c_sq * (nz + e_norm) ** 2

    def _bounds(self, nz, m1, m2, shift) -> tuple[torch.Tensor, torch.Tensor]:
        """(upper bound on the best code's exact value, error bound A for any competing code).

        A code's screening error grows with its norm, and a code within distance r of z has
        norm <= |z| + r; so the bound uses min(max norm, |z| + sqrt(distance bound)).
        """
        e_max = torch.full_like(nz, self.e_max)
        a_max = self._err(nz, e_max)
        up = m1 + self.u_out * m1.abs() + a_max  # crude bound on the best code's value
        e1 = torch.minimum(e_max, nz + (up + shift).clamp_min(0).sqrt())
        upper1 = m1 + self.u_out * m1.abs() + self._err(nz, e1)
        # any code whose exact value is <= upper1 has norm <= |z| + sqrt(upper1 + shift)
        e2 = torch.minimum(e_max, nz + (upper1 + shift).clamp_min(0).sqrt() * (1 + 2 * _F32_EPS))
        return upper1, self._err(nz, e2)

    def _two_smallest(self, keys: torch.Tensor, top: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row of ``keys`` [n, K] (possibly a transposed view): argmin, min, second smallest."""
        n = keys.shape[0]
        cols = torch.arange(n, device=keys.device)
        if keys.stride(1) == 1:  # codes contiguous
            grouped = keys.view(n, self.k // self.group, self.group)
            gmin = grouped.amin(2)  # [n, K / group]
        else:  # [K, n] memory: reduce over the leading dimension, vectorised along vectors
            grouped = keys.t().view(self.k // self.group, self.group, n)
            gmin = grouped.amin(1).t()
        if gmin.shape[1] > 1:
            two = gmin.topk(2, dim=1, largest=False)
            best_group, other = two.indices[:, 0], two.values[:, 1]
        else:
            best_group = torch.zeros(n, dtype=torch.long, device=keys.device)
            other = torch.full_like(gmin[:, 0], top)
        if keys.stride(1) == 1:
            inside = grouped[cols, best_group]  # [n, group] (a copy)
        else:
            inside = grouped[best_group, :, cols]
        j = inside.argmin(1)
        v1 = inside[cols, j]
        inside[cols, j] = top
        return best_group * self.group + j, v1, torch.minimum(inside.amin(1), other)

    def _decide(self, z: torch.Tensor, approx: torch.Tensor, upper1: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """Exact argmin for rows of a float32 screen that were not certified."""
        y = upper1 + err  # candidates j: lower(approx_j) = x - u|x| - A <= upper1
        thr = torch.where(y >= 0, y / (1 - self.u_out), y / (1 + self.u_out)).float()
        thr = torch.nextafter(thr, torch.full_like(thr, float("inf")))
        mask = approx <= thr[:, None]
        counts = mask.sum(1, dtype=torch.int32)
        out = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        idx = ((counts > 0) & (counts <= MAX_CANDIDATES)).nonzero()[:, 0]
        if idx.numel():
            pairs = mask[idx].nonzero()
            r, k = idx[pairs[:, 0]], pairs[:, 1]
            dist = ((z[r].double() - self.e[k].double()) ** 2).sum(1)
            best = torch.full((z.shape[0],), float("inf"), dtype=torch.float64, device=z.device)
            best.scatter_reduce_(0, r, dist, "amin")
            win = torch.full((z.shape[0],), self.k, dtype=torch.long, device=z.device)
            win.scatter_reduce_(0, r, torch.where(dist == best[r], k, self.k), "amin")
            out[idx] = win[idx]
        many = (counts > MAX_CANDIDATES).nonzero()[:, 0]
        if many.numel():
            out[many] = self._dense(z[many])
        # rows without any candidate hold non-finite values: token 0 (as argmin over NaN gives)
        return out.clamp_(0, self.k - 1)

    def _dense_setup(self) -> None:
        if self._e64 is None:
            self._e64 = self.e.double()

    def _dense(self, z: torch.Tensor) -> torch.Tensor:
        """Float64 argmin over the whole codebook with the direct form ``sum((z - e)**2)``.

        The expanded form ``|e|^2 - 2 z.e`` loses everything below float64 precision of
        ``|z|^2 + |e|^2`` (not of the distance), so far-off vectors with near-tied codes could get a
        code that is not the nearest. Rows go ``DENSE_GROUP`` at a time, zero-padded, and codes in
        blocks of ``DENSE_BLOCK`` elements, so every block has one shape whatever the batch; ties go
        to the lowest index; non-finite rows get 0.
        """
        self._dense_setup()
        e64 = self._e64
        n = z.shape[0]
        out = torch.zeros(n, dtype=torch.long, device=z.device)
        kb = max(1, DENSE_BLOCK // (DENSE_GROUP * self.d))
        for start in range(0, n, DENSE_GROUP):
            m = min(DENSE_GROUP, n - start)
            z64 = torch.zeros(DENSE_GROUP, 1, self.d, dtype=torch.float64, device=z.device)
            z64[:m, 0] = z[start : start + m]
            best = torch.full((DENSE_GROUP,), float("inf"), dtype=torch.float64, device=z.device)
            idx = torch.zeros(DENSE_GROUP, dtype=torch.long, device=z.device)
            for k0 in range(0, self.k, kb):
                dist = ((z64 - e64[None, k0 : k0 + kb]) ** 2).sum(2)  # [group, kb], direct form
                v, j = dist.min(1)  # first minimum: the lowest index on ties
                better = v < best  # strict: an earlier block keeps its tie
                best = torch.where(better, v, best)
                idx = torch.where(better, j + k0, idx)
            out[start : start + m] = idx[:m]
        return out


def nearest_code(
    z: torch.Tensor, codebook: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS, screen: str = "auto"
) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each row of ``z``.

    Args:
        z: ``[N, D]`` vectors (any float dtype; searched as their float32 values).
        codebook: ``[K, D]`` codes (searched as float32 values).
        chunk_elements: bound on the elements of one ``[rows, K]`` distance block (memory: 2-8
            bytes each, plus a bf16 or float64 copy of the codebook).
        screen: ``"auto"``, ``"bf16"``, ``"fp32"`` or ``"f64"``: how distances are computed (see
            :class:`_CodeSearch`); ``auto`` picks bf16 on CPUs with AVX512-BF16/AMX for
            ``D >= 64``, else fp32. It changes the speed only, never the result.

    Returns:
        LongTensor ``[N]`` in ``[0, K)``: the nearest code of each float32 vector, i.e. what a
        float64 brute-force argmin of ``sum((z - e)**2)`` gives (ties go to the lowest index).
        Non-finite rows get 0.

    Each vector's token is decided from that vector alone, so it does not depend on which or how
    many other vectors are searched with it.
    """
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1] or codebook.shape[0] == 0:
        raise ValueError(f"expected z [N, D] and codebook [K, D], K > 0; got {tuple(z.shape)} and {tuple(codebook.shape)}")
    if screen not in ("auto", "bf16", "fp32", "f64"):
        raise ValueError(f"screen must be 'auto', 'bf16', 'fp32' or 'f64', got {screen!r}")
    if screen == "bf16" and z.device.type != "cpu":
        # the error bound assumes one fp32-accumulated GEMM rounded once (oneDNN on CPU); CUDA may
        # split the reduction in reduced precision
        raise ValueError(f"screen='bf16' is only sound on the CPU, got a tensor on {z.device}; use 'auto' or 'fp32'")
    with torch.no_grad(), _no_autocast(z.device):
        e = codebook.detach().to(device=z.device, dtype=torch.float32).contiguous()
        if screen == "auto":
            d, cpu = e.shape[1], z.device.type == "cpu"
            screen = "bf16" if cpu and d >= BF16_MIN_DIM and _cpu_has_fast_bf16() else "fp32"
        search = _CodeSearch(e, screen)
        z = z.detach().float()
        rows = search.rows(chunk_elements)
        out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
        for start in range(0, z.shape[0], rows):
            out[start : start + rows] = search.search(z[start : start + rows].contiguous())
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
        with torch.no_grad(), _no_autocast(h.device):  # float32 logits even under autocast
            # One image at a time: logits are [K, h, w] per image, bounded for big codebooks.
            return torch.stack(
                [F.conv2d(x[None].float(), self.proj.weight.float(), self.proj.bias.float()).argmax(1)[0] for x in h]
            )

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` int64 -> ``[B, D, h, w]`` float32 codes."""
        return F.embedding(indices, self.codebook()).permute(0, 3, 1, 2)

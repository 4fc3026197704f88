"""Codebook health: initialisation from data, EMA updates, dead-code restarts, usage statistics.

These are the only functions that write a codebook outside the optimiser. Under
torch.distributed, counts and EMA statistics are all-reduced and replacements are drawn on rank 0
and broadcast, so every rank keeps an identical codebook.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..models.quantizer import VectorQuantizer


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (via the GPU for NCCL, which cannot reduce CPU tensors)."""
    if _distributed():
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            tmp = t.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(tmp)
            t.copy_(tmp.to(t.device))
        else:
            dist.all_reduce(t)
    return t


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``[N, D]`` rows from every rank (N may differ per rank)."""
    if not _distributed():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    padded = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])


def _set_rows(quantizer: VectorQuantizer, rows: torch.Tensor, values: torch.Tensor) -> None:
    with torch.no_grad():
        if _distributed():
            dist.broadcast(values, src=0)
        quantizer.embedding.weight[rows] = values.to(quantizer.embedding.weight.dtype)


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: ``k`` rows of ``x`` ``[N, D]`` chosen with D^2 weighting (with replacement if N < k)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(p, 1, generator=generator))
        centers.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    return torch.stack(centers)


def init_codebook(quantizer: VectorQuantizer, latents: torch.Tensor, method: str, seed: int) -> None:
    """Set every code from encoder outputs ``latents`` ``[N, D]`` (float32, as the quantizer compares them).

    ``"sample"`` picks random rows (plus 1% noise so repeated rows differ); ``"kmeans++"`` uses
    k-means++ seeding. Computed on rank 0 and broadcast.
    """
    k = quantizer.n_embed
    x = _gather_rows(latents.detach().float())
    g = torch.Generator().manual_seed(seed)
    x = x.cpu()
    if method == "kmeans++":
        codes = kmeans_pp(x, k, g)
    else:
        idx = torch.randperm(x.shape[0], generator=g)[:k] if x.shape[0] >= k else torch.randint(x.shape[0], (k,), generator=g)
        codes = x[idx]
    codes = codes + 0.01 * codes.std() * torch.randn(codes.shape, generator=g)
    if quantizer.norm == "l2":
        codes = F.normalize(codes, dim=1)
    _set_rows(quantizer, torch.arange(k), codes.to(quantizer.embedding.weight.device))


class UsageTracker:
    """Counts code use since the last reset; restarts dead codes from recent encoder outputs."""

    def __init__(self, n_embed: int):
        self.counts = torch.zeros(n_embed, dtype=torch.long)

    def update(self, indices: torch.Tensor) -> None:
        self.counts += torch.bincount(indices.flatten().cpu(), minlength=self.counts.numel())

    def reduced(self) -> torch.Tensor:
        """Counts summed over all ranks (a copy)."""
        return _all_reduce(self.counts.clone())

    def stats(self) -> dict[str, float]:
        """Fraction of codes used and perplexity of the counts since the last reset (all ranks)."""
        c = self.reduced().double()
        total = float(c.sum())
        if total == 0:
            return {"usage": 0.0, "perplexity": 0.0}
        p = c[c > 0] / total
        return {"usage": float((c > 0).double().mean()), "perplexity": math.exp(float(-(p * p.log()).sum()))}

    def restart_dead(self, quantizer: VectorQuantizer, latents: torch.Tensor, seed: int, ema: EMACodebook | None = None) -> int:
        """Re-seed codes unused since the last reset with random rows of ``latents`` ``[N, D]``
        (gathered from every rank); returns how many were restarted and resets the counts.

        With ``ema``, the restarted codes' EMA statistics restart from the new values too."""
        dead = (self.reduced() == 0).nonzero().flatten()
        n_dead = int(dead.numel())
        if n_dead:
            x = _gather_rows(latents.detach().float()).cpu()
            g = torch.Generator().manual_seed(seed)
            pick = x[torch.randint(x.shape[0], (n_dead,), generator=g)]
            pick = pick + 0.01 * pick.std() * torch.randn(pick.shape, generator=g)
            if quantizer.norm == "l2":
                pick = F.normalize(pick, dim=1)
            _set_rows(quantizer, dead.to(quantizer.embedding.weight.device), pick.to(quantizer.embedding.weight.device))
            if ema is not None:
                ema.reset_rows(dead, quantizer.embedding.weight.detach()[dead.to(quantizer.embedding.weight.device)])
        self.counts.zero_()
        return n_dead


class EMACodebook:
    """Exponential-moving-average codebook updates (van den Oord et al. 2017, appendix A.1;
    Razavi et al. 2019), used instead of the codebook loss.

    Per code k: ``N_k <- d N_k + (1 - d) n_k`` and ``m_k <- d m_k + (1 - d) sum of the latents
    assigned to k``; the code becomes ``m_k / N~_k`` with Laplace-smoothed counts
    ``N~_k = (N_k + eps) / (sum N + K eps) * sum N``. The statistics start at ``N_k = 1``,
    ``m_k = e_k`` (so unused codes stay where they are instead of drifting to 0 or blowing up).
    Accumulate every micro-batch with :meth:`accumulate`, then :meth:`step` once per optimiser
    step; under torch.distributed the batch statistics are all-reduced first, so every rank
    computes the same codebook.
    """

    def __init__(self, quantizer: VectorQuantizer, decay: float, eps: float = 1e-5):
        w = quantizer.embedding.weight.detach().float()
        self.decay, self.eps = decay, eps
        self.cluster_size = torch.ones(w.shape[0], device=w.device)
        self.embed_sum = w.clone()
        self._counts = torch.zeros_like(self.cluster_size)
        self._sums = torch.zeros_like(self.embed_sum)

    def accumulate(self, latents: torch.Tensor, indices: torch.Tensor) -> None:
        """Add one micro-batch: ``latents`` ``[N, D]`` (float32, as compared with the codes) and
        their code ``indices`` ``[N]`` int64."""
        idx = indices.flatten().to(self._counts.device)
        self._counts += torch.bincount(idx, minlength=self._counts.numel()).float()
        self._sums.index_add_(0, idx, latents.detach().float().to(self._sums.device))

    @torch.no_grad()
    def step(self, quantizer: VectorQuantizer) -> None:
        """Fold the accumulated batch statistics (summed over ranks) into the EMA and write the codebook."""
        counts, sums = _all_reduce(self._counts), _all_reduce(self._sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        k = self.cluster_size.numel()
        smoothed = (self.cluster_size + self.eps) / (n + k * self.eps) * n
        quantizer.embedding.weight.copy_((self.embed_sum / smoothed[:, None]).to(quantizer.embedding.weight.dtype))
        self._counts.zero_()
        self._sums.zero_()

    def reset_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Restart codes ``rows`` at ``values`` ``[len(rows), D]`` with a count of 1."""
        rows = rows.to(self.cluster_size.device)
        self.cluster_size[rows] = 1.0
        self.embed_sum[rows] = values.float().to(self.embed_sum.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"cluster_size": self.cluster_size, "embed_sum": self.embed_sum}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["cluster_size"].shape != self.cluster_size.shape or state["embed_sum"].shape != self.embed_sum.shape:
            raise ValueError("EMA codebook statistics do not match the codebook shape")
        self.cluster_size = state["cluster_size"].float().to(self.cluster_size.device)
        self.embed_sum = state["embed_sum"].float().to(self.embed_sum.device)

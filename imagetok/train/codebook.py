"""Codebook health: initialisation from data, dead-code restarts, usage statistics.

These are the only functions that write a codebook outside the optimiser. Under
torch.distributed, counts are all-reduced and replacements are drawn on rank 0 and broadcast, so
every rank keeps an identical codebook.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..models.quantizer import VectorQuantizer


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
        c = self.counts.clone()
        if _distributed():
            dist.all_reduce(c)
        return c

    def stats(self) -> dict[str, float]:
        """Fraction of codes used and perplexity of the counts since the last reset (all ranks)."""
        c = self.reduced().double()
        total = float(c.sum())
        if total == 0:
            return {"usage": 0.0, "perplexity": 0.0}
        p = c[c > 0] / total
        return {"usage": float((c > 0).double().mean()), "perplexity": math.exp(float(-(p * p.log()).sum()))}

    def restart_dead(self, quantizer: VectorQuantizer, latents: torch.Tensor, seed: int) -> int:
        """Re-seed codes unused since the last reset with random rows of ``latents`` ``[N, D]``;
        returns how many were restarted and resets the counts."""
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
        self.counts.zero_()
        return n_dead

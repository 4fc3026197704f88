"""Autoregressive sampling: temperature, top-k, top-p, classifier-free guidance, seeded draws.

Randomness is drawn up front as one float64 uniform per sample and position (``u`` ``[B, L]``), and
each token is picked by inverse CDF: the same ``u`` gives the same tokens whether the logits come
from the KV cache or from a full recomputation, and whatever the batch it is sampled in.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Mask (``-inf``) all but the ``top_k`` largest logits, then all outside the smallest set whose
    probability reaches ``top_p`` (the most likely token always stays). float ``[B, K]`` in and out."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def draw(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pick one token per row: argmax at temperature 0, else inverse CDF of ``softmax(logits / T)``
    at ``u`` (float ``[B]`` in [0, 1)). Returns int64 ``[B]``."""
    if temperature == 0:
        return logits.argmax(-1)
    cdf = (logits / temperature).softmax(-1).double().cumsum(-1)
    pick = torch.searchsorted(cdf, (u.to(cdf.device, torch.float64) * cdf[:, -1])[:, None], right=True)[:, 0]
    return pick.clamp_(max=logits.shape[-1] - 1)


def run(
    step: Callable[[Any, int, torch.Tensor | None], torch.Tensor],
    state: Any,
    length: int,
    u: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg: float | None = None,
) -> torch.Tensor:
    """Sample ``length`` tokens for ``B = u.shape[0]`` sequences.

    ``step(state, pos, prev)`` returns the logits ``[B, K]`` of position ``pos`` (``[2B, K]`` with
    ``cfg``: conditional rows then null-class rows, combined as ``null + cfg * (cond - null)``).
    Returns int64 ``[B, length]``.
    """
    B = u.shape[0]
    out: list[torch.Tensor] = []
    prev = None
    for pos in range(length):
        logits = step(state, pos, prev).float()
        if cfg is not None:
            cond, null = logits[:B], logits[B:]
            logits = null + cfg * (cond - null)
        tok = draw(filter_logits(logits, top_k, top_p), u[:, pos], temperature)
        out.append(tok)
        prev = tok if cfg is None else torch.cat([tok, tok])
    return torch.stack(out, 1)

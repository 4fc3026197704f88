"""Decoder-only transformer prior over raster-order tokens (taming-transformers' minGPT layout).

Layer names follow minGPT (``tok_emb``, ``pos_emb``, ``blocks.N.attn.c_attn``, ``ln_f``, ``head``).
The sequence is ``[c, t_0, ..., t_{L-2}]`` where ``c`` is a class token (``cls_emb`` row ``label``;
row ``num_classes`` is the null class used for classifier-free guidance, and the only row of an
unconditional prior, i.e. its start token); output ``i`` holds the logits of token ``t_i``.
Attention is ``F.scaled_dot_product_attention`` with a causal mask; sampling keeps a KV cache so
each new token costs one position's worth of compute.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)
        self.heads, self.dropout = heads, dropout

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None, pos: int = 0) -> torch.Tensor:
        """``x`` float ``[B, T, C]``. With ``kv`` (cache tensors ``[B, H, L, D]``), ``x`` is the one
        position ``pos`` (T == 1): its keys/values are stored and it attends to positions ``<= pos``."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if kv is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            kc, vc = kv
            kc[:, :, pos : pos + T] = k
            vc[:, :, pos : pos + T] = v
            y = F.scaled_dot_product_attention(q, kc[:, :, : pos + T], vc[:, :, : pos + T])
        return self.resid_drop(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.ln2 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, kv=None, pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), kv, pos)
        return x + self.mlp(self.ln2(x))


class TransformerPrior(nn.Module):
    """GPT over ``seq_len`` tokens of a ``vocab``-sized codebook, conditioned on a class token.

    Args:
        vocab: codebook size K (token ids in ``[0, K)``).
        seq_len: tokens per image (h * w).
        num_classes: 0 for an unconditional prior.
        cond: whether :meth:`forward` takes a per-position conditioning tensor (the bottom prior of
            a two-level model adds features of the top codes there).
    """

    def __init__(self, vocab: int, seq_len: int, width: int, depth: int, heads: int, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        self.vocab, self.seq_len, self.num_classes = vocab, seq_len, num_classes
        self.depth, self.heads, self.width = depth, heads, width
        self.tok_emb = nn.Embedding(vocab, width)
        self.cls_emb = nn.Embedding(num_classes + 1, width)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def _inputs(self, prefix: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        x = torch.cat([self.cls_emb(labels)[:, None], self.tok_emb(prefix)], 1)
        T = x.shape[1]
        x = x + self.pos_emb[:, :T]
        if cond is not None:
            x = x + cond[:, :T]
        return self.drop(x)

    def logits(self, prefix: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Full (uncached) pass. ``prefix`` int64 ``[B, T]`` with ``T < seq_len``, ``labels`` int64 ``[B]``
        (``num_classes`` = null), ``cond`` float ``[B, seq_len, width]`` or None. Returns float
        ``[B, T + 1, vocab]``: the logits of tokens ``0..T`` given the tokens before each."""
        x = self._inputs(prefix, labels, cond)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """int64 ``[B, seq_len]`` tokens -> float ``[B, seq_len, vocab]`` next-token logits."""
        return self.logits(tokens[:, :-1], labels, cond)

    # ----------------------------------------------------------------------------- sampling
    def start(self, labels: torch.Tensor, cond: torch.Tensor | None = None, use_cache: bool = True) -> dict[str, Any]:
        """Sampling state for a batch: labels ``[B]``, cond as in :meth:`logits`."""
        state: dict[str, Any] = {"labels": labels, "cond": cond, "tokens": []}
        if use_cache:
            B, D = labels.shape[0], self.width // self.heads
            p = self.pos_emb
            state["kv"] = [
                (p.new_zeros(B, self.heads, self.seq_len, D), p.new_zeros(B, self.heads, self.seq_len, D)) for _ in self.blocks
            ]
        return state

    def step(self, state: dict[str, Any], pos: int, prev: torch.Tensor | None) -> torch.Tensor:
        """Logits ``[B, vocab]`` of token ``pos`` given ``prev`` (token ``pos - 1``, ``[B]``; None at 0)."""
        if prev is not None:
            state["tokens"].append(prev)
        if "kv" not in state:  # full recomputation of the prefix (reference path)
            prefix = torch.stack(state["tokens"], 1) if state["tokens"] else state["labels"].new_zeros(len(state["labels"]), 0)
            return self.logits(prefix, state["labels"], state["cond"])[:, -1]
        x = self.cls_emb(state["labels"]) if pos == 0 else self.tok_emb(prev)
        x = x + self.pos_emb[0, pos]
        if state["cond"] is not None:
            x = x + state["cond"][:, pos]
        x = x[:, None]
        for block, kv in zip(self.blocks, state["kv"]):
            x = block(x, kv, pos)
        return self.head(self.ln_f(x))[:, 0]


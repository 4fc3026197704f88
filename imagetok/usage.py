"""Codebook usage: exact, streaming statistics of which codes a tokenizer uses over a dataset.

Usage is a pure function of token ids, never model state. :class:`UsageCounter` accumulates exact
counts over any number of batches (no rolling window, no per-batch perplexity) and
:meth:`UsageCounter.report` turns them into a frozen :class:`UsageReport`:

>>> counter = UsageCounter(1024)
>>> for batch in token_batches:            # int [B, h, w], [h, w] or a flat [N] stream
...     counter.update(batch)
>>> report = counter.report()              # codes used, dead codes, perplexity, Gini...

:func:`codebook_usage` does the same in one call, and :meth:`imagetok.Tokenizer.codebook_usage`
runs a tokenizer over images, folders or a data loader and returns a :class:`DatasetUsage` (one
report per codebook level: VQ-VAE-2 gives ``top`` and ``bottom``).

Definitions (``c_i`` = count of code ``i``, ``N = sum c_i``, ``p_i = c_i / N``, ``K`` = codebook size):

- ``entropy_bits = -sum p_i log2 p_i`` (over used codes); ``max_entropy_bits = log2 K``;
  ``perplexity = 2 ** entropy_bits`` (the number of equally used codes with the same entropy).
- ``top1pct_share`` / ``top10pct_share``: share of all tokens taken by the ``ceil(K / 100)`` /
  ``ceil(K / 10)`` most frequent codes.
- ``gini``: Gini coefficient of ``c`` over all K codes (dead ones included): 0 when every code is
  used equally, ``(K - 1) / K`` when one code takes every token.
- per-position usage: for each grid position, how many distinct codes appear there over the dataset.

Memory is bounded and does not grow with the dataset: a level needs ``8 * K`` bytes of counts plus,
for per-position usage, one bool per (position, code): ``h * w * K`` bytes (16x16 grid with 16 384
codes: 4 MiB). When ``h * w * K`` exceeds ``max_position_cells`` (default ``2**26``, i.e. 64 MiB)
per-position usage is skipped and the report says why; it is also dropped (with a note) when grids
of different shapes are mixed, or for flat 1-D token streams.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .errors import ImagetokError, InputError

FORMAT = "imagetok-usage/1"
REMAP_FORMAT = "imagetok-remap/1"
DEFAULT_MAX_POSITION_CELLS = 1 << 26  # bools: 64 MiB per level
MAX_LISTED_SKIPPED = 100  # skipped inputs listed by name; the count is always exact
IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
)
PLOT_HINT = "pip install 'imagetok[plot]'  (or: pip install matplotlib)"


class MissingDependencyError(ImagetokError, ImportError):
    """An optional dependency (matplotlib for plots) is not installed."""


# ------------------------------------------------------------------------------------ reports
@dataclass(frozen=True)
class UsageReport:
    """Usage statistics of one codebook over a token stream (see the module docstring).

    Attributes:
        codebook_size: K.
        tokens: number of token ids counted.
        grids: number of ``[h, w]`` grids (images) counted; 0 for flat 1-D streams.
        codes_used: codes seen at least once; ``used_fraction = codes_used / K``.
        dead_codes: ids never seen, ascending.
        perplexity, entropy_bits, max_entropy_bits, normalized_entropy: see module docstring
            (``normalized_entropy = entropy_bits / log2 K``; 1.0 when K == 1).
        top1pct_share, top10pct_share: share of tokens taken by the top 1% / 10% of codes.
        gini: Gini coefficient of the counts, in [0, 1).
        top_codes: ``(code, count)`` of the most frequent codes, most frequent first (ties: lower id).
        counts: count of every code, length K.
        grid: ``(h, w)`` of the grids counted, or None (mixed shapes or 1-D streams).
        position_distinct: ``[h][w]`` number of distinct codes seen at each position, or None.
        position_note: why ``position_distinct`` is None (else None).
        name: level name (``"top"``/``"bottom"`` for VQ-VAE-2), or None.
    """

    codebook_size: int
    tokens: int
    grids: int
    codes_used: int
    used_fraction: float
    dead_codes: tuple[int, ...]
    perplexity: float
    entropy_bits: float
    max_entropy_bits: float
    normalized_entropy: float
    top1pct_share: float
    top10pct_share: float
    gini: float
    top_codes: tuple[tuple[int, int], ...]
    counts: tuple[int, ...]
    grid: tuple[int, int] | None = None
    position_distinct: tuple[tuple[int, ...], ...] | None = None
    position_note: str | None = None
    name: str | None = None

    @property
    def dead_count(self) -> int:
        return len(self.dead_codes)

    @property
    def position_stats(self) -> dict[str, float] | None:
        """``{"min", "mean", "max"}`` of distinct codes per position, or None."""
        if self.position_distinct is None:
            return None
        flat = [v for row in self.position_distinct for v in row]
        return {"min": min(flat), "mean": sum(flat) / len(flat), "max": max(flat)}

    @classmethod
    def from_counts(
        cls,
        counts: torch.Tensor | np.ndarray | Sequence[int],
        *,
        grids: int = 0,
        grid: tuple[int, int] | None = None,
        position_distinct: Any = None,
        position_note: str | None = None,
        name: str | None = None,
        top: int = 10,
    ) -> "UsageReport":
        """Compute every statistic from a count vector (int ``[K]``, non-negative, sum > 0).

        Raises:
            InputError: empty, negative or all-zero counts.
        """
        c = torch.as_tensor(np.asarray(counts) if not isinstance(counts, torch.Tensor) else counts)
        if c.ndim != 1 or c.numel() == 0 or c.is_floating_point() or c.dtype == torch.bool:
            raise InputError(f"counts must be a non-empty 1-D integer vector, got {c.dtype} {tuple(c.shape)}")
        c = c.to(torch.int64).cpu()
        if int(c.min()) < 0:
            raise InputError("counts must be non-negative")
        k, n = c.numel(), int(c.sum())
        if n == 0:
            raise InputError("no tokens were counted, so there is no usage to report")
        used = c > 0
        p = c[used].double() / n
        entropy = 0.0 - float((p * torch.log2(p)).sum())  # 0.0 - x: no "-0.0" for one code
        max_entropy = math.log2(k)
        desc = torch.sort(c, descending=True, stable=True)
        cum = torch.cumsum(desc.values, 0)
        share = lambda frac: float(cum[max(1, math.ceil(k * frac)) - 1]) / n  # noqa: E731
        asc = desc.values.flip(0).double()
        ranks = torch.arange(1, k + 1, dtype=torch.float64)
        gini = float(2 * (ranks * asc).sum() / (k * n) - (k + 1) / k)
        n_top = min(max(top, 0), int(used.sum()))
        top_codes = tuple((int(i), int(v)) for i, v in zip(desc.indices[:n_top], desc.values[:n_top]))
        if position_distinct is not None:
            position_distinct = tuple(tuple(row) for row in np.asarray(position_distinct, dtype=np.int64).tolist())
        return cls(
            codebook_size=k,
            tokens=n,
            grids=int(grids),
            codes_used=int(used.sum()),
            used_fraction=int(used.sum()) / k,
            dead_codes=tuple(torch.nonzero(~used).flatten().tolist()),
            perplexity=2.0**entropy,
            entropy_bits=entropy,
            max_entropy_bits=max_entropy,
            normalized_entropy=entropy / max_entropy if k > 1 else 1.0,
            top1pct_share=share(0.01),
            top10pct_share=share(0.10),
            gini=max(0.0, gini),  # clamp -1e-17 rounding on uniform counts
            top_codes=top_codes,
            counts=tuple(c.tolist()),
            grid=tuple(grid) if grid is not None else None,
            position_distinct=position_distinct,
            position_note=position_note,
            name=name,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every field plus derived ``dead_count``, ``top_codes`` shares and
        ``per_position`` (``{"grid", "distinct", "min", "mean", "max"}`` or null)."""
        per_pos = None
        if self.position_distinct is not None:
            distinct = [list(r) for r in self.position_distinct]
            per_pos = {"grid": list(self.grid), "distinct": distinct, **self.position_stats}
        return {
            "name": self.name,
            "codebook_size": self.codebook_size,
            "tokens": self.tokens,
            "grids": self.grids,
            "grid": list(self.grid) if self.grid else None,
            "codes_used": self.codes_used,
            "used_fraction": self.used_fraction,
            "dead_count": self.dead_count,
            "dead_codes": list(self.dead_codes),
            "perplexity": self.perplexity,
            "entropy_bits": self.entropy_bits,
            "max_entropy_bits": self.max_entropy_bits,
            "normalized_entropy": self.normalized_entropy,
            "top1pct_share": self.top1pct_share,
            "top10pct_share": self.top10pct_share,
            "gini": self.gini,
            "top_codes": [{"code": c, "count": n, "share": n / self.tokens} for c, n in self.top_codes],
            "per_position": per_pos,
            "per_position_note": self.position_note,
            "counts": list(self.counts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UsageReport":
        """Inverse of :meth:`to_dict` (derived keys are ignored). Raises InputError if malformed."""
        try:
            per_pos = d["per_position"]
            return cls(
                codebook_size=int(d["codebook_size"]),
                tokens=int(d["tokens"]),
                grids=int(d["grids"]),
                codes_used=int(d["codes_used"]),
                used_fraction=float(d["used_fraction"]),
                dead_codes=tuple(int(v) for v in d["dead_codes"]),
                perplexity=float(d["perplexity"]),
                entropy_bits=float(d["entropy_bits"]),
                max_entropy_bits=float(d["max_entropy_bits"]),
                normalized_entropy=float(d["normalized_entropy"]),
                top1pct_share=float(d["top1pct_share"]),
                top10pct_share=float(d["top10pct_share"]),
                gini=float(d["gini"]),
                top_codes=tuple((int(t["code"]), int(t["count"])) for t in d["top_codes"]),
                counts=tuple(int(v) for v in d["counts"]),
                grid=tuple(d["grid"]) if d.get("grid") else None,
                position_distinct=tuple(tuple(int(v) for v in r) for r in per_pos["distinct"]) if per_pos else None,
                position_note=d.get("per_position_note"),
                name=d.get("name"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"not a valid codebook usage report level ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class DatasetUsage:
    """Codebook usage of one tokenizer over one dataset: one :class:`UsageReport` per level.

    Attributes:
        levels: reports, coarse to fine (one for VQ-VAE/VQGAN; ``top``, ``bottom`` for VQ-VAE-2).
        images: images (token grids) counted.
        skipped: ``(path, reason)`` of unreadable inputs, at most ``MAX_LISTED_SKIPPED`` listed.
        skipped_count: exact number of inputs skipped.
        model, config_hash, family: the tokenizer the tokens came from (None where unknown).
        source: ``"images"``, ``"tokens"`` (token files) or ``"tensors"``.
    """

    levels: tuple[UsageReport, ...]
    images: int
    skipped: tuple[tuple[str, str], ...] = ()
    skipped_count: int = 0
    model: str | None = None
    config_hash: str | None = None
    family: str | None = None
    source: str = "images"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``"format": "imagetok-usage/1"``."""
        return {
            "format": FORMAT,
            "model": self.model,
            "config_hash": self.config_hash,
            "family": self.family,
            "source": self.source,
            "images": self.images,
            "skipped_count": self.skipped_count,
            "skipped": [{"path": p, "error": e} for p, e in self.skipped],
            "levels": [lv.to_dict() for lv in self.levels],
        }

    @classmethod
    def from_dict(cls, d: Any) -> "DatasetUsage":
        """Inverse of :meth:`to_dict`. Raises InputError for anything else."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise InputError(f"not an imagetok usage report (format {fmt!r}, expected {FORMAT!r})")
        try:
            return cls(
                levels=tuple(UsageReport.from_dict(lv) for lv in d["levels"]),
                images=int(d["images"]),
                skipped=tuple((str(s["path"]), str(s["error"])) for s in d.get("skipped", [])),
                skipped_count=int(d.get("skipped_count", 0)),
                model=d.get("model"),
                config_hash=d.get("config_hash"),
                family=d.get("family"),
                source=str(d.get("source", "images")),
            )
        except InputError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"malformed imagetok usage report ({type(e).__name__}: {e})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON report."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict()) + "\n")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetUsage":
        """Read a JSON report written by :meth:`save` or ``imagetok usage --json``."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such usage report")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{p}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except InputError as e:
            raise InputError(f"{p}: {e}") from None

    def table(self) -> str:
        """A readable plain-text table, one column per level."""
        head = [
            f"model: {self.model or 'unknown'}"
            + (f"  ({self.family}, config {self.config_hash})" if self.config_hash else ""),
            f"images: {self.images:,}  skipped (unreadable): {self.skipped_count:,}",
        ]
        cols = [(lv.name or "codes", lv) for lv in self.levels]
        return "\n".join(head) + "\n\n" + format_table(cols) + _dead_lines(cols)

    def plot(self, path: str | os.PathLike) -> Path:
        """Write a PNG; see :func:`plot_usage`."""
        return plot_usage(self, path)


# ---------------------------------------------------------------------------------- counting
def _as_index_tensor(indices: Any) -> torch.Tensor:
    if isinstance(indices, np.ndarray):
        if not np.issubdtype(indices.dtype, np.integer):
            raise InputError(f"token ids must be integers, got numpy {indices.dtype}")
        return torch.from_numpy(indices.astype(np.int64))
    if isinstance(indices, (list, tuple)):
        return _as_index_tensor(np.asarray(indices))
    if not isinstance(indices, torch.Tensor):
        raise InputError(f"token ids must be a torch tensor or numpy array, got {type(indices).__name__}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise InputError(f"token ids must be an integer tensor, got {indices.dtype}")
    return indices.detach().to("cpu", torch.int64)


class UsageCounter:
    """Exact streaming counts of one codebook's ids.

    Args:
        codebook_size: K; every id must lie in ``[0, K)``.
        grid: expected ``(h, w)``; when given, grids of another shape raise InputError. When None,
            the first grid's shape is used and a different shape later drops per-position usage.
        max_position_cells: per-position usage needs ``h * w * K`` bytes; above this it is skipped
            (0 turns it off).
        name: level name carried into the report.

    Memory: ``8 * K`` bytes of counts plus at most ``max_position_cells`` bytes, whatever the
    number of updates.
    """

    def __init__(
        self,
        codebook_size: int,
        *,
        grid: tuple[int, int] | None = None,
        max_position_cells: int = DEFAULT_MAX_POSITION_CELLS,
        name: str | None = None,
    ):
        if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
            raise InputError(f"codebook_size must be a positive int, got {codebook_size!r}")
        self.codebook_size = codebook_size
        self.name = name
        self.max_position_cells = max_position_cells
        self.counts = torch.zeros(codebook_size, dtype=torch.int64)
        self.grids = 0
        self._strict_grid = tuple(grid) if grid is not None else None
        self._grid: tuple[int, int] | None = None
        self._same_grid = True  # every update so far was a grid of shape self._grid
        self._seen: torch.Tensor | None = None  # bool [h * w * K]
        self._note: str | None = None
        if grid is not None:
            self._start_positions(self._strict_grid)

    @property
    def tokens(self) -> int:
        """Ids counted so far."""
        return int(self.counts.sum())

    def _start_positions(self, grid: tuple[int, int]) -> None:
        self._grid = grid
        cells = grid[0] * grid[1] * self.codebook_size
        if cells > self.max_position_cells:
            self._note = (
                f"skipped: {grid[0]}x{grid[1]} positions x {self.codebook_size} codes = {cells:,} cells "
                f"exceeds max_position_cells={self.max_position_cells:,}"
            )
        else:
            self._seen = torch.zeros(cells, dtype=torch.bool)

    def _drop_positions(self, note: str) -> None:
        if self._note is None:
            self._note = note
        self._seen = None

    def update(self, indices: Any) -> "UsageCounter":
        """Count a batch of ids.

        Args:
            indices: integer tensor or array, ``[B, h, w]`` (a batch of grids), ``[h, w]`` (one
                grid) or ``[N]`` (a flat stream without positions). Any device.

        Raises:
            InputError: non-integer ids, ids outside ``[0, K)``, other shapes, or (with ``grid``
                given) a grid of another shape. Nothing is counted when it raises.
        """
        t = _as_index_tensor(indices)
        if t.ndim not in (1, 2, 3):
            raise InputError(f"token ids must be [N], [h, w] or [B, h, w], got shape {tuple(t.shape)}")
        if t.numel() == 0:
            return self
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= self.codebook_size:
            raise InputError(
                f"token ids must lie in [0, {self.codebook_size}) for a codebook of size {self.codebook_size}; "
                f"got min {lo}, max {hi} (tokens from another model or codebook?)"
            )
        if t.ndim == 1:
            self._same_grid = False
            self._drop_positions("not available: 1-D token streams carry no grid positions")
        else:
            t = t[None] if t.ndim == 2 else t
            grid = (t.shape[1], t.shape[2])
            if self._strict_grid is not None and grid != self._strict_grid:
                raise InputError(f"expected token grids of shape {self._strict_grid}, got {grid}")
            if self._grid is None and self._note is None:
                self._start_positions(grid)
            elif self._grid is not None and grid != self._grid:
                self._same_grid = False
                self._drop_positions(f"not available: token grids of different shapes {self._grid} and {grid}")
            if self._seen is not None:
                p = grid[0] * grid[1]
                offsets = torch.arange(p, dtype=torch.int64) * self.codebook_size
                self._seen[(t.reshape(-1, p) + offsets).reshape(-1)] = True
            self.grids += t.shape[0]
        self.counts += torch.bincount(t.reshape(-1), minlength=self.codebook_size)
        return self

    def report(self, *, top: int = 10) -> UsageReport:
        """The statistics so far.

        Args:
            top: how many of the most frequent codes to list.

        Raises:
            InputError: nothing was counted.
        """
        distinct = None
        if self._seen is not None and self.grids:
            h, w = self._grid
            distinct = self._seen.view(h * w, self.codebook_size).sum(1).view(h, w)
        note = self._note if distinct is None else None
        if distinct is None and note is None:
            note = "not available: no token grids counted"
        return UsageReport.from_counts(
            self.counts,
            grids=self.grids,
            grid=self._grid if self._same_grid else None,
            position_distinct=distinct,
            position_note=note,
            name=self.name,
            top=top,
        )


def _is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def codebook_usage(
    tokens: Any,
    codebook_size: int | Sequence[int],
    *,
    top: int = 10,
    max_position_cells: int = DEFAULT_MAX_POSITION_CELLS,
) -> UsageReport | tuple[UsageReport, ...]:
    """Usage statistics of token ids, counted exactly over one tensor or any number of batches.

    Args:
        tokens: for one codebook (``codebook_size`` an int): an integer tensor/array
            (``[B, h, w]``, ``[h, w]`` or ``[N]``) or an iterable of them (streamed, e.g. a generator).
            For several levels (``codebook_size`` a sequence, e.g. ``(512, 512)`` for VQ-VAE-2): a
            tuple of level tensors as :meth:`Tokenizer.encode` returns, or an iterable of such tuples.
        codebook_size: K, or one K per level.
        top: how many of the most frequent codes to list.
        max_position_cells: bound on per-position memory (see :class:`UsageCounter`).

    Returns:
        A :class:`UsageReport`, or a tuple of them (one per level) when ``codebook_size`` is a sequence.

    Raises:
        InputError: non-integer or out-of-range ids, wrong number of levels, or no tokens at all.
    """
    multi = not isinstance(codebook_size, int)
    sizes = tuple(codebook_size) if multi else (codebook_size,)
    names = _level_names(len(sizes)) if multi else (None,)
    counters = [UsageCounter(k, max_position_cells=max_position_cells, name=n) for k, n in zip(sizes, names)]
    if multi:
        one = isinstance(tokens, (tuple, list)) and len(tokens) > 0 and all(_is_array(t) for t in tokens)
        for item in [tokens] if one else tokens:
            if not isinstance(item, (tuple, list)) or len(item) != len(sizes):
                raise InputError(f"expected a tuple of {len(sizes)} token levels, got {type(item).__name__}")
            for counter, t in zip(counters, item):
                counter.update(t)
    else:
        for item in [tokens] if _is_array(tokens) else tokens:
            counters[0].update(item)
    reports = tuple(c.report(top=top) for c in counters)
    return reports if multi else reports[0]


def _level_names(n: int) -> tuple[str | None, ...]:
    return ("top", "bottom") if n == 2 else (None,) if n == 1 else tuple(f"level{i}" for i in range(n))


class _Accumulator:
    """Counters for every level plus image and skip bookkeeping."""

    def __init__(self, sizes: Sequence[int], *, max_position_cells: int):
        names = _level_names(len(sizes))
        self.counters = [UsageCounter(k, max_position_cells=max_position_cells, name=n) for k, n in zip(sizes, names)]
        self.images = 0
        self.skipped: list[tuple[str, str]] = []
        self.skipped_count = 0

    def update(self, levels: Sequence[torch.Tensor]) -> None:
        if len(levels) != len(self.counters):
            raise InputError(f"expected {len(self.counters)} token level(s), got {len(levels)}")
        for c, t in zip(self.counters, levels):
            c.update(t)
        self.images += int(levels[0].shape[0]) if levels[0].ndim == 3 else 1

    def skip(self, path: str, error: Exception) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_LISTED_SKIPPED:
            self.skipped.append((str(path), str(error)))

    def result(self, *, top: int, model, config_hash, family, source) -> DatasetUsage:
        if self.images == 0:
            detail = ""
            if self.skipped:
                detail = f"; all {self.skipped_count} input(s) were unreadable, first: {self.skipped[0][1]}"
            raise InputError(f"no images or tokens were counted{detail}")
        return DatasetUsage(
            levels=tuple(c.report(top=top) for c in self.counters),
            images=self.images,
            skipped=tuple(self.skipped),
            skipped_count=self.skipped_count,
            model=model,
            config_hash=config_hash,
            family=family,
            source=source,
        )


class _Progress:
    """A tiny stderr progress line (no dependency); silent unless enabled."""

    def __init__(self, total: int | None, enabled: bool, unit: str = "images"):
        self.total, self.enabled, self.unit = total, enabled, unit
        self.done, self.start, self.last = 0, time.monotonic(), 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last >= 0.25 or self.done == self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        text = f"{self.done:,}"
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else 0
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%, ETA {eta:.0f}s)"
        else:
            text += f" {self.unit}"
        sys.stderr.write(f"\rusage: {text}, {rate:.1f}/s   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            if self.done != self.total:  # the last update already drew the final count
                self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


# ------------------------------------------------------------------------- images and files
def iter_image_files(paths: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Image files under ``paths``, in a stable order.

    Folders are walked recursively (sorted; hidden files and folders skipped) for files whose
    suffix is in ``IMAGE_SUFFIXES``; files named directly are always included.

    Raises:
        InputError: a path does not exist (checked for all paths before anything is yielded).
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
    for p in paths:
        if not p.is_dir():
            yield str(p)
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES:
                    yield os.path.join(root, f)


def _tokenizer_identity(tok: Any) -> tuple[str | None, str, str]:
    from .config import config_hash

    return tok.name, config_hash(tok.config), tok.config.family


def _as_levels(tokens: Any) -> tuple[torch.Tensor, ...]:
    return tuple(tokens) if isinstance(tokens, (tuple, list)) else (tokens,)


def _is_paths(x: Any) -> bool:
    if isinstance(x, (str, os.PathLike)):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(p, (str, os.PathLike)) for p in x)


def _batch_images(batch: Any) -> Any:
    """The images in one loader batch: the batch itself, ``batch[0]`` of an ``(images, labels)``
    pair, or ``batch["pixel_values" | "image" | "images"]`` of a dict."""
    if isinstance(batch, dict):
        for key in ("pixel_values", "image", "images"):
            if key in batch:
                return batch[key]
        raise InputError(f"a dict batch needs a 'pixel_values', 'image' or 'images' key, got {sorted(batch)}")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and _is_array(batch[0]) and batch[0].ndim == 4:
        return batch[0]
    return batch


def usage_from_images(
    tok: Any,
    images: Any,
    *,
    size: int | None,
    batch_size: int = 16,
    progress: bool = False,
    top: int = 10,
    max_position_cells: int = DEFAULT_MAX_POSITION_CELLS,
) -> DatasetUsage:
    """Run a tokenizer over a dataset and report codebook usage (see :meth:`Tokenizer.codebook_usage`).

    Files are read one at a time with ``tok.preprocess`` and encoded in batches of ``batch_size``;
    a file that cannot be read or preprocessed (:class:`InputError`) is skipped, counted and listed.
    In-memory batches are passed to ``tok.preprocess`` as they come; bad ones raise.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    acc = _Accumulator(tok.codebook_sizes, max_position_cells=max_position_cells)
    model, chash, family = _tokenizer_identity(tok)

    buf: list[torch.Tensor] = []  # preprocessed images waiting for a forward pass

    def flush() -> None:
        if buf:
            x = torch.cat(buf)
            buf.clear()
            for start in range(0, x.shape[0], batch_size):
                acc.update(_as_levels(tok.encode_pixels(x[start : start + batch_size])))

    def add(x: torch.Tensor) -> None:
        if buf and x.shape[2:] != buf[0].shape[2:]:  # size=None: another image size starts a new batch
            flush()
        buf.append(x)
        if sum(b.shape[0] for b in buf) >= batch_size:
            flush()

    def read(path: str) -> None:
        try:
            x, _ = tok.preprocess(path, size=size)
        except InputError as e:  # unreadable or unusable file: skip, count, list
            acc.skip(path, e)
            return
        add(x)

    if _is_paths(images):
        paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        total = sum(1 for _ in iter_image_files(paths)) if progress else None
        bar = _Progress(total, progress)
        n_files = 0
        for path in iter_image_files(paths):
            n_files += 1
            read(path)
            bar.update()
        if n_files == 0:
            shown = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
            raise InputError(f"no image files found in {shown} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        source = "images"
    else:
        if isinstance(images, (list, tuple)) and images and all(_is_array(b) and b.ndim == 4 for b in images):
            batches: Iterable[Any] = images  # a list of [B, C, H, W] batches
        elif _is_array(images) or isinstance(images, (list, tuple)) or not isinstance(images, Iterable):
            batches = [images]  # one batch (or one image); preprocess checks it
        else:
            batches = images  # a loader, or a generator of batches or file paths
        bar = _Progress(None, progress)
        source = "tensors"
        for batch in batches:
            if isinstance(batch, (str, os.PathLike)):
                source = "images"
                read(str(batch))
                bar.update()
            else:
                x, _ = tok.preprocess(_batch_images(batch), size=size)
                add(x)
                bar.update(x.shape[0])
    flush()
    bar.close()
    return acc.result(top=top, model=model, config_hash=chash, family=family, source=source)


def usage_from_token_files(
    paths: Sequence[str | os.PathLike],
    *,
    tokenizer: Any = None,
    progress: bool = False,
    top: int = 10,
    max_position_cells: int = DEFAULT_MAX_POSITION_CELLS,
) -> DatasetUsage:
    """Codebook usage over token files written by ``imagetok encode -o`` (no model needed).

    The codebook sizes come from the files' stored config. Every file must come from the same
    model (same ``config_hash``), and from ``tokenizer`` when one is given; ``.npy`` files carry
    no model information and need ``tokenizer``. Unreadable files are skipped, counted and listed.

    Raises:
        InputError: files from different models or codebook sizes, ``.npy`` without a tokenizer,
            ids outside the codebook, or nothing readable.
    """
    from .config import config_from_dict
    from .errors import ConfigError
    from .tokenfile import load_tokens

    ref: dict[str, Any] | None = None  # {"hash", "sizes", "model", "family", "source"}
    if tokenizer is not None:
        model, chash, family = _tokenizer_identity(tokenizer)
        ref = {"hash": chash, "sizes": tuple(tokenizer.codebook_sizes), "model": model, "family": family,
               "source": f"the model {model!r}"}
    acc: _Accumulator | None = None
    bar = _Progress(len(paths), progress, unit="files")
    skipped: list[tuple[str, Exception]] = []
    for path in paths:
        bar.update()
        try:
            levels, meta = load_tokens(path)
        except InputError as e:
            skipped.append((str(path), e))
            continue
        if not meta:  # .npy
            if tokenizer is None:
                raise InputError(f"{path}: a .npy token file carries no model information; pass --model (tokenizer=) "
                                 "so its ids can be checked against the codebook")
            sizes, chash, model, family = ref["sizes"], ref["hash"], ref["model"], ref["family"]
        else:
            try:
                cfg = config_from_dict(meta.get("config"))
            except ConfigError as e:
                raise InputError(f"{path}: token file has an unreadable model config ({e})") from None
            sizes, chash, model, family = cfg.codebook_sizes, meta.get("config_hash"), meta.get("model"), cfg.family
            if ref is None:
                ref = {"hash": chash, "sizes": sizes, "model": model, "family": family,
                       "source": f"{path} (model {model!r})"}
            elif chash != ref["hash"] or sizes != ref["sizes"]:
                raise InputError(
                    f"{path} comes from model {model!r} (config hash {chash}, codebook sizes {list(sizes)}), "
                    f"but {ref['source']} has config hash {ref['hash']}, codebook sizes {list(ref['sizes'])}: "
                    "token ids of different models mean different things and cannot be counted together"
                )
        if len(levels) != len(sizes):
            raise InputError(f"{path}: has {len(levels)} token level(s), but the model has {len(sizes)}")
        if acc is None:
            acc = _Accumulator(sizes, max_position_cells=max_position_cells)
        try:
            acc.update(levels)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    bar.close()
    if acc is None:
        if not paths:
            raise InputError("no token files given")
        raise InputError(f"none of the {len(paths)} token file(s) could be read; first: {skipped[0][1]}")
    for p, e in skipped:
        acc.skip(p, e)
    return acc.result(top=top, model=ref["model"], config_hash=ref["hash"], family=ref["family"], source="tokens")


# --------------------------------------------------------------------------- tables, compare
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _diff(num, fmt):
    """A difference-column function ``(a, b) -> text`` from a number getter and a format."""

    def diff(a: UsageReport, b: UsageReport) -> str:
        x, y = num(a), num(b)
        return "" if x is None or y is None else fmt.format(y - x)

    return diff


def _pos_mean(r: UsageReport) -> float | None:
    return r.position_stats["mean"] if r.position_stats else None


_PP = "{:+.1f} pp"  # percentage points

# (label, text of one report, difference column (second minus first) or None)
_ROWS: list[tuple[str, Any, Any]] = [
    ("codebook size", lambda r: f"{r.codebook_size:,}", _diff(lambda r: r.codebook_size, "{:+,}")),
    ("images", lambda r: f"{r.grids:,}", None),
    ("tokens", lambda r: f"{r.tokens:,}", None),
    ("codes used", lambda r: f"{r.codes_used:,} ({_pct(r.used_fraction)})", _diff(lambda r: r.codes_used, "{:+,}")),
    ("dead codes", lambda r: f"{r.dead_count:,}", _diff(lambda r: r.dead_count, "{:+,}")),
    ("perplexity", lambda r: f"{r.perplexity:,.1f}", _diff(lambda r: r.perplexity, "{:+,.1f}")),
    (
        "entropy (bits)",
        lambda r: f"{r.entropy_bits:.3f} / {r.max_entropy_bits:.3f}",
        _diff(lambda r: r.entropy_bits, "{:+.3f}"),
    ),
    ("normalized entropy", lambda r: _pct(r.normalized_entropy), _diff(lambda r: 100 * r.normalized_entropy, _PP)),
    ("top 1% codes' share", lambda r: _pct(r.top1pct_share), _diff(lambda r: 100 * r.top1pct_share, _PP)),
    ("top 10% codes' share", lambda r: _pct(r.top10pct_share), _diff(lambda r: 100 * r.top10pct_share, _PP)),
    ("gini", lambda r: f"{r.gini:.3f}", _diff(lambda r: r.gini, "{:+.3f}")),
    (
        "distinct codes/position",
        lambda r: "min {min:,} mean {mean:,.1f} max {max:,}".format(**r.position_stats) if r.position_stats else "n/a",
        _diff(_pos_mean, "mean {:+,.1f}"),
    ),
    ("most frequent (share)", lambda r: ", ".join(f"{c} ({_pct(n / r.tokens)})" for c, n in r.top_codes[:3]), None),
]


def format_table(columns: Sequence[tuple[str, UsageReport]], *, difference: bool = False) -> str:
    """Plain-text table: one row per statistic, one column per ``(header, report)``.

    With ``difference`` and exactly two columns, a third column shows second minus first
    (shares in percentage points).
    """
    headers = [h for h, _ in columns]
    rows = [[label] + [text(r) for _, r in columns] for label, text, _ in _ROWS]
    if difference and len(columns) == 2:
        headers.append("difference")
        for row, (_, _, diff) in zip(rows, _ROWS):
            row.append(diff(columns[0][1], columns[1][1]) if diff else "")
    table = [[""] + headers] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for i, r in enumerate(table):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines) + "\n"


def _dead_lines(cols: Sequence[tuple[str, UsageReport]], shown: int = 20) -> str:
    out = []
    for header, r in cols:
        if r.dead_codes:
            more = f", ... ({r.dead_count - shown:,} more)" if r.dead_count > shown else ""
            out.append(f"dead code ids ({header}): {', '.join(map(str, r.dead_codes[:shown]))}{more}")
        if r.position_note:
            out.append(f"per-position usage ({header}): {r.position_note}")
    return ("\n" + "\n".join(out) + "\n") if out else ""


def compare_usage(
    reports: Sequence[DatasetUsage | UsageReport], labels: Sequence[str] | None = None
) -> str:
    """One table comparing several reports (two models on one dataset, one model on two datasets).

    Args:
        reports: :class:`DatasetUsage` (each level becomes a column) or :class:`UsageReport`.
        labels: a name per report (default ``A``, ``B``, ...).

    Returns:
        The table as text; with exactly two columns it adds a difference column.
    """
    if not reports:
        raise InputError("nothing to compare: pass at least one report")
    labels = list(labels) if labels is not None else [chr(ord("A") + i) for i in range(len(reports))]
    if len(labels) != len(reports):
        raise InputError(f"got {len(labels)} labels for {len(reports)} reports")
    cols, head = [], []
    for label, rep in zip(labels, reports):
        if isinstance(rep, DatasetUsage):
            head.append(f"{label}: model {rep.model or 'unknown'} (config {rep.config_hash}), "
                        f"{rep.images:,} images, {rep.skipped_count:,} skipped")
            levels = rep.levels
        else:
            levels = (rep,)
        for lv in levels:
            cols.append((f"{label}:{lv.name}" if lv.name else label, lv))
    return ("\n".join(head) + "\n\n" if head else "") + format_table(cols, difference=True)


# ------------------------------------------------------------------------------------ plots
def plot_usage(usage: DatasetUsage | UsageReport, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write a PNG per level row: rank-frequency curve (log-log), sorted histogram, per-position map.

    Needs matplotlib (``pip install 'imagetok[plot]'``); does not touch pyplot's global state.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    levels = usage.levels if isinstance(usage, DatasetUsage) else (usage,)
    fig = Figure(figsize=(15, 4.2 * len(levels)), layout="constrained")
    axes = fig.subplots(len(levels), 3, squeeze=False)
    for row, r in zip(axes, levels):
        title = (r.name + ": ") if r.name else ""
        counts = np.sort(np.asarray(r.counts, dtype=np.int64))[::-1]
        used = counts[counts > 0]
        ax = row[0]
        ax.loglog(np.arange(1, len(used) + 1), used / r.tokens, lw=1.5, marker="o" if len(used) < 30 else None)
        ax.axhline(1 / r.codebook_size, color="gray", ls="--", lw=1, label="uniform 1/K")
        ax.set(xlabel="rank", ylabel="token share", title=f"{title}rank-frequency (log-log)")
        ax.legend(loc="lower left")
        ax = row[1]
        ranks = np.arange(len(counts))
        ax.fill_between(ranks, counts, step="post", lw=0)
        if r.dead_count:
            ax.axvline(r.codes_used, color="red", lw=1, label=f"{r.dead_count:,} dead codes →")
            ax.legend(loc="upper right")
        ax.set(xlabel="codes, most used first", ylabel="count", xlim=(0, len(counts)),
               title=f"{title}{r.codes_used:,}/{r.codebook_size:,} used, perplexity {r.perplexity:,.1f}")
        ax = row[2]
        if r.position_distinct is not None:
            im = ax.imshow(np.asarray(r.position_distinct), cmap="viridis", interpolation="nearest")
            fig.colorbar(im, ax=ax, label="distinct codes")
            ax.set(title=f"{title}distinct codes per position", xlabel="column", ylabel="row")
        else:
            ax.axis("off")
            ax.text(0.5, 0.5, f"per-position usage\n{r.position_note}", ha="center", va="center", wrap=True)
    p = Path(path)
    fig.savefig(p, dpi=dpi, format="png")
    return p


def require_matplotlib() -> None:
    """Raise MissingDependencyError (with the install command) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"plotting needs matplotlib, which is not installed: {PLOT_HINT}") from None


# ----------------------------------------------------------------------------------- remap
def remap_unused(report: UsageReport) -> tuple[torch.Tensor, torch.Tensor]:
    """A renumbering that drops codes never used (smaller LLM vocabulary).

    Returns:
        ``(old_to_new, new_to_old)``: int64 ``[K]`` with -1 for dropped codes, and int64
        ``[codes_used]`` (ascending old ids, so the new ids keep the old order).
    """
    counts = torch.tensor(report.counts, dtype=torch.int64)
    new_to_old = torch.nonzero(counts > 0).flatten()
    old_to_new = torch.full((report.codebook_size,), -1, dtype=torch.int64)
    old_to_new[new_to_old] = torch.arange(new_to_old.numel())
    return old_to_new, new_to_old


def apply_remap(tokens: Any, old_to_new: torch.Tensor) -> torch.Tensor:
    """Old ids -> new ids. Raises InputError if a token uses a dropped code."""
    t = _as_index_tensor(tokens)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= old_to_new.numel()):
        raise InputError(f"token ids must lie in [0, {old_to_new.numel()})")
    out = old_to_new[t]
    if (out < 0).any():
        dropped = sorted(set(t[out < 0].tolist()))[:10]
        raise InputError(f"tokens use code(s) {dropped} that the remap dropped (unused when it was built)")
    return out


def undo_remap(tokens: Any, new_to_old: torch.Tensor) -> torch.Tensor:
    """New ids -> original ids (for decoding with the unchanged model)."""
    t = _as_index_tensor(tokens)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= new_to_old.numel()):
        raise InputError(f"remapped token ids must lie in [0, {new_to_old.numel()})")
    return new_to_old[t]


def save_remap(usage: DatasetUsage, path: str | os.PathLike) -> Path:
    """Write the remap of every level as JSON: ``{"format", "model", "config_hash", "levels":
    [{"name", "codebook_size", "new_size", "new_to_old"}]}``."""
    levels = []
    for r in usage.levels:
        _, new_to_old = remap_unused(r)
        levels.append({"name": r.name, "codebook_size": r.codebook_size, "new_size": int(new_to_old.numel()),
                       "new_to_old": new_to_old.tolist()})
    p = Path(path)
    p.write_text(json.dumps({"format": REMAP_FORMAT, "model": usage.model, "config_hash": usage.config_hash,
                             "levels": levels}) + "\n")
    return p


def load_remap(path: str | os.PathLike) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Read :func:`save_remap` output: ``(old_to_new, new_to_old)`` per level."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        if data.get("format") != REMAP_FORMAT:
            raise InputError(f"{p}: not an imagetok remap file (format {data.get('format')!r})")
        out = []
        for lv in data["levels"]:
            new_to_old = torch.tensor(lv["new_to_old"], dtype=torch.int64)
            old_to_new = torch.full((int(lv["codebook_size"]),), -1, dtype=torch.int64)
            old_to_new[new_to_old] = torch.arange(new_to_old.numel())
            out.append((old_to_new, new_to_old))
        return tuple(out)
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise InputError(f"{p}: not a readable remap file ({e})") from None


# ------------------------------------------------------------------ LFQ bits and FSQ levels (issue 14)
def _int_tokens(tokens: Any) -> torch.Tensor:
    """Any integer tensor/array of ids -> flat int64 CPU tensor."""
    if isinstance(tokens, np.ndarray):
        if not np.issubdtype(tokens.dtype, np.integer):
            raise InputError(f"token ids must be integers, got numpy {tokens.dtype}")
        tokens = torch.from_numpy(tokens.astype(np.int64))
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise InputError(f"token ids must be an integer tensor or array, got {getattr(tokens, 'dtype', type(tokens).__name__)}")
    return tokens.detach().to("cpu", torch.int64).flatten()


def _entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each row of probabilities ``p`` (0 log 0 = 0)."""
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(-1)


@dataclass(frozen=True)
class BitUsage:
    """Per-bit statistics of lookup-free (LFQ) tokens: bit k of a token is latent channel k.

    ``ones[k]``: fraction of tokens with bit k set; ``balance[k] = 1 - |2 ones[k] - 1|`` (1: the bit is
    set half the time, 0: constant); ``entropy_bits[k]``: its binary entropy. ``dead`` lists constant
    bits. ``sum_entropy_bits`` bounds the entropy of the whole token from above (equal when the bits
    are independent), so ``2 ** sum_entropy_bits`` bounds the perplexity.
    """

    bits: int
    tokens: int
    ones: tuple[float, ...]
    balance: tuple[float, ...]
    entropy_bits: tuple[float, ...]
    dead: tuple[int, ...]
    min_balance: float
    mean_balance: float
    sum_entropy_bits: float

    def to_dict(self) -> dict[str, Any]:
        return {f: (list(v) if isinstance(v, tuple) else v) for f, v in self.__dict__.items()}


class BitCounter:
    """Exact streaming per-bit counts of LFQ tokens in ``[0, 2**bits)``."""

    def __init__(self, bits: int):
        if not 1 <= bits <= 62:
            raise InputError(f"bits must be in [1, 62], got {bits}")
        self.bits = bits
        self.ones = torch.zeros(bits, dtype=torch.int64)
        self.total = 0

    def update(self, tokens: Any) -> None:
        t = _int_tokens(tokens)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= 2**self.bits):
            raise InputError(f"LFQ token ids must lie in [0, 2**{self.bits}), got min {int(t.min())}, max {int(t.max())}")
        self.ones += ((t[:, None] >> torch.arange(self.bits)) & 1).sum(0)
        self.total += t.numel()

    def report(self) -> BitUsage:
        if self.total == 0:
            raise InputError("no tokens counted")
        p = self.ones.double() / self.total
        balance = 1 - (2 * p - 1).abs()
        ent = _entropy_bits(torch.stack([p, 1 - p], 1))
        return BitUsage(
            bits=self.bits, tokens=self.total, ones=tuple(p.tolist()), balance=tuple(balance.tolist()),
            entropy_bits=tuple(ent.tolist()), dead=tuple(int(k) for k in ((p == 0) | (p == 1)).nonzero()[:, 0]),
            min_balance=float(balance.min()), mean_balance=float(balance.mean()), sum_entropy_bits=float(ent.sum()),
        )  # fmt: skip


@dataclass(frozen=True)
class LevelUsage:
    """Per-channel statistics of finite-scalar (FSQ) tokens: digit i of a token is channel i's level.

    ``counts[i][d]``: tokens whose channel i sits at level d (``d`` in ``[0, levels[i])``, code
    ``(d - L//2) / (L//2)``); ``used[i]``: levels of channel i that occur; ``usage[i] = used[i] / levels[i]``;
    ``entropy_bits[i]`` vs ``max_entropy_bits[i] = log2 levels[i]``.
    """

    levels: tuple[int, ...]
    tokens: int
    counts: tuple[tuple[int, ...], ...]
    used: tuple[int, ...]
    usage: tuple[float, ...]
    entropy_bits: tuple[float, ...]
    max_entropy_bits: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {f: (json.loads(json.dumps(v)) if isinstance(v, tuple) else v) for f, v in self.__dict__.items()}


class LevelCounter:
    """Exact streaming per-channel level counts of FSQ tokens (mixed radix, channel 0 least significant)."""

    def __init__(self, levels: Sequence[int]):
        self.levels = tuple(int(v) for v in levels)
        if not self.levels or any(v < 2 for v in self.levels):
            raise InputError(f"levels must be integers >= 2, got {list(levels)}")
        self.size = math.prod(self.levels)
        self.basis = torch.tensor([math.prod(self.levels[:i]) for i in range(len(self.levels))], dtype=torch.int64)
        self.counts = [torch.zeros(v, dtype=torch.int64) for v in self.levels]
        self.total = 0

    def update(self, tokens: Any) -> None:
        t = _int_tokens(tokens)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.size):
            raise InputError(f"FSQ token ids must lie in [0, {self.size}), got min {int(t.min())}, max {int(t.max())}")
        digits = (t[:, None] // self.basis) % torch.tensor(self.levels)
        for i, L in enumerate(self.levels):
            self.counts[i] += torch.bincount(digits[:, i], minlength=L)
        self.total += t.numel()

    def report(self) -> LevelUsage:
        if self.total == 0:
            raise InputError("no tokens counted")
        used = tuple(int((c > 0).sum()) for c in self.counts)
        return LevelUsage(
            levels=self.levels, tokens=self.total, counts=tuple(tuple(c.tolist()) for c in self.counts), used=used,
            usage=tuple(u / L for u, L in zip(used, self.levels)),
            entropy_bits=tuple(float(_entropy_bits(c.double() / self.total)) for c in self.counts),
            max_entropy_bits=tuple(math.log2(L) for L in self.levels),
        )  # fmt: skip


def quantizer_usage(config: Any, tokens: Any) -> "BitUsage | LevelUsage":
    """Per-bit (LFQ: ``magvit2`` family) or per-level (FSQ: ``cosmos`` family) usage of tokens.

    Args:
        config: the tokenizer's config (``tok.config``).
        tokens: what ``tok.encode`` returned (for factorised LFQ, the tuple of sub-token grids), or a
            list of such batches.

    Raises:
        InputError: another family (plain codebooks: use :class:`UsageCounter`), or ids out of range.
    """
    family = getattr(config, "family", None)
    batches = tokens if isinstance(tokens, list) else [tokens]
    if family == "magvit2":
        counter: Any = BitCounter(config.embed_dim)
        split = tuple(config.factorized_bits)
        for b in batches:
            if split:
                if not isinstance(b, (tuple, list)) or len(b) != len(split):
                    raise InputError(f"this model's tokens are {len(split)} sub-token grids (bits {list(split)})")
                full, shift = torch.zeros_like(_int_tokens(b[0])), 0
                for part, nb in zip(b, split):
                    full += _int_tokens(part) << shift
                    shift += nb
                b = full
            counter.update(b)
        return counter.report()
    if family == "cosmos":
        counter = LevelCounter(config.levels)
        for b in batches:
            counter.update(b)
        return counter.report()
    raise InputError(f"per-bit / per-level usage is defined for LFQ (magvit2) and FSQ (cosmos) models, not {family!r}")


def quantizer_usage_from_report(config: Any, usage: "DatasetUsage") -> "BitUsage | LevelUsage":
    """:func:`quantizer_usage` from the exact code counts of a :class:`DatasetUsage` (no re-encoding).

    For factorised LFQ the sub-token levels' counts give the bits of their own channels.
    """
    family = getattr(config, "family", None)
    counts = [torch.as_tensor(r.counts, dtype=torch.int64) for r in usage.levels]
    if family == "magvit2":
        split = tuple(config.factorized_bits) or (config.embed_dim,)
        if len(counts) != len(split) or any(c.numel() != 2**b for c, b in zip(counts, split)):
            raise InputError(f"the usage report's levels do not match this model's bits {list(split)}")
        bc = BitCounter(config.embed_dim)
        ones = []
        for c, b in zip(counts, split):
            table = (torch.arange(2**b)[:, None] >> torch.arange(b)) & 1
            ones.append((c[:, None] * table).sum(0))
        bc.ones, bc.total = torch.cat(ones), int(counts[0].sum())
        return bc.report()
    if family == "cosmos":
        lc = LevelCounter(config.levels)
        if len(counts) != 1 or counts[0].numel() != lc.size:
            raise InputError(f"the usage report does not match this model's {lc.size} FSQ codes")
        digits = (torch.arange(lc.size)[:, None] // lc.basis) % torch.tensor(lc.levels)
        for i, L in enumerate(lc.levels):
            lc.counts[i] += torch.bincount(digits[:, i], weights=counts[0].double(), minlength=L).round().long()
        lc.total = int(counts[0].sum())
        return lc.report()
    raise InputError(f"per-bit / per-level usage is defined for LFQ (magvit2) and FSQ (cosmos) models, not {family!r}")


def format_quantizer_usage(r: "BitUsage | LevelUsage") -> str:
    """A short text table of :class:`BitUsage` (one row per bit) or :class:`LevelUsage` (per channel)."""
    if isinstance(r, BitUsage):
        lines = [f"LFQ bits ({r.tokens} tokens): min balance {r.min_balance:.3f}, mean {r.mean_balance:.3f}, "
                 f"sum of bit entropies {r.sum_entropy_bits:.2f} of {r.bits} bits, dead bits {list(r.dead)}",
                 "bit  ones   balance  entropy"]  # fmt: skip
        lines += [f"{k:>3}  {o:.3f}  {b:.3f}    {e:.3f}" for k, (o, b, e) in enumerate(zip(r.ones, r.balance, r.entropy_bits))]
    else:
        lines = [f"FSQ levels ({r.tokens} tokens)", "channel  levels  used  usage  entropy/max"]
        lines += [f"{i:>7}  {L:>6}  {u:>4}  {f:.3f}  {e:.2f}/{m:.2f}"
                  for i, (L, u, f, e, m) in enumerate(zip(r.levels, r.used, r.usage, r.entropy_bits, r.max_entropy_bits))]  # fmt: skip
    return "\n".join(lines) + "\n"

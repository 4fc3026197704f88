"""Codebook usage: exact, streaming statistics of which codes a tokenizer uses over a dataset.

Usage is a pure function of token ids, never model state. :class:`UsageCounter` accumulates exact
counts over any number of batches (no rolling window, no per-batch perplexity) and
:meth:`UsageCounter.report` turns them into a frozen :class:`UsageReport`:

>>> counter = UsageCounter(1024)
>>> for batch in token_batches:            # int [B, h, w], [h, w] or a flat [N] stream
...     counter.update(batch)
>>> report = counter.report()              # codes used, dead codes, perplexity, Gini...

:func:`codebook_usage` does the same in one call for one codebook (:func:`codebook_usage_levels`
for several, e.g. VQ-VAE-2), and :meth:`imagetok.Tokenizer.codebook_usage` runs a tokenizer over
images, folders or a data loader and returns a :class:`DatasetUsage` (one report per codebook
level: VQ-VAE-2 gives ``top`` and ``bottom``). Tables, comparisons and plots live in the command
line (``imagetok usage``, :mod:`imagetok.cli.usage`); vocabulary remaps in :mod:`imagetok.llm`.

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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .errors import InputError

FORMAT = "imagetok-usage/1"
DEFAULT_MAX_POSITION_CELLS = 1 << 26  # bools: 64 MiB per level
MAX_LISTED_SKIPPED = 100  # skipped inputs listed by name; the count is always exact


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
        """JSON-ready dict: every field (``position_distinct`` as ``per_position``: ``{"grid",
        "distinct", "min", "mean", "max"}`` or null; ``position_note`` as ``per_position_note``)
        plus the derived ``dead_count`` and each top code's ``share``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        distinct, note = d.pop("position_distinct"), d.pop("position_note")
        d.update(
            grid=list(self.grid) if self.grid else None,
            dead_count=self.dead_count,
            dead_codes=list(self.dead_codes),
            top_codes=[{"code": c, "count": n, "share": n / self.tokens} for c, n in self.top_codes],
            per_position=None if distinct is None else {"grid": list(self.grid), "distinct": [list(r) for r in distinct],
                                                        **self.position_stats},
            per_position_note=note,
            counts=list(self.counts),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UsageReport":
        """Inverse of :meth:`to_dict` (derived keys are ignored). Raises InputError if malformed."""
        try:
            kw = {f.name: d[f.name] for f in fields(cls) if f.name in d and f.name not in _NOT_PLAIN}
            kw.update(
                dead_codes=tuple(int(v) for v in d["dead_codes"]),
                top_codes=tuple((int(t["code"]), int(t["count"])) for t in d["top_codes"]),
                counts=tuple(int(v) for v in d["counts"]),
                grid=tuple(d["grid"]) if d.get("grid") else None,
                position_distinct=tuple(tuple(int(v) for v in r) for r in d["per_position"]["distinct"]) if d["per_position"] else None,
                position_note=d.get("per_position_note"),
                name=d.get("name"),
            )
            for f in fields(cls):
                if f.name not in kw:
                    raise KeyError(f.name)
                if f.type in ("int", "float"):
                    kw[f.name] = {"int": int, "float": float}[f.type](kw[f.name])
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"not a valid codebook usage report level ({type(e).__name__}: {e})") from None


_NOT_PLAIN = {"dead_codes", "top_codes", "counts", "grid", "position_distinct", "position_note"}


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
        """Write the JSON report (atomically: a temporary file renamed into place)."""
        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict()) + "\n")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
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
    tokens: Any, codebook_size: int, *, top: int = 10, max_position_cells: int = DEFAULT_MAX_POSITION_CELLS
) -> UsageReport:
    """Usage statistics of one codebook's ids, counted exactly over one tensor or any number of batches.

    Args:
        tokens: an integer tensor/array (``[B, h, w]``, ``[h, w]`` or ``[N]``) or an iterable of
            them (streamed, e.g. a generator).
        codebook_size: K.
        top: how many of the most frequent codes to list.
        max_position_cells: bound on per-position memory (see :class:`UsageCounter`).

    Raises:
        InputError: non-integer or out-of-range ids, no tokens at all, or several codebook sizes
            (use :func:`codebook_usage_levels`).
    """
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
        raise InputError(f"codebook_size must be one int, got {codebook_size!r}; for several levels use codebook_usage_levels")
    counter = UsageCounter(codebook_size, max_position_cells=max_position_cells)
    for item in [tokens] if _is_array(tokens) else tokens:
        counter.update(item)
    return counter.report(top=top)


def codebook_usage_levels(
    tokens: Any, codebook_sizes: Sequence[int], *, top: int = 10, max_position_cells: int = DEFAULT_MAX_POSITION_CELLS
) -> tuple[UsageReport, ...]:
    """:func:`codebook_usage` for several levels (VQ-VAE-2: ``(top, bottom)``): one report per level.

    Args:
        tokens: a tuple of level tensors as :meth:`Tokenizer.encode` returns, or an iterable of such tuples.
        codebook_sizes: one K per level.

    Raises:
        InputError: as :func:`codebook_usage`, or a wrong number of levels.
    """
    sizes = tuple(codebook_sizes)
    counters = [UsageCounter(k, max_position_cells=max_position_cells, name=n) for k, n in zip(sizes, _level_names(len(sizes)))]
    one = isinstance(tokens, (tuple, list)) and len(tokens) > 0 and all(_is_array(t) for t in tokens)
    for item in [tokens] if one else tokens:
        if not isinstance(item, (tuple, list)) or len(item) != len(sizes):
            raise InputError(f"expected a tuple of {len(sizes)} token levels, got {type(item).__name__}")
        for counter, t in zip(counters, item):
            counter.update(t)
    return tuple(c.report(top=top) for c in counters)


def _level_names(n: int) -> tuple[str | None, ...]:
    return ("top", "bottom") if n == 2 else (None,) if n == 1 else tuple(f"level{i}" for i in range(n))


class UsageAccumulator:
    """One :class:`UsageCounter` per level plus image and skipped-input bookkeeping -> :class:`DatasetUsage`."""

    def __init__(self, sizes: Sequence[int], *, max_position_cells: int = DEFAULT_MAX_POSITION_CELLS):
        names = _level_names(len(sizes))
        self.counters = [UsageCounter(k, max_position_cells=max_position_cells, name=n) for k, n in zip(sizes, names)]
        self.images = 0
        self.skipped: list[tuple[str, str]] = []
        self.skipped_count = 0

    def update(self, levels: Sequence[torch.Tensor]) -> None:
        """Count one ``[B, h, w]`` (or ``[h, w]``) tensor per level."""
        if len(levels) != len(self.counters):
            raise InputError(f"expected {len(self.counters)} token level(s), got {len(levels)}")
        for c, t in zip(self.counters, levels):
            c.update(t)
        self.images += int(levels[0].shape[0]) if levels[0].ndim == 3 else 1

    def skip(self, path: str, error: Exception) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_LISTED_SKIPPED:
            self.skipped.append((str(path), str(error)))

    def result(self, *, top: int = 10, model=None, config_hash=None, family=None, source="images") -> DatasetUsage:
        if self.images == 0:
            detail = ""
            if self.skipped:
                detail = f"; all {self.skipped_count} input(s) were unreadable, first: {self.skipped[0][1]}"
            raise InputError(f"no images or tokens were counted{detail}")
        return DatasetUsage(levels=tuple(c.report(top=top) for c in self.counters), images=self.images,
                            skipped=tuple(self.skipped), skipped_count=self.skipped_count, model=model,
                            config_hash=config_hash, family=family, source=source)


# ------------------------------------------------------------------------- images and files
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
    max_member_bytes: int | None = None,
) -> DatasetUsage:
    """Run a tokenizer over a dataset and report codebook usage (see :meth:`Tokenizer.codebook_usage`).

    Paths are walked by :mod:`imagetok.data.sources` (folders, list files, ``.tar`` shards; one
    image file counts as itself). Files are read one at a time with ``tok.preprocess`` and encoded in
    batches of at most ``batch_size``, so memory is bounded by one batch whatever the dataset size; a
    file that cannot be read or preprocessed (:class:`InputError`) is skipped, counted and listed.
    In-memory batches are passed to ``tok.preprocess`` as they come; bad ones raise. ``progress``
    shows a tqdm bar on stderr. ``max_member_bytes``: the tar member size cap (default
    :data:`imagetok.data.sources.MAX_TAR_MEMBER_BYTES`); larger members are skipped.
    """
    from tqdm.auto import tqdm

    from .data.sources import iter_items, list_sources
    from .image import read_image

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    acc = UsageAccumulator(tok.codebook_sizes, max_position_cells=max_position_cells)
    buf: list[torch.Tensor] = []  # preprocessed images waiting for a forward pass (< batch_size of them)

    def encode(x: torch.Tensor) -> None:
        levels = tok.encode_pixels(x)
        acc.update(tuple(levels) if isinstance(levels, (tuple, list)) else (levels,))

    def flush() -> None:
        if buf:
            x = torch.cat(buf)
            buf.clear()
            for start in range(0, x.shape[0], batch_size):
                encode(x[start : start + batch_size])

    def add(x: torch.Tensor) -> None:
        if buf and x.shape[2:] != buf[0].shape[2:]:  # size=None: another image size starts a new batch
            flush()
        buf.append(x)
        if sum(b.shape[0] for b in buf) >= batch_size:
            flush()

    def read(name: str, src: Any) -> None:
        try:
            if isinstance(src, Exception):
                raise src
            x, _ = tok.preprocess(src if isinstance(src, str) else read_image(src, name=name)[0], size=size)
        except InputError as e:  # unreadable or unusable file: skip, count, list
            acc.skip(name, e)
            return
        add(x)

    if _is_paths(images):
        cap = {} if max_member_bytes is None else {"max_member_bytes": max_member_bytes}
        works = list_sources([images] if isinstance(images, (str, os.PathLike)) else list(images), **cap)
        total = sum(len(w) + len(w.source_errors) for w in works)
        with tqdm(total=total, desc="usage", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for name, src in iter_items(works):
                read(name, src)
                bar.update()
            flush()
        source = "images"
    else:
        if isinstance(images, (list, tuple)) and images and all(_is_array(b) and b.ndim == 4 for b in images):
            batches: Iterable[Any] = images  # a list of [B, C, H, W] batches
        elif _is_array(images) or isinstance(images, (list, tuple)) or not isinstance(images, Iterable):
            batches = [images]  # one batch (or one image); preprocess checks it
        else:
            batches = images  # a loader, or a generator of batches or file paths
        source = "tensors"
        with tqdm(desc="usage", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for batch in batches:
                if isinstance(batch, (str, os.PathLike)):
                    source = "images"
                    read(str(batch), str(batch))
                    bar.update()
                else:
                    x, _ = tok.preprocess(_batch_images(batch), size=size)
                    add(x)
                    bar.update(x.shape[0])
            flush()
    return acc.result(top=top, model=tok.name, config_hash=tok.provenance["config_hash"], family=tok.config.family,
                      source=source)


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

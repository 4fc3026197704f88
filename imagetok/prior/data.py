"""Token data for priors: a ``tokenize-dataset`` folder (Parquet shards) or in-memory tensors.

A folder has ``dataset_info.json`` (tokenizer name, ``config_hash``, codebook sizes; class names
under ``"classes"`` when labelled) and ``data/*.parquet`` with a ``grid`` and a ``tokens`` column
(levels concatenated coarse to fine) and, when labelled, an int ``label`` column.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError


@dataclass
class TokenData:
    """Every row's tokens in memory.

    Attributes:
        tokens: int ``[N, L]`` (levels flattened in raster order and concatenated coarse to fine).
        labels: int64 ``[N]`` class ids, or None.
        grid: ``(h, w)`` per level, flattened (``(h, w)`` or ``(ht, wt, hb, wb)``).
        codebook_sizes: per level.
        classes: class names (index = label id), or None.
        tokenizer: ``{"name", "config_hash", "config", "family"}`` of the tokenizer, or None (unknown).
    """

    tokens: torch.Tensor
    labels: torch.Tensor | None
    grid: tuple[int, ...]
    codebook_sizes: tuple[int, ...]
    classes: tuple[str, ...] | None = None
    tokenizer: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def grid_shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple((self.grid[i], self.grid[i + 1]) for i in range(0, len(self.grid), 2))

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else 0

    def levels(self, index: torch.Tensor | slice | None = None) -> tuple[torch.Tensor, ...]:
        """Rows as int64 ``[B, h, w]`` grids, one per level."""
        t = self.tokens if index is None else self.tokens[index]
        out, pos = [], 0
        for h, w in self.grid_shapes:
            out.append(t[:, pos : pos + h * w].long().reshape(-1, h, w))
            pos += h * w
        return tuple(out)

    def subset(self, index: torch.Tensor | slice) -> "TokenData":
        labels = None if self.labels is None else self.labels[index]
        return TokenData(self.tokens[index], labels, self.grid, self.codebook_sizes, self.classes, self.tokenizer)

    @classmethod
    def from_tensors(
        cls,
        tokens: Any,
        labels: Any = None,
        *,
        codebook_sizes: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        tokenizer: Any = None,
    ) -> "TokenData":
        """From what ``Tokenizer.encode`` returns for a batch (``[N, h, w]`` or a ``(top, bottom)`` tuple).

        Args:
            labels: int ``[N]`` class ids, or None.
            codebook_sizes: per level; taken from ``tokenizer`` when given, else required.
            tokenizer: the :class:`~imagetok.Tokenizer` that made the tokens (recorded so the prior
                can refuse another tokenizer's tokens).
        """
        levels = tokens if isinstance(tokens, (tuple, list)) else (tokens,)
        levels = [torch.as_tensor(t) for t in levels]
        if any(t.ndim != 3 or t.is_floating_point() for t in levels):
            raise InputError(f"tokens must be integer [N, h, w] grids, got {[(t.dtype, tuple(t.shape)) for t in levels]}")
        info = None
        if tokenizer is not None:
            from ..config import config_hash, config_to_dict

            codebook_sizes = tokenizer.codebook_sizes
            info = {"name": tokenizer.name, "config_hash": config_hash(tokenizer.config), "config": config_to_dict(tokenizer.config),
                    "family": tokenizer.config.family}  # fmt: skip
        if codebook_sizes is None:
            raise InputError("give codebook_sizes or tokenizer with in-memory tokens")
        if len(codebook_sizes) != len(levels):
            raise InputError(f"{len(levels)} token level(s) for {len(codebook_sizes)} codebook(s)")
        for t, k in zip(levels, codebook_sizes):
            if int(t.min()) < 0 or int(t.max()) >= k:
                raise InputError(f"token ids must be in [0, {k}), got min {int(t.min())}, max {int(t.max())}")
        grid = tuple(int(s) for t in levels for s in t.shape[1:])
        flat = torch.cat([t.reshape(t.shape[0], -1).long() for t in levels], 1)
        lab = None
        if labels is not None:
            lab = torch.as_tensor(labels).long().reshape(-1)
            if lab.shape[0] != flat.shape[0]:
                raise InputError(f"{lab.shape[0]} labels for {flat.shape[0]} token grids")
            if len(lab) and int(lab.min()) < 0:
                raise InputError("labels must be >= 0")
            if classes and len(lab) and int(lab.max()) >= len(classes):
                raise InputError(f"label {int(lab.max())} is out of range for {len(classes)} classes")
        return cls(flat, lab, grid, tuple(int(k) for k in codebook_sizes), tuple(classes) if classes else None, info)


def load_token_data(source: Any) -> TokenData:
    """A :class:`TokenData`, a ``tokenize-dataset`` folder, or a token file from ``imagetok encode -o``
    (no labels) as :class:`TokenData` (for tensors see :meth:`TokenData.from_tensors`).

    Raises:
        InputError: not a token dataset, rows with different grids, a bad label column.
    """
    if isinstance(source, TokenData):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return _read_token_file(path) if path.is_file() else _read_folder(path)
    raise InputError(f"token data must be a tokenize-dataset folder or TokenData, got {type(source).__name__}")


def _read_folder(folder: Path) -> TokenData:
    info_path = folder / "dataset_info.json"
    if not info_path.is_file():
        raise InputError(f"{folder}: not a token dataset (no dataset_info.json; make one with `imagetok tokenize-dataset`)")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{info_path}: not valid JSON ({e})") from None
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover
        raise InputError("reading Parquet token datasets needs pyarrow: pip install 'imagetok[datasets]'") from None
    tok = info.get("tokenizer") or {}
    sizes = tuple(int(k) for k in tok.get("codebook_sizes", ()))
    if not sizes:
        raise InputError(f"{info_path}: no tokenizer codebook_sizes")
    files = [folder / s["file"] for s in info.get("shards", [])] or sorted((folder / "data").glob("*.parquet"))
    if not files:
        raise InputError(f"{folder}: no Parquet shards")
    rows, labels, grids = [], [], set()
    has_label = None
    for path in files:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if has_label is None:
            has_label = "label" in names
        elif has_label != ("label" in names):
            raise InputError(f"{path}: some shards have a 'label' column and some do not")
        table = pf.read(columns=["grid", "tokens"] + (["label"] if has_label else []))
        g = table.column("grid").combine_chunks()
        t = table.column("tokens").combine_chunks()
        g_off, g_val = g.offsets.to_numpy(), g.values.to_numpy()
        t_off, t_val = t.offsets.to_numpy(), t.values.to_numpy()
        for j in range(len(t_off) - 1):
            grids.add(tuple(int(x) for x in g_val[g_off[j] : g_off[j + 1]]))
            rows.append(t_val[t_off[j] : t_off[j + 1]])
        if has_label:
            col = table.column("label")
            if col.null_count:
                raise InputError(f"{path}: the 'label' column has {col.null_count} missing value(s)")
            labels.append(col.to_numpy().astype(np.int64))
    if not rows:
        raise InputError(f"{folder}: the dataset has no rows")
    if len(grids) != 1:
        raise InputError(f"{folder}: rows have different token grids {sorted(grids)[:5]}; a prior needs one grid size "
                         "(tokenize with a fixed --size)")  # fmt: skip
    grid = grids.pop()
    if len(grid) != 2 * len(sizes):
        raise InputError(f"{folder}: grid {list(grid)} does not fit {len(sizes)} codebook level(s)")
    flat = torch.from_numpy(np.stack(rows).astype(np.int32))  # codebooks are < 2**20 (PriorConfig)
    classes = info.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise InputError(f"{info_path}: 'classes' must be a list of class names")
    lab = torch.from_numpy(np.concatenate(labels)) if has_label else None
    if lab is not None and len(lab) and (int(lab.min()) < 0 or (classes and int(lab.max()) >= len(classes))):
        raise InputError(f"{folder}: labels must be in [0, {len(classes) if classes else 'num_classes'}), got {int(lab.min())}..{int(lab.max())}")
    tokenizer = {"name": tok.get("name"), "config_hash": tok.get("config_hash"), "config": tok.get("config"), "family": tok.get("family")}
    return TokenData(flat, lab, grid, sizes, tuple(classes) if classes else None, tokenizer)


def _read_token_file(path: Path) -> TokenData:
    from ..config import config_from_dict
    from ..errors import ConfigError
    from ..tokenfile import load_tokens

    levels, meta = load_tokens(path)
    if not meta.get("config"):
        raise InputError(f"{path}: the token file does not record its tokenizer's config (a .npy file?); "
                         "load the tokens and use TokenData.from_tensors(..., tokenizer=tok)")  # fmt: skip
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as e:
        raise InputError(f"{path}: bad tokenizer config in the token file ({e})") from None
    data = TokenData.from_tensors(levels if len(levels) > 1 else levels[0], codebook_sizes=cfg.codebook_sizes)
    data.tokenizer = {"name": meta.get("model"), "config_hash": meta.get("config_hash"), "config": meta["config"], "family": cfg.family}
    return data

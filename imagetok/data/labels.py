"""Per-image class labels for a source (``tokenize-dataset --labels``), e.g. for class-conditional priors.

- ``"folder"``: ImageFolder layout ``SRC/<class>/<image>``: an image's class is its first folder;
  class ids index the sorted class names.
- a ``.csv`` file with the header ``path,label``, or a ``.json`` object ``{path: label}``; paths
  are keys as in the dataset, paths relative to the label file's folder, or absolute paths; labels
  are ids >= 0 (kept as given) or class names (ids index the sorted names).

A missing or invalid label is an :class:`~imagetok.errors.InputError` before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .sources import WorkList


def _read_label_file(path: Path) -> dict[str, Any]:
    """``path -> label`` from a CSV (header ``path,label``) or a JSON object."""
    import csv

    if not path.is_file():
        raise InputError(f"--labels {path}: no such file (use 'folder' for class subfolders, or a .csv/.json file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--labels {path}: not a UTF-8 text file") from None
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--labels {path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise InputError(f"--labels {path}: expected a JSON object {{path: label}}, got {type(d).__name__}")
        return d
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["path", "label"]:
        raise InputError(f"--labels {path}: a CSV file needs the header 'path,label' (or use a JSON object path -> label)")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise InputError(f"--labels {path}, line {n}: expected 2 columns (path,label), got {len(row)}")
        out[row[0].strip()] = row[1].strip()
    return out


def _label_values(values: list[Any], where: str) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as given (ids >= 0; no class names), or names -> ids in sorted name order."""
    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, str) and re.fullmatch(r"\d+", v):
            return int(v)
        return None

    ints = [as_int(v) for v in values]
    if all(i is not None for i in ints):
        return np.asarray(ints, dtype=np.int64), None
    bad = [v for v in values if not (isinstance(v, str) and v.strip()) and as_int(v) is None]
    if bad:
        raise InputError(f"{where}: labels must be non-negative ints or non-empty class names, got {bad[:3]}")
    if any(i is not None for i in ints):
        mixed = [v for v, i in zip(values, ints) if i is not None][:3]
        raise InputError(f"{where}: labels mix class names and numbers (e.g. {mixed}); use one kind")
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[v] for v in values], dtype=np.int64), classes


def read_labels(work: WorkList, spec: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """The label of every key (int64 ``[len(work)]``) and the plan's ``labels`` block.

    ``spec`` is ``"folder"`` (ImageFolder layout: the first folder of each key is its class) or a
    CSV/JSON file mapping paths to labels (keys as in the dataset, or paths relative to the label
    file's folder, or absolute paths).
    """
    keys = [work.keys[i] for i in range(len(work))]
    if str(spec) == "folder":
        if work.kind != "folder":
            raise InputError(f"--labels folder needs a folder source laid out as SRC/<class>/<image>, got a {work.kind} source")
        flat = [k for k in keys if "/" not in k]
        if flat:
            raise InputError(f"--labels folder: {len(flat)} image(s) are not inside a class folder (SRC/<class>/<image>), e.g. {flat[:3]}")
        labels, classes = _label_values([k.split("/", 1)[0] for k in keys], "--labels folder")
        return labels, {"source": "folder", "classes": classes, "digest": _digest(labels)}
    path = Path(spec)
    table = _read_label_file(path)
    base = path.resolve().parent
    norm = {os.path.normpath(k): v for k, v in table.items()}
    norm.update({os.path.normpath(os.path.join(base, k)): v for k, v in table.items()})
    values, missing = [], []
    for k in keys:
        v = norm.get(os.path.normpath(k), norm.get(os.path.normpath(str(work.root / k)), _MISSING))
        if v is _MISSING:
            missing.append(k)
        values.append(v)
    if missing:
        raise InputError(f"--labels {path}: no label for {len(missing)} of {len(keys)} image(s), e.g. {missing[:3]}")
    labels, classes = _label_values(values, f"--labels {path}")
    if labels.min() < 0:
        raise InputError(f"--labels {path}: labels must be >= 0, got {int(labels.min())}")
    return labels, {"source": str(path), "classes": classes, "digest": _digest(labels)}


_MISSING: Any = object()


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:32]


def column_labels(work: Any) -> tuple[np.ndarray, dict]:
    """The labels of a table source's ``label_column`` (:class:`imagetok.data.tables.TableSource`)
    and the plan's ``labels`` block: a ``datasets`` ClassLabel keeps its ids and names, other
    values follow the rules of :func:`read_labels`."""
    where = f"--label-column {work.label_column}"
    if work.label_names is not None:
        ids = np.asarray([-1 if v is None else v for v in work.labels], dtype=np.int64)
        if ids.min() < 0 or ids.max() >= len(work.label_names):
            raise InputError(f"{where}: class ids must be in [0, {len(work.label_names)}), got {int(ids.min())}..{int(ids.max())}")
        classes = work.label_names
    else:
        ids, classes = _label_values(list(work.labels), where)
        if ids.min() < 0:
            raise InputError(f"{where}: labels must be >= 0, got {int(ids.min())}")
    return ids, {"source": f"column:{work.label_column}", "classes": classes, "digest": _digest(ids)}

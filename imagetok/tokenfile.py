"""Token files written by ``imagetok encode -o``: ``.safetensors``, ``.json`` or ``.npy``.

- ``.safetensors``: tensors ``tokens`` (or ``tokens_0``, ``tokens_1``... one per level, coarse to
  fine), int64 ``[B, h, w]``; string metadata ``imagetok_format``, ``model``, ``config`` (JSON),
  ``config_hash``, ``weights_sha256`` (of the weights that made the tokens) and ``images`` (JSON
  list of source paths, one per grid, or empty).
- ``.json``: ``{"imagetok_format", "model", "config", "config_hash", "weights_sha256", "images",
  "levels": [{"shape", "tokens"}]}`` with nested lists of integers.
- ``.npy``: the int64 ``[B, h, w]`` array only (single-level models); it carries no metadata, so
  decoding it needs ``--model``.

Files are written atomically (temporary file, then rename) and never replace an existing file
unless ``overwrite=True``. Reading is strict: other tensor names, non-integer values, a names list
that does not match the number of grids, or an empty ``levels`` list raise InputError.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

from .config import Config, config_hash, config_to_dict
from .errors import InputError
from .serialization import atomic_write

FORMAT = "imagetok-tokens/1"
SUFFIXES = (".safetensors", ".json", ".npy")


def save_tokens(
    path: str | os.PathLike,
    levels: tuple[torch.Tensor, ...],
    *,
    model: str | None,
    config: Config,
    images: list[str] | None = None,
    weights_sha256: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``[B, h, w]`` token grids (one per level) with the model's identity.

    Args:
        images: source name of each grid (``B`` strings), or None/empty.
        weights_sha256: sha256 of the model's weights (``Tokenizer.provenance["weights_sha256"]``),
            so that decoding can refuse another model's weights.
        overwrite: replace an existing file (default: refuse).

    Raises:
        InputError: unknown suffix, ``.npy`` for a multi-level model, names that are not strings
            or whose count differs from the number of grids, or an existing file without
            ``overwrite``. Nothing is written then.
    """
    p = Path(path)
    if p.suffix not in SUFFIXES:
        raise InputError(f"{p}: unknown token file type {p.suffix!r}; use one of {SUFFIXES}")
    levels = tuple(t.detach().cpu().long().contiguous() for t in levels)
    if p.suffix == ".npy" and len(levels) != 1:
        raise InputError(f"{p}: .npy holds one token grid; use .safetensors or .json for {len(levels)} levels")
    images = list(images or [])
    bad = [type(n).__name__ for n in images if not isinstance(n, str)]
    if bad:
        raise InputError(f"{p}: image names must be strings, got {bad[0]}")
    if images and len(images) != levels[0].shape[0]:
        raise InputError(f"{p}: {len(images)} image name(s) for {levels[0].shape[0]} token grid(s); they must match")
    if p.exists() and not overwrite:
        raise InputError(f"{p}: exists; pass --overwrite (overwrite=True) to replace it")
    meta = {
        "imagetok_format": FORMAT,
        "model": model,
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "weights_sha256": weights_sha256,
        "images": images,
    }
    if p.suffix == ".safetensors":
        names = ["tokens"] if len(levels) == 1 else [f"tokens_{i}" for i in range(len(levels))]
        data = _st_save(dict(zip(names, levels)), metadata={k: json.dumps(v) for k, v in sorted(meta.items())})
    elif p.suffix == ".json":
        meta["levels"] = [{"shape": list(t.shape), "tokens": t.tolist()} for t in levels]
        data = (json.dumps(meta) + "\n").encode()
    else:
        buf = io.BytesIO()
        np.save(buf, levels[0].numpy())
        data = buf.getvalue()
    try:
        atomic_write(p, data, overwrite=overwrite)
    except FileExistsError:
        raise InputError(f"{p}: exists; pass --overwrite (overwrite=True) to replace it") from None
    return p


def _int_grid(value: Any, where: str) -> torch.Tensor:
    """Nested lists of ints (never bools or floats) -> int64 tensor."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif type(v) is not int:
            raise InputError(f"{where}: token values must be integers, got {v!r}")
    try:
        return torch.tensor(value, dtype=torch.long)
    except (ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise InputError(f"{where}: tokens must be a rectangular [B, h, w] list of integers ({e})") from None


def load_tokens(path: str | os.PathLike) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """Read a token file. Returns (levels as int64 ``[B, h, w]`` tensors, metadata dict).

    Metadata has ``model``, ``config`` (dict), ``config_hash``, ``weights_sha256`` (files written
    before it existed lack it) and ``images`` where the format stores them (empty for ``.npy``).

    Raises:
        InputError: missing, unreadable or malformed file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such token file")
    try:
        if p.suffix == ".safetensors":
            with safe_open(str(p), "pt") as f:
                raw = f.metadata() or {}
                keys = sorted(f.keys(), key=lambda k: (len(k), k))
                expected = ["tokens"] if len(keys) == 1 else [f"tokens_{i}" for i in range(len(keys))]
                if keys != expected:
                    raise InputError(f"{p}: expected a tensor named 'tokens' (or tokens_0, tokens_1... per level), got {keys}")
                levels = tuple(f.get_tensor(k) for k in keys)
            meta = {k: json.loads(v) for k, v in raw.items()}
        elif p.suffix == ".json":
            meta = json.loads(p.read_text())
            if not isinstance(meta, dict):
                raise InputError(f"{p}: not an imagetok token file (not a JSON object)")
            raw_levels = meta.pop("levels", None)
            if not isinstance(raw_levels, list) or not raw_levels:
                raise InputError(f"{p}: 'levels' must be a non-empty list of {{'shape', 'tokens'}}, got {raw_levels!r}")
            levels = []
            for i, lv in enumerate(raw_levels):
                if not isinstance(lv, dict) or "tokens" not in lv:
                    raise InputError(f"{p}: levels[{i}] must be an object with 'shape' and 'tokens'")
                t = _int_grid(lv["tokens"], f"{p}: levels[{i}]")
                if "shape" in lv and list(t.shape) != lv["shape"]:
                    raise InputError(f"{p}: levels[{i}] has shape {list(t.shape)}, but says {lv['shape']}")
                levels.append(t)
            levels = tuple(levels)
        elif p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            arr = arr[None] if arr.ndim == 2 else arr  # a single [h, w] grid
            meta = {}
            levels = (torch.from_numpy(np.ascontiguousarray(arr)),)
        else:
            raise InputError(f"{p}: unknown token file type {p.suffix!r}; expected one of {SUFFIXES}")
    except InputError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not a readable token file ({e})") from None
    if p.suffix != ".npy" and meta.get("imagetok_format") != FORMAT:
        raise InputError(f"{p}: not an imagetok token file (format {meta.get('imagetok_format')!r})")
    for t in levels:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim != 3:
            raise InputError(f"{p}: token arrays must be integer [B, h, w], got {t.dtype} {tuple(t.shape)}")
    images = meta.get("images") or []
    if not isinstance(images, list) or not all(isinstance(n, str) for n in images):
        raise InputError(f"{p}: 'images' must be a list of strings")
    if images and len(images) != levels[0].shape[0]:
        raise InputError(f"{p}: {len(images)} image name(s) for {levels[0].shape[0]} token grid(s); the file is inconsistent")
    return tuple(t.long() for t in levels), meta

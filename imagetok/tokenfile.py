"""Token files written by ``imagetok encode -o``: ``.safetensors``, ``.json`` or ``.npy``.

- ``.safetensors``: tensors ``tokens`` (or ``tokens_0``, ``tokens_1``... one per level, coarse to
  fine), int64 ``[B, h, w]``; string metadata ``imagetok_format``, ``model``, ``config`` (JSON),
  ``config_hash`` and ``images`` (JSON list of source paths).
- ``.json``: ``{"imagetok_format", "model", "config", "config_hash", "images", "levels": [{"shape",
  "tokens"}]}`` with nested lists.
- ``.npy``: the int64 ``[B, h, w]`` array only (single-level models); it carries no metadata, so
  decoding it needs ``--model``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config, config_hash, config_to_dict
from .errors import InputError

FORMAT = "imagetok-tokens/1"
SUFFIXES = (".safetensors", ".json", ".npy")


def save_tokens(
    path: str | os.PathLike,
    levels: tuple[torch.Tensor, ...],
    *,
    model: str | None,
    config: Config,
    images: list[str | None] | None = None,
) -> Path:
    """Write ``[B, h, w]`` token grids (one per level) with the model's identity.

    Raises:
        InputError: unknown suffix, or ``.npy`` for a multi-level model.
    """
    p = Path(path)
    meta = {
        "imagetok_format": FORMAT,
        "model": model,
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "images": images or [],
    }
    levels = tuple(t.detach().cpu().long().contiguous() for t in levels)
    if p.suffix == ".safetensors":
        names = ["tokens"] if len(levels) == 1 else [f"tokens_{i}" for i in range(len(levels))]
        save_file(dict(zip(names, levels)), str(p), metadata={k: json.dumps(v) for k, v in meta.items()})
    elif p.suffix == ".json":
        meta["levels"] = [{"shape": list(t.shape), "tokens": t.tolist()} for t in levels]
        p.write_text(json.dumps(meta) + "\n")
    elif p.suffix == ".npy":
        if len(levels) != 1:
            raise InputError(f"{p}: .npy holds one token grid; use .safetensors or .json for {len(levels)} levels")
        np.save(p, levels[0].numpy())
    else:
        raise InputError(f"{p}: unknown token file type {p.suffix!r}; use one of {SUFFIXES}")
    return p


def load_tokens(path: str | os.PathLike) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """Read a token file. Returns (levels as int64 ``[B, h, w]`` tensors, metadata dict).

    Metadata has ``model``, ``config`` (dict), ``config_hash`` and ``images`` where the format
    stores them (empty for ``.npy``).

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
                levels = tuple(f.get_tensor(k) for k in keys)
            meta = {k: json.loads(v) for k, v in raw.items()}
        elif p.suffix == ".json":
            meta = json.loads(p.read_text())
            levels = tuple(torch.tensor(lv["tokens"], dtype=torch.long) for lv in meta.pop("levels"))
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
        if t.is_floating_point() or t.ndim != 3:
            raise InputError(f"{p}: token arrays must be integer [B, h, w], got {t.dtype} {tuple(t.shape)}")
    return tuple(t.long() for t in levels), meta

"""Chameleon's image tokenizer (also Anole's, Lumina-mGPT's and Liquid's): ``tokenizer/vqgan.ckpt`` + ``vqgan.yaml``.

``facebookresearch/chameleon``'s ``chameleon/inference/vqgan.py`` is taming's ``VQModel`` verbatim, so the
file is a taming Lightning checkpoint (read with ``weights_only=True``: it holds only tensors and an
``OrderedDict``) and ``vqgan.yaml`` a taming config (``ch 128, ch_mult [1,1,2,2,4], attn_resolutions [],
n_embed 8192, resolution 512``). Accepts the ``.ckpt`` (``vqgan.yaml`` beside it is read) or the
``tokenizer/`` folder (or its parent). Licence: Chameleon Research License, non-commercial research
use only, gated download; do not re-host converted weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConversionError
from . import _taming
from ._common import Mapped
from ._io import read_config_file

LICENCE_NOTE = "Chameleon Research License: non-commercial research use only; gated by Meta, do not re-host"


def find(path: Path) -> Path:
    if path.is_file():
        return path
    for cand in (path / "vqgan.ckpt", path / "tokenizer" / "vqgan.ckpt"):
        if cand.is_file():
            return cand
    raise ConversionError(f"{path}: no vqgan.ckpt (expected Chameleon's tokenizer/ folder or the .ckpt file)")


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    ckpt = find(path)
    if cfg is None:
        yaml = ckpt.with_name("vqgan.yaml")
        if not yaml.is_file():
            raise ConversionError(f"{ckpt}: no vqgan.yaml beside it; pass config= (Chameleon's tokenizer/vqgan.yaml)")
        cfg = read_config_file(yaml)
        notes.append(f"read {yaml.name}")
    notes.append(LICENCE_NOTE)
    return _taming.read(ckpt, cfg, use_ema=use_ema, trust_pickle=trust_pickle, notes=notes)

"""Shared pieces of the CLI commands: the ``--size`` argument, and output paths checked before any
work (never an input, never an existing file without ``--overwrite``, never a missing folder)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InputError

IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


def _check_output(path: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before any work: an output that is one of the inputs, an existing file without
    --overwrite, or a missing parent folder."""
    for i in inputs:
        if path.exists() and i.exists() and os.path.samefile(path, i) or path.resolve() == i.resolve():
            raise InputError(f"{path}: is an input; refusing to overwrite it (choose another output path)")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file path")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such folder for the output {path.name}")


def _unique_stems(paths: list, count: int) -> list[str]:
    stems = [Path(p).stem if p else f"{i:05d}" for i, p in enumerate(paths or [None] * count)]
    if len(set(stems)) != len(stems):
        stems = [f"{i:05d}_{s}" for i, s in enumerate(stems)]
    return stems


def _output_paths(output: str, count: int, images: list, inputs: list[Path], overwrite: bool) -> list[Path]:
    out = Path(output)
    if out.suffix and not out.is_dir():
        if count != 1:
            raise InputError(f"{out}: the token file holds {count} images; -o must be a folder for several")
        paths = [out]
    else:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{s}.png" for s in _unique_stems(images, count)]
    for p in paths:
        if p.suffix.lower() not in IMAGE_OUTPUTS:
            raise InputError(f"{p}: cannot write an image file there; use one of {', '.join(IMAGE_OUTPUTS)}")
        _check_output(p, inputs, overwrite)
    return paths


def _size_arg(text: str):
    """``--size``: a side length, ``native`` (keep each image's size) or ``0`` (the same, older spelling)."""
    if text == "native" or text == "0":
        return "native"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'native', got {text!r}") from None

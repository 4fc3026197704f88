"""Image-folder data for training: recursive scan, bad files skipped and counted, random crops/flips.

Sampling is a pure function of ``(seed, step, rank)``: a resumed run draws exactly the batches the
uninterrupted run would have drawn, with no data-loader state to save.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.sources import list_image_files
from ..errors import InputError
from ..image import _pil_to_array, fit, load_image

log = logging.getLogger(__name__)


def _uint8(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype == np.uint8 else (arr * 255).round().astype(np.uint8)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, walked as every imagetok command walks a folder
    (:func:`imagetok.data.sources.list_image_files`). Raises InputError if missing or empty."""
    return list_image_files(folder)


class ImageFolder:
    """Random-crop sampler over a folder of images.

    Args:
        folder: searched recursively for image files.
        crop_size: side of the square crops.
        scale_range: if set, each image's shorter side is first resized to a random length in
            ``[lo, hi]`` (so crops see the scale that evaluation resizes to).
        hflip: random horizontal flips.
        cache: keep decoded images in memory.

    Images that cannot be read, or are smaller than ``crop_size`` (after scaling), are skipped and
    counted in ``skipped`` (path -> reason). No usable image at all raises InputError.
    """

    def __init__(self, folder: str | Path, crop_size: int, *, scale_range=None, hflip=True, cache=True):
        self.crop_size, self.scale_range, self.hflip, self.cache = crop_size, scale_range, hflip, cache
        self.skipped: dict[str, str] = {}
        self.files: list[Path] = []
        self._images: list[np.ndarray] = []
        min_side = scale_range[0] if scale_range else None
        for path in list_images(folder):
            try:
                arr = _uint8(_pil_to_array(load_image(path)))
            except InputError as e:
                self.skipped[str(path)] = str(e)
                continue
            side = min(arr.shape[:2]) if min_side is None else min_side
            if side < crop_size:
                self.skipped[str(path)] = f"smaller than crop_size {crop_size} (shorter side {side})"
                continue
            self.files.append(path)
            if cache:
                self._images.append(arr)
        if self.skipped:
            log.warning("skipped %d unusable image(s) in %s", len(self.skipped), folder)
        if not self.files:
            first = "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:3])
            raise InputError(f"{folder}: none of the {len(self.skipped)} image(s) is usable for crops of {crop_size}px ({first}...)")

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, i: int) -> np.ndarray:
        return self._images[i] if self.cache else _uint8(_pil_to_array(load_image(self.files[i])))

    def batch(self, batch_size: int, seed: int, step: int, rank: int = 0) -> torch.Tensor:
        """Float32 ``[B, 3, crop, crop]`` in [0, 1], determined by ``(seed, step, rank)``."""
        g = np.random.default_rng([seed, step, rank])
        out = np.empty((batch_size, self.crop_size, self.crop_size, 3), np.float32)
        for b in range(batch_size):
            a = self._image(int(g.integers(len(self.files))))
            if self.scale_range:
                side = int(g.integers(self.scale_range[0], self.scale_range[1] + 1))
                h, w = a.shape[:2]
                s = side / min(h, w)
                size = (max(side, round(w * s)), max(side, round(h * s)))
                a = np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BICUBIC))
            h, w = a.shape[:2]
            top, left = int(g.integers(h - self.crop_size + 1)), int(g.integers(w - self.crop_size + 1))
            crop = a[top : top + self.crop_size, left : left + self.crop_size]
            if self.hflip and g.random() < 0.5:
                crop = crop[:, ::-1]
            out[b] = crop.astype(np.float32) / 255.0
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_eval_images(folder: str | Path, size: int) -> tuple[torch.Tensor, list[str]]:
    """Every readable image of ``folder``: shorter side resized to ``size``, centre-cropped.

    Returns (float32 ``[N, 3, size, size]`` in [0, 1], file names). Unreadable files are skipped.
    """
    arrays, names = [], []
    for path in list_images(folder):
        try:
            a = fit(_pil_to_array(load_image(path)), size, 1)
        except InputError as e:
            log.warning("eval: skipping %s (%s)", path, e)
            continue
        arrays.append(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a)
        names.append(path.name)
    if not arrays:
        raise InputError(f"{folder}: no readable eval images")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), names

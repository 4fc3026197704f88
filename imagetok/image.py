"""The image boundary: turn what users pass into model-ready pixels, and model output into images.

Accepted inputs (one image or a list of them):

- a path (``str`` / ``os.PathLike``) to any image file PIL can read;
- a ``PIL.Image`` in any mode (grayscale, RGBA, palette, 16-bit...);
- a numpy array ``HxW``, ``HxWx{1,3,4}`` or ``BxHxWxC``; uint8 (0..255), uint16 (0..65535) or float
  in [0, 1];
- a torch tensor ``CxHxW`` or ``BxCxHxW`` with C in {1, 3}; uint8 (0..255) or float in [0, 1].

Alpha is composited onto white; grayscale is repeated to RGB; files and PIL images are turned
upright by their EXIF orientation (so a path and ``Image.open`` of it give the same tokens); float images whose values are exactly 8-bit levels (``uint8 / 255``, as from
``ToTensor``) are treated as the uint8 image, so they give the same tokens as the file they came
from. Every image is then resized so its
shorter side is ``size`` (bicubic, antialiased) and centre-cropped to ``size x size``; with
``size="native"`` it keeps its own size, centre-cropped to a multiple of the model's downsampling
factor. The result is float32 ``[B, 3, H, W]`` in [0, 1].

Limits, checked before any large allocation (raise them by setting the module attribute):

- a file with more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused right after its header is
  read (decompression-bomb guard; an explicit check, no process-wide warning filter);
- ``size`` and each side of a ``"native"``-size image at most :data:`MAX_SIZE`;
- the resized image before its centre crop at most :data:`MAX_RESIZE_PIXELS` pixels (a 1x40000
  strip would otherwise be resized to 256x10240000);
- animated files (GIF, APNG, WebP... with more than one frame) are refused: open the file with PIL,
  ``seek()`` to the frame you want and pass that image (a PIL image is read at its current frame).

Importing imagetok changes no PIL setting; a truncated file is an error unless the caller has set
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

NATIVE = "native"  # size=NATIVE: keep each image's own size (cropped to a multiple of the factor)
MAX_SIZE = 4096  # largest `size`, and largest side of a native-size image
MAX_RESIZE_PIXELS = 64 * 2**20  # largest resized image before the centre crop (64 Mpx: 192 MB as uint8)


def load_image(path: str | os.PathLike, *, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file (see :func:`read_image` for ``draft_size``).

    Raises:
        InputError: missing file, a directory, not an image, truncated/corrupt data, zero size,
            or more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression-bomb guard).
    """
    return read_image(path, draft_size=draft_size)[0]


def read_image(
    source: str | os.PathLike | bytes, *, name: str | None = None, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode an image from a path or from the bytes of an image file.

    Args:
        source: a path, or the encoded file's bytes (e.g. a member of a .tar shard).
        name: what error messages call the image (default: the path, or ``"<bytes>"``).
        draft_size: when set and the file is a JPEG whose shorter side is at least
            ``2 * draft_size``, the decoder downscales by 1/2, 1/4 or 1/8 while decoding (DCT scaling,
            PIL ``draft``) so the decoded shorter side stays >= ``draft_size``: 2-4x faster, and the
            later resize to ``draft_size`` sees slightly different (not worse) pixels.

    Returns:
        (image, (width, height) of the upright image at full resolution, before any draft scaling).

    Raises:
        InputError: as :func:`load_image`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(source)
        label = name or "<bytes>"
    else:
        fp = Path(source)
        label = name or str(fp)
        if not fp.exists():
            raise InputError(f"{label}: no such file")
        if fp.is_dir():
            raise InputError(f"{label}: is a directory, expected an image file")
    try:
        with Image.open(fp) as im:  # reads the header only
            _check_pixels(im, label)
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise InputError(
                    f"{label}: animated image with {frames} frames; imagetok encodes still images: open it with "
                    "PIL, seek() to the frame you want and pass that image"
                )
            original = im.size
            if draft_size and im.format == "JPEG" and min(im.size) >= 2 * draft_size:
                im.draft(None, (draft_size, draft_size))
            im.load()
            img = _exif_upright(im)
            if img.size != im.size:  # turned by 90 degrees: report the upright size
                original = original[::-1]
            img = img if img.mode != "P" else img.convert("RGBA")
    except Image.DecompressionBombError as e:  # PIL's own check (over twice the limit)
        raise InputError(f"{label}: image too large ({e}); raise PIL.Image.MAX_IMAGE_PIXELS to allow it") from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{label}: corrupt or truncated image ({e})") from None
    if img.width == 0 or img.height == 0:
        raise InputError(f"{label}: image has zero size {img.size}")
    return img, original


def _check_pixels(im: Image.Image, label: str) -> None:
    """The decompression-bomb guard: refuse more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (header size)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        raise InputError(
            f"{label}: image too large ({im.width}x{im.height} = {im.width * im.height} pixels, more than "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit}, a decompression-bomb guard); raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
        )


def _exif_upright(im: Image.Image) -> Image.Image:
    """A copy of ``im`` rotated/flipped as its EXIF orientation says (unreadable EXIF is ignored)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a damaged EXIF block: use the pixels as stored, as other readers do
        return im.copy()


def _pil_upright(img: Image.Image) -> Image.Image:
    """A PIL image turned upright by its EXIF orientation, as files are (unchanged when it has none)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: use the pixels as stored
        return img
    return img if orientation in (1, None) else _exif_upright(img)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8, or float32 in [0, 1] for high-bit-depth modes."""
    if img.width == 0 or img.height == 0:
        raise InputError(f"image has zero size {img.size}")
    try:
        img.load()  # a lazily opened PIL image decodes here
        return _pil_mode_to_array(img)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read PIL image of mode {img.mode!r} as RGB ({e})") from None


def _pil_mode_to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _uint16_to_rgb(np.asarray(img).astype(np.uint16))
    if mode == "I":
        a = np.asarray(img, dtype=np.float64)
        # 32-bit integer images are usually 16-bit data stored wide; scale by the range in use.
        scale = 65535.0 if a.max() > 255 else 255.0
        return _rgb((a / scale).clip(0, 1).astype(np.float32))
    if mode == "F":
        return _rgb(_check_float(np.asarray(img, dtype=np.float32)))
    if mode == "P":
        img = img.convert("RGBA")
    if "A" in img.getbands() or mode == "PA":
        img = img.convert("RGBA")
        return _rgb(np.asarray(img))
    if mode not in ("RGB", "L"):
        img = img.convert("RGB")
    return _rgb(np.asarray(img))


def _check_float(a: np.ndarray) -> np.ndarray:
    """Validate a float image in [0, 1]; returns float32, or uint8 when every value is an 8-bit level."""
    if a.size == 0:
        raise InputError(f"image has zero size, shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError("image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        hint = " (it looks like [-1, 1]: pass (x + 1) / 2)" if lo < 0 else ""
        hint = hint or (" (it looks like 0..255: pass uint8 or x / 255)" if hi > 1.5 else "")
        raise InputError(f"float image values must lie in [0, 1], got min {lo:.4g}, max {hi:.4g}{hint}")
    a = a.clip(0, 1).astype(np.float32, copy=False)
    levels = np.rint(a * 255)
    if np.abs(a * 255 - levels).max() <= 1e-3:  # losslessly 8-bit (e.g. uint8 / 255): same as uint8
        return levels.astype(np.uint8)
    return a


def _rgb(a: np.ndarray) -> np.ndarray:
    """HxW / HxWx{1,3,4} uint8 or float -> HxWx3 of the same kind (alpha composited on white)."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InputError(f"expected an image of shape HxW or HxWxC with C in (1, 3, 4), got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image has zero size {a.shape[1]}x{a.shape[0]}")
    if a.shape[2] == 4:
        alpha = a[:, :, 3:].astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
        rgb = a[:, :, :3].astype(np.float32)
        white = 255.0 if a.dtype == np.uint8 else 1.0
        mixed = rgb * alpha + white * (1 - alpha)
        a = np.rint(mixed).astype(np.uint8) if a.dtype == np.uint8 else mixed.astype(np.float32)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def _uint16_to_rgb(a: np.ndarray) -> np.ndarray:
    """16-bit -> float32 ``v / 65535``; an 8-bit image stored as 16 bits (``v * 257``) -> its uint8."""
    if not (a % 257).any():
        return _rgb((a // 257).astype(np.uint8))
    return _rgb(a.astype(np.float32) / 65535.0)


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.size == 0:
        raise InputError(f"image has zero size, shape {a.shape}")
    if a.dtype == np.uint8:
        return _rgb(a)
    if a.dtype == np.uint16:
        return _uint16_to_rgb(a)
    if a.dtype == np.bool_:
        return _rgb(a.astype(np.uint8) * 255)
    if np.issubdtype(a.dtype, np.floating):
        return _rgb(_check_float(a.astype(np.float32)))
    raise InputError(f"numpy images must be uint8, uint16 or float in [0, 1], got dtype {a.dtype}")


def _tensor_to_rgb(t: torch.Tensor) -> np.ndarray:
    """CxHxW tensor -> HxWx3 numpy (uint8 or float32)."""
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise InputError(
            f"expected a tensor image CxHxW or BxCxHxW with C in (1, 3), got shape {tuple(t.shape)}"
        )
    t = t.detach().cpu()
    if t.numel() == 0:
        raise InputError(f"image has zero size, shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return _rgb(t.permute(1, 2, 0).numpy())
    if t.is_floating_point():
        return _rgb(_check_float(t.float().permute(1, 2, 0).numpy()))
    raise InputError(f"tensor images must be uint8 (0..255) or float in [0, 1], got {t.dtype}")


def to_rgb_arrays(images: Any, *, draft_size: int | None = None) -> tuple[list[np.ndarray], bool, list[str | None]]:
    """Normalise any accepted input to a list of HxWx3 arrays (uint8 or float32 in [0, 1]).

    Returns:
        (arrays, is_batch, names): ``is_batch`` is False for a single image; ``names`` holds the
        file path of each image that came from a path, else None. ``draft_size`` is passed to
        :func:`load_image` for paths (JPEG draft decoding, see :func:`read_image`).
    """
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InputError("got an empty list of images")
        out, names = [], []
        for item in images:
            arrs, batch, nm = to_rgb_arrays(item, draft_size=draft_size)
            if batch:
                raise InputError("a list of images must hold single images, not batches")
            out += arrs
            names += nm
        return out, True, names
    if isinstance(images, (str, os.PathLike)):
        return [_pil_to_array(load_image(images, draft_size=draft_size))], False, [str(images)]
    if isinstance(images, Image.Image):
        return [_pil_to_array(_pil_upright(images))], False, [None]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4 and len(images) == 0:
        raise InputError(f"got an empty batch of images, shape {tuple(images.shape)}")
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [_array_to_rgb(a) for a in images], True, [None] * len(images)
        return [_array_to_rgb(images)], False, [None]
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return [_tensor_to_rgb(t) for t in images], True, [None] * len(images)
        return [_tensor_to_rgb(images)], False, [None]
    raise InputError(
        f"cannot read an image from {type(images).__name__}; expected a path, PIL image, numpy array, "
        "torch tensor, or a list of these"
    )


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    if a.shape[1] == w and a.shape[0] == h:
        return a
    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BICUBIC))
    chans = [Image.fromarray(a[:, :, c], mode="F").resize((w, h), Image.Resampling.BICUBIC) for c in range(3)]
    return np.stack([np.asarray(c) for c in chans], axis=2).clip(0, 1)


def _center_crop(a: np.ndarray, w: int, h: int) -> np.ndarray:
    top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return a[top : top + h, left : left + w]


def fit(a: np.ndarray, size: int | str | None, factor: int, *, name: str | None = None) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size``; with ``size="native"``
    (or None) only centre-crop each side down to a multiple of ``factor``.

    Raises:
        InputError: the result would exceed :data:`MAX_SIZE` per side or the resized image
            :data:`MAX_RESIZE_PIXELS` (checked before resizing); the message names the image.
    """
    label = f"{name}: " if name else ""
    h, w = a.shape[:2]
    if size is None or size == NATIVE:
        nh, nw = h - h % factor, w - w % factor
        if nh == 0 or nw == 0:
            raise InputError(f"{label}image of size {w}x{h} is smaller than the model's downsampling factor {factor}")
        if max(nh, nw) > MAX_SIZE:
            raise InputError(
                f"{label}image of size {w}x{h} is larger than imagetok.image.MAX_SIZE = {MAX_SIZE} per side at its "
                "native size; pass a size, or raise imagetok.image.MAX_SIZE"
            )
        return _center_crop(a, nw, nh)
    scale = size / min(h, w)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    if rw * rh > MAX_RESIZE_PIXELS:
        raise InputError(
            f"{label}image of size {w}x{h} would be resized to {rw}x{rh} before its centre crop, more than "
            f"imagetok.image.MAX_RESIZE_PIXELS = {MAX_RESIZE_PIXELS} pixels (aspect ratio {max(w, h) / min(w, h):.0f}:1); "
            "crop it first, or raise imagetok.image.MAX_RESIZE_PIXELS"
        )
    return _center_crop(_resize(a, rw, rh), size, size)


def check_size(size: int | str | None, factor: int) -> None:
    """Raise InputError unless ``size`` is ``"native"`` (None: the same) or a positive multiple of
    ``factor`` up to :data:`MAX_SIZE`."""
    if size is None or size == NATIVE:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InputError(f"size must be a positive int or 'native', got {size!r}")
    if size > MAX_SIZE:
        raise InputError(f"size {size} is larger than imagetok.image.MAX_SIZE = {MAX_SIZE}; raise imagetok.image.MAX_SIZE to allow it")
    if size % factor:
        lo = max(factor, size - size % factor)
        raise InputError(
            f"size {size} is not a multiple of the model's downsampling factor {factor}; "
            f"nearest valid sizes are {lo} and {lo + factor}"
        )


def to_tensor(arrays: Sequence[np.ndarray], names: Sequence[str | None] | None = None) -> torch.Tensor:
    """Equal-sized HxWx3 arrays -> float32 ``[B, 3, H, W]`` in [0, 1].

    Raises:
        InputError: the arrays differ in size; the message names the first image that differs
            from the first one (its file name when ``names`` has it, else its position).
    """
    first = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != first:
            label = lambda j: (names[j] if names and names[j] else f"image {j}")  # noqa: E731
            raise InputError(
                f"images in one batch must share a size after preprocessing: {label(i)} is {a.shape[1]}x{a.shape[0]}, "
                f"{label(0)} is {first[1]}x{first[0]}; pass size=N to resize them all, or encode them one by one"
            )
    batch = np.stack([a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in arrays])
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous()


def from_tensor(x: torch.Tensor, output: str) -> Any:
    """``[B, 3, H, W]`` float in [0, 1] -> list of PIL images ("pil"), uint8 ``[B, H, W, 3]`` ("np"),
    or the float tensor itself ("pt")."""
    if output == "pt":
        return x
    u8 = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if output == "np":
        return u8
    return [Image.fromarray(a) for a in u8]

"""``Tokenizer``: the front door. Images in, integer token grids out, and back.

>>> tok = Tokenizer.from_pretrained()          # the bundled model
>>> ids = tok.encode("photo.jpg")              # LongTensor [h, w]
>>> img = tok.decode(ids)                      # PIL.Image

Tokens are int64 tensors ``[h, w]`` for one image or ``[B, h, w]`` for a batch; VQ-VAE-2 models
give a tuple ``(top, bottom)`` of such tensors. ``decode`` accepts exactly what ``encode`` returned.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import image as _image
from .card import model_card
from .config import Config, config_from_dict, config_hash, config_to_dict
from .errors import ConfigError, InputError, UnknownModelError, WeightsError
from .models import build_model

if TYPE_CHECKING:
    from .usage import DatasetUsage

Tokens = Union[torch.Tensor, tuple[torch.Tensor, ...]]
_DEFAULT: Any = object()
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED_NAME = "vqgan-f8-4096.imagetok-photos"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a corrupt, truncated or non-safetensors file raises WeightsError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with reproducible bytes: safetensors writes metadata keys in
    random order, so the same weights would get a different sha256 on every save. Rewrites the
    header in place with sorted metadata (same length, so tensor offsets do not move)."""
    save_file(state, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:  # always equal up to the trailing-space padding; else keep the original
            f.seek(8)
            f.write(text.ljust(n, b" "))


def load_weights_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``; any missing, unexpected or misshapen tensor raises WeightsError."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if shapes:
        problems.append(f"shape mismatches {shapes[:10]}")
    if problems:
        raise WeightsError(f"{source}: weights do not match the config: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def read_config(path: str | os.PathLike) -> Config:
    """Read and validate a ``config.json``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config.json not found (a model folder needs config.json and model.safetensors)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


class Tokenizer:
    """A VQ-VAE, VQ-VAE-2 or VQGAN image tokenizer.

    Build one with :meth:`from_pretrained` or :meth:`from_config`. The network runs in eval mode
    under ``torch.inference_mode``; nearest-code search always runs in float32, so a bf16/fp16
    network still picks codes with float32 distances.

    Attributes:
        model: the ``nn.Module`` (see :mod:`imagetok.models`).
        config: its frozen config dataclass.
        name: the name it was loaded under (manifest name, hub id or folder path), or None.
    """

    def __init__(self, model: torch.nn.Module, config: Config, *, name: str | None = None):
        self.model = model.eval()
        self.config = config
        self.name = name
        self._fast = False

    # ----------------------------------------------------------------- construction and storage
    @classmethod
    def from_config(cls, config: dict | Config, *, seed: int | None = None) -> "Tokenizer":
        """A tokenizer with random weights.

        Args:
            config: a dict as in ``config.json`` (``{"family": "vqgan", "n_embed": 1024, ...}``;
                missing keys take defaults) or a config dataclass.
            seed: seeds the weight initialisation for reproducible models.
        """
        cfg = config_from_dict(config if isinstance(config, dict) else config_to_dict(config))  # validated
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_model(cfg)
        else:
            model = build_model(cfg)
        return cls(model, cfg)

    @classmethod
    def from_pretrained(
        cls,
        name: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        fast: bool = False,
    ) -> "Tokenizer":
        """Load a model by manifest name, ``hf-hub:org/repo[@revision]``, local folder or file.

        Args:
            name: None for the model bundled with imagetok; a folder holding ``config.json`` and
                ``model.safetensors``; a ``.safetensors`` file with ``config.json`` beside it; a
                name from ``weights_manifest.json``; or a Hub repo id.
            device: where to put the network ("cpu", "cuda", ...).
            dtype: network dtype (e.g. ``torch.bfloat16``); quantisation stays float32.
            revision, cache_dir: for Hub downloads.
            fast: opt into the fast path (see :attr:`fast`): bf16 autocast + channels_last for the
                network, float32 nearest-code search. About 2x faster on CPUs with bf16 support;
                tokens can differ from the float32 path's at a small fraction of positions.

        Raises:
            UnknownModelError: the name is none of the above (the message lists the closest names).
            ConfigError, WeightsError: the files are missing, malformed or do not match.
            HubError, ChecksumError, ConversionError: download, integrity or conversion failures
                (see :mod:`imagetok.hub`).
        """
        if name is None:
            if not (BUNDLED_DIR / CONFIG_NAME).is_file():
                raise UnknownModelError("this imagetok install has no bundled model; pass a model name or folder")
            tok = cls._from_folder(BUNDLED_DIR, name=BUNDLED_NAME)
        else:
            path = Path(name)
            if path.is_dir() or (path.suffix == ".safetensors" and path.is_file()):
                tok = cls._from_folder(path, name=str(path.resolve()))
            elif str(name) == BUNDLED_NAME:
                return cls.from_pretrained(None, device=device, dtype=dtype, fast=fast)
            else:
                from . import hub  # manifest names, hf-hub:org/repo[@rev], org/repo

                tok = hub.load(str(name), revision=revision, cache_dir=cache_dir)
        tok = tok.to(device=device, dtype=dtype)
        tok.fast = fast
        return tok

    @staticmethod
    def list_pretrained(filter: str | None = None) -> list[str]:
        """Names accepted by :meth:`from_pretrained` from the weights manifest, sorted.

        Args:
            filter: optional glob, e.g. ``"vqgan-f16-*"``.
        """
        from .registry import list_pretrained

        return list_pretrained(filter)

    @classmethod
    def _from_folder(cls, path: Path, *, name: str) -> "Tokenizer":
        folder, weights = (path, path / WEIGHTS_NAME) if path.is_dir() else (path.parent, path)
        cfg = read_config(folder / CONFIG_NAME)
        if not weights.is_file():
            raise WeightsError(f"{weights}: weights file not found")
        model = build_model(cfg)
        load_weights_strict(model, load_state_dict(weights), str(weights))
        return cls(model, cfg, name=name)

    def save_pretrained(
        self, directory: str | os.PathLike, *, card: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card.

        Args:
            directory: created if needed; existing files of these names are replaced.
            card: keyword arguments for :func:`imagetok.card.model_card` (license, metrics...).
            dtype: storage dtype of the weights (float32 default; float16 halves the file). Loading
                always casts back to the network's dtype, so float16 storage only rounds the weights.

        Returns:
            The directory path.
        """
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise InputError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_safetensors(state, d / WEIGHTS_NAME, {"format": "pt", "imagetok_config_hash": config_hash(self.config)})
        (d / CONFIG_NAME).write_text(json.dumps(config_to_dict(self.config), indent=2) + "\n")
        (d / CARD_NAME).write_text(model_card(self.name or d.name, self.config, **(card or {})))
        return d

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Publish this model to the Hugging Face Hub; see :func:`imagetok.hub.push_to_hub`."""
        from . import hub

        return hub.push_to_hub(self, repo_id, **kwargs)

    # ----------------------------------------------------------------------------- properties
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Tokenizer":
        """Move the network (in place) and return self. Codebooks stay float32 whatever ``dtype``."""
        if dtype is not None and not dtype.is_floating_point:
            raise InputError(f"dtype must be a floating-point dtype, got {dtype}")
        self.model.to(device=device, dtype=dtype)
        for m in self.model.modules():
            if hasattr(m, "codes_to_indices"):
                m.float()
        return self

    @property
    def fast(self) -> bool:
        """Whether the fast path is on (default False: the exact float32 path).

        Fast path: the network runs under bfloat16 autocast with channels_last tensors; latents are
        searched in float32 (:func:`imagetok.models.quantizer.nearest_code`) and decoded images are
        returned as float32. Set ``tok.fast = True`` or pass ``fast=True`` to
        :meth:`from_pretrained`. Measured speed-up and token agreement: ``benchmarks/RESULTS.md``.
        """
        return self._fast

    @fast.setter
    def fast(self, on: bool) -> None:
        on = bool(on)
        if on != getattr(self, "_fast", False):
            # conv weights in channels_last make convs pick that layout; back to NCHW for the exact path
            self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        self._fast = on

    def _fast_context(self) -> Any:
        """bf16 autocast on the model's device when the fast path is on, else a no-op context."""
        if self._fast and self.device.type in ("cpu", "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's dtype (the codebooks are float32 regardless)."""
        return next(p for n, p in self.model.named_parameters() if "quantize" not in n).dtype

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        """Pixels per token side, one per level (coarse to fine)."""
        return self.config.downsample_factors

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codebook size of each level (coarse to fine)."""
        return self.config.codebook_sizes

    @property
    def vocab_size(self) -> int:
        """Size of the flat vocabulary used by :meth:`flatten` (sum over levels)."""
        return sum(self.codebook_sizes)

    @property
    def default_size(self) -> int:
        """Side length images are resized and cropped to by default (``config.resolution``)."""
        return self.config.resolution

    @property
    def provenance(self) -> dict[str, Any]:
        """TEMP shim (replaced by the harden branch): ``{"name", "config_hash", "weights_sha256", "revision"}``."""
        return {"name": self.name, "config_hash": config_hash(self.config), "weights_sha256": None, "revision": None}

    def grid_shapes(self, size: int | None = None) -> tuple[tuple[int, int], ...]:
        """Token grid ``(h, w)`` of each level for a ``size x size`` image (default size if None)."""
        s = size or self.default_size
        return tuple((s // f, s // f) for f in self.downsample_factors)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name={self.name!r}, family={self.config.family!r}, codebooks={self.codebook_sizes}, "
            f"factors={self.downsample_factors}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------------------- encoding
    def preprocess(self, images: Any, *, size: int | None = _DEFAULT) -> tuple[torch.Tensor, bool]:
        """Images (see :mod:`imagetok.image`) -> (float32 ``[B, 3, H, W]`` in [0, 1], is_batch)."""
        size = self.default_size if size is _DEFAULT else size
        factor = max(self.downsample_factors)
        _image.check_size(size, factor)
        arrays, is_batch, _ = _image.to_rgb_arrays(images)  # full decode: a path and its PIL image give the same tokens
        return _image.to_tensor([_image.fit(a, size, factor) for a in arrays]), is_batch

    def encode(self, images: Any, *, size: int | None = _DEFAULT) -> Tokens:
        """Images -> integer token grids.

        Args:
            images: a path, PIL image, numpy array or torch tensor (see :mod:`imagetok.image`),
                or a list of these (a batch).
            size: side length to resize (shorter side) and centre-crop to; defaults to the model's
                ``resolution``; None keeps each image's size, cropped to a multiple of the
                downsampling factor.

        Returns:
            int64 ``[h, w]`` for one image, ``[B, h, w]`` for a batch (on the model's device);
            for VQ-VAE-2 a tuple ``(top, bottom)`` of those.

        Raises:
            InputError: unreadable or malformed input (see :mod:`imagetok.image`).
        """
        x, is_batch = self.preprocess(images, size=size)
        tokens = self.encode_pixels(x)
        if is_batch:
            return tokens
        return tuple(t[0] for t in tokens) if isinstance(tokens, tuple) else tokens[0]

    def encode_pixels(self, x: torch.Tensor) -> Tokens:
        """Float ``[B, 3, H, W]`` in [0, 1] (H, W multiples of the factor) -> ``[B, h, w]`` int64 tokens."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected pixels [B, 3, H, W], got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise InputError("pixels contain NaN or infinite values")
        factor = max(self.downsample_factors)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise InputError(f"height and width must be multiples of {factor}, got {x.shape[3]}x{x.shape[2]}")
        lo, hi = self.config.input_range
        with torch.inference_mode(), self._fast_context():
            x = (x.to(self.device, torch.float32) * (hi - lo) + lo).to(self.dtype)
            if self._fast:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model.encode_indices(x)

    # ------------------------------------------------------------------------------- decoding
    def check_tokens(self, tokens: Any) -> tuple[tuple[torch.Tensor, ...], bool]:
        """Validate tokens; returns (one ``[B, h, w]`` int64 tensor per level, is_batch)."""
        levels = len(self.codebook_sizes)
        if levels > 1:
            if not isinstance(tokens, (tuple, list)) or len(tokens) != levels:
                raise InputError(
                    f"this {self.config.family} model takes a tuple of {levels} token grids (top, bottom), "
                    f"got {type(tokens).__name__}"
                )
            parts = list(tokens)
        else:
            if isinstance(tokens, (tuple, list)) and len(tokens) == 1:
                tokens = tokens[0]
            parts = [tokens]
        out = []
        for t, k in zip(parts, self.codebook_sizes):
            if isinstance(t, np.ndarray):
                if not np.issubdtype(t.dtype, np.integer):
                    raise InputError(f"tokens must be integers, got numpy {t.dtype}")
                t = torch.from_numpy(t.astype(np.int64))
            if not isinstance(t, torch.Tensor):
                raise InputError(f"tokens must be a torch tensor or numpy array, got {type(t).__name__}")
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise InputError(f"tokens must be an integer tensor, got {t.dtype}")
            if t.ndim not in (2, 3):
                raise InputError(f"tokens must have shape [h, w] or [B, h, w], got {tuple(t.shape)}")
            if t.numel() == 0:
                raise InputError(f"tokens are empty, shape {tuple(t.shape)}")
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= k:
                raise InputError(f"token ids must be in [0, {k}) for this model's codebook of size {k}; got min {lo}, max {hi}")
            out.append(t.long())
        if len({t.ndim for t in out}) > 1:
            raise InputError("all token levels must be single grids or all batches")
        is_batch = out[0].ndim == 3
        out = [t if is_batch else t[None] for t in out]
        for a, b, fa, fb in zip(out, out[1:], self.downsample_factors, self.downsample_factors[1:]):
            r = fa // fb
            if a.shape[0] != b.shape[0] or (a.shape[1] * r, a.shape[2] * r) != tuple(b.shape[1:]):
                raise InputError(
                    f"token levels do not fit together: {tuple(a.shape)} then {tuple(b.shape)} "
                    f"(the finer grid must be {r}x the coarser one)"
                )
        return tuple(out), is_batch

    def decode_pixels(self, tokens: Tokens) -> torch.Tensor:
        """``[B, h, w]`` int64 tokens (tuple for VQ-VAE-2) -> float32 ``[B, 3, H, W]`` in [0, 1]."""
        levels, _ = self.check_tokens(tokens)
        lo, hi = self.config.input_range
        with torch.inference_mode(), self._fast_context():
            levels = tuple(t.to(self.device) for t in levels)
            y = self.model.decode_indices(levels if len(levels) > 1 else levels[0])
            return ((y.float().contiguous() - lo) / (hi - lo)).clamp(0, 1)

    def decode(self, tokens: Tokens, *, output: str = "pil") -> Any:
        """Token grids -> images, the inverse of :meth:`encode`.

        Args:
            tokens: what :meth:`encode` returned (``[h, w]`` or ``[B, h, w]`` integer tensor or numpy
                array; a ``(top, bottom)`` tuple for VQ-VAE-2).
            output: ``"pil"`` (PIL image, or a list for a batch), ``"np"`` (uint8 ``[H, W, 3]`` or
                ``[B, H, W, 3]``) or ``"pt"`` (float32 ``[3, H, W]`` / ``[B, 3, H, W]`` in [0, 1]).

        Raises:
            InputError: non-integer tokens, ids outside the codebook, or wrong shapes.
        """
        if output not in ("pil", "np", "pt"):
            raise InputError(f"output must be 'pil', 'np' or 'pt', got {output!r}")
        _, is_batch = self.check_tokens(tokens)
        images = _image.from_tensor(self.decode_pixels(tokens), output)
        return images if is_batch else images[0]

    # ------------------------------------------------------------------------ codebook usage
    def codebook_usage(
        self,
        images: Any,
        *,
        size: int | None = _DEFAULT,
        batch_size: int = 16,
        progress: bool = False,
        top: int = 10,
    ) -> "DatasetUsage":
        """Encode a dataset and report exact codebook usage (see :mod:`imagetok.usage`).

        Args:
            images: a folder or image file path, a list of them (folders are walked recursively;
                unreadable files are skipped, counted and listed), one batch of images (anything
                :meth:`encode` takes), or an iterable of batches such as a ``DataLoader`` (tensors
                ``[B, 3, H, W]`` in [0, 1] or uint8, ``(images, labels)`` pairs, or dicts with
                ``pixel_values``/``image``).
            size: as in :meth:`encode`.
            batch_size: images per forward pass.
            progress: show a progress line on stderr.
            top: how many of the most frequent codes to list.

        Returns:
            :class:`imagetok.usage.DatasetUsage`, one report per codebook level (``.levels``).

        Raises:
            InputError: no images found, nothing readable, or a malformed in-memory batch.
        """
        from .usage import usage_from_images

        size = self.default_size if size is _DEFAULT else size
        return usage_from_images(self, images, size=size, batch_size=batch_size, progress=progress, top=top)

    # ------------------------------------------------------------------------ LLM sequences
    def flatten(self, tokens: Tokens) -> torch.Tensor:
        """Token grids -> one flat id sequence per image, for language models.

        Levels are concatenated coarse to fine in raster order; level ``i``'s ids are offset by the
        sizes of the codebooks before it, so ids lie in ``[0, vocab_size)``.

        Returns:
            int64 ``[N]`` for one image or ``[B, N]`` for a batch.
        """
        levels, is_batch = self.check_tokens(tokens)
        offset, parts = 0, []
        for t, k in zip(levels, self.codebook_sizes):
            parts.append(t.flatten(1) + offset)
            offset += k
        seq = torch.cat(parts, 1)
        return seq if is_batch else seq[0]

    def unflatten(self, seq: Any, grid: Sequence[int] | None = None) -> Tokens:
        """Inverse of :meth:`flatten`.

        Args:
            seq: int ``[N]`` or ``[B, N]`` ids.
            grid: ``(h, w)`` of the coarsest level; default: the grid of a default-size image.
        """
        seq = torch.as_tensor(np.asarray(seq) if not isinstance(seq, torch.Tensor) else seq)
        if seq.is_floating_point() or seq.ndim not in (1, 2):
            raise InputError(f"expected an integer sequence [N] or [B, N], got {seq.dtype} {tuple(seq.shape)}")
        is_batch = seq.ndim == 2
        seq = seq.long() if is_batch else seq.long()[None]
        h0, w0 = grid if grid is not None else self.grid_shapes()[0]
        f0 = self.downsample_factors[0]
        shapes = [(h0 * f0 // f, w0 * f0 // f) for f in self.downsample_factors]
        need = sum(h * w for h, w in shapes)
        if seq.shape[1] != need:
            raise InputError(f"sequence length {seq.shape[1]} does not match grid {shapes} ({need} ids)")
        out, start, offset = [], 0, 0
        for (h, w), k in zip(shapes, self.codebook_sizes):
            part = seq[:, start : start + h * w] - offset
            if int(part.min()) < 0 or int(part.max()) >= k:
                raise InputError(f"ids for this level must lie in [{offset}, {offset + k})")
            out.append(part.reshape(-1, h, w))
            start, offset = start + h * w, offset + k
        out = [t if is_batch else t[0] for t in out]
        return tuple(out) if len(out) > 1 else out[0]

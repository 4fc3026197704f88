"""Reading checkpoints and config files without running pickled code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import VQGANConfig, VQVAE2Config, config_to_dict
from ..errors import ConversionError

logger = logging.getLogger("imagetok.convert")

_LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


class _LightningCallbackKey:
    """Inert stand-in for ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``.

    Lightning 1.x saves ``checkpoint["callbacks"] = {ModelCheckpoint: {...}}``: the class object is a
    dict key and is never called. Allow-listing this placeholder under that name lets taming/LDM
    ``.ckpt`` files load with ``weights_only=True`` without Lightning installed.
    """


SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,  # LlamaGen: checkpoint["args"]
    (_LightningCallbackKey, _LIGHTNING_CALLBACK),  # taming / LDM Lightning checkpoints
]
"""The non-tensor globals :func:`read_checkpoint` allows (what these formats' files really contain)."""

_ALLOWED_NAMES = {"argparse.Namespace", _LIGHTNING_CALLBACK}
_GLOBAL_RE = re.compile(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)")


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Any:
    """Read a ``.safetensors`` file or a ``torch.save`` file without running pickled code.

    Torch files are loaded with ``torch.load(map_location="cpu", weights_only=True)`` and the
    allow-list :data:`SAFE_GLOBALS` (zip-format files are memory-mapped, so an LDM pipeline
    checkpoint of several GB costs little memory).

    Args:
        path: the file.
        trust_pickle: if the file needs another global, load it anyway with full pickle (this can
            run arbitrary code from the file; logged as a warning). Only for files you trust.

    Returns:
        The file's content: a dict of tensors for safetensors, usually a dict for torch files.

    Raises:
        ConversionError: missing, unreadable or truncated file, or a global outside the allow-list
            (the message names it).
    """
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p}: checkpoint file not found")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ConversionError(f"{p}: not a readable safetensors file ({e}); is it truncated?") from None
    mmap = zipfile.is_zipfile(p)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises many exception types for corrupt files
        m = _GLOBAL_RE.search(str(e))
        if m is None:
            lines = str(e).strip().splitlines()
            raise ConversionError(
                f"{p}: cannot read this checkpoint ({type(e).__name__}: {lines[0][:300] if lines else ''}); "
                "the file may be truncated or not a PyTorch checkpoint"
            ) from None
        refused = m.group(1)
    if not trust_pickle:
        wanted = _unsafe_globals(p) or [refused]
        raise ConversionError(
            f"{p}: refusing to unpickle {', '.join(wanted)}: not a tensor or known checkpoint metadata, and "
            "unpickling it can run arbitrary code. If you trust this file, pass trust_pickle=True (CLI: --trust-pickle)"
        )
    logger.warning("%s: loading with full pickle (trust_pickle=True) because it needs %s", p, refused)
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{p}: cannot read this checkpoint even with trust_pickle ({type(e).__name__}: {e})") from None


def _unsafe_globals(p: Path) -> list[str]:
    """Every global the file needs beyond the allow-list (best effort: zip-format files only)."""
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(p) if g not in _ALLOWED_NAMES]
    except Exception:  # noqa: BLE001
        return []


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.json`` or ``.yaml``/``.yml`` file into a dict (YAML needs PyYAML, a dependency)."""
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p}: config file not found")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConversionError(
                f"{p}: reading YAML configs needs PyYAML (pip install pyyaml); or pass the config as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConversionError(f"{p}: not valid YAML ({e})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{p}: a config must be a mapping, got {type(data).__name__}")
    return data


ConfigArg = Union[None, Mapping[str, Any], str, os.PathLike, VQGANConfig, VQVAE2Config]


def config_dict(config: ConfigArg) -> dict[str, Any] | None:
    """The user's ``config`` argument as a dict (None stays None)."""
    if config is None:
        return None
    if isinstance(config, (VQGANConfig, VQVAE2Config)) or (dataclasses.is_dataclass(config) and hasattr(config, "family")):
        return config_to_dict(config)
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        return read_config_file(config)
    raise ConversionError(f"config must be a dict or a path to a .json/.yaml file, got {type(config).__name__}")

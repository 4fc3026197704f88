"""Model folders on disk: ``config.json`` + ``model.safetensors`` (+ a ``README.md`` model card).

Used by :class:`~imagetok.tokenizer.Tokenizer`, :mod:`imagetok.hub`, :mod:`imagetok.convert` and
training, and generic enough for any model with a JSON config (pass ``parse_config`` and
``build`` to :func:`load_folder`).

Loading never trusts ``config.json`` for allocation: the model is built on the meta device (no
memory), every key and shape is checked against the safetensors *header* (read without loading
tensors), and only then are the tensors read and assigned. A config naming a huge network with a
small weights file therefore fails with :class:`~imagetok.errors.WeightsError` at once.

Saving is atomic: files are written into a temporary folder beside the target, which is renamed
into place (or, over an existing folder, each file is replaced with ``config.json`` last). The
weights record the config's hash, so weights and a config from different saves never load together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from torch.overrides import TorchFunctionMode
from safetensors.torch import load_file
from safetensors.torch import save as _st_save

from .config import Config, config_from_dict, config_to_dict
from .errors import ConfigError, WeightsError

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
CONFIG_HASH_KEY = "imagetok_config_hash"  # safetensors metadata: hash of the config saved beside
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


def dict_hash(data: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a config dict."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (streamed in 8 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ reading
def read_json(path: str | os.PathLike, *, what: str = "config.json") -> dict[str, Any]:
    """Read a small JSON object; missing, oversized or malformed files raise ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found (a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {what} is {p.stat().st_size} bytes, more than the {MAX_CONFIG_BYTES} a config may have")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_config(path: str | os.PathLike) -> Config:
    """Read and validate a tokenizer ``config.json`` (see :func:`imagetok.config.config_from_dict`)."""
    data = read_json(path)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """The tensors a safetensors file declares, without reading them.

    Returns:
        (name -> (dtype string such as ``"F32"``, shape), metadata dict).

    Raises:
        WeightsError: not a safetensors file, or a malformed header.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
    except OSError as e:
        raise WeightsError(f"{p}: cannot read the weights file ({e})") from None
    except (ValueError, UnicodeDecodeError):
        raise WeightsError(f"{p}: not a readable safetensors file (malformed header)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{p}: not a readable safetensors file (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for k, v in header.items():
        shape = v.get("shape") if isinstance(v, dict) else None
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise WeightsError(f"{p}: not a readable safetensors file (bad entry for {k!r})")
        out[k] = (str(v.get("dtype")), tuple(shape))
    return out, (meta if isinstance(meta, dict) else {})


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a corrupt, truncated or non-safetensors file raises WeightsError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise WeightsError listing missing, unexpected and misshapen keys (or return if none)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: file {tuple(found[k])} vs model {tuple(v)}" for k, v in expected.items() if k in found and tuple(found[k]) != tuple(v)
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


def load_weights_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy an in-memory ``state`` into ``model``; any missing, unexpected or misshapen tensor raises
    WeightsError (nothing is copied then)."""
    expected = model.state_dict()
    check_shapes({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


# In-place value ops that weight initialisation applies to fresh tensors: on the meta device they have
# nothing to compute, and torch would import its reference implementations (sympy...) to run them
# (seconds on the first call). They are skipped; shape- and flag-changing in-place ops are not.
_INIT_OPS = frozenset(
    "uniform_ normal_ trunc_normal_ fill_ zero_ copy_ mul_ add_ sub_ div_ clamp_ clamp_min_ clamp_max_ erfinv_ "
    "exponential_ bernoulli_ random_ log_normal_ cauchy_ geometric_ addcmul_ addcdiv_ sqrt_ neg_ abs_".split()
)


class _SkipMetaInit(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _INIT_OPS or getattr(func, "__module__", None) == "torch.nn.init":
            t = args[0] if args else kwargs.get("tensor")  # torch.nn.init functions pass it by keyword
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[Any], torch.nn.Module], config: Any) -> torch.nn.Module:
    """``build(config)`` on the meta device: shapes only, no memory, no random initialisation."""
    with torch.device("meta"), _SkipMetaInit():
        return build(config)


def load_weights(
    model: torch.nn.Module,
    weights: str | os.PathLike,
    source: str | None = None,
    *,
    rebuild: Callable[[], torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """Fill a (meta-device) ``model`` from a safetensors file, checking the header first.

    Every key and shape is compared with the file's header before any tensor is read; then the
    tensors are read, cast to the model's dtypes and assigned (``assign=True``: no second copy).
    A module with non-persistent buffers (not in the file) is built for real by ``rebuild()``
    after the header check, then loaded. Returns the model on the CPU.
    """
    source = source or str(weights)
    header, _ = read_header(weights)
    expected = model.state_dict()
    check_shapes({k: tuple(v.shape) for k, v in expected.items()}, {k: s for k, (_, s) in header.items()}, source)
    state = load_state_dict(weights)
    check_shapes({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in state.items()}, source)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    if any(b.is_meta for b in model.buffers()) and rebuild is not None:
        # non-persistent buffers (computed in __init__, not stored) cannot come from the file: build
        # the module for real. Safe: the file's header matched every shape, so this allocates about
        # what the file holds.
        model = rebuild()
        model.load_state_dict(state, strict=True)
        return model
    model.load_state_dict(state, strict=True, assign=True)
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise WeightsError(f"{source}: buffer {name!r} is not stored in the file and cannot be built on the meta device")
    return model


@dataclass
class LoadedFolder:
    """What :func:`load_folder` returns.

    config: the parsed config; model: the module (CPU, eval mode, dtypes as built);
    weights_path: the safetensors file read; weights_sha256: its sha256.
    """

    config: Any
    model: torch.nn.Module
    weights_path: Path
    weights_sha256: str


def model_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(config.json, weights file) of a model folder, or of a ``.safetensors`` file with
    ``config.json`` beside it."""
    p = Path(path)
    if p.is_dir():
        return p / CONFIG_NAME, p / WEIGHTS_NAME
    return p.parent / CONFIG_NAME, p


def load_folder(
    path: str | os.PathLike,
    *,
    parse_config: Callable[[dict[str, Any]], Any] = config_from_dict,
    build: Callable[[Any], torch.nn.Module] | None = None,
    to_dict: Callable[[Any], dict[str, Any]] | None = None,
) -> LoadedFolder:
    """Load a model folder (or a ``.safetensors`` file with ``config.json`` beside it) strictly.

    Args:
        parse_config: config dict -> config object; raises ConfigError on bad values. Default:
            tokenizer configs.
        build: config -> ``nn.Module``; called on the meta device. Default: :func:`imagetok.models.build_model`.
        to_dict: config -> the dict :func:`save_folder` was given, to check the config hash the
            weights recorded (default: tokenizer configs' ``config_to_dict`` with the default
            ``parse_config``; otherwise the hash of config.json's own content is accepted too).

    Raises:
        ConfigError: missing or invalid config.json.
        WeightsError: missing or unreadable weights; keys or shapes that do not match the config;
            weights saved with a different config.
    """
    if build is None:
        from .models import build_model as build
    config_path, weights = model_files(path)
    data = read_json(config_path)
    try:
        cfg = parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None
    if not weights.is_file():
        raise WeightsError(f"{weights}: weights file not found")
    _, meta = read_header(weights)
    if to_dict is None and parse_config is config_from_dict:
        to_dict = config_to_dict
    hashes = {dict_hash(data)} | ({dict_hash(to_dict(cfg))} if to_dict is not None else set())
    recorded = meta.get(CONFIG_HASH_KEY)
    if recorded is not None and recorded not in hashes:
        raise WeightsError(
            f"{weights}: these weights were saved with another config (hash {recorded}) than {config_path} "
            f"(hash {sorted(hashes)[0]}); the folder mixes two saves"
        )
    model = load_weights(build_on_meta(build, cfg), weights, rebuild=lambda: build(cfg))
    return LoadedFolder(cfg, model.eval(), weights, file_sha256(weights))


# ------------------------------------------------------------------------------------ writing
def safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of ``state`` with reproducible bytes (metadata keys sorted; safetensors
    itself writes them in random order, which would change the sha256 on every save)."""
    data = bytearray(_st_save(state, metadata=metadata))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) <= n:  # equal up to the trailing-space padding: tensor offsets do not move
        data[8 : 8 + n] = text.ljust(n, b" ")
    return bytes(data)


def atomic_write(path: str | os.PathLike, data: bytes | str, *, overwrite: bool = True) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename it into place.

    Raises:
        FileExistsError: ``overwrite=False`` and ``path`` exists.
    """
    p = Path(path)
    if not overwrite and p.exists():
        raise FileExistsError(p)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)  # atomic and exclusive: fails if someone created it meanwhile
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: check, then rename
                if p.exists():
                    raise FileExistsError(p) from None
                os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def save_folder(
    folder: str | os.PathLike,
    config_dict: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    card: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (if given) ``README.md`` atomically.

    Everything is written into a temporary folder beside ``folder`` first. A new folder is then
    renamed into place in one step; over an existing folder each file is replaced (config.json
    last). Other files in an existing folder are left alone. An interrupted save leaves the old
    folder as it was, and a reader never loads new weights with an old config (the weights record
    the config's hash, which :func:`load_folder` checks).

    Args:
        config_dict: the JSON config (any model: tokenizer, prior...).
        state_dict: tensors to store (moved to the CPU, made contiguous).
        card: the model card text.
        metadata: extra safetensors metadata (strings); ``format`` and the config hash are added.

    Returns:
        The folder path.
    """
    d = Path(folder)
    d.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"format": "pt", **(metadata or {}), CONFIG_HASH_KEY: dict_hash(config_dict)}
    tmp = d.parent / f".tmp-{d.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = [WEIGHTS_NAME]
        (tmp / WEIGHTS_NAME).write_bytes(safetensors_bytes(state, meta))
        if card is not None:
            (tmp / CARD_NAME).write_text(card)
            names.append(CARD_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2) + "\n")
        names.append(CONFIG_NAME)  # last
        for name in names:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.rename(tmp, d)  # a new folder: one atomic step
        except OSError:
            if not d.is_dir():
                raise
            for name in names:  # an existing folder: file by file, config.json last
                os.replace(tmp / name, d / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d

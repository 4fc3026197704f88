"""Reading the tensors of a TorchScript archive (``torch.jit.save``) without running TorchScript.

A ``.jit`` file is a zip holding ``<name>/data.pkl`` (the module tree: one pickled object per
module, its attributes -- parameters, buffers, submodules, flags -- in a dict), ``<name>/data/<key>``
(raw little-endian tensor storages) and ``<name>/code/`` (TorchScript source, never read here).
``data.pkl`` is read with a restricted unpickler: module classes (``__torch__.*``) become inert
attribute holders, tensors are rebuilt from the storages by imagetok's own code, and any other
global (anything that could run code) is refused. Nothing from the archive is executed.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import ConversionError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip
MAX_TENSORS = 100_000


class ScriptObject:
    """An inert stand-in for a pickled TorchScript module: only holds its attributes (``__dict__``)."""

    qualname = "?"


_classes: dict[str, type] = {}


def _script_class(name: str) -> type:
    if name not in _classes:
        _classes[name] = type(name.rsplit(".", 1)[-1], (ScriptObject,), {"qualname": name})
    return _classes[name]


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` re-implemented on a flat tensor (requires_grad and hooks ignored)."""
    if not (isinstance(offset, int) and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))):
        raise ConversionError("TorchScript archive: malformed tensor record")
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if extent > storage.numel():
        raise ConversionError("TorchScript archive: a tensor reaches past the end of its storage")
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _script_class(f"{module}.{name}")
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise ConversionError(
            f"{self.source}: refusing global {module}.{name} in the TorchScript archive (only module records and "
            "tensors are read; nothing from the file is run)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ConversionError(f"{self.source}: unexpected persistent record {pid!r:.80} in the TorchScript archive")
        _, st, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(name)
            except KeyError:
                raise ConversionError(f"{self.source}: storage {name} is missing from the archive (truncated file?)") from None
            itemsize = torch.empty((), dtype=st.dtype).element_size()
            if len(raw) < numel * itemsize:
                raise ConversionError(f"{self.source}: storage {name} is shorter than its {numel} elements")
            buf = bytearray(raw[: numel * itemsize])
            self.storages[key] = torch.frombuffer(buf, dtype=st.dtype) if numel else torch.empty(0, dtype=st.dtype)
        return self.storages[key]


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for attr, value in vars(obj).items():
        if not isinstance(attr, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + attr] = value
            if len(out) > MAX_TENSORS:
                raise ConversionError(f"more than {MAX_TENSORS} tensors in a TorchScript archive")
        elif isinstance(value, ScriptObject):
            _flatten(value, f"{prefix}{attr}.", out, seen)


def is_torchscript(path: str | Path) -> bool:
    """True for a zip with a ``*/data.pkl`` and ``*/code/`` (a ``torch.jit.save`` archive)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the module tree in a TorchScript archive, by dotted name.

    These are the archive's ``state_dict()`` entries (parameters and all buffers, including those
    the original module registered as non-persistent), read without running TorchScript.

    Raises:
        ConversionError: not a readable archive, big-endian storages, or a pickle global outside
            module records and tensors.
    """
    p = Path(path)
    try:
        archive = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConversionError(f"{p}: not a TorchScript (.jit) archive ({e})") from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ConversionError(f"{p}: not a TorchScript archive (expected one <name>/data.pkl, found {pkls[:5]})")
        prefix = pkls[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in archive.namelist() and archive.read(order).strip() not in (b"little", b""):
            raise ConversionError(f"{p}: big-endian TorchScript archives are not supported")
        try:
            root = _Unpickler(archive.read(pkls[0]), archive, prefix, str(p)).load()
        except ConversionError:
            raise
        except Exception as e:  # noqa: BLE001 - malformed pickles raise many types
            raise ConversionError(f"{p}: cannot read {pkls[0]} ({type(e).__name__}: {e})") from None
    if not isinstance(root, ScriptObject):
        raise ConversionError(f"{p}: {pkls[0]} does not hold a TorchScript module")
    out: dict[str, torch.Tensor] = {}
    _flatten(root, "", out, set())
    return out

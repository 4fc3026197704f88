"""Reading the image tokenizer out of a (sharded) LLM checkpoint: only the shards that hold it.

A Hugging Face model folder stores its weights as ``model.safetensors`` / ``pytorch_model.bin`` or as
shards listed in ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json`` (``weight_map``:
tensor name -> shard file). The tokenizer is a few hundred MB under one key prefix of a checkpoint of
many GB, so only the shards that hold keys under the prefix are opened (``.bin`` shards are
memory-mapped with ``weights_only=True``; see :func:`~imagetok.convert._io.read_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ConversionError
from ._common import is_state_dict
from ._io import read_checkpoint

INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE = ("model.safetensors", "pytorch_model.bin")


def _shard_files(src: Path, prefixes: tuple[str, ...]) -> tuple[list[Path], str]:
    """The files to open for keys under ``prefixes`` (all files when no index says where they are)."""
    if src.is_file() and src.name not in INDEXES:
        return [src], f"read {src.name}"
    if src.is_file():  # an index file: its shards lie beside it
        src = src.parent
    for name in INDEXES:
        index = src / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = sorted({str(f) for k, f in weight_map.items() if k.startswith(prefixes)})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise ConversionError(f"{index}: not a valid sharded-weights index ({e})") from None
            if not files:
                raise ConversionError(f"{index}: no tensor under {' or '.join(prefixes)} (is this the right model?)")
            total = len(set(weight_map.values()))
            missing = [f for f in files if not (src / f).is_file()]
            if missing:
                raise ConversionError(
                    f"{index} lists the tokenizer's tensors in {files}, but {missing} are not in {src}; download them "
                    f"too (e.g. `hf download REPO {' '.join(files)} {name} config.json --local-dir {src}`)"
                )
            return [src / f for f in files], f"read {len(files)} of {total} shard(s) listed in {name}: {files}"
    for name in SINGLE:
        if (src / name).is_file():
            return [src / name], f"read {name}"
    found = sorted(p.name for p in src.glob("*.safetensors")) or sorted(p.name for p in src.glob("*.bin"))
    if not found:
        raise ConversionError(f"{src}: no weights ({' / '.join(SINGLE)}, a sharded index, or *.safetensors / *.bin files)")
    return [src / f for f in found], f"read {len(found)} weight file(s): {found}"


def read_prefixed(
    src: Path, prefixes: tuple[str, ...], *, trust_pickle: bool, notes: list[str]
) -> tuple[dict[str, torch.Tensor], str | None, dict[str, list[str]]]:
    """Tensors under the first of ``prefixes`` found (prefix removed); "" in ``prefixes`` means unprefixed.

    Returns:
        (state dict, the prefix used, {reason: keys left out}) — keys under no prefix are listed as
        belonging to the rest of the model.

    Raises:
        ConversionError: unreadable files, or no key under any of the prefixes.
    """
    files, how = _shard_files(src, tuple(p for p in prefixes if p))
    notes.append(how)
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        obj = read_checkpoint(f, trust_pickle=trust_pickle)
        if isinstance(obj, dict) and not is_state_dict(obj) and is_state_dict(obj.get("state_dict")):
            obj = obj["state_dict"]
        if not is_state_dict(obj):
            raise ConversionError(f"{f}: expected a dict of tensors (a weights file or shard)")
        sd.update(obj)
    for prefix in prefixes:
        if prefix and any(k.startswith(prefix) for k in sd):
            mine = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            others = [k for k in sd if not k.startswith(prefix)]
            return mine, prefix, ({f"the rest of the model (not {prefix}*)": others} if others else {})
        if not prefix and any(k.startswith(("encoder.", "quantize.")) for k in sd):
            return dict(sd), "", {}
    raise ConversionError(
        f"{src}: no tensor under {' or '.join(repr(p) for p in prefixes if p)} (first keys: {list(sd)[:6]})"
    )


def upcast_note(sd: dict[str, torch.Tensor], notes: list[str]) -> None:
    """Record that half-precision weights will be upcast to float32 (exactly: every bf16/fp16 value is a float32)."""
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.is_floating_point()} - {"float32"})
    if dtypes:
        notes.append(f"weights stored as {', '.join(dtypes)}; upcast to float32 (exact)")

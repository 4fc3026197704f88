"""NVIDIA Cosmos-Tokenizer discrete image models (``DI8x8``, ``DI16x16``): state dicts and ``.jit`` files.

Sources:

- a plain state dict (``torch.save(model.state_dict())`` of ``DiscreteImageTokenizer``: ``encoder.*``,
  ``quant_conv.*``, ``post_quant_conv.*``, ``decoder.*``), ``.pt``/``.pth``/``.safetensors``;
- the released TorchScript files, read without running TorchScript (:mod:`._jit`): ``autoencoder.jit``
  alone, or ``encoder.jit`` + ``decoder.jit`` (either path; the other is taken from the same folder).

imagetok's ``cosmos`` family keeps Cosmos' names, so weights map one to one. The archives also expose
the non-persistent buffers, which are dropped by name: the patchers' ``wavelets``/``_arange`` (the
filters follow from ``patch_method``) and the FSQ tables ``_levels``/``_basis``/``implicit_codebook``
(recomputed from ``levels`` in float32; ``implicit_codebook`` is stored with bfloat16 rounding and
never used). ``_levels`` and ``wavelets`` are still read to fill in or check ``levels`` and
``patch_method``.

The config is Cosmos' ``tokenizer_config`` dict (``networks/configs.py`` keys) or an imagetok
``cosmos`` config. What neither the config nor the tensors say is taken from Cosmos' released
``discrete_image`` config and noted as assumed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import config_from_dict
from ..errors import ConfigError, ConversionError
from ..models.cosmos import attention_levels, level_sizes
from ..models.fsq import FSQuantizer
from ._common import Ignore, Mapped, apply_map, extras, imagetok_fields, is_state_dict, need, not_this_format, shape, strip_wrappers
from ._io import read_checkpoint
from ._jit import is_torchscript, read_torchscript_tensors

FMT = "cosmos"
_COSMOS_KEYS = {
    "attn_resolutions", "channels", "channels_mult", "dropout", "in_channels", "spatial_compression", "num_res_blocks",
    "out_channels", "resolution", "patch_size", "patch_method", "z_channels", "embedding_dim", "levels",
}  # fmt: skip
_ARCH = ("channels", "channels_mult", "num_res_blocks", "z_channels", "embedding_dim", "patch_size", "spatial_compression")
RELEASED = {"resolution": 1024, "levels": [8, 8, 8, 5, 5, 5], "patch_method": "haar"}
_BUFFER_REASON = "non-persistent buffers a TorchScript archive exposes (patcher filters, FSQ tables): recomputed from the config"
_CODEBOOK_REASON = "FSQ implicit_codebook (stored with bfloat16 rounding): recomputed in float32 from levels"


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Cosmos ``tokenizer_config`` (or an imagetok cosmos config) -> imagetok fields."""
    if cfg.get("family") is not None:
        return imagetok_fields(cfg, "cosmos")
    if cfg.get("quantizer", "FSQ") != "FSQ":
        raise ConversionError(f"Cosmos quantizer {cfg['quantizer']!r} is not supported (discrete image models use FSQ)")
    if cfg.get("z_factor", 1) != 1:
        raise ConversionError(f"Cosmos z_factor={cfg['z_factor']} is not supported (discrete models have z_factor 1)")
    for key in ("encoder", "decoder"):
        if cfg.get(key, "Default") != "Default":
            raise ConversionError(f"Cosmos {key}={cfg[key]!r} is not supported (only the Default 2D {key})")
    if cfg.get("name", "DI") != "DI":
        notes.append(f"Cosmos config name {cfg['name']!r} (expected 'DI'); read its fields anyway")
    unknown = sorted(set(cfg) - _COSMOS_KEYS - {"quantizer", "z_factor", "encoder", "decoder", "name", "input_range"})
    if unknown:
        notes.append(f"ignored Cosmos config keys {unknown}")
    given = {k: cfg[k] for k in _COSMOS_KEYS if k in cfg}
    given.update(extras(cfg))
    return given


def _load(path: Path, trust_pickle: bool, notes: list[str]) -> dict[str, torch.Tensor]:
    if is_torchscript(path):
        name = path.name
        if name in ("encoder.jit", "decoder.jit"):
            other = path.with_name("decoder.jit" if name == "encoder.jit" else "encoder.jit")
            if not other.is_file():
                raise ConversionError(f"{path}: a Cosmos {name} holds half the model; {other.name} must be in the same folder")
            sd = {}
            for p in sorted((path, other)):
                part = read_torchscript_tensors(p)
                clash = sorted(set(sd) & set(part))
                if clash:
                    raise ConversionError(f"{p}: keys {clash[:5]} also appear in the other .jit file")
                sd.update(part)
            notes.append("read encoder.jit and decoder.jit as TorchScript archives (tensors only; no TorchScript run)")
            return sd
        notes.append(f"read {name} as a TorchScript archive (tensors only; no TorchScript run)")
        return read_torchscript_tensors(path)
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and is_state_dict(obj.get(key)):
            notes.append(f"took the checkpoint's {key!r} entry")
            return dict(obj[key])
    if not is_state_dict(obj):
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(f"this is not a Cosmos state dict or .jit archive (found {found})")
    return dict(obj)


def _idx(sd: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def arch(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, str]]:
    """Architecture fields read from Cosmos tensors, with the tensor that showed each."""
    w = need(sd, "encoder.conv_in.weight", FMT)
    ch, cin = w.shape[0], w.shape[1]
    p = math.isqrt(cin // 3)
    if p * p * 3 != cin:
        raise ConversionError(f"encoder.conv_in.weight is {shape(w)}: input channels {cin} are not 3 * patch_size**2")
    ev = {"channels": f"encoder.conv_in.weight is {shape(w)}", "patch_size": f"encoder.conv_in.weight is {shape(w)} (3 * p * p inputs)"}
    levels = _idx(sd, r"encoder\.down\.(\d+)\.block\.")
    if not levels or levels != list(range(len(levels))):
        raise not_this_format(FMT, sd.keys(), f"encoder levels {levels} are not 0..L-1")
    mult, shown = [], []
    for i in levels:
        key = f"encoder.down.{i}.block.0.conv1.weight"
        t = need(sd, key, FMT)
        mult.append(t.shape[0] // ch)
        shown.append(f"{key} is {shape(t)}")
    ev["channels_mult"] = ", ".join(shown)
    blocks = _idx(sd, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight$")
    ev["num_res_blocks"] = f"encoder.down.0 has {len(blocks)} res block(s)"
    downs = _idx(sd, r"encoder\.down\.(\d+)\.downsample\.conv\.weight$")
    ev["spatial_compression"] = f"{len(downs)} encoder downsampling stage(s) after a {p}x{p} patcher"
    z = need(sd, "encoder.conv_out.weight", FMT)
    ev["z_channels"] = f"encoder.conv_out.weight is {shape(z)}"
    q = need(sd, "quant_conv.weight", FMT)
    ev["embedding_dim"] = f"quant_conv.weight is {shape(q)}"
    fields = dict(channels=ch, channels_mult=mult, num_res_blocks=len(blocks), z_channels=z.shape[0], embedding_dim=q.shape[0],
                  patch_size=p, spatial_compression=p * 2 ** len(downs))  # fmt: skip
    return fields, ev


def _from_buffers(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, str]]:
    """levels / patch_method shown by the non-persistent buffers of a .jit archive."""
    out, ev = {}, {}
    for key in ("quantizer._levels", "inv_quant.quantizer._levels"):
        if key in sd:
            lv = [int(v) for v in sd[key].tolist()]
            if "levels" in out and out["levels"] != lv:
                raise ConversionError(f"the encoder's FSQ levels {out['levels']} differ from the decoder's {lv}")
            out["levels"], ev["levels"] = lv, f"{key} is {lv}"
    for key in ("encoder.patcher.wavelets", "decoder.unpatcher.wavelets"):
        if key in sd:
            w = sd[key].double()
            method = "haar" if torch.allclose(w, torch.full_like(w, 0.5**0.5)) else "rearrange" if torch.equal(w, torch.ones_like(w)) else None
            if method is None:
                raise ConversionError(f"{key} = {sd[key].tolist()} is neither the Haar nor the rearrange filter")
            out["patch_method"], ev["patch_method"] = method, f"{key} is {[round(v, 4) for v in w.tolist()]}"
    return out, ev


def _attn_from_tensors(sd: Mapping[str, torch.Tensor], data: dict[str, Any], notes: list[str]) -> list[int]:
    enc_t = _idx(sd, r"encoder\.down\.(\d+)\.attn\.")
    dec_t = _idx(sd, r"decoder\.up\.(\d+)\.attn\.")
    probe = config_from_dict({**data, "attn_resolutions": []})
    enc, dec = level_sizes(probe)
    sizes = sorted({enc[i] for i in enc_t} | {dec[i] for i in dec_t}, reverse=True)
    placed = attention_levels(config_from_dict({**data, "attn_resolutions": sizes}))
    if placed != (enc_t, dec_t):
        raise ConversionError(
            f"attention at encoder levels {enc_t} and decoder levels {dec_t} cannot be expressed at resolution "
            f"{data['resolution']}; pass the Cosmos tokenizer_config (resolution, attn_resolutions)"
        )
    if sizes:
        notes.append(f"attn_resolutions={sizes} chosen to match the attention blocks in the file (at resolution {data['resolution']})")
    return sizes


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    if use_ema:
        raise ConversionError("use_ema: Cosmos checkpoints hold one set of weights (no EMA copy to choose)")
    sd = strip_wrappers(_load(path, trust_pickle, notes), notes)
    if not any(k.startswith("encoder.down.") for k in sd) or "post_quant_conv.weight" not in sd:
        raise not_this_format(FMT, sd.keys(), "it has no encoder.down.* / post_quant_conv.* keys")
    fields, ev = arch(sd)
    shown, shown_ev = _from_buffers(sd)
    given = given_fields(cfg, notes) if cfg is not None else {}
    disagree = []
    for name in (*_ARCH, "levels", "patch_method"):
        have = fields.get(name, shown.get(name))
        if have is not None and given.get(name) is not None:
            value = list(given[name]) if isinstance(given[name], (list, tuple)) else given[name]
            if value != have:
                disagree.append(f"{name}={value!r} but the checkpoint has {name}={have!r} ({ev.get(name) or shown_ev[name]})")
    if disagree:
        raise ConversionError("the config does not match the checkpoint's tensors: " + "; ".join(disagree))
    data: dict[str, Any] = {"family": "cosmos", **fields, **shown}
    for name in ("resolution", "attn_resolutions", "levels", "patch_method", "dropout", "input_range"):
        if given.get(name) is not None:
            data[name] = given[name]
        elif name in RELEASED and name not in data:
            if name == "levels" and len(RELEASED["levels"]) != fields["embedding_dim"]:
                raise ConversionError(
                    f"the FSQ levels are not in this file and the config does not give them (embedding_dim "
                    f"{fields['embedding_dim']}); pass the Cosmos tokenizer_config with 'levels'"
                )
            data[name] = RELEASED[name]
            notes.append(f"assumed {name}={RELEASED[name]!r} (Cosmos' released discrete_image config)")
    if given.get("attn_resolutions") is None:  # choose sizes that put attention where the tensors have it
        data["attn_resolutions"] = _attn_from_tensors(sd, data, notes)
    try:
        config = config_from_dict(data)
    except ConfigError as e:
        raise ConversionError(f"the converted architecture is not a valid imagetok cosmos model: {e}") from None
    codes = FSQuantizer(config.levels).all_codes()
    for key in ("quantizer.implicit_codebook", "inv_quant.quantizer.implicit_codebook"):
        if key in sd and (sd[key].shape != codes.shape or not torch.allclose(sd[key].float(), codes, atol=2**-7)):
            raise ConversionError(f"{key} does not match the FSQ codes of levels {list(config.levels)}")

    def fn(k: str, v: torch.Tensor):
        if k.endswith("implicit_codebook") and k.split(".")[0] in ("quantizer", "inv_quant"):
            return Ignore(_CODEBOOK_REASON)
        if k in ("quantizer._levels", "quantizer._basis", "inv_quant.quantizer._levels", "inv_quant.quantizer._basis"):
            return Ignore(_BUFFER_REASON)
        if re.fullmatch(r"(encoder\.patcher|decoder\.unpatcher)\.(wavelets|_arange)", k):
            return Ignore(_BUFFER_REASON)
        return k, v

    return apply_map(sd, fn)._replace(config=config)

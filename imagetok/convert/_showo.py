"""Show-o's MAGVIT-v2 tokenizer (``showlab/magvitv2``: ``pytorch_model.bin`` or ``.safetensors``).

imagetok's ``showo`` family keeps the original names, so weights map one to one. The two buffers of
Show-o's ``LFQuantizer`` are dropped after checking them: ``quantize.embedding`` (the +-1 table of all
codes) and ``quantize.power_vals`` (bit weights); both follow from ``z_channels`` and must show the
MSB-first order imagetok implements. The architecture (per-level block counts, encoder and decoder
channel multipliers, bits) is read from the tensors; the config (Show-o's ``config.json`` has no
fields: ``MAGVITv2()`` takes no arguments; or an imagetok ``showo`` config) can add ``resolution``,
``attn_resolutions`` and ``input_range``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import config_from_dict
from ..errors import ConfigError, ConversionError
from ._common import Ignore, Mapped, apply_map, disagreements, extras, imagetok_fields, indices, is_state_dict, need, not_this_format, shape, strip_wrappers
from ._io import read_checkpoint

FMT = "showo"
_ARCH = ("ch", "encoder_ch_mult", "encoder_num_res_blocks", "decoder_ch_mult", "decoder_num_res_blocks", "z_channels")


def arch(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, str]]:
    w = need(sd, "encoder.conv_in.weight", FMT)
    ch = w.shape[0]
    ev = {"ch": f"encoder.conv_in.weight is {shape(w)}"}
    out: dict[str, Any] = {"ch": ch}
    for side, part in (("encoder", "down"), ("decoder", "up")):
        levels = indices(sd, rf"{side}\.{part}\.(\d+)\.block\.")
        if not levels or levels != list(range(len(levels))):
            raise not_this_format(FMT, sd.keys(), f"{side} levels {levels} are not 0..L-1")
        mult = [need(sd, f"{side}.{part}.{i}.block.0.conv1.weight", FMT).shape[0] // ch for i in levels]
        blocks = [len(indices(sd, rf"{side}\.{part}\.{i}\.block\.(\d+)\.conv1\.weight$")) for i in levels]
        out[f"{side}_ch_mult"], out[f"{side}_num_res_blocks"] = mult, blocks
        ev[f"{side}_ch_mult"] = ev[f"{side}_num_res_blocks"] = f"{side}.{part}.*.block.*.conv1 weights"
    z = need(sd, "encoder.conv_out.weight", FMT)
    out["z_channels"], ev["z_channels"] = z.shape[0], f"encoder.conv_out.weight is {shape(z)}"
    return out, ev


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    if cfg.get("family") is not None:
        return imagetok_fields(cfg, "showo")
    known = {k: cfg[k] for k in ("resolution", "attn_resolutions", "input_range") if k in cfg}
    other = sorted(k for k in cfg if not k.startswith("_") and k not in known)
    if other:
        notes.append(f"ignored config keys {other} (Show-o's MAGVITv2() takes no arguments)")
    return {**known, **extras(cfg)}


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    if use_ema:
        raise ConversionError("use_ema: Show-o's MAGVIT-v2 checkpoint holds one set of weights")
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(obj, Mapping) and is_state_dict(obj.get("state_dict")):
        obj = obj["state_dict"]
    if not is_state_dict(obj):
        raise ConversionError(f"this is not a Show-o MAGVIT-v2 state dict (found {type(obj).__name__})")
    sd = strip_wrappers(dict(obj), notes)
    if "encoder.quant_conv.weight" not in sd or "decoder.post_quant_conv.weight" not in sd:
        raise not_this_format(FMT, sd.keys(), "it has no encoder.quant_conv / decoder.post_quant_conv")
    fields, ev = arch(sd)
    given = given_fields(cfg, notes) if cfg is not None else {}
    bad = disagreements(given, fields, ev, _ARCH)
    if bad:
        raise ConversionError("the config does not match the checkpoint's tensors: " + "; ".join(bad))
    data: dict[str, Any] = {"family": "showo", **fields}
    for k in ("resolution", "attn_resolutions", "input_range", "dropout"):
        if given.get(k) is not None:
            data[k] = given[k]
    if "resolution" not in data:
        notes.append("assumed resolution=256 (Show-o's image size)")
        data["resolution"] = 256
    if "attn_resolutions" not in data:
        enc_attn = indices(sd, r"encoder\.down\.(\d+)\.attn\.")
        data["attn_resolutions"] = [data["resolution"] >> i for i in enc_attn] or [5]
    try:
        config = config_from_dict(data)
    except ConfigError as e:
        raise ConversionError(f"the converted architecture is not a valid imagetok showo model: {e}") from None
    k = config.z_channels
    want = {
        "quantize.power_vals": 2 ** torch.arange(k - 1, -1, -1),
        "quantize.embedding": ((torch.arange(2**k)[:, None] >> torch.arange(k - 1, -1, -1)) & 1).float() * 2 - 1,
    }
    for key, value in want.items():
        if key in sd and (sd[key].shape != value.shape or not torch.equal(sd[key].to(value.dtype), value)):
            raise ConversionError(f"{key} is not the MSB-first LFQ table of {k} bits imagetok implements")

    def fn(key: str, v: torch.Tensor):
        if key in want:
            return Ignore("LFQ code tables (quantize.embedding, quantize.power_vals): checked, recomputed from z_channels")
        return key, v

    return apply_map(sd, fn)._replace(config=config)

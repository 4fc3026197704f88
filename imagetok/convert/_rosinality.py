"""rosinality/vq-vae-2-pytorch ``VQVAE`` state dicts.

Names are imagetok's except the codebooks: rosinality keeps EMA buffers ``quantize_{t,b}.embed``
of shape ``[embed_dim, n_embed]`` (transposed into ``quantize_{t,b}.embedding.weight``) plus the
EMA statistics ``cluster_size`` / ``embed_avg`` (dropped). ``module.`` prefixes from
DistributedDataParallel are stripped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import config_from_dict
from ..errors import ConfigError, ConversionError
from ._common import (
    DEFAULT_RESOLUTION,
    Ignore,
    Mapped,
    apply_map,
    extras,
    imagetok_fields,
    is_state_dict,
    need,
    shape,
    strip_wrappers,
)
from ._io import read_checkpoint

_FIELDS = ("channel", "n_res_block", "n_res_channel", "embed_dim", "n_embed")


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """rosinality constructor kwargs (flat or under ``"kwargs"``) -> imagetok fields."""
    if cfg.get("family") is not None:
        return imagetok_fields(cfg, "vqvae2")
    extra = extras(cfg)
    if isinstance(cfg.get("kwargs"), dict):
        cfg = cfg["kwargs"]
    if cfg.get("in_channel", 3) != 3:
        raise ConversionError(f"rosinality in_channel={cfg['in_channel']!r} is not supported (RGB images only)")
    given = {k: cfg[k] for k in _FIELDS if k in cfg}
    unknown = sorted(set(cfg) - set(_FIELDS) - {"in_channel", "decay", "resolution", "input_range"})
    if unknown:
        notes.append(f"ignored rosinality config keys {unknown}")
    given.update(extras(cfg))
    given.update(extra)
    return given


def _key(k: str, v: torch.Tensor):
    if m := re.match(r"(quantize_[tb])\.(embed|cluster_size|embed_avg)$", k):
        if m[2] == "embed":
            return f"{m[1]}.embedding.weight", v.t().contiguous()  # [dim, n_embed] -> [n_embed, dim]
        return Ignore("EMA codebook statistics (quantize_*.cluster_size, quantize_*.embed_avg)")
    return k, v  # the same names; whatever the model lacks is reported as unmapped


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    sd = obj if is_state_dict(obj) else None
    if sd is None and isinstance(obj, Mapping):
        sd = next((obj[k] for k in ("state_dict", "model") if is_state_dict(obj.get(k))), None)
    if sd is None:
        raise ConversionError(f"this is not a rosinality checkpoint: expected a state dict (got {type(obj).__name__})")
    sd = strip_wrappers(dict(sd), notes)
    fmt = "rosinality"
    et, eb = need(sd, "quantize_t.embed", fmt), need(sd, "quantize_b.embed", fmt)
    w = need(sd, "enc_b.blocks.2.weight", fmt)
    res = sorted({int(m.group(1)) for k in sd if (m := re.match(r"enc_b\.blocks\.(\d+)\.conv\.1\.weight$", k))})
    arch: dict[str, Any] = {"channel": w.shape[0], "n_res_block": len(res)}
    ev = {"channel": f"enc_b.blocks.2.weight is {shape(w)}", "n_res_block": f"enc_b has {len(res)} residual block(s)"}
    if res:
        t = sd[f"enc_b.blocks.{res[0]}.conv.1.weight"]
        arch["n_res_channel"] = t.shape[0]
        ev["n_res_channel"] = f"enc_b.blocks.{res[0]}.conv.1.weight is {shape(t)}"
    if et.ndim != 2 or et.shape != eb.shape:
        raise ConversionError(f"quantize_t.embed {shape(et)} and quantize_b.embed {shape(eb)} must both be [embed_dim, n_embed]")
    arch["embed_dim"], arch["n_embed"] = et.shape
    ev["embed_dim"] = ev["n_embed"] = f"quantize_t.embed is {shape(et)} ([embed_dim, n_embed])"
    given = given_fields(cfg, notes) if cfg is not None else {}
    disagree = [
        f"{k}={given[k]!r} but the checkpoint has {k}={arch[k]!r} ({ev[k]})"
        for k in _FIELDS
        if k in given and k in arch and given[k] != arch[k]
    ]
    if disagree:
        raise ConversionError("the config (rosinality config) does not match the checkpoint's tensors: " + "; ".join(disagree))
    data: dict[str, Any] = {"family": "vqvae2", **{k: given[k] for k in ("n_res_channel",) if k in given}, **arch}
    if "input_range" in given:
        data["input_range"] = list(given["input_range"])
    if "resolution" in given:
        data["resolution"] = given["resolution"]
    else:
        data["resolution"] = DEFAULT_RESOLUTION
        notes.append(f"assumed resolution={DEFAULT_RESOLUTION} (rosinality's training size; the checkpoint does not record it)")
    try:
        config = config_from_dict(data)
    except ConfigError as e:
        raise ConversionError(f"the converted architecture is not a valid imagetok VQ-VAE-2: {e}") from None
    return apply_map(sd, _key)._replace(config=config)

"""taming-transformers / latent-diffusion VQ checkpoints (Lightning ``.ckpt``).

imagetok's VQGAN uses taming's parameter names, so the mapping is the identity once training-only
tensors are dropped: ``loss.*`` (LPIPS network, discriminator), EMA codebook statistics, and either
the EMA copies ``model_ema.<name without dots>`` (LDM's ``LitEma``) or, with ``use_ema``, the live
weights they replace. LDM pipeline checkpoints keep the VQ model under ``first_stage_model.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConversionError
from ._common import (
    DEFAULT_RESOLUTION,
    ema_key,
    Ignore,
    Mapped,
    apply_map,
    extras,
    imagetok_fields,
    is_state_dict,
    merge_ignored,
    not_this_format,
    param_names,
    strip_wrappers,
    vqgan_arch,
    vqgan_config,
)
from ._io import read_checkpoint

_DD_KEYS = {
    "double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
    "attn_resolutions", "dropout", "attn_type", "resamp_with_conv", "give_pre_end", "tanh_out", "use_linear_attn",
}  # fmt: skip
_UNSUPPORTED = {  # ddconfig key -> the only value imagetok's VQGAN implements
    "double_z": False, "attn_type": "vanilla", "resamp_with_conv": True, "give_pre_end": False,
    "tanh_out": False, "use_linear_attn": False,
}  # fmt: skip
_PREFIX = "first_stage_model."


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """taming/LDM yaml (whole file, ``model:`` block, target + params, params, or the ddconfig) -> fields."""
    if cfg.get("family") is not None:
        return imagetok_fields(cfg, "vqgan")
    extra = extras(cfg)
    if set(cfg) <= set(extra):  # only imagetok's resolution / input_range: the rest comes from the tensors
        return extra
    if isinstance(cfg.get("model"), dict):
        cfg = cfg["model"]
    target = cfg.get("target")
    params = cfg["params"] if isinstance(cfg.get("params"), dict) else cfg
    if isinstance(params.get("first_stage_config"), dict):  # LDM pipeline yaml
        target = params["first_stage_config"].get("target")
        params = params["first_stage_config"].get("params") or {}
    dd = params.get("ddconfig", params if "ch_mult" in params else None)
    if not isinstance(dd, dict):
        raise ConversionError("taming config: expected model.params with a ddconfig block (or the ddconfig itself)")
    if params.get("remap") is not None:
        raise ConversionError("taming config sets the quantizer's 'remap': re-mapped token ids are not supported")
    for key, want in _UNSUPPORTED.items():
        if dd.get(key, want) != want:
            raise ConversionError(f"taming ddconfig {key}={dd[key]!r} is not supported (imagetok's VQGAN has {key}={want!r})")
    for key in ("in_channels", "out_ch"):
        if dd.get(key, 3) != 3:
            raise ConversionError(f"taming ddconfig {key}={dd[key]!r}: only RGB image models (3 channels) are supported")
    unknown = sorted(set(dd) - _DD_KEYS)
    if unknown:
        notes.append(f"ignored unknown ddconfig keys {unknown}")
    keys = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution", "dropout")
    given = {k: dd[k] for k in keys if k in dd}
    given.update({k: params[k] for k in ("embed_dim", "n_embed") if k in params})
    if target:
        given["quantizer"] = "gumbel" if str(target).rsplit(".", 1)[-1] == "GumbelVQ" else "vq"
    given.update(extra)
    return given


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if is_state_dict(obj):
        sd = dict(obj)
    elif isinstance(obj, Mapping) and is_state_dict(obj.get("state_dict")):
        sd = dict(obj["state_dict"])
    else:
        inner = next((v for v in obj.values() if is_state_dict(v)), None) if isinstance(obj, Mapping) else None
        if inner is not None:
            raise not_this_format("taming", inner.keys(), f"no 'state_dict' entry (it has {list(obj)[:8]})")
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(f"this is not a taming checkpoint: expected a Lightning dict with a 'state_dict' (found {found})")
    sd = strip_wrappers(sd, notes)
    ignored: dict[str, list[str]] = {}
    if any(k.startswith(_PREFIX) for k in sd):
        if use_ema:
            raise ConversionError(
                "use_ema: in an LDM pipeline checkpoint model_ema.* is the EMA of the diffusion model, not of "
                "first_stage_model; convert the autoencoder's own checkpoint to use its EMA weights"
            )
        others = [k for k in sd if not k.startswith(_PREFIX)]
        if others:
            ignored["other LDM pipeline components (not first_stage_model.*)"] = others
        sd = {k[len(_PREFIX) :]: v for k, v in sd.items() if k.startswith(_PREFIX)}
        notes.append("took the first_stage_model.* weights of an LDM pipeline checkpoint")
    if "quantize.used" in sd:
        raise ConversionError("quantize.used is present: the quantizer uses 'remap' (re-mapped token ids), which is not supported")
    live = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    ema = {k: v for k, v in sd.items() if k.startswith("model_ema.")}

    arch, ev = vqgan_arch(live, "taming")
    given = given_fields(cfg, notes) if cfg is not None else {}
    defaults = {
        "resolution": (DEFAULT_RESOLUTION, "default image size; pass the model's config to set it"),
        "dropout": (0.0, None),
    }
    config = vqgan_config(arch, ev, given, "taming config", defaults, notes)
    if arch["quantizer"] == "gumbel":
        notes.append("GumbelVQ: tokens are the argmax of quantize.proj (taming samples Gumbel noise even in eval mode)")
    names = set(param_names(config))
    ema_stats = ("quantize.embedding.cluster_size", "quantize.embedding.embed_avg")

    def live_key(k: str, v: torch.Tensor):
        if k.startswith("loss."):
            return Ignore("training loss (loss.*: perceptual network, discriminator)")
        if k in ema_stats:
            return Ignore("EMA codebook statistics (taming EMAVectorQuantizer)")
        if use_ema and k in names and k not in ema_fallback:
            return Ignore("live weights (replaced by their model_ema.* copies, use_ema=True)")
        return k, v

    ema_fallback: set[str] = set()
    if not use_ema:
        m = apply_map(live, live_key)
        if ema:
            ignored["EMA weights model_ema.* (not requested; use_ema=True / --ema uses them)"] = list(ema)
            notes.append("the checkpoint also has EMA weights (model_ema.*); they were not used")
        return Mapped(config, m.state, m.origin, merge_ignored(ignored, m.ignored), m.unmapped)

    if not ema:
        raise ConversionError("use_ema=True but the checkpoint has no model_ema.* weights")
    flat = {"model_ema." + n.replace(".", ""): n for n in names}
    if len(flat) != len(names):
        raise ConversionError("model_ema.* names are ambiguous for this architecture (flattened names collide)")
    missing = sorted(k for k in flat if k not in ema)
    if missing == ["model_ema.quantizeembeddingweight"] and any(k in live for k in ema_stats):
        # EMAVectorQuantizer's codebook has requires_grad=False, so LitEma keeps no copy: use the live one
        ema_fallback.add("quantize.embedding.weight")
        notes.append("quantize.embedding.weight has no EMA copy (EMA-updated codebook); used the live codebook")
    elif missing:
        raise ConversionError(f"use_ema=True but model_ema lacks {len(missing)} tensor(s), e.g. {missing[:5]}")

    m_live, m_ema = apply_map(live, live_key), apply_map(ema, ema_key(flat))
    notes.append("used the EMA weights (model_ema.*)")
    return Mapped(
        config,
        {**m_live.state, **m_ema.state},
        {**m_live.origin, **m_ema.origin},
        merge_ignored(ignored, m_live.ignored, m_ema.ignored),
        m_live.unmapped + m_ema.unmapped,
    )

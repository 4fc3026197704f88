"""SEED-Voken Open-MAGVIT2 LFQ tokenizer checkpoints (``src/Open_MAGVIT2/models/lfqgan.py``).

imagetok's ``magvit2`` family keeps the original parameter names, so the mapping is the identity
once training-only tensors are dropped: ``loss.*`` (LPIPS, discriminator) and either the EMA copies
``model_ema.<name without dots>`` (``LitEma``) or the live weights they replace. LFQ has no
parameters and no persistent buffers, so nothing named ``quantize.*`` is expected.

Which weights: ``use_ema=True`` takes the EMA copies; so does a config with ``use_ema: true`` when
the checkpoint has them (as the original's ``reconstruct_image.py`` does).

The config is SEED-Voken's Lightning-CLI YAML (``model: {class_path, init_args: {ddconfig, n_embed,
embed_dim, token_factorization, factorized_bits, use_ema}}``, or its ``init_args``/``ddconfig``), or an
imagetok ``magvit2`` config; the architecture is read from the tensors and must agree with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import config_from_dict
from ..errors import ConfigError, ConversionError
from ._common import (
    DEFAULT_RESOLUTION,
    ema_key,
    Ignore,
    Mapped,
    apply_map,
    disagreements,
    extras,
    imagetok_fields,
    indices,
    is_state_dict,
    merge_ignored,
    need,
    not_this_format,
    param_names,
    shape,
    strip_wrappers,
)
from ._io import read_checkpoint

FMT = "open-magvit2"
_DD_KEYS = {"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks"}
_ARCH = ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed")


def lightning_init_args(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(init_args, class_path) of a SEED-Voken config: whole file, ``model:`` block, or init_args."""
    if isinstance(cfg.get("model"), Mapping):
        cfg = cfg["model"]
    class_path = cfg.get("class_path") or cfg.get("target")
    args = cfg.get("init_args", cfg.get("params", cfg))
    if not isinstance(args, Mapping):
        raise ConversionError("SEED-Voken config: model.init_args must be a mapping")
    return dict(args), class_path


def _ema_flag(cfg: dict[str, Any] | None) -> bool | None:
    if cfg is None or cfg.get("family") is not None:
        return None
    args, _ = lightning_init_args(cfg)
    return args.get("use_ema") if isinstance(args.get("use_ema"), bool) else None


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """SEED-Voken Open-MAGVIT2 config (or an imagetok magvit2 config) -> imagetok fields."""
    if cfg.get("family") is not None:
        return imagetok_fields(cfg, "magvit2")
    extra = extras(cfg)
    if set(cfg) <= set(extra):
        return extra
    args, class_path = lightning_init_args(cfg)
    if class_path and "Open_MAGVIT2" not in str(class_path) and "lfq" not in str(class_path).lower():
        notes.append(f"config class_path {class_path!r} is not Open-MAGVIT2's VQModel; read its fields anyway")
    dd = args.get("ddconfig", args if "ch_mult" in args else None)
    if not isinstance(dd, Mapping):
        raise ConversionError("Open-MAGVIT2 config: expected model.init_args.ddconfig (or the ddconfig itself)")
    if dd.get("double_z", False):
        raise ConversionError("Open-MAGVIT2 ddconfig double_z=True is not supported (LFQ models have double_z: false)")
    for key in ("in_channels", "out_ch"):
        if dd.get(key, 3) != 3:
            raise ConversionError(f"Open-MAGVIT2 ddconfig {key}={dd[key]!r}: only RGB image models are supported")
    unknown = sorted(set(dd) - _DD_KEYS)
    if unknown:
        notes.append(f"ignored unknown ddconfig keys {unknown}")
    given = {k: dd[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels", "resolution") if k in dd}
    given.update({k: args[k] for k in ("embed_dim", "n_embed") if k in args})
    if args.get("token_factorization"):
        bits = args.get("factorized_bits", [9, 9])  # lfqgan.VQModel's default
        given["factorized_bits"] = list(bits)
        notes.append(f"token_factorization: tokens are split into sub-tokens of {list(bits)} bits")
    given.update(extras(cfg))
    return given


def arch(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, str]]:
    """Architecture fields read from Open-MAGVIT2 tensors, with the tensor that showed each."""
    w = need(sd, "encoder.conv_in.weight", FMT)
    ch = w.shape[0]
    ev = {"ch": f"encoder.conv_in.weight is {shape(w)}"}
    levels = indices(sd, r"encoder\.down\.(\d+)\.block\.")
    if not levels or levels != list(range(len(levels))):
        raise not_this_format(FMT, sd.keys(), f"encoder levels {levels} are not 0..L-1")
    mult, shown = [], []
    for i in levels:
        key = f"encoder.down.{i}.block.0.conv1.weight"
        t = need(sd, key, FMT)
        if t.shape[0] % ch:
            raise ConversionError(f"{key} has {t.shape[0]} channels, not a multiple of ch={ch}")
        mult.append(t.shape[0] // ch)
        shown.append(f"{key} is {shape(t)}")
    ev["ch_mult"] = ", ".join(shown)
    blocks = indices(sd, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight$")
    ev["num_res_blocks"] = f"encoder.down.0 has {len(blocks)} res block(s)"
    z = need(sd, "encoder.conv_out.weight", FMT)
    ev["z_channels"] = ev["embed_dim"] = ev["n_embed"] = f"encoder.conv_out.weight is {shape(z)}"
    k = z.shape[0]
    fields = dict(ch=ch, ch_mult=mult, num_res_blocks=len(blocks), z_channels=k, embed_dim=k, n_embed=2**k)
    return fields, ev


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if is_state_dict(obj):
        sd = dict(obj)
    elif isinstance(obj, Mapping) and is_state_dict(obj.get("state_dict")):
        sd = dict(obj["state_dict"])
    else:
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(f"this is not an Open-MAGVIT2 checkpoint: expected a dict with a 'state_dict' (found {found})")
    sd = strip_wrappers(sd, notes)
    if not any(k.startswith("encoder.mid_block.") for k in sd) or not any(k.startswith("decoder.adaptive.") for k in sd):
        raise not_this_format(FMT, sd.keys(), "it has no encoder.mid_block.* / decoder.adaptive.* (AdaptiveGroupNorm) keys")
    live = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    ema = {k: v for k, v in sd.items() if k.startswith("model_ema.")}
    fields, ev = arch(live)
    given = given_fields(cfg, notes) if cfg is not None else {}
    disagree = disagreements(given, fields, ev, _ARCH)
    if disagree:
        raise ConversionError("the config does not match the checkpoint's tensors: " + "; ".join(disagree))
    data: dict[str, Any] = {"family": "magvit2", **fields}
    if given.get("resolution") is None:
        notes.append(f"assumed resolution={DEFAULT_RESOLUTION} (default image size; pass the model's config to set it)")
        data["resolution"] = DEFAULT_RESOLUTION
    else:
        data["resolution"] = given["resolution"]
    for name in ("factorized_bits", "input_range"):
        if given.get(name) is not None:
            data[name] = list(given[name])
    try:
        config = config_from_dict(data)
    except ConfigError as e:
        raise ConversionError(f"the converted architecture is not a valid imagetok magvit2 model: {e}") from None

    wants_ema = use_ema or (_ema_flag(cfg) is True and bool(ema))
    if use_ema and not ema:
        raise ConversionError("use_ema=True but the checkpoint has no model_ema.* weights")
    names = set(param_names(config))

    def live_key(k: str, v: torch.Tensor):
        if k.startswith("loss."):
            return Ignore("training loss (loss.*: perceptual network, discriminator)")
        if wants_ema and k in names:
            return Ignore("live weights (replaced by their model_ema.* copies)")
        return k, v

    m_live = apply_map(live, live_key)
    if not wants_ema:
        ignored = {}
        if ema:
            ignored["EMA weights model_ema.* (not requested; use_ema=True / --ema uses them)"] = list(ema)
            notes.append("the checkpoint also has EMA weights (model_ema.*); they were not used")
        return Mapped(config, m_live.state, m_live.origin, merge_ignored(ignored, m_live.ignored), m_live.unmapped)

    flat = {"model_ema." + n.replace(".", ""): n for n in names}
    if len(flat) != len(names):
        raise ConversionError("model_ema.* names are ambiguous for this architecture (flattened names collide)")
    missing = sorted(k for k in flat if k not in ema)
    if missing:
        raise ConversionError(f"the EMA weights lack {len(missing)} tensor(s), e.g. {missing[:5]}")

    m_ema = apply_map(ema, ema_key(flat))
    why = "use_ema=True" if use_ema else "the config sets use_ema: true, as the original's reconstruct_image.py does"
    notes.append(f"used the EMA weights (model_ema.*) because {why}")
    return Mapped(
        config,
        {**m_live.state, **m_ema.state},
        {**m_live.origin, **m_ema.origin},
        merge_ignored(m_live.ignored, m_ema.ignored),
        m_live.unmapped + m_ema.unmapped,
    )

"""FoundationVision/LlamaGen image tokenizer checkpoints (``tokenizer/tokenizer_image/vq_model.py``).

Same network as taming's VQGAN under other names: ``encoder.conv_blocks.{i}.res.{j}`` ->
``encoder.down.{i}.block.{j}`` (``attn``, ``downsample`` alike), ``{encoder,decoder}.mid.{0,1,2}`` ->
``mid.block_1 / attn_1 / block_2``, ``decoder.conv_blocks.{k}`` -> ``decoder.up.{L-1-k}``
(``res`` -> ``block``, ``upsample``), with attention at the last (lowest-resolution) level only and an
l2-normalised codebook. ``quantize.codebook_used`` (a usage statistic) is dropped.

The training script saves ``{"model", "optimizer", "steps", "args": argparse.Namespace}`` (and
``"ema"`` with ``--ema``); released files may hold only ``"model"``. ``args.image_size`` and
``args.codebook_l2_norm`` are read when present.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConversionError
from ._common import (
    DEFAULT_RESOLUTION,
    Ignore,
    MapFn,
    Mapped,
    apply_map,
    extras,
    imagetok_fields,
    is_state_dict,
    not_this_format,
    strip_wrappers,
    vqgan_arch,
    vqgan_config,
)
from ._io import read_checkpoint

_MID = ("block_1", "attn_1", "block_2")
_IGNORED_ARGS = {"codebook_show_usage", "commit_loss_beta", "entropy_loss_ratio", "class", "vq_model"}
_RENAMES = {
    "codebook_size": "n_embed", "codebook_embed_dim": "embed_dim", "z_channels": "z_channels",
    "encoder_decoder_ch": "ch", "dropout_p": "dropout", "image_size": "resolution",
}  # fmt: skip


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """LlamaGen ``ModelArgs`` fields (+ ``encoder_decoder_ch``), flat or under ``"ModelArgs"`` -> imagetok fields."""
    if cfg.get("family") is not None:
        return imagetok_fields(cfg, "vqgan")
    flat = {k: v for k, v in cfg.items() if k != "ModelArgs"}
    if isinstance(cfg.get("ModelArgs"), dict):
        flat.update(cfg["ModelArgs"])
    enc, dec = flat.get("encoder_ch_mult"), flat.get("decoder_ch_mult")
    if enc is not None and dec is not None and list(enc) != list(dec):
        raise ConversionError(
            f"LlamaGen encoder_ch_mult {list(enc)} differs from decoder_ch_mult {list(dec)}: imagetok's VQGAN has one ch_mult"
        )
    given = {dst: flat[src] for src, dst in _RENAMES.items() if flat.get(src) is not None}
    if enc is not None or dec is not None:
        given["ch_mult"] = list(enc if enc is not None else dec)
    if flat.get("codebook_l2_norm") is not None:
        given["codebook_norm"] = "l2" if flat["codebook_l2_norm"] else "none"
    unknown = sorted(set(flat) - set(_RENAMES) - _IGNORED_ARGS - {"encoder_ch_mult", "decoder_ch_mult", "codebook_l2_norm", "resolution", "input_range"})
    if unknown:
        notes.append(f"ignored LlamaGen config keys {unknown}")
    given.update(extras(flat))
    return given


def _pick(obj: Any, use_ema: bool, notes: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, args) of a LlamaGen checkpoint."""
    if is_state_dict(obj):
        if use_ema:
            raise ConversionError("use_ema=True but this LlamaGen checkpoint is a bare state dict (no 'ema' entry)")
        return dict(obj), {}
    if not isinstance(obj, Mapping):
        raise ConversionError(f"this is not a LlamaGen checkpoint: expected a dict, got {type(obj).__name__}")
    present = [k for k in ("model", "ema", "state_dict") if is_state_dict(obj.get(k))]
    if not present:
        raise ConversionError(f"this is not a LlamaGen checkpoint: no 'model', 'ema' or 'state_dict' weights (found {list(obj)[:8]})")
    if use_ema:
        if "ema" not in present:
            raise ConversionError(f"use_ema=True but the checkpoint has no 'ema' weights (it has {present})")
        entry = "ema"
    else:
        entry = next(k for k in ("model", "state_dict", "ema") if k in present)
        if entry != "ema" and "ema" in present:
            notes.append("the checkpoint also has 'ema' weights (LlamaGen's vq_demo.py prefers them); use_ema=True / --ema uses them")
    notes.append(f"took the checkpoint's {entry!r} weights")
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else (dict(args) if isinstance(args, Mapping) else {})
    return dict(obj[entry]), args


def key_map(n: int) -> MapFn:
    """LlamaGen key -> imagetok key for a model with ``n`` levels."""

    def fn(k: str, v: torch.Tensor):
        if k == "quantize.codebook_used":
            return Ignore("LlamaGen codebook-usage statistic (quantize.codebook_used)")
        if m := re.match(r"(encoder|decoder)\.mid\.([012])\.(.+)$", k):
            return f"{m[1]}.mid.{_MID[int(m[2])]}.{m[3]}", v
        if m := re.match(r"encoder\.conv_blocks\.(\d+)\.(res|attn)\.(\d+)\.(.+)$", k):
            return f"encoder.down.{m[1]}.{'block' if m[2] == 'res' else 'attn'}.{m[3]}.{m[4]}", v
        if m := re.match(r"encoder\.conv_blocks\.(\d+)\.downsample\.(.+)$", k):
            return f"encoder.down.{m[1]}.downsample.{m[2]}", v
        if m := re.match(r"decoder\.conv_blocks\.(\d+)\.(res|attn)\.(\d+)\.(.+)$", k):
            return f"decoder.up.{n - 1 - int(m[1])}.{'block' if m[2] == 'res' else 'attn'}.{m[3]}.{m[4]}", v
        if m := re.match(r"decoder\.conv_blocks\.(\d+)\.upsample\.(.+)$", k):
            return f"decoder.up.{n - 1 - int(m[1])}.upsample.{m[2]}", v
        if k.startswith(("quantize.embedding.", "quant_conv.", "post_quant_conv.")) or re.match(
            r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.", k
        ):
            return k, v
        return None

    return fn


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    sd, args = _pick(read_checkpoint(path, trust_pickle=trust_pickle), use_ema, notes)
    sd = strip_wrappers(sd, notes)
    ups = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.conv_blocks\.(\d+)\.", k))]
    if not ups or not any(k.startswith("encoder.conv_blocks.") for k in sd):
        raise not_this_format("llamagen", sd.keys(), "it has no encoder.conv_blocks.* / decoder.conv_blocks.* keys")
    m = apply_map(sd, key_map(1 + max(ups)))
    if m.unmapped:
        return m
    arch, ev = vqgan_arch(m.state, "llamagen")
    given = given_fields({k: args[k] for k in ("image_size", "codebook_l2_norm") if k in args}, notes)
    if given:
        notes.append(f"read {sorted(k for k in ('image_size', 'codebook_l2_norm') if k in args)} from the checkpoint's args")
    if cfg is not None:
        given.update(given_fields(cfg, notes))
    defaults = {
        "resolution": (DEFAULT_RESOLUTION, "LlamaGen's usual image size; the checkpoint does not record it"),
        "dropout": (0.0, None),
        "codebook_norm": ("l2", "LlamaGen's default codebook_l2_norm=True"),
    }
    return m._replace(config=vqgan_config(arch, ev, given, "LlamaGen config", defaults, notes))

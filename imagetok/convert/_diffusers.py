"""diffusers ``VQModel`` folders (``config.json`` + ``diffusion_pytorch_model.safetensors``).

Key mapping to taming names (L = number of levels): ``down_blocks.{i}.resnets.{j}`` ->
``down.{i}.block.{j}``, ``attentions`` -> ``attn`` (``group_norm/to_q/to_k/to_v/to_out.0`` or the
legacy ``query/key/value/proj_attn`` -> ``norm/q/k/v/proj_out``, Linear ``[C, C]`` weights ->
1x1 conv ``[C, C, 1, 1]``), ``downsamplers.0`` -> ``downsample``, ``mid_block.resnets.{0,1}`` /
``attentions.0`` -> ``mid.block_{1,2}`` / ``mid.attn_1``, ``conv_norm_out`` -> ``norm_out``,
``conv_shortcut`` -> ``nin_shortcut``, and ``decoder.up_blocks.{k}`` -> ``decoder.up.{L-1-k}``
(diffusers orders decoder blocks from the lowest resolution). ``norm_type="spatial"`` (MoVQ, as in
Kandinsky): the attention's ``spatial_norm`` -> ``norm``; spatial norms keep their ``norm_layer`` /
``conv_y`` / ``conv_b`` names (imagetok's :mod:`~imagetok.models.movq`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ConversionError
from ._common import (
    DEFAULT_RESOLUTION,
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
from ._io import read_checkpoint, read_config_file

_ATTN = {
    "group_norm": "norm", "spatial_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",  # legacy attention names
}  # fmt: skip
_KNOWN_CONFIG = {
    "_class_name", "_diffusers_version", "_name_or_path", "scaling_factor", "force_upcast", "lookup_from_codebook",
    "act_fn", "norm_num_groups", "in_channels", "out_channels", "block_out_channels", "down_block_types",
    "up_block_types", "latent_channels", "layers_per_block", "vq_embed_dim", "num_vq_embeddings",
    "mid_block_add_attention", "norm_type", "sample_size", "resolution", "input_range",
}  # fmt: skip
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin")
_INDEX = "diffusion_pytorch_model.safetensors.index.json"


def find_files(src: Path, notes: list[str]) -> tuple[Path, Path | None]:
    """(weights file or shard index, its config.json or None) for a folder or a weights file."""
    if src.is_file():
        cfg = src.parent / "config.json"
        return src, (cfg if cfg.is_file() else None)
    folder = src
    if not (folder / "config.json").is_file():
        subs = [d for d in ("vqvae", "movq") if (src / d / "config.json").is_file()]
        if not subs:
            raise ConversionError(f"{src}: no config.json (expected a diffusers VQModel folder, or a pipeline with a vqvae/ subfolder)")
        folder = src / subs[0]
        notes.append(f"used the {subs[0]}/ subfolder of the pipeline folder")
    for name in (*_WEIGHTS, _INDEX):
        if (folder / name).is_file():
            return folder / name, folder / "config.json"
    raise ConversionError(f"{folder}: no {_WEIGHTS[0]} (or .fp16.safetensors, .bin, sharded index) weights file")


def _read_weights(weights: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if weights.name != _INDEX:
        sd = read_checkpoint(weights, trust_pickle=trust_pickle)
    else:
        try:
            shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ConversionError(f"{weights}: not a valid sharded-weights index ({e})") from None
        sd = {}
        for shard in shards:
            sd.update(read_checkpoint(weights.parent / shard, trust_pickle=trust_pickle))
    if not is_state_dict(sd):
        inner = next((v for v in sd.values() if is_state_dict(v)), None) if isinstance(sd, dict) else None
        if inner is not None:
            raise not_this_format("diffusers", inner.keys(), f"{weights.name} is a training checkpoint, not a weights file")
        raise ConversionError(f"{weights}: expected a dict of tensors")
    return dict(sd)


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """diffusers VQModel ``config.json`` -> imagetok fields (attention levels from the block types)."""
    if cfg.get("family") is not None:
        return imagetok_fields(cfg, "vqgan")
    cls = cfg.get("_class_name", "VQModel")
    if cls != "VQModel":
        raise ConversionError(f"the diffusers config is a {cls}, not a VQModel")
    norm_type = cfg.get("norm_type", "group")
    if norm_type not in ("group", "spatial"):
        raise ConversionError(f"diffusers VQModel norm_type={norm_type!r} is not supported (expected 'group' or 'spatial')")
    for key, want in (("act_fn", "silu"), ("norm_num_groups", 32), ("in_channels", 3), ("out_channels", 3)):
        if cfg.get(key, want) != want:
            raise ConversionError(f"diffusers config {key}={cfg[key]!r} is not supported (imagetok's VQGAN has {want!r})")
    try:
        boc = [int(c) for c in cfg["block_out_channels"]]
        down, up = [str(t) for t in cfg["down_block_types"]], [str(t) for t in cfg["up_block_types"]]
        latent = int(cfg["latent_channels"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(
            f"the diffusers config lacks or mangles a required key ({type(e).__name__}: {e}); it needs "
            "block_out_channels, down_block_types, up_block_types and latent_channels"
        ) from None
    n = len(boc)
    if not n or len(down) != n or len(up) != n:
        raise ConversionError(f"the diffusers config has {n} block_out_channels but {len(down)} down and {len(up)} up block types")
    ch = boc[0]
    if any(c % ch for c in boc):
        raise ConversionError(f"block_out_channels {boc} are not multiples of the first ({ch})")
    down_attn = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
    up_attn = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
    for t, kinds in [(t, down_attn) for t in down] + [(t, up_attn) for t in up]:
        if t not in kinds:
            raise ConversionError(f"diffusers block type {t!r} is not supported (expected one of {sorted(kinds)})")
    enc_levels = [i for i, t in enumerate(down) if down_attn[t]]
    dec_levels = sorted(n - 1 - k for k, t in enumerate(up) if up_attn[t])  # up_blocks.{k} is level L-1-k
    if enc_levels != dec_levels:
        raise ConversionError(
            f"attention at encoder levels {enc_levels} but decoder levels {dec_levels} (up_block_types start at the "
            "lowest resolution): imagetok's VQGAN puts attention at the same levels in both"
        )
    given: dict[str, Any] = dict(
        ch=ch, ch_mult=[c // ch for c in boc], num_res_blocks=int(cfg.get("layers_per_block", 1)),
        z_channels=latent, embed_dim=int(cfg.get("vq_embed_dim") or latent),
        n_embed=int(cfg.get("num_vq_embeddings", 256)), mid_attn=bool(cfg.get("mid_block_add_attention", True)),
        quantizer="vq", norm_type=norm_type,
    )  # fmt: skip
    if norm_type == "spatial" and given["embed_dim"] != latent:
        raise ConversionError(
            f"norm_type='spatial' needs vq_embed_dim == latent_channels (diffusers conditions the decoder's "
            f"spatial norms, built for latent_channels={latent}, on the codes), got vq_embed_dim={given['embed_dim']}"
        )
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, int) and not isinstance(size, bool) and size >= 2 ** (n - 1) and size % 2 ** (n - 1) == 0:
        given["resolution"] = size
    elif size is not None:
        notes.append(f"sample_size={size!r} is not a usable image size for {n} levels; ignored it")
    unknown = sorted(set(cfg) - _KNOWN_CONFIG)
    if unknown:
        notes.append(f"ignored unknown diffusers config keys {unknown}")
    given["attn_levels"] = enc_levels  # compared with the tensors as levels: no image size needed
    given.update(extras(cfg))
    return given


def key_map(n: int) -> MapFn:
    """diffusers key -> imagetok key for a model with ``n`` levels."""

    def resnet(rest: str) -> str:
        return "nin_shortcut." + rest[len("conv_shortcut.") :] if rest.startswith("conv_shortcut.") else rest

    def attn(prefix: str, rest: str, v: torch.Tensor):
        for src, dst in _ATTN.items():
            if rest.startswith(src + "."):
                leaf = rest[len(src) + 1 :]
                if dst != "norm" and leaf == "weight" and v.ndim == 2:
                    v = v[:, :, None, None]  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
                return f"{prefix}.{dst}.{leaf}", v
        return None

    def fn(k: str, v: torch.Tensor):
        if k.startswith(("quantize.", "quant_conv.", "post_quant_conv.")) or re.match(r"(encoder|decoder)\.conv_(in|out)\.", k):
            return k, v
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)$", k):
            return f"{m[1]}.norm_out.{m[2]}", v
        if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)$", k):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}", v
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", k):
            return attn(f"{m[1]}.mid.attn_1", m[2], v)
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$", k):
            i, kind, j, rest = m[1], m[2], m[3], m[4]
            if kind == "resnets":
                return f"encoder.down.{i}.block.{j}.{resnet(rest)}", v
            if kind == "downsamplers":
                return (f"encoder.down.{i}.downsample.{rest}", v) if j == "0" else None
            return attn(f"encoder.down.{i}.attn.{j}", rest, v)
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)$", k):
            level, kind, j, rest = n - 1 - int(m[1]), m[2], m[3], m[4]
            if kind == "resnets":
                return f"decoder.up.{level}.block.{j}.{resnet(rest)}", v
            if kind == "upsamplers":
                return (f"decoder.up.{level}.upsample.{rest}", v) if j == "0" else None
            return attn(f"decoder.up.{level}.attn.{j}", rest, v)
        return None

    return fn


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    weights, cfg_path = find_files(path, notes)
    sd = strip_wrappers(_read_weights(weights, trust_pickle), notes)
    ups = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))]
    if not ups or not any(k.startswith("encoder.down_blocks.") for k in sd):
        raise not_this_format("diffusers", sd.keys(), "it has no encoder.down_blocks.* / decoder.up_blocks.* keys")
    if cfg is None:
        if cfg_path is None:
            raise ConversionError(f"{weights}: no config.json beside it; pass config= (the VQModel's config.json)")
        cfg = read_config_file(cfg_path)
    given = given_fields(cfg, notes)
    m = apply_map(sd, key_map(1 + max(ups)))
    if m.unmapped:
        return m
    arch, ev = vqgan_arch(m.state, "diffusers")
    defaults = {
        "resolution": (DEFAULT_RESOLUTION, "the config's sample_size is missing or unusable"),
        "dropout": (0.0, None),
        "input_range": ([-1.0, 1.0], "diffusers configs do not record the pixel range; amused's VQ uses [0, 1]"),
    }
    return m._replace(config=vqgan_config(arch, ev, given, "diffusers config", defaults, notes))

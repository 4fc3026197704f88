"""Hugging Face transformers image tokenizers: ``Emu3VQVAE``, ``JanusVQVAE`` and ``ChameleonVQVAE``.

Reads a ``save_pretrained`` folder (``config.json`` + ``model.safetensors`` or shards); ``model_type``
decides the class. A whole-model folder (``model_type`` ``emu3`` / ``janus`` / ``chameleon``) works
too: its ``vq_config`` is used and only the shards holding ``model.vqmodel.*`` are read.

- ``chameleon_vqgan``: taming's names. Hugging Face's Chameleon conversion drops the decoder
  (``convert_chameleon_weights_to_hf.py``: "we dont do image generation yet"), so the result is an
  encoder-only tokenizer (``decoder=False``); its ``post_quant_conv`` is dropped (nothing to feed).
- ``janus_vqgan``: taming's names, but ``decoder.up.{k}`` runs from the lowest resolution, so it
  becomes ``decoder.up.{L-1-k}``. The codebook is l2-normalised for the code search *and* decoding:
  LlamaGen's and DeepSeek's Janus rule. (transformers' ``JanusVQVAE.encode`` searches un-normalised
  latents against the un-normalised codebook while its ``decode`` normalises; imagetok follows the
  original code, so its tokens are the ones Janus was trained on.)
- ``emu3_vqgan``: renamed back to Emu3's original names (``encoder.down_block.down`` -> ``encoder.down``,
  ``middle_block`` -> ``mid``, ``attn_norms.{j}`` -> ``attn.{j}.norm``, Linear ``{q,k,v,out}_proj``
  ``[C, C]`` -> 1x1 conv ``q/k/v/proj_out`` ``[C, C, 1, 1]``); see :mod:`imagetok.models.emu3`.
"""

from __future__ import annotations

import re
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
    merge_ignored,
    vqgan_arch,
    vqgan_config,
)
from ._io import read_config_file
from ._shards import read_prefixed, upcast_note

VQ_TYPES = ("chameleon_vqgan", "janus_vqgan", "emu3_vqgan")
MODEL_TYPES = ("chameleon", "janus", "emu3")
_PROJ = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "proj_out"}
EMU3_REMOTE = "Emu3VisionVQ"  # model_type of BAAI/Emu3-VisionTokenizer's config.json (remote code)
_EMU3_ORIGINAL = {"ch": "base_channels", "ch_mult": "channel_multiplier", "z_channels": "latent_channels", "double_z": "double_latent"}


def _vq_config(folder: Path, cfg: dict[str, Any] | None) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    """(the VQ config, its model_type, the key prefixes to look under).

    ``cfg`` may be the source's config (replacing ``config.json``) or an imagetok config, which then
    stands for the VQ config while ``config.json`` (when present) still names the class.
    """
    user_imagetok = cfg if cfg is not None and cfg.get("family") is not None else None
    base = cfg if cfg is not None and user_imagetok is None else None
    if base is None and (folder / "config.json").is_file():
        base = read_config_file(folder / "config.json")
    if base is None:
        if user_imagetok is not None and user_imagetok["family"] == "emu3":
            return user_imagetok, "emu3_vqgan", ("", "model.vqmodel.", "vqmodel.")
        raise ConversionError(f"{folder}: no config.json (expected a transformers save_pretrained folder; its model_type names the class)")
    mt = base.get("model_type")
    if mt in MODEL_TYPES:
        vq = base.get("vq_config")
        if not isinstance(vq, dict):
            raise ConversionError(f"config.json has model_type {mt!r} but no vq_config block")
        vq, mt, prefixes = {"model_type": f"{mt}_vqgan", **vq}, f"{mt}_vqgan", ("model.vqmodel.", "vqmodel.")
    elif mt in VQ_TYPES:
        vq, prefixes = base, ("", "model.vqmodel.", "vqmodel.")
    elif mt == EMU3_REMOTE:  # BAAI/Emu3-VisionTokenizer's own (trust_remote_code) folder: Emu3's names already
        vq, mt, prefixes = {_EMU3_ORIGINAL.get(k, k): v for k, v in base.items()}, "emu3_vqgan", ("",)
    else:
        raise ConversionError(
            f"config.json model_type {mt!r} is not a supported transformers image tokenizer; expected one of "
            f"{[*VQ_TYPES, EMU3_REMOTE]} (or a whole {list(MODEL_TYPES)} model)"
        )
    return (user_imagetok if user_imagetok is not None else vq), mt, prefixes


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    folder = path if path.is_dir() else path.parent
    vq, mt, prefixes = _vq_config(folder, cfg)
    sd, prefix, ignored = read_prefixed(path, prefixes, trust_pickle=trust_pickle, notes=notes)
    if prefix:
        notes.append(f"took the {prefix}* weights")
    upcast_note(sd, notes)
    if vq.get("double_latent"):
        raise ConversionError("double_latent=True (a KL autoencoder's encoder) is not a VQ tokenizer")
    if mt == "emu3_vqgan":
        m = _emu3(sd, vq, notes)
    else:
        m = _vqgan(sd, vq, mt, notes)
    return m._replace(ignored=merge_ignored(ignored, m.ignored))


# ---------------------------------------------------------------------------------- Janus / Chameleon
def _vqgan(sd: dict[str, torch.Tensor], vq: dict[str, Any], mt: str, notes: list[str]) -> Mapped:
    fmt = "transformers"
    has_decoder = any(k.startswith("decoder.") for k in sd)
    ups = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))]
    n = 1 + max(ups) if ups else 0

    def fn(k: str, v: torch.Tensor):
        if not has_decoder and k.startswith("post_quant_conv."):
            return Ignore("post_quant_conv (the checkpoint has no decoder for it to feed)")
        if mt == "janus_vqgan" and (m := re.match(r"decoder\.up\.(\d+)\.(.+)$", k)):
            return f"decoder.up.{n - 1 - int(m[1])}.{m[2]}", v  # transformers' Janus lists levels low-res first
        if re.match(r"(encoder|decoder)\.", k) or k.startswith(("quant_conv.", "post_quant_conv.", "quantize.embedding.")):
            return k, v
        return None

    m = apply_map(sd, fn)
    if m.unmapped:
        return m
    if vq.get("family") is not None:
        given = imagetok_fields(vq, "vqgan")
    else:
        renames = {"base_channels": "ch", "channel_multiplier": "ch_mult", "num_res_blocks": "num_res_blocks",
                   "latent_channels": "z_channels", "embed_dim": "embed_dim", "num_embeddings": "n_embed", "dropout": "dropout"}  # fmt: skip
        given = {dst: vq[src] for src, dst in renames.items() if vq.get(src) is not None}
        levels = len(given.get("ch_mult") or []) or n
        if mt == "chameleon_vqgan":
            if vq.get("resolution") is not None:
                given["resolution"] = vq["resolution"]
            if "attn_resolutions" in vq:
                given["attn_resolutions"] = list(vq["attn_resolutions"] or [])
            if vq.get("attn_type", "vanilla") != "vanilla":
                raise ConversionError(f"attn_type={vq['attn_type']!r} is not supported (imagetok's VQGAN has 'vanilla')")
        else:  # Janus: attention at the last level only; num_patches tokens per side
            if vq.get("num_patches") is not None and levels:
                given["resolution"] = int(vq["num_patches"]) * 2 ** (levels - 1)
            given["attn_levels"] = [levels - 1] if levels else None
            given["codebook_norm"] = "l2"
            notes.append("codebook_norm='l2': codes searched and decoded l2-normalised (LlamaGen / Janus rule; "
                         "transformers' JanusVQVAE.encode searches without normalising)")  # fmt: skip
        given.update(extras(vq))
    arch, ev = vqgan_arch(m.state, fmt)
    if not arch["decoder"]:
        notes.append("encoder-only: the checkpoint has no decoder (tokens can be made, not decoded)")
    defaults = {
        "resolution": (512 if mt == "chameleon_vqgan" else DEFAULT_RESOLUTION, "the config does not say"),
        "dropout": (0.0, None),
        "codebook_norm": ("none", None),
    }
    return m._replace(config=vqgan_config(arch, ev, given, "transformers config.json", defaults, notes))


# ----------------------------------------------------------------------------------------------- Emu3
def _emu3_key(k: str, v: torch.Tensor):
    def attn(prefix: str, proj: str, leaf: str):
        if leaf == "weight" and v.ndim == 2:
            return f"{prefix}.{_PROJ[proj]}.{leaf}", v[:, :, None, None]  # Linear -> 1x1 conv
        return f"{prefix}.{_PROJ[proj]}.{leaf}", v

    if m := re.match(r"(encoder|decoder)\.middle_block\.attn_1\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$", k):
        return attn(f"{m[1]}.mid.attn_1", m[2], m[3])
    if m := re.match(r"(encoder|decoder)\.middle_block\.attn_norm\.(.+)$", k):
        return f"{m[1]}.mid.attn_1.norm.{m[2]}", v
    if m := re.match(r"(encoder|decoder)\.middle_block\.(block_[12]\..+)$", k):
        return f"{m[1]}.mid.{m[2]}", v
    if m := re.match(r"(encoder\.down_block\.down|decoder\.up_block\.up)\.(\d+)\.(.+)$", k):
        base = "encoder.down" if m[1].startswith("encoder") else "decoder.up"
        i, rest = m[2], m[3]
        if a := re.match(r"attn\.(\d+)\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$", rest):
            return attn(f"{base}.{i}.attn.{a[1]}", a[2], a[3])
        if a := re.match(r"attn_norms\.(\d+)\.(.+)$", rest):
            return f"{base}.{i}.attn.{a[1]}.norm.{a[2]}", v
        if re.match(r"(block\.\d+|downsample|upsample)\.", rest):
            return f"{base}.{i}.{rest}", v
        return None
    if re.match(r"(encoder\.down|decoder\.up|encoder\.mid|decoder\.mid)\.", k):
        return k, v  # already Emu3's original names (BAAI/Emu3-VisionTokenizer's own files)
    if re.match(r"(encoder|decoder)\.(conv_in|norm_out|conv_out|time_conv|time_res_stack)\.", k) or k.startswith(
        ("quant_conv.", "post_quant_conv.", "quantize.embedding.")
    ):
        return k, v
    return None


def _emu3(sd: dict[str, torch.Tensor], vq: dict[str, Any], notes: list[str]) -> Mapped:
    m = apply_map(sd, _emu3_key)
    if m.unmapped:
        return m
    if vq.get("family") is not None:
        data = dict(vq)
    else:
        heads = vq.get("num_attention_heads", 1)
        if heads != 1:
            raise ConversionError(f"num_attention_heads={heads}: Emu3's VisionTokenizer (and imagetok's) uses single-head attention")
        renames = {"base_channels": "ch", "channel_multiplier": "ch_mult", "num_res_blocks": "num_res_blocks",
                   "attn_resolutions": "attn_resolutions", "latent_channels": "z_channels", "embed_dim": "embed_dim",
                   "codebook_size": "codebook_size", "temporal_downsample_factor": "temporal_downsample_factor", "dropout": "dropout",
                   "in_channels": "in_channels", "out_channels": "out_channels"}  # fmt: skip
        data = {"family": "emu3", **{dst: vq[src] for src, dst in renames.items() if vq.get(src) is not None}}
        data.update(extras(vq))
        if "resolution" not in data:
            notes.append("assumed resolution=512 (Emu3's image processor: min_pixels 512 * 512)")
    try:
        config = config_from_dict(data)
    except ConfigError as e:
        raise ConversionError(f"the Emu3 config is not a valid imagetok Emu3 config: {e}") from None
    return m._replace(config=config)

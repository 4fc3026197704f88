"""DeepSeek's Janus / Janus-Pro checkpoints: the generation tokenizer (LlamaGen's VQ-16) inside the LLM.

``deepseek-ai/Janus-Pro-7B`` keeps it under ``gen_vision_model.*`` in sharded ``pytorch_model-*.bin``
(bfloat16) or ``model-*.safetensors`` files with an index; only the shards holding those keys are read
(about 300 MB of a 15 GB checkpoint). Below the prefix the names are LlamaGen's
(``janus/models/vq_model.py`` copies LlamaGen's ``VQModel`` and ``VQ_16``), mapped as in
:mod:`imagetok.convert._llamagen`. Weights are upcast to float32 (exact). The folder's ``config.json``
(``gen_vision_config.params``: ``image_token_size`` codes of ``n_embed`` dims) is checked against the
tensors. Codes are searched and decoded l2-normalised (``codebook_l2_norm=True``, LlamaGen's rule).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import ConversionError
from . import _llamagen
from ._common import (
    Mapped,
    apply_map,
    merge_ignored,
    not_this_format,
    vqgan_arch,
    vqgan_config,
)
from ._io import read_config_file
from ._shards import read_prefixed, upcast_note

PREFIX = "gen_vision_model."
RESOLUTION = 384  # Janus generates 384 x 384 images: 24 x 24 tokens (generation_inference.py)


def given_fields(cfg: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """A Janus ``config.json`` (``gen_vision_config``), LlamaGen ``ModelArgs`` fields, or an imagetok config."""
    gen = cfg.get("gen_vision_config")
    if not isinstance(gen, dict):
        return _llamagen.given_fields(cfg, notes)
    params = gen.get("params") or {}
    if gen.get("cls", "VQ-16") != "VQ-16":
        notes.append(f"gen_vision_config.cls is {gen.get('cls')!r} (Janus ships VQ-16); the architecture is read from the tensors")
    given: dict[str, Any] = {}
    if params.get("image_token_size") is not None:
        given["n_embed"] = params["image_token_size"]
    if params.get("n_embed") is not None:
        given["embed_dim"] = params["n_embed"]
    for k in ("resolution", "input_range"):
        if k in cfg:
            given[k] = cfg[k]
    return given


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    sd, prefix, ignored = read_prefixed(path, (PREFIX, ""), trust_pickle=trust_pickle, notes=notes)
    notes.append(f"took the {prefix}* weights" if prefix else "no gen_vision_model. prefix: read as a bare VQ-16 state dict")
    upcast_note(sd, notes)
    ups = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.conv_blocks\.(\d+)\.", k))]
    if not ups or not any(k.startswith("encoder.conv_blocks.") for k in sd):
        raise not_this_format("janus", sd.keys(), "it has no gen_vision_model.encoder.conv_blocks.* keys (LlamaGen's VQ-16 layout)")
    m = apply_map(sd, _llamagen.key_map(1 + max(ups)))
    if m.unmapped:
        return m
    folder = path if path.is_dir() else path.parent
    given: dict[str, Any] = {}
    if cfg is None and (folder / "config.json").is_file():
        cfg = read_config_file(folder / "config.json")
        notes.append("read config.json beside the weights")
    if cfg is not None:
        given = given_fields(cfg, notes)
    arch, ev = vqgan_arch(m.state, "janus")
    if not arch["decoder"]:
        raise ConversionError("the Janus checkpoint has no gen_vision_model.decoder.* tensors")
    defaults = {
        "resolution": (RESOLUTION, "Janus generates 384x384 images (24x24 tokens)"),
        "dropout": (0.0, None),
        "codebook_norm": ("l2", "Janus' VQ-16 uses codebook_l2_norm=True (LlamaGen's rule)"),
    }
    config = vqgan_config(arch, ev, given, "Janus config", defaults, notes)
    return m._replace(config=config, ignored=merge_ignored(ignored, m.ignored))

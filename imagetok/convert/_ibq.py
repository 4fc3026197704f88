"""SEED-Voken IBQ tokenizer checkpoints (``src/IBQ/models/ibqgan.py``).

IBQ's network is taming's VQGAN (same module names: ``encoder.down.{i}.block.{j}``, ``quant_conv``,
``quantize.embedding.weight``, ``post_quant_conv``, ``decoder.up.{i}``...), so the tensors are read
by the taming reader (strict accounting, ``loss.*`` and ``model_ema.*`` handling) and the model is a
``vqgan`` with ``quantizer="ibq"``: tokens are the argmax of ``z . E``, not the nearest code.

The config is SEED-Voken's Lightning-CLI YAML (``model: {class_path, init_args: {ddconfig, n_embed,
embed_dim, use_ema, ...}}``) or an imagetok ``vqgan`` config. As in the original's
``reconstruct_image.py``, a config with ``use_ema: true`` selects the EMA weights when present.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ConversionError
from . import _taming
from ._common import Mapped, extras
from ._io import read_checkpoint
from ._open_magvit2 import lightning_init_args


def _taming_cfg(cfg: dict[str, Any] | None, notes: list[str]) -> tuple[dict[str, Any] | None, bool | None]:
    """The config in taming's layout (for the taming reader) and its ``use_ema`` flag."""
    if cfg is None:
        return None, None
    if cfg.get("family") is not None:
        if cfg.get("quantizer", "ibq") != "ibq":
            raise ConversionError(f"an IBQ checkpoint converts to quantizer='ibq', but the config says {cfg['quantizer']!r}")
        return {k: v for k, v in cfg.items() if k != "quantizer"}, None
    if set(cfg) <= set(extras(cfg)):
        return cfg, None
    args, class_path = lightning_init_args(cfg)
    if class_path and "IBQ" not in str(class_path):
        notes.append(f"config class_path {class_path!r} is not SEED-Voken's IBQ; read its fields anyway")
    if args.get("l2_normalize") or args.get("cosine_similarity"):
        notes.append("the config's l2_normalize/cosine_similarity are accepted but unused by IndexPropagationQuantize (ignored)")
    params = {k: args[k] for k in ("ddconfig", "n_embed", "embed_dim") if k in args}
    if "ddconfig" not in params and "ch_mult" in args:
        params["ddconfig"] = args
    use_ema = args.get("use_ema") if isinstance(args.get("use_ema"), bool) else None
    return {"model": {"params": params}, **extras(cfg)}, use_ema


def read(path: Path, cfg: dict[str, Any] | None, *, use_ema: bool, trust_pickle: bool, notes: list[str]) -> Mapped:
    tcfg, cfg_ema = _taming_cfg(cfg, notes)
    if not use_ema and cfg_ema:
        obj = read_checkpoint(path, trust_pickle=trust_pickle)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
        if any(isinstance(k, str) and k.startswith("model_ema.") for k in sd):
            use_ema = True
            notes.append("the config sets use_ema: true (as the original's reconstruct_image.py does): EMA weights selected")
    m = _taming.read(path, tcfg, use_ema=use_ema, trust_pickle=trust_pickle, notes=notes)
    if m.config is None:
        return m
    if m.config.quantizer != "vq":
        raise ConversionError(f"this checkpoint has a {m.config.quantizer} quantizer, not IBQ's quantize.embedding.weight codebook")
    notes.append("IBQ: tokens are the argmax of z . E (IndexPropagationQuantize), not the nearest code")
    return m._replace(config=dataclasses.replace(m.config, quantizer="ibq"))

"""Convert original checkpoints (taming, diffusers, LlamaGen, rosinality) into imagetok models.

>>> from imagetok.convert import convert
>>> conv = convert("last.ckpt", from_format="taming", config="model.yaml", out="vqgan-f16")
>>> tok = Tokenizer.from_pretrained("vqgan-f16")      # or Tokenizer.from_conversion(conv)

Sources (``from_format``):

- ``"taming"``: taming-transformers / latent-diffusion ``VQModel`` (VectorQuantizer2), ``GumbelVQ``
  and ``EMAVQ`` Lightning checkpoints, also inside an LDM pipeline checkpoint (``first_stage_model.``).
- ``"diffusers"``: a ``VQModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``,
  or a pipeline folder with ``vqvae/``), or the weights file with ``config.json`` beside it.
- ``"llamagen"``: FoundationVision/LlamaGen VQ tokenizer checkpoints (l2-normalised codebook).
- ``"rosinality"``: rosinality/vq-vae-2-pytorch ``VQVAE`` state dicts.
- ``"open-magvit2"``: SEED-Voken Open-MAGVIT2 LFQ checkpoints (``magvit2`` family).
- ``"ibq"``: SEED-Voken IBQ checkpoints (``vqgan`` family, ``quantizer="ibq"``).
- ``"cosmos"``: Cosmos-Tokenizer discrete image models: state dicts or the ``.jit`` files, read
  without running TorchScript (``cosmos`` family).
- ``"showo"``: Show-o's MAGVIT-v2 (``showlab/magvitv2``) state dicts (``showo`` family).
- ``"transformers"``: a transformers ``Emu3VQVAE`` / ``JanusVQVAE`` / ``ChameleonVQVAE`` folder (or a whole
  Emu3 / Janus / Chameleon model folder); ``config.json``'s ``model_type`` decides.
- ``"janus"``: DeepSeek's Janus / Janus-Pro folder or shard (``gen_vision_model.*``, bf16 upcast).
- ``"chameleon"``: Chameleon's ``tokenizer/vqgan.ckpt`` + ``vqgan.yaml`` (Anole, Lumina-mGPT, Liquid).

Guarantees: every source tensor is either mapped to an imagetok parameter or dropped under a named
reason (:attr:`Conversion.ignored`), otherwise :class:`~imagetok.errors.ConversionError` lists the
unmapped keys. The architecture is read from tensor shapes; a config (the user's or the checkpoint's)
must agree with them field by field and supplies what tensors cannot show (default image size,
input range, LlamaGen's codebook normalisation); what had to be assumed is logged and written to
the model card. Files are read with ``torch.load(weights_only=True)`` and a small allow-list
(:data:`SAFE_GLOBALS`). The converted weights load with strict key and shape checks, and nothing
is written unless the whole conversion succeeded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..card import model_card
from ..config import Config, config_to_dict
from ..errors import ConversionError, WeightsError
from ..models import build_model
from ..serialization import build_on_meta, check_shapes, save_folder
from . import _diffusers, _llamagen, _rosinality, _taming
from . import _chameleon, _cosmos, _ibq, _janus, _open_magvit2, _showo, _transformers
from ._common import param_names
from ._io import SAFE_GLOBALS, ConfigArg, config_dict, read_checkpoint, read_config_file

__all__ = ["FORMATS", "SAFE_GLOBALS", "Conversion", "convert", "load_original", "read_checkpoint", "read_config_file"]

logger = logging.getLogger("imagetok.convert")

_READERS = {"taming": _taming.read, "diffusers": _diffusers.read, "llamagen": _llamagen.read, "rosinality": _rosinality.read}
_READERS.update({"open-magvit2": _open_magvit2.read, "ibq": _ibq.read, "cosmos": _cosmos.read, "showo": _showo.read})
_READERS.update({"transformers": _transformers.read, "janus": _janus.read, "chameleon": _chameleon.read})
_FOLDERS = ("diffusers", "transformers", "janus", "chameleon")  # formats that accept a folder
FORMATS = tuple(_READERS)


@dataclass
class Conversion:
    """A checkpoint read into imagetok's layout (before the model is built).

    Attributes:
        config: the imagetok config (VQGANConfig for taming/diffusers/llamagen, VQVAE2Config for rosinality).
        state_dict: tensors under imagetok parameter names, dtype as stored in the file.
        source: the checkpoint path as given; format: its ``from_format``.
        ignored: reason -> source keys dropped for that reason.
        notes: what was read from where and what was assumed (entries starting "assumed").
        out: the imagetok model folder :func:`convert` wrote, if any.
    """

    config: Config
    state_dict: dict[str, torch.Tensor]
    source: str
    format: str
    ignored: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    out: Path | None = None

    @property
    def assumed(self) -> list[str]:
        """The notes that record an assumption (something neither the file nor the config said)."""
        return [n for n in self.notes if n.startswith("assumed")]


def load_original(
    src: str | os.PathLike,
    *,
    from_format: str,
    config: ConfigArg = None,
    use_ema: bool = False,
    trust_pickle: bool = False,
) -> Conversion:
    """Read an original checkpoint into imagetok's names and config, with strict accounting.

    Arguments are those of :func:`convert`.

    Returns:
        A :class:`Conversion` whose ``state_dict`` has exactly the keys of ``build_model(config)``.

    Raises:
        ConversionError: unknown format, missing/unreadable/truncated file, refused pickle global,
            a file of another format (with a suggestion), tensors that map to nothing, or a config
            that disagrees with the tensors (naming the field, both values and the tensor).
    """
    if from_format not in _READERS:
        raise ConversionError(f"from_format must be one of {list(FORMATS)}, got {from_format!r}")
    path = Path(src)
    if not path.exists():
        raise ConversionError(f"{path}: not found")
    if path.is_dir() and from_format not in _FOLDERS:
        hint = " (it has a config.json: a diffusers folder? try from_format='diffusers')" if (path / "config.json").is_file() else ""
        raise ConversionError(f"{path} is a folder, but {from_format} checkpoints are single files{hint}")
    if use_ema and from_format in ("diffusers", "rosinality", "transformers", "janus"):
        raise ConversionError(f"use_ema: {from_format} checkpoints hold one set of weights (no EMA copy to choose)")
    notes: list[str] = []
    cfg = config_dict(config)
    m = _READERS[from_format](path, cfg, use_ema=use_ema, trust_pickle=trust_pickle, notes=notes)
    unmapped = list(m.unmapped)
    state = m.state
    if m.config is not None:
        names = set(param_names(m.config))
        unmapped += [m.origin[t] for t in state if t not in names]
        state = {t: v for t, v in state.items() if t in names}
    if unmapped:
        raise ConversionError(
            f"{len(unmapped)} tensor(s) of this {from_format} checkpoint map to nothing in imagetok's model and are in "
            f"no ignore list: {sorted(unmapped)[:20]}{' ...' if len(unmapped) > 20 else ''}"
        )
    return Conversion(m.config, state, str(src), from_format, m.ignored, notes)


def convert(
    src: str | os.PathLike,
    *,
    from_format: str,
    config: ConfigArg = None,
    out: str | os.PathLike | None = None,
    use_ema: bool = False,
    trust_pickle: bool = False,
) -> Conversion:
    """Convert an original checkpoint into imagetok's layout, checked strictly, and optionally save it.

    Args:
        src: a taming/LDM ``.ckpt``, a LlamaGen or rosinality ``.pt``, a diffusers ``VQModel`` folder
            or its ``diffusion_pytorch_model.safetensors`` (``config.json`` beside it). A
            ``.safetensors`` file with a format's keys works for every format.
        from_format: ``"taming"``, ``"diffusers"``, ``"llamagen"`` or ``"rosinality"``.
        config: the original's own config, as a dict or a ``.json``/``.yaml`` path: taming's
            ``model.yaml`` (or its ``model.params`` / ``ddconfig`` block), diffusers' ``config.json``,
            LlamaGen ``ModelArgs`` fields plus ``encoder_decoder_ch``, rosinality constructor kwargs;
            or an imagetok config. Optional (needed only for a diffusers weights file without
            ``config.json``): the architecture is read from tensor shapes and must match it. Any of
            them may add imagetok's ``resolution`` (default image size) and ``input_range``.
        out: if given, also write an imagetok model folder there (``config.json``,
            ``model.safetensors``, ``README.md`` naming the source file and format).
        use_ema: take the EMA weights (taming/LDM ``model_ema.*``, LlamaGen ``"ema"``).
        trust_pickle: load files that need pickle globals outside :data:`SAFE_GLOBALS` anyway
            (runs code from the file; only for files you trust). Logged as a warning.

    Returns:
        The :class:`Conversion` (config + state dict, checked key by key and shape by shape against
        the model the config builds); ``conv.out`` is the written folder when ``out`` is given.
        Build a tokenizer with :meth:`imagetok.Tokenizer.from_conversion`, or load ``out``.

    Raises:
        ConversionError: see :func:`load_original`; also if the tensors do not load strictly into
            the model (listing missing, unexpected and misshapen keys). Nothing is written then.
    """
    conv = load_original(src, from_format=from_format, config=config, use_ema=use_ema, trust_pickle=trust_pickle)
    expected = build_on_meta(build_model, conv.config).state_dict()  # shapes only, nothing allocated
    try:
        check_shapes(
            {k: tuple(v.shape) for k, v in expected.items()},
            {k: tuple(v.shape) for k, v in conv.state_dict.items()},
            f"{conv.source} ({from_format})",
        )
    except WeightsError as e:
        raise ConversionError(str(e)) from None
    dropped = "; ".join(f"{len(v)} x {k}" for k, v in conv.ignored.items()) or "nothing"
    logger.info("converted %s (%s): %d tensors mapped; dropped %s", conv.source, from_format, len(conv.state_dict), dropped)
    for note in conv.notes:
        (logger.warning if note.startswith("assumed") else logger.info)("%s: %s", conv.source, note)
    if out is not None:
        out_dir = Path(out)
        state = {k: v.to(expected[k].dtype) for k, v in conv.state_dict.items()}  # float32, as the model
        card = model_card(out_dir.name, conv.config, **model_card_fields(conv))
        conv.out = save_folder(out_dir, config_to_dict(conv.config), state, card=card)
    return conv


def model_card_fields(conv: Conversion) -> dict[str, Any]:
    """Keyword arguments for :func:`imagetok.card.model_card` describing a conversion."""
    name = Path(conv.source).name
    text = f"Converted with `imagetok.convert` from `{name}` ({conv.format} format)."
    if conv.notes:
        text += " Notes: " + "; ".join(conv.notes) + "."
    if conv.ignored:
        text += " Source tensors not used: " + "; ".join(f"{len(v)} x {k}" for k, v in conv.ignored.items()) + "."
    return {
        "description": text,
        "source": f"`{name}` ({conv.format} checkpoint), converted with imagetok.convert",
        "tags": ["converted", conv.format],
    }

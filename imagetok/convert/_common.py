"""Shared machinery: key mapping with strict accounting, and reading a VQGAN's architecture from
its tensors (taming/imagetok names) to check or complete a config."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from ..config import Config, VQGANConfig, config_from_dict, config_to_dict
from ..errors import ConfigError, ConversionError
from ..models import build_model

DEFAULT_RESOLUTION = 256  # image size assumed when neither the config nor the checkpoint says


class Ignore(str):
    """A mapping result meaning: drop this source tensor, for the reason given."""


MapFn = Callable[[str, torch.Tensor], tuple[str, torch.Tensor] | Ignore | None]


class Mapped(NamedTuple):
    """One format's result: config (None if unmapped keys stopped it), imagetok-named tensors,
    target -> source key, reason -> ignored source keys, unmapped source keys."""

    config: Config | None
    state: dict[str, torch.Tensor]
    origin: dict[str, str]
    ignored: dict[str, list[str]]
    unmapped: list[str]


def apply_map(sd: Mapping[str, torch.Tensor], fn: MapFn) -> Mapped:
    """Map every source tensor with ``fn``: to ``(target, tensor)``, an :class:`Ignore`, or None (unmapped)."""
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    ignored: dict[str, list[str]] = {}
    unmapped: list[str] = []
    for k, v in sd.items():
        r = fn(k, v)
        if r is None:
            unmapped.append(k)
        elif isinstance(r, Ignore):
            ignored.setdefault(str(r), []).append(k)
        else:
            target, tensor = r
            if target in state:
                raise ConversionError(f"source keys {origin[target]!r} and {k!r} both map to {target!r}")
            state[target], origin[target] = tensor, k
    return Mapped(None, state, origin, ignored, unmapped)


def merge_ignored(*parts: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def param_names(config: Config) -> list[str]:
    """The state-dict keys of ``build_model(config)`` (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return list(build_model(config).state_dict())


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def strip_wrappers(sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (torch.compile) key prefixes."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            notes.append(f"stripped the {prefix!r} prefix from every key")
    return sd


def guess_format(keys: Any) -> str | None:
    keys = list(keys)
    if any(".conv_blocks." in k for k in keys):
        return "llamagen"
    if any(".down_blocks." in k or ".up_blocks." in k for k in keys):
        return "diffusers"
    if any(k.startswith(("enc_b.", "module.enc_b.")) for k in keys):
        return "rosinality"
    if any(".down." in k and ".block." in k for k in keys):
        return "taming"
    return None


def not_this_format(fmt: str, keys: Any, what: str) -> ConversionError:
    """An error for a file that is not a ``fmt`` checkpoint, suggesting the format its keys look like."""
    keys = list(keys)
    guess = guess_format(keys)
    hint = f"; its keys look like a {guess} checkpoint: try from_format={guess!r} (CLI: --from {guess})" if guess and guess != fmt else ""
    return ConversionError(f"this is not a {fmt} checkpoint: {what} (first keys: {keys[:6]}){hint}")


def need(sd: Mapping[str, torch.Tensor], key: str, fmt: str) -> torch.Tensor:
    if key not in sd:
        raise not_this_format(fmt, sd.keys(), f"it has no {key!r}")
    return sd[key]


def shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def extras(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """imagetok fields a user may add to any source config: ``resolution``, ``input_range``."""
    return {k: cfg[k] for k in ("resolution", "input_range") if k in cfg}


def imagetok_fields(cfg: dict[str, Any], family: str) -> dict[str, Any]:
    """An imagetok config dict (``{"family": ..., ...}``) as plain fields, checked to be ``family``."""
    try:
        c = config_from_dict(cfg)
    except ConfigError as e:
        raise ConversionError(f"invalid imagetok config: {e}") from None
    if c.family != family:
        raise ConversionError(f"this format converts to a {family} model, but the config is a {c.family} config")
    d = config_to_dict(c)
    d.pop("family"), d.pop("format_version")
    return d


# --------------------------------------------------------------------------- VQGAN architecture
ARCH_FIELDS = ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "mid_attn", "quantizer",
               "norm_type", "decoder")  # fmt: skip


def indices(sd: Mapping[str, Any], pattern: str) -> list[int]:
    """Sorted distinct ints captured by ``pattern``'s first group over the keys of ``sd``."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def vqgan_arch(sd: Mapping[str, torch.Tensor], fmt: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a VQGAN's architecture from its tensors (imagetok/taming names).

    Returns:
        (fields, evidence): ``fields`` has :data:`ARCH_FIELDS` plus ``attn_levels`` (indices of the
        resolution levels with attention); ``evidence`` says which tensor showed each field.

    Raises:
        ConversionError: a tensor the layout needs is missing, or the encoder and decoder disagree in
            a way imagetok's VQGAN cannot express.
    """
    ev: dict[str, str] = {}
    w = need(sd, "encoder.conv_in.weight", fmt)
    ch = w.shape[0]
    ev["ch"] = f"encoder.conv_in.weight is {shape(w)}"
    levels = indices(sd, r"encoder\.down\.(\d+)\.block\.")
    if not levels or levels != list(range(len(levels))):
        raise not_this_format(fmt, sd.keys(), f"encoder levels {levels} are not 0..L-1")
    n = len(levels)
    ch_mult, shown = [], []
    for i in range(n):
        key = f"encoder.down.{i}.block.0.conv1.weight"
        t = need(sd, key, fmt)
        if t.shape[0] % ch:
            raise ConversionError(f"{key} has {t.shape[0]} channels, not a multiple of ch={ch}")
        ch_mult.append(t.shape[0] // ch)
        shown.append(f"{key} is {shape(t)}")
    ev["ch_mult"] = ", ".join(shown)
    blocks = indices(sd, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight$")
    ev["num_res_blocks"] = f"encoder.down.0 has {len(blocks)} res block(s)"
    dec_levels = indices(sd, r"decoder\.up\.(\d+)\.block\.")
    has_decoder = any(k.startswith("decoder.") for k in sd)
    ev["decoder"] = f"decoder.* is {'present' if has_decoder else 'absent (an encoder-only checkpoint)'}"
    if not has_decoder:
        dec_levels = levels  # encoder-only: nothing to compare
    if dec_levels != levels:
        raise ConversionError(f"the encoder has levels {levels} but the decoder has levels {dec_levels}")
    for i in range(n if has_decoder else 0):
        dec_blocks = indices(sd, rf"decoder\.up\.{i}\.block\.(\d+)\.conv1\.weight$")
        if len(dec_blocks) != len(blocks) + 1:
            raise ConversionError(
                f"decoder.up.{i} has {len(dec_blocks)} res blocks and encoder.down.0 has {len(blocks)}: imagetok's "
                "VQGAN (like taming) has num_res_blocks + 1 in each decoder level"
            )
        key = f"decoder.up.{i}.block.0.conv1.weight"
        if sd[key].shape[0] != ch * ch_mult[i]:
            raise ConversionError(
                f"{key} is {shape(sd[key])}: the decoder's channel multipliers differ from the encoder's "
                f"{ch_mult}, which imagetok's VQGAN does not support"
            )
    enc_attn = indices(sd, r"encoder\.down\.(\d+)\.attn\.")
    dec_attn = indices(sd, r"decoder\.up\.(\d+)\.attn\.") if has_decoder else enc_attn
    if enc_attn != dec_attn:
        raise ConversionError(
            f"attention at encoder levels {enc_attn} but decoder levels {dec_attn}: imagetok's VQGAN puts attention "
            "at the same resolutions in both"
        )
    ev["attn_levels"] = f"the checkpoint has attention blocks at levels {enc_attn}"
    mid_attn = "encoder.mid.attn_1.q.weight" in sd
    if has_decoder and mid_attn != ("decoder.mid.attn_1.q.weight" in sd):
        raise ConversionError("mid-block attention is in only one of encoder and decoder; imagetok's VQGAN needs both or neither")
    ev["mid_attn"] = f"encoder.mid.attn_1.* is {'present' if mid_attn else 'absent'}"
    zout = need(sd, "encoder.conv_out.weight", fmt)
    if has_decoder:
        zin = need(sd, "decoder.conv_in.weight", fmt)
        z = zin.shape[1]
        if zout.shape[0] == 2 * z:
            raise ConversionError("encoder.conv_out has 2 x z_channels outputs (double_z=True): a KL autoencoder, not a VQ model")
        ev["z_channels"] = f"decoder.conv_in.weight is {shape(zin)}"
    else:
        z = zout.shape[0]
        ev["z_channels"] = f"encoder.conv_out.weight is {shape(zout)}"
    # MoVQ: the decoder's norms are spatial norms conditioned on the codes (norm_layer / conv_y / conv_b)
    norm_type = "spatial" if "decoder.norm_out.conv_y.weight" in sd else "group"
    ev["norm_type"] = f"decoder.norm_out.conv_y.weight is {'present (MoVQ spatial norm)' if norm_type == 'spatial' else 'absent'}"
    if "quantize.proj.weight" in sd or "quantize.embed.weight" in sd:
        quantizer, cb_key = "gumbel", "quantize.embed.weight"
        ev["quantizer"] = "quantize.proj / quantize.embed (taming GumbelQuantize) are present"
    else:
        quantizer, cb_key = "vq", "quantize.embedding.weight"
        ev["quantizer"] = "quantize.embedding.weight (nearest-code quantizer) is present"
    cb = need(sd, cb_key, fmt)
    ev["n_embed"] = ev["embed_dim"] = f"{cb_key} is {shape(cb)}"
    fields = dict(
        ch=ch, ch_mult=ch_mult, num_res_blocks=len(blocks), z_channels=z, n_embed=cb.shape[0],
        embed_dim=cb.shape[1], mid_attn=mid_attn, quantizer=quantizer, attn_levels=enc_attn,
        norm_type=norm_type, decoder=has_decoder,
    )  # fmt: skip
    return fields, ev


def disagreements(given: Mapping[str, Any], arch: Mapping[str, Any], ev: Mapping[str, str], names: Any) -> list[str]:
    """One line per field in ``names`` that ``given`` sets to a value other than the tensors' (``arch``),
    naming both values and the tensor that showed it (``ev``); lists compare equal to tuples."""
    out = []
    for name in names:
        if given.get(name) is not None:
            value = list(given[name]) if isinstance(given[name], (list, tuple)) else given[name]
            if value != arch[name]:
                out.append(f"{name}={value!r} but the checkpoint has {name}={arch[name]!r} ({ev[name]})")
    return out


def attn_levels(attn_resolutions: Any, resolution: int, n: int) -> list[int]:
    """Levels where taming's encoder puts attention: level i has size ``resolution // 2**i``."""
    res, out = resolution, []
    for i in range(n):
        if res in attn_resolutions:
            out.append(i)
        res //= 2
    return out


def vqgan_config(
    arch: dict[str, Any],
    ev: dict[str, str],
    given: dict[str, Any],
    given_from: str,
    defaults: dict[str, tuple[Any, str | None]],
    notes: list[str],
) -> VQGANConfig:
    """Combine the tensor-derived ``arch`` with ``given`` (fields from the user's or checkpoint's config).

    Every architecture field in ``given`` must agree with the tensors; ``attn_resolutions`` is
    compared as attention levels (taming semantics, relative to ``resolution``). Fields tensors
    cannot show (``resolution``, ``dropout``, ``codebook_norm``, ``input_range``) come from
    ``given`` or else ``defaults`` (name -> (value, why)); a default with a reason is noted as assumed.

    Raises:
        ConversionError: naming each field that disagrees, with both values and the tensor shown.
    """
    n = len(arch["ch_mult"])
    disagree = disagreements(given, arch, ev, ARCH_FIELDS)
    resolution = given.get("resolution")
    if resolution is None:
        resolution, why = defaults["resolution"]
        notes.append(f"assumed resolution={resolution} ({why})")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ConversionError(f"resolution must be a positive integer, got {resolution!r}")
    if given.get("attn_levels") is not None and list(given["attn_levels"]) != arch["attn_levels"]:
        disagree.append(f"attention at levels {list(given['attn_levels'])}, but {ev['attn_levels']}")
    if given.get("attn_resolutions") is not None:
        levels = attn_levels(list(given["attn_resolutions"]), resolution, n)
        if levels != arch["attn_levels"]:
            disagree.append(
                f"attn_resolutions={list(given['attn_resolutions'])} at resolution {resolution} means attention at "
                f"levels {levels}, but {ev['attn_levels']}"
            )
    if disagree:
        raise ConversionError(f"the config ({given_from}) does not match the checkpoint's tensors: " + "; ".join(disagree))
    if arch["attn_levels"] and resolution % 2 ** (n - 1):
        raise ConversionError(
            f"resolution {resolution} is not a multiple of 2**{n - 1}, so attention at levels {arch['attn_levels']} "
            "cannot be expressed as attn_resolutions"
        )
    data: dict[str, Any] = {"family": "vqgan", **{k: arch[k] for k in ARCH_FIELDS}}
    data["attn_resolutions"] = [resolution >> i for i in arch["attn_levels"]]
    data["resolution"] = resolution
    for name in ("dropout", "codebook_norm", "input_range"):
        if given.get(name) is not None:
            data[name] = list(given[name]) if name == "input_range" else given[name]
        elif name in defaults:
            data[name], why = defaults[name]
            if why:
                notes.append(f"assumed {name}={data[name]!r} ({why})")
    if data["quantizer"] == "gumbel":
        data.pop("codebook_norm", None)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConversionError(f"the converted architecture is not a valid imagetok VQGAN: {e}") from None


def ema_key(flat: Mapping[str, str]) -> MapFn:
    """The map of a Lightning ``model_ema.*`` copy: ``flat`` (EMA name -> imagetok name) maps the
    weights; the EMA bookkeeping and the EMA copies of loss parameters are dropped by name."""

    def fn(k: str, v: torch.Tensor):
        if k in flat:
            return flat[k], v
        if k in ("model_ema.decay", "model_ema.num_updates"):
            return Ignore("EMA bookkeeping (model_ema.decay, model_ema.num_updates)")
        if k.startswith("model_ema.loss"):
            return Ignore("EMA copies of training-loss parameters")
        return None

    return fn

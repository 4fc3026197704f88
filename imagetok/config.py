"""Model configurations: one small frozen dataclass per family, stored as ``config.json``.

A config names the architecture (``family``) and every hyper-parameter needed to build it, plus
the preprocessing the model expects (``resolution``, ``input_range``). VQGAN keys keep
taming-transformers' names so a taming ``model.yaml`` maps over one to one.

``config_from_dict`` is strict: unknown keys, wrong types, impossible values and sizes above the
``MAX_*`` bounds below raise :class:`~imagetok.errors.ConfigError` naming the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Union, get_type_hints

from .errors import ConfigError

FORMAT_VERSION = 1

# Upper bounds on sizes: a config.json comes from the Hub or a user folder, and must not be able to
# ask for more memory than any real tokenizer needs. Published models use ch <= 256, codebooks up
# to 262144 (2**18) entries of up to 256 dimensions, f <= 32 and resolution <= 1024.
MAX_CHANNELS = 4096  # any layer's channel count (VQGAN ch * ch_mult, z_channels; VQ-VAE channel)
MAX_CODEBOOK = 2**20  # codes per codebook (n_embed)
MAX_EMBED_DIM = 4096  # code dimension (embed_dim)
MAX_CODEBOOK_ELEMENTS = 2**28  # n_embed * embed_dim: a 1 GiB float32 codebook
MAX_LEVELS = 8  # VQGAN resolution levels (len(ch_mult)): f <= 128
MAX_BLOCKS = 32  # residual blocks per level (num_res_blocks, n_res_block)
MAX_RESOLUTION = 8192  # the default image side (resolution)
# Tighter bounds of the LFQ/FSQ families (Magvit2Config, CosmosConfig, ShowoConfig):
MAX_BASE_CHANNELS = 1024  # their base width (ch, channels); the widest layer is still <= MAX_CHANNELS
MAX_LEVEL_BLOCKS = 16  # their residual blocks per level (num_res_blocks, *_num_res_blocks)
MAX_LFQ_BITS = 30  # LFQ bits per token (embed_dim, z_channels), checked before 2 ** bits is computed


@dataclass(frozen=True)
class VQGANConfig:
    """taming-transformers VQGAN (also LDM VQ first stages, LlamaGen VQ, MaskGIT/amused layouts)."""

    family: ClassVar[str] = "vqgan"
    ch: int = 128  # base channel count; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one entry per resolution level; f = 2 ** (len - 1)
    num_res_blocks: int = 2  # ResnetBlocks per level in the encoder (decoder has one more)
    attn_resolutions: tuple[int, ...] = (16,)  # feature-map sizes (relative to `resolution`) with attention
    mid_attn: bool = True  # attention in the middle block (False for MaskGIT/amused)
    z_channels: int = 256  # encoder output channels
    embed_dim: int = 256  # code dimension
    n_embed: int = 1024  # codebook size
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256  # training/default image size; also fixes which levels get attention
    dropout: float = 0.0
    quantizer: str = "vq"  # "vq": nearest code; "gumbel": argmax of quantize.proj (taming GumbelVQ); "ibq": argmax of z.e (SEED-Voken IBQ)
    codebook_norm: str = "none"  # "none" or "l2" (LlamaGen: codes and latents l2-normalised)
    input_range: tuple[float, float] = (-1.0, 1.0)  # pixel range the network expects
    # "group": GroupNorm decoder (taming); "spatial": MoVQ decoder, every norm is a SpatialNorm
    # conditioned on the quantized codes (Kandinsky's MoVQ, diffusers' VQModel(norm_type="spatial")).
    norm_type: str = "group"
    decoder: bool = True  # False: encoder-only (Hugging Face's Chameleon conversion drops the decoder)
    # Fields left out of config.json (and config_hash) at their default, so existing configs keep their bytes.
    _omit_if_default: ClassVar[tuple[str, ...]] = ("norm_type", "decoder")

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        return (2 ** (len(self.ch_mult) - 1),)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.n_embed,)

    def _check(self) -> None:
        _positive(self, "ch", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "resolution")
        if self.norm_type not in ("group", "spatial"):
            raise ConfigError(f"norm_type must be 'group' or 'spatial' (MoVQ decoder), got {self.norm_type!r}")
        if self.norm_type == "spatial" and self.quantizer != "vq":
            raise ConfigError("norm_type='spatial' (MoVQ) is only defined for quantizer='vq'")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(f"ch_mult must be a non-empty list of positive ints, got {list(self.ch_mult)}")
        _at_most(self, ch=("MAX_CHANNELS", MAX_CHANNELS), z_channels=("MAX_CHANNELS", MAX_CHANNELS),
                 num_res_blocks=("MAX_BLOCKS", MAX_BLOCKS))  # fmt: skip
        if len(self.ch_mult) > MAX_LEVELS:
            raise ConfigError(f"ch_mult may have at most {MAX_LEVELS} levels (imagetok.config.MAX_LEVELS), got {len(self.ch_mult)}")
        if self.ch * max(self.ch_mult) > MAX_CHANNELS:
            raise ConfigError(
                f"ch * ch_mult must be at most {MAX_CHANNELS} (imagetok.config.MAX_CHANNELS), got {self.ch} * {max(self.ch_mult)}"
            )
        if len(self.attn_resolutions) > MAX_LEVELS:
            raise ConfigError(f"attn_resolutions may list at most {MAX_LEVELS} sizes, got {len(self.attn_resolutions)}")
        for m in (1, *self.ch_mult):
            if (self.ch * m) % 32:
                raise ConfigError(
                    f"ch * ch_mult must be divisible by 32 (GroupNorm uses 32 groups); "
                    f"ch={self.ch} with multiplier {m} gives {self.ch * m}"
                )
        if self.quantizer not in ("vq", "gumbel", "ibq"):
            raise ConfigError(f"quantizer must be 'vq', 'gumbel' or 'ibq', got {self.quantizer!r}")
        if self.codebook_norm not in ("none", "l2"):
            raise ConfigError(f"codebook_norm must be 'none' or 'l2', got {self.codebook_norm!r}")
        if self.quantizer in ("gumbel", "ibq") and self.codebook_norm != "none":
            raise ConfigError("codebook_norm='l2' is only defined for quantizer='vq'")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.in_channels != 3 or self.out_ch != 3:
            raise ConfigError(
                f"in_channels and out_ch must be 3 (RGB), got {self.in_channels} and {self.out_ch}"
            )


@dataclass(frozen=True)
class VQVAEConfig:
    """VQ-VAE (van den Oord et al. 2017): strided convs + residual stack, f4."""

    family: ClassVar[str] = "vqvae"
    channel: int = 128  # hidden channels
    n_res_block: int = 2  # residual blocks in encoder and decoder
    n_res_channel: int = 32  # hidden channels inside a residual block
    embed_dim: int = 64
    n_embed: int = 512
    in_channels: int = 3
    resolution: int = 128
    input_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        return (4,)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.n_embed,)

    def _check(self) -> None:
        _positive(self, "channel", "n_res_channel", "embed_dim", "n_embed", "resolution")
        _vqvae_common(self)


@dataclass(frozen=True)
class VQVAE2Config:
    """Two-level VQ-VAE-2 (Razavi et al. 2019) as in rosinality/vq-vae-2-pytorch: top f8, bottom f4."""

    family: ClassVar[str] = "vqvae2"
    channel: int = 128
    n_res_block: int = 2
    n_res_channel: int = 32
    embed_dim: int = 64
    n_embed: int = 512  # per level (top and bottom have codebooks of this size)
    in_channels: int = 3
    resolution: int = 256
    input_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        return (8, 4)  # (top, bottom)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.n_embed, self.n_embed)

    def _check(self) -> None:
        _positive(self, "channel", "n_res_channel", "embed_dim", "n_embed", "resolution")
        _vqvae_common(self)


@dataclass(frozen=True)
class Emu3Config:
    """Emu3's VisionTokenizer (BAAI ``Emu3VisionVQModel``, transformers ``Emu3VQVAE``): a MoVQ (spatial
    norm decoder) over a taming 2-D trunk, with causal Conv3d temporal layers. Field names are Emu3's.

    An image is repeated over ``temporal_downsample_factor`` frames (Emu3's ``encode``), which the
    temporal layers reduce to one token grid; decoding returns the first of the frames it makes.
    """

    family: ClassVar[str] = "emu3"
    ch: int = 256
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)  # f = 2 ** (len - 1)
    num_res_blocks: int = 2  # also the number of temporal res blocks in encoder and decoder
    attn_resolutions: tuple[int, ...] = (3,)  # Emu3's meaning: level *indices* with attention (not sizes)
    z_channels: int = 4
    embed_dim: int = 4  # code dimension; must equal z_channels (the decoder stacks codes and latents)
    codebook_size: int = 32768
    temporal_downsample_factor: int = 4  # frames per token grid (a power of 2)
    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 512  # default image size (Emu3's processor: min_pixels 512 * 512)
    dropout: float = 0.0
    input_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        return (2 ** (len(self.ch_mult) - 1),)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.codebook_size,)

    def _check(self) -> None:
        _positive(self, "ch", "num_res_blocks", "z_channels", "embed_dim", "codebook_size", "resolution",
                  "temporal_downsample_factor")  # fmt: skip
        if not self.ch_mult or any(m < 1 for m in self.ch_mult) or any((self.ch * m) % 32 for m in (1, *self.ch_mult)):
            raise ConfigError(f"ch * ch_mult must be positive multiples of 32 (GroupNorm), got ch={self.ch}, ch_mult={list(self.ch_mult)}")
        if any(not 0 <= i < len(self.ch_mult) for i in self.attn_resolutions):
            raise ConfigError(f"attn_resolutions are level indices in [0, {len(self.ch_mult)}), got {list(self.attn_resolutions)}")
        t = self.temporal_downsample_factor
        if t & (t - 1):
            raise ConfigError(f"temporal_downsample_factor must be a power of 2, got {t}")
        if self.embed_dim != self.z_channels:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must equal z_channels ({self.z_channels}) in Emu3's decoder")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.in_channels != 3 or self.out_channels != 3:
            raise ConfigError(f"in_channels and out_channels must be 3 (RGB), got {self.in_channels} and {self.out_channels}")


FAMILIES: dict[str, type] = {c.family: c for c in (VQGANConfig, VQVAEConfig, VQVAE2Config, Emu3Config)}


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def _at_most(cfg: Any, **limits: tuple[str, int]) -> None:
    """``name=(constant name, limit)``: raise ConfigError naming the limit when a field exceeds it."""
    for name, (const, limit) in limits.items():
        if getattr(cfg, name) > limit:
            raise ConfigError(f"{name} must be at most {limit} (imagetok.config.{const}), got {getattr(cfg, name)}")


def _check_sizes(cfg: Any) -> None:
    """Bounds every family shares (on the fields it has): codebook and default image size."""
    limits = {"n_embed": ("MAX_CODEBOOK", MAX_CODEBOOK), "embed_dim": ("MAX_EMBED_DIM", MAX_EMBED_DIM),
              "resolution": ("MAX_RESOLUTION", MAX_RESOLUTION)}  # fmt: skip
    _at_most(cfg, **{k: v for k, v in limits.items() if hasattr(cfg, k)})
    if any(k > MAX_CODEBOOK for k in cfg.codebook_sizes):
        raise ConfigError(f"codebooks may have at most {MAX_CODEBOOK} codes (imagetok.config.MAX_CODEBOOK), got {list(cfg.codebook_sizes)}")
    if hasattr(cfg, "n_embed") and hasattr(cfg, "embed_dim") and cfg.n_embed * cfg.embed_dim > MAX_CODEBOOK_ELEMENTS:
        raise ConfigError(
            f"n_embed * embed_dim must be at most {MAX_CODEBOOK_ELEMENTS} (imagetok.config.MAX_CODEBOOK_ELEMENTS), "
            f"got {cfg.n_embed} * {cfg.embed_dim}"
        )


def _vqvae_common(cfg: Any) -> None:
    if cfg.n_res_block < 0:
        raise ConfigError(f"n_res_block must be >= 0, got {cfg.n_res_block}")
    _at_most(cfg, channel=("MAX_CHANNELS", MAX_CHANNELS), n_res_channel=("MAX_CHANNELS", MAX_CHANNELS),
             n_res_block=("MAX_BLOCKS", MAX_BLOCKS))  # fmt: skip
    if cfg.channel % 2:
        raise ConfigError(f"channel must be even (the first conv has channel // 2), got {cfg.channel}")
    if cfg.in_channels != 3:
        raise ConfigError(f"in_channels must be 3 (RGB), got {cfg.in_channels}")


def _coerce(cls: type, name: str, hint: Any, value: Any) -> Any:
    """Check one JSON value against a field's annotation; lists become tuples."""
    where = f"{cls.family} config key {name!r}"
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    # tuple[int, ...] or tuple[float, float]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    item = hint.__args__[0]
    if hint.__args__[-1] is not Ellipsis and len(value) != len(hint.__args__):
        raise ConfigError(f"{where} must have {len(hint.__args__)} entries, got {list(value)}")
    return tuple(_coerce(cls, name, item, v) for v in value)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a config from a ``config.json`` dict.

    Args:
        data: must contain ``"family"`` (a key of :data:`FAMILIES`: ``"vqgan"``, ``"vqvae"``, ``"vqvae2"``,
            ``"emu3"``, ``"magvit2"``, ``"cosmos"`` or ``"showo"``); may contain
            ``"format_version"``; every other key must be a field of that family's config.
            Missing keys take the family's defaults.

    Raises:
        ConfigError: unknown family or key, wrong type, or an impossible value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    family = data.pop("family", None)
    if not isinstance(family, str) or family not in FAMILIES:
        raise ConfigError(f"config 'family' must be one of {sorted(FAMILIES)}, got {family!r}")
    version = data.pop("format_version", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        raise ConfigError(
            f"config format_version {version!r} is not supported (this imagetok reads {FORMAT_VERSION})"
        )
    cls = FAMILIES[family]
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"unknown {family} config key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    kwargs = {k: _coerce(cls, k, hints[k], v) for k, v in data.items()}
    cfg = cls(**kwargs)
    cfg._check()
    _check_sizes(cfg)
    _check_common(cfg)
    return cfg


def _check_common(cfg: Any) -> None:
    lo, hi = cfg.input_range
    if not lo < hi or not all(abs(v) < float("inf") for v in (lo, hi)):
        raise ConfigError(f"input_range must be [low, high] with low < high, got {list(cfg.input_range)}")
    factor = max(cfg.downsample_factors)
    if cfg.resolution % factor:
        raise ConfigError(
            f"resolution {cfg.resolution} must be a multiple of the downsampling factor {factor} "
            "(it is the default image size)"
        )


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The JSON form of a config: ``family``, ``format_version`` and every field (tuples as lists)."""
    out: dict[str, Any] = {"family": cfg.family, "format_version": FORMAT_VERSION}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in getattr(cfg, "_omit_if_default", ()) and v == f.default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_hash(cfg: Config) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a config: identifies a token vocabulary."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- modern quantizers
def _levels(name: str, mult: tuple[int, ...]) -> None:
    """A channel-multiplier tuple of the LFQ/FSQ families: 1-MAX_LEVELS ints in [1, 16]."""
    if not mult or len(mult) > MAX_LEVELS or any(not 1 <= m <= 16 for m in mult):
        raise ConfigError(f"{name} must be 1-{MAX_LEVELS} ints in [1, 16] (imagetok.config.MAX_LEVELS), got {list(mult)}")


def _widest(ch_name: str, ch: int, mult_name: str, mult: tuple[int, ...]) -> None:
    """The widest layer, ``ch * max(mult)``, is at most MAX_CHANNELS (as for VQGAN)."""
    if ch * max(mult) > MAX_CHANNELS:
        raise ConfigError(
            f"{ch_name} * {mult_name} must be at most {MAX_CHANNELS} (imagetok.config.MAX_CHANNELS), got {ch} * {max(mult)}"
        )


@dataclass(frozen=True)
class Magvit2Config:
    """Open-MAGVIT2 (SEED-Voken) / Show-o MAGVIT-v2 tokenizer: LFQ over ``embed_dim`` sign bits.

    Keys keep SEED-Voken's ``ddconfig`` names. ``z_channels == embed_dim`` and
    ``n_embed == 2 ** embed_dim`` (LFQ has no projections).
    """

    family: ClassVar[str] = "magvit2"
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # f = 2 ** (len - 1)
    num_res_blocks: int = 4  # ResBlocks per level (encoder and decoder) and in the middle
    z_channels: int = 18
    embed_dim: int = 18  # bits per token
    n_embed: int = 262144  # 2 ** embed_dim
    factorized_bits: tuple[int, ...] = ()  # () = one token per position; e.g. (9, 9) = two sub-tokens
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    input_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        f = 2 ** (len(self.ch_mult) - 1)
        return (f,) * max(1, len(self.factorized_bits))

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(2**b for b in self.factorized_bits) if self.factorized_bits else (self.n_embed,)

    def _check(self) -> None:
        _positive(self, "ch", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "resolution")
        _at_most(self, ch=("MAX_BASE_CHANNELS", MAX_BASE_CHANNELS), num_res_blocks=("MAX_LEVEL_BLOCKS", MAX_LEVEL_BLOCKS),
                 resolution=("MAX_RESOLUTION", MAX_RESOLUTION), embed_dim=("MAX_LFQ_BITS", MAX_LFQ_BITS))  # fmt: skip
        _levels("ch_mult", self.ch_mult)
        _widest("ch", self.ch, "ch_mult", self.ch_mult)
        for m in (1, *self.ch_mult):
            if (self.ch * m) % 32:
                raise ConfigError(f"ch * ch_mult must be divisible by 32 (GroupNorm uses 32 groups); got {self.ch * m}")
        if self.z_channels != self.embed_dim:
            raise ConfigError(f"z_channels ({self.z_channels}) must equal embed_dim ({self.embed_dim}): LFQ has no projection")
        if self.n_embed != 2**self.embed_dim:
            raise ConfigError(f"n_embed must be 2 ** embed_dim = {2 ** self.embed_dim} for LFQ, got {self.n_embed}")
        if self.factorized_bits and (sum(self.factorized_bits) != self.embed_dim or min(self.factorized_bits) < 1):
            raise ConfigError(
                f"factorized_bits {list(self.factorized_bits)} must be positive and sum to embed_dim={self.embed_dim}"
            )
        if self.in_channels != 3 or self.out_ch != 3:
            raise ConfigError(f"in_channels and out_ch must be 3 (RGB), got {self.in_channels} and {self.out_ch}")


@dataclass(frozen=True)
class CosmosConfig:
    """NVIDIA Cosmos-Tokenizer discrete image model (``DI``): Haar patching + FSQ.

    Keys keep Cosmos' names (``networks/configs.py``); ``embedding_dim == len(levels)``.
    """

    family: ClassVar[str] = "cosmos"
    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)  # compared with sizes derived from `resolution` (see models.cosmos)
    dropout: float = 0.0
    resolution: int = 1024
    patch_size: int = 4
    patch_method: str = "haar"  # "haar" | "rearrange"
    spatial_compression: int = 16
    z_channels: int = 256
    embedding_dim: int = 6
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    in_channels: int = 3
    out_channels: int = 3
    input_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def num_resampling(self) -> int:
        """Down-/upsampling stages after the patcher: ``log2(spatial_compression / patch_size)``."""
        return self.spatial_compression.bit_length() - self.patch_size.bit_length()

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        return (self.spatial_compression,)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        n = 1
        for v in self.levels:
            n *= v
        return (n,)

    def _check(self) -> None:
        _positive(self, "channels", "num_res_blocks", "z_channels", "embedding_dim", "resolution", "patch_size")
        _at_most(self, channels=("MAX_BASE_CHANNELS", MAX_BASE_CHANNELS), num_res_blocks=("MAX_LEVEL_BLOCKS", MAX_LEVEL_BLOCKS),
                 resolution=("MAX_RESOLUTION", MAX_RESOLUTION), z_channels=("MAX_CHANNELS", MAX_CHANNELS))  # fmt: skip
        _levels("channels_mult", self.channels_mult)
        _widest("channels", self.channels, "channels_mult", self.channels_mult)
        for m in (1, *self.channels_mult):
            if (self.channels * m) % 32:
                raise ConfigError(f"channels * channels_mult must be divisible by 32 (GroupNorm); got {self.channels * m}")
        for name in ("patch_size", "spatial_compression"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1) or v > 64:
                raise ConfigError(f"{name} must be a power of two in [1, 64], got {v}")
        if not 0 <= self.num_resampling <= len(self.channels_mult):
            raise ConfigError(
                f"spatial_compression / patch_size = {self.spatial_compression} / {self.patch_size} needs "
                f"{self.num_resampling} resampling stages; channels_mult has {len(self.channels_mult)} levels"
            )
        if self.patch_method not in ("haar", "rearrange"):
            raise ConfigError(f"patch_method must be 'haar' or 'rearrange', got {self.patch_method!r}")
        if not self.levels or len(self.levels) > 16 or any(not 2 <= v <= 256 for v in self.levels):
            raise ConfigError(f"levels must be 1-16 ints in [2, 256], got {list(self.levels)}")
        if self.codebook_sizes[0] > 2**30:
            raise ConfigError(f"prod(levels) must be <= 2**30, got {self.codebook_sizes[0]}")
        if self.embedding_dim != len(self.levels):
            raise ConfigError(f"embedding_dim ({self.embedding_dim}) must equal len(levels) ({len(self.levels)}): FSQ has no projection")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.in_channels != 3 or self.out_channels != 3:
            raise ConfigError(f"in_channels and out_channels must be 3 (RGB), got {self.in_channels} and {self.out_channels}")


@dataclass(frozen=True)
class ShowoConfig:
    """Show-o's MAGVIT-v2 (``showlab/magvitv2``): taming-style VQGAN trunk with per-level block counts,
    different encoder/decoder channel multipliers, and LFQ with ``z_channels`` bits, channel 0 the
    most significant. Defaults are the released model (``MAGVITv2()`` takes no arguments)."""

    family: ClassVar[str] = "showo"
    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)  # per level
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)  # per level (decoder.up.{i})
    attn_resolutions: tuple[int, ...] = (5,)  # sizes relative to `resolution`; (5,) = none at 256 px
    z_channels: int = 13  # bits per token: 8192 codes
    resolution: int = 256
    dropout: float = 0.0
    input_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        return (2 ** (len(self.encoder_ch_mult) - 1),)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (2**self.z_channels,)

    def _check(self) -> None:
        _positive(self, "ch", "z_channels", "resolution")
        _at_most(self, ch=("MAX_BASE_CHANNELS", MAX_BASE_CHANNELS), resolution=("MAX_RESOLUTION", MAX_RESOLUTION),
                 z_channels=("MAX_LFQ_BITS", MAX_LFQ_BITS))  # fmt: skip
        for side in ("encoder", "decoder"):
            mult, blocks = getattr(self, f"{side}_ch_mult"), getattr(self, f"{side}_num_res_blocks")
            _levels(f"{side}_ch_mult", mult)
            _widest("ch", self.ch, f"{side}_ch_mult", mult)
            if len(blocks) != len(mult) or any(not 1 <= b <= MAX_LEVEL_BLOCKS for b in blocks):
                raise ConfigError(
                    f"{side}_num_res_blocks must give 1-{MAX_LEVEL_BLOCKS} blocks for each of the {len(mult)} levels "
                    f"(imagetok.config.MAX_LEVEL_BLOCKS), got {list(blocks)}"
                )
            for m in (1, *mult):
                if (self.ch * m) % 32:
                    raise ConfigError(f"ch * {side}_ch_mult must be divisible by 32 (GroupNorm); got {self.ch * m}")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ConfigError(
                f"encoder and decoder need the same number of levels (same downsampling), got {list(self.encoder_ch_mult)} "
                f"and {list(self.decoder_ch_mult)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


Config = Union[VQGANConfig, VQVAEConfig, VQVAE2Config, Emu3Config, Magvit2Config, CosmosConfig, ShowoConfig]
FAMILIES.update({c.family: c for c in (Magvit2Config, CosmosConfig, ShowoConfig)})

"""Prior configuration: one small frozen dataclass, stored as the prior's ``config.json``.

A prior config names the architecture, its size, the token grid and codebooks it models, the
classes it is conditioned on, and the tokenizer whose tokens it was trained on (name and
:func:`imagetok.config.config_hash`). ``PriorConfig.from_dict`` is strict: unknown keys, wrong
types and impossible values raise :class:`~imagetok.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, get_type_hints

from ..errors import ConfigError

FORMAT = "imagetok-prior"
FORMAT_VERSION = 1
ARCHS = ("transformer", "pixelcnn", "vqvae2")
MAX_WIDTH, MAX_DEPTH, MAX_HEADS, MAX_TOKENS, MAX_CLASSES, MAX_CODES = 8192, 256, 128, 65536, 100_000, 1 << 20


@dataclass(frozen=True)
class PriorConfig:
    """Architecture and vocabulary of a stage-2 prior.

    ``width``/``depth``/``heads`` size every architecture: the transformer's ``n_embd``/``n_layer``/
    ``n_head`` (minGPT names); the gated PixelCNN's ``dim``/``n_layers`` (``heads`` unused); for
    ``vqvae2`` both the top and the bottom transformer.
    """

    arch: str  # "transformer" (one level, raster order), "pixelcnn" (one level), "vqvae2" (top then bottom)
    codebook_sizes: tuple[int, ...]  # one per level, coarse to fine (as Tokenizer.codebook_sizes)
    grid: tuple[int, ...]  # (h, w), or (h_top, w_top, h_bottom, w_bottom) for two levels (Parquet 'grid')
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0
    kernel: int = 7  # pixelcnn: kernel of the first (mask A) layer; later layers are 3x3
    num_classes: int = 0  # 0: unconditional (a start token); else class token + a null class for CFG
    classes: tuple[str, ...] = ()  # class names, index = label id (empty: ids only)
    tokenizer: Optional[str] = None  # name the tokenizer was loaded under (Tokenizer.name)
    tokenizer_hash: str = ""  # imagetok.config.config_hash of the tokenizer config
    tokenizer_config: Optional[dict] = None  # the tokenizer's config dict (to write token files)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"prior arch must be one of {list(ARCHS)}, got {self.arch!r}")
        levels = 2 if self.arch == "vqvae2" else 1
        if len(self.codebook_sizes) != levels:
            raise ConfigError(
                f"a {self.arch} prior models {levels} token level(s), got codebook_sizes {list(self.codebook_sizes)}"
                + (" (use arch 'vqvae2' for VQ-VAE-2 tokens)" if len(self.codebook_sizes) == 2 else "")
            )
        if len(self.grid) != 2 * levels or any(g < 1 for g in self.grid):
            raise ConfigError(f"grid must be {2 * levels} positive ints (h, w per level), got {list(self.grid)}")
        if any(not 2 <= k <= MAX_CODES for k in self.codebook_sizes):
            raise ConfigError(f"codebook sizes must be in [2, {MAX_CODES}], got {list(self.codebook_sizes)}")
        if levels == 2:
            (ht, wt), (hb, wb) = self.grid[:2], self.grid[2:]
            if hb % ht or wb % wt or hb // ht != wb // wt:
                raise ConfigError(f"the bottom grid {hb}x{wb} must be a whole multiple of the top grid {ht}x{wt}")
        n = max(self.grid[i] * self.grid[i + 1] for i in range(0, len(self.grid), 2))
        if n > MAX_TOKENS:
            raise ConfigError(f"a grid of {n} tokens is over the limit of {MAX_TOKENS}")
        for name, hi in (("width", MAX_WIDTH), ("depth", MAX_DEPTH), ("heads", MAX_HEADS)):
            v = getattr(self, name)
            if not 1 <= v <= hi:
                raise ConfigError(f"prior config {name!r} must be in [1, {hi}], got {v}")
        if self.arch != "pixelcnn" and self.width % self.heads:
            raise ConfigError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.arch == "pixelcnn" and (self.kernel < 3 or self.kernel % 2 == 0 or self.kernel > 15):
            raise ConfigError(f"kernel must be odd and in [3, 15], got {self.kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.num_classes <= MAX_CLASSES:
            raise ConfigError(f"num_classes must be in [0, {MAX_CLASSES}], got {self.num_classes}")
        if self.classes and len(self.classes) != self.num_classes:
            raise ConfigError(f"{len(self.classes)} class names for num_classes={self.num_classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"class names must be distinct, got {list(self.classes)}")

    @property
    def grid_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(h, w)`` of each level, coarse to fine."""
        return tuple((self.grid[i], self.grid[i + 1]) for i in range(0, len(self.grid), 2))

    @property
    def seq_lens(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.grid_shapes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriorConfig":
        """Strict: unknown keys, missing required keys and wrong types raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a prior config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt, version = data.pop("format", None), data.pop("format_version", FORMAT_VERSION)
        if fmt != FORMAT:
            hint = "; this is a tokenizer config: load it with Tokenizer.from_pretrained" if "family" in data else ""
            raise ConfigError(f"not an imagetok prior config (format {fmt!r}, expected {FORMAT!r}){hint}")
        if version != FORMAT_VERSION:
            raise ConfigError(f"prior config format_version {version!r} is not supported (this imagetok reads {FORMAT_VERSION})")
        return _strict(cls, data, "prior config")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update({f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)})
        return out


def _strict(cls: type, data: dict[str, Any], what: str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys and types (lists become tuples)."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}; valid keys are {sorted(fields)}")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = sorted(set(required) - set(data))
    if missing:
        raise ConfigError(f"{what} is missing required key(s) {missing}")
    return cls(**{k: _coerce(f"{what} key {k!r}", hints[k], v) for k, v in data.items()})


def _coerce(where: str, hint: Any, value: Any) -> Any:
    args = getattr(hint, "__args__", ())
    if getattr(hint, "__origin__", None) is not None and type(None) in args:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = getattr(hint, "__args__", ())
    if getattr(hint, "__origin__", None) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {list(value)}")
        items = (args[0],) * len(value) if args[-1] is Ellipsis else args
        return tuple(_coerce(where, a, v) for a, v in zip(items, value))
    checks = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
    }
    if hint in checks and not checks[hint](value):
        raise ConfigError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value

"""The pretrained-weight registry: ``weights_manifest.json`` parsed into typed, validated entries.

Names follow ``family-variant.tag`` (timm's ``arch.tag``), e.g. ``vqgan-f16-16384.imagenet-taming``:
the part before the dot says what the network is, the part after it which weights.

>>> list_pretrained("vqgan-f16-*")
['vqgan-f16-1024.imagenet-taming', 'vqgan-f16-16384.imagenet-llamagen', ...]
>>> parse_name("hf-hub:org/repo@v1")
ModelRef(kind='hub', name='hf-hub:org/repo@v1', repo_id='org/repo', revision='v1', ...)

The manifest ships inside the wheel (``imagetok/weights_manifest.json``) and lives at the top of
the source tree; ``IMAGETOK_MANIFEST=/path/to/manifest.json`` replaces it (a private zoo, tests).
Parsing is strict: an unknown key, a wrong type or an entry whose token grid does not follow from
its config raises :class:`~imagetok.errors.ConfigError` naming the entry and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .config import Config, config_from_dict, config_to_dict
from .errors import ConfigError, UnknownModelError

MANIFEST_NAME = "weights_manifest.json"
MANIFEST_ENV = "IMAGETOK_MANIFEST"
FORMAT_VERSION = 1

SOURCE_KINDS = ("hub", "url", "bundled")  # hub: Hugging Face repo; url: manual download; bundled: in the wheel
CONVERTERS = ("taming", "diffusers", "llamagen", "rosinality")  # imagetok.convert FORMATS (taming covers LDM)
CONVERTERS += ("open-magvit2", "ibq", "cosmos", "showo")
CONVERTERS += ("transformers", "janus", "chameleon")  # LLM tokenizers (Emu3, Janus, Chameleon)
RESIZE_MODES = ("shorter_side", "none")
CROP_MODES = ("center", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos", "box-then-bicubic", None)
METRIC_KEYS = (
    "rfid", "fid_vs_train", "fid_vs_val", "psnr", "psnr_std", "ssim", "lpips", "inception_score", "codebook_usage",
    "perplexity",
)
NAME_RE = re.compile(r"^(?P<arch>[a-z0-9]+(?:-[a-z0-9]+)*)\.(?P<tag>[a-z0-9]+(?:-[a-z0-9]+)*)$")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
HUB_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"
BUNDLED_DIR = Path(__file__).parent / "bundled"  # the model shipped in the wheel (manifest kind "bundled")
BUNDLED_NAME = "vqgan-f8-4096.imagetok-photos"  # what Tokenizer.from_pretrained() loads by default


@dataclass(frozen=True)
class Preprocess:
    """How the *reference* implementation prepared images: documentation only, never applied.

    ``Tokenizer.encode`` always resizes the shorter side to its ``size`` (default
    ``config.resolution``) with antialiased bicubic and centre-crops (see :mod:`imagetok.image`),
    whatever ``resize``, ``crop`` and ``interpolation`` say here. They record the pipeline the
    reported metrics were measured with, so a user reproducing those numbers knows what to do.
    Only ``input_range`` is used, and it must equal ``config.input_range``.
    """

    size: int  # side of the square crop the metrics were measured at
    input_range: tuple[float, float]  # pixel range the network expects (equals config.input_range)
    resize: str  # "shorter_side": resize so the shorter side is `size`; "none"
    crop: str  # "center" or "none"
    interpolation: str | None  # resampling filter of the reference pipeline (not imagetok's); None when undocumented


@dataclass(frozen=True)
class TokenSpec:
    """Token grids at ``Preprocess.size`` (coarse to fine) and each level's vocabulary size."""

    grids: tuple[tuple[int, int], ...]
    vocab_sizes: tuple[int, ...]


@dataclass(frozen=True)
class WeightSource:
    """Where the weights come from.

    kind "hub": ``repo_id`` + ``filename`` on the Hugging Face Hub; "url": a file that must be
    fetched by hand from ``url`` (not on the Hub); "bundled": shipped in ``imagetok/bundled/``.
    ``format`` "imagetok" means an imagetok folder (config.json + model.safetensors); anything
    else is converted once with ``imagetok.convert.convert(from_format=converter)``.
    """

    kind: str
    repo_id: str | None = None
    filename: str | None = None  # path inside the repo (or the archive/folder at `url`)
    revision: str | None = None  # pinned 40-hex commit; None = the default branch (unpinned)
    format: str = "imagetok"  # container: "imagetok", "lightning-ckpt", "pt-dict", "pt-state-dict", "diffusers"
    converter: str | None = None  # imagetok.convert from_format; None for format "imagetok"
    sha256: str | None = None  # of the file named by `filename`; None when not known
    url: str | None = None  # original upstream location (required for kind "url")
    use_ema: bool = False  # convert the EMA copy of the weights


@dataclass(frozen=True)
class License:
    code: str | None  # licence of the reference code (SPDX id)
    weights: str | None  # licence of the weights; "unknown" when upstream does not state one
    non_commercial: bool = False  # the weights' licence forbids commercial use
    gated: bool = False  # upstream gates the download (accept terms / request access); never re-host

    def markers(self) -> str:
        """``"non-commercial, gated"``-style flags (empty when none apply)."""
        return ", ".join(m for m, on in (("non-commercial", self.non_commercial), ("gated", self.gated)) if on)


@dataclass(frozen=True)
class Metric:
    """Numbers reported for the weights, with the protocol they were measured under."""

    dataset: str
    resolution: int | None
    protocol: str  # how they were measured (split, crop, FID implementation...)
    source: str  # where the numbers are published
    values: Mapping[str, float]  # keys from METRIC_KEYS; codebook_usage is a fraction in [0, 1]


@dataclass(frozen=True)
class ManifestEntry:
    """One published tokenizer."""

    name: str
    description: str
    config: Config
    preprocess: Preprocess
    tokens: TokenSpec
    source: WeightSource
    license: License
    citation: str | None
    datasets: tuple[str, ...]  # training data (Hub dataset ids or plain names)
    metrics: tuple[Metric, ...]
    num_params: int  # parameters of the built network (codebooks included)

    @property
    def arch(self) -> str:
        """``family-variant``, the part of the name before the dot."""
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def family(self) -> str:
        return self.config.family

    def card_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`imagetok.card.model_card` describing these weights."""
        lic = self.license.weights if self.license.weights not in (None, "unknown") else None
        where = self.source.url or (f"https://huggingface.co/{self.source.repo_id}" if self.source.repo_id else None)
        src = None
        if self.source.format != "imagetok":
            src = f"converted from {self.source.format} file `{self.source.filename}`" + (f" ({where})" if where else "")
        return {
            "license": _spdx(lic) if lic else "other",
            "datasets": list(self.datasets),
            "description": self.description,
            "metrics": [dataclasses.asdict(m) | {"values": dict(m.values)} for m in self.metrics],
            "source": src,
            "citation": self.citation,
            "tags": [self.arch, self.tag],
        }


@dataclass(frozen=True)
class ModelRef:
    """What :func:`parse_name` made of a model name.

    kind "manifest": ``entry`` is set; "hub": ``repo_id`` (and maybe ``revision``); "local": ``path``.
    """

    kind: str
    name: str
    entry: ManifestEntry | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None


# --------------------------------------------------------------------------------- loading
def manifest_location() -> Path:
    """The manifest in use: ``$IMAGETOK_MANIFEST``, else the copy inside the installed package,
    else ``weights_manifest.json`` at the top of the source tree."""
    env = os.environ.get(MANIFEST_ENV)
    if env:
        return Path(env)
    packaged = resources.files("imagetok").joinpath(MANIFEST_NAME)
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / MANIFEST_NAME


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, ManifestEntry]:
    """Parse and validate a manifest (default: :func:`manifest_location`).

    Returns:
        ``{name: ManifestEntry}`` in file order.

    Raises:
        ConfigError: missing file, invalid JSON, duplicate names or any malformed entry.
    """
    p = Path(path) if path is not None else manifest_location()
    try:
        stamp = p.stat().st_mtime_ns
    except OSError:
        raise ConfigError(f"weights manifest not found at {p}") from None
    return _load_cached(str(p.resolve()), stamp)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, _mtime: int) -> dict[str, ManifestEntry]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON manifest ({e})") from None
    return parse_manifest(data, where=path)


def parse_manifest(data: Any, where: str = "manifest") -> dict[str, ManifestEntry]:
    """Validate a manifest dict ``{"format_version": 1, "models": [entry, ...]}``."""
    top = _obj(data, where, required=("format_version", "models"))
    if top["format_version"] != FORMAT_VERSION:
        raise ConfigError(f"{where}: format_version {top['format_version']!r} is not supported (expected {FORMAT_VERSION})")
    if not isinstance(top["models"], list):
        raise ConfigError(f"{where}: 'models' must be a list of entries")
    out: dict[str, ManifestEntry] = {}
    for i, raw in enumerate(top["models"]):
        name = raw.get("name") if isinstance(raw, dict) else None
        entry = parse_entry(raw, where=f"{where}: entry {i} ({name!r})")
        if entry.name in out:
            raise ConfigError(f"{where}: duplicate model name {entry.name!r}")
        out[entry.name] = entry
    return out


def parse_entry(raw: Any, where: str = "entry") -> ManifestEntry:
    """Validate one manifest entry; see the module docstring and README for the schema."""
    d = _obj(
        raw, where,
        required=("name", "description", "config", "preprocess", "tokens", "source", "license", "num_params"),
        optional=("citation", "datasets", "metrics"),
    )
    name = _str(d["name"], f"{where}: name")
    m = NAME_RE.match(name)
    if not m:
        raise ConfigError(
            f"{where}: name {name!r} must look like 'family-variant.tag' "
            "(lower-case letters, digits and '-', one '.' between arch and tag)"
        )
    try:
        config = config_from_dict(d["config"])
    except ConfigError as e:
        raise ConfigError(f"{where}: config: {e}") from None
    if m["arch"].split("-")[0] != config.family:
        raise ConfigError(f"{where}: name {name!r} must start with its family {config.family!r}")

    pp = _obj(d["preprocess"], f"{where}: preprocess", required=("size", "input_range", "resize", "crop"), optional=("interpolation",))
    preprocess = Preprocess(
        size=_int(pp["size"], f"{where}: preprocess.size"),
        input_range=tuple(_num(v, f"{where}: preprocess.input_range") for v in _list(pp["input_range"], f"{where}: preprocess.input_range", 2)),
        resize=_choice(pp["resize"], RESIZE_MODES, f"{where}: preprocess.resize"),
        crop=_choice(pp["crop"], CROP_MODES, f"{where}: preprocess.crop"),
        interpolation=_choice(pp.get("interpolation"), INTERPOLATIONS, f"{where}: preprocess.interpolation"),
    )
    if preprocess.input_range != tuple(config.input_range):
        raise ConfigError(f"{where}: preprocess.input_range {list(preprocess.input_range)} differs from config input_range {list(config.input_range)}")
    factor = max(config.downsample_factors)
    if preprocess.size % factor:
        raise ConfigError(f"{where}: preprocess.size {preprocess.size} is not a multiple of the downsampling factor {factor}")

    tk = _obj(d["tokens"], f"{where}: tokens", required=("grids", "vocab_sizes"))
    tokens = TokenSpec(
        grids=tuple(tuple(_int(v, f"{where}: tokens.grids") for v in _list(g, f"{where}: tokens.grids", 2)) for g in _list(tk["grids"], f"{where}: tokens.grids")),
        vocab_sizes=tuple(_int(v, f"{where}: tokens.vocab_sizes") for v in _list(tk["vocab_sizes"], f"{where}: tokens.vocab_sizes")),
    )
    expected_grids = tuple((preprocess.size // f, preprocess.size // f) for f in config.downsample_factors)
    if tokens.grids != expected_grids or tokens.vocab_sizes != tuple(config.codebook_sizes):
        raise ConfigError(
            f"{where}: tokens {[list(g) for g in tokens.grids]} / vocab {list(tokens.vocab_sizes)} do not follow from the config: "
            f"expected grids {[list(g) for g in expected_grids]} at {preprocess.size}px and vocab {list(config.codebook_sizes)}"
        )

    source = _parse_source(d["source"], f"{where}: source")
    lic = _obj(d["license"], f"{where}: license", required=("code", "weights"), optional=("non_commercial", "gated"))
    license_ = License(code=_opt_str(lic["code"], f"{where}: license.code"), weights=_opt_str(lic["weights"], f"{where}: license.weights"),
                       non_commercial=_bool(lic.get("non_commercial", False), f"{where}: license.non_commercial"),
                       gated=_bool(lic.get("gated", False), f"{where}: license.gated"))  # fmt: skip
    metrics = tuple(_parse_metric(x, f"{where}: metrics[{i}]") for i, x in enumerate(_list(d.get("metrics", []), f"{where}: metrics")))
    datasets = tuple(_str(x, f"{where}: datasets") for x in _list(d.get("datasets", []), f"{where}: datasets"))
    num_params = _int(d["num_params"], f"{where}: num_params")
    return ManifestEntry(
        name=name,
        description=_str(d["description"], f"{where}: description"),
        config=config,
        preprocess=preprocess,
        tokens=tokens,
        source=source,
        license=license_,
        citation=_opt_str(d.get("citation"), f"{where}: citation"),
        datasets=datasets,
        metrics=metrics,
        num_params=num_params,
    )


def _parse_source(raw: Any, where: str) -> WeightSource:
    fields = [f.name for f in dataclasses.fields(WeightSource)]
    s = _obj(raw, where, required=("kind",), optional=tuple(f for f in fields if f != "kind"))
    kind = _choice(s["kind"], SOURCE_KINDS, f"{where}.kind")
    src = WeightSource(
        kind=kind,
        repo_id=_opt_str(s.get("repo_id"), f"{where}.repo_id"),
        filename=_opt_str(s.get("filename"), f"{where}.filename"),
        revision=_opt_str(s.get("revision"), f"{where}.revision"),
        format=_str(s.get("format", "imagetok"), f"{where}.format"),
        converter=_choice(s.get("converter"), (*CONVERTERS, None), f"{where}.converter"),
        sha256=_opt_str(s.get("sha256"), f"{where}.sha256"),
        url=_opt_str(s.get("url"), f"{where}.url"),
        use_ema=_bool(s.get("use_ema", False), f"{where}.use_ema"),
    )
    if src.sha256 is not None and not SHA256_RE.match(src.sha256):
        raise ConfigError(f"{where}.sha256 must be 64 lower-case hex digits or null, got {src.sha256!r}")
    if src.revision is not None and not COMMIT_RE.match(src.revision):
        raise ConfigError(f"{where}.revision must be a pinned 40-hex commit id or null, got {src.revision!r}")
    if (src.format == "imagetok") != (src.converter is None):
        raise ConfigError(f"{where}: format {src.format!r} needs a converter iff it is not 'imagetok' (converter={src.converter!r})")
    if kind == "hub":
        if not src.repo_id or not REPO_ID_RE.match(src.repo_id) or not src.filename:
            raise ConfigError(f"{where}: a hub source needs repo_id ('org/name') and filename, got {src.repo_id!r}, {src.filename!r}")
    elif kind == "url":
        if not src.url or not src.filename:
            raise ConfigError(f"{where}: a url source needs url and filename")
    elif kind == "bundled" and (src.repo_id or src.format != "imagetok"):
        raise ConfigError(f"{where}: a bundled source is an imagetok folder inside the package; it takes no repo_id or converter")
    return src


def _parse_metric(raw: Any, where: str) -> Metric:
    m = _obj(raw, where, required=("dataset", "protocol", "source", "values"), optional=("resolution",))
    values = _obj(m["values"], f"{where}.values", optional=METRIC_KEYS)
    if not values:
        raise ConfigError(f"{where}.values is empty; give at least one of {list(METRIC_KEYS)}")
    res = m.get("resolution")
    return Metric(
        dataset=_str(m["dataset"], f"{where}.dataset"),
        resolution=None if res is None else _int(res, f"{where}.resolution"),
        protocol=_str(m["protocol"], f"{where}.protocol"),
        source=_str(m["source"], f"{where}.source"),
        values={k: _num(v, f"{where}.values.{k}") for k, v in values.items()},
    )


# ------------------------------------------------------------------------ strict JSON helpers
def _obj(raw: Any, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    unknown = sorted(set(raw) - set(required) - set(optional))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted({*required, *optional})}")
    return raw


def _list(v: Any, where: str, length: int | None = None) -> list:
    if not isinstance(v, list) or (length is not None and len(v) != length):
        raise ConfigError(f"{where} must be a list{f' of {length} items' if length else ''}, got {v!r}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where} must be a non-empty string, got {v!r}")
    return v


def _opt_str(v: Any, where: str) -> str | None:
    return None if v is None else _str(v, where)


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{where} must be a positive integer, got {v!r}")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where} must be a number, got {v!r}")
    return float(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where} must be true or false, got {v!r}")
    return v


def _choice(v: Any, choices: tuple, where: str) -> Any:
    if v not in choices:
        raise ConfigError(f"{where} must be one of {[c for c in choices]}, got {v!r}")
    return v


def _spdx(text: str) -> str:
    return text.split()[0].lower() if text.split()[0] in ("MIT", "Apache-2.0", "BSD-3-Clause") else "other"


# ------------------------------------------------------------------------- lookup and names
def list_pretrained(filter: str | None = None) -> list[str]:  # the name mirrors timm/open_clip
    """Names of the published tokenizers, sorted.

    Args:
        filter: optional glob on the name, e.g. ``"vqgan-f16-*"`` or ``"*.imagenet-*"``.
    """
    names = sorted(load_manifest())
    return [n for n in names if fnmatch.fnmatchcase(n, filter)] if filter else names


def closest_names(name: str, names: list[str] | None = None, n: int = 3) -> list[str]:
    """Up to ``n`` known names that look like ``name`` (difflib ratio >= 0.4)."""
    names = list(load_manifest()) if names is None else names
    lowered = {k.lower(): k for k in names}
    return [lowered[k] for k in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.4)]


def get_entry(name: str) -> ManifestEntry:
    """The manifest entry called ``name``; an arch alone (``vqgan-f16-1024``) works when only one
    tag exists for it.

    Raises:
        UnknownModelError: no such entry; the message lists the closest names.
    """
    manifest = load_manifest()
    if name in manifest:
        return manifest[name]
    same_arch = [e for e in manifest.values() if e.arch == name]
    if len(same_arch) == 1:
        return same_arch[0]
    if same_arch:
        raise UnknownModelError(f"{name!r} has several pretrained tags; pick one of {[e.name for e in same_arch]}")
    raise UnknownModelError(_unknown_message(name, list(manifest)))


def _unknown_message(name: str, names: list[str]) -> str:
    close = closest_names(name, names)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return (
        f"unknown model {name!r}: not a local model folder, a weights-manifest name or a Hub repo id. {hint}"
        f"See `imagetok list` for the {len(names)} known names, or pass 'hf-hub:org/repo' or a folder path."
    )


def parse_name(name: str | os.PathLike) -> ModelRef:
    """Decide what a model name refers to. The one place names are interpreted.

    Order: ``hf-hub:org/repo[@revision]``; ``local-dir:PATH``; an existing path; a manifest
    name (or an arch with a single tag); a bare ``org/repo[@revision]`` Hub id.

    Raises:
        UnknownModelError: none of these; the message lists the closest manifest names.
    """
    text = os.fspath(name)
    if text.startswith(HUB_PREFIX):
        repo_id, revision = _split_revision(text[len(HUB_PREFIX):])
        if not REPO_ID_RE.match(repo_id):
            raise UnknownModelError(f"{text!r}: expected 'hf-hub:org/name' or 'hf-hub:org/name@revision'")
        return ModelRef("hub", text, repo_id=repo_id, revision=revision)
    if text.startswith(LOCAL_PREFIX):
        return ModelRef("local", text, path=Path(text[len(LOCAL_PREFIX):]).expanduser())
    if Path(text).expanduser().exists():
        return ModelRef("local", text, path=Path(text).expanduser())
    manifest = load_manifest()
    if text in manifest or any(e.arch == text for e in manifest.values()):
        return ModelRef("manifest", text, entry=get_entry(text))
    repo_id, revision = _split_revision(text)
    if REPO_ID_RE.match(repo_id) and not repo_id.startswith((".", "~")):
        return ModelRef("hub", text, repo_id=repo_id, revision=revision)
    raise UnknownModelError(_unknown_message(text, list(manifest)))


def _split_revision(text: str) -> tuple[str, str | None]:
    repo_id, sep, revision = text.partition("@")
    if sep and not revision:
        raise UnknownModelError(f"{text!r}: empty revision after '@'")
    return repo_id, (revision or None)


# ------------------------------------------------------------------------------ reporting
def markdown_table(entries: list[ManifestEntry] | None = None) -> str:
    """A README table of the manifest: name, family, tokens, params, headline metric, weights, licence."""
    entries = list(load_manifest().values()) if entries is None else entries
    rows = [
        "| name | family | tokens @ px | vocab | params | reported | weights | licence (code / weights) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        grids = " + ".join(f"{h}x{w}" for h, w in e.tokens.grids)
        vocab = " + ".join(str(v) for v in e.tokens.vocab_sizes)
        rows.append(
            f"| `{e.name}` | {e.family} | {grids} @ {e.preprocess.size} | {vocab} | {e.num_params / 1e6:.1f} M "
            f"| {_headline(e)} | {_where(e.source)} | {e.license.code or '?'} / {e.license.weights or '?'}"
            + (f" ({e.license.markers()})" if e.license.markers() else "") + " |"
        )
    return "\n".join(rows) + "\n"


def _headline(e: ManifestEntry) -> str:
    for m in e.metrics:
        parts = [f"{k} {v:g}" for k, v in m.values.items() if k in ("rfid", "fid_vs_val", "psnr", "codebook_usage")]
        if parts:
            return ", ".join(parts) + f" ({m.dataset})"
    return "none published"


def _where(s: WeightSource) -> str:
    conv = f", converted from {s.converter}" if s.converter else ""
    if s.kind == "hub":
        return f"`{s.repo_id}`{conv}"
    if s.kind == "url":
        return f"manual download{conv}"
    return "bundled"


def entry_to_dict(e: ManifestEntry) -> dict[str, Any]:
    """The JSON form of an entry (as in the manifest)."""
    return {
        "name": e.name,
        "description": e.description,
        "config": config_to_dict(e.config),
        "preprocess": dataclasses.asdict(e.preprocess) | {"input_range": list(e.preprocess.input_range)},
        "tokens": {"grids": [list(g) for g in e.tokens.grids], "vocab_sizes": list(e.tokens.vocab_sizes)},
        "source": dataclasses.asdict(e.source),
        "license": dataclasses.asdict(e.license),
        "citation": e.citation,
        "datasets": list(e.datasets),
        "metrics": [dataclasses.asdict(m) | {"values": dict(m.values)} for m in e.metrics],
        "num_params": e.num_params,
    }

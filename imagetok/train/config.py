"""Training configuration: one frozen dataclass, read strictly from JSON (``imagetok train --config``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, get_type_hints

from ..errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Paths are relative to the current directory.

    Exactly one of ``model`` (an imagetok config dict: train from scratch) or ``init_from`` (a
    name/folder for ``Tokenizer.from_pretrained``: fine-tune) must be given.
    """

    data: str  # folder of training images (searched recursively)
    out_dir: str  # checkpoints, metrics.jsonl, sample grids and the exported model go here
    model: Optional[dict] = None  # imagetok config dict, e.g. {"family": "vqgan", ...}
    init_from: Optional[str] = None  # fine-tune this pretrained model instead
    eval_data: Optional[str] = None  # held-out folder for PSNR/SSIM/usage
    eval_size: int = 256  # eval images: shorter side resized to this, centre crop
    # data
    crop_size: int = 128  # random crops of this side
    scale_range: Optional[tuple[int, int]] = None  # resize shorter side to a random value in [lo, hi] first
    hflip: bool = True
    cache_images: bool = True  # keep decoded images in memory (small datasets)
    # optimisation
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 disables
    bf16: bool = False  # bf16 autocast for the network (quantizer stays float32)
    channels_last: bool = False  # NHWC memory format for the network and its inputs (faster convs with bf16)
    ema_decay: float = 0.0  # EMA of weights (0 = off); exported when on
    # losses
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    ssim_weight: float = 0.0  # weight of (1 - SSIM)
    perceptual_weight: float = 0.0  # LPIPS-VGG16; needs perceptual_weights
    perceptual_weights: Optional[str] = None  # .safetensors with torchvision vgg16 features + LPIPS lin layers
    codebook_weight: float = 1.0
    commitment_beta: float = 0.25  # on the encoder term ||z - sg(e)||^2
    disc_weight: float = 0.0  # PatchGAN generator loss weight (0 = no discriminator)
    disc_start: int = 0  # step at which the GAN loss switches on
    disc_loss: str = "hinge"  # "hinge" | "non_saturating"
    disc_layers: int = 3  # taming NLayerDiscriminator n_layers
    disc_channels: int = 64  # taming NLayerDiscriminator ndf
    disc_lr: Optional[float] = None  # default: lr (same warm-up/cosine schedule)
    # codebook health
    codebook_init: str = "sample"  # "sample" | "kmeans++" | "none": initialise codes from encoder outputs
    codebook_ema: bool = False  # EMA codebook updates (VQ-VAE-2 style) instead of the codebook loss
    codebook_ema_decay: float = 0.99
    restart_every: int = 0  # every N steps, re-seed codes unused since the last restart (0 = off)
    # bookkeeping
    seed: int = 0
    num_threads: int = 0  # torch threads per process (0 = leave torch's default)
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N"; torchrun: cuda:LOCAL_RANK
    log_every: int = 10
    eval_every: int = 500
    save_every: int = 200
    keep_last: bool = True  # only the latest checkpoint is kept
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form notes copied into the model card
    # LFQ (magvit2 family): Open-MAGVIT2's entropy loss, weight * (sample_entropy - batch_weight * codebook_entropy)
    entropy_weight: float = 0.1
    entropy_temperature: float = 0.01
    entropy_batch_weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.model is None) == (self.init_from is None):
            raise ConfigError("give exactly one of 'model' (train from scratch) or 'init_from' (fine-tune)")
        for name in ("crop_size", "steps", "batch_size", "grad_accum", "eval_size", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train config {name!r} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train config 'lr' must be > 0, got {self.lr}")
        if self.disc_loss not in ("hinge", "non_saturating"):
            raise ConfigError(f"disc_loss must be 'hinge' or 'non_saturating', got {self.disc_loss!r}")
        if self.codebook_init not in ("sample", "kmeans++", "none"):
            raise ConfigError(f"codebook_init must be 'sample', 'kmeans++' or 'none', got {self.codebook_init!r}")
        if self.scale_range is not None and not (0 < self.scale_range[0] <= self.scale_range[1]):
            raise ConfigError(f"scale_range must be [lo, hi] with 0 < lo <= hi, got {list(self.scale_range)}")
        for name in ("l1_weight", "l2_weight", "ssim_weight", "perceptual_weight", "codebook_weight", "commitment_beta",
                     "disc_weight", "weight_decay", "grad_clip", "warmup_steps", "disc_start", "restart_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train config {name!r} must be >= 0, got {getattr(self, name)}")
        if self.entropy_weight < 0 or self.entropy_batch_weight < 0 or self.entropy_temperature <= 0:
            raise ConfigError("entropy_weight and entropy_batch_weight must be >= 0 and entropy_temperature > 0")
        for name in ("ema_decay", "codebook_ema_decay", "betas"):
            values = getattr(self, name) if name == "betas" else (getattr(self, name),)
            if not all(0 <= v < 1 for v in values):
                raise ConfigError(f"train config {name!r} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train config 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")
        if self.codebook_ema and not 0 < self.codebook_ema_decay < 1:
            raise ConfigError(f"codebook_ema_decay must be in (0, 1), got {self.codebook_ema_decay}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            raise ConfigError(f"disc_layers and disc_channels must be >= 1, got {self.disc_layers}, {self.disc_channels}")
        if self.disc_lr is not None and self.disc_lr <= 0:
            raise ConfigError(f"train config 'disc_lr' must be > 0, got {self.disc_lr}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ConfigError("perceptual_weight > 0 needs 'perceptual_weights' (no weights can be downloaded)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Strict: unknown keys and wrong types raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a train config must be a JSON object, got {type(data).__name__}")
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown train config key(s) {unknown}; valid keys are {sorted(names)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"train config is missing required key(s) {missing}")
        kwargs = {k: _coerce(k, hints[k], v) for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: train config not found") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from None
        if isinstance(data, dict):  # keys starting with "//" are comments
            data = {k: v for k, v in data.items() if not k.startswith("//")}
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}


def _coerce(name: str, hint: Any, value: Any) -> Any:
    where = f"train config key {name!r}"
    origin = getattr(hint, "__origin__", None)
    args = getattr(hint, "__args__", ())
    if origin is not None and type(None) in args:  # Optional[...]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = getattr(hint, "__origin__", None), getattr(hint, "__args__", ())
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
    }
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(name, a, v) for a, v in zip(args, value))
    base = origin or hint
    if base in ok and not ok[base](value):
        raise ConfigError(f"{where} must be of type {base.__name__}, got {value!r}")
    return float(value) if base is float else value

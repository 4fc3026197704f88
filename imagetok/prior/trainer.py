"""Train a prior on token data: ``train_prior(PriorTrainConfig)`` or ``imagetok prior train DATA --out DIR``.

Reuses :mod:`imagetok.train`: the learning-rate schedule, atomic checkpoints, process-group setup
(``torchrun --nproc-per-node N -m imagetok prior train ...``: DDP, gloo on CPU, NCCL on CUDA).
Batches are a pure function of ``(seed, step, rank)`` (row indices and label-dropout coins), so a
resumed run (same ``out_dir``) continues exactly as the uninterrupted run would have.

Outputs in ``out_dir``: ``checkpoint.pt``, ``metrics.jsonl`` and ``prior/`` (the exported prior).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import ConfigError
from ..train import dist
from ..train.loop import _atomic_save, _lr
from .config import ARCHS, PriorConfig, _strict
from .data import TokenData, load_token_data
from .prior import Prior, build_prior_model, model_nll

log = logging.getLogger(__name__)
CKPT, EXPORT = "checkpoint.pt", "prior"


@dataclass(frozen=True)
class PriorTrainConfig:
    """A prior training run. ``data``/``eval_data``: ``tokenize-dataset`` folders (or pass
    :class:`~imagetok.prior.data.TokenData` to :func:`train_prior`)."""

    out_dir: str
    data: str = ""  # empty when TokenData is passed to train_prior
    arch: str = "transformer"  # "transformer" | "pixelcnn" | "vqvae2"
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0
    kernel: int = 7
    conditional: bool = True  # condition on the dataset's labels when it has them
    label_dropout: float = 0.1  # share of labels replaced by the null class (for classifier-free guidance)
    eval_data: Optional[str] = None  # held-out tokens: bits per token every eval_every steps
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    log_every: int = 10
    eval_every: int = 500
    save_every: int = 200
    progress: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {list(ARCHS)}, got {self.arch!r}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"prior train config {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "num_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"prior train config {name!r} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.label_dropout < 1 or not 0 <= self.min_lr_ratio <= 1 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("label_dropout and betas must be in [0, 1), min_lr_ratio in [0, 1]")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriorTrainConfig":
        return _strict(cls, {k: v for k, v in data.items() if not k.startswith("//")}, "prior train config")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}


def prior_config_for(cfg: PriorTrainConfig, data: TokenData) -> PriorConfig:
    """The prior's architecture for this run and dataset (grid, codebooks, classes, tokenizer)."""
    levels = len(data.codebook_sizes)
    if (levels == 2) != (cfg.arch == "vqvae2"):
        raise ConfigError(f"arch {cfg.arch!r} does not fit {levels}-level tokens"
                          f" (use {'vqvae2' if levels == 2 else 'transformer or pixelcnn'})")  # fmt: skip
    num_classes = data.num_classes if cfg.conditional and data.labels is not None else 0
    tok = data.tokenizer or {}
    return PriorConfig(
        arch=cfg.arch, codebook_sizes=data.codebook_sizes, grid=data.grid, width=cfg.width, depth=cfg.depth, heads=cfg.heads,
        dropout=cfg.dropout, kernel=cfg.kernel, num_classes=num_classes, classes=tuple(data.classes or ()) if num_classes else (),
        tokenizer=tok.get("name"), tokenizer_hash=tok.get("config_hash") or "", tokenizer_config=tok.get("config"),
    )  # fmt: skip


class PriorTrainer:
    """One run: ``PriorTrainer(cfg).run()`` -> the exported prior folder.

    Args:
        data, eval_data: override ``cfg.data``/``cfg.eval_data`` with in-memory :class:`TokenData`.
    """

    def __init__(self, cfg: PriorTrainConfig, data: TokenData | None = None, eval_data: TokenData | None = None):
        self.cfg = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = dist.resolve_device(cfg.device)
        self._owns_group = dist.setup(self.device)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        torch.manual_seed(cfg.seed * 1000 + self.rank)  # dropout masks
        if data is None and not cfg.data:
            raise ConfigError("no training data: set 'data' to a tokenize-dataset folder or pass TokenData")
        self.data = load_token_data(data if data is not None else cfg.data)
        ev = eval_data if eval_data is not None else cfg.eval_data
        self.eval_data = load_token_data(ev) if ev is not None else None
        self.pcfg = prior_config_for(cfg, self.data)
        if self.eval_data is not None and (self.eval_data.grid, self.eval_data.codebook_sizes) != (self.data.grid, self.data.codebook_sizes):
            raise ConfigError(f"eval data grid/codebooks {self.eval_data.grid}/{self.eval_data.codebook_sizes} differ from the "
                              f"training data's {self.data.grid}/{self.data.codebook_sizes}")  # fmt: skip
        self.prior = Prior.from_config(self.pcfg, seed=cfg.seed)
        self.model = self.prior.model.to(self.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.out = Path(cfg.out_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out / "metrics.jsonl"
        self.step = 0
        self._resume()
        self.net = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _resume_key(self) -> str:
        return json.dumps({"prior": self.pcfg.to_dict(), "batch_size": self.cfg.batch_size, "seed": self.cfg.seed,
                           "rows": len(self.data)}, sort_keys=True)  # fmt: skip

    def _resume(self) -> None:
        path = self.out / CKPT
        if not path.exists():
            return
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"{path}: cannot read checkpoint ({e}); move it away to start afresh") from None
        if not isinstance(ck, dict) or ck.get("resume_key") != self._resume_key():
            raise ConfigError(f"{path} was written by a different run (prior config, batch size, seed or data differ); "
                              "use another out_dir or restore the original settings")  # fmt: skip
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        self.step = int(ck["step"])
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Path:
        path = self.out / CKPT
        _atomic_save({"step": self.step, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                      "rng": torch.get_rng_state(), "resume_key": self._resume_key()}, path)  # fmt: skip
        return path

    def batch(self, step: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Levels ``[B, h, w]`` and labels ``[B]`` (null class where dropped or unconditional), from ``(seed, step, rank)``."""
        g = np.random.default_rng([self.cfg.seed, step, self.rank])
        idx = torch.from_numpy(g.integers(len(self.data), size=self.cfg.batch_size))
        levels = tuple(t.to(self.device) for t in self.data.levels(idx))
        null = self.pcfg.num_classes
        if null == 0:
            labels = torch.zeros(len(idx), dtype=torch.long)
        else:
            labels = self.data.labels[idx].clone()
            labels[torch.from_numpy(g.random(len(idx)) < self.cfg.label_dropout)] = null
        return levels, labels.to(self.device)

    def train_step(self) -> dict[str, float]:
        for group in self.opt.param_groups:
            group["lr"] = _lr(self.cfg, self.step)
        levels, labels = self.batch(self.step)
        loss = model_nll(self.net, self.pcfg.arch, levels, labels).mean() / sum(self.pcfg.seq_lens)  # nats per token
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return {"loss": float(loss.detach()), "bits_per_token": float(loss.detach()) / math.log(2)}

    def export_prior(self) -> Prior:
        """A :class:`Prior` with a copy of the current weights, on the CPU, in eval mode."""
        model = build_prior_model(self.pcfg)
        model.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        return Prior(model, self.pcfg, name=str(self.out / EXPORT))

    def evaluate(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        return {"eval_bits_per_token": self.export_prior().bits_per_token(self.eval_data)}

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self) -> Path:
        """Train to ``cfg.steps`` (resuming from ``checkpoint.pt`` if present); returns ``out_dir/prior``.
        Ctrl-C saves a checkpoint and re-raises."""
        cfg = self.cfg
        self._log({"event": "start", "step": self.step, "rows": len(self.data), "prior": self.pcfg.to_dict(), "world_size": self.world_size})
        t0, s0 = time.time(), self.step
        try:
            while self.step < cfg.steps:
                rec = self.train_step()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = (self.step - s0) / max(time.time() - t0, 1e-9)
                    self._log({"step": self.step, "lr": _lr(cfg, self.step - 1), "steps_per_s": round(rate, 3), **rec})
                    if cfg.progress and self.rank == 0:
                        print(f"\rprior step {self.step}/{cfg.steps} loss {rec['bits_per_token']:.3f} bits/token "
                              f"{rate:.2f} steps/s ETA {(cfg.steps - self.step) / max(rate, 1e-9) / 60:.1f} min",
                              end="", file=sys.stderr, flush=True)  # fmt: skip
                if self.step % cfg.eval_every == 0 and self.rank == 0 and self.eval_data is not None:
                    self._log({"step": self.step, **self.evaluate()})
                if self.step % cfg.save_every == 0 and self.rank == 0:
                    self.save()
        except KeyboardInterrupt:
            if self.rank == 0:
                print(f"\ninterrupted at step {self.step}; checkpoint saved to {self.save()}", file=sys.stderr)
            raise
        if self.rank != 0:
            return self.out / EXPORT
        self.save()
        if cfg.progress:
            print(file=sys.stderr)
        if self.step % cfg.eval_every and self.eval_data is not None:
            self._log({"step": self.step, **self.evaluate()})
        return self.export_prior().save_pretrained(self.out / EXPORT)

    def close(self, barrier: bool = True) -> None:
        if self._owns_group:
            dist.teardown(barrier)
            self._owns_group = False


def train_prior(config: PriorTrainConfig | dict | str | os.PathLike, *, data: TokenData | None = None,
                eval_data: TokenData | None = None, **overrides: Any) -> Path:  # fmt: skip
    """Train (or resume) a prior; returns the exported prior folder (``out_dir/prior``).

    Args:
        config: a PriorTrainConfig, a dict, or a JSON file path.
        data, eval_data: in-memory :class:`TokenData` instead of the config's folders.
        overrides: config keys to replace (``steps=100``...).
    """
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        try:
            config = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p}: cannot read the prior train config ({e})") from None
    if isinstance(config, dict):
        config = PriorTrainConfig.from_dict(config)
    if overrides:
        config = PriorTrainConfig.from_dict({**config.to_dict(), **overrides})
    trainer = PriorTrainer(config, data, eval_data)
    try:
        out = trainer.run()
    except BaseException:
        trainer.close(barrier=False)
        raise
    trainer.close()
    return out

"""The trainer: ``train(TrainConfig)`` trains or fine-tunes any imagetok family on a folder of images.

Outputs in ``out_dir``: ``checkpoint.pt`` (written atomically every ``save_every`` steps, at the end
and on Ctrl-C), ``metrics.jsonl``, ``samples/step_XXXXXXX.png`` reconstruction grids, and
``model/`` (an imagetok model folder, exported at the end). Re-running with the same config resumes
from the checkpoint exactly: model, optimiser, weight EMA, step and codebook statistics are restored
and the data stream is a function of the step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import config_from_dict, config_to_dict
from ..errors import ConfigError
from ..image import from_tensor
from ..metrics import psnr, ssim
from ..models.quantizer import VectorQuantizer
from ..tokenizer import Tokenizer
from .codebook import UsageTracker, init_codebook
from .config import TrainConfig
from .data import ImageFolder, load_eval_images
from .losses import reconstruction_losses, vq_losses

log = logging.getLogger(__name__)
CKPT = "checkpoint.pt"


def _quantizers(model: torch.nn.Module) -> list[VectorQuantizer]:
    return [m for m in model.modules() if isinstance(m, VectorQuantizer)]


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _resume_key(cfg: TrainConfig) -> dict[str, Any]:
    """The parts of a config a checkpoint must agree with to be resumed."""
    return {"model": cfg.model, "init_from": cfg.init_from, "batch_size": cfg.batch_size, "crop_size": cfg.crop_size, "seed": cfg.seed}


class Trainer:
    """Holds the model, optimiser and state of one run. ``Trainer(cfg).run()`` or :func:`train`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.model is not None:
            self.tok = Tokenizer.from_config(cfg.model, seed=cfg.seed)
        else:
            self.tok = Tokenizer.from_pretrained(cfg.init_from)
        self.tok.name = self.out.name
        self.model = self.tok.model.train()
        self.quantizers = _quantizers(self.model)
        if not self.quantizers:
            raise ConfigError("this model has no trainable vector quantizer (Gumbel models cannot be trained here)")
        self.lo, self.hi = self.tok.config.input_range
        self.data = ImageFolder(cfg.data, cfg.crop_size, scale_range=cfg.scale_range, hflip=cfg.hflip, cache=cfg.cache_images)
        self.eval_x = load_eval_images(cfg.eval_data, cfg.eval_size)[0] if cfg.eval_data else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if cfg.ema_decay > 0 else None
        self.trackers = [UsageTracker(q.n_embed) for q in self.quantizers]
        self.step = 0
        self.metrics_path = self.out / "metrics.jsonl"
        self._resume()

    # ------------------------------------------------------------------ checkpointing
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema,
            "usage_counts": [t.counts for t in self.trackers],
            "resume_key": json.dumps(_resume_key(self.cfg), sort_keys=True),
        }

    def save(self) -> Path:
        path = self.out / CKPT
        _atomic_save(self.state(), path)
        return path

    def _resume(self) -> None:
        path = self.out / CKPT
        if not path.exists():
            return
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a checkpoint we wrote but cannot read: never overwrite it silently
            raise ConfigError(f"{path}: cannot read checkpoint ({e}); move it away to start afresh") from None
        if ck.get("resume_key") != json.dumps(_resume_key(self.cfg), sort_keys=True):
            raise ConfigError(
                f"{path} was written by a different run (model/init_from/batch_size/crop_size/seed differ); "
                "use another out_dir or restore the original config"
            )
        try:
            self.model.load_state_dict(ck["model"], strict=True)
            self.opt.load_state_dict(ck["opt"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(f"{path}: checkpoint does not fit this model/optimiser ({e})") from None
        self.ema = ck["ema"]
        for t, c in zip(self.trackers, ck["usage_counts"]):
            t.counts = c
        self.step = int(ck["step"])
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ training
    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.hi - self.lo) + self.lo

    def _init_codebooks(self) -> None:
        if self.cfg.codebook_init == "none":
            return
        need = max(q.n_embed for q in self.quantizers) * 2
        latents: list[list[torch.Tensor]] = [[] for _ in self.quantizers]
        i = 0
        with torch.no_grad():
            while sum(t.shape[0] for t in latents[-1]) < need and i < 64:
                x = self._to_model(self.data.batch(self.cfg.batch_size, self.cfg.seed, 2**31 + i, _rank()))
                _, qs = self.model(x)
                for buf, q in zip(latents, qs):
                    buf.append(q.latents.permute(0, 2, 3, 1).reshape(-1, q.latents.shape[1]))
                i += 1
        for k, (qz, buf) in enumerate(zip(self.quantizers, latents)):
            init_codebook(qz, torch.cat(buf), self.cfg.codebook_init, self.cfg.seed + k)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = _lr(cfg, self.step)
        totals: dict[str, float] = {}
        last_latents = []
        for micro in range(cfg.grad_accum):
            x = self._to_model(self.data.batch(cfg.batch_size, cfg.seed, self.step * cfg.grad_accum + micro, _rank()))
            with torch.autocast("cpu" if x.device.type == "cpu" else x.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                rec, qs = self.model(x)
            parts = reconstruction_losses(rec, x, (self.lo, self.hi))
            loss = cfg.l1_weight * parts["l1"] + cfg.l2_weight * parts["l2"] + cfg.ssim_weight * parts["ssim"]
            for q, tracker in zip(qs, self.trackers):
                cb, commit = vq_losses(q)
                loss = loss + cfg.codebook_weight * cb + cfg.commitment_beta * commit
                parts["codebook"] = parts.get("codebook", 0) + cb.detach()
                parts["commit"] = parts.get("commit", 0) + commit.detach()
                tracker.update(q.indices)
            (loss / cfg.grad_accum).backward()
            parts["loss"] = loss.detach()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) / cfg.grad_accum
            last_latents = [q.latents.detach().permute(0, 2, 3, 1).reshape(-1, q.latents.shape[1]) for q in qs]
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    if v.is_floating_point():
                        self.ema[k].lerp_(v, 1 - cfg.ema_decay)
                    else:
                        self.ema[k].copy_(v)
        if cfg.restart_every and self.step % cfg.restart_every == 0:
            totals["restarted"] = 0
            for k, (qz, tracker, lat) in enumerate(zip(self.quantizers, self.trackers, last_latents)):
                stats = tracker.stats()
                totals[f"usage{k}"], totals[f"perplexity{k}"] = stats["usage"], stats["perplexity"]
                totals["restarted"] += tracker.restart_dead(qz, lat, cfg.seed * 1_000_003 + self.step + k)
        return totals

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """PSNR/SSIM/codebook usage on the eval images with the (EMA) weights; writes a sample grid."""
        if self.eval_x is None:
            return {}
        model = self.export_tokenizer().model if self.ema is not None else self.model
        model.eval()
        tok = Tokenizer(model, self.tok.config)
        x = self.eval_x
        tokens = tok.encode_pixels(x)
        y = tok.decode_pixels(tokens)
        self.model.train()
        levels = tokens if isinstance(tokens, tuple) else (tokens,)
        used = [len(torch.unique(t)) / k for t, k in zip(levels, tok.codebook_sizes)]
        grid = torch.cat([torch.cat(list(x), 2), torch.cat(list(y), 2)], 1)
        samples = self.out / "samples"
        samples.mkdir(exist_ok=True)
        from_tensor(grid[None], "pil")[0].save(samples / f"step_{self.step:07d}.png")
        return {"eval_psnr": float(psnr(x, y).mean()), "eval_ssim": float(ssim(x, y).mean()), "eval_usage": used[-1]}

    def export_tokenizer(self) -> Tokenizer:
        """A Tokenizer with the current weights (EMA weights when enabled), in eval mode."""
        from ..models import build_model

        model = build_model(self.tok.config)
        model.load_state_dict(self.ema if self.ema is not None else self.model.state_dict())
        return Tokenizer(model, self.tok.config, name=self.tok.name)

    def export(self, metrics: dict[str, Any] | None = None) -> Path:
        card = {
            "description": f"Trained with `imagetok train` for {self.step} steps on {self.cfg.data}.",
            "metrics": metrics,
            "source": f"imagetok train (config: {json.dumps(self.cfg.to_dict())})",
        }
        return self.export_tokenizer().save_pretrained(self.out / "model", card=card)

    def _last_eval(self) -> dict[str, Any]:
        if not self.metrics_path.exists():
            return {}
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if "eval_psnr" in line]
        return rows[-1] if rows else {}

    def _log(self, record: dict[str, Any]) -> None:
        if _rank() == 0:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self) -> Path:
        cfg = self.cfg
        if self.step == 0:
            self._init_codebooks()
        t0, s0 = time.time(), self.step
        try:
            while self.step < cfg.steps:
                rec = self.train_step()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = (self.step - s0) / max(1e-9, time.time() - t0)
                    rec.update(step=self.step, lr=_lr(cfg, self.step - 1), steps_per_s=round(rate, 4))
                    if "restarted" not in rec:  # a restart step already reported (and reset) the window
                        for k, tr in enumerate(self.trackers):
                            rec.update({f"usage{k}": tr.stats()["usage"]})
                    self._log(rec)
                    if cfg.progress and _rank() == 0:
                        eta = (cfg.steps - self.step) / max(rate, 1e-9)
                        print(
                            f"\rstep {self.step}/{cfg.steps} loss {rec['loss']:.4f} {rate:.2f} steps/s ETA {eta / 60:.1f} min",
                            end="", file=sys.stderr, flush=True,
                        )  # fmt: skip
                if self.step % cfg.eval_every == 0 and _rank() == 0:
                    self._log({"step": self.step, **self.evaluate()})
                if self.step % cfg.save_every == 0 and _rank() == 0:
                    self.save()
        except KeyboardInterrupt:
            if _rank() == 0:
                path = self.save()
                print(f"\ninterrupted at step {self.step}; checkpoint saved to {path}", file=sys.stderr)
            raise
        if _rank() == 0:
            self.save()
            final = self.evaluate() if self.step % cfg.eval_every else {}
            if final:
                self._log({"step": self.step, **final})
            if cfg.progress:
                print(file=sys.stderr)
            return self.export(final or self._last_eval() or None)
        return self.out / "model"


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def train(config: TrainConfig | dict | str | os.PathLike) -> Path:
    """Train (or resume) a run; returns the exported model folder.

    Args:
        config: a TrainConfig, a dict, or the path of a JSON train config.
    """
    if isinstance(config, (str, os.PathLike)):
        config = TrainConfig.from_json(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if config.model is not None:
        config_to_dict(config_from_dict(config.model))  # validate the model config early
    return Trainer(config).run()

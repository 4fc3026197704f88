"""The trainer: ``train(TrainConfig)`` trains or fine-tunes any imagetok family on a folder of images.

Outputs in ``out_dir``: ``checkpoint.pt`` (written atomically every ``save_every`` steps, at the end
and on Ctrl-C), ``metrics.jsonl``, ``samples/step_XXXXXXX.png`` reconstruction grids, and
``model/`` (an imagetok model folder, exported at the end). Re-running with the same config resumes
from the checkpoint exactly: model, optimiser, weight EMA, step, codebook statistics (and the
discriminator, EMA codebook statistics and dropout RNG when used) are restored, and the data stream
is a function of the step.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel (gloo on
CPU, NCCL on CUDA); each rank draws its own batches, codebook statistics are all-reduced, and only
rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from tqdm.auto import tqdm

from ..config import config_from_dict, config_to_dict
from ..errors import ConfigError
from ..image import from_tensor
from ..metrics import psnr, ssim
from ..models.fsq import FSQuantizer
from ..models.lfq import LFQuantizer
from ..models.quantizer import VectorQuantizer
from ..tokenizer import Tokenizer
from . import dist
from .codebook import EMACodebook, UsageTracker, init_codebook
from .config import TrainConfig
from .data import ImageFolder, load_eval_images
from .discriminator import NLayerDiscriminator
from .losses import adaptive_weight, d_loss, g_loss, reconstruction_losses, scalar_quantizer_losses, vq_losses

log = logging.getLogger(__name__)
CKPT = "checkpoint.pt"


def _quantizers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The trainable quantizers: nearest-code VQ, and the codebook-free LFQ / FSQ."""
    return [m for m in model.modules() if isinstance(m, (VectorQuantizer, LFQuantizer, FSQuantizer))]


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to ``path.tmp``, fsync, then rename over ``path``: a crash or a full disk leaves the
    previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _resume_key(cfg: TrainConfig) -> dict[str, Any]:
    """The parts of a config a checkpoint must agree with to be resumed."""
    return {"model": cfg.model, "init_from": cfg.init_from, "batch_size": cfg.batch_size, "crop_size": cfg.crop_size, "seed": cfg.seed}


def _last_layer(model: torch.nn.Module) -> torch.Tensor:
    """Weight of the decoder's output convolution (taming's ``get_last_layer``), for the adaptive GAN weight."""
    decoder = getattr(model, "decoder", None) or getattr(model, "dec", None)
    convs = [m for m in (decoder or model).modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    if not convs:
        raise ConfigError("cannot find the decoder's last convolution for the adaptive GAN weight")
    return convs[-1].weight


def _has_dropout(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


class Trainer:
    """Holds the model, optimiser and state of one run. ``Trainer(cfg).run()`` or :func:`train`.

    Attributes:
        model: the imagetok model being trained (unwrapped; ``net`` is the DDP wrapper when distributed).
        device: where training runs (``cfg.device``; ``cuda:LOCAL_RANK`` under torchrun).
        data: the :class:`~imagetok.train.data.ImageFolder` (``data.skipped`` lists unusable files).
        step: optimiser steps done.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = dist.resolve_device(cfg.device)
        self._owns_group = dist.setup(self.device)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        torch.manual_seed(cfg.seed * 1000 + self.rank)  # dropout masks: reproducible, different per rank
        self.out = Path(cfg.out_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.model is not None:
            self.tok = Tokenizer.from_config(cfg.model, seed=cfg.seed)
        else:
            self.tok = Tokenizer.from_pretrained(cfg.init_from)
        self.tok.name = self.out.name
        self.model = self.tok.model.to(self.device).train()
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.quantizers = _quantizers(self.model)
        if not self.quantizers:
            raise ConfigError("this model has no trainable vector quantizer (Gumbel models cannot be trained here)")
        factor = max(self.tok.config.downsample_factors)
        for name in ("crop_size", "eval_size") if cfg.eval_data else ("crop_size",):
            if getattr(cfg, name) % factor:
                size = getattr(cfg, name)
                raise ConfigError(f"{name} {size} must be a multiple of the model's downsampling factor {factor} (e.g. {max(factor, size // factor * factor)})")
        self.lo, self.hi = self.tok.config.input_range
        self.data = ImageFolder(cfg.data, cfg.crop_size, scale_range=cfg.scale_range, hflip=cfg.hflip, cache=cfg.cache_images)
        self.eval_x = load_eval_images(cfg.eval_data, cfg.eval_size)[0] if cfg.eval_data else None
        self.scalar = not isinstance(self.quantizers[0], VectorQuantizer)  # LFQ / FSQ: no codebook to learn
        if self.scalar and (cfg.codebook_ema or cfg.restart_every):
            raise ConfigError("codebook_ema and restart_every need a learned codebook; LFQ/FSQ models have none")
        if cfg.codebook_ema:  # codes move by EMA only: no codebook loss, not in the optimiser
            for q in self.quantizers:
                q.embedding.weight.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if cfg.ema_decay > 0 else None
        self.trackers = [UsageTracker(q.n_embed) for q in self.quantizers]
        self.codebook_ema: list[EMACodebook] | None = None  # created after the codebook initialisation
        self.lpips = self._perceptual()
        self.disc = self.disc_opt = None
        if cfg.disc_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.disc = NLayerDiscriminator(3, cfg.disc_channels, cfg.disc_layers).to(self.device).train()
            self.disc_opt = torch.optim.AdamW(
                self.disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
            )
            self.last_layer = _last_layer(self.model)
        self.step = 0
        self.metrics_path = self.out / "metrics.jsonl"
        self._resume()
        self.net, self.disc_net = self.model, self.disc
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
            if self.disc is not None:
                self.disc_net = DDP(self.disc, device_ids=ids)

    def _perceptual(self):
        cfg = self.cfg
        if cfg.perceptual_weight == 0:
            if cfg.perceptual_weights:
                log.info("perceptual_weight is 0: the LPIPS loss is off (perceptual_weights not loaded)")
            return None
        from .perceptual import load_lpips

        return load_lpips(cfg.perceptual_weights).to(self.device)

    # ------------------------------------------------------------------ checkpointing
    def state(self, usage_counts: list[torch.Tensor] | None = None) -> dict[str, Any]:
        """Everything a resume needs (``torch.save``-able, loadable with ``weights_only=True``).

        Keys: step, model, opt, ema, usage_counts, resume_key; plus disc/disc_opt with a
        discriminator, codebook_ema with EMA codebooks, rng when the model has dropout, and
        world_size under torchrun.
        """
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema,
            "usage_counts": usage_counts if usage_counts is not None else [t.counts for t in self.trackers],
            "resume_key": json.dumps(_resume_key(self.cfg), sort_keys=True),
        }
        if self.disc is not None:
            state["disc"], state["disc_opt"] = self.disc.state_dict(), self.disc_opt.state_dict()
        if self.codebook_ema is not None:
            state["codebook_ema"] = [e.state_dict() for e in self.codebook_ema]
        if _has_dropout(self.model):
            state["rng"] = {"cpu": torch.get_rng_state()}
            if self.device.type == "cuda":
                state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world_size > 1:
            state["world_size"] = self.world_size
        return state

    def save(self, usage_counts: list[torch.Tensor] | None = None) -> Path:
        """Write ``checkpoint.pt`` atomically (and ``checkpoints/step_XXXXXXX.pt`` when ``keep_last`` is off)."""
        path = self.out / CKPT
        state = self.state(usage_counts)
        _atomic_save(state, path)
        if not self.cfg.keep_last:
            (self.out / "checkpoints").mkdir(exist_ok=True)
            _atomic_save(state, self.out / "checkpoints" / f"step_{self.step:07d}.pt")
        return path

    def _save_synced(self) -> None:
        """Checkpoint with codebook counts summed over ranks (every rank must call this)."""
        counts = [t.reduced() for t in self.trackers]
        if self.rank == 0:
            self.save(counts)

    def _resume(self) -> None:
        path = self.out / CKPT
        if not path.exists():
            return
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a checkpoint we wrote but cannot read: never overwrite it silently
            raise ConfigError(f"{path}: cannot read checkpoint ({e}); move it away to start afresh") from None
        if not isinstance(ck, dict) or not {"step", "model", "opt", "resume_key"} <= set(ck):
            raise ConfigError(f"{path} is not an imagetok training checkpoint; use another out_dir or move it away")
        if ck.get("resume_key") != json.dumps(_resume_key(self.cfg), sort_keys=True):
            try:
                saved = json.loads(ck["resume_key"])
                differ = sorted(k for k, v in _resume_key(self.cfg).items() if json.dumps(saved.get(k), sort_keys=True) != json.dumps(v, sort_keys=True))
            except (TypeError, ValueError, AttributeError):
                differ = ["model", "init_from", "batch_size", "crop_size", "seed"]
            raise ConfigError(
                f"{path} was written by a different run ({', '.join(differ)} differ); "
                "use another out_dir or restore the original config"
            )
        if ("codebook_ema" in ck) != self.cfg.codebook_ema:
            raise ConfigError(f"{path} was written with codebook_ema={'codebook_ema' in ck}; the config says {self.cfg.codebook_ema}")
        try:
            self.model.load_state_dict(ck["model"], strict=True)
            self.opt.load_state_dict(ck["opt"])
            if self.disc is not None and "disc" in ck:
                self.disc.load_state_dict(ck["disc"], strict=True)
                self.disc_opt.load_state_dict(ck["disc_opt"])
            if self.cfg.codebook_ema:
                self.codebook_ema = [EMACodebook(q, self.cfg.codebook_ema_decay) for q in self.quantizers]
                for e, s in zip(self.codebook_ema, ck["codebook_ema"]):
                    e.load_state_dict(s)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(f"{path}: checkpoint does not fit this model/optimiser ({e})") from None
        if self.disc is not None and "disc" not in ck:
            log.warning("%s has no discriminator: starting one from scratch", path)
        elif self.disc is None and "disc" in ck:
            log.warning("%s has a discriminator but disc_weight is 0: dropping it", path)
        if self.cfg.ema_decay == 0:
            self.ema = None
        elif ck["ema"] is not None:
            self.ema = {k: v.to(self.device) for k, v in ck["ema"].items()}
        else:  # EMA switched on for a resumed run: start it at the resumed weights
            self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for t, c in zip(self.trackers, ck["usage_counts"]):
            t.counts = c if self.rank == 0 else torch.zeros_like(c)  # saved counts are summed over ranks
        if "rng" in ck:
            torch.set_rng_state(ck["rng"]["cpu"])
            if "cuda" in ck["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
        if ck.get("world_size", 1) != self.world_size:
            log.warning("%s was written by %d process(es), now %d: the data order differs from an uninterrupted run",
                        path, ck.get("world_size", 1), self.world_size)  # fmt: skip
        self.step = int(ck["step"])
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ training
    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        x = x * (self.hi - self.lo) + self.lo
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _init_codebooks(self) -> None:
        if self.cfg.codebook_init == "none" or self.scalar:
            return
        if self.cfg.init_from is not None:
            log.info("fine-tuning: keeping the pretrained codebook(s) (codebook_init applies to models trained from scratch)")
            return
        need = max(q.n_embed for q in self.quantizers) * 2
        latents: list[list[torch.Tensor]] = [[] for _ in self.quantizers]
        i = 0
        with torch.no_grad():
            while sum(t.shape[0] for t in latents[-1]) < need and i < 64:
                x = self._to_model(self.data.batch(self.cfg.batch_size, self.cfg.seed, 2**31 + i, self.rank).to(self.device))
                _, qs = self.model(x)
                for buf, q in zip(latents, qs):
                    buf.append(q.latents.permute(0, 2, 3, 1).reshape(-1, q.latents.shape[1]))
                i += 1
        for k, (qz, buf) in enumerate(zip(self.quantizers, latents)):
            init_codebook(qz, torch.cat(buf), self.cfg.codebook_init, self.cfg.seed + k)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches); returns the averaged loss terms."""
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = _lr(cfg, self.step)
        gan = self.disc is not None and self.step >= cfg.disc_start
        if gan:
            for g in self.disc_opt.param_groups:
                g["lr"] = _lr(cfg, self.step) * (cfg.disc_lr or cfg.lr) / cfg.lr
        totals: dict[str, float] = {}
        last_latents = []
        for micro in range(cfg.grad_accum):
            x = self._to_model(self.data.batch(cfg.batch_size, cfg.seed, self.step * cfg.grad_accum + micro, self.rank).to(self.device))
            last = micro == cfg.grad_accum - 1
            with self._no_sync(last):
                with self._autocast():
                    rec, qs = self.net(x)
                parts = reconstruction_losses(rec, x, (self.lo, self.hi))
                loss = cfg.l1_weight * parts["l1"] + cfg.l2_weight * parts["l2"] + cfg.ssim_weight * parts["ssim"]
                if self.lpips is not None:
                    with self._autocast():
                        parts["perceptual"] = self.lpips(self._to_pm1(x), self._to_pm1(rec)).mean()
                    loss = loss + cfg.perceptual_weight * parts["perceptual"]
                nll = loss
                for k, (q, tracker) in enumerate(zip(qs, self.trackers)):
                    if self.scalar:
                        aux, aux_parts = scalar_quantizer_losses(
                            self.quantizers[k], q, commitment_beta=cfg.commitment_beta, entropy_weight=cfg.entropy_weight,
                            entropy_temperature=cfg.entropy_temperature, entropy_batch_weight=cfg.entropy_batch_weight,
                        )  # fmt: skip
                        loss = loss + aux
                        parts.update(aux_parts)
                        tracker.update(q.indices)
                        continue
                    cb, commit = vq_losses(q)
                    if self.codebook_ema is not None:  # the EMA moves the codes; the encoder still commits
                        loss = loss + cfg.commitment_beta * commit
                        self.codebook_ema[k].accumulate(q.latents.detach().permute(0, 2, 3, 1).reshape(-1, q.latents.shape[1]), q.indices)
                    else:
                        loss = loss + cfg.codebook_weight * cb + cfg.commitment_beta * commit
                    parts["codebook"] = parts.get("codebook", 0) + cb.detach()
                    parts["commit"] = parts.get("commit", 0) + commit.detach()
                    tracker.update(q.indices)
                if gan:
                    loss = loss + self._generator_gan_term(nll, rec, parts)
                (loss / cfg.grad_accum).backward()
            if gan:
                with self._no_sync(last, self.disc_net):
                    with self._autocast():
                        real, fake = self.disc_net(x.detach()), self.disc_net(rec.detach())
                    parts["d_loss"] = d_loss(real, fake, cfg.disc_loss)
                    (parts["d_loss"] / cfg.grad_accum).backward()
                    parts["logits_real"], parts["logits_fake"] = real.detach().float().mean(), fake.detach().float().mean()
            parts["loss"] = loss.detach()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) / cfg.grad_accum
            last_latents = [q.latents.detach().permute(0, 2, 3, 1).reshape(-1, q.latents.shape[1]) for q in qs]
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if gan:
            self.disc_opt.step()
            self.disc_opt.zero_grad(set_to_none=True)
            if self.world_size > 1:  # BatchNorm running statistics are rank-local: keep rank 0's everywhere
                for b in self.disc.buffers():
                    torch_dist.broadcast(b, 0)
        if self.codebook_ema is not None:
            for qz, e in zip(self.quantizers, self.codebook_ema):
                e.step(qz)
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
                ema = self.codebook_ema[k] if self.codebook_ema is not None else None
                totals["restarted"] += tracker.restart_dead(qz, lat, cfg.seed * 1_000_003 + self.step + k, ema)
        return totals

    def _to_pm1(self, x: torch.Tensor) -> torch.Tensor:
        """Model range -> [-1, 1] (what LPIPS expects)."""
        return (x - self.lo) / (self.hi - self.lo) * 2 - 1

    def _no_sync(self, last: bool, net: torch.nn.Module | None = None):
        """Skip the DDP gradient all-reduce on all but the last micro-batch of a step."""
        net = self.net if net is None else net
        return contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()

    def _generator_gan_term(self, nll: torch.Tensor, rec: torch.Tensor, parts: dict) -> torch.Tensor:
        """``d_weight * g_loss`` with taming's adaptive weight; the discriminator is frozen here."""
        cfg = self.cfg
        self.disc.requires_grad_(False)  # no discriminator gradients (nor DDP hooks) from this term
        try:
            with self._autocast():
                logits = self.disc(rec)
        finally:
            self.disc.requires_grad_(True)
        gen = g_loss(logits, cfg.disc_loss)
        weight = adaptive_weight(nll, gen, self.last_layer)
        if self.world_size > 1:  # same weight on every rank (local gradients differ)
            torch_dist.all_reduce(weight)
            weight = weight / self.world_size
        parts["g_loss"], parts["d_weight"] = gen.detach(), weight
        return cfg.disc_weight * weight * gen

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """PSNR/SSIM/codebook usage on the eval images with the (EMA) weights; writes a sample grid."""
        if self.eval_x is None:
            return {}
        model = self.export_tokenizer().model.to(self.device) if self.ema is not None else self.model
        model.eval()
        tok = Tokenizer(model, self.tok.config)
        x = self.eval_x
        tokens = tok.encode_pixels(x)
        y = tok.decode_pixels(tokens).cpu()
        self.model.train()
        levels = tokens if isinstance(tokens, tuple) else (tokens,)
        used = [len(torch.unique(t)) / k for t, k in zip(levels, tok.codebook_sizes)]
        grid = torch.cat([torch.cat(list(x), 2), torch.cat(list(y), 2)], 1)
        samples = self.out / "samples"
        samples.mkdir(exist_ok=True)
        from_tensor(grid[None], "pil")[0].save(samples / f"step_{self.step:07d}.png")
        return {"eval_psnr": float(psnr(x, y).mean()), "eval_ssim": float(ssim(x, y).mean()), "eval_usage": used[-1]}

    def export_tokenizer(self) -> Tokenizer:
        """A Tokenizer with the current weights (EMA weights when enabled), on the CPU, in eval mode."""
        from ..models import build_model

        model = build_model(self.tok.config)
        model.load_state_dict(self.ema if self.ema is not None else self.model.state_dict())
        return Tokenizer(model, self.tok.config, name=self.tok.name)

    def export(self, metrics: dict[str, Any] | None = None) -> Path:
        """Save the result as an imagetok model folder ``out_dir/model`` (config.json, model.safetensors, README.md)."""
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
        if self.rank == 0:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self) -> Path:
        """Train to ``cfg.steps`` (resuming if a checkpoint exists); returns the exported model folder.

        Ctrl-C saves a checkpoint and re-raises KeyboardInterrupt; running again resumes.
        """
        cfg = self.cfg
        self._log({"event": "start", "step": self.step, "images": len(self.data), "skipped": len(self.data.skipped),
                   "world_size": self.world_size, "device": str(self.device)})  # fmt: skip
        if self.data.skipped and self.rank == 0:
            print(f"imagetok train: skipped {len(self.data.skipped)} unusable image(s) of {cfg.data}, e.g. "
                  f"{next(iter(self.data.skipped.items()))}", file=sys.stderr)  # fmt: skip
        if self.device.type == "cpu" and torch.get_num_threads() > 1 and "OMP_WAIT_POLICY" not in os.environ:
            log.info("%d CPU threads: on a busy machine set OMP_WAIT_POLICY=PASSIVE, or use num_threads 1 with one "
                     "torchrun process per core (see the README)", torch.get_num_threads())  # fmt: skip
        if self.step == 0:
            self._init_codebooks()
        if cfg.codebook_ema and self.codebook_ema is None:
            self.codebook_ema = [EMACodebook(q, cfg.codebook_ema_decay) for q in self.quantizers]
        t0, s0 = time.time(), self.step
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and self.rank == 0))
        try:
            while self.step < cfg.steps:
                rec = self.train_step()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = (self.step - s0) / max(1e-9, time.time() - t0)
                    rec.update(step=self.step, lr=_lr(cfg, self.step - 1), steps_per_s=round(rate, 4))
                    if "restarted" not in rec:  # a restart step already reported (and reset) the window
                        for k, tr in enumerate(self.trackers):
                            stats = tr.stats()
                            rec.update({f"usage{k}": stats["usage"], f"perplexity{k}": stats["perplexity"]})
                    self._log(rec)
                    bar.update(self.step - bar.n)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
                if self.step % cfg.eval_every == 0 and self.rank == 0:
                    self._log({"step": self.step, **self.evaluate()})
                if self.step % cfg.save_every == 0:
                    self._save_synced()
        except KeyboardInterrupt:
            bar.close()
            if self.rank == 0:  # no collectives here: other ranks may be anywhere
                path = self.save()
                print(f"\ninterrupted at step {self.step}; checkpoint saved to {path}", file=sys.stderr)
            raise
        bar.close()
        self._save_synced()
        if self.rank == 0:
            final = self.evaluate() if self.step % cfg.eval_every else {}
            if final:
                self._log({"step": self.step, **final})
            return self.export(final or self._last_eval() or None)
        return self.out / "model"

    def close(self, barrier: bool = True) -> None:
        """End the process group if this trainer started it; with ``barrier``, first wait for every
        rank (so rank 0 finishes writing before the others exit)."""
        if self._owns_group:
            dist.teardown(barrier)
            self._owns_group = False


def train(config: TrainConfig | dict | str | os.PathLike, **overrides: Any) -> Path:
    """Train (or resume) a run; returns the exported model folder (``out_dir/model``).

    Args:
        config: a TrainConfig, a dict, or the path of a JSON train config.
        overrides: config keys to replace, e.g. ``steps=100, out_dir="runs/x"``.

    Under torchrun every rank calls this; the process group is started from the environment and
    ended at the end.
    """
    if isinstance(config, (str, os.PathLike)):
        config = TrainConfig.from_json(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    if config.model is not None:
        config_to_dict(config_from_dict(config.model))  # validate the model config early
    trainer = Trainer(config)
    try:
        out = trainer.run()
    except BaseException:
        trainer.close(barrier=False)  # other ranks may never reach a barrier
        raise
    trainer.close()
    return out

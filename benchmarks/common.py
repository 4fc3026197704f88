"""Shared helpers for the imagetok benchmarks (not part of the library).

- CONFIGS: the VQGAN configs benchmarked (taming f16-16384 and LDM vq-f8), as imagetok configs.
- build_imagetok / build_diffusers / build_taming: the same weights in three implementations.
- timing helpers: interleaved (ABAB...) runs in one process, medians and bests.
- machine(): CPU model, thread count, torch version and load average for the record.

The diffusers model is built from the imagetok weights with the key mapping in
``imagetok_to_diffusers`` (taming names -> diffusers names; 1x1 attention convs -> Linear).
taming's modules come from the ``taming-transformers`` 0.0.1 wheel installed with ``--no-deps``
(its Encoder/Decoder import with torch and numpy only); the quantizer step uses taming's
``VectorQuantizer2`` formula (``|z|^2 + |e|^2 - 2 z.e`` then argmin, embedding lookup).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from imagetok import Tokenizer
from imagetok.config import VQGANConfig

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

# taming VQGAN ImageNet f16-16384 and LDM vq-f8 (the f8 models with a 4-dim, 16384-code codebook).
CONFIGS: dict[str, dict[str, Any]] = {
    "f16": dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], z_channels=256,
                embed_dim=256, n_embed=16384, resolution=256),
    "f8": dict(ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[32], z_channels=4,
               embed_dim=4, n_embed=16384, resolution=256),
    # the bundled model's architecture (examples/bundled/train.json)
    "bundled": dict(ch=32, ch_mult=[1, 2, 4, 8], num_res_blocks=1, attn_resolutions=[], mid_attn=True,
                    z_channels=64, embed_dim=8, n_embed=4096, codebook_norm="l2", resolution=256),
}


# ----------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    """What a result line needs to be compared: CPU, cores, threads, versions, load."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ------------------------------------------------------------------------------------ timing
def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1, device: str = "cpu") -> dict[str, list[float]]:
    """Time each function ``reps`` times, alternating A B C A B C ..., after ``warmup`` rounds.

    Returns seconds per call for each name.
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return times


def summary(ts: list[float]) -> dict[str, float]:
    return {"median": statistics.median(ts), "best": min(ts), "n": len(ts)}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def markdown_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def count_flops(fn: Callable[[], Any]) -> float:
    """GFLOP of one call (conv/mm/bmm only, 2 x MAC), via FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


# ------------------------------------------------------------------------------------ models
def imagetok_config(name: str, **overrides: Any) -> VQGANConfig:
    from imagetok.config import config_from_dict

    return config_from_dict({"family": "vqgan", **CONFIGS[name], **overrides})


def build_imagetok(name: str, seed: int = 0) -> Tokenizer:
    """Random-weight imagetok tokenizer for ``CONFIGS[name]``."""
    return Tokenizer.from_config(imagetok_config(name), seed=seed)


def init_codebook_from_encoder(tok: Tokenizer, images: torch.Tensor, noise: float = 0.0, seed: int = 0) -> None:
    """Replace the codebook by encoder outputs (random latent vectors of ``images`` [B,3,H,W] in [0,1]).

    With random weights the taming init (U(-1/K, 1/K)) puts every code near 0, so all tokens tie;
    codes drawn from real latents give a codebook that a trained model's looks more like.
    """
    model = tok.model
    lo, hi = tok.config.input_range
    with torch.inference_mode():
        h = model.encode_latents(images * (hi - lo) + lo).float()
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    g = torch.Generator().manual_seed(seed)
    k = model.quantize.embedding.weight.shape[0]
    pick = torch.randint(0, flat.shape[0], (k,), generator=g)
    codes = flat[pick] + noise * flat.std() * torch.randn(k, flat.shape[1], generator=g)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(codes)


def _attn_key(prefix: str, rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    names = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    part, leaf = rest.split(".", 1)
    if part in ("q", "k", "v", "proj_out") and leaf == "weight":
        value = value[:, :, 0, 0]
    return f"{prefix}.{names[part]}.{leaf}", value


def imagetok_to_diffusers(state: dict[str, torch.Tensor], n_levels: int) -> dict[str, torch.Tensor]:
    """Rename a taming-layout VQGAN state dict to diffusers ``VQModel`` names (see performance.md)."""
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        p = key.split(".")
        new = key
        if p[0] in ("encoder", "decoder"):
            side, rest = p[0], p[1:]
            if rest[0] in ("conv_in", "conv_out"):
                new = key
            elif rest[0] == "norm_out":
                new = f"{side}.conv_norm_out.{'.'.join(rest[1:])}"
            elif rest[0] == "mid":
                sub = {"block_1": "resnets.0", "block_2": "resnets.1", "attn_1": "attentions.0"}[rest[1]]
                if rest[1] == "attn_1":
                    new, v = _attn_key(f"{side}.mid_block.attentions.0", ".".join(rest[2:]), v)
                else:
                    new = f"{side}.mid_block.{sub}.{'.'.join(rest[2:])}"
            elif rest[0] in ("down", "up"):
                i = int(rest[1])
                blocks = "down_blocks" if rest[0] == "down" else "up_blocks"
                bi = i if rest[0] == "down" else n_levels - 1 - i
                kind = rest[2]
                if kind == "block":
                    leaf = ".".join(rest[4:]).replace("nin_shortcut", "conv_shortcut")
                    new = f"{side}.{blocks}.{bi}.resnets.{rest[3]}.{leaf}"
                elif kind == "attn":
                    new, v = _attn_key(f"{side}.{blocks}.{bi}.attentions.{rest[3]}", ".".join(rest[4:]), v)
                elif kind in ("downsample", "upsample"):
                    samplers = "downsamplers" if kind == "downsample" else "upsamplers"
                    new = f"{side}.{blocks}.{bi}.{samplers}.0.{'.'.join(rest[3:])}"
        out[new] = v
    return out


def build_diffusers(tok: Tokenizer) -> nn.Module:
    """diffusers ``VQModel`` with the same config and weights as ``tok`` (strict load)."""
    from diffusers import VQModel

    c = tok.config
    res = [c.resolution // 2**i for i in range(len(c.ch_mult))]
    down = tuple("AttnDownEncoderBlock2D" if r in c.attn_resolutions else "DownEncoderBlock2D" for r in res)
    up = tuple("AttnUpDecoderBlock2D" if r in c.attn_resolutions else "UpDecoderBlock2D" for r in reversed(res))
    model = VQModel(
        in_channels=3, out_channels=3, down_block_types=down, up_block_types=up,
        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
        act_fn="silu", latent_channels=c.z_channels, vq_embed_dim=c.embed_dim, num_vq_embeddings=c.n_embed,
        norm_num_groups=32, sample_size=c.resolution, norm_type="group", mid_block_add_attention=c.mid_attn,
        lookup_from_codebook=True,
    )
    model.load_state_dict(imagetok_to_diffusers(tok.model.state_dict(), len(c.ch_mult)), strict=True)
    return model.eval()


def diffusers_encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [-1,1] -> [B,h,w] tokens with diffusers' own code (encode + quantize, cdist)."""
    h = model.encode(x).latents
    idx = model.quantize(h)[2][2]
    return idx.view(h.shape[0], h.shape[2], h.shape[3])


def diffusers_decode(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    b, h, w = idx.shape
    return model.decode(idx.reshape(-1), force_not_quantize=True,
                        shape=(b, h, w, model.config.vq_embed_dim)).sample


class TamingVQ(nn.Module):
    """taming's Encoder/Decoder (taming-transformers wheel) + the VectorQuantizer2 lookup (legacy)."""

    def __init__(self, c: VQGANConfig):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder

        dd = dict(double_z=False, z_channels=c.z_channels, resolution=c.resolution, in_channels=3, out_ch=3,
                  ch=c.ch, ch_mult=list(c.ch_mult), num_res_blocks=c.num_res_blocks,
                  attn_resolutions=list(c.attn_resolutions), dropout=0.0)
        self.encoder, self.decoder = Encoder(**dd), Decoder(**dd)
        self.quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(c.n_embed, c.embed_dim)
        self.embed_dim = c.embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.quant_conv(self.encoder(x))
        b, _, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).contiguous().view(-1, self.embed_dim)
        e = self.quantize.embedding.weight
        d = (zf**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * torch.einsum("bd,dn->bn", zf, e.t())
        return d.argmin(1).view(b, h, w)

    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        zq = self.quantize.embedding(idx).permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(zq))


def build_taming(tok: Tokenizer) -> nn.Module | None:
    """taming's modules with ``tok``'s weights, or None when taming is not installed."""
    try:
        model = TamingVQ(tok.config)
    except ImportError:
        return None
    model.load_state_dict(tok.model.state_dict(), strict=True)
    return model.eval()


def load_photos(folder: str | os.PathLike, size: int = 256) -> tuple[list[str], torch.Tensor]:
    """JPEG/PNG files of ``folder`` -> (names, float32 [N,3,size,size] in [0,1]) (resize + centre crop)."""
    from imagetok import image as _image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    arrays, _, _ = _image.to_rgb_arrays([str(p) for p in files])
    return [p.name for p in files], _image.to_tensor([_image.fit(a, size, 16) for a in arrays])


def free() -> None:
    gc.collect()

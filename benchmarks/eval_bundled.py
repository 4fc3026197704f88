"""Evaluate a tokenizer the way the bundled model's card reports it.

Protocol (imagetok-photos-v2; v1 was the first three items):
- reconstruction on ``DATA/dev``: shorter side resized to S (bicubic), centre crop SxS, encode ->
  decode, PSNR and SSIM (11x11 Gaussian, data range 1) on float images in [0, 1], mean over images;
  S = 256 and S = 512; per image also the colour shift (largest per-channel error of the mean
  colour, in 1/255) and the same-bits bicubic baseline: shrink to 1/8 size (bicubic), store 4 bits
  per channel (12 bits per position, the bits of one of 4096 codes), upsample (bicubic); the count
  of images on which the tokenizer's PSNR beats it;
- codebook usage over ``DATA/dev`` alone and over ``DATA/train`` + ``DATA/dev``, at S = 256 and
  S = 512 (one centre crop per image and size): fraction of codes used, perplexity;
- colour chart: each colour of ``imagetok.metrics.COLOR_CHART`` (24 ColorChecker patches, 6
  saturated primaries/secondaries) as a flat 64x64 image, encoded on its own; the reconstructed
  mean colour and its largest per-channel error in 1/255;
- latency: encode + decode of one 256x256 image, median and best of N runs, with the thread count.

Usage: python benchmarks/eval_bundled.py --data data/photos [--model M] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagetok import Tokenizer
from imagetok.metrics import COLOR_CHART, mean_color_error, psnr, ssim
from imagetok.train.data import load_eval_images
from imagetok.usage import UsageCounter


def bicubic_baseline(x: torch.Tensor, factor: int = 8, bits: int = 4) -> torch.Tensor:
    """Same-bits thumbnail of ``[B, 3, H, W]`` images in [0, 1]: shrink by ``factor`` (bicubic,
    Pillow), quantize to ``bits`` per channel, upsample back (bicubic). Returns the same shape."""
    levels = 2**bits - 1
    out = []
    for xi in x:
        img = Image.fromarray((xi.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        w, h = img.size
        small = np.asarray(img.resize((w // factor, h // factor), Image.Resampling.BICUBIC), np.float32) / 255
        small = np.round(small * levels) / levels
        up = Image.fromarray((small * 255).round().astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(up, np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out)


def reconstruction(tok: Tokenizer, folder: Path, size: int) -> dict:
    x, names = load_eval_images(folder, size)
    y = torch.cat([tok.decode_pixels(tok.encode_pixels(xi[None])) for xi in x]).clamp(0, 1)
    p, s, shift = psnr(x, y), ssim(x, y), mean_color_error(x, y)
    b = bicubic_baseline(x)
    pb, sb = psnr(x, b), ssim(x, b)
    return {
        "size": size,
        "images": len(names),
        "psnr": round(float(p.mean()), 3),
        "ssim": round(float(s.mean()), 4),
        "color_shift_mean": round(float(shift.mean()), 2),
        "color_shift_max": round(float(shift.max()), 2),
        "images_color_shift_le_8": int((shift <= 8).sum()),
        "bicubic_same_bits": {"psnr": round(float(pb.mean()), 3), "ssim": round(float(sb.mean()), 4)},
        "beats_bicubic": int((p > pb).sum()),
        "per_image": {
            n: {"psnr": round(float(a), 2), "ssim": round(float(c), 4), "color_shift": round(float(d), 2),
                "bicubic_psnr": round(float(e), 2)}
            for n, a, c, d, e in zip(names, p, s, shift, pb)
        },
    }  # fmt: skip


def color_chart(tok: Tokenizer, tile: int = 64) -> dict:
    """Each COLOR_CHART colour as a flat tile x tile image, encoded alone; reconstructed means."""
    out = {}
    for name, rgb in COLOR_CHART.items():
        x = (torch.tensor(rgb, dtype=torch.float32) / 255).view(1, 3, 1, 1).expand(1, 3, tile, tile).contiguous()
        y = tok.decode_pixels(tok.encode_pixels(x)).clamp(0, 1)
        mean = (y.float().mean((2, 3))[0] * 255).tolist()
        out[name] = {"input": list(rgb), "output": [round(v, 1) for v in mean],
                     "error": round(float(mean_color_error(x, y)[0]), 2)}  # fmt: skip
    errs = [v["error"] for v in out.values()]
    return {"tile": tile, "max_error": max(errs), "patches_within_6": sum(e <= 6 for e in errs), "patches": len(errs), "per_patch": out}


def usage(tok: Tokenizer, folders: list[Path], sizes: list[int]) -> dict:
    counter = UsageCounter(tok.codebook_sizes[-1], max_position_cells=0)  # crops of two sizes: no per-position map
    n_images = 0
    for size in sizes:
        for folder in folders:
            x, _ = load_eval_images(folder, size)
            for xi in x:
                t = tok.encode_pixels(xi[None])
                counter.update(t[-1] if isinstance(t, tuple) else t)
                n_images += 1
    r = counter.report()
    return {
        "images": n_images,
        "tokens": r.tokens,
        "codes_used": r.codes_used,
        "codebook_size": r.codebook_size,
        "usage": round(r.used_fraction, 4),
        "perplexity": round(r.perplexity, 1),
    }


def latency(tok: Tokenizer, runs: int) -> dict:
    x = torch.rand(1, 3, 256, 256)
    tok.decode_pixels(tok.encode_pixels(x))  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        tok.decode_pixels(tok.encode_pixels(x))
        times.append(time.perf_counter() - t)
    return {
        "encode_decode_256_median_s": round(statistics.median(times), 4),
        "encode_decode_256_best_s": round(min(times), 4),
        "runs": runs,
        "threads": torch.get_num_threads(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder with train/ and dev/")
    ap.add_argument("--model", default=None, help="model name or folder (default: bundled)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-train-usage", action="store_true", help="skip the (slow) usage over train + dev")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.from_pretrained(args.model)
    res = {
        "model": tok.name,
        "protocol": "imagetok-photos-v2 (see benchmarks/eval_bundled.py)",
        "dev_256": reconstruction(tok, args.data / "dev", 256),
        "dev_512": reconstruction(tok, args.data / "dev", 512),
        "usage_dev_256_512": usage(tok, [args.data / "dev"], [256, 512]),
        **({} if args.no_train_usage else
           {"usage_train_dev_256_512": usage(tok, [args.data / "train", args.data / "dev"], [256, 512])}),
        "color_chart": color_chart(tok),
        "latency": latency(tok, args.runs),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Evaluate a tokenizer the way the bundled model's card reports it.

Protocol (imagetok-photos-v1):
- reconstruction on ``DATA/dev``: shorter side resized to S (bicubic), centre crop SxS, encode ->
  decode, PSNR and SSIM (11x11 Gaussian, data range 1) on float images in [0, 1], mean over images;
  S = 256 and S = 512;
- codebook usage over ``DATA/train`` and ``DATA/dev`` at S = 256 and S = 512 (one centre crop per
  image and size): fraction of codes used, perplexity;
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

import torch

from imagetok import Tokenizer
from imagetok.metrics import psnr, ssim
from imagetok.train.data import load_eval_images
from imagetok.usage import UsageCounter


def reconstruction(tok: Tokenizer, folder: Path, size: int) -> dict:
    x, names = load_eval_images(folder, size)
    y = torch.cat([tok.decode_pixels(tok.encode_pixels(xi[None])) for xi in x])
    p, s = psnr(x, y), ssim(x, y)
    return {
        "size": size,
        "psnr": round(float(p.mean()), 3),
        "ssim": round(float(s.mean()), 4),
        "per_image": {n: {"psnr": round(float(a), 2), "ssim": round(float(b), 4)} for n, a, b in zip(names, p, s)},
    }


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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.from_pretrained(args.model)
    res = {
        "model": tok.name,
        "protocol": "imagetok-photos-v1 (see benchmarks/eval_bundled.py)",
        "dev_256": reconstruction(tok, args.data / "dev", 256),
        "dev_512": reconstruction(tok, args.data / "dev", 512),
        "usage_train_dev_256_512": usage(tok, [args.data / "train", args.data / "dev"], [256, 512]),
        "latency": latency(tok, args.runs),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Worked example: a transformer prior over the bundled tokenizer's tokens of the imagetok-photos set.

    python examples/prior/photos_prior.py --photos examples/bundled/data/photos --out runs/photos-prior

1. Cut random 128 px crops from the photos (``train/`` for training, ``dev/`` held out) into PNG
   folders, and tokenize them with ``imagetok.data.tokenize_dataset`` and the bundled model (f8: each
   crop becomes a 16 x 16 grid of ids from a 4096-code codebook).
2. Train a transformer prior on the training tokens (``train_prior``; resumable: rerun to continue).
3. Report held-out bits per token against the unigram entropy of the same tokens, and write
   ``samples.png``: top row real held-out crops (decoded tokens), below them prior samples.

The photos come from ``examples/bundled/build_dataset.py`` (see examples/bundled/README.md).
On a CPU the prior is small and the dataset tiny (42 photos), so samples show colours, textures
and rough layouts of the photos, not coherent scenes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imagetok import Prior, Tokenizer
from imagetok.image import _pil_to_array, load_image
from imagetok.prior import load_token_data
from imagetok.prior.trainer import train_prior
from imagetok.data import tokenize_dataset

HERE = Path(__file__).resolve().parent


def make_crops(src: Path, dst: Path, per_image: int, size: int, seed: int) -> int:
    """Random ``size`` crops of every photo in ``src``, after resizing its shorter side to a random
    length in [size, 2 * size] (so crops see whole objects as well as texture)."""
    if dst.is_dir() and any(dst.iterdir()):
        return len(list(dst.glob("*.png")))
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 0
    for path in sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        photo = Image.fromarray(np.asarray(_pil_to_array(load_image(path))))
        for i in range(per_image):
            side = int(rng.integers(size, 2 * size + 1))
            w, h = photo.size
            s = side / min(w, h)
            img = photo.resize((max(side, round(w * s)), max(side, round(h * s))), Image.Resampling.BICUBIC)
            x, y = int(rng.integers(img.width - size + 1)), int(rng.integers(img.height - size + 1))
            img.crop((x, y, x + size, y + size)).save(dst / f"{path.stem}_{i:03d}.png")
            n += 1
    return n


def unigram_bits(tokens: torch.Tensor) -> float:
    counts = torch.bincount(tokens.flatten().long()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def grid_image(images: list[np.ndarray], cols: int, pad: int = 2) -> Image.Image:
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for k, a in enumerate(images):
        r, c = divmod(k, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = a
    return Image.fromarray(canvas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=HERE.parent / "bundled" / "data" / "photos", help="folder with train/ and dev/")
    ap.add_argument("--out", type=Path, default=Path("runs/photos-prior"))
    ap.add_argument("--config", type=Path, default=HERE / "prior_photos.json", help="prior train config (data/out_dir are set here)")
    ap.add_argument("--crops", type=int, default=40, help="crops per photo")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="override the config's steps")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--grid", type=Path, default=HERE / "samples.png")
    args = ap.parse_args()
    torch.set_num_threads(1)

    tok = Tokenizer.from_pretrained()
    for split, seed in (("train", 0), ("dev", 1)):
        n = make_crops(args.photos / split, args.out / "crops" / split, args.crops, args.size, seed)
        print(f"{split}: {n} crops of {args.size} px")
        if not (args.out / f"tokens-{split}" / "dataset_info.json").is_file():
            tokenize_dataset(args.out / "crops" / split, args.out / f"tokens-{split}", model=tok, size=args.size, workers=0)

    cfg = json.loads(args.config.read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("//")}
    cfg.update(data=str(args.out / "tokens-train"), out_dir=str(args.out / "run"), eval_data=str(args.out / "tokens-dev"))
    if args.steps:
        cfg["steps"] = args.steps
    prior = Prior.from_pretrained(train_prior(cfg))

    held = load_token_data(args.out / "tokens-dev")
    bpt, uni = prior.bits_per_token(held), unigram_bits(held.tokens)
    print(f"held-out bits per token {bpt:.3f} (unigram entropy of the same tokens {uni:.3f}, uniform {math.log2(4096):.1f})")
    samples = prior.sample(args.samples, top_k=args.top_k, temperature=args.temperature, generator=0)
    real = held.levels(torch.arange(0, len(held), max(1, len(held) // 8))[:8])[0]
    images = list(tok.decode(real, output="np")) + list(tok.decode(samples, output="np"))
    grid_image(images, cols=8).save(args.grid)
    summary = {"held_out_bits_per_token": bpt, "unigram_bits": uni, "train_rows": len(load_token_data(args.out / "tokens-train")),
               "held_out_rows": len(held), "steps": cfg["steps"], "top_k": args.top_k, "temperature": args.temperature}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.grid} (top row: real held-out crops through the tokenizer; below: {args.samples} prior samples)")


if __name__ == "__main__":
    main()

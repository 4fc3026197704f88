"""Package a trained run as imagetok's bundled model: model folder, model card, manifest entry.

Run from the repository root after training:

    python examples/bundled/package.py --run examples/bundled/out_v2 --data examples/bundled/data/photos2 --hours H

Stores the weights as float16 (the package limit is 40 MB), then evaluates exactly that stored
model with benchmarks/eval_bundled.py, and writes imagetok/bundled/{config.json,
model.safetensors, README.md} and the "vqgan-f8-4096.imagetok-photos" entry of
weights_manifest.json (metrics, sha256 and parameter count included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from imagetok import Tokenizer
from imagetok.config import config_to_dict
from imagetok.tokenizer import BUNDLED_DIR, BUNDLED_NAME

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _cpu() -> str:
    """E.g. "2 x Intel(R) Xeon(R) Processor" (Linux), else the platform's processor string."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        return f"{len(names)} x {names[0]}"
    except (OSError, IndexError):
        return platform.processor() or "an unknown CPU"


def _training_summary(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "steps_per_s" in r]
    return {"steps": steps[-1]["step"], "mean_steps_per_s": round(sum(r["steps_per_s"] for r in steps[-5:]) / 5, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="the last v2 stage's out_dir (holds model/); the stages' out_dirs are found beside it")
    ap.add_argument("--data", type=Path, required=True, help="folder with train/ and dev/ (build_dataset_v2.py)")
    ap.add_argument("--hours", type=float, required=True, help="wall-clock training time to report")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the latency measurement")
    args = ap.parse_args()

    tok = Tokenizer.from_pretrained(args.run / "model")
    tok.name = BUNDLED_NAME
    tok.save_pretrained(BUNDLED_DIR, dtype=torch.float16)
    tok = Tokenizer.from_pretrained(BUNDLED_DIR)  # evaluate what ships: float16-rounded weights
    tok.name = BUNDLED_NAME
    eval_json = args.run / "eval_bundled.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "eval_bundled.py"), "--data", str(args.data),
         "--model", str(BUNDLED_DIR), "--threads", str(args.threads), "--json", str(eval_json), "--no-train-usage"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    ev = json.loads(eval_json.read_text())
    stages = []  # (config name, config, summary) of each v2 stage that was run, in order
    for name in ("train_v2.json", "train_v2_stage2.json"):
        c = json.loads((HERE / name).read_text())
        out = args.run.parent / c["out_dir"]
        if (out / "metrics.jsonl").is_file():
            stages.append((name, c, _training_summary(out)))
        if out.resolve() == args.run.resolve():
            break
    cfg = stages[0][1]
    counts = json.loads((HERE / "MANIFEST_v2.json").read_text())["counts"]
    ud, lat, chart = ev["usage_dev_256_512"], ev["latency"], ev["color_chart"]
    recon = ("dev split ({n} photos: lomiri-wallpapers-16.04, scikit-learn, matplotlib, scipy; no image of these sources "
             "is used for training), shorter side resized to {r} (bicubic), centre crop {r}x{r}, PSNR/SSIM on float images "
             "in [0, 1]")
    metrics = [
        {"dataset": "imagetok-photos-v2 dev", "resolution": r,
         "protocol": "imagetok-photos-v2: " + recon.format(n=ev[f"dev_{r}"]["images"], r=r),
         "source": "imagetok, benchmarks/eval_bundled.py",
         "values": {"psnr": ev[f"dev_{r}"]["psnr"], "ssim": ev[f"dev_{r}"]["ssim"]}}
        for r in (256, 512)
    ] + [
        {"dataset": "imagetok-photos-v2 dev", "resolution": 256,
         "protocol": "imagetok-photos-v2: one centre crop per dev image at 256 and at 512 px; fraction of the codebook used and perplexity of the counts",
         "source": "imagetok, benchmarks/eval_bundled.py", "values": {"codebook_usage": ud["usage"], "perplexity": ud["perplexity"]}},
    ]  # fmt: skip
    n_params = sum(p.numel() for p in tok.model.parameters())
    description = "\n".join(
        [
            "The small VQGAN tokenizer that ships inside imagetok, so everything works offline. It is a",
            f"demonstration model trained on {counts['train']} images on a shared 2-core CPU, not a replacement for the",
            "ImageNet-scale tokenizers in the manifest.",
            "",
            f"- Architecture: taming-layout VQGAN, f8, {tok.codebook_sizes[0]} codes of dimension "
            f"{tok.config.embed_dim} (l2-normalised), {n_params:,} parameters.",
            f"- Data: imagetok-photos-v2 (examples/bundled/MANIFEST_v2.json), {counts['train']} training images: photographs from",
            "  Debian's gcompris-qt-data 3.1-2 (animals, monuments, landscapes, objects, fish, people; GPL-3+ / CC-BY-SA-4.0 /",
            "  public domain per debian/copyright), photographic stamps of tuxpaint-stamps-default 2022.06.04-1 on white",
            "  (GPL-2), OpenCV sample photos from opencv-doc 4.6.0 (Apache-2.0 / BSD-3-Clause), and v1's KDE Plasma",
            "  wallpapers (plasma-workspace-wallpapers 4:5.27.5-2, LGPL-3 / CC-BY-SA-4.0) and scikit-image 0.26 samples.",
            f"  Held-out dev ({counts['dev']}): lomiri-wallpapers-16.04 20.04.0-2 photographs (CC-BY-4.0 / CC-BY-SA-4.0 / CC0),",
            "  scikit-learn's china and flower (CC BY 2.0), matplotlib's grace_hopper (public domain), scipy 1.11's face (BSD).",
            "- Training: fine-tunes v1 (examples/bundled/train.json, train_stage2.json) in these stages (examples/bundled/README.md):",
            *[
                f"  {i}. `imagetok train --config {name}`: {st['steps']} steps, AdamW lr {c['lr']} (warm-up, cosine), "
                f"bf16 autocast, {c['num_threads']} thread, about {st['mean_steps_per_s']} steps/s"
                for i, (name, c, st) in enumerate(stages, 1)
            ],
            f"  Each step: {cfg['batch_size']} random {cfg['crop_size']}x{cfg['crop_size']} crops (shorter side rescaled",
            f"  to {cfg['scale_range'][0]}-{cfg['scale_range'][1]} px first), L1 + L2 + {cfg['ssim_weight']} (1 - SSIM), codebook and commitment",
            f"  (beta {cfg['commitment_beta']}) losses, dead-code restarts every {cfg['restart_every']} steps, weight EMA {cfg['ema_decay']}.",
            f"  {args.hours:.1f} h on a 2-core CPU shared with other jobs.",
            f"- Speed: encode + decode of one 256x256 image takes {lat['encode_decode_256_median_s']:.2f} s (median; best "
            f"{lat['encode_decode_256_best_s']:.2f} s) with {lat['threads']} torch threads on {_cpu()} (load {lat['loadavg_1min']}).",
            "- Weights licence: CC-BY-SA-4.0, following the share-alike terms of part of the training images.",
            "",
            "Colour and baseline (benchmarks/eval_bundled.py; colour shift = largest per-channel error of an image's mean",
            "colour, in 1/255; same-bits baseline = 1/8 bicubic thumbnail at 4 bits per channel, bicubic upsample):",
            "",
            *[
                f"- dev {r} px: colour shift mean {ev[f'dev_{r}']['color_shift_mean']}, max {ev[f'dev_{r}']['color_shift_max']}, "
                f"{ev[f'dev_{r}']['images_color_shift_le_8']} of {ev[f'dev_{r}']['images']} images within 8; same-bits bicubic "
                f"{ev[f'dev_{r}']['bicubic_same_bits']['psnr']} dB / SSIM {ev[f'dev_{r}']['bicubic_same_bits']['ssim']}, "
                f"beaten on {ev[f'dev_{r}']['beats_bicubic']} of {ev[f'dev_{r}']['images']} images"
                for r in (256, 512)
            ],
            f"- colour chart (24 ColorChecker patches + 6 saturated primaries/secondaries, flat 64x64 each): "
            f"{chart['patches_within_6']} of {chart['patches']} within 6/255, largest error {chart['max_error']}",
            f"- codebook usage on the dev photos (256 and 512 px): {ud['usage']:.1%} ({ud['codes_used']} of {ud['codebook_size']}), perplexity {ud['perplexity']}",
            "",
            "Known defects (issue 16, not fixed by v2): saturated colours come back desaturated or shifted (pure green as",
            "grey), mean colours of photos shift by about 11/255, and flat or smooth inputs decode worse at the image border.",
        ]
    )
    card = {
        "license": "cc-by-sa-4.0",
        "datasets": ["imagetok-photos-v2 (examples/bundled/MANIFEST_v2.json)"],
        "description": description,
        "metrics": metrics,
        "source": "trained by imagetok (examples/bundled/train_v2.json, train_v2_stage2.json)",
    }
    folder = tok.save_pretrained(BUNDLED_DIR, card=card, dtype=torch.float16)
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    manifest_path = ROOT / "weights_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = {
        "name": BUNDLED_NAME,
        "description": f"imagetok's bundled demo tokenizer: taming-layout VQGAN f8, 4096 l2-normalised 8-dim codes, trained on {counts['train']} photos on CPU.",
        "config": config_to_dict(tok.config),
        "preprocess": {"size": 256, "input_range": [-1.0, 1.0], "resize": "shorter_side", "crop": "center", "interpolation": "bicubic"},
        "tokens": {"grids": [[32, 32]], "vocab_sizes": [tok.codebook_sizes[0]]},
        "source": {"kind": "bundled", "repo_id": None, "filename": "model.safetensors", "revision": None,
                   "format": "imagetok", "converter": None, "sha256": sha, "url": None},
        "license": {"code": "MIT", "weights": "CC-BY-SA-4.0"},
        "citation": "imagetok bundled model (examples/bundled/README.md)",
        "datasets": ["imagetok-photos-v2"],
        "metrics": card["metrics"],
        "num_params": n_params,
    }  # fmt: skip
    manifest["models"] = [m for m in manifest["models"] if m["name"] != BUNDLED_NAME] + [entry]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"folder": str(folder), "sha256": sha, "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main()

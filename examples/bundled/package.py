"""Package a trained run as imagetok's bundled model: model folder, model card, manifest entry.

Run from the repository root after training:

    python examples/bundled/package.py --run examples/bundled/out_stage2 --data examples/bundled/data/photos --hours H

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
    ap.add_argument("--run", type=Path, required=True, help="the last stage's out_dir (holds model/); stages are found beside it")
    ap.add_argument("--data", type=Path, required=True, help="folder with train/ and dev/ (build_dataset.py)")
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
         "--model", str(BUNDLED_DIR), "--threads", str(args.threads), "--json", str(eval_json)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    ev = json.loads(eval_json.read_text())
    stages = []  # (config name, config, summary) of each stage that was run, in order
    for name in ("train.json", "train_stage2.json"):
        cfg = json.loads((HERE / name).read_text())
        out = args.run.parent / cfg["out_dir"]
        if (out / "metrics.jsonl").is_file():
            stages.append((name, cfg, _training_summary(out)))
    u = ev["usage_train_dev_256_512"]
    lat = ev["latency"]
    recon = "dev split (4 photos), shorter side resized to {0} (bicubic), centre crop {0}x{0}, PSNR/SSIM on float images in [0, 1]"
    metrics = [
        {"dataset": "imagetok-photos dev", "resolution": r, "protocol": "imagetok-photos-v1: " + recon.format(r),
         "source": "imagetok, benchmarks/eval_bundled.py", "values": {"psnr": ev[f"dev_{r}"]["psnr"], "ssim": ev[f"dev_{r}"]["ssim"]}}
        for r in (256, 512)
    ] + [
        {"dataset": "imagetok-photos train+dev", "resolution": 256,
         "protocol": "imagetok-photos-v1: one centre crop per train and dev image at 256 and at 512 px; fraction of the codebook used and perplexity of the counts",
         "source": "imagetok, benchmarks/eval_bundled.py", "values": {"codebook_usage": u["usage"], "perplexity": u["perplexity"]}},
    ]  # fmt: skip
    description = "\n".join(
        [
            "The small VQGAN tokenizer that ships inside imagetok, so everything works offline. It is a",
            "demonstration model trained on 38 images on two CPU cores, not a replacement for the",
            "ImageNet-scale tokenizers in the manifest.",
            "",
            f"- Architecture: taming-layout VQGAN, f8, {tok.codebook_sizes[0]} codes of dimension "
            f"{tok.config.embed_dim} (l2-normalised), {sum(p.numel() for p in tok.model.parameters()):,} parameters.",
            "- Data: 38 photos and wallpapers (examples/bundled/MANIFEST.json): KDE Plasma wallpapers from Debian's",
            "  plasma-workspace-wallpapers 4:5.27.5-2 (per-image licences LGPL-3 / CC-BY-SA-4.0, package GPL-2+,",
            "  authors listed in the manifest) and scikit-image 0.26 sample images. Held-out dev: scikit-learn's",
            "  china and flower (CC BY 2.0), matplotlib's grace_hopper (public domain), scipy 1.11's face (BSD).",
            "- Training, two stages run from one folder (examples/bundled/README.md):",
            *[
                f"  {i}. `imagetok train --config {name}`: {st['steps']} steps, AdamW lr {cfg['lr']} (warm-up, cosine), "
                f"{cfg['num_threads']} thread(s), about {st['mean_steps_per_s']} steps/s"
                + (f", fine-tuning {cfg['init_from']}" if cfg.get("init_from") else "")
                for i, (name, cfg, st) in enumerate(stages, 1)
            ],
            "  Each step: 8 random 128x128 crops (shorter side rescaled to 256-512 px first), L1 + L2 + 0.2 (1 - SSIM),",
            "  codebook and commitment (beta 0.25) losses, dead-code restarts every 100 steps, weight EMA 0.995.",
            f"  {args.hours:.1f} h in all on a shared 2-core CPU.",
            "  The data set is rebuilt byte-identically by examples/bundled/build_dataset.py.",
            f"- Speed: encode + decode of one 256x256 image takes {lat['encode_decode_256_median_s']:.2f} s (median; best "
            f"{lat['encode_decode_256_best_s']:.2f} s) with {lat['threads']} torch threads on {_cpu()} (load {lat['loadavg_1min']}).",
            "- Weights licence: CC-BY-SA-4.0, following the share-alike terms of part of the training images.",
        ]
    )
    card = {
        "license": "cc-by-sa-4.0",
        "datasets": ["imagetok-photos (examples/bundled/MANIFEST.json)"],
        "description": description,
        "metrics": metrics,
        "source": "trained by imagetok (examples/bundled/train.json)",
    }
    folder = tok.save_pretrained(BUNDLED_DIR, card=card, dtype=torch.float16)
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    manifest_path = ROOT / "weights_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = {
        "name": BUNDLED_NAME,
        "description": "imagetok's bundled demo tokenizer: taming-layout VQGAN f8, 4096 l2-normalised 8-dim codes, trained on 38 photos on CPU.",
        "config": config_to_dict(tok.config),
        "preprocess": {"size": 256, "input_range": [-1.0, 1.0], "resize": "shorter_side", "crop": "center", "interpolation": "bicubic"},
        "tokens": {"grids": [[32, 32]], "vocab_sizes": [tok.codebook_sizes[0]]},
        "source": {"kind": "bundled", "repo_id": None, "filename": "model.safetensors", "revision": None,
                   "format": "imagetok", "converter": None, "sha256": sha, "url": None},
        "license": {"code": "MIT", "weights": "CC-BY-SA-4.0"},
        "citation": "imagetok bundled model (examples/bundled/README.md)",
        "datasets": ["imagetok-photos"],
        "metrics": card["metrics"],
        "num_params": sum(p.numel() for p in tok.model.parameters()),
    }  # fmt: skip
    manifest["models"] = [m for m in manifest["models"] if m["name"] != BUNDLED_NAME] + [entry]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"folder": str(folder), "sha256": sha, "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main()

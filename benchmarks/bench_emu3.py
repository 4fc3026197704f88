"""Emu3 VisionTokenizer on CPU: encode + decode of one image, time and peak memory, imagetok vs
transformers' ``Emu3VQVAE`` on the same weights.

The architecture is the real one (``Emu3Config()`` = BAAI/Emu3-VisionTokenizer: ch 256, ch_mult
1-2-2-4, 32768 x 4-dim codes, temporal factor 4; 270.7 M parameters) with RANDOM weights (timing does
not depend on them; no weights are downloaded). Each measurement runs in its own process so the
peak resident memory belongs to that one call: the peak (``VmHWM``, reset just before the
call) minus the resident size of the process with the model built and the input loaded. Both implementations get the same image; the script also reports whether
their tokens agree and the largest pixel difference of their decodes.

imagetok does less work than the reference for images, with the same numbers: Emu3 encodes an image
as a clip of 4 identical frames, so imagetok runs the 2-D encoder once and repeats its output; Emu3
decodes a token grid to 4 frames and returns the first, so imagetok runs the 2-D decoder on that
frame only.

    python benchmarks/bench_emu3.py --size 512 --threads 1 [--reference] [--reps 1]

Results: printed table + JSON lines in benchmarks/results/emu3.jsonl.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common as C
import torch

ROOT = Path(__file__).resolve().parent


def status_mb(key: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident since the last reset) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``), so the peak is this call's."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


def reference(seed: int):
    import transformers

    torch.manual_seed(seed)
    ref = transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig()).eval()  # Emu3-VisionTokenizer's architecture
    return ref


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process: build, warm up once, time --reps calls, report peak RSS growth."""
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    impl, op = args.worker.split("-")
    if impl == "imagetok":
        from imagetok import Tokenizer

        tok = Tokenizer.from_pretrained(args.model_dir)
        enc = lambda x: tok.model.encode_indices(x)
        dec = lambda t: tok.model.decode_indices(t)
    else:
        ref = reference(args.seed)
        s = args.size
        enc = lambda x: torch.stack(ref.encode(x, image_sizes=torch.tensor([[s, s]] * x.shape[0])).image_tokens)
        dec = lambda t: ref.decode(t)
    x = torch.load(args.io / "x.pt")
    tokens = torch.load(args.io / "tokens.pt") if op == "decode" else None
    fn = (lambda: enc(x)) if op == "encode" else (lambda: dec(tokens))
    reset_peak()
    base = status_mb("VmRSS")
    with torch.inference_mode():
        times = []
        for i in range(args.warmup + args.reps):
            t0 = time.perf_counter()
            out = fn()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    peak = status_mb("VmHWM")
    torch.save(out, args.io / f"{impl}-{op}.pt")
    if op == "encode" and impl == "imagetok":
        torch.save(out, args.io / "tokens.pt")
    print(json.dumps({"impl": impl, "op": op, "seconds": times, "model_rss_mb": round(base, 1),
                      "peak_growth_mb": round(peak - base, 1)}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones (0 for long runs)")
    p.add_argument("--reference", action="store_true", help="also time transformers' Emu3VQVAE (4x the 2-D work)")
    p.add_argument("--out", type=Path, default=C.RESULTS / "emu3.jsonl")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--io", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench_emu3_"))
    torch.manual_seed(args.seed)
    ref = reference(args.seed)
    ref.save_pretrained(tmp / "hf")
    del ref
    from imagetok.convert import convert

    convert(tmp / "hf", from_format="transformers", out=tmp / "imagetok")
    g = torch.Generator().manual_seed(1)  # a smooth random image in [-1, 1]
    x = torch.nn.functional.interpolate(torch.rand(args.batch, 3, args.size // 32, args.size // 32, generator=g),
                                        size=(args.size, args.size), mode="bicubic").clamp(0, 1) * 2 - 1  # fmt: skip
    torch.save(x, tmp / "x.pt")
    runs = ["imagetok-encode", "imagetok-decode"] + (["transformers-encode", "transformers-decode"] if args.reference else [])
    rows = []
    for w in runs:
        cmd = [sys.executable, __file__, "--worker", w, "--io", str(tmp), "--model-dir", str(tmp / "imagetok"),
               "--size", str(args.size), "--threads", str(args.threads), "--reps", str(args.reps), "--seed", str(args.seed), "--warmup", str(args.warmup)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        r.update(size=args.size, batch=args.batch, median_s=round(sorted(r["seconds"])[len(r["seconds"]) // 2], 2))
        rows.append(r)
        print(f"{w:22s} {r['median_s']:8.2f} s   peak +{r['peak_growth_mb']:8.1f} MB  (model process {r['model_rss_mb']} MB)", flush=True)
    agree = {}
    if args.reference:
        a, b = torch.load(tmp / "imagetok-encode.pt"), torch.load(tmp / "transformers-encode.pt")
        agree["tokens_equal_fraction"] = float((a == b).float().mean())
        d1, d2 = torch.load(tmp / "imagetok-decode.pt"), torch.load(tmp / "transformers-decode.pt")
        agree["decode_max_abs_diff"] = float((d1 - d2).abs().max())
        print(json.dumps(agree))
    record = {"bench": "emu3", "machine": C.machine(), "weights": "random (real Emu3-VisionTokenizer architecture)",
              "rows": rows, **agree}  # fmt: skip
    C.write_jsonl(args.out, [record])


if __name__ == "__main__":
    main()

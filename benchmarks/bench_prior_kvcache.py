"""Transformer prior sampling: KV cache vs full recomputation of the prefix at every step.

    python benchmarks/bench_prior_kvcache.py [--grid 32] [--width 128] [--depth 2] [--batch 1] [--reps 1] [--threads 1] [--device cpu]

A random-weight transformer prior (minGPT layout) over a ``grid x grid`` token grid (32 -> 1024 tokens)
samples ``--batch`` sequences with the same seed both ways. Reports the time of each (interleaved,
median and best), the speed-up, and whether the tokens are identical (they must be: the draws are
fixed per sample and position, and the two paths' logits agree to float precision).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import common as C
from imagetok.prior import Prior, PriorConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=32, help="grid side (32 -> 1024 tokens)")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=C.RESULTS / "prior_kvcache.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PriorConfig(arch="transformer", codebook_sizes=(args.vocab,), grid=(args.grid, args.grid), width=args.width,
                      depth=args.depth, heads=args.heads, num_classes=10)  # fmt: skip
    prior = Prior.from_config(cfg, seed=0).to(args.device)
    with torch.no_grad():  # spread the logits (random init is nearly uniform) so that picks are not near-ties
        prior.model.head.weight.mul_(20)
    out: dict[str, torch.Tensor] = {}

    def run(use_cache: bool):
        def f():
            out[str(use_cache)] = prior.sample(args.batch, label=3, generator=0, top_k=100, use_cache=use_cache)
        return f

    times = C.interleaved({"kv_cache": run(True), "full_recompute": run(False)}, reps=args.reps, warmup=0, device=args.device)
    same = torch.equal(out["True"], out["False"])
    cached, full = C.summary(times["kv_cache"]), C.summary(times["full_recompute"])
    row = {
        "bench": "prior_kvcache", "tokens": args.grid * args.grid, "vocab": args.vocab, "width": args.width,
        "depth": args.depth, "heads": args.heads, "batch": args.batch, "device": args.device,
        "kv_cache_s": cached, "full_recompute_s": full, "speedup_median": full["median"] / cached["median"],
        "identical_tokens": same, "machine": C.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    C.write_jsonl(args.out, [row])
    print(f"{args.grid * args.grid} tokens, batch {args.batch}, width {args.width}, depth {args.depth}, {args.device}, "
          f"{args.threads} thread(s): KV cache {cached['median']:.2f} s, full recomputation {full['median']:.2f} s "
          f"-> {row['speedup_median']:.1f}x; identical tokens: {same}")  # fmt: skip
    if not same:
        raise SystemExit("tokens differ between the KV-cache and full-recomputation paths")


if __name__ == "__main__":
    main()

"""The opt-in fast path (``Tokenizer.fast``) against the float32 path on real photos.

    python benchmarks/bench_fast_path.py --config f16 --photos ../shared/datasets/photos/dev \
        --codebook-photos ../shared/datasets/photos/train
    python benchmarks/bench_fast_path.py --model path/to/model_folder --photos DIR

Reports per photo the fraction of token positions equal to the float32 path's, the decoded
image's PSNR against the float32 decode of the same tokens, and encode/decode times at batch 1
(float32 and fast interleaved in one process; median and best over --reps).
With --config, weights are random and the codebook is drawn from encoder outputs of
--codebook-photos (plus a little noise): agreement is then a proxy for a trained model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import common as C
from imagetok import Tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="f16", help="a name in benchmarks/common.py CONFIGS (random weights)")
    p.add_argument("--model", default=None, help="a trained model folder/name for Tokenizer.from_pretrained")
    p.add_argument("--photos", required=True)
    p.add_argument("--codebook-photos", default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=str(C.RESULTS / "fast_path.jsonl"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine()
    print("machine:", info)
    if args.model:
        tok, label = Tokenizer.from_pretrained(args.model), f"model {args.model}"
    else:
        tok, label = C.build_imagetok(args.config), f"{args.config} (random weights, codebook from encoder outputs)"
        _, cb_photos = C.load_photos(args.codebook_photos or args.photos)
        C.init_codebook_from_encoder(tok, cb_photos[:8], noise=0.05)
    names, photos = C.load_photos(args.photos, size=tok.default_size)
    ref = torch.cat([tok.encode_pixels(photos[i : i + 1]) for i in range(len(photos))])
    ref_img = torch.cat([tok.decode_pixels(ref[i : i + 1]) for i in range(len(photos))])
    tok.fast = True
    got = torch.cat([tok.encode_pixels(photos[i : i + 1]) for i in range(len(photos))])
    img = torch.cat([tok.decode_pixels(ref[i : i + 1]) for i in range(len(photos))])
    tok.fast = False
    agree = (got == ref).float().flatten(1).mean(1)
    psnr = -10 * torch.log10(((img - ref_img) ** 2).flatten(1).mean(1))
    x, ids = photos[:1], ref[:1]

    def run(fast: bool, fn):
        def f():
            tok.fast = fast
            fn()
        return f

    enc = C.interleaved({"fp32": run(False, lambda: tok.encode_pixels(x)), "fast": run(True, lambda: tok.encode_pixels(x))},
                        reps=args.reps)
    dec = C.interleaved({"fp32": run(False, lambda: tok.decode_pixels(ids)), "fast": run(True, lambda: tok.decode_pixels(ids))},
                        reps=args.reps)
    tok.fast = False
    row = dict(model=label, photos=names, agreement=[round(float(a), 4) for a in agree],
               agreement_all=round(float(agree.mean()), 4), decode_psnr_db=[round(float(v), 1) for v in psnr],
               threads=torch.get_num_threads(), load=C.machine()["loadavg"], reps=args.reps)
    for mode, t in (("encode", enc), ("decode", dec)):
        a, b = C.summary(t["fp32"]), C.summary(t["fast"])
        row[f"{mode}_fp32_ms"] = (round(a["median"] * 1e3), round(a["best"] * 1e3))
        row[f"{mode}_fast_ms"] = (round(b["median"] * 1e3), round(b["best"] * 1e3))
        row[f"{mode}_speedup_median"] = round(a["median"] / b["median"], 2)
        row[f"{mode}_speedup_best"] = round(a["best"] / b["best"], 2)
    print(row)
    C.write_jsonl(Path(args.out), [dict(machine=info, **row)])


if __name__ == "__main__":
    main()

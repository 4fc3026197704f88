"""Nearest-code search alone: imagetok's ``nearest_code`` vs the cdist (diffusers), taming and
plain addmm formulations; time (interleaved, median/best) and agreement with a float64 argmin.

    python benchmarks/bench_quantizer.py --reps 7 [--threads 1]

Cases: the f16 codebook (16384 x 256), f8 (LDM vq-f8: 16384 x 4), the bundled model's l2
codebook (4096 x 8) and 1024 x 256, with the vectors of 1 and 8 images. Data: "clustered"
(z = a code + 0.3 noise, like a trained model) and "random" (z, e ~ N(0, 1): many near-ties).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import common as C
from imagetok.models.quantizer import nearest_code

CASES = {  # name: (K, D, vectors per image)
    "f16_16384x256": (16384, 256, 256),
    "f8_16384x4": (16384, 4, 1024),
    "bundled_4096x8_l2": (4096, 8, 1024),
    "f16_1024x256": (1024, 256, 256),
}


def methods(e: torch.Tensor) -> dict:
    def taming(z):
        d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * torch.einsum("bd,dn->bn", z, e.t())
        return d.argmin(1)

    return {
        "imagetok nearest_code": lambda z: nearest_code(z, e),
        "imagetok fp32 screen": lambda z: nearest_code(z, e, screen="fp32"),
        "cdist+argmin (diffusers)": lambda z: torch.cdist(z, e).argmin(1),
        "taming formula": taming,
        "addmm+argmin (old imagetok)": lambda z: torch.addmm((e * e).sum(1), z, e.t(), alpha=-2.0).argmin(1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--out", default=str(C.RESULTS / "quantizer.jsonl"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine()
    print("machine:", info)
    rows = []
    g = torch.Generator().manual_seed(0)
    for case in args.cases.split(","):
        k, d, per_img = CASES[case]
        e = torch.randn(k, d, generator=g)
        if case.endswith("_l2"):
            e = torch.nn.functional.normalize(e, dim=1)
        for b in [int(v) for v in args.batches.split(",")]:
            n = per_img * b
            zc = e[torch.randint(0, k, (n,), generator=g)] + 0.3 * e.std() * torch.randn(n, d, generator=g)
            zr = torch.randn(n, d, generator=g) * e.std() + e.mean()
            if case.endswith("_l2"):
                zc, zr = torch.nn.functional.normalize(zc, dim=1), torch.nn.functional.normalize(zr, dim=1)
            ms = methods(e)
            e64 = e.double()
            refs = {}
            for name, z in (("clustered", zc), ("random", zr)):
                z64 = z.double()
                refs[name] = torch.cat([((e64 * e64).sum(1) - 2 * z64[i:i + 512] @ e64.t()).argmin(1)
                                        for i in range(0, n, 512)])
            agree = {m: {name: float((f(z) == refs[name]).float().mean()) for name, z in (("clustered", zc), ("random", zr))}
                     for m, f in ms.items()}
            times = C.interleaved({m: (lambda f=f: f(zc)) for m, f in ms.items()}, reps=args.reps)
            times_r = C.interleaved({m: (lambda f=f: f(zr)) for m, f in ms.items() if m.startswith("imagetok")},
                                    reps=max(3, args.reps // 2))
            base = C.summary(times["cdist+argmin (diffusers)"])["median"]
            for m, ts in times.items():
                s = C.summary(ts)
                row = dict(case=case, batch=b, vectors=n, method=m, median_ms=s["median"] * 1e3, best_ms=s["best"] * 1e3,
                           ms_per_img=s["median"] * 1e3 / b, speedup_vs_cdist=base / s["median"],
                           random_median_ms=(C.summary(times_r[m])["median"] * 1e3 if m in times_r else None),
                           agree_clustered=agree[m]["clustered"], agree_random=agree[m]["random"],
                           threads=torch.get_num_threads(), load=C.machine()["loadavg"])
                rows.append(row)
                print(row)
    C.write_jsonl(Path(args.out), [dict(machine=info)] + rows)
    print(C.markdown_table(rows, ["case", "batch", "method", "median_ms", "best_ms", "speedup_vs_cdist",
                                  "random_median_ms", "agree_clustered", "agree_random"]))


if __name__ == "__main__":
    main()

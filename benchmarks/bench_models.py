"""imagetok vs diffusers VQModel vs taming modules on the same weights: speed, memory, tokens.

For each config (f16 = taming ImageNet f16-16384, f8 = LDM vq-f8) and batch size: encode
(image -> tokens) and decode (tokens -> image) times, interleaved A B C A B C in one process
(median and best over --reps), images/s, GFLOP/s against the conv/matmul ceiling measured in the
same run, peak-memory growth of one call, and token agreement between the implementations.

    python benchmarks/bench_models.py --configs f16,f8 --batches 1,8 --reps 3 --photos DIR

Weights are random (timing does not depend on them); the codebook is drawn from encoder outputs
of the photos so that tokens are not all ties. Results: printed markdown table + JSON lines in
benchmarks/results/models.jsonl. A full f16 run at batch 8 takes several minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import common as C


def ceiling(device: str, reps: int = 3) -> dict[str, float]:
    """Best GFLOP/s of an fp32 2048^3 matmul and a 128-channel 3x3 conv at 256x256 (NCHW, NHWC)."""
    out = {}
    a = torch.randn(2048, 2048, device=device)
    x = torch.randn(1, 128, 256, 256, device=device)
    w = torch.randn(128, 128, 3, 3, device=device)
    xc, wc = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    conv_gf = 2 * 128 * 128 * 9 * 256 * 256 / 1e9
    with torch.inference_mode():
        t = C.interleaved({"mm": lambda: a @ a, "conv_nchw": lambda: F.conv2d(x, w, padding=1),
                           "conv_nhwc": lambda: F.conv2d(xc, wc, padding=1)}, reps=reps, device=device)
    out["matmul_fp32"] = 2 * 2048**3 / 1e9 / min(t["mm"])
    out["conv3x3_fp32_nchw"] = conv_gf / min(t["conv_nchw"])
    out["conv3x3_fp32_nhwc"] = conv_gf / min(t["conv_nhwc"])
    return {k: round(v, 1) for k, v in out.items()}


def peak_growth_mb(fn) -> float:
    """Peak RSS growth (MB) while fn runs (Linux; resets VmHWM via /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    base = C.rss_mb()
    fn()
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return round(int(line.split()[1]) / 1024 - base, 1)
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="f16,f8")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--modes", default="encode,decode")
    p.add_argument("--impls", default="imagetok,diffusers,taming")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--photos", default=None, help="folder of photos (default: random images)")
    p.add_argument("--channels-last", action="store_true", help="also time imagetok fp32 with channels_last")
    p.add_argument("--out", default=str(C.RESULTS / "models.jsonl"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    info = C.machine()
    print("machine:", info)
    ceil = ceiling(dev)
    print("ceiling GF/s:", ceil)
    rows = []
    for cfg in args.configs.split(","):
        tok = C.build_imagetok(cfg)
        if args.photos:
            _, photos = C.load_photos(args.photos)
        else:
            photos = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        C.init_codebook_from_encoder(tok, photos, noise=0.05)
        impls = {"imagetok": tok.model}
        if "diffusers" in args.impls:
            impls["diffusers"] = C.build_diffusers(tok)
        if "taming" in args.impls:
            tm = C.build_taming(tok)
            if tm is None:
                print("taming not installed (pip install --no-deps taming-transformers==0.0.1): skipped")
            else:
                impls["taming"] = tm
        impls = {k: m.to(dev) for k, m in impls.items() if k in args.impls.split(",") or k == "imagetok"}
        enc = {
            "imagetok": lambda x: tok.model.encode_indices(x),
            "diffusers": lambda x: C.diffusers_encode(impls["diffusers"], x),
            "taming": lambda x: impls["taming"].encode(x),
        }
        dec = {
            "imagetok": lambda i: tok.model.decode_indices(i),
            "diffusers": lambda i: C.diffusers_decode(impls["diffusers"], i),
            "taming": lambda i: impls["taming"].decode(i),
        }
        names = [k for k in ("imagetok", "diffusers", "taming") if k in impls]
        with torch.inference_mode():
            x4 = (photos * 2 - 1).to(dev)
            toks = {k: enc[k](x4) for k in names}
            outs = {k: dec[k](toks["imagetok"]) for k in names}
        agree = {k: round(float((toks[k] == toks["imagetok"]).float().mean()), 6) for k in names}
        maxdiff = {k: float((outs[k] - outs["imagetok"]).abs().max()) for k in names}
        print(f"{cfg}: token agreement with imagetok {agree}; decode max|diff| {maxdiff}")
        with torch.inference_mode():
            gflops = {"encode": C.count_flops(lambda: enc["imagetok"](x4[:1])),
                      "decode": C.count_flops(lambda: dec["imagetok"](toks["imagetok"][:1]))}
        for b in [int(v) for v in args.batches.split(",")]:
            reps_x = x4.repeat((b + 3) // 4, 1, 1, 1)[:b].contiguous()
            reps_i = toks["imagetok"].repeat((b + 3) // 4, 1, 1)[:b].contiguous()
            for mode in args.modes.split(","):
                fns = {k: (lambda k=k: enc[k](reps_x)) if mode == "encode" else (lambda k=k: dec[k](reps_i)) for k in names}
                if args.channels_last and mode == "encode":
                    xcl = reps_x.contiguous(memory_format=torch.channels_last)

                    def cl_run() -> None:
                        tok.model.to(memory_format=torch.channels_last)
                        try:
                            tok.model.encode_indices(xcl)
                        finally:
                            tok.model.to(memory_format=torch.contiguous_format)

                    fns["imagetok-cl"] = cl_run
                with torch.inference_mode():
                    mem = {k: peak_growth_mb(f) for k, f in fns.items()}
                    load0 = C.machine()["loadavg"]
                    t0 = time.time()
                    times = C.interleaved(fns, reps=args.reps, device=dev)
                for k, ts in times.items():
                    s = C.summary(ts)
                    row = dict(config=cfg, mode=mode, batch=b, impl=k, median_ms_per_img=s["median"] * 1e3 / b,
                               best_ms_per_img=s["best"] * 1e3 / b, img_per_s=b / s["median"],
                               gflop_per_img=round(gflops[mode], 2), gflops_median=gflops[mode] * b / s["median"],
                               pct_of_conv_ceiling=100 * gflops[mode] * b / s["best"] / ceil["conv3x3_fp32_nchw"],
                               peak_mem_growth_mb=mem[k], token_agreement=agree.get(k.split("-")[0]),
                               threads=torch.get_num_threads(), load_before=load0, load_after=C.machine()["loadavg"],
                               wall_s=round(time.time() - t0, 1), reps=args.reps, device=dev)
                    rows.append(row)
                    print(row)
    C.write_jsonl(__import__("pathlib").Path(args.out), [dict(machine=info, ceiling=ceil)] + rows)
    cols = ["config", "mode", "batch", "impl", "median_ms_per_img", "best_ms_per_img", "img_per_s", "gflops_median",
            "pct_of_conv_ceiling", "peak_mem_growth_mb", "token_agreement"]
    print(C.markdown_table(rows, cols))


if __name__ == "__main__":
    main()

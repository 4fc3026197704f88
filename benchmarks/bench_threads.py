"""1 vs 2 threads per process, and 1 process x 2 threads vs 2 processes x 1 thread.

    python benchmarks/bench_threads.py --config f16 --images 4 --reps 3

Part 1 times batch-1 encode with torch.set_num_threads(1) and (2) alternating in one process.
Part 2 encodes --images images per process: one process with 2 threads, then two processes
with 1 thread each at the same time; reports total images/s. The load average before and after
each part is recorded: on a shared machine other work changes the answer.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import torch

import common as C


def _worker(cfg: str, threads: int, n: int, fast: bool, start, q) -> None:
    torch.set_num_threads(threads)
    tok = C.build_imagetok(cfg)
    tok.fast = fast
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    tok.encode_pixels(x)  # warm up
    start.wait()
    t = time.perf_counter()
    for _ in range(n):
        tok.encode_pixels(x)
    q.put(time.perf_counter() - t)


def throughput(cfg: str, procs: int, threads: int, n: int, fast: bool) -> float:
    ctx = mp.get_context("spawn")
    start, q = ctx.Barrier(procs + 1), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(cfg, threads, n, fast, start, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    start.wait()
    t = time.perf_counter()
    times = [q.get() for _ in ps]
    wall = time.perf_counter() - t
    for p in ps:
        p.join()
    return procs * n / max(wall, max(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="f16")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--out", default=str(C.RESULTS / "threads.jsonl"))
    args = p.parse_args()
    info = C.machine()
    print("machine:", info)
    tok = C.build_imagetok(args.config)
    tok.fast = args.fast
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))

    def with_threads(n: int):
        def f():
            torch.set_num_threads(n)
            tok.encode_pixels(x)
        return f

    load0 = C.machine()["loadavg"]
    t = C.interleaved({"1 thread": with_threads(1), "2 threads": with_threads(2)}, reps=args.reps)
    part1 = {k: {kk: round(v * 1e3) for kk, v in C.summary(ts).items() if kk != "n"} for k, ts in t.items()}
    print("encode b1 ms:", part1, "load", load0, "->", C.machine()["loadavg"])
    del tok
    rows = [dict(part="interleaved_b1_encode_ms", config=args.config, fast=args.fast, result=part1, load_before=load0,
                 load_after=C.machine()["loadavg"])]
    for procs, threads in ((1, 2), (2, 1), (1, 1)):
        load0 = C.machine()["loadavg"]
        ips = throughput(args.config, procs, threads, args.images, args.fast)
        rows.append(dict(part="throughput_img_per_s", config=args.config, fast=args.fast, procs=procs, threads=threads,
                         img_per_s=round(ips, 3), load_before=load0, load_after=C.machine()["loadavg"]))
        print(rows[-1])
    C.write_jsonl(Path(args.out), [dict(machine=info)] + rows)


if __name__ == "__main__":
    main()

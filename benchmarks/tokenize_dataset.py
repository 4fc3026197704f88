"""Benchmark: end-to-end ``tokenize_dataset`` throughput vs model-only encode throughput.

Target (issue 8): end-to-end images/s on 1024-px JPEGs >= 90% of the model-only encode
throughput on the same machine, with the bundled model.

    python benchmarks/tokenize_dataset.py                      # bundled config, random weights
    python benchmarks/tokenize_dataset.py --model path/to/model --images my_jpegs/ --n 256

Method: the same N images, the same batch size; model-only = ``tok.encode_pixels`` on the
already-preprocessed batches (no decode, no I/O); end-to-end = a fresh ``tokenize_dataset`` run
into an empty folder (decode in loader workers, encode, Parquet writes, merge; the model is loaded
once, outside the timing). Both are interleaved in one process (A B A B ...) because this machine's
speed drifts with other load; medians and bests are reported, with the load average. Memory (separate,
untimed runs, since sampling costs time): peak PSS of this process plus its loader workers
(sampled every 50 ms) for model-only and end-to-end, and with ``--growth`` the end-to-end peak for
3N images, to show it does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagetok import Tokenizer  # noqa: E402
from imagetok import image as _image  # noqa: E402
from imagetok.data.sources import list_source  # noqa: E402
from imagetok.data.token_dataset import _Images, _load_batches, tokenize_dataset  # noqa: E402

BUNDLED_CONFIG = {"family": "vqgan", "ch": 32, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [],
                  "z_channels": 64, "embed_dim": 8, "n_embed": 4096, "codebook_norm": "l2", "resolution": 256}


def make_jpegs(folder: Path, n: int, w: int = 1024, h: int = 768, quality: int = 90) -> None:
    """Photo-like synthetic JPEGs (smooth colour fields + texture + noise), about 150-300 KB each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / w
    for i in range(n):
        chans = []
        for _ in range(3):
            f = rng.uniform(1, 12, 4)
            chans.append(np.sin(x * f[0] + y * f[1] + rng.uniform(0, 6)) * 60 + np.sin(x * f[2] * 8) * np.cos(y * f[3] * 8) * 30)
        img = np.stack(chans, 2) + 128 + rng.normal(0, 10, (h, w, 3)).astype(np.float32)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:05d}.jpg", quality=quality)


class RssSampler:
    """Peak memory (PSS) of this process plus its children, sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss(pid: int) -> int:
        """Proportional set size (shared pages split between the processes sharing them), so
        forked workers do not count torch's libraries twice; falls back to RSS."""
        for name, field in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
            try:
                with open(name) as f:
                    for line in f:
                        if line.startswith(field):
                            return int(line.split()[1]) * 1024
            except OSError:
                continue
        return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def total(self) -> int:
        me = os.getpid()
        return self._rss(me) + sum(self._rss(c) for c in self._children(me))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.total())
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def model_only(tok: Tokenizer, batches: list[torch.Tensor]) -> float:
    t = time.perf_counter()
    for x in batches:
        tok.encode_pixels(x)
    return time.perf_counter() - t


def end_to_end(tok: Tokenizer, src: Path, work: Path, args, measure_memory: bool = False) -> tuple[float, int]:
    """Seconds for one fresh run (and the peak PSS when ``measure_memory``: the sampler reads
    smaps_rollup, which costs time, so timed runs do not sample)."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    mem = RssSampler() if measure_memory else None
    if mem:
        mem.__enter__()
    try:
        t = time.perf_counter()
        s = tokenize_dataset(src, out, model=tok, batch_size=args.batch_size, workers=args.workers,
                             shard_size=args.shard_size, progress=False)
        dt = time.perf_counter() - t
    finally:
        if mem:
            mem.__exit__()
    assert s["complete"] and s["failed"] == 0 and s["rows"] == s["images"], s
    return dt, (mem.peak if mem else 0)


def loader_only(src: Path, size: int, factor: int, workers: int, batch_size: int) -> float:
    work = list_source(src)
    batches = [list(range(i, min(i + batch_size, len(work)))) for i in range(0, len(work), batch_size)]
    t = time.perf_counter()
    n = sum(len(b) for b in _load_batches(_Images(work, size, factor, True), batches, workers))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder/name (default: the bundled model's config with random weights)")
    ap.add_argument("--images", type=Path, default=None, help="folder of JPEGs (default: N synthetic 1024x768 JPEGs)")
    ap.add_argument("--n", type=int, default=48, help="images per run (default 48)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--growth", action="store_true", help="also measure peak memory for 3N images")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.from_pretrained(args.model) if args.model else Tokenizer.from_config(BUNDLED_CONFIG, seed=0)
    size, factor = tok.default_size, max(tok.downsample_factors)
    work = Path(tempfile.mkdtemp(prefix="imagetok-bench-"))
    try:
        if args.images:
            files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n]
            src = work / "src"
            src.mkdir()
            for p in files:
                os.symlink(p.resolve(), src / p.name)
        else:
            src = work / "src"
            make_jpegs(src, args.n)
        paths = sorted(src.iterdir())
        n = len(paths)
        with Image.open(paths[0]) as im:
            first_size = im.size
        x = tok.preprocess([str(p) for p in paths], size=size)[0]
        batches = list(torch.split(x, args.batch_size))
        tok.encode_pixels(batches[0])  # warm-up
        end_to_end(tok, src, work, args)  # warm-up (page cache, worker start-up code paths)
        load0 = os.getloadavg()
        rss_base = RssSampler().total()
        m_times, e_times = [], []
        for r in range(args.rounds):
            m_times.append(model_only(tok, batches))
            e_times.append(end_to_end(tok, src, work, args)[0])
            print(f"round {r}: model-only {n / m_times[-1]:.2f} img/s, end-to-end {n / e_times[-1]:.2f} img/s", file=sys.stderr)
        load1 = os.getloadavg()
        with RssSampler() as mem:
            model_only(tok, batches)
        peak_model = mem.peak
        _, peak = end_to_end(tok, src, work, args, measure_memory=True)
        loader_rate = loader_only(src, size, factor, args.workers, args.batch_size)
        res = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
            "model": args.model or "bundled config (vqgan f8, 4096 codes, ch=32), random weights",
            "images": n, "image_size": list(first_size), "size": size, "batch_size": args.batch_size, "workers": args.workers,
            "rounds": args.rounds,
            "model_only_img_s": {"median": n / statistics.median(m_times), "best": n / min(m_times)},
            "end_to_end_img_s": {"median": n / statistics.median(e_times), "best": n / min(e_times)},
            "ratio_median": statistics.median(m_times) / statistics.median(e_times),
            "ratio_best": min(m_times) / min(e_times),
            "ratio_per_round": [m / e for m, e in zip(m_times, e_times)],
            "loader_only_img_s": loader_rate,
            "pss_before_mib": rss_base / 2**20,
            "peak_pss_mib_model_only": peak_model / 2**20,
            "peak_pss_mib": peak / 2**20,
            "loadavg_before_after": [load0, load1],
        }
        if args.growth:
            big = work / "big"
            big.mkdir()
            for k in range(3):
                for p in paths:
                    os.symlink(p.resolve(), big / f"{k}_{p.name}")
            _, peak3 = end_to_end(tok, big, work, args, measure_memory=True)
            res["peak_pss_mib_3n"] = peak3 / 2**20
        print(json.dumps(res, indent=1))
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

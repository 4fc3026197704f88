"""Benchmark: images/s of ``tokenize-dataset`` vs the two public token-extraction recipes, same model.

    python benchmarks/extraction_recipes.py                       # CPU, 1 thread per process
    python benchmarks/extraction_recipes.py --device cuda --n 2048 --batch-size 64 --workers 8

Recipes (each writes the tokens of the same N JPEGs with the same model and preprocessing):

- ``model_only``: ``tok.encode_pixels`` on already-decoded, already-resized batches of
  ``--batch-size`` (no I/O): the ceiling every recipe is compared to. ``model_only_b1``: the same,
  one image per call (added when ``--batch-size`` is not 1; on a 1-thread CPU small batches can be
  faster, since activations stay in cache).
- ``imagetok``: a fresh ``tokenize_dataset`` run into an empty folder (decode in loader processes,
  encode, Parquet shards with atomic commits, merge). ``imagetok_draft``: the same with ``--draft``
  (JPEG DCT-domain downscaling while decoding: less decode work; tokens differ slightly from
  ``encode()``, which is why it is opt-in).
- ``llamagen``: the loop of LlamaGen's ``autoregressive/train/extract_codes_c2i.py``, rewritten here
  (not copied): a ``torch.utils.data.DataLoader`` with ``batch_size=1`` and loader workers, one
  forward pass per image, one ``.npy`` of codes and one of the label per image. The original also
  encodes a horizontally flipped copy of each image (``--llamagen-flip`` adds it: twice the model
  work); by default both sides encode each image once.
- ``datasets_map``: a plain ``datasets.Dataset.map(batched=True)`` over an ``Image()`` column, the
  function decoding and encoding in the same process (no ``num_proc``), results in the Arrow cache.

CPU seconds per image (this process plus its loader processes) are reported next to images/s: on a
shared machine whose scheduler gives each session one share (Linux autogroup), decoding in another
process is not free, and wall-clock ratios then measure CPU cost rather than overlap.

Runs are interleaved (model_only, imagetok, llamagen, datasets_map, then again ...) because this
machine's speed drifts with other load; medians and bests are reported with the load average. On
CUDA the GPU's busy fraction of each recipe is sampled with ``nvidia-smi`` (``utilization.gpu``,
every 100 ms) when it is installed.

Target (issue 17): ``imagetok`` >= 90% of ``model_only`` images/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagetok import Tokenizer  # noqa: E402
from imagetok.data import tokenize_dataset  # noqa: E402

_spec = importlib.util.spec_from_file_location("_bench_td", Path(__file__).with_name("tokenize_dataset.py"))
_td = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_td)
BUNDLED_CONFIG, make_jpegs = _td.BUNDLED_CONFIG, _td.make_jpegs


def _sync(tok: Tokenizer) -> None:
    if tok.device.type == "cuda":
        torch.cuda.synchronize(tok.device)


# ------------------------------------------------------------------------------------- recipes
def run_model_only(tok: Tokenizer, batches: list[torch.Tensor], **_) -> None:
    for x in batches:
        tok.encode_pixels(x)
    _sync(tok)


def run_model_only_b1(tok: Tokenizer, batches: list[torch.Tensor], **_) -> None:
    for x in batches:
        for i in range(x.shape[0]):
            tok.encode_pixels(x[i : i + 1])
    _sync(tok)


def run_imagetok(tok: Tokenizer, src: Path, work: Path, args: argparse.Namespace, draft: bool = False, **_) -> None:
    out = work / "imagetok"
    shutil.rmtree(out, ignore_errors=True)
    s = tokenize_dataset(src, out, model=tok, batch_size=args.batch_size, workers=args.workers,
                         shard_size=args.shard_size, progress=False, draft=draft)
    assert s["complete"] and s["failed"] == 0 and s["rows"] == s["images"], s


def run_imagetok_draft(tok: Tokenizer, src: Path, work: Path, args: argparse.Namespace, **_) -> None:
    run_imagetok(tok, src, work, args, draft=True)


class _FolderImages(torch.utils.data.Dataset):
    """LlamaGen-style dataset: (pixels [3, H, W] in [0, 1], label) per image file (ImageFolder-like)."""

    def __init__(self, paths: list[Path], tok: Tokenizer):
        self.paths, self.tok = paths, tok

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x, _ = self.tok.preprocess(str(self.paths[i]))  # the same resize + centre crop as the others
        return x[0], 0


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def run_llamagen(tok: Tokenizer, paths: list[Path], work: Path, args: argparse.Namespace, **_) -> None:
    out = work / "llamagen"
    shutil.rmtree(out, ignore_errors=True)
    (out / "codes").mkdir(parents=True)
    (out / "labels").mkdir()
    loader = torch.utils.data.DataLoader(_FolderImages(paths, tok), batch_size=1, shuffle=False, num_workers=args.workers,
                                         pin_memory=tok.device.type == "cuda", drop_last=False,
                                         worker_init_fn=_one_thread if args.workers else None)
    for step, (x, y) in enumerate(loader):
        x = x.to(tok.device)
        if args.llamagen_flip:
            x = torch.cat([x, torch.flip(x, dims=[-1])])
        codes = tok.encode_pixels(x)
        np.save(out / "codes" / f"{step}.npy", codes.reshape(1, x.shape[0], -1).cpu().numpy())
        np.save(out / "labels" / f"{step}.npy", y.numpy())


def run_datasets_map(tok: Tokenizer, paths: list[Path], work: Path, args: argparse.Namespace, **_) -> None:
    import datasets

    datasets.disable_progress_bars()
    cache = work / "hfcache"
    shutil.rmtree(cache, ignore_errors=True)
    ds = datasets.Dataset.from_dict({"image": [str(p) for p in paths]}).cast_column("image", datasets.Image())

    def encode(batch):
        tokens = tok.encode(batch["image"])  # decode (PIL, via datasets) + resize + encode, here
        return {"tokens": tokens.reshape(tokens.shape[0], -1).cpu().numpy()}

    cache.mkdir(parents=True)
    out = ds.map(encode, batched=True, batch_size=args.batch_size, remove_columns=["image"],
                 cache_file_name=str(cache / "tokens.arrow"), load_from_cache_file=False, desc=None)
    assert len(out) == len(paths)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader processes are joined by the end
    of each recipe), user + system."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


# --------------------------------------------------------------------------------- GPU sampler
class GpuBusy:
    """Mean ``utilization.gpu`` from nvidia-smi while the block runs (None without nvidia-smi)."""

    def __init__(self, enabled: bool, index: int = 0):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.index, self.samples, self._proc = index, [], None

    def __enter__(self):
        if self.enabled:
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    @property
    def busy(self) -> float | None:
        return statistics.mean(self.samples) / 100 if self.samples else None


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder/name (default: the bundled config with random weights)")
    ap.add_argument("--config", default=None, help="a model config as JSON (random weights), e.g. a taming f16 VQGAN")
    ap.add_argument("--images", type=Path, default=None, help="folder of JPEGs (default: N synthetic 1024x768 JPEGs)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="loader processes for imagetok and llamagen")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fast", action="store_true", help="Tokenizer.fast for every recipe")
    ap.add_argument("--llamagen-flip", action="store_true", help="encode a flipped copy too, as the original recipe does")
    ap.add_argument("--recipes", default="model_only,imagetok,imagetok_draft,llamagen,datasets_map")
    ap.add_argument("--json", type=Path, default=None, help="append the result here (JSON lines)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        tok = Tokenizer.from_pretrained(args.model, device=args.device)
    else:
        tok = Tokenizer.from_config(json.loads(args.config) if args.config else BUNDLED_CONFIG, seed=0).to(args.device)
    tok.fast = args.fast
    recipes = args.recipes.split(",")
    work = Path(tempfile.mkdtemp(prefix="imagetok-recipes-"))
    try:
        src = work / "src"
        if args.images:
            files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n]
            src.mkdir()
            for p in files:
                os.symlink(p.resolve(), src / p.name)
        else:
            make_jpegs(src, args.n)
        paths = sorted(src.iterdir())
        n = len(paths)
        x = tok.preprocess([str(p) for p in paths])[0]
        batches = [b.to(tok.device) for b in torch.split(x, args.batch_size)]
        fns = {"model_only": run_model_only, "model_only_b1": run_model_only_b1, "imagetok": run_imagetok,
               "imagetok_draft": run_imagetok_draft, "llamagen": run_llamagen, "datasets_map": run_datasets_map}
        if args.batch_size != 1 and "model_only" in recipes and "model_only_b1" not in recipes:
            recipes.insert(recipes.index("model_only") + 1, "model_only_b1")
        kw = {"batches": batches, "src": src, "paths": paths, "work": work, "args": args}
        for r in recipes:  # warm-up: code paths, page cache, cuDNN autotuning
            fns[r](tok, **kw)
        times: dict[str, list[float]] = {r: [] for r in recipes}
        cpu: dict[str, list[float]] = {r: [] for r in recipes}
        busy: dict[str, list[float]] = {r: [] for r in recipes}
        load0 = os.getloadavg()
        for rnd in range(args.rounds):
            for r in recipes:
                with GpuBusy(tok.device.type == "cuda", tok.device.index or 0) as g:
                    _sync(tok)
                    c = _cpu_seconds()
                    t = time.perf_counter()
                    fns[r](tok, **kw)
                    _sync(tok)
                    times[r].append(time.perf_counter() - t)
                    cpu[r].append(_cpu_seconds() - c)
                if g.busy is not None:
                    busy[r].append(g.busy)
            print(f"round {rnd}: " + ", ".join(f"{r} {n / times[r][-1]:.1f} img/s" for r in recipes), file=sys.stderr)
        load1 = os.getloadavg()
        res = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                       f"{args.threads} thread(s) in the main process, device {tok.device}"
                       + (f" ({torch.cuda.get_device_name(tok.device)})" if tok.device.type == "cuda" else ""),
            "model": args.model or (f"config {args.config}, random weights" if args.config else "bundled config (vqgan f8, 4096 codes, ch=32), random weights"),
            "images": n, "size": tok.default_size, "batch_size": args.batch_size, "workers": args.workers,
            "fast": args.fast, "llamagen_flip": args.llamagen_flip, "rounds": args.rounds,
            "img_s": {r: {"median": n / statistics.median(t), "best": n / min(t)} for r, t in times.items()},
            "vs_model_only": {r: {"median": statistics.median(times["model_only"]) / statistics.median(t),
                                  "best": min(times["model_only"]) / min(t)}
                              for r, t in times.items()} if "model_only" in times else None,
            "cpu_s_per_image": {r: statistics.median(c) / n for r, c in cpu.items()},
            "gpu_busy": {r: statistics.mean(b) for r, b in busy.items() if b} or None,
            "loadavg_before_after": [load0, load1],
        }
        print(json.dumps(res, indent=1))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Token datasets: tokenize an image source into Parquet shards for language-model training, and read them.

>>> from imagetok.data import tokenize_dataset, TokenDataset
>>> tokenize_dataset("photos/", "photos-tokens/", model=None, batch_size=16)
>>> for row in TokenDataset("photos-tokens/"):       # row.tokens: int64 [h, w]
...     ...

Command line: ``imagetok tokenize-dataset SRC --out DIR``; several processes / machines:
``torchrun --nproc-per-node N -m imagetok tokenize-dataset ...``.

**Sources** are walked by :mod:`imagetok.data.sources` (folders, list files, ``.tar`` shards and
patterns). Work is the sorted list of keys, cut into fixed shards of ``shard_size`` keys: shard
``i`` holds keys ``[i * shard_size, (i + 1) * shard_size)``; with ``W`` processes, rank ``r`` does
the shards with ``i % W == r``.

**Output folder**::

    DIR/dataset_info.json                      tokenizer, preprocessing, counts, shard list
    DIR/errors.jsonl                           one JSON line per image that failed
    DIR/data/train-00000-of-00012.parquet      one row per image (see below)
    DIR/.imagetok/                             run plan, per-shard error lists, temporary files

Parquet columns: ``key`` (string), ``width``/``height`` (int32, original image size), ``grid``
(list<int32>: ``[h, w]`` of the token grid; ``[h_top, w_top, h_bottom, w_bottom]`` for VQ-VAE-2) and
``tokens`` (list of uint8/uint16/uint32, the smallest type that holds the codebook: codes in raster
order, levels concatenated coarse to fine, each level's own ids). The tokens equal
``Tokenizer.encode(path, size=size)`` of the same file.

**Safety.** A shard is written under a temporary name and renamed when complete, after its error
list; a rerun skips shards that exist and redoes the others, so a killed run never leaves a
duplicate, a gap, or a partial shard under a final name. A rerun with another model, size, shard
size or source list is refused. Unreadable, corrupt or non-image files are recorded (key, error)
and skipped; the summary and exit status report them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .. import image as _image
from ..config import config_hash, config_to_dict
from ..errors import ImagetokError, InputError, MissingDependencyError
from ..llm import LLMBridge
from .encode import BatchEncoder
from .remote import Output, RemoteRoot, is_url, list_remote_worklist, local_path, open_output
from .sources import IMAGE_EXTENSIONS, MAX_TAR_MEMBER_BYTES, WorkList, list_source  # noqa: F401 (used below)

log = logging.getLogger(__name__)

FORMAT = "imagetok-token-dataset"
FORMAT_VERSION = 1
INFO_NAME, ERRORS_NAME, DATA_DIR, STATE_DIR = "dataset_info.json", "errors.jsonl", "data", ".imagetok"
_DIST_TIMEOUT = timedelta(hours=48)  # how long finished ranks wait for the slowest one
_DEFAULT: Any = object()


def require_pyarrow() -> Any:
    """Import pyarrow (and pyarrow.parquet), or raise MissingDependencyError with the install command."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "tokenize-dataset writes Parquet and needs pyarrow: pip install 'imagetok[datasets]' (or pip install pyarrow)"
        ) from None
    return pyarrow


# ============================================================================== loading images
class _Item(NamedTuple):
    index: int
    key: str
    width: int
    height: int
    pixels: np.ndarray | None  # HxWx3 uint8 (or float32 for high-bit-depth files), already fitted
    error: str | None


class _Images(torch.utils.data.Dataset):
    """Decode + resize one image per ``__getitem__``; runs in DataLoader worker processes.

    Uses exactly the preprocessing of :meth:`Tokenizer.preprocess` for a path (read_image with the
    to_rgb_arrays, fit), so the tokens equal ``encode(path)`` (unless ``draft`` is on).
    """

    def __init__(self, work: WorkList, size: int | None, factor: int, draft: bool):
        self.work, self.size, self.factor = work, size, factor
        self.draft_size = size if draft else None
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, i: int) -> _Item:
        key = self.work.keys[i]
        try:
            img, (w, h) = _image.read_image(self.work.read(i, self._handles), name=key, draft_size=self.draft_size)
            arrays, _, _ = _image.to_rgb_arrays(img)
            return _Item(i, key, w, h, _image.fit(arrays[0], self.size, self.factor), None)
        except Exception as e:  # one bad image is recorded, never fatal
            msg = str(e) if isinstance(e, ImagetokError) else f"{type(e).__name__}: {e}"
            return _Item(i, key, 0, 0, None, msg)

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()


def _identity(batch: list) -> list:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class _ShardBatches:
    """Index batches in shard order; a batch never spans two shards."""

    def __init__(self, shards: Sequence[int], shard_size: int, n: int, batch_size: int):
        self.shards, self.shard_size, self.n, self.batch_size = list(shards), shard_size, n, batch_size

    def bounds(self, s: int) -> tuple[int, int]:
        return s * self.shard_size, min((s + 1) * self.shard_size, self.n)

    def __iter__(self) -> Iterator[list[int]]:
        for s in self.shards:
            lo, hi = self.bounds(s)
            for b in range(lo, hi, self.batch_size):
                yield list(range(b, min(b + self.batch_size, hi)))

    def __len__(self) -> int:
        return sum(math.ceil((hi - lo) / self.batch_size) for lo, hi in map(self.bounds, self.shards))


# ================================================================================ files, plan
def _token_dtype(codebook_sizes: Sequence[int]) -> str:
    k = max(codebook_sizes)
    return "uint8" if k <= 256 else "uint16" if k <= 65536 else "uint32"


def shard_name(index: int, num_shards: int) -> str:
    """``train-00003-of-00012.parquet`` (at least 5 digits)."""
    w = max(5, len(str(num_shards)))
    return f"train-{index:0{w}d}-of-{num_shards:0{w}d}.parquet"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_PLAN_MUST_MATCH = (("tokenizer", "config_hash"), ("tokenizer", "network"), ("preprocessing",), ("token_dtype",), ("source", "fingerprint"), ("source", "items"), ("shard_size",))


def _get(d: dict, path: Sequence[str]) -> Any:
    for p in path:
        d = d.get(p, {}) if isinstance(d, dict) else {}
    return d


def _ensure_plan(out: Output, plan: dict) -> None:
    """Write the run plan, or check that an existing one describes the same run."""
    if out.local is not None:
        for d in (f"{STATE_DIR}/errors", f"{STATE_DIR}/tmp", DATA_DIR):
            (out.local / d).mkdir(parents=True, exist_ok=True)
    text = out.read_text(f"{STATE_DIR}/plan.json")
    if text is not None:
        old = json.loads(text)
        diffs = [".".join(k) for k in _PLAN_MUST_MATCH if _get(old, k) != _get(plan, k)]
        if diffs:
            raise InputError(
                f"{out} holds (part of) another tokenization: {', '.join(diffs)} differ from this run "
                f"(was {[_get(old, k) for k in _PLAN_MUST_MATCH if '.'.join(k) in diffs]}). "
                "Use a new --out folder, or delete this one to start over"
            )
        return
    out.write_text(f"{STATE_DIR}/plan.json", json.dumps(plan, indent=1, sort_keys=True) + "\n")


def _read_plan(out: Output) -> dict:
    text = out.read_text(f"{STATE_DIR}/plan.json")
    if text is None:
        raise InputError(f"{out}: not a tokenize-dataset output folder ({STATE_DIR}/plan.json is missing)")
    return json.loads(text)


# ============================================================================== shard writing
class _ShardWriter:
    """Rows of one shard -> a temporary Parquet file, committed into place by :meth:`commit`
    (a rename on local folders; one verified upload on object stores)."""

    def __init__(self, out: Output, index: int, plan: dict, row_group: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.pq = pa, pq
        n = plan["num_shards"]
        self.name = shard_name(index, n)
        self.out = out
        self.final = f"{DATA_DIR}/{self.name}"
        self.errors_path = f"{STATE_DIR}/errors/{self.name[: -len('.parquet')]}.jsonl"
        self.tmp = out.tmp_dir() / f"{self.name}.{socket.gethostname()}-{os.getpid()}"
        self.dtype = np.dtype(plan["token_dtype"])
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": index, "num_shards": n,
                "config_hash": plan["tokenizer"]["config_hash"], "token_dtype": plan["token_dtype"]}
        self.schema = pa.schema(
            [("key", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
             ("grid", pa.list_(pa.int32())), ("tokens", pa.list_(pa.from_numpy_dtype(self.dtype)))],
            metadata={"imagetok": json.dumps(meta)},
        )
        self.writer = pq.ParquetWriter(str(self.tmp), self.schema)
        self.row_group = row_group
        self.rows: list[tuple[str, int, int, list[int], np.ndarray]] = []
        self.errors: list[dict] = []
        self.count = 0

    def add(self, key: str, width: int, height: int, grid: list[int], tokens: np.ndarray) -> None:
        self.rows.append((key, width, height, grid, tokens))
        if len(self.rows) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        pa = self.pa
        keys, widths, heights, grids, toks = zip(*self.rows)
        lens = np.fromiter((t.size for t in toks), dtype=np.int32, count=len(toks))
        offsets = np.zeros(len(toks) + 1, dtype=np.int32)
        np.cumsum(lens, out=offsets[1:])
        tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(toks).astype(self.dtype, copy=False)))
        table = pa.Table.from_arrays(
            [pa.array(keys, pa.string()), pa.array(widths, pa.int32()), pa.array(heights, pa.int32()),
             pa.array(grids, pa.list_(pa.int32())), tokens],
            schema=self.schema,
        )
        self.writer.write_table(table)
        self.count += len(self.rows)
        self.rows = []

    def commit(self) -> None:
        """Finish the file, write the shard's error list, then commit the shard into place."""
        self._flush()
        self.writer.close()
        self.out.write_text(self.errors_path, "".join(json.dumps(e) + "\n" for e in self.errors))
        self.out.commit_file(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already broken: the file is deleted anyway
            pass
        self.tmp.unlink(missing_ok=True)


# ============================================================================ distributed setup
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    group: Any = None  # a torch.distributed group for the final barrier, when one exists
    created: bool = False

    def barrier(self) -> None:
        if self.group is not None:
            torch.distributed.barrier(group=self.group)

    def close(self) -> None:
        if self.created:
            torch.distributed.destroy_process_group()


def _setup_dist(rank: int | None, world_size: int | None) -> _Dist:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise InputError("pass both rank and world_size (or neither, to use torchrun's environment)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        return _Dist(rank, world_size, local_rank, local_world)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        group = dist.new_group(backend="gloo", timeout=_DIST_TIMEOUT) if dist.get_backend() != "gloo" else None
        return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, local_world, group or dist.group.WORLD)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group("gloo", timeout=_DIST_TIMEOUT)
        return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, local_world, dist.group.WORLD, created=True)
    return _Dist()


# ================================================================================== the run
def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar on stderr (images/s, ETA); disabled when not wanted (``total`` stays readable)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not (enabled and total > 0),
                mininterval=0.5 if os.isatty(2) else 30, smoothing=0.1)


def _default_workers(local_world: int) -> int:
    return max(1, min(8, (os.cpu_count() or 2) // max(1, local_world) - 1))


def open_source(src: str | os.PathLike, *, image_column: str | None = None, key_column: str | None = None,
                label_column: str | None = None, split: str | None = None) -> Any:
    """The work list of ``src``: a :class:`~imagetok.data.tables.TableSource` for Parquet / Hugging
    Face datasets (or whenever a column is named), a remote work list for other fsspec URLs, else
    :func:`~imagetok.data.sources.list_source`.

    Raises:
        InputError: see those functions; columns or a split given for a source that is no table.
    """
    from . import tables

    columns = {"image_column": image_column, "key_column": key_column, "label_column": label_column, "split": split}
    if any(v is not None for v in columns.values()) or tables.looks_like_table(src, IMAGE_EXTENSIONS):
        return tables.TableSource(src, **columns)
    if is_url(str(src)) and not str(src).startswith("file://"):
        return list_remote_worklist(str(src), IMAGE_EXTENSIONS)
    return list_source(src.split("://", 1)[1] if isinstance(src, str) and src.startswith("file://") else src)


def _plan(tok: Any, work: WorkList, src: Any, size: int | None, draft: bool, shard_size: int) -> dict:
    from .. import __version__

    factor = max(tok.downsample_factors)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "imagetok_version": __version__,
        "tokenizer": {
            "name": tok.name,
            "revision": getattr(tok, "revision", None),
            "family": tok.config.family,
            "config_hash": config_hash(tok.config),
            "config": config_to_dict(tok.config),
            "codebook_sizes": list(tok.codebook_sizes),
            "downsample_factors": list(tok.downsample_factors),
            "network": {"dtype": str(tok.dtype).replace("torch.", ""), "fast": bool(tok.fast)},
        },
        "preprocessing": {
            "size": size,
            "resize": (
                f"shorter side to {size} (bicubic, antialiased), centre crop to {size}x{size}"
                if size is not None else f"none; centre crop each side down to a multiple of {factor}"
            ),
            "jpeg_draft": bool(draft and size is not None),
            "color": "EXIF orientation applied; RGB; alpha composited on white; grayscale repeated; 16-bit scaled to [0, 1]",
            "input_range": list(tok.config.input_range),
        },
        "token_dtype": _token_dtype(tok.codebook_sizes),
        "source": {
            "path": str(src),
            "kind": work.kind,
            "items": len(work),
            "fingerprint": work.fingerprint(),
            "ignored_files": work.ignored,
            "duplicate_keys": work.duplicates,
        },
        "source_errors": work.source_errors,
        "shard_size": shard_size,
        "num_shards": math.ceil(len(work) / shard_size),
    }


def tokenize_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: Any = None,
    size: int | None = _DEFAULT,
    batch_size: int = 16,
    workers: int | None = None,
    shard_size: int = 1000,
    draft: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    fast: bool = False,
    image_column: str | None = None,
    key_column: str | None = None,
    label_column: str | None = None,
    split: str | None = None,
) -> dict:
    """Tokenize every image under ``src`` into Parquet shards in ``out`` (see the module docstring).

    Args:
        src: a folder, a text file listing image paths, a ``.tar`` shard or a pattern of them.
        out: output folder (created). A rerun into the same folder resumes.
        model: an :class:`imagetok.Tokenizer`, or a name/folder for ``Tokenizer.from_pretrained``
            (None: the bundled model).
        size: resize+crop side (default: the model's ``resolution``; None keeps each image's size,
            cropped to a multiple of the downsampling factor).
        batch_size: images per forward pass.
        workers: loader processes (0: load in this process; default: about one per spare core).
        shard_size: images per Parquet shard; fixed for the life of an output folder.
        draft: decode JPEGs at least 2x larger than ``size`` at reduced size (PIL draft): faster
            loading, but pixels (and so some tokens) differ from ``Tokenizer.encode(path)``, which
            always decodes fully. Off by default.
        device, dtype: where and in which dtype to run the network when ``model`` is a name
            (default device: ``cuda:LOCAL_RANK`` when CUDA is available, else cpu).
        rank, world_size: split the work by hand (e.g. one job per machine without torchrun);
            default: torchrun's ``RANK``/``WORLD_SIZE`` environment, else one process.
        progress: show images/s and ETA on stderr (rank 0 only).
        callback: called as ``callback(images_done, images_total)`` after each batch (this rank).
        fast: the fast path (:attr:`Tokenizer.fast`: bfloat16 network, float32 nearest-code
            search; tokens do not depend on the batch, but may differ from the exact path's).
        image_column, key_column, label_column, split: for table sources (Parquet, Hugging Face
            datasets; see :mod:`imagetok.data.tables`).

    Returns:
        A summary dict: ``images`` (in the source), ``processed`` (by this process in this call),
        ``failed_now``, ``shards_done_now``, ``shards_skipped``, ``complete`` (all shards present),
        ``rows`` / ``failed`` (whole dataset, when complete), ``seconds``, ``images_per_s``, ``info``.

    Raises:
        InputError: unusable source, invalid sizes, or ``out`` holds a different tokenization.
        MissingDependencyError: pyarrow is not installed.
    """
    from ..tokenizer import Tokenizer

    require_pyarrow()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive int, got {shard_size!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise InputError(f"workers must be an int >= 0, got {workers!r}")
    t_start = time.monotonic()
    dist = _setup_dist(rank, world_size)
    try:
        if isinstance(model, Tokenizer):
            tok = model
        else:
            if device is None:
                device = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
            tok = Tokenizer.from_pretrained(model, device=device, dtype=dtype)
        if fast:
            tok.fast = True
        size = tok.default_size if size is _DEFAULT else size
        factor = max(tok.downsample_factors)
        _image.check_size(size, factor)
        out = open_output(out)
        if out.local is not None:
            out.local.mkdir(parents=True, exist_ok=True)
        work = open_source(src, image_column=image_column, key_column=key_column, label_column=label_column, split=split)
        plan = _plan(tok, work, src, size, draft, shard_size)
        _ensure_plan(out, plan)
        n_shards = plan["num_shards"]
        mine = [i for i in range(n_shards) if i % dist.world == dist.rank]
        finished = set(out.listdir(DATA_DIR))
        todo = [i for i in mine if shard_name(i, n_shards) not in finished]
        if out.local is not None:  # leftovers of a killed run (object stores: nothing is left, uploads are whole)
            for i in todo:
                for stale in (out.local / STATE_DIR / "tmp").glob(shard_name(i, n_shards) + ".*"):
                    stale.unlink(missing_ok=True)
        sampler = _ShardBatches(todo, shard_size, len(work), batch_size)
        total = sum(hi - lo for lo, hi in map(sampler.bounds, todo))
        n_workers = _default_workers(dist.local_world) if workers is None else workers
        desc = "tokenize" if dist.world == 1 else f"tokenize (rank {dist.rank}/{dist.world})"
        bar = _progress_bar(total, progress and dist.rank == 0, desc)
        try:
            processed, failed = _run(tok, work, plan, out, sampler, size, factor, draft, n_workers, bar, callback)
        finally:
            bar.close()
        seconds = time.monotonic() - t_start
        summary: dict[str, Any] = {
            "images": len(work),
            "processed": processed,
            "failed_now": failed,
            "shards_done_now": len(todo),
            "shards_skipped": len(mine) - len(todo),
            "rank": dist.rank,
            "world_size": dist.world,
            "seconds": round(seconds, 3),
            "images_per_s": round(processed / seconds, 3) if seconds > 0 else None,
        }
        dist.barrier()
        info = None
        if dist.rank == 0 or dist.group is None:
            info = merge_dataset(out, quiet=dist.group is None and dist.rank != 0)
        summary["complete"] = info is not None if (dist.rank == 0 or dist.group is None) else None
        if info is not None:
            summary.update(rows=info["counts"]["rows"], failed=info["counts"]["failed"], info=out.url_of(INFO_NAME))
        return summary
    finally:
        if isinstance(out, Output):
            out.cleanup()
        dist.close()


def _run(tok: Any, work: WorkList, plan: dict, out: Output, sampler: _ShardBatches, size: int | None, factor: int,
         draft: bool, n_workers: int, bar: Any, callback: Callable[[int, int], None] | None) -> tuple[int, int]:
    """The loop: loader workers decode ahead while this process encodes and writes shards."""
    if len(sampler) == 0:
        return 0, 0
    images = _Images(work, size, factor, draft)
    loader = torch.utils.data.DataLoader(
        images,
        batch_sampler=sampler,
        num_workers=n_workers,
        collate_fn=_identity,
        worker_init_fn=_worker_init if n_workers else None,
        prefetch_factor=4 if n_workers else None,
    )
    row_group = min(sampler.shard_size, 1024)
    writer: _ShardWriter | None = None
    remaining = 0
    processed = failed = 0
    encoder = BatchEncoder(tok)

    def finished(loaded: Any) -> Any:  # the loader's batches, then the encoder's tail
        for batch in loaded:
            yield from encoder.submit(batch)
        yield from encoder.flush()

    try:
        for batch, encoded in finished(loader):
            shard = batch[0].index // sampler.shard_size
            if writer is None:
                writer = _ShardWriter(out, shard, plan, row_group)
                lo, hi = sampler.bounds(shard)
                remaining = hi - lo
            good = [it for it in batch if it.error is None]
            for it in batch:
                if it.error is not None:
                    writer.errors.append({"key": it.key, "error": it.error, "shard": shard})
            for it in batch:  # keep key order inside the shard
                if it.index in encoded:
                    grid, flat = encoded[it.index]
                    writer.add(it.key, it.width, it.height, grid, flat)
            n_bad = len(batch) - len(good)
            processed += len(batch)
            failed += n_bad
            remaining -= len(batch)
            if remaining == 0:
                writer.commit()
                writer = None
            bar.update(len(batch))
            if n_bad:
                bar.set_postfix(failed=failed, refresh=False)
            if callback is not None:
                callback(processed, bar.total)
    finally:
        if writer is not None:
            writer.abort()
        images.close()
    return processed, failed


# ============================================================================== merge / info
def merge_dataset(out: str | os.PathLike, *, quiet: bool = False) -> dict | None:
    """Write ``dataset_info.json`` and ``errors.jsonl`` from the finished shards in ``out``.

    Runs automatically at the end of :func:`tokenize_dataset` (rank 0 after a barrier); call it
    (``--merge-only``) after separate jobs or machines have filled one folder.

    Returns:
        The info dict, or None when some shards are still missing (nothing is written then).

    Raises:
        InputError: ``out`` is not a tokenize-dataset folder, or a shard's rows and errors do not
            add up to its images (a damaged or foreign file).
    """
    require_pyarrow()
    import pyarrow.parquet as pq

    out = out if isinstance(out, Output) else open_output(out)
    plan = _read_plan(out)
    n, size, total = plan["num_shards"], plan["shard_size"], plan["source"]["items"]
    shards, missing = [], []
    rows = failed = 0
    finished = set(out.listdir(DATA_DIR))
    error_texts: dict[str, str] = {}
    for i in range(n):
        name = shard_name(i, n)
        if name not in finished:
            missing.append(i)
            continue
        errs_rel = f"{STATE_DIR}/errors/{name[: -len('.parquet')]}.jsonl"
        errs = out.read_text(errs_rel)
        if errs is None:
            raise InputError(f"{out.url_of(errs_rel)} is missing for finished shard {name}; copy {STATE_DIR}/errors/ along with {DATA_DIR}/")
        error_texts[name] = errs
        n_err = sum(1 for line in errs.splitlines() if line.strip())
        with out.open_read(f"{DATA_DIR}/{name}") as f:
            n_rows = pq.ParquetFile(f).metadata.num_rows
        expect = min(size, total - i * size)
        if n_rows + n_err != expect:
            raise InputError(f"{out.url_of(DATA_DIR + '/' + name)}: {n_rows} rows + {n_err} errors != {expect} images of this shard; delete it and rerun")
        shards.append({"file": f"{DATA_DIR}/{name}", "index": i, "rows": n_rows, "failed": n_err})
        rows += n_rows
        failed += n_err
    if missing:
        if not quiet:
            log.warning("%s: %d of %d shards not finished yet (e.g. %s); dataset_info.json not written", out, len(missing), n, missing[:5])
        return None
    lines = [json.dumps({**e, "shard": None}) + "\n" for e in plan.get("source_errors", [])]
    out.write_text(ERRORS_NAME, "".join(lines) + "".join(error_texts[Path(s["file"]).name] for s in shards))
    order = ("format", "format_version", "imagetok_version", "tokenizer", "preprocessing", "token_dtype")
    info = {k: plan[k] for k in order}
    info["columns"] = {
        "key": "string: path relative to the source folder (or as listed; tar members as shard.tar/member)",
        "width": "int32: original image width",
        "height": "int32: original image height",
        "grid": "list<int32>: [h, w] of each level's token grid, coarse to fine",
        "tokens": f"list<{plan['token_dtype']}>: codes in raster order, levels concatenated coarse to fine",
    }
    info["source"] = plan["source"]
    info["counts"] = {"images": total, "rows": rows, "failed": failed, "source_errors": len(plan.get("source_errors", []))}
    info["data_files"] = f"{DATA_DIR}/*.parquet"
    info["errors_file"] = ERRORS_NAME
    info["shard_size"] = size
    info["num_shards"] = n
    info["shards"] = shards
    out.write_text(INFO_NAME, json.dumps(info, indent=1) + "\n")
    return info


# ==================================================================================== reading
class TokenRecord(NamedTuple):
    """One row of a token dataset: ``tokens`` is int64 ``[h, w]`` (a tuple of grids for VQ-VAE-2)."""

    key: str
    width: int
    height: int
    tokens: Any


class TokenDataset:
    """Read a tokenized dataset: rows as token grids or as LLM id sequences.

    Args:
        directory: a :func:`tokenize_dataset` output folder (with ``dataset_info.json``).
        rank, world_size: read only shards ``i % world_size == rank`` (one part per training process).

    Files are streamed one row group at a time, so memory does not grow with the dataset. The
    Parquet files also load with ``datasets.load_dataset("parquet", data_files=...)``, pandas and
    pyarrow (see the module docstring for the columns).
    """

    def __init__(self, directory: str | os.PathLike, *, rank: int = 0, world_size: int = 1):
        require_pyarrow()
        local = local_path(directory)
        self.remote = None if local is not None else RemoteRoot(str(directory))
        self.directory: Any = local if local is not None else self.remote.url
        path = f"{self.directory}/{INFO_NAME}"
        try:
            text = (local / INFO_NAME).read_text() if local is not None else self.remote.cat(INFO_NAME).decode()
        except FileNotFoundError:
            unfinished = (local / STATE_DIR).is_dir() if local is not None else self.remote.fs.exists(self.remote.join(f"{STATE_DIR}/plan.json"))
            hint = " (the run is unfinished: rerun tokenize-dataset, or --merge-only)" if unfinished else ""
            raise InputError(f"{self.directory}: no {INFO_NAME}{hint}") from None
        self.info = json.loads(text)
        if self.info.get("format") != FORMAT:
            raise InputError(f"{path}: not an imagetok token dataset (format {self.info.get('format')!r})")
        if self.info.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{path}: format_version {self.info.get('format_version')} is not supported (this imagetok reads {FORMAT_VERSION})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
        self.shards = [s for s in self.info["shards"] if s["index"] % world_size == rank]
        self.codebook_sizes = tuple(self.info["tokenizer"]["codebook_sizes"])
        self.downsample_factors = tuple(self.info["tokenizer"]["downsample_factors"])

    @property
    def files(self) -> list[Any]:
        """The Parquet shard paths (URL strings for a dataset at a URL), in key order."""
        if self.remote is not None:
            return [self.remote.url_of(s["file"]) for s in self.shards]
        return [self.directory / s["file"] for s in self.shards]

    def __len__(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def bridge(self, *, offset: int = 0, boi: bool | int = False, eoi: bool | int = False, eor: bool | int = False) -> LLMBridge:
        """An :class:`LLMBridge` for this dataset's vocabulary."""
        return LLMBridge(self.codebook_sizes, self.downsample_factors, offset=offset, boi=boi, eoi=eoi, eor=eor)

    def iter_rows(self, batch_rows: int = 1024) -> Iterator[TokenRecord]:
        """Yield :class:`TokenRecord` per image, in key order."""
        import pyarrow.parquet as pq

        n_levels = len(self.codebook_sizes)
        for s in self.shards:
            pf = pq.ParquetFile(self.directory / s["file"] if self.remote is None else self.remote.open(s["file"], "rb"))
            for rb in pf.iter_batches(batch_size=batch_rows, columns=["key", "width", "height", "grid", "tokens"]):
                keys = rb.column(0).to_pylist()
                widths = rb.column(1).to_numpy()
                heights = rb.column(2).to_numpy()
                grids, toks = rb.column(3), rb.column(4)
                g_off, g_val = grids.offsets.to_numpy(), grids.values.to_numpy()
                t_off, t_val = toks.offsets.to_numpy(), toks.values.to_numpy()
                for j, key in enumerate(keys):
                    grid = g_val[g_off[j] : g_off[j + 1]]
                    flat = torch.from_numpy(t_val[t_off[j] : t_off[j + 1]].astype(np.int64))
                    if n_levels == 1:
                        tokens = flat.reshape(int(grid[0]), int(grid[1]))
                    else:
                        parts, pos = [], 0
                        for lv in range(n_levels):
                            h, w = int(grid[2 * lv]), int(grid[2 * lv + 1])
                            parts.append(flat[pos : pos + h * w].reshape(h, w))
                            pos += h * w
                        tokens = tuple(parts)
                    yield TokenRecord(key, int(widths[j]), int(heights[j]), tokens)

    def __iter__(self) -> Iterator[TokenRecord]:
        return self.iter_rows()

    def sequences(self, bridge: LLMBridge | None = None) -> Iterator[torch.Tensor]:
        """Yield one int64 ``[N]`` LLM id sequence per image (default bridge: raw flat ids, no markers,
        as :meth:`Tokenizer.flatten`)."""
        bridge = bridge or self.bridge()
        for row in self.iter_rows():
            yield bridge.to_llm(row.tokens)

    def to_memmap(self, out_dir: str | os.PathLike | None = None, *, bridge: LLMBridge | None = None, dtype: str | None = None) -> dict:
        """See :func:`export_memmap`."""
        return export_memmap(self, out_dir, bridge=bridge, dtype=dtype)


def export_memmap(
    dataset: str | os.PathLike | TokenDataset,
    out_dir: str | os.PathLike | None = None,
    *,
    bridge: LLMBridge | None = None,
    dtype: str | None = None,
) -> dict:
    """Write all sequences as one flat memmap (nanoGPT / Megatron style) plus offsets.

    Files in ``out_dir`` (default ``DATASET/memmap``): ``tokens.bin`` (the LLM ids of every image
    back to back, ``dtype``), ``offsets.npy`` (int64 ``[N + 1]``: image ``i`` is
    ``tokens[offsets[i]:offsets[i + 1]]``), ``keys.jsonl`` (image keys in the same order) and
    ``memmap_info.json`` (dtype, counts, the bridge), written last.

    Read with ``np.memmap(out_dir / "tokens.bin", dtype=info["dtype"], mode="r")``.

    Args:
        bridge: maps tokens to ids (default: raw flat ids, no markers).
        dtype: "uint16" or "uint32" (default: uint16 when every id is below 65536).

    Raises:
        InputError: ids do not fit the requested dtype.
    """
    ds = dataset if isinstance(dataset, TokenDataset) else TokenDataset(dataset)
    bridge = bridge or ds.bridge()
    max_id = max([bridge.vocab_end - 1] + [v for v in (bridge.boi_id, bridge.eoi_id, bridge.eor_id) if v is not None])
    auto = "uint16" if max_id < 65536 else "uint32"
    dtype = dtype or auto
    if dtype not in ("uint16", "uint32"):
        raise InputError(f"dtype must be 'uint16' or 'uint32', got {dtype!r}")
    if max_id >= 2 ** (16 if dtype == "uint16" else 32):
        raise InputError(f"ids up to {max_id} do not fit {dtype}; use dtype='uint32'")
    if out_dir is None and ds.remote is not None:
        raise InputError(f"{ds.directory}: the dataset is at a URL and the memmap is written locally: pass out_dir")
    out_dir = Path(out_dir) if out_dir is not None else ds.directory / "memmap"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{socket.gethostname()}-{os.getpid()}.tmp"
    names = ("tokens.bin", "offsets.npy", "keys.jsonl")
    tmps = [out_dir / f".{n}.{tag}" for n in names]
    n = len(ds)
    offsets = np.lib.format.open_memmap(tmps[1], mode="w+", dtype=np.int64, shape=(n + 1,))
    offsets[0] = 0
    count = 0
    try:
        with open(tmps[0], "wb") as fb, open(tmps[2], "w", encoding="utf-8") as fk:
            for i, row in enumerate(ds.iter_rows()):
                seq = bridge.to_llm(row.tokens).numpy().astype(dtype)
                fb.write(seq.tobytes())
                count += seq.size
                offsets[i + 1] = count
                fk.write(json.dumps(row.key) + "\n")
        offsets.flush()
        del offsets
        for tmp, name in zip(tmps, names):
            os.replace(tmp, out_dir / name)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    info = {
        "dtype": dtype,
        "num_sequences": n,
        "num_tokens": count,
        "bridge": bridge.to_dict(),
        "tokenizer_config_hash": ds.info["tokenizer"]["config_hash"],
        "files": {"tokens": "tokens.bin", "offsets": "offsets.npy", "keys": "keys.jsonl"},
    }
    _atomic_write_text(out_dir / "memmap_info.json", json.dumps(info, indent=1) + "\n")
    return info



"""Token datasets: tokenize an image source into Parquet shards for language-model training, and read them.

>>> from imagetok.data import tokenize_dataset, TokenDataset
>>> tokenize_dataset("photos/", "photos-tokens/", model=None, batch_size=16)
>>> for row in TokenDataset("photos-tokens/"):       # row.tokens: int64 [h, w]
...     ...

Command line: ``imagetok tokenize-dataset SRC --out DIR``; several processes / machines:
``torchrun --nproc-per-node N -m imagetok tokenize-dataset ...``.

**Sources** are walked by :mod:`imagetok.data.sources` (folders, list files, ``.tar`` shards and
patterns), by :mod:`imagetok.data.remote` for the same kinds at fsspec URLs (``s3://``, ``gs://``,
``hf://``, ``https://``), and read by :mod:`imagetok.data.tables` for Parquet image tables and
Hugging Face datasets (``hf://datasets/org/name``; rows in table order). Work is the sorted list of keys, cut into fixed shards of ``shard_size`` keys: shard
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
list (``DIR`` at an object-store URL: uploaded whole once complete, then verified; see
:mod:`imagetok.data.remote`); a rerun skips shards that exist and redoes the others, so a killed run never leaves a
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
from .labels import column_labels, read_labels
from .remote import Output, RemoteRoot, is_url, list_remote_worklist, local_path, open_output
from .sources import IMAGE_EXTENSIONS, MAX_TAR_MEMBER_BYTES, WorkList, list_source

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


class _Images:
    """Decode + resize one image per ``__getitem__`` (in loader processes).

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

    def crashed(self, i: int, reason: str) -> _Item:
        """The item of an image whose loader process died (killed for memory, a decoder crash)."""
        return _Item(i, self.work.keys[i], 0, 0, None, reason)

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()


def _worker_init() -> None:
    torch.set_num_threads(1)


def _load_batches(images: _Images, batches: Iterator[list[int]] | Sequence[list[int]], n_workers: int) -> Iterator[list[_Item]]:
    """Decoded batches in order: in this process (``n_workers == 0``) or in loader processes that
    survive bad images and exit with this process (:class:`imagetok.data._loader.Loader`)."""
    if n_workers == 0:
        for b in batches:
            yield [images[i] for i in b]
        return
    from ._loader import Loader

    yield from Loader(images.__getitem__, batches, n_workers, images.crashed, init=_worker_init)


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


def _tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{_tag()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_PLAN_MUST_MATCH = (("tokenizer", "config_hash"), ("tokenizer", "weights_sha256"), ("tokenizer", "network"), ("preprocessing",), ("token_dtype",),
                    ("source", "fingerprint"), ("source", "items"), ("shard_size",), ("labels",))


def _get(d: dict, path: Sequence[str]) -> Any:
    """``d[path[0]][path[1]]...``, None where missing (plans of older versions lack newer keys)."""
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def _as_output(out: Output | str | os.PathLike) -> Output:
    return out if isinstance(out, Output) else open_output(out)


def _ensure_plan(out: Output | str | os.PathLike, plan: dict) -> None:
    """Create the run plan exclusively, or check that the existing one describes the same run.

    The plan is created with :meth:`Output.create_exclusive` (a hard link of a complete temporary
    file locally; a conditional upload on S3), so of two runs starting together exactly one creates
    it and the other compares.
    """
    out = _as_output(out)
    if out.local is not None:
        for d in (f"{STATE_DIR}/errors", f"{STATE_DIR}/tmp", f"{STATE_DIR}/leases", DATA_DIR):
            (out.local / d).mkdir(parents=True, exist_ok=True)
    if out.create_exclusive(f"{STATE_DIR}/plan.json", json.dumps(plan, indent=1, sort_keys=True) + "\n"):
        return
    old = _read_plan(out)
    if isinstance(old.get("tokenizer"), dict):  # plans before "network" was recorded ran the exact float32 path
        old["tokenizer"].setdefault("network", {"dtype": "float32", "fast": False})
    diffs = [".".join(k) for k in _PLAN_MUST_MATCH if _get(old, k) != _get(plan, k)]
    if diffs:
        raise InputError(
            f"{out} holds (part of) another tokenization: {', '.join(diffs)} differ from this run "
            f"(was {[_get(old, k) for k in _PLAN_MUST_MATCH if '.'.join(k) in diffs]}). "
            "Use a new --out folder, or delete this one to start over"
        )


def _read_plan(out: Output | str | os.PathLike) -> dict:
    out = _as_output(out)
    rel = f"{STATE_DIR}/plan.json"
    for attempt in range(20):
        text = out.read_text(rel)
        if text is None:
            raise InputError(f"{out}: not a tokenize-dataset output folder ({rel} is missing)")
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:  # another run is creating it without hard links: wait a little
            if attempt == 19:
                raise InputError(f"{out.url_of(rel)}: not valid JSON ({e}); delete the folder to start over") from None
            time.sleep(0.1)
    raise AssertionError("unreachable")


# ===================================================================================== leases
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class _Lease:
    """An exclusive claim on one shard of an output folder, so two runs never write one shard.

    ``.imagetok/leases/<shard>.lease`` is created exclusively (:meth:`Output.create_exclusive`) and
    holds the writer's host and pid; it is removed when the shard is committed or abandoned. A lease left by a killed writer on
    this host (its pid is gone) is taken over; a live one, or one from another host, is an error
    that names the pid and host.
    """

    def __init__(self, out: Output | str | os.PathLike, name: str):
        self.out, self.name = _as_output(out), name
        self.rel = f"{STATE_DIR}/leases/{name[: -len('.parquet')]}.lease"
        self.path = out.url_of(self.rel)
        self.held = False

    def owner(self) -> dict | None:
        """``{"host", "pid", "stale"}`` of the current holder, or None if there is none."""
        text, age = self.out.read_text(self.rel), self.out.age(self.rel)
        if text is None or age is None:
            return None
        try:
            d = json.loads(text)
            host, pid = str(d["host"]), int(d["pid"])
        except (ValueError, KeyError, TypeError):  # being written right now, or garbage long ago
            return {"host": "?", "pid": "?", "stale": age > 60}
        stale = host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid))
        return {"host": host, "pid": pid, "stale": stale}

    def error(self, owner: dict) -> InputError:
        return InputError(
            f"{self.out} is in use by pid {owner['pid']} on host {owner['host']} (another tokenize-dataset run is "
            f"writing {self.name}); wait for it to finish or use another --out. If that process no longer runs, "
            f"delete {self.path}"
        )

    def acquire(self) -> None:
        """Claim the shard. Raises InputError (naming pid and host) if a live run holds it."""
        for _ in range(5):
            if not self.out.create_exclusive(self.rel, json.dumps({"host": socket.gethostname(), "pid": os.getpid()})):
                owner = self.owner()
                if owner is None:
                    continue  # released meanwhile
                if not owner["stale"]:
                    raise self.error(owner) from None
                log.warning("%s: taking over the lease of a dead writer (pid %s on %s)", self.name, owner["pid"], owner["host"])
                self.out.remove(self.rel)
                continue
            self.held = True
            return
        raise InputError(f"{self.path}: could not claim the shard (other runs keep taking it); use another --out")

    def release(self) -> None:
        if self.held:
            self.out.remove(self.rel)
            self.held = False


# ============================================================================== shard writing
def _shard_meta(plan: dict, index: int) -> dict:
    """What each shard records of the run (in its Parquet schema's ``imagetok`` metadata)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": index, "num_shards": plan["num_shards"],
            "config_hash": plan["tokenizer"]["config_hash"], "weights_sha256": plan["tokenizer"].get("weights_sha256"),
            "token_dtype": plan["token_dtype"], "labels": (plan.get("labels") or {}).get("digest")}


class _ShardWriter:
    """Rows of one shard -> a temporary Parquet file, committed into place by :meth:`commit` (a rename
    on local folders; one verified upload on object stores).

    The shard's lease is taken first (so no other run writes it), then temporary files of dead
    writers of this shard are removed.
    """

    def __init__(self, out: Output, index: int, plan: dict, row_group: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.pq = pa, pq
        n = plan["num_shards"]
        self.name = shard_name(index, n)
        self.lease = _Lease(out, self.name)
        self.lease.acquire()
        for stale in out.tmp_dir().glob(self.name + ".*"):  # leftovers of a killed writer
            stale.unlink(missing_ok=True)
        self.out = out
        self.final = f"{DATA_DIR}/{self.name}"
        self.errors_path = f"{STATE_DIR}/errors/{self.name[: -len('.parquet')]}.jsonl"
        self.tmp = out.tmp_dir() / f"{self.name}.{_tag()}"
        self.dtype = np.dtype(plan["token_dtype"])
        self.labelled = plan.get("labels") is not None
        fields = [("key", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                  ("grid", pa.list_(pa.int32())), ("tokens", pa.list_(pa.from_numpy_dtype(self.dtype)))]
        if self.labelled:
            fields.append(("label", pa.int64()))
        self.schema = pa.schema(fields, metadata={"imagetok": json.dumps(_shard_meta(plan, index))})
        self.writer = pq.ParquetWriter(str(self.tmp), self.schema)
        self.row_group = row_group
        self.rows: list[tuple] = []
        self.errors: list[dict] = []
        self.count = 0

    def add(self, key: str, width: int, height: int, grid: list[int], tokens: np.ndarray, label: int | None = None) -> None:
        self.rows.append((key, width, height, grid, tokens, label))
        if len(self.rows) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        pa = self.pa
        keys, widths, heights, grids, toks, labels = zip(*self.rows)
        lens = np.fromiter((t.size for t in toks), dtype=np.int32, count=len(toks))
        offsets = np.zeros(len(toks) + 1, dtype=np.int32)
        np.cumsum(lens, out=offsets[1:])
        tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(toks).astype(self.dtype, copy=False)))
        cols = [pa.array(keys, pa.string()), pa.array(widths, pa.int32()), pa.array(heights, pa.int32()),
                pa.array(grids, pa.list_(pa.int32())), tokens]
        if self.labelled:
            cols.append(pa.array(labels, pa.int64()))
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))
        self.count += len(self.rows)
        self.rows = []

    def commit(self) -> None:
        """Finish the file, write the shard's error list, then rename the shard into place."""
        try:
            self._flush()
            self.writer.close()
            self.out.write_text(self.errors_path, "".join(json.dumps(e) + "\n" for e in self.errors))
            self.out.commit_file(self.tmp, self.final)  # a rename locally; one verified upload on object stores
        finally:
            self.lease.release()

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already broken: the file is deleted anyway
            pass
        self.tmp.unlink(missing_ok=True)
        self.lease.release()


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
                label_column: str | None = None, split: str | None = None,
                max_member_bytes: int = MAX_TAR_MEMBER_BYTES) -> Any:
    """The work list of ``src``: a :class:`~imagetok.data.tables.TableSource` for Parquet / Hugging
    Face datasets (or whenever a column or split is named), a remote work list for other fsspec
    URLs, else :func:`~imagetok.data.sources.list_source`.

    Raises:
        InputError: see those functions.
    """
    from . import tables

    columns = {"image_column": image_column, "key_column": key_column, "label_column": label_column, "split": split}
    if any(v is not None for v in columns.values()) or tables.looks_like_table(src, IMAGE_EXTENSIONS):
        return tables.TableSource(src, **columns)
    if is_url(str(src)) and local_path(str(src)) is None:
        return list_remote_worklist(str(src), IMAGE_EXTENSIONS, max_member_bytes)
    return list_source(local_path(src), max_member_bytes=max_member_bytes)


def _plan(tok: Any, work: WorkList, src: Any, size: int | None, draft: bool, shard_size: int, labels: dict | None) -> dict:
    from .. import __version__

    factor = max(tok.downsample_factors)
    prov = tok.provenance
    if prov["config_hash"] != config_hash(tok.config):
        raise InputError(f"the tokenizer's provenance config hash {prov['config_hash']} does not match its config")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "imagetok_version": __version__,
        "tokenizer": {
            "name": prov["name"],
            "revision": prov["revision"],
            "weights_sha256": prov["weights_sha256"],
            "family": tok.config.family,
            "config_hash": prov["config_hash"],
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
        "labels": labels,
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
    labels: str | os.PathLike | None = None,
    max_member_bytes: int = MAX_TAR_MEMBER_BYTES,
    fast: bool = False,
    image_column: str | None = None,
    key_column: str | None = None,
    label_column: str | None = None,
    split: str | None = None,
    micro_batch: int | None = None,
) -> dict:
    """Tokenize every image under ``src`` into Parquet shards in ``out`` (see the module docstring).

    Args:
        src: a folder, a text file listing image paths, a ``.tar`` shard or a pattern of them, a
            Parquet file / folder / Hugging Face dataset; local or at an fsspec URL.
        out: output folder (created), local or at an object-store URL (``s3://``, ``gs://``,
            ``hf://``...). A rerun into the same folder resumes.
        model: an :class:`imagetok.Tokenizer`, or a name/folder for ``Tokenizer.from_pretrained``
            (None: the bundled model).
        size: resize+crop side (default: the model's ``resolution``; None keeps each image's size,
            cropped to a multiple of the downsampling factor).
        batch_size: images per forward pass.
        workers: loader processes (0: load in this process; default: about one per spare core). A
            loader process that dies (killed for memory, a decoder crash) fails only its image, which
            goes to ``errors.jsonl``; loader processes exit when this process dies.
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
        labels: ``"folder"``: each image's class is its first folder under ``src`` (ImageFolder
            layout ``src/<class>/<image>``; class ids index the sorted class names, stored in
            ``dataset_info.json`` under ``"classes"``); or a ``.csv`` (header ``path,label``) or
            ``.json`` (``{path: label}``) file; labels are class names or ids >= 0. Adds an int64
            ``label`` column. A missing or invalid label is an error before any work.
        micro_batch: images per network call (:attr:`imagetok.Tokenizer.micro_batch`; default: the
            tokenizer's, 1). The network always runs on groups of exactly this many images, so tokens
            do not depend on ``batch_size``; on a GPU raise it (e.g. to ``batch_size``) to fill the device.
        max_member_bytes: tar members larger than this fail (listed in ``errors.jsonl``) instead of
            being read into memory.
        fast: the fast path (:attr:`Tokenizer.fast`: bfloat16 network, float32 nearest-code
            search; tokens do not depend on the batch, but may differ from the exact path's). Sets
            ``model.fast`` when ``model`` is a Tokenizer. A resume must use the same setting.
        image_column, key_column, label_column, split: for table sources (Parquet, Hugging Face
            datasets; see :mod:`imagetok.data.tables`); ``label_column`` adds the ``label`` column
            like ``labels``.

    Returns:
        A summary dict: ``images`` (in the source), ``processed`` (by this process in this call),
        ``failed_now``, ``shards_done_now``, ``shards_skipped``, ``complete`` (all shards present),
        ``rows`` / ``failed`` (whole dataset, when complete), ``seconds``, ``images_per_s``, ``info``.

    Raises:
        InputError: unusable source, invalid sizes or labels, ``out`` holds a different
            tokenization, or another live run is writing a shard this run needs.
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
        if micro_batch is not None:
            tok.micro_batch = micro_batch
        size = tok.default_size if size is _DEFAULT else size
        factor = max(tok.downsample_factors)
        _image.check_size(size, factor)
        if labels is not None and label_column is not None:
            raise InputError("pass labels or label_column (--labels or --label-column), not both")
        out = open_output(out)
        if out.local is not None:
            out.local.mkdir(parents=True, exist_ok=True)
        work = open_source(src, image_column=image_column, key_column=key_column, label_column=label_column,
                           split=split, max_member_bytes=max_member_bytes)
        if labels is not None and getattr(work, "kind", None) == "table":
            raise InputError("a table source takes its labels from a column: use label_column (--label-column), not labels")
        if label_column is not None:
            label_ids, label_info = column_labels(work)
        else:
            label_ids, label_info = read_labels(work, labels) if labels is not None else (None, None)
        plan = _plan(tok, work, src, size, draft, shard_size, label_info)
        _ensure_plan(out, plan)
        n_shards = plan["num_shards"]
        mine = [i for i in range(n_shards) if i % dist.world == dist.rank]
        finished = set(out.listdir(DATA_DIR))
        todo = [i for i in mine if shard_name(i, n_shards) not in finished]
        for i in todo:  # fail at once, not mid-run, when another live run is writing our shards
            lease = _Lease(out, shard_name(i, n_shards))
            owner = lease.owner()
            if owner is not None and not owner["stale"]:
                raise lease.error(owner)
        sampler = _ShardBatches(todo, shard_size, len(work), batch_size)
        total = sum(hi - lo for lo, hi in map(sampler.bounds, todo))
        n_workers = _default_workers(dist.local_world) if workers is None else workers
        desc = "tokenize" if dist.world == 1 else f"tokenize (rank {dist.rank}/{dist.world})"
        bar = _progress_bar(total, progress and dist.rank == 0, desc)
        try:
            processed, failed = _run(tok, work, plan, out, sampler, size, factor, draft, n_workers, bar, callback, label_ids)
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
         draft: bool, n_workers: int, bar: Any, callback: Callable[[int, int], None] | None,
         label_ids: np.ndarray | None) -> tuple[int, int]:
    """The loop: loader workers decode ahead while this process encodes and writes shards."""
    if len(sampler) == 0:
        return 0, 0
    images = _Images(work, size, factor, draft)
    loader = _load_batches(images, sampler, n_workers)
    row_group = min(sampler.shard_size, 1024)
    writer: _ShardWriter | None = None
    remaining = 0
    processed = failed = 0
    encoder = BatchEncoder(tok)

    def finished() -> Iterator[tuple[list[_Item], dict]]:  # encoded batches in order (on CUDA one batch late)
        for batch in loader:
            yield from encoder.submit(batch)
        yield from encoder.flush()

    try:
        for batch, encoded in finished():
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
                    writer.add(it.key, it.width, it.height, grid, flat, None if label_ids is None else int(label_ids[it.index]))
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
        loader.close()  # stops the loader processes
        images.close()
    return processed, failed


# ============================================================================== merge / info
_SHARD_CHECKS = {"config_hash": "model (config hash)", "weights_sha256": "model weights (sha256)", "labels": "labels",
                 "token_dtype": "token dtype", "shard": "shard index", "num_shards": "number of shards", "format": "format"}


def _check_shard(path: Any, metadata: dict | None, expect: dict) -> None:
    """Refuse a shard whose recorded run differs from the plan (another model, labels or layout)."""
    try:
        got = json.loads((metadata or {})[b"imagetok"])
    except (KeyError, ValueError):
        raise InputError(f"{path}: not an imagetok token shard (no imagetok metadata); delete it and rerun") from None
    for k, what in _SHARD_CHECKS.items():
        if got.get(k) != expect.get(k):
            raise InputError(
                f"{path} was written with another {what}: {got.get(k)!r}, but this dataset's plan has {expect.get(k)!r}; "
                "refusing to mix models or runs in one dataset. Delete that shard and rerun"
            )


def merge_dataset(out: str | os.PathLike, *, quiet: bool = False) -> dict | None:
    """Write ``dataset_info.json`` and ``errors.jsonl`` from the finished shards in ``out``.

    Runs automatically at the end of :func:`tokenize_dataset` (rank 0 after a barrier); call it
    (``--merge-only``) after separate jobs or machines have filled one folder.

    Returns:
        The info dict, or None when some shards are still missing (nothing is written then).

    Raises:
        InputError: ``out`` is not a tokenize-dataset folder; a shard was made by another model
            (config hash or weights sha256), with other labels, or for another shard layout; or a
            shard's rows and errors do not add up to its images (a damaged or foreign file).
    """
    require_pyarrow()
    import pyarrow.parquet as pq

    out = _as_output(out)
    plan = _read_plan(out)
    n, size, total = plan["num_shards"], plan["shard_size"], plan["source"]["items"]
    shards, missing = [], []
    rows = failed = 0
    finished = set(out.listdir(DATA_DIR))
    error_texts: dict[str, str] = {}
    for i in range(n):
        name = shard_name(i, n)
        path = out.url_of(f"{DATA_DIR}/{name}")
        if name not in finished:
            missing.append(i)
            continue
        errs_rel = f"{STATE_DIR}/errors/{name[: -len('.parquet')]}.jsonl"
        errs = error_texts[name] = out.read_text(errs_rel)
        if errs is None:
            raise InputError(f"{out.url_of(errs_rel)} is missing for finished shard {name}; copy {STATE_DIR}/errors/ along with {DATA_DIR}/")
        n_err = sum(1 for line in errs.splitlines() if line.strip())
        with out.open_read(f"{DATA_DIR}/{name}") as f:
            pf = pq.ParquetFile(f)
            _check_shard(path, pf.schema_arrow.metadata, _shard_meta(plan, i))
            n_rows = pf.metadata.num_rows
        expect = min(size, total - i * size)
        if n_rows + n_err != expect:
            raise InputError(f"{path}: {n_rows} rows + {n_err} errors != {expect} images of this shard; delete it and rerun")
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
    if plan.get("labels") is not None:
        info["columns"]["label"] = "int64: the image's class id (an index into classes, when classes are named)"
        info["labels"] = {"source": plan["labels"]["source"], "num_classes": len(plan["labels"]["classes"] or []) or None}
        info["classes"] = plan["labels"]["classes"]
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
    """One row of a token dataset: ``tokens`` is int64 ``[h, w]`` (a tuple of grids for VQ-VAE-2);
    ``label`` is the class id of a dataset made with ``labels=`` (else None)."""

    key: str
    width: int
    height: int
    tokens: Any
    label: int | None = None


class TokenBatch(NamedTuple):
    """Consecutive rows with one grid shape: ``tokens`` int64 ``[B, h, w]`` (a tuple per level for
    VQ-VAE-2); ``widths``/``heights`` int32 ``[B]``; ``labels`` int64 ``[B]`` or None."""

    keys: list[str]
    widths: np.ndarray
    heights: np.ndarray
    tokens: Any
    labels: np.ndarray | None


def tokens_from_row(row: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A row's flat ``tokens`` and ``grid`` -> int64 ``[h, w]`` (a tuple of grids for VQ-VAE-2).

    ``row`` is anything with ``row["grid"]`` and ``row["tokens"]``: a dict from
    ``datasets.load_dataset("parquet", ...)``, a pandas row, or ``pyarrow`` ``to_pylist()`` output.

    Raises:
        InputError: the grid does not describe the number of tokens.
    """
    grid = [int(v) for v in np.asarray(row["grid"]).reshape(-1)]
    flat = torch.from_numpy(np.asarray(row["tokens"]).astype(np.int64, copy=False).reshape(-1))
    if len(grid) % 2 or not grid or sum(h * w for h, w in zip(grid[::2], grid[1::2])) != flat.numel():
        raise InputError(f"grid {grid} does not describe {flat.numel()} tokens")
    parts = list(torch.split(flat, [h * w for h, w in zip(grid[::2], grid[1::2])]))
    parts = [p.reshape(h, w) for p, h, w in zip(parts, grid[::2], grid[1::2])]
    return parts[0] if len(parts) == 1 else tuple(parts)


class TokenDataset:
    """Read a tokenized dataset: rows as token grids or as LLM id sequences.

    Args:
        directory: a :func:`tokenize_dataset` output folder (with ``dataset_info.json``), local or
            at an fsspec URL (``s3://bucket/tokens``; read through fsspec).
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
        self.classes: list[str] | None = self.info.get("classes")  # class names of a labelled dataset (index = label id)

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

    def iter_batches(self, batch_rows: int = 1024) -> Iterator[TokenBatch]:
        """Yield :class:`TokenBatch` es: runs of consecutive rows with one grid shape, in key order.

        Read by ``pyarrow.dataset`` in record batches of ``batch_rows``; tokens are reshaped as whole
        arrays, with no Python work per row except the key strings.
        """
        import pyarrow.dataset as pads

        if not self.files:
            return
        labelled = "labels" in self.info
        columns = ["key", "width", "height", "grid", "tokens"] + (["label"] if labelled else [])
        if self.remote is None:
            dataset = pads.dataset([str(p) for p in self.files], format="parquet")
        else:
            dataset = pads.dataset([self.remote.join(s["file"]) for s in self.shards], format="parquet", filesystem=self.remote.fs)
        scanner = dataset.scanner(columns=columns, batch_size=batch_rows)
        n_grid = 2 * len(self.codebook_sizes)
        for rb in scanner.to_batches():
            if rb.num_rows == 0:
                continue
            grids = rb.column("grid").values.to_numpy().reshape(-1, n_grid).astype(np.int64)
            toks = rb.column("tokens")
            t_off, t_val = toks.offsets.to_numpy(), toks.values.to_numpy()
            keys = rb.column("key").to_pylist()
            sizes = rb.column("width").to_numpy(), rb.column("height").to_numpy()
            labels = rb.column("label").to_numpy() if labelled else None
            cuts = np.flatnonzero(np.any(grids[1:] != grids[:-1], axis=1)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(keys)]):
                g = grids[lo]
                flat = torch.from_numpy(t_val[t_off[lo] : t_off[hi]].astype(np.int64)).reshape(hi - lo, -1)
                hw = list(zip(g[::2].tolist(), g[1::2].tolist()))
                parts = [p.reshape(hi - lo, h, w) for p, (h, w) in zip(flat.split([h * w for h, w in hw], dim=1), hw)]
                yield TokenBatch(keys[lo:hi], sizes[0][lo:hi], sizes[1][lo:hi], parts[0] if len(parts) == 1 else tuple(parts),
                                 None if labels is None else labels[lo:hi])

    def iter_rows(self, batch_rows: int = 1024) -> Iterator[TokenRecord]:
        """Yield :class:`TokenRecord` per image, in key order."""
        for b in self.iter_batches(batch_rows):
            levels = b.tokens if isinstance(b.tokens, tuple) else None
            for j, key in enumerate(b.keys):
                tokens = tuple(t[j] for t in levels) if levels else b.tokens[j]
                yield TokenRecord(key, int(b.widths[j]), int(b.heights[j]), tokens, None if b.labels is None else int(b.labels[j]))

    def __iter__(self) -> Iterator[TokenRecord]:
        return self.iter_rows()

    def sequences(self, bridge: LLMBridge | None = None) -> Iterator[torch.Tensor]:
        """Yield one int64 ``[N]`` LLM id sequence per image (default bridge: raw flat ids, no markers,
        as :meth:`Tokenizer.flatten`)."""
        bridge = bridge or self.bridge()
        for b in self.iter_batches():
            yield from bridge.to_llm(b.tokens)

    def to_memmap(self, out_dir: str | os.PathLike | None = None, *, bridge: LLMBridge | None = None, dtype: str | None = None) -> dict:
        """See :func:`export_memmap`."""
        return export_memmap(self, out_dir, bridge=bridge, dtype=dtype)


def export_memmap(
    dataset: str | os.PathLike | TokenDataset,
    out_dir: str | os.PathLike | None = None,
    *,
    bridge: LLMBridge | None = None,
    layout: Any = None,
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
        layout: instead of ``bridge``, a named LLM layout (:func:`imagetok.llm.get_layout`: Chameleon,
            Lumina-mGPT, Emu3, Janus, Show-o, Liquid), whose ``to_ids`` gives each image's ids.
        dtype: "uint16" or "uint32" (default: uint16 when every id is below 65536; uint32 with a layout).

    Raises:
        InputError: ids do not fit the requested dtype.
    """
    ds = dataset if isinstance(dataset, TokenDataset) else TokenDataset(dataset)
    if layout is not None and bridge is not None:
        raise InputError("pass either bridge or layout, not both")
    if layout is None:
        bridge = bridge or ds.bridge()
        max_id = max([bridge.vocab_end - 1] + [v for v in (bridge.boi_id, bridge.eoi_id, bridge.eor_id) if v is not None])
        to_ids = bridge.to_llm
    else:  # a layout's ids come from the LLM's vocabulary: checked batch by batch below
        if len(ds.codebook_sizes) != 1 or layout.codebook_size < ds.codebook_sizes[0]:
            raise InputError(f"layout {layout.name!r} maps {layout.codebook_size} codes of one grid; this dataset has "
                             f"codebooks {list(ds.codebook_sizes)}")  # fmt: skip
        max_id = 2**16  # unknown up front
        to_ids = layout.to_ids
    auto = "uint16" if max_id < 65536 else "uint32"
    dtype = dtype or auto
    if dtype not in ("uint16", "uint32"):
        raise InputError(f"dtype must be 'uint16' or 'uint32', got {dtype!r}")
    if max_id >= 2 ** (16 if dtype == "uint16" else 32) and layout is None:
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
            i = 0
            for b in ds.iter_batches():
                ids = to_ids(b.tokens).numpy()  # [B, L]: one grid shape per batch
                if ids.size and (ids.min() < 0 or ids.max() >= 2 ** (16 if dtype == "uint16" else 32)):
                    raise InputError(f"LLM ids up to {int(ids.max())} do not fit {dtype}; use dtype='uint32'")
                seqs = ids.astype(dtype)
                fb.write(seqs.tobytes())
                offsets[i + 1 : i + 1 + len(seqs)] = count + seqs.shape[1] * np.arange(1, len(seqs) + 1)
                count += seqs.size
                i += len(seqs)
                fk.write("".join(json.dumps(k) + "\n" for k in b.keys))
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
        **({"bridge": bridge.to_dict()} if layout is None else
           {"layout": {"name": layout.name, "codebook_size": layout.codebook_size, "source": layout.source}}),
        "tokenizer_config_hash": ds.info["tokenizer"]["config_hash"],
        "files": {"tokens": "tokens.bin", "offsets": "offsets.npy", "keys": "keys.jsonl"},
    }
    _atomic_write_text(out_dir / "memmap_info.json", json.dumps(info, indent=1) + "\n")
    return info



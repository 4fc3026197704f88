"""Image tables as sources: Parquet files, Hugging Face dataset folders and ``hf://datasets/...`` repos.

A *table source* is one of:

- a ``.parquet`` file, or a pattern of them (``data/train-*.parquet``), local or at any fsspec URL;
- a folder (local or URL) of Parquet files, such as a Hugging Face dataset repository
  (``data/train-00000-of-00004.parquet`` ...); ``hf://datasets/org/name`` (optionally
  ``@revision`` and a sub-folder) reads such a repo from the Hub through ``HfFileSystem``;
- a local folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` + ``*.arrow``).

The **image column** holds what ``datasets`` stores for an ``Image()`` feature (a struct of
``bytes`` and ``path``: the bytes when present, else the path), raw bytes, or a string path / URL
(relative paths are relative to the table file's folder). Without ``image_column`` the column is
found from the ``datasets`` feature metadata (``_type: Image``), else the first
``struct<bytes, path>`` column, else a column named ``image``, ``img``, ``jpg``, ``jpeg``, ``png``
or ``webp``.

Rows are taken in table order: files sorted by path, rows in file order. The **key** of a row is
the ``key_column`` value (rows with a key seen before are skipped: one row per key), else
``<file path relative to the source>#<row>``. ``label_column`` values (ints or strings; ClassLabel
names are kept in :attr:`TableSource.label_names`) travel with each row.

Reading: each loader process reads the image column of one Parquet row group at a time and keeps
it while its rows are used; consecutive batches go to different processes, so with ``W`` loader
processes a row group may be read up to ``W`` times (cheap locally; on object stores prefer row
groups of a few hundred images, as ``datasets`` writes them).

When a folder holds several splits (``train-*.parquet`` and ``test-*.parquet``, or ``train/`` and
``test/`` folders), choose one with ``split``: mixing splits silently is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, MissingDependencyError
from . import remote

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp")
TABLE_SUFFIXES = (".parquet", ".arrow")
_SHARDED = re.compile(r"^([A-Za-z][\w.]*?)-\d{5}-of-\d{5}(?:-[0-9a-f]+)?\.(?:parquet|arrow)$")
SPLIT_NAMES = frozenset({"train", "test", "validation", "valid", "val", "dev", "eval"})


def _require_pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError("reading Parquet image tables needs pyarrow: pip install 'imagetok[datasets]'") from None
    return pyarrow


class _Files:
    """The table files of a source, on a local folder or an fsspec root (paths relative to it)."""

    def __init__(self, root: str, rel: list[str], fmt: str):
        self.root, self.rel, self.fmt = root, rel, fmt  # fmt: "parquet" or "arrow"
        self._remote = None if remote.local_path(root) is not None else remote.RemoteRoot(root)

    def open(self, i: int) -> Any:
        if self._remote is None:
            return open(Path(remote.local_path(self.root)) / self.rel[i], "rb")  # noqa: SIM115 (cached by the reader)
        return self._remote.open(self.rel[i], "rb", block_size=4 << 20)

    def folder_of(self, i: int) -> str:
        """The folder of file ``i`` (URL or local path), for relative image paths."""
        head = self.rel[i].rsplit("/", 1)[0] if "/" in self.rel[i] else ""
        base = self.root.rstrip("/")
        return f"{base}/{head}" if head else base


def looks_like_table(src: str | os.PathLike, image_extensions: frozenset[str]) -> bool:
    """Whether ``src`` names a table source (a .parquet/.arrow file or pattern, an ``hf://datasets``
    URL, or a folder whose files are Parquet tables or a ``save_to_disk`` dataset)."""
    s = str(src)
    if s.startswith("hf://datasets/"):
        return True
    if s.lower().endswith(TABLE_SUFFIXES):
        return True
    p = remote.local_path(s)
    if p is not None:
        if not p.is_dir():
            return False
        if (p / "state.json").is_file() and any(p.glob("*.arrow")):
            return True
        has_parquet = False
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                low = name.lower()
                if low.endswith(".parquet"):
                    has_parquet = True
                elif low.endswith(".tar") or "." + low.rsplit(".", 1)[-1] in image_extensions:
                    return False  # an image folder (maybe with Parquet files beside): the folder walker's
        return has_parquet
    try:
        fs, path = remote.url_to_fs(s)
        if not fs.isdir(path):
            return False
        has_parquet = False
        for _, _, files in fs.walk(path):  # folder by folder: an image folder answers at its first image
            for name in files:
                low = name.lower()
                if low.endswith(".parquet"):
                    has_parquet = True
                elif low.endswith(".tar") or "." + low.rsplit(".", 1)[-1] in image_extensions:
                    return False
        return has_parquet
    except (FileNotFoundError, InputError):
        return False


def _split_of(rel: str) -> str | None:
    """The split a file belongs to by Hugging Face naming (``train-00000-of-00004.parquet``,
    ``test.parquet``, ``validation/0000.parquet``), or None."""
    parts = rel.split("/")
    m = _SHARDED.match(parts[-1])
    if m:
        return m.group(1)
    stem = parts[-1].rsplit(".", 1)[0]
    if stem in SPLIT_NAMES:
        return stem
    for d in reversed(parts[:-1]):
        if d in SPLIT_NAMES:
            return d
    return None


def _find_files(src: str, split: str | None) -> _Files:
    """Resolve ``src`` to its table files (see the module docstring)."""
    s = str(src)
    lp = remote.local_path(s)
    if lp is not None and lp.is_dir() and (lp / "state.json").is_file():
        state = json.loads((lp / "state.json").read_text())
        rel = [d["filename"] for d in state.get("_data_files", [])]
        if not rel:
            raise InputError(f"{s}: state.json lists no data files")
        return _Files(str(lp), rel, "arrow")
    if lp is not None:
        if re.search(r"[*?\[{]", s):
            matches = sorted({m for pat in remote.brace_expand(s) for m in __import__("glob").glob(pat)})
            if not matches:
                raise InputError(f"{s}: the pattern matches no files")
            root = os.path.commonpath([os.path.dirname(os.path.abspath(m)) for m in matches])
            rel = [os.path.relpath(os.path.abspath(m), root).replace(os.sep, "/") for m in matches]
        elif lp.is_file():
            root, rel = str(lp.parent), [lp.name]
        elif lp.is_dir():
            root = str(lp)
            rel = sorted(
                os.path.relpath(os.path.join(d, f), lp).replace(os.sep, "/")
                for d, dirs, fs in os.walk(lp)
                if not any(part.startswith(".") for part in Path(os.path.relpath(d, lp)).parts)
                for f in fs
                if f.lower().endswith(".parquet")
            )
        else:
            raise InputError(f"{s}: no such Parquet file, folder or pattern")
    else:
        fs, path = remote.url_to_fs(s)
        proto = remote.protocol(s)
        prefix = f"{proto}://"
        if proto == "hf":
            path = _pin_hf_revision(fs, path)
        if re.search(r"[*?\[{]", path):
            matches = sorted({m for pat in remote.brace_expand(path) for m in fs.glob(pat)})
            if not matches:
                raise InputError(f"{s}: the pattern matches no files")
            root_path = os.path.commonpath([m.rsplit("/", 1)[0] for m in matches])
            rel = [m[len(root_path):].lstrip("/") for m in matches]
        else:
            try:
                info = fs.info(path)
            except FileNotFoundError:
                raise InputError(f"{s}: no such Parquet file, folder or dataset repo") from None
            if info.get("type") == "directory":
                root_path = path.rstrip("/")
                rel = sorted(
                    m[len(root_path):].lstrip("/") for m in fs.find(root_path)
                    if m.lower().endswith(".parquet") and not any(p.startswith(".") for p in m[len(root_path):].split("/"))
                )
            else:
                root_path, name = path.rsplit("/", 1)
                rel = [name]
        root = prefix + root_path
    rel = [r for r in rel if r.lower().endswith(".parquet")]
    if not rel:
        raise InputError(f"{s}: no .parquet files found")
    splits = {r: _split_of(r) for r in rel}
    if split is not None:
        rel = [r for r in rel if splits[r] == split or split in r.split("/")[:-1]]
        if not rel:
            found = sorted({v for v in splits.values() if v})
            raise InputError(f"{s}: no Parquet files of split {split!r} (splits found: {found or 'none'})")
    else:
        found = sorted({v for v in splits.values() if v})
        if len(found) > 1:
            raise InputError(f"{s} holds several splits ({', '.join(found)}): choose one with --split")
    return _Files(root, rel, "parquet")


def _pin_hf_revision(fs: Any, path: str) -> str:
    """``datasets/org/name[@branch]/sub`` -> ``datasets/org/name@<commit>/sub``: every process then
    reads the same commit, even if the branch moves during the run."""
    try:
        r = fs.resolve_path(path)
    except FileNotFoundError as e:
        raise InputError(f"hf://{path}: no such repo or revision on the Hub ({e})") from None
    if not hasattr(r, "repo_id") or re.fullmatch(r"[0-9a-f]{40}", r.revision or ""):
        return path
    sha = fs._api.repo_info(r.repo_id, repo_type=r.repo_type, revision=r.revision).sha
    prefix = "datasets/" if r.repo_type == "dataset" else "spaces/" if r.repo_type == "space" else ""
    return f"{prefix}{r.repo_id}@{sha}" + (f"/{r.path_in_repo}" if r.path_in_repo else "")


def _hf_features(schema: Any) -> dict:
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return {}
    try:
        return json.loads(raw).get("info", {}).get("features", {}) or {}
    except (ValueError, AttributeError):
        return {}


def _pick_image_column(schema: Any, features: dict, name: str | None, where: str) -> str:
    import pyarrow as pa

    cols = list(schema.names)
    described = ", ".join(f"{n} ({schema.field(n).type})" for n in cols)
    if name is not None:
        if name not in cols:
            raise InputError(f"{where}: no column {name!r}; columns: {described}")
        return name
    for n in cols:
        if isinstance(features.get(n), dict) and features[n].get("_type") == "Image":
            return n
    for n in cols:
        t = schema.field(n).type
        if pa.types.is_struct(t) and {t.field(j).name for j in range(t.num_fields)} >= {"bytes", "path"}:
            return n
    for n in cols:
        if n.lower() in IMAGE_COLUMN_NAMES:
            return n
    raise InputError(f"{where}: cannot tell which column holds the images; pass --image-column (columns: {described})")


def _check_image_type(t: Any, col: str, where: str) -> str:
    import pyarrow as pa

    if pa.types.is_struct(t):
        names = {t.field(j).name for j in range(t.num_fields)}
        if "bytes" in names or "path" in names:
            return "struct"
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        return "path"
    raise InputError(f"{where}: column {col!r} has type {t}; expected image bytes, a {{bytes, path}} struct or a path string")


class TableSource:
    """The images of a table source, in table order (see the module docstring).

    The same duck-typed interface as the folder work list: ``kind``, ``keys`` (``keys[i]`` is a
    str), ``len()``, ``read(i, handles)`` (bytes, or a local path / URL string), ``fingerprint()``,
    ``source_errors``, ``ignored``, ``duplicates``; plus ``labels`` (one per item, or None) and
    ``label_names`` (ClassLabel names, or None).

    Args:
        src: see the module docstring.
        image_column, key_column, label_column: column names (image: detected when None).
        split: keep only this split's files (required when a folder holds several).

    Raises:
        InputError: no table files, a missing column, an unusable column type, null keys.
    """

    kind = "table"

    def __init__(self, src: str | os.PathLike, *, image_column: str | None = None, key_column: str | None = None,
                 label_column: str | None = None, split: str | None = None):
        _require_pyarrow()
        self.src = str(src)
        self.files = _find_files(self.src, split)
        self.image_column = image_column
        self.key_column, self.label_column = key_column, label_column
        self.source_errors: list[dict] = []
        self.ignored = 0
        file_idx: list[np.ndarray] = []
        row_idx: list[np.ndarray] = []
        keys: list[str] = []
        labels: list[Any] | None = [] if label_column else None
        self.label_names: list[str] | None = None
        self.image_kind = ""
        self._row_starts: list[np.ndarray] = []  # per file: first row of each row group / record batch
        seen: set[str] = set()
        self.duplicates = 0
        for f in range(len(self.files.rel)):
            where = f"{self.files.root.rstrip('/')}/{self.files.rel[f]}"
            schema, starts, cols = self._scan(f, where)
            self._row_starts.append(starts)
            n = int(starts[-1])
            if key_column is not None:
                kv = cols[key_column]
                if any(v is None for v in kv):
                    raise InputError(f"{where}: column {key_column!r} has null keys; every row needs a key")
                fkeys = [str(v) for v in kv]
            else:
                fkeys = [f"{self.files.rel[f]}#{r}" for r in range(n)]
            keep = np.ones(n, dtype=bool)
            for r, k in enumerate(fkeys):
                if k in seen:
                    keep[r] = False
                    self.duplicates += 1
                else:
                    seen.add(k)
            rows = np.flatnonzero(keep)
            keys.extend(fkeys[r] for r in rows)
            file_idx.append(np.full(len(rows), f, dtype=np.int32))
            row_idx.append(rows.astype(np.int64))
            if labels is not None:
                lv = cols[label_column]
                labels.extend(lv[r] for r in rows)
        if not keys:
            raise InputError(f"{self.src}: the tables hold no rows")
        self.keys: Sequence[str] = keys
        self.labels = labels
        self.file_index = np.concatenate(file_idx)
        self.row_index = np.concatenate(row_idx)

    # ------------------------------------------------------------------------------ listing
    def _open_table(self, f: int) -> Any:
        """A ParquetFile, or (for save_to_disk arrow files) the whole memory-mapped table (both have
        ``close()``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.files.fmt == "arrow":
            path = Path(self.files.root) / self.files.rel[f]
            with pa.memory_map(str(path), "r") as mm:
                return _ArrowTable(pa.ipc.open_stream(mm).read_all())
        return pq.ParquetFile(self.files.open(f))

    def _scan(self, f: int, where: str) -> tuple[Any, np.ndarray, dict]:
        import pyarrow.parquet as pq

        t = self._open_table(f)
        try:
            return self._scan_table(t, where)
        finally:
            if isinstance(t, pq.ParquetFile):
                t.close(force=True)

    def _scan_table(self, t: Any, where: str) -> tuple[Any, np.ndarray, dict]:
        import pyarrow.parquet as pq

        if isinstance(t, pq.ParquetFile):
            schema = t.schema_arrow
            md = t.metadata
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        else:
            schema = t.schema
            sizes = [len(b) for b in t.to_batches()]
            if not sizes:
                sizes = [0]
        features = _hf_features(schema)
        if not features and self.files.fmt == "arrow":
            info = Path(self.files.root) / "dataset_info.json"
            if info.is_file():
                features = json.loads(info.read_text()).get("features", {}) or {}
        col = _pick_image_column(schema, features, self.image_column, where)
        if self.image_column is None:
            self.image_column = col
        elif col != self.image_column:
            raise InputError(f"{where}: image column {col!r} differs from {self.image_column!r} in the other files")
        kind = _check_image_type(schema.field(col).type, col, where)
        if self.image_kind and kind != self.image_kind:
            raise InputError(f"{where}: column {col!r} holds {kind}, other files hold {self.image_kind}")
        self.image_kind = kind
        want = [c for c in (self.key_column, self.label_column) if c is not None]
        for c in want:
            if c not in schema.names:
                raise InputError(f"{where}: no column {c!r}; columns: {', '.join(schema.names)}")
        cols: dict[str, list] = {}
        if want:
            table = t.read(columns=want) if isinstance(t, pq.ParquetFile) else t.select(want)
            cols = {c: table.column(c).to_pylist() for c in want}
        if self.label_column is not None and self.label_names is None:
            feat = features.get(self.label_column)
            if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names"):
                self.label_names = list(feat["names"])
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        return schema, starts, cols

    # ------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k in self.keys:
            h.update(k.encode("utf-8", "surrogateescape") + b"\0")
        h.update(f"|{self.image_column}|{self.label_column}".encode())
        return f"table:{h.hexdigest()[:32]}"

    def read(self, i: int, handles: dict) -> str | bytes:
        """Item ``i``: the image bytes, or a path / URL string to read (``handles`` caches, per
        process, the open table files and the last row group's image column)."""
        import pyarrow.parquet as pq

        f, r = int(self.file_index[i]), int(self.row_index[i])
        starts = self._row_starts[f]
        g = int(np.searchsorted(starts, r, side="right") - 1)
        cached = handles.get(("rg", f))
        if cached is None or cached.group != g:
            t = handles.get(("file", f))
            if t is None:
                t = handles[("file", f)] = self._open_table(f)
            if isinstance(t, pq.ParquetFile):
                column = t.read_row_group(g, columns=[self.image_column]).column(0)
            else:
                column = t.column(self.image_column).slice(int(starts[g]), int(starts[g + 1] - starts[g]))
            cached = handles[("rg", f)] = _RowGroup(g, column)
        value = cached.column[r - int(starts[g])].as_py()
        if self.image_kind == "struct":
            if value is None:
                raise InputError("the image cell is null")
            data, path = value.get("bytes"), value.get("path")
            if data is not None:
                return data
            value = path
        if value is None:
            raise InputError("the image cell is null")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        return self._resolve_path(str(value), f)

    def _resolve_path(self, p: str, f: int) -> str | bytes:
        """A local path as a string; anything at a URL (or relative to a table at a URL) as bytes."""
        if not (remote.is_url(p) or os.path.isabs(p)):
            p = f"{self.files.folder_of(f)}/{p}"
        local = remote.local_path(p)
        if local is not None:
            return str(local)
        fs, path = remote.url_to_fs(p)
        return fs.cat_file(path)

    def path(self, i: int) -> str:
        """A readable name of item ``i``: ``table file#row``."""
        return f"{self.files.root.rstrip('/')}/{self.files.rel[int(self.file_index[i])]}#{int(self.row_index[i])}"

    def close(self, handles: dict) -> None:
        for v in handles.values():
            v.close()
        handles.clear()


class _ArrowTable:
    """A memory-mapped Arrow table that, like a ParquetFile, has ``close()``."""

    def __init__(self, table: Any):
        self.table = table

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)

    def close(self) -> None:
        self.table = None


class _RowGroup:
    """The image column of the row group last read from a file (per process)."""

    def __init__(self, group: int, column: Any):
        self.group, self.column = group, column

    def close(self) -> None:
        self.column = None

"""One walker of image sources, shared by ``tokenize-dataset``, ``usage`` and ``train``.

A *source* is a folder (walked recursively, sorted; names starting with ``.`` are skipped, files and
folders alike; image files by extension, and ``.tar`` files in it are read as WebDataset shards), a
``.tar`` file or a pattern of them (``shards/{0000..0099}.tar``, ``shards/*.tar``), or a text file
listing one image path per line (relative paths are relative to the list file's folder; blank lines
and lines starting with ``#`` are skipped). Every image gets a stable *key*: its path relative to
the folder (or as written in the list), ``shard.tar/member`` for tar members.

Image files are recognised by one set of extensions, :data:`IMAGE_EXTENSIONS`. Tar members are read
by offset (uncompressed tars only) and are refused above :data:`MAX_TAR_MEMBER_BYTES`
(``max_member_bytes=``; ``--max-member-mb`` on the command line): a member over the cap fails like
an unreadable image instead of being read into memory.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .webp .bmp .gif .tif .tiff .ppm .pgm .pbm .pnm .tga .ico".split()
)
MAX_TAR_MEMBER_BYTES = 256 * 2**20  # a tar member larger than this is refused (read whole into memory otherwise)


class _Packed:
    """A read-only list of strings packed into two numpy arrays (no per-string Python objects, so
    forked loader processes do not slowly copy it through reference counting)."""

    def __init__(self, items: Sequence[str]):
        enc = [s.encode("utf-8", "surrogateescape") for s in items]
        self.offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in enc], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(enc), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.offsets.tobytes())
        h.update(self.data.tobytes())
        return h.hexdigest()[:32]


@dataclass
class WorkList:
    """The sorted images of a source.

    Attributes:
        kind: ``"folder"``, ``"list"``, ``"tar"`` or ``"file"`` (one image file).
        root: keys are relative to this folder (absolute keys from a list file stay absolute).
        keys: the sorted, unique keys.
        tars: tar files (relative to ``root``) that members come from.
        tar_index, tar_offset, tar_size: per key, which tar (-1: a plain file ``root / key``), where
            the member's data starts and how long it is.
        source_errors: ``{"key", "error"}`` for tar files or folders that could not be read.
        ignored: files skipped because their extension is not an image extension.
        duplicates: keys listed more than once (kept once).
        max_member_bytes: tar members larger than this are refused by :meth:`read`.
    """

    kind: str
    root: Path
    keys: _Packed
    tars: list[str]
    tar_index: np.ndarray
    tar_offset: np.ndarray
    tar_size: np.ndarray
    source_errors: list[dict]
    ignored: int = 0
    duplicates: int = 0
    max_member_bytes: int = MAX_TAR_MEMBER_BYTES

    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        return f"{self.kind}:{self.keys.digest()}"

    def path(self, i: int) -> str:
        """A readable name of item ``i``: the file path, or ``tar path/member``."""
        return str(self.root / self.keys[i])

    def read(self, i: int, handles: dict[int, Any]) -> str | bytes:
        """The path of item ``i``, or its bytes for a tar member (``handles`` caches open tars).

        Raises:
            InputError: the member is larger than ``max_member_bytes`` or truncated.
        """
        t = int(self.tar_index[i])
        if t < 0:
            return str(self.root / self.keys[i])
        size = int(self.tar_size[i])
        if size > self.max_member_bytes:
            raise InputError(
                f"{self.keys[i]}: tar member is {size:,} bytes, over the limit of {self.max_member_bytes:,} "
                "(max_member_bytes, --max-member-mb)"
            )
        f = handles.get(t)
        if f is None:
            f = handles[t] = open(self.root / self.tars[t], "rb")  # noqa: SIM115 (closed by the caller)
        f.seek(int(self.tar_offset[i]))
        data = f.read(size)
        if len(data) != size:
            raise InputError(f"{self.tars[t]}: truncated tar member ({len(data)} of {size} bytes)")
        return data


def walk_folder(root: str | os.PathLike, *, extensions: frozenset[str] = IMAGE_EXTENSIONS,
                errors: list | None = None) -> tuple[list[str], list[str], int]:
    """Walk ``root`` recursively: ``(image files, tar files, ignored count)``.

    Paths are relative to ``root`` (POSIX separators), in sorted order. Hidden files and folders
    (names starting with ``.``) are skipped; so are files of other extensions (counted). Folders
    that cannot be listed are appended to ``errors`` as ``{"key", "error"}`` when it is given.
    """
    root = Path(root)
    images: list[str] = []
    tars: list[str] = []
    ignored = 0

    def onerror(e: OSError) -> None:
        if errors is not None:
            errors.append({"key": os.path.relpath(e.filename, root) if e.filename else ".",
                           "error": f"cannot list folder: {e.strerror or e}"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in extensions:
                images.append((rel_dir / name).as_posix())
            elif suffix == ".tar":
                tars.append((rel_dir / name).as_posix())
            else:
                ignored += 1
    return sorted(images), sorted(tars), ignored


def brace_expand(pattern: str) -> list[str]:
    """``a{00..02}b`` -> a00b a01b a02b; ``a{x,y}`` -> ax ay (nested and repeated braces work)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        opts = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
    else:
        opts = body.split(",")
    return [x for o in opts for x in brace_expand(head + o + tail)]


def _tar_members(tar_path: Path, rel: str, extensions: frozenset[str], out: list, errors: list, t: int) -> int:
    """Append (key, t, offset, size) for each image member; return the count of non-image members."""
    ignored = 0
    try:
        with tarfile.open(tar_path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if os.path.splitext(m.name)[1].lower() not in extensions:
                    ignored += 1
                    continue
                out.append((f"{rel}/{m.name}", t, m.offset_data, m.size))
    except tarfile.ReadError as e:
        with open(tar_path, "rb") as f:
            magic = f.read(6)
        compressed = magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00" or magic[:4] == b"\x28\xb5\x2f\xfd"
        hint = " (it is compressed: use uncompressed .tar shards, members are read by offset)" if compressed else ""
        errors.append({"key": rel, "error": f"tar file unreadable after {len(out)} members: {e}{hint}"})
    except OSError as e:
        errors.append({"key": rel, "error": f"cannot read tar file: {e}"})
    return ignored


def list_source(
    src: str | os.PathLike,
    *,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    max_member_bytes: int = MAX_TAR_MEMBER_BYTES,
    allow_file: bool = False,
) -> WorkList:
    """Enumerate a source into a sorted :class:`WorkList` (see the module docstring for the kinds).

    Args:
        allow_file: accept one image file as a source of one item (``kind="file"``).

    Raises:
        InputError: the source does not exist, is an image itself (unless ``allow_file``), holds no
            images, or a list file is not text.
    """
    s = str(src)
    entries: list[tuple[str, int, int, int]] = []  # key, tar index, offset, size
    tars: list[str] = []
    errors: list[dict] = []
    ignored = 0
    path = Path(s)
    if path.is_dir():
        kind, root = "folder", path
        files, tar_files, ignored = walk_folder(root, extensions=extensions, errors=errors)
        entries = [(rel, -1, 0, 0) for rel in files]
        for rel in tar_files:
            tars.append(rel)
            ignored += _tar_members(root / rel, rel, extensions, entries, errors, len(tars) - 1)
    elif path.is_file() and path.suffix.lower() == ".tar" or (not path.exists() and re.search(r"[*?\[{]", s)):
        kind = "tar"
        files = [Path(p) for p in sorted({m for pat in brace_expand(s) for m in (_glob.glob(pat) if re.search(r"[*?\[]", pat) else [pat])})]
        if not files:
            raise InputError(f"{s}: the pattern matches no files")
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{s}: {len(missing)} shard(s) not found, e.g. {missing[:3]}")
        not_tar = [str(f) for f in files if f.suffix.lower() != ".tar"]
        if not_tar:
            raise InputError(f"{s}: a pattern must match .tar shards, got {not_tar[:3]}")
        root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
        for f in files:
            rel = f.resolve().relative_to(root).as_posix()
            tars.append(rel)
            ignored += _tar_members(root / rel, rel, extensions, entries, errors, len(tars) - 1)
    elif path.is_file():
        if path.suffix.lower() in extensions:
            if not allow_file:
                raise InputError(f"{s} is an image; SRC must be a folder, a text file listing image paths, or .tar shards")
            kind, root = "file", path.resolve().parent
            entries.append((path.name, -1, 0, 0))
        else:
            kind, root = "list", path.resolve().parent
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{s}: not a UTF-8 text file; SRC must be a folder, a list of image paths, or .tar shards") from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entries.append((line, -1, 0, 0))
    else:
        raise InputError(f"{s}: no such file or folder (nor a .tar shard pattern)")
    entries.sort(key=lambda e: e[0])
    unique = [e for j, e in enumerate(entries) if j == 0 or e[0] != entries[j - 1][0]]
    duplicates = len(entries) - len(unique)
    if duplicates:
        log.warning("%s: %d key(s) listed more than once; each is read once", s, duplicates)
    if not unique:
        exts = " ".join(sorted(extensions))
        detail = f"; problems: {errors[:3]}" if errors else ""
        raise InputError(f"{s}: no image files found (looked for {exts}{', and .tar shards' if kind == 'folder' else ''}){detail}")
    return WorkList(
        kind=kind,
        root=root.resolve(),
        keys=_Packed([e[0] for e in unique]),
        tars=tars,
        tar_index=np.array([e[1] for e in unique], dtype=np.int32),
        tar_offset=np.array([e[2] for e in unique], dtype=np.int64),
        tar_size=np.array([e[3] for e in unique], dtype=np.int64),
        source_errors=errors,
        ignored=ignored,
        duplicates=duplicates,
        max_member_bytes=max_member_bytes,
    )


def list_sources(paths: Sequence[str | os.PathLike], **kw: Any) -> list[WorkList]:
    """:func:`list_source` of each path, where a path may also be one image file.

    Raises:
        InputError: a path is missing or holds no images (checked for all before any work).
    """
    return [list_source(p, allow_file=True, **kw) for p in paths]


def iter_items(works: Sequence[WorkList]) -> Iterator[tuple[str, str | bytes | InputError]]:
    """Every image of :func:`list_sources`, in order: ``(name, path or tar-member bytes, or the error)``.

    An unreadable tar file, and a tar member that cannot be read (over the size cap, truncated), are
    yielded as an :class:`InputError`. Items: ``sum(len(w) + len(w.source_errors) for w in works)``.
    """
    for work in works:
        for e in work.source_errors:
            yield str(work.root / e["key"]), InputError(f"{e['key']}: {e['error']}")
        handles: dict[int, Any] = {}
        try:
            for i in range(len(work)):
                try:
                    yield work.path(i), work.read(i, handles)
                except InputError as e:
                    yield work.path(i), e
        finally:
            for f in handles.values():
                f.close()


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (the folder walk of :func:`list_source`, without tar shards).

    Raises:
        InputError: ``folder`` is not a folder or holds no image files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    files, tars, _ = walk_folder(root)
    if not files:
        hint = f" ({len(tars)} .tar shard(s) found: tar members are not read here)" if tars else ""
        raise InputError(f"{root}: no image files found (looked for {' '.join(sorted(IMAGE_EXTENSIONS))}){hint}")
    return [root / f for f in files]

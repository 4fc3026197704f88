"""Files where they live: fsspec URLs for sources, and outputs with atomic commits.

Anything with a scheme (``s3://``, ``gs://``, ``hf://``, ``http(s)://``, ``az://``, ...) goes
through `fsspec <https://filesystem-spec.readthedocs.io>`_; ``file://`` URLs and plain paths are
local. Credentials and endpoints come from each filesystem's usual environment (``AWS_*`` and
``AWS_ENDPOINT_URL`` for S3, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS, ``HF_TOKEN`` /
``HF_ENDPOINT`` for the Hub) or from ``FSSPEC_<PROTOCOL>_<OPTION>`` variables.

**Outputs.** :func:`open_output` gives an :class:`Output`: a local folder commits a file by writing
a temporary file and renaming it (atomic); an object store (S3, GCS, Azure, the Hub) commits a
file with one upload, which readers see either whole or not at all, and then verifies it (size read
back from the store: *write-then-verify*). Filesystems that offer neither (FTP, WebDAV, HTTP...)
are refused with an :class:`~imagetok.errors.InputError` that says so, since a killed run could
leave a partial file under its final name there.

Filesystem objects are made lazily in each process (:class:`RemoteRoot`), so forked or spawned
loader workers never share an event loop or a connection pool with their parent.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingDependencyError
from .sources import MAX_TAR_MEMBER_BYTES, WorkList, _Packed, brace_expand

log = logging.getLogger(__name__)

#: protocols whose conditional create is exclusive through fsspec (checked: moto's S3 server, memory)
EXCLUSIVE_CREATE_PROTOCOLS = frozenset({"s3", "s3a", "memory"})
#: protocols whose single-object upload is atomic (the object appears whole, or not at all)
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hf", "memory", "oss", "oci"})
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
             "http": "aiohttp", "https": "aiohttp"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


def is_url(s: Any) -> bool:
    """True for ``scheme://...`` strings (at least two letters, so ``C:\\`` is a path)."""
    return isinstance(s, str) and _URL.match(s) is not None


def protocol(url: str) -> str:
    m = _URL.match(url)
    return m.group(1).lower() if m else "file"


def local_path(s: str | os.PathLike) -> Path | None:
    """The local path of a plain path or ``file://`` URL; None for other URLs."""
    if isinstance(s, os.PathLike) or not is_url(str(s)):
        return Path(s)
    if protocol(str(s)) in ("file", "local"):
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(str(s)).path))
    return None


def require_fsspec(url: str) -> Any:
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(f"{url}: reading or writing URLs needs fsspec: pip install 'imagetok[remote]'") from None
    return fsspec


def url_to_fs(url: str) -> tuple[Any, str]:
    """``(filesystem, path inside it)`` for an fsspec URL, with an install hint when the protocol's
    package is missing."""
    fsspec = require_fsspec(url)
    proto = protocol(url)
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        pkg = _PACKAGES.get(proto, f"the fsspec implementation of {proto}://")
        raise MissingDependencyError(f"{url}: {proto}:// needs {pkg} (pip install {pkg}): {e}") from None
    except ValueError as e:
        raise InputError(f"{url}: not a usable fsspec URL: {e}") from None


class RemoteRoot:
    """A folder on an fsspec filesystem, opened lazily in each process.

    Holds only strings, so it pickles into loader workers; the filesystem object is created on first
    use in each process (fsspec's own instance cache is per process as well).

    Attributes:
        url: the folder URL, without a trailing slash (``s3://bucket/prefix``).
    """

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._fs: Any = None
        self._path = ""
        self._pid = -1

    def __getstate__(self) -> dict:
        return {"url": self.url}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"])

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            self._fs, self._path = url_to_fs(self.url)
            self._pid = os.getpid()
        return self._fs

    @property
    def path(self) -> str:
        """The folder's path inside the filesystem (``bucket/prefix`` for S3)."""
        self.fs  # noqa: B018 (resolves self._path)
        return self._path.rstrip("/")

    @property
    def protocol(self) -> str:
        return protocol(self.url)

    def join(self, rel: str) -> str:
        """The filesystem path of ``rel`` (a ``/``-separated path below this folder)."""
        return posixpath.normpath(f"{self.path}/{rel}") if rel else self.path

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def cat(self, rel: str) -> bytes:
        return self.fs.cat_file(self.join(rel))

    def open(self, rel: str, mode: str = "rb", **kwargs: Any) -> Any:
        return self.fs.open(self.join(rel), mode, **kwargs)


# ===================================================================================== outputs
class Output:
    """Where a token dataset is written (a local folder or an fsspec URL); see the module docstring.

    Paths given to the methods are ``/``-separated and relative to the output folder.

    Attributes:
        display: the folder as the user wrote it (for messages).
        commit_kind: ``"rename"`` (local: temporary file + atomic rename) or ``"put"`` (object store:
            one atomic upload, then verified).
        local: the local folder (None for URLs).
    """

    commit_kind = "rename"
    local: Path | None = None

    def __init__(self, display: str):
        self.display = display

    def __str__(self) -> str:
        return self.display

    def url_of(self, rel: str) -> str:
        return f"{self.display.rstrip('/')}/{rel}"

    # subclasses implement these
    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def size(self, rel: str) -> int | None:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        raise NotImplementedError

    def listdir(self, rel: str) -> list[str]:
        """Names of the files directly in folder ``rel`` (empty when it does not exist)."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        raise NotImplementedError

    def open_read(self, rel: str) -> Any:
        raise NotImplementedError

    def commit_file(self, tmp: Path, rel: str) -> None:
        """Move the finished local file ``tmp`` to ``rel`` atomically (``tmp`` is gone afterwards)."""
        raise NotImplementedError

    def tmp_dir(self) -> Path:
        """A local folder for files that :meth:`commit_file` will commit."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove what :meth:`tmp_dir` made (called when a run ends)."""

    def create_exclusive(self, rel: str, text: str) -> bool:
        """Create the small file ``rel`` holding ``text`` unless it exists: True if this call
        created it (of two callers racing, exactly one gets True)."""
        raise NotImplementedError

    def age(self, rel: str) -> float | None:
        """Seconds since ``rel`` was last written (None: it does not exist)."""
        raise NotImplementedError

    # shared
    def read_text(self, rel: str) -> str | None:
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8")

    def write_text(self, rel: str, text: str) -> None:
        """Write a small text file atomically (temporary file + :meth:`commit_file`)."""
        d = self.tmp_dir()
        tmp = d / f".{Path(rel).name}.{socket.gethostname()}-{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.commit_file(tmp, rel)


class LocalOutput(Output):
    """A local folder: temporary files live in ``<folder>/.imagetok/tmp`` (same filesystem), commits
    are ``os.replace`` followed by an fsync of the folder."""

    def __init__(self, folder: Path, display: str | None = None, tmp_rel: str = ".imagetok/tmp"):
        super().__init__(display or str(folder))
        self.local = Path(folder)
        self._tmp_rel = tmp_rel

    def url_of(self, rel: str) -> str:
        return str(self.local / rel)

    def exists(self, rel: str) -> bool:
        return (self.local / rel).exists()

    def size(self, rel: str) -> int | None:
        try:
            return (self.local / rel).stat().st_size
        except FileNotFoundError:
            return None

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return (self.local / rel).read_bytes()
        except FileNotFoundError:
            return None

    def listdir(self, rel: str) -> list[str]:
        d = self.local / rel
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def remove(self, rel: str) -> None:
        (self.local / rel).unlink(missing_ok=True)

    def open_read(self, rel: str) -> Any:
        return open(self.local / rel, "rb")  # noqa: SIM115 (the caller closes it)

    def age(self, rel: str) -> float | None:
        try:
            return time.time() - (self.local / rel).stat().st_mtime
        except FileNotFoundError:
            return None

    def create_exclusive(self, rel: str, text: str) -> bool:
        """Written to a temporary file, then hard-linked to ``rel`` (fails if it exists), so the file
        appears complete; where hard links are missing, ``open(..., "x")``."""
        path = self.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem: exclusive create instead
                try:
                    with open(path, "x", encoding="utf-8") as f:
                        f.write(text)
                    return True
                except FileExistsError:
                    return False
        finally:
            tmp.unlink(missing_ok=True)

    def tmp_dir(self) -> Path:
        d = self.local / self._tmp_rel
        d.mkdir(parents=True, exist_ok=True)
        return d

    def commit_file(self, tmp: Path, rel: str) -> None:
        final = self.local / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)


class FsspecOutput(Output):
    """An object store folder: each commit is one upload (atomic on these stores), then its size is
    read back and compared (write-then-verify). Temporary files are local."""

    commit_kind = "put"

    def __init__(self, url: str):
        super().__init__(url)
        self.root = RemoteRoot(url)
        proto = self.root.protocol
        if proto not in ATOMIC_PUT_PROTOCOLS:
            raise InputError(
                f"{url}: cannot write a token dataset to {proto}:// safely: it has neither an atomic rename nor an "
                "atomic object upload, so a killed run could leave a partial shard under its final name. Write to a "
                f"local folder or an object store ({', '.join(sorted(p + '://' for p in ('s3', 'gs', 'az', 'hf')))}) and copy it"
            )
        self._tmp: Path | None = None
        self._warned = False

    def url_of(self, rel: str) -> str:
        return self.root.url_of(rel)

    def _refresh(self, rel: str) -> None:
        try:
            self.root.fs.invalidate_cache(self.root.join(rel))
        except Exception:  # some filesystems keep no cache
            pass

    def exists(self, rel: str) -> bool:
        self._refresh(rel)
        return bool(self.root.fs.exists(self.root.join(rel)))

    def size(self, rel: str) -> int | None:
        self._refresh(rel)
        try:
            return int(self.root.fs.info(self.root.join(rel))["size"])
        except FileNotFoundError:
            return None

    def read_bytes(self, rel: str) -> bytes | None:
        self._refresh(rel)
        try:
            return self.root.fs.cat_file(self.root.join(rel))
        except FileNotFoundError:
            return None

    def listdir(self, rel: str) -> list[str]:
        self._refresh(rel)
        try:
            entries = self.root.fs.ls(self.root.join(rel), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")

    def remove(self, rel: str) -> None:
        try:
            self.root.fs.rm_file(self.root.join(rel))
        except FileNotFoundError:
            pass
        self._refresh(rel)

    def open_read(self, rel: str) -> Any:
        return self.root.open(rel, "rb")

    def age(self, rel: str) -> float | None:
        self._refresh(rel)
        try:
            info = self.root.fs.info(self.root.join(rel))
        except FileNotFoundError:
            return None
        when = info.get("LastModified") or info.get("mtime") or info.get("updated")
        try:
            return time.time() - (when.timestamp() if hasattr(when, "timestamp") else float(when))
        except (TypeError, ValueError):
            return 0.0

    def create_exclusive(self, rel: str, text: str) -> bool:
        """One conditional upload on S3 (``If-None-Match: *``). Other stores (the Hub, GCS, Azure
        through fsspec: their ``"xb"`` mode is not reliably exclusive) get a check-then-upload and
        a warning that two runs starting together are not kept apart there."""
        target = self.root.join(rel)
        data = text.encode("utf-8")
        if self.root.protocol in EXCLUSIVE_CREATE_PROTOCOLS:
            try:
                if self.root.protocol == "memory":
                    with self.root.fs.open(target, "xb") as f:
                        f.write(data)
                else:
                    self.root.fs.pipe_file(target, data, mode="create")
                return True
            except FileExistsError:
                return False
        if not self._warned:
            log.warning("%s: %s:// cannot create files exclusively; two runs writing this folder at the same moment "
                        "are not kept apart (one at a time is safe)", self.display, self.root.protocol)
            self._warned = True
        if self.exists(rel):
            return False
        self.root.fs.pipe_file(target, data)
        return True

    def tmp_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="imagetok-out-"))
        return self._tmp

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def commit_file(self, tmp: Path, rel: str) -> None:
        want = tmp.stat().st_size
        target = self.root.join(rel)
        self.root.fs.put_file(str(tmp), target)
        got = self.size(rel)
        if got != want:
            self.remove(rel)  # never leave an unverified file under its final name
            raise InputError(f"{self.url_of(rel)}: upload not verified: the store holds {got} bytes, {want} were written "
                             "(the object was deleted; rerun to redo it)")
        tmp.unlink(missing_ok=True)


def open_output(target: str | os.PathLike) -> Output:
    """An :class:`Output` for a local folder (plain path or ``file://``) or an object-store URL.

    Raises:
        InputError: the URL's filesystem cannot commit files atomically.
        MissingDependencyError: fsspec or the protocol's package is missing.
    """
    p = local_path(target)
    if p is not None:
        return LocalOutput(p, display=str(target))
    return FsspecOutput(str(target))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ===================================================================================== sources
def _suffix(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""


def tar_members(fileobj: Any, rel: str, extensions: frozenset[str], out: list, errors: list, t: int) -> int:
    """Append ``(key, t, offset, size)`` for each image member of an uncompressed tar (read from the
    seekable binary ``fileobj``); return how many non-image members were skipped."""
    import tarfile

    ignored = 0
    n0 = len(out)
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if _suffix(m.name) not in extensions:
                    ignored += 1
                    continue
                out.append((f"{rel}/{m.name}", t, m.offset_data, m.size))
    except tarfile.ReadError as e:
        try:
            fileobj.seek(0)
            magic = fileobj.read(6)
        except OSError:
            magic = b""
        compressed = magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00" or magic[:4] == b"\x28\xb5\x2f\xfd"
        hint = " (it is compressed: use uncompressed .tar shards, members are read by offset)" if compressed else ""
        errors.append({"key": rel, "error": f"tar file unreadable after {len(out) - n0} members: {e}{hint}"})
    except OSError as e:
        errors.append({"key": rel, "error": f"cannot read tar file: {e}"})
    return ignored


class RemoteListing:
    """What :func:`list_remote` found: ``entries`` as ``(key, tar index or -1, offset, size)``
    (keys relative to ``root``; absolute URLs for list-file lines that are URLs), ``tars`` relative
    to ``root``, ``errors`` (``{"key", "error"}``) and the count of ``ignored`` files."""

    def __init__(self, kind: str, root: RemoteRoot):
        self.kind, self.root = kind, root
        self.entries: list[tuple[str, int, int, int]] = []
        self.tars: list[str] = []
        self.errors: list[dict] = []
        self.ignored = 0

    def add_tar(self, rel: str, extensions: frozenset[str]) -> None:
        self.tars.append(rel)
        with self.root.open(rel, "rb", block_size=1 << 20) as f:
            self.ignored += tar_members(f, rel, extensions, self.entries, self.errors, len(self.tars) - 1)


def list_remote(url: str, extensions: frozenset[str]) -> RemoteListing:
    """Enumerate the images of an fsspec URL: a folder (walked; ``.tar`` files in it are read as
    WebDataset shards), a ``.tar`` shard or a pattern of them (``{000..009}``, ``*``), or a text
    file listing one image per line (paths relative to the list's folder, or URLs).

    Raises:
        InputError: nothing exists at the URL, or a pattern matches no / missing shards.
    """
    require_fsspec(url)  # a clear MissingDependencyError first
    if re.search(r"[*?\[{]", url):
        files: list[str] = []
        for pat in brace_expand(url):
            fs, path = url_to_fs(pat)
            if re.search(r"[*?\[]", path):
                files += [f"{protocol(pat)}://{p}" if not p.startswith(f"{protocol(pat)}://") else p for p in fs.glob(path)]
            elif fs.isfile(path):
                files.append(pat)
            else:
                raise InputError(f"{url}: shard {pat} not found")
        files = sorted(set(files))
        if not files:
            raise InputError(f"{url}: the pattern matches no files")
        not_tar = [f for f in files if _suffix(f) != ".tar"]
        if not_tar:
            raise InputError(f"{url}: a pattern must match .tar shards, got {not_tar[:3]}")
        parent = os.path.commonpath([f.split("://", 1)[1].rsplit("/", 1)[0] for f in files])
        listing = RemoteListing("tar", RemoteRoot(f"{protocol(url)}://{parent}"))
        for f in files:
            listing.add_tar(f.split("://", 1)[1][len(parent) :].lstrip("/"), extensions)
        return listing
    fs, path = url_to_fs(url)
    path = path.rstrip("/")
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputError(f"{url}: no such folder, file or .tar shard pattern") from None
    if info.get("type") == "directory":
        listing = RemoteListing("folder", RemoteRoot(url))
        tars = []
        for p in sorted(fs.find(path)):
            rel = p[len(path) :].lstrip("/")
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            suf = _suffix(rel)
            if suf in extensions:
                listing.entries.append((rel, -1, 0, 0))
            elif suf == ".tar":
                tars.append(rel)
            else:
                listing.ignored += 1
        for rel in tars:
            listing.add_tar(rel, extensions)
        return listing
    parent_url, name = url.rstrip("/").rsplit("/", 1)
    suf = _suffix(name)
    if suf == ".tar":
        listing = RemoteListing("tar", RemoteRoot(parent_url))
        listing.add_tar(name, extensions)
        return listing
    if suf in extensions:
        raise InputError(f"{url} is an image; SRC must be a folder, a text file listing image paths, or .tar shards")
    listing = RemoteListing("list", RemoteRoot(parent_url))
    try:
        text = fs.cat_file(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{url}: not a UTF-8 text file; SRC must be a folder, a list of image paths, or .tar shards") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            listing.entries.append((line, -1, 0, 0))
    return listing


def read_member(root: RemoteRoot, key: str, tar: str | None, offset: int, size: int, handles: dict) -> bytes:
    """The bytes of one listed image: a file below ``root`` (or an absolute URL), or a tar member
    read by offset (``handles`` caches open tar files per process)."""
    if tar is None:
        if is_url(key):
            fs, p = url_to_fs(key)
            return fs.cat_file(p)
        return root.cat(key)
    f = handles.get(tar)
    if f is None:
        f = handles[tar] = root.open(tar, "rb", block_size=max(size, 1 << 20))
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise InputError(f"{tar}: truncated tar member ({len(data)} of {size} bytes)")
    return data


# ============================================================================ remote work lists
@dataclass
class RemoteWorkList(WorkList):
    """A :class:`~imagetok.data.sources.WorkList` whose files live below an fsspec URL: ``read``
    returns bytes fetched through the filesystem (made lazily in each loader process)."""

    remote: RemoteRoot | None = None

    def path(self, i: int) -> str:
        key = self.keys[i]
        return key if is_url(key) else self.remote.url_of(key)

    def read(self, i: int, handles: dict[int, Any]) -> bytes:
        t = int(self.tar_index[i])
        size = int(self.tar_size[i])
        if t >= 0 and size > self.max_member_bytes:
            raise InputError(f"{self.keys[i]}: tar member is {size:,} bytes, over the limit of {self.max_member_bytes:,} "
                             "(max_member_bytes, --max-member-mb)")
        return read_member(self.remote, self.keys[i], self.tars[t] if t >= 0 else None, int(self.tar_offset[i]), size, handles)


def list_remote_worklist(url: str, extensions: frozenset[str], max_member_bytes: int = MAX_TAR_MEMBER_BYTES) -> RemoteWorkList:
    """:func:`list_remote` as a sorted work list of unique keys (the same rules as
    :func:`~imagetok.data.sources.list_source`).

    Raises:
        InputError: see :func:`list_remote`; no images found; an absolute path in a remote list file.
    """
    listing = list_remote(url, extensions)
    bad = [e[0] for e in listing.entries if e[0].startswith("/")]
    if bad:
        raise InputError(f"{url}: absolute paths in a remote list file are ambiguous (e.g. {bad[0]!r}); "
                         "write URLs or paths relative to the list's folder")
    entries = sorted(listing.entries, key=lambda e: e[0])
    unique = [e for j, e in enumerate(entries) if j == 0 or e[0] != entries[j - 1][0]]
    if not unique:
        detail = f"; problems: {listing.errors[:3]}" if listing.errors else ""
        raise InputError(f"{url}: no image files found (looked for {' '.join(sorted(extensions))}){detail}")
    return RemoteWorkList(
        kind=listing.kind,
        root=Path(listing.root.url),
        keys=_Packed([e[0] for e in unique]),
        tars=listing.tars,
        tar_index=np.array([e[1] for e in unique], dtype=np.int32),
        tar_offset=np.array([e[2] for e in unique], dtype=np.int64),
        tar_size=np.array([e[3] for e in unique], dtype=np.int64),
        source_errors=listing.errors,
        ignored=listing.ignored,
        duplicates=len(entries) - len(unique),
        max_member_bytes=max_member_bytes,
        remote=listing.root,
    )

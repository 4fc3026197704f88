"""Sources and outputs where the data lives: fsspec URLs on a local S3 server (moto), Parquet image
tables (as ``datasets`` writes them), dataset folders and ``hf://datasets`` repos (loopback Hub)."""

# ruff: noqa: F811  (pytest fixtures imported from hub_server / s3_server are test-function parameters)
from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("fsspec")

from conftest import smooth_image  # noqa: E402
from hub_server import hf_hub, hub_server  # noqa: E402,F401
from s3_server import s3, s3_server  # noqa: E402,F401

from imagetok.data import remote  # noqa: E402
from imagetok.data.tables import TableSource, looks_like_table  # noqa: E402
from imagetok.errors import InputError  # noqa: E402

EXTS = frozenset({".png", ".jpg"})


def _png(seed: int, h: int = 20, w: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_image(h, w, seed)).save(buf, "PNG")
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ------------------------------------------------------------------------------------- outputs
def test_local_output_commits_atomically(tmp_path):
    out = remote.open_output(f"file://{tmp_path}/o")
    assert isinstance(out, remote.LocalOutput) and out.local == tmp_path / "o" and out.commit_kind == "rename"
    out.write_text("a/info.json", "{}\n")
    assert (tmp_path / "o/a/info.json").read_text() == "{}\n" and out.read_text("a/info.json") == "{}\n"
    tmp = out.tmp_dir() / "part"
    tmp.write_bytes(b"x" * 10)
    out.commit_file(tmp, "data/s.bin")
    assert not tmp.exists() and out.size("data/s.bin") == 10 and out.listdir("data") == ["s.bin"]
    assert out.listdir(".imagetok/tmp") == []  # temporaries were renamed away, none left
    assert out.read_bytes("missing") is None and out.size("missing") is None and not out.exists("missing")


def test_object_store_output_write_then_verify(s3, monkeypatch):
    fs, bucket = s3
    out = remote.open_output(f"{bucket}/tokens")
    assert isinstance(out, remote.FsspecOutput) and out.commit_kind == "put" and out.local is None
    assert out.listdir("data") == [] and out.read_text("info.json") is None
    out.write_text("info.json", '{"a": 1}\n')
    tmp = out.tmp_dir() / "shard"
    tmp.write_bytes(b"y" * 1000)
    out.commit_file(tmp, "data/s0.parquet")
    assert fs.cat_file(f"{bucket}/tokens/info.json") == b'{"a": 1}\n'
    assert out.size("data/s0.parquet") == 1000 and out.listdir("data") == ["s0.parquet"] and not tmp.exists()
    # the store answering with another size is caught, never silently accepted
    tmp.write_bytes(b"z" * 5)
    monkeypatch.setattr(out, "size", lambda rel: 4)
    with pytest.raises(InputError, match="not verified: the store holds 4 bytes, 5 were written"):
        out.commit_file(tmp, "data/s1.parquet")
    monkeypatch.undo()
    assert out.listdir("data") == ["s0.parquet"]  # the unverified object was deleted
    out.remove("data/s0.parquet")
    assert out.listdir("data") == [] and not out.exists("data/s0.parquet")
    # exclusive create: a conditional upload, of two the second loses and changes nothing
    assert out.create_exclusive("lease", "first") and not out.create_exclusive("lease", "second")
    assert out.read_text("lease") == "first" and 0 <= out.age("lease") < 600
    d = out.tmp_dir()
    out.cleanup()
    assert not d.exists()


def test_output_without_atomic_commit_is_refused():
    with pytest.raises(InputError, match="neither an atomic rename nor an atomic object upload"):
        remote.open_output("ftp://example.invalid/tokens")
    with pytest.raises(InputError, match="http://"):
        remote.open_output("http://127.0.0.1:9/tokens")


def test_url_helpers():
    assert remote.is_url("s3://b/k") and remote.is_url("hf://datasets/a/b") and not remote.is_url("C:\\x") and not remote.is_url("a/b")
    assert remote.local_path("file:///tmp/a%20b") == Path("/tmp/a b")
    assert remote.local_path("s3://b/k") is None
    assert remote.brace_expand("s-{00..02}.tar") == ["s-00.tar", "s-01.tar", "s-02.tar"]
    if importlib.util.find_spec("gcsfs") is None:  # a missing protocol package is named
        with pytest.raises(ImportError, match=r"gs:// needs gcsfs \(pip install gcsfs\)"):
            remote.url_to_fs("gs://bucket/x")


# ------------------------------------------------------------------------------ remote sources
def test_remote_folder_tars_and_list_file(s3):
    fs, bucket = s3
    imgs = {f"a/{i}.png": _png(i) for i in range(3)}
    for k, v in imgs.items():
        fs.pipe_file(f"{bucket}/src/{k}", v)
    fs.pipe_file(f"{bucket}/src/notes.txt", b"ignored")
    fs.pipe_file(f"{bucket}/src/.hidden.png", b"skipped")
    shard = {"x_0.png": _png(10), "x_1.png": _png(11), "meta.json": b"{}"}
    fs.pipe_file(f"{bucket}/src/sh/s-000.tar", _tar(shard))
    fs.pipe_file(f"{bucket}/shards/s-000.tar", _tar(shard))
    fs.pipe_file(f"{bucket}/shards/s-001.tar", _tar({"y.png": _png(12)}))
    fs.pipe_file(f"{bucket}/lists/l.txt", b"# a list\n../src/a/1.png\n\n" + f"{bucket}/src/a/2.png\n".encode())

    def read_all(listing):
        h: dict = {}
        return {k: remote.read_member(listing.root, k, listing.tars[t] if t >= 0 else None, o, n, h) for k, t, o, n in listing.entries}

    folder = remote.list_remote(f"{bucket}/src/", EXTS)
    assert folder.kind == "folder" and folder.ignored == 2  # notes.txt, meta.json in the tar
    got = read_all(folder)
    assert got == {**imgs, "sh/s-000.tar/x_0.png": shard["x_0.png"], "sh/s-000.tar/x_1.png": shard["x_1.png"]}

    tars = remote.list_remote(f"{bucket}/shards/s-{{000..001}}.tar", EXTS)
    assert tars.kind == "tar" and tars.tars == ["s-000.tar", "s-001.tar"]
    assert read_all(tars) == {"s-000.tar/x_0.png": shard["x_0.png"], "s-000.tar/x_1.png": shard["x_1.png"], "s-001.tar/y.png": _png(12)}
    assert [e[0] for e in remote.list_remote(f"{bucket}/shards/*.tar", EXTS).entries] == [e[0] for e in tars.entries]

    lst = remote.list_remote(f"{bucket}/lists/l.txt", EXTS)
    assert lst.kind == "list" and read_all(lst) == {"../src/a/1.png": imgs["a/1.png"], f"{bucket}/src/a/2.png": imgs["a/2.png"]}

    with pytest.raises(InputError, match="no such"):
        remote.list_remote(f"{bucket}/nothing", EXTS)
    with pytest.raises(InputError, match="matches no files"):
        remote.list_remote(f"{bucket}/shards/q-*.tar", EXTS)
    with pytest.raises(InputError, match="not found"):
        remote.list_remote(f"{bucket}/shards/s-{{000..002}}.tar", EXTS)
    with pytest.raises(InputError, match="is an image"):
        remote.list_remote(f"{bucket}/src/a/0.png", EXTS)


# ------------------------------------------------------------------------------- table sources
@pytest.fixture(scope="module")
def hf_parquet(tmp_path_factory):
    """An HF-style image dataset made by ``datasets``: Image() feature, ClassLabel, id column."""
    datasets = pytest.importorskip("datasets")
    d = tmp_path_factory.mktemp("hfds")
    imgs = [Image.fromarray(smooth_image(20 + i, 24, i)) for i in range(5)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]), "id": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 1, 0, 1], "id": [f"im{i}" for i in range(5)]}, features=feats)
    (d / "data").mkdir()
    ds.select(range(3)).to_parquet(str(d / "data" / "train-00000-of-00002.parquet"))
    ds.select(range(3, 5)).to_parquet(str(d / "data" / "train-00001-of-00002.parquet"))
    ds.select(range(2)).to_parquet(str(d / "data" / "test-00000-of-00001.parquet"))
    saved = tmp_path_factory.mktemp("saved") / "ds"
    ds.save_to_disk(str(saved))
    return d, ds, saved


def _decoded(src: TableSource) -> dict[str, np.ndarray]:
    h: dict = {}
    out = {}
    for i in range(len(src)):
        v = src.read(i, h)
        out[src.keys[i]] = np.asarray(Image.open(io.BytesIO(v) if isinstance(v, bytes) else v).convert("RGB"))
    src.close(h)
    return out


def test_hf_parquet_folder_and_save_to_disk(hf_parquet):
    d, ds, saved_dir = hf_parquet
    expect = {f"im{i}": np.asarray(ds[i]["image"].convert("RGB")) for i in range(5)}
    assert looks_like_table(d, EXTS) and looks_like_table(d / "data" / "train-00000-of-00002.parquet", EXTS)
    with pytest.raises(InputError, match=r"several splits \(test, train\): choose one with --split"):
        TableSource(d)
    src = TableSource(d, split="train", key_column="id", label_column="label")
    assert src.image_column == "image" and src.image_kind == "struct" and src.label_names == ["cat", "dog"]
    assert list(src.keys) == [f"im{i}" for i in range(5)] and src.labels == [0, 1, 1, 0, 1]
    got = _decoded(src)
    assert got.keys() == expect.keys() and all(np.array_equal(got[k], expect[k]) for k in got)
    # default keys: file#row, table order
    plain = TableSource(d / "data" / "test-00000-of-00001.parquet")
    assert list(plain.keys) == ["test-00000-of-00001.parquet#0", "test-00000-of-00001.parquet#1"]
    # a save_to_disk folder (Arrow stream files) gives the same rows
    saved = TableSource(saved_dir, key_column="id", label_column="label")
    assert saved.label_names == ["cat", "dog"] and saved.labels == src.labels
    got = _decoded(saved)
    assert all(np.array_equal(got[k], expect[k]) for k in expect)
    # the same key twice is kept once: one row per image
    both = TableSource(f"{d}/data/{{train,test}}-*.parquet", key_column="id", split="train")
    assert len(both) == 5
    pq.write_table(pq.read_table(d / "data" / "train-00000-of-00002.parquet"), d.parent / "again.parquet")
    twice = TableSource(f"{d.parent}/{{again.parquet,{d.name}/data/train-00000-of-00002.parquet}}", key_column="id")
    assert list(twice.keys) == ["im0", "im1", "im2"] and twice.duplicates == 3


def test_table_columns_bytes_paths_and_errors(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(i))
    pq.write_table(pa.table({"jpg": [_png(0), _png(1)], "name": ["a", "b"]}), tmp_path / "bytes.parquet")
    src = TableSource(tmp_path / "bytes.parquet", key_column="name")
    assert src.image_column == "jpg" and src.image_kind == "bytes" and src.read(1, {}) == _png(1)
    pq.write_table(pa.table({"file": ["img/0.png", str(tmp_path / "img" / "2.png"), None], "k": ["a", "b", "c"]}), tmp_path / "paths.parquet")
    src = TableSource(tmp_path / "paths.parquet", image_column="file", key_column="k")
    assert src.read(0, {}) == str(tmp_path / "img" / "0.png") and src.read(1, {}) == str(tmp_path / "img" / "2.png")
    with pytest.raises(InputError, match="null"):
        src.read(2, {})
    with pytest.raises(InputError, match="pass --image-column"):
        TableSource(tmp_path / "paths.parquet")
    with pytest.raises(InputError, match="no column 'nope'"):
        TableSource(tmp_path / "bytes.parquet", key_column="nope")
    pq.write_table(pa.table({"image": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(InputError, match="has type int64; expected image bytes"):
        TableSource(tmp_path / "ints.parquet")
    pq.write_table(pa.table({"image": [_png(0), _png(1)], "k": ["a", None]}), tmp_path / "nullkey.parquet")
    with pytest.raises(InputError, match="null keys"):
        TableSource(tmp_path / "nullkey.parquet", key_column="k")
    with pytest.raises(InputError, match="no such Parquet"):
        TableSource(tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        TableSource(tmp_path / "empty")
    assert not looks_like_table(tmp_path, EXTS)  # a folder with images is an image folder


def test_table_on_s3_and_hf_repo(hf_parquet, s3, hf_hub):
    d, ds, _ = hf_parquet
    expect = {f"im{i}": np.asarray(ds[i]["image"].convert("RGB")) for i in range(5)}
    fs, bucket = s3
    for p in sorted((d / "data").iterdir()):
        fs.put_file(str(p), f"{bucket}/hfds/data/{p.name}")
    src = TableSource(f"{bucket}/hfds", split="train", key_column="id")
    assert src.files.root == f"{bucket}/hfds" and looks_like_table(f"{bucket}/hfds", EXTS)
    got = _decoded(src)
    assert got.keys() == expect.keys() and all(np.array_equal(got[k], expect[k]) for k in got)

    files = {f"data/{p.name}": p.read_bytes() for p in (d / "data").iterdir()}
    first = hf_hub.commit("datasets/org/pics", {**files, "README.md": b"# pics\n"})
    src = TableSource("hf://datasets/org/pics", split="train", key_column="id", label_column="label")
    assert src.files.root == f"hf://datasets/org/pics@{first}"  # pinned: every worker reads this commit
    # the branch moves on (every image replaced): the pinned source still reads the first commit
    hf_hub.commit("datasets/org/pics", {k: v for k, v in files.items() if "test" in k} | {
        "data/train-00000-of-00002.parquet": None, "data/train-00001-of-00002.parquet": None})
    got = _decoded(src)
    assert got.keys() == expect.keys() and all(np.array_equal(got[k], expect[k]) for k in got)
    assert src.labels == [0, 1, 1, 0, 1] and src.label_names == ["cat", "dog"]
    with pytest.raises(InputError, match="no such"):
        TableSource("hf://datasets/org/missing")

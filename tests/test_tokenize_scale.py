"""tokenize-dataset where the data lives: S3 in and out with kill + resume, Hugging Face Parquet image
datasets (local and hf://), --fast, and refusals where a guarantee cannot be kept."""

# ruff: noqa: F811  (pytest fixtures imported from hub_server / s3_server are test-function parameters)
from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("fsspec")

from conftest import make_tiny_tokenizer, smooth_image  # noqa: E402
from hub_server import hf_hub, hub_server  # noqa: E402,F401
from s3_server import s3, s3_server  # noqa: E402,F401

from imagetok import Tokenizer  # noqa: E402
from imagetok.cli import main as cli_main  # noqa: E402
from imagetok.data import TokenDataset, tokenize_dataset  # noqa: E402
from imagetok.errors import InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _png(seed: int, h: int = 24, w: int = 28) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_image(h, w, seed)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_tokenizer("vqgan").save_pretrained(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def tok(model_dir):
    return Tokenizer.from_pretrained(model_dir)


def _encode_bytes(tok, data: bytes) -> torch.Tensor:
    return tok.encode(Image.open(io.BytesIO(data)))


# -------------------------------------------------------------------------------- S3 in and out
def test_s3_source_and_output_killed_and_resumed(s3, model_dir, tok):
    """Images on S3 (files + a WebDataset tar), tokens written back to S3, SIGKILL mid-run, rerun:
    every image exactly once, the tokens of encode(), nothing partial under a final name."""
    fs, bucket = s3
    images = {f"img/{i:02d}.png": _png(i) for i in range(7)}
    for k, v in images.items():
        fs.pipe_file(f"{bucket}/src/{k}", v)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for j in range(2):
            data = _png(20 + j)
            info = tarfile.TarInfo(f"s{j}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            images[f"sh.tar/s{j}.png"] = data
    fs.pipe_file(f"{bucket}/src/sh.tar", buf.getvalue())
    fs.pipe_file(f"{bucket}/src/img/bad.png", b"not a png")
    src, out = f"{bucket}/src", f"{bucket}/tokens"
    n_keys, shard = len(images) + 1, 2  # 10 keys, 5 shards
    script = (
        "import time\n"
        "from imagetok.data import tokenize_dataset\n"
        f"tokenize_dataset({src!r}, {out!r}, model={str(model_dir)!r}, batch_size=1, shard_size={shard}, "
        "workers=0, progress=False, callback=lambda d, n: time.sleep(0.25))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while not fs.ls(f"{out}/data", refresh=True) if fs.exists(f"{out}/data") else True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            fs.invalidate_cache()
            time.sleep(0.05)
        time.sleep(0.3)  # into the next shard
    finally:
        proc.kill()
        proc.wait()
    fs.invalidate_cache()
    done = [p.rsplit("/", 1)[-1] for p in fs.ls(f"{out}/data")]
    assert 1 <= len(done) < 5 and not fs.exists(f"{out}/dataset_info.json")
    for name in done:  # every shard under its final name is whole
        n_err = len(fs.cat_file(f"{out}/.imagetok/errors/{name[:-len('.parquet')]}.jsonl").splitlines())
        with fs.open(f"{out}/data/{name}") as f:
            assert pq.ParquetFile(f).metadata.num_rows + n_err == shard
    summary = tokenize_dataset(src, out, model=str(model_dir), batch_size=3, shard_size=shard, workers=1, progress=False)
    assert summary["complete"] and summary["shards_skipped"] == len(done) and summary["info"] == f"{out}/dataset_info.json"
    assert summary["images"] == n_keys and summary["rows"] == len(images) and summary["failed"] == 1
    ds = TokenDataset(out)  # read straight from S3
    rows = list(ds)
    keys = [r.key for r in rows]
    assert sorted(keys) == sorted(images) and len(keys) == len(set(keys))
    for r in rows:
        assert torch.equal(r.tokens, _encode_bytes(tok, images[r.key])), r.key
    errors = [json.loads(line) for line in fs.cat_file(f"{out}/errors.jsonl").splitlines()]
    assert [e["key"] for e in errors] == ["img/bad.png"]
    assert fs.ls(f"{out}/.imagetok") and not any("tmp" in p for p in fs.find(out))  # no temporaries on the store


def test_url_refusals(s3, model_dir, tmp_path, capsys):
    fs, bucket = s3
    (tmp_path / "a.png").write_bytes(_png(0))
    (tmp_path / "b.png").write_bytes(_png(1))
    rc = cli_main(["tokenize-dataset", str(tmp_path), "--out", "ftp://127.0.0.1:9/x", "--model", str(model_dir), "--quiet", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "neither an atomic rename nor an atomic object upload" in err and len(err.strip().splitlines()) == 1
    rc = cli_main(["tokenize-dataset", str(tmp_path), "--out", f"{bucket}/o", "--memmap", "--model", str(model_dir), "--quiet"])
    assert rc == 1 and "--memmap writes a local memmap" in capsys.readouterr().err
    assert not fs.exists(f"{bucket}/o")  # refused before any work
    with pytest.raises(InputError, match="no such"):
        tokenize_dataset(f"{bucket}/missing", tmp_path / "o", model=str(model_dir), workers=0, progress=False)
    if importlib.util.find_spec("gcsfs") is None:  # a missing filesystem package: one line naming it
        rc = cli_main(["tokenize-dataset", "gs://bucket/images", "--out", str(tmp_path / "g"), "--model", str(model_dir), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1 and "gs:// needs gcsfs (pip install gcsfs)" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------- Hugging Face image datasets
@pytest.fixture(scope="module")
def hf_dataset(tmp_path_factory):
    """A Parquet image dataset as ``datasets`` writes it (Image() struct column, ClassLabel, ids)."""
    datasets = pytest.importorskip("datasets")
    d = tmp_path_factory.mktemp("hf")
    imgs = [Image.fromarray(smooth_image(30 + 3 * i, 36, 40 + i)) for i in range(6)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"]), "id": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 0, 1, 1, 0], "id": [f"x{5 - i}" for i in range(6)]}, features=feats)
    (d / "data").mkdir()
    ds.select(range(4)).to_parquet(str(d / "data" / "train-00000-of-00002.parquet"))
    ds.select(range(4, 6)).to_parquet(str(d / "data" / "train-00001-of-00002.parquet"))
    ds.select(range(2)).to_parquet(str(d / "data" / "test-00000-of-00001.parquet"))
    return d, {f"x{5 - i}": imgs[i] for i in range(6)}


def test_hf_parquet_dataset_tokens_equal_encode(hf_dataset, model_dir, tok, tmp_path, capsys):
    d, imgs = hf_dataset
    out = tmp_path / "out"
    rc = cli_main(["tokenize-dataset", str(d), "--out", str(out), "--model", str(model_dir), "--split", "train",
                   "--key-column", "id", "--batch-size", "4", "--shard-size", "4", "--workers", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rows = list(TokenDataset(out))
    assert [r.key for r in rows] == [f"x{5 - i}" for i in range(6)]  # table order, not sorted
    for r in rows:
        assert torch.equal(r.tokens, tok.encode(imgs[r.key])), r.key
        assert (r.width, r.height) == imgs[r.key].size
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["source"]["kind"] == "table" and info["counts"]["rows"] == 6 and "labels" not in info
    # --label-column: a datasets ClassLabel keeps its ids and names
    out = tmp_path / "labelled"
    s = tokenize_dataset(d, out, model=str(model_dir), split="train", key_column="id", label_column="label",
                         workers=0, progress=False)
    assert s["complete"]
    ds = TokenDataset(out)
    assert ds.classes == ["a", "b"] and {r.key: r.label for r in ds} == {f"x{5 - i}": v for i, v in enumerate([0, 1, 0, 1, 1, 0])}
    assert json.loads((out / "dataset_info.json").read_text())["labels"] == {"source": "column:label", "num_classes": 2}
    with pytest.raises(InputError, match="not both"):
        tokenize_dataset(d, tmp_path / "x", model=str(model_dir), split="train", label_column="label", labels="folder")
    with pytest.raises(InputError, match="use label_column"):
        tokenize_dataset(d, tmp_path / "x", model=str(model_dir), split="train", labels="folder")
    # several splits and no --split: refused, not mixed
    rc = cli_main(["tokenize-dataset", str(d), "--out", str(tmp_path / "o2"), "--model", str(model_dir), "--quiet"])
    assert rc == 1 and "choose one with --split" in capsys.readouterr().err


def test_hf_hub_dataset_repo(hf_dataset, hf_hub, model_dir, tok, tmp_path):
    d, imgs = hf_dataset
    hf_hub.commit("datasets/org/pics", {f"data/{p.name}": p.read_bytes() for p in (d / "data").iterdir()})
    out = tmp_path / "hub"
    s = tokenize_dataset("hf://datasets/org/pics", out, model=str(model_dir), split="test", key_column="id",
                         batch_size=2, workers=0, progress=False)
    assert s["complete"] and s["rows"] == 2
    got = {r.key: r.tokens for r in TokenDataset(out)}
    assert got.keys() == {"x5", "x4"} and all(torch.equal(got[k], tok.encode(imgs[k])) for k in got)
    plan = json.loads((out / ".imagetok" / "plan.json").read_text())
    assert plan["source"]["path"] == "hf://datasets/org/pics"


def test_output_to_hf_repo(hf_hub, model_dir, tok, tmp_path, caplog):
    """hf:// output: every file is a Hub commit (atomic); no exclusive create there, which is said."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(32, 32, 80 + i)).save(src / f"{i}.png")
    hf_hub.create_repo("datasets/org/tokens")
    with caplog.at_level("WARNING"):
        s = tokenize_dataset(src, "hf://datasets/org/tokens/v1", model=str(model_dir), shard_size=2, workers=0, progress=False)
    assert s["complete"] and s["rows"] == 3 and s["info"] == "hf://datasets/org/tokens/v1/dataset_info.json"
    assert "cannot create files exclusively" in caplog.text
    files = hf_hub.files("datasets/org/tokens")
    assert {"v1/dataset_info.json", "v1/data/train-00000-of-00002.parquet", "v1/data/train-00001-of-00002.parquet"} <= set(files)
    assert not any("leases/" in f for f in files)  # released after each shard
    got = {r.key: r.tokens for r in TokenDataset("hf://datasets/org/tokens/v1")}
    assert got.keys() == {"0.png", "1.png", "2.png"} and all(torch.equal(t, tok.encode(str(src / k))) for k, t in got.items())


# ----------------------------------------------------------------------------------------- fast
def test_fast_tokens_do_not_depend_on_batch(model_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        Image.fromarray(smooth_image(32, 32, 60 + i)).save(src / f"{i}.png")
    fast_tok = Tokenizer.from_pretrained(model_dir, fast=True)
    outs = []
    for bs in (1, 5):
        out = tmp_path / f"fast{bs}"
        assert cli_main(["tokenize-dataset", str(src), "--out", str(out), "--model", str(model_dir), "--fast",
                         "--batch-size", str(bs), "--workers", "0", "--quiet"]) == 0
        outs.append({r.key: r.tokens for r in TokenDataset(out)})
        assert json.loads((out / ".imagetok" / "plan.json").read_text())["tokenizer"]["network"] == {"dtype": "float32", "fast": True}
    assert outs[0].keys() == outs[1].keys() and all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    for k, t in outs[0].items():
        assert torch.equal(t, fast_tok.encode(str(src / k))), k
    # a resume must not mix fast and exact tokens
    with pytest.raises(InputError, match="tokenizer.network"):
        tokenize_dataset(src, tmp_path / "fast1", model=str(model_dir), workers=0, progress=False)


def test_batch_encoder_order_shapes_and_lag(tok):
    """The encoder behind tokenize-dataset: mixed shapes and failed items in one batch, and the
    one-batch-late order the CUDA path uses (run here on CPU with lag=1)."""
    from imagetok import image as _image
    from imagetok.data.encode import BatchEncoder

    class It:
        def __init__(self, index, pixels):
            self.index, self.pixels = index, pixels

    arrays = [_image.fit(smooth_image(h, w, s), None, 4) for h, w, s in [(32, 32, 1), (24, 40, 2), (32, 32, 3), (16, 16, 4)]]
    batches = [[It(0, arrays[0]), It(1, arrays[1]), It(2, None)], [It(3, arrays[2])], [It(4, arrays[3])]]
    expect = {i: tok.encode(a, size=None) for i, a in zip([0, 1, 3, 4], arrays)}
    for lag in (0, 1):
        enc = BatchEncoder(tok, lag=lag)
        out = [enc.submit(b) for b in batches] + [enc.flush()]
        assert [len(o) for o in out] == ([1, 1, 1, 0] if lag == 0 else [0, 1, 1, 1])
        done = [d for o in out for d in o]
        assert [b for b, _ in done] == batches  # every batch once, in order
        encoded = {k: v for _, e in done for k, v in e.items()}
        assert sorted(encoded) == [0, 1, 3, 4]  # the item without pixels is left out
        for i, t in expect.items():
            grid, flat = encoded[i]
            assert grid == list(t.shape) and np.array_equal(flat, t.reshape(-1).numpy())

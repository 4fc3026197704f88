"""tokenize-dataset: Parquet token shards, resume, errors, torchrun split, readers, memmap export."""

from __future__ import annotations

import io
import json
import os
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

from conftest import child_pids, pid_alive  # noqa: E402
from imagetok import Tokenizer  # noqa: E402
from imagetok import image as _image  # noqa: E402
from imagetok.cli import main as cli_main  # noqa: E402
from imagetok.errors import InputError, MissingDependencyError  # noqa: E402
from imagetok.data.sources import list_source  # noqa: E402
from imagetok.data.token_dataset import (  # noqa: E402
    TokenDataset,
    export_memmap,
    merge_dataset,
    tokenize_dataset,
    tokens_from_row,
)

CFG = {"family": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
       "z_channels": 8, "embed_dim": 4, "n_embed": 300, "resolution": 32}
GOOD = ["a/gray.png", "a/rgb0.png", "a/rgb1.png", "a/rgb2.png", "b/p16.png", "b/rgba.png", "big.jpg", "small.jpg", "wide.png"]
BAD = ["bad/empty.jpg", "bad/text.png", "bad/truncated.jpg"]
REPO = Path(__file__).resolve().parents[1]


def _photo(h, w, seed):
    """Smooth photo-like uint8 image (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(x * rng.uniform(2, 9) + y * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    img = (np.stack(chans, 2) * 100 + 128 + rng.normal(0, 8, (h, w, 3))).clip(0, 255)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    Tokenizer.from_config(CFG, seed=0).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tok(model_dir):
    return Tokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "bad").mkdir()
    for i in range(3):
        Image.fromarray(_photo(40 + i, 50, i)).save(d / f"a/rgb{i}.png")
    Image.fromarray(_photo(36, 36, 5)[:, :, 0]).save(d / "a/gray.png")
    rgba = np.concatenate([_photo(48, 40, 6), np.linspace(0, 255, 48 * 40).reshape(48, 40, 1).astype(np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(d / "b/rgba.png")
    Image.fromarray(_photo(40, 40, 7)[:, :, 1].astype(np.uint16) * 257).save(d / "b/p16.png")  # 16-bit gray
    Image.fromarray(_photo(130, 170, 8)).save(d / "big.jpg", quality=92)  # >= 2x size: JPEG draft decoding
    Image.fromarray(_photo(40, 50, 9)).save(d / "small.jpg", quality=92)
    Image.fromarray(_photo(32, 90, 10)).save(d / "wide.png")
    buf = io.BytesIO()
    Image.fromarray(_photo(64, 64, 11)).save(buf, "JPEG")
    (d / "bad/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "bad/text.png").write_text("this is not a PNG")
    (d / "bad/empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image extension: ignored")
    (d / ".hidden.png").write_text("hidden files are skipped")
    return d


def _rows(out) -> dict[str, torch.Tensor]:
    return {r.key: r.tokens for r in TokenDataset(out)}


@pytest.fixture(scope="module")
def ref(src, model_dir, tmp_path_factory):
    """One reference run: 3 shards of 4 keys, batches of 3, in-process loading."""
    out = tmp_path_factory.mktemp("ref")
    summary = tokenize_dataset(src, out, model=str(model_dir), batch_size=3, shard_size=4, workers=0, progress=False)
    return out, summary


# ------------------------------------------------------------------------------- correctness
def test_tokens_equal_encode(ref, src, tok):
    out, summary = ref
    assert summary["complete"] and summary["images"] == 12 and summary["rows"] == 9 and summary["failed"] == 3
    rows = list(TokenDataset(out))
    assert [r.key for r in rows] == sorted(GOOD)
    for r in rows:
        expect = tok.encode(str(src / r.key))
        assert r.tokens.dtype == torch.int64 and torch.equal(r.tokens, expect), r.key
        with Image.open(src / r.key) as im:
            assert (r.width, r.height) == im.size
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["token_dtype"] == "uint16" and info["counts"] == {"images": 12, "rows": 9, "failed": 3, "source_errors": 0}
    assert info["tokenizer"]["config_hash"] == __import__("imagetok.config", fromlist=["x"]).config_hash(tok.config)
    assert info["preprocessing"]["size"] == 32 and info["preprocessing"]["jpeg_draft"] is False
    assert [s["file"] for s in info["shards"]] == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert sum(s["rows"] for s in info["shards"]) == 9 and info["source"]["ignored_files"] == 1


def test_jpeg_draft_path_is_covered(src, tok, model_dir, tmp_path):
    """With draft=True big.jpg is decoded at reduced size (other pixels); by default it is decoded fully."""
    full, size_full = _image.read_image(src / "big.jpg")
    drafted, size_draft = _image.read_image(src / "big.jpg", draft_size=32)
    assert size_full == size_draft == (170, 130) and full.size == (170, 130)
    assert drafted.size == (43, 33)  # DCT-scaled by 1/4 while decoding
    fit = lambda im: _image.fit(_image.to_rgb_arrays(im)[0][0], 32, 2)  # noqa: E731
    assert not np.array_equal(fit(full), fit(drafted))  # draft really changes the pixels
    # default datasets hold the tokens of the fully decoded image, i.e. encode(path)
    out = tmp_path / "nodraft"
    lst = tmp_path / "list.txt"
    lst.write_text(f"{src / 'big.jpg'}\n{src / 'small.jpg'}\n")
    tokenize_dataset(lst, out, model=str(model_dir), workers=0, progress=False)
    rows = _rows(out)
    assert torch.equal(rows[str(src / "big.jpg")], tok.encode(full))
    assert torch.equal(rows[str(src / "big.jpg")], tok.encode(str(src / "big.jpg")))
    assert torch.equal(rows[str(src / "small.jpg")], tok.encode(str(src / "small.jpg")))
    assert json.loads((out / "dataset_info.json").read_text())["preprocessing"]["jpeg_draft"] is False
    # draft=True (opt-in) holds the tokens of the reduced-size decode
    tokenize_dataset(lst, tmp_path / "draft", model=str(model_dir), workers=0, progress=False, draft=True)
    arr = _image.to_rgb_arrays(str(src / "big.jpg"), draft_size=32)[0][0]
    expect = tok.encode_pixels(_image.to_tensor([_image.fit(arr, 32, max(tok.downsample_factors))]))[0]
    assert torch.equal(_rows(tmp_path / "draft")[str(src / "big.jpg")], expect)
    assert json.loads((tmp_path / "draft" / "dataset_info.json").read_text())["preprocessing"]["jpeg_draft"] is True
    # a JPEG stored sideways with EXIF orientation 6: drafted, turned upright, upright size reported
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "rot").mkdir()
    Image.fromarray(_photo(70, 140, 12)).save(tmp_path / "rot" / "r.jpg", quality=92, exif=exif.tobytes())
    tokenize_dataset(tmp_path / "rot", tmp_path / "rot_out", model=str(model_dir), workers=0, progress=False)
    (row,) = list(TokenDataset(tmp_path / "rot_out"))
    assert (row.width, row.height) == (70, 140)
    assert torch.equal(row.tokens, tok.encode(str(tmp_path / "rot" / "r.jpg")))


def test_errors_reported_and_skipped(ref):
    out, _ = ref
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == BAD
    by_key = {e["key"]: e["error"] for e in errors}
    assert "not an image" in by_key["bad/text.png"] and "not an image" in by_key["bad/empty.jpg"]
    assert "truncated" in by_key["bad/truncated.jpg"]
    assert [e["shard"] for e in errors] == [1, 1, 2]  # sorted keys: a/* | b/p16 b/rgba bad/empty bad/text | ...
    assert json.loads((out / "dataset_info.json").read_text())["shards"][1] == {
        "file": "data/train-00001-of-00003.parquet", "index": 1, "rows": 2, "failed": 2}


def test_parquet_readable_by_pyarrow_pandas_datasets(ref, tmp_path, monkeypatch):
    out, _ = ref
    table = pq.read_table(out / "data")
    assert table.num_rows == 9
    assert table.schema.field("tokens").type == pa.list_(pa.uint16())
    assert table.schema.field("grid").type == pa.list_(pa.int32())
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(out / "data")
    assert sorted(df["key"]) == sorted(GOOD)
    row = df[df["key"] == "wide.png"].iloc[0]
    assert list(row["grid"]) == [16, 16] and len(row["tokens"]) == 256 and (row["width"], row["height"]) == (90, 32)
    ref_rows = _rows(out)
    assert np.array_equal(np.asarray(row["tokens"], dtype=np.int64), ref_rows["wide.png"].flatten().numpy())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 9 and ds.features["tokens"].feature.dtype == "uint16"
    got = {r["key"]: r["tokens"] for r in ds}
    assert all(got[k] == ref_rows[k].flatten().tolist() for k in GOOD)
    assert all(torch.equal(tokens_from_row(r), ref_rows[r["key"]]) for r in ds)  # the reshape helper
    assert torch.equal(tokens_from_row(row), ref_rows["wide.png"])  # a pandas row
    with pytest.raises(InputError, match="does not describe"):
        tokens_from_row({"grid": [16, 15], "tokens": list(range(256))})


def test_reader_sequences_and_memmap_roundtrip(ref, tok):
    out, _ = ref
    ds = TokenDataset(out)
    assert len(ds) == 9
    seqs = list(ds.sequences())
    rows = list(ds)
    for s, r in zip(seqs, rows):
        assert torch.equal(s, tok.flatten(r.tokens))
    bridge = ds.bridge(offset=32000, boi=True, eoi=True, eor=True)
    info = export_memmap(out, bridge=bridge)
    assert info["dtype"] == "uint16" and info["num_sequences"] == 9 and info["num_tokens"] == 9 * (2 + 16 * 17)
    mm = np.memmap(out / "memmap" / "tokens.bin", dtype=info["dtype"], mode="r")
    offsets = np.load(out / "memmap" / "offsets.npy")
    keys = [json.loads(line) for line in (out / "memmap" / "keys.jsonl").read_text().splitlines()]
    assert offsets[-1] == mm.size and keys == [r.key for r in rows]
    for i, r in enumerate(rows):
        ids = torch.from_numpy(mm[offsets[i] : offsets[i + 1]].astype(np.int64))
        assert torch.equal(bridge.from_llm(ids), r.tokens)
    with pytest.raises(InputError, match="uint32"):
        export_memmap(out, out / "mm2", bridge=ds.bridge(offset=65400), dtype="uint16")
    # rank/world_size split of the reader covers every row once
    parts = [TokenDataset(out, rank=r, world_size=2) for r in range(2)]
    assert sorted(k.key for p in parts for k in p) == sorted(GOOD)


def test_loader_workers_and_sources_agree(ref, src, model_dir, tmp_path):
    """DataLoader worker processes, a list file and .tar shards give the reference tokens; so does
    another batch size with another network micro-batch (zero-padded groups of 3)."""
    ref_rows = _rows(ref[0])
    out = tmp_path / "workers"
    tokenize_dataset(src, out, model=str(model_dir), batch_size=2, shard_size=5, workers=2, progress=False, micro_batch=3)
    got = _rows(out)
    assert got.keys() == ref_rows.keys() and all(torch.equal(got[k], ref_rows[k]) for k in got)

    lst = tmp_path / "files.txt"
    lst.write_text("# comment\n" + "\n".join(str(os.path.relpath(src / k, tmp_path)) for k in GOOD[::-1]) + f"\n\n{os.path.relpath(src / GOOD[0], tmp_path)}\n")
    work = list_source(lst)
    assert work.kind == "list" and len(work) == len(GOOD) and work.duplicates == 1
    out = tmp_path / "list"
    tokenize_dataset(lst, out, model=str(model_dir), workers=0, progress=False)
    got = _rows(out)
    assert len(got) == len(GOOD) and all(torch.equal(got[os.path.relpath(src / k, tmp_path)], ref_rows[k]) for k in GOOD)

    shards = tmp_path / "shards"
    shards.mkdir()
    for j, part in enumerate([GOOD[:5], GOOD[5:] + ["bad/text.png"]]):
        with tarfile.open(shards / f"s-{j:03d}.tar", "w") as tf:
            for k in part:
                tf.add(src / k, arcname=k.replace("/", "_"))
            info = tarfile.TarInfo("meta.json")  # non-image members are ignored
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    out = tmp_path / "tar"
    s = tokenize_dataset(str(shards / "s-{000..001}.tar"), out, model=str(model_dir), workers=1, progress=False)
    assert s["rows"] == len(GOOD) and s["failed"] == 1
    got = _rows(out)
    for j, part in enumerate([GOOD[:5], GOOD[5:]]):
        for k in part:
            assert torch.equal(got[f"s-{j:03d}.tar/{k.replace('/', '_')}"], ref_rows[k])


def test_keep_image_size(src, model_dir, tok, tmp_path, capsys):
    """--size native (or 0): each image keeps its size (cropped to the factor); mixed shapes in one batch work."""
    out = tmp_path / "native"
    assert cli_main(["tokenize-dataset", str(src / "a"), "--out", str(out), "--model", str(model_dir), "--size", "native",
                     "--batch-size", "4", "--workers", "0", "--quiet"]) == 0
    rows = {r.key: r for r in TokenDataset(out)}
    assert {k: tuple(r.tokens.shape) for k, r in rows.items()} == {
        "gray.png": (18, 18), "rgb0.png": (20, 25), "rgb1.png": (20, 25), "rgb2.png": (21, 25)}
    for k, r in rows.items():
        assert torch.equal(r.tokens, tok.encode(str(src / "a" / k), size=None))
    info = export_memmap(out, bridge=TokenDataset(out).bridge(eor=True))  # mixed grid shapes, batched per run
    mm = np.memmap(out / "memmap" / "tokens.bin", dtype=info["dtype"], mode="r")
    offsets = np.load(out / "memmap" / "offsets.npy")
    bridge = TokenDataset(out).bridge(eor=True)
    for i, r in enumerate(rows.values()):
        assert torch.equal(torch.from_numpy(mm[offsets[i] : offsets[i + 1]].astype(np.int64)), bridge.to_llm(r.tokens))
    assert json.loads((out / "dataset_info.json").read_text())["preprocessing"]["jpeg_draft"] is False


def test_multilevel_vqvae2(tmp_path, src):
    tok2 = Tokenizer.from_config({"family": "vqvae2", "channel": 32, "n_res_block": 0, "n_res_channel": 8,
                                  "embed_dim": 8, "n_embed": 64, "resolution": 32}, seed=0)
    out = tmp_path / "v2"
    tokenize_dataset(src / "a", out, model=tok2, workers=0, progress=False)
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["token_dtype"] == "uint8"
    table = pq.read_table(out / "data")
    assert table.column("grid").to_pylist()[0] == [4, 4, 8, 8]
    for r in TokenDataset(out):
        top, bottom = tok2.encode(str(src / "a" / r.key))
        assert torch.equal(r.tokens[0], top) and torch.equal(r.tokens[1], bottom)


# ------------------------------------------------------------------------------ resume / safety
def _check_partial(out, n_shards, per_shard):
    """Every shard under its final name is complete; nothing claims the dataset is done."""
    done = sorted((out / "data").glob("*.parquet"))
    for p in done:
        idx = int(p.name.split("-")[1])
        n_err = len((out / ".imagetok" / "errors" / (p.name[: -len(".parquet")] + ".jsonl")).read_text().splitlines())
        assert pq.ParquetFile(p).metadata.num_rows + n_err == per_shard(idx)
    assert not (out / "dataset_info.json").exists()
    assert len(done) < n_shards
    return done


def test_interrupt_then_resume(ref, src, model_dir, tmp_path):
    out = tmp_path / "out"

    def stop(done, total):
        if done >= 6:  # inside the second shard (4 keys per shard, batches of 1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(src, out, model=str(model_dir), batch_size=1, shard_size=4, workers=0, progress=False, callback=stop)
    done = _check_partial(out, 3, lambda i: 4)
    assert [p.name for p in done] == ["train-00000-of-00003.parquet"]
    assert list((out / ".imagetok" / "tmp").iterdir()) == []  # the unfinished shard's file was removed
    # a killed run's leftovers: a half-written temporary file for shard 2
    (out / ".imagetok" / "tmp" / "train-00002-of-00003.parquet.otherhost-999").write_bytes(b"PAR1 half")
    mtime = done[0].stat().st_mtime_ns
    s = tokenize_dataset(src, out, model=str(model_dir), batch_size=4, shard_size=4, workers=0, progress=False)
    assert s["shards_skipped"] == 1 and s["processed"] == 8 and s["complete"]
    assert done[0].stat().st_mtime_ns == mtime  # finished shards are not rewritten
    assert list((out / ".imagetok" / "tmp").iterdir()) == []
    keys = pq.read_table(out / "data").column("key").to_pylist()
    assert sorted(keys) == sorted(GOOD) and len(keys) == len(set(keys))
    ref_rows, got = _rows(ref[0]), _rows(out)
    assert all(torch.equal(got[k], ref_rows[k]) for k in GOOD)
    assert (out / "errors.jsonl").read_text() == (ref[0] / "errors.jsonl").read_text()
    s = tokenize_dataset(src, out, model=str(model_dir), shard_size=4, workers=0, progress=False)
    assert s["processed"] == 0 and s["shards_skipped"] == 3 and s["rows"] == 9


def test_kill_and_resume(ref, src, model_dir, tmp_path):
    """SIGKILL a real run in the middle, rerun: exactly one row per image, same tokens."""
    out = tmp_path / "out"
    script = (
        "import time\n"
        "from imagetok.data import tokenize_dataset\n"
        f"tokenize_dataset({str(src)!r}, {str(out)!r}, model={str(model_dir)!r}, batch_size=1, shard_size=2, "
        "workers=0, progress=False, callback=lambda d, n: time.sleep(0.2))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "data").glob("*.parquet")) if (out / "data").is_dir() else True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # into the next shard
    finally:
        proc.kill()
        proc.wait()
    _check_partial(out, 6, lambda i: 2)
    s = tokenize_dataset(src, out, model=str(model_dir), batch_size=3, shard_size=2, workers=0, progress=False)
    assert s["complete"] and s["shards_skipped"] >= 1
    keys = pq.read_table(out / "data").column("key").to_pylist()
    assert sorted(keys) == sorted(GOOD) and len(keys) == len(set(keys))
    ref_rows, got = _rows(ref[0]), _rows(out)
    assert all(torch.equal(got[k], ref_rows[k]) for k in GOOD)
    assert list((out / ".imagetok" / "tmp").iterdir()) == []


def test_rerun_with_other_settings_is_refused(ref, src, model_dir):
    out, _ = ref
    with pytest.raises(InputError, match="shard_size"):
        tokenize_dataset(src, out, model=str(model_dir), shard_size=5, workers=0, progress=False)
    with pytest.raises(InputError, match="preprocessing"):
        tokenize_dataset(src, out, model=str(model_dir), shard_size=4, size=16, workers=0, progress=False)
    with pytest.raises(InputError, match="source"):
        tokenize_dataset(src / "a", out, model=str(model_dir), shard_size=4, workers=0, progress=False)


def test_bad_sources(tmp_path, model_dir, src):
    with pytest.raises(InputError, match="no such"):
        list_source(tmp_path / "missing")
    with pytest.raises(InputError, match="is an image"):
        list_source(src / "big.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        list_source(tmp_path / "empty")
    with pytest.raises(InputError, match="4 shard.s. not found"):
        list_source(str(tmp_path / "x-{0..3}.tar"))
    with pytest.raises(InputError, match="matches no files"):
        list_source(str(tmp_path / "x-*.tar"))
    with tarfile.open(tmp_path / "c.tar", "w:gz") as tf:
        tf.add(src / "small.jpg", arcname="small.jpg")
    with pytest.raises(InputError, match="compressed"):
        list_source(tmp_path / "c.tar")


def test_missing_pyarrow_message(monkeypatch, src, model_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=r"imagetok\[datasets\]"):
        tokenize_dataset(src, tmp_path / "o", model=str(model_dir))
    assert cli_main(["tokenize-dataset", str(src), "--out", str(tmp_path / "o"), "--model", str(model_dir)]) == 1
    assert "pip install 'imagetok[datasets]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- scale-out
def test_cli_manual_split_and_merge_only(ref, src, model_dir, tmp_path, capsys):
    out = tmp_path / "split"
    base = ["tokenize-dataset", str(src), "--out", str(out), "--model", str(model_dir), "--shard-size", "4",
            "--workers", "0", "--quiet"]
    assert cli_main(base + ["--rank", "1", "--world-size", "2"]) == 3  # shard 1 only: 2 of its 4 images fail
    assert not (out / "dataset_info.json").exists()
    err = capsys.readouterr().err
    assert "4 images, 2 failed" in err and "--merge-only" in err
    assert cli_main(["tokenize-dataset", "--out", str(out), "--merge-only"]) == 1  # shards 0, 2 missing
    assert cli_main(base + ["--rank", "0", "--world-size", "2", "--memmap", "--boi"]) == 3  # complete, 3 failed
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rows"] == 9 and summary["failed"] == 3 and summary["memmap"]["num_sequences"] == 9
    assert "3 failed" in captured.err
    ref_rows, got = _rows(ref[0]), _rows(out)
    assert got.keys() == ref_rows.keys() and all(torch.equal(got[k], ref_rows[k]) for k in got)
    (out / "dataset_info.json").unlink()
    assert merge_dataset(out)["counts"]["rows"] == 9
    assert cli_main(["tokenize-dataset", "--out", str(out), "--merge-only"]) == 3


def test_torchrun_two_processes(src, model_dir, tmp_path):
    """torchrun --nproc-per-node 2 (gloo) writes the same rows as one process, with one merged info."""
    clean = tmp_path / "clean"
    clean.mkdir()
    for k in GOOD:
        (clean / k.replace("/", "_")).write_bytes((src / k).read_bytes())
    out2 = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "imagetok", "tokenize-dataset", str(clean), "--out", str(out2), "--model", str(model_dir),
           "--shard-size", "2", "--batch-size", "2", "--workers", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 1:" in res.stderr
    out1 = tmp_path / "one"
    tokenize_dataset(clean, out1, model=str(model_dir), shard_size=2, batch_size=3, workers=0, progress=False)
    a, b = _rows(out1), _rows(out2)
    assert a.keys() == b.keys() and len(a) == len(GOOD) and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((out2 / "dataset_info.json").read_text())
    assert info["counts"]["rows"] == len(GOOD) and len(info["shards"]) == 5


# ------------------------------------------------------------------------ concurrency, provenance
def test_dataset_info_records_provenance(ref, tok):
    info = json.loads((ref[0] / "dataset_info.json").read_text())
    prov = tok.provenance
    assert {k: info["tokenizer"][k] for k in ("name", "config_hash", "weights_sha256", "revision")} == {
        k: prov[k] for k in ("name", "config_hash", "weights_sha256", "revision")}
    meta = json.loads(pq.read_schema(ref[0] / "data" / "train-00000-of-00003.parquet").metadata[b"imagetok"])
    assert meta["config_hash"] == prov["config_hash"] and meta["shard"] == 0 and meta["num_shards"] == 3


def test_a_live_run_holds_its_shards(src, model_dir, tmp_path):
    """A second run into a folder where a live process writes a shard fails at once, naming pid and host;
    a lease left by a dead process on this host is taken over."""
    import socket

    out = tmp_path / "out"
    tokenize_dataset(src / "a", out, model=str(model_dir), shard_size=2, workers=0, progress=False)
    (out / "data" / "train-00001-of-00002.parquet").unlink()
    (out / "dataset_info.json").unlink()
    lease = out / ".imagetok" / "leases" / "train-00001-of-00002.lease"
    tmp = out / ".imagetok" / "tmp" / "train-00001-of-00002.parquet.otherhost-1"
    tmp.write_bytes(b"a live writer's half shard")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        with pytest.raises(InputError, match=rf"in use by pid {sleeper.pid} on host {socket.gethostname()}"):
            tokenize_dataset(src / "a", out, model=str(model_dir), shard_size=2, workers=0, progress=False)
        assert tmp.exists()  # another writer's file is never deleted while it lives
    finally:
        sleeper.kill()
        sleeper.wait()
    lease.write_text(json.dumps({"host": "some-other-host", "pid": 1}))
    with pytest.raises(InputError, match="in use by pid 1 on host some-other-host"):
        tokenize_dataset(src / "a", out, model=str(model_dir), shard_size=2, workers=0, progress=False)
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))  # now dead: stale
    s = tokenize_dataset(src / "a", out, model=str(model_dir), shard_size=2, workers=0, progress=False)
    assert s["complete"] and s["processed"] == 2 and not lease.exists() and not tmp.exists()


def _plan_racer(out, n_embed, barrier, results):
    from imagetok.data.token_dataset import _ensure_plan

    barrier.wait()
    try:
        _ensure_plan(Path(out), {"tokenizer": {"config_hash": f"h{n_embed}"}, "num_shards": 1})
        results.put("created")
    except InputError as e:
        results.put(f"refused: {e}")


def test_plan_is_created_exclusively(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(3):
        out = tmp_path / f"o{trial}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_plan_racer, args=(str(out), k, barrier, results)) for k in (1, 2)]
        for p in procs:
            p.start()
        got = sorted(results.get(timeout=30) for _ in procs)
        for p in procs:
            p.join()
        assert got[0] == "created" and got[1].startswith("refused") and "tokenizer.config_hash" in got[1]
        plan = json.loads((out / ".imagetok" / "plan.json").read_text())
        assert plan["tokenizer"]["config_hash"] in ("h1", "h2")


def test_merge_refuses_a_shard_of_another_model(src, model_dir, tmp_path):
    other = tmp_path / "other_model"
    Tokenizer.from_config({**CFG, "n_embed": 200}, seed=1).save_pretrained(other)
    a, b = tmp_path / "a", tmp_path / "b"
    tokenize_dataset(src / "a", a, model=str(model_dir), shard_size=2, workers=0, progress=False)
    tokenize_dataset(src / "a", b, model=str(other), shard_size=2, workers=0, progress=False)
    name = "train-00001-of-00002.parquet"
    (a / "data" / name).write_bytes((b / "data" / name).read_bytes())  # a copy slipped in from another run
    with pytest.raises(InputError, match="another model .config hash.*refusing to mix"):
        merge_dataset(a)
    assert cli_main(["tokenize-dataset", "--out", str(a), "--merge-only"]) == 1


# ------------------------------------------------------------------------------------ labels
@pytest.fixture(scope="module")
def classes_src(tmp_path_factory):
    d = tmp_path_factory.mktemp("classes")
    for cls, n in (("dog", 2), ("cat", 3)):
        (d / cls).mkdir()
        for i in range(n):
            Image.fromarray(_photo(36, 36, 20 + i + 5 * len(cls) + n)).save(d / cls / f"{i}.png")
    return d


def test_labels_from_class_folders(classes_src, model_dir, tmp_path):
    out = tmp_path / "lab"
    assert cli_main(["tokenize-dataset", str(classes_src), "--out", str(out), "--model", str(model_dir),
                     "--labels", "folder", "--shard-size", "3", "--workers", "0", "--quiet"]) == 0
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["classes"] == ["cat", "dog"] and "label" in info["columns"]
    table = pq.read_table(out / "data")
    assert table.schema.field("label").type == pa.int64()
    got = dict(zip(table.column("key").to_pylist(), table.column("label").to_pylist()))
    assert got == {"cat/0.png": 0, "cat/1.png": 0, "cat/2.png": 0, "dog/0.png": 1, "dog/1.png": 1}
    rows = list(TokenDataset(out))
    assert [r.label for r in rows] == [0, 0, 0, 1, 1] and TokenDataset(out).classes == ["cat", "dog"]
    with pytest.raises(InputError, match="labels"):  # the same folder without labels is another dataset
        tokenize_dataset(classes_src, out, model=str(model_dir), shard_size=3, workers=0, progress=False)


def test_labels_from_csv_and_json(classes_src, model_dir, tmp_path, tok):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{cls}/{i}.png,{7 if cls == 'dog' else 3}\n"
                                            for cls, n in (("dog", 2), ("cat", 3)) for i in range(n)))
    tokenize_dataset(classes_src, tmp_path / "c", model=str(model_dir), labels=csv, workers=0, progress=False)
    rows = {r.key: r for r in TokenDataset(tmp_path / "c")}
    assert {k: r.label for k, r in rows.items()} == {"cat/0.png": 3, "cat/1.png": 3, "cat/2.png": 3, "dog/0.png": 7, "dog/1.png": 7}
    assert json.loads((tmp_path / "c" / "dataset_info.json").read_text())["classes"] is None  # ids given, no names
    assert torch.equal(rows["dog/1.png"].tokens, tok.encode(str(classes_src / "dog" / "1.png")))
    js = tmp_path / "labels.json"  # class names, paths relative to the label file's folder
    js.write_text(json.dumps({os.path.relpath(p, tmp_path): p.parent.name.upper()
                              for p in sorted(classes_src.rglob("*.png"))}))
    tokenize_dataset(classes_src, tmp_path / "j", model=str(model_dir), labels=js, workers=0, progress=False)
    assert [r.label for r in TokenDataset(tmp_path / "j")] == [0, 0, 0, 1, 1]
    assert json.loads((tmp_path / "j" / "dataset_info.json").read_text())["classes"] == ["CAT", "DOG"]


def test_bad_labels_are_clear_errors(classes_src, src, model_dir, tmp_path):
    def run(labels, source=classes_src):
        return tokenize_dataset(source, tmp_path / "x", model=str(model_dir), labels=labels, workers=0, progress=False)

    csv = tmp_path / "l.csv"
    csv.write_text("path,label\ncat/0.png,1\n")
    with pytest.raises(InputError, match=r"no label for 4 of 5 image\(s\)"):
        run(csv)
    csv.write_text("path,label\n" + "".join(f"{p.relative_to(classes_src).as_posix()},{-1 if p.name == '0.png' else 2}\n"
                                            for p in classes_src.rglob("*.png")))
    with pytest.raises(InputError, match="mix class names and numbers"):
        run(csv)
    csv.write_text("file,class\n")
    with pytest.raises(InputError, match="header 'path,label'"):
        run(csv)
    js = tmp_path / "l.json"
    js.write_text(json.dumps({p.relative_to(classes_src).as_posix(): 1.5 for p in classes_src.rglob("*.png")}))
    with pytest.raises(InputError, match="non-negative ints or non-empty class names"):
        run(js)
    with pytest.raises(InputError, match="not inside a class folder"):
        run("folder", src)  # big.jpg etc. sit at the top of src
    with pytest.raises(InputError, match="no such file"):
        run(tmp_path / "missing.csv")
    assert not (tmp_path / "x" / "data").exists() or not list((tmp_path / "x" / "data").iterdir())


# ----------------------------------------------------------------- loader crashes and orphans
def test_a_killed_loader_fails_only_its_image(ref, src, model_dir, tmp_path, monkeypatch):
    """A loader process killed on one image (as by the OOM killer): that image goes to errors.jsonl,
    the run completes, every other row equals the reference."""
    import imagetok.data.token_dataset as td

    orig = td._Images.__getitem__

    def getitem(self, i):
        if self.work.keys[i] == "a/rgb1.png":
            os.kill(os.getpid(), 9)
        return orig(self, i)

    monkeypatch.setattr(td._Images, "__getitem__", getitem)  # the loader processes are forked: they see it
    out = tmp_path / "out"
    s = tokenize_dataset(src, out, model=str(model_dir), batch_size=3, shard_size=4, workers=2, progress=False)
    assert s["complete"] and s["failed"] == 4 and s["rows"] == 8
    errors = {e["key"]: e["error"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert "SIGKILL" in errors["a/rgb1.png"] and "out of memory" in errors["a/rgb1.png"]
    ref_rows, got = _rows(ref[0]), _rows(out)
    assert got.keys() == ref_rows.keys() - {"a/rgb1.png"} and all(torch.equal(got[k], ref_rows[k]) for k in got)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.slow  # ~6 s each (a fresh interpreter imports torch); the fast loader-level twin is in test_data_sources.py
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_loader_processes_die_with_the_run(src, model_dir, tmp_path, sig):
    """SIGKILL or SIGTERM of tokenize-dataset while its loaders are busy leaves no loader running."""
    import signal

    script = (
        "import time, sys\n"
        "import imagetok.data.token_dataset as td\n"
        "td._Images.__getitem__ = lambda self, i: time.sleep(120)\n"  # a decode that takes forever
        "from imagetok.cli import main\n"
        f"sys.exit(main(['tokenize-dataset', {str(src)!r}, '--out', {str(tmp_path / 'o')!r}, '--model', {str(model_dir)!r},"
        " '--workers', '2', '--quiet']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(kids := child_pids(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no loader processes started"
            time.sleep(0.05)
        time.sleep(0.3)  # the loaders are inside the slow decode now
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(pid_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(k) for k in kids), f"loader processes outlived the run: {[k for k in kids if pid_alive(k)]}"
    finally:
        proc.kill()
        proc.wait()
        for k in child_pids(proc.pid) if pid_alive(proc.pid) else []:
            os.kill(k, 9)


def test_tar_member_cap_in_tokenize_dataset(src, model_dir, tmp_path, capsys):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        for k in ("big.jpg", "small.jpg", "a/rgb0.png"):
            tf.add(src / k, arcname=k.replace("/", "_"))
    size = (src / "big.jpg").stat().st_size
    assert size > 4096 and (src / "small.jpg").stat().st_size < 4096 and (src / "a/rgb0.png").stat().st_size > 4096
    out = tmp_path / "o"
    assert cli_main(["tokenize-dataset", str(tmp_path / "s.tar"), "--out", str(out), "--model", str(model_dir),
                     "--max-member-mb", str(4096 / 2**20), "--workers", "0", "--quiet"]) == 3
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == ["s.tar/a_rgb0.png", "s.tar/big.jpg"]
    assert f"{size:,} bytes, over the limit of 4,096" in errors[1]["error"]
    assert [r.key for r in TokenDataset(out)] == ["s.tar/small.jpg"]


def test_cli_default_member_cap_matches_the_library():
    from imagetok.cli.dataset import MAX_MEMBER_MB
    from imagetok.data.sources import MAX_TAR_MEMBER_BYTES

    assert MAX_MEMBER_MB * 2**20 == MAX_TAR_MEMBER_BYTES


def test_layout_writes_llm_ids_that_round_trip(ref, tmp_path, capsys):
    """--layout NAME writes the memmap in that LLM's id layout; ids map back to the dataset's tokens."""
    from imagetok.llm import get_layout

    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    out, rows = ref[0], _rows(ref[0])
    assert cli_main(["tokenize-dataset", "--out", str(out), "--merge-only", "--layout", "janus"]) == 3  # 3 images failed
    info = json.loads((out / "memmap" / "memmap_info.json").read_text())
    assert info["layout"]["name"] == "janus" and "bridge" not in info
    mm = np.memmap(out / "memmap" / "tokens.bin", dtype=info["dtype"], mode="r")
    offsets = np.load(out / "memmap" / "offsets.npy")
    keys = [json.loads(line) for line in (out / "memmap" / "keys.jsonl").read_text().splitlines()]
    lay = get_layout("janus")
    for i, k in enumerate(keys):
        ids = torch.from_numpy(np.asarray(mm[offsets[i] : offsets[i + 1]], dtype=np.int64))
        assert torch.equal(lay.from_ids(ids, grid=rows[k].shape), rows[k])

    # show-o needs the LLM's text tokenizer: refused without it, before any work; used from a folder
    capsys.readouterr()
    assert cli_main(["tokenize-dataset", "--out", str(out), "--merge-only", "--layout", "show-o"]) == 1
    assert "needs the LLM's text tokenizer" in capsys.readouterr().err
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    hf.add_special_tokens({"additional_special_tokens": ["<|soi|>", "<|eoi|>"]})
    hf.save_pretrained(tmp_path / "showo-tok")
    assert cli_main(["tokenize-dataset", "--out", str(out), "--merge-only", "--layout", "show-o",
                     "--hf-tokenizer", str(tmp_path / "showo-tok")]) == 3  # fmt: skip
    info = json.loads((out / "memmap" / "memmap_info.json").read_text())
    mm = np.memmap(out / "memmap" / "tokens.bin", dtype=info["dtype"], mode="r")
    offsets = np.load(out / "memmap" / "offsets.npy")
    lay = get_layout("show-o", hf)
    ids = torch.from_numpy(np.asarray(mm[offsets[0] : offsets[1]], dtype=np.int64))
    assert ids[0] == hf.convert_tokens_to_ids("<|soi|>") and ids[-1] == hf.convert_tokens_to_ids("<|eoi|>")
    assert torch.equal(lay.from_ids(ids, grid=rows[keys[0]].shape), rows[keys[0]])
    assert cli_main(["tokenize-dataset", "--out", str(out), "--merge-only", "--layout", "janus", "--boi"]) == 1

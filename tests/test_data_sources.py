"""One walker of image sources: usage, tokenize-dataset and train see the same images of a folder;
tar members over the size cap fail cleanly; the ordered loader survives a killed worker."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import child_pids, make_tiny_tokenizer, pid_alive
import imagetok.data._loader as _loader_module
from imagetok.data._loader import Loader
from imagetok.data.sources import IMAGE_EXTENSIONS, iter_items, list_source, list_sources
from imagetok.errors import InputError
from imagetok.train.data import list_images
from imagetok.usage import usage_from_images


def _img(path, seed=0, fmt=None):
    a = (np.random.default_rng(seed).random((40, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(path, format=fmt)


@pytest.fixture
def walk(tmp_path):
    """The review's case (a.jpe b.ico c.ppm .hidden/d.png) plus a hidden file, a subfolder and a .txt."""
    d = tmp_path / "walk"
    (d / ".hidden").mkdir(parents=True)
    (d / "sub").mkdir()
    _img(d / "a.jpe", fmt="JPEG")
    _img(d / "b.ico")
    _img(d / "c.ppm")
    _img(d / ".hidden" / "d.png")
    _img(d / ".e.png")
    _img(d / "sub" / "f.PNG")
    (d / "notes.txt").write_text("not an image")
    return d


def test_one_walker_gives_one_image_set_everywhere(walk):
    expect = ["a.jpe", "b.ico", "c.ppm", "sub/f.PNG"]
    work = list_source(walk)  # tokenize-dataset
    assert [work.keys[i] for i in range(len(work))] == expect and work.ignored == 1
    assert [os.path.relpath(n, walk) for n, _ in iter_items(list_sources([walk]))] == expect  # usage
    assert [p.relative_to(walk).as_posix() for p in list_images(walk)] == expect  # train
    from imagetok.cli import _expand_images

    assert [p.relative_to(walk).as_posix() for p in _expand_images([walk])] == expect  # imagetok encode FOLDER
    tok = make_tiny_tokenizer("vqgan")
    u = tok.codebook_usage(walk, batch_size=3)
    assert u.images == 4 and u.skipped_count == 0
    assert {".jpe", ".ico", ".ppm", ".png", ".jpg", ".jfif", ".webp"} <= IMAGE_EXTENSIONS


def test_usage_reads_list_files_and_tar_members(walk, tmp_path):
    tok = make_tiny_tokenizer("vqgan")
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        for name in ("a.jpe", "c.ppm"):
            tf.add(walk / name, arcname=name)
    lst = tmp_path / "list.txt"
    lst.write_text("walk/a.jpe\nwalk/c.ppm\n")
    by_tar, by_list = tok.codebook_usage(tmp_path / "s.tar"), tok.codebook_usage(lst)
    files = tok.codebook_usage([walk / "a.jpe", walk / "c.ppm"])
    assert by_tar.levels == by_list.levels == files.levels and files.images == 2


def test_tar_member_over_the_cap_fails_cleanly(walk, tmp_path):
    big = io.BytesIO()
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(big, "PNG", compress_level=0)  # ~270 kB
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        tf.add(walk / "a.jpe", arcname="small.jpg")
        info = tarfile.TarInfo("big.png")
        info.size = len(big.getvalue())
        tf.addfile(info, io.BytesIO(big.getvalue()))
    work = list_source(tmp_path / "s.tar", max_member_bytes=100_000)
    keys = [work.keys[i] for i in range(len(work))]
    assert keys == ["s.tar/big.png", "s.tar/small.jpg"]
    with pytest.raises(InputError, match=r"over the limit of 100,000 \(max_member_bytes, --max-member-mb\)"):
        work.read(0, {})
    assert isinstance(work.read(1, {}), bytes)
    items = dict(iter_items([work]))
    assert isinstance(items[str(tmp_path / "s.tar" / "big.png")], InputError)
    tok = make_tiny_tokenizer("vqgan")
    u = usage_from_images(tok, tmp_path / "s.tar", size=32, max_member_bytes=100_000)  # skipped, counted, listed
    assert u.images == 1 and u.skipped_count == 1 and "max_member_bytes" in u.skipped[0][1]


def test_walker_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        list_sources([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        list_images(tmp_path / "empty")
    with pytest.raises(InputError, match="folder not found"):
        list_images(tmp_path / "missing")


# ------------------------------------------------------------------------------------ loader
def _square_or_die(i):
    if i == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return i * i


def test_loader_survives_a_killed_worker_and_keeps_order():
    batches = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9, 10, 11]]
    loader = Loader(_square_or_die, batches, 2, lambda i, why: ("crashed", i, why))
    got = list(loader)
    assert [len(b) for b in got] == [3, 3, 2, 4]
    flat = [x for b in got for x in b]
    assert flat[:5] == [0, 1, 4, 9, 16] and flat[6:] == [i * i for i in range(6, 12)]
    assert flat[5][:2] == ("crashed", 5) and "SIGKILL" in flat[5][2] and "out of memory" in flat[5][2]
    assert loader.crashes == 1 and loader.procs == []  # every worker stopped


_ORPHAN_SCRIPT = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("loader", sys.argv[1])  # stdlib only: no torch import, fast
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)
for batch in loader.Loader(lambda i: time.sleep(120), [[0, 1], [2, 3]], 2, lambda i, why: None):
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_loader_processes_exit_when_the_parent_dies(sig):
    """Workers busy in a long decode exit when their parent is SIGKILLed or SIGTERMed (no orphans)."""
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, str(Path(_loader_module.__file__))])
    try:
        deadline = time.monotonic() + 30
        while len(kids := child_pids(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no loader processes started"
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(pid_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(pid_alive(k) for k in kids), "loader processes outlived their parent"
    finally:
        proc.kill()
        proc.wait()


def _always_die(i):
    os._exit(3)


def test_loader_gives_up_when_workers_never_work():
    with pytest.raises(RuntimeError, match="die before producing any result.*exit status 3"):
        list(Loader(_always_die, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], 2, lambda i, why: None))

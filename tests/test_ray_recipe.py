"""The Ray Data recipe (examples/ray_tokenize.py) on a local Ray instance: map_batches with a
Tokenizer actor gives encode()'s tokens, one row per image, bad images reported in their row.

Slow (a local Ray instance takes 10-30 s to start): ``pytest -m slow tests/test_ray_recipe.py``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from conftest import make_tiny_tokenizer, smooth_image  # noqa: E402

from imagetok import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _recipe():
    spec = importlib.util.spec_from_file_location("ray_tokenize", REPO / "examples" / "ray_tokenize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def local_ray():
    pythonpath = os.pathsep.join([str(REPO), str(REPO / "examples"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 2**20, runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}})
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_map_batches_tokenizer_actor(local_ray, tmp_path):
    model_dir = make_tiny_tokenizer("vqgan").save_pretrained(tmp_path / "model")
    tok = Tokenizer.from_pretrained(model_dir)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(7):
        Image.fromarray(smooth_image(30 + i, 40, i)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"not a png")
    recipe = _recipe()
    recipe.tokenize_with_ray(str(src), str(tmp_path / "out"), model=str(model_dir), batch_size=3, actors=1)
    table = pq.read_table(tmp_path / "out")
    rows = {Path(k).name: r for k, r in zip(table.column("key").to_pylist(), table.to_pylist())}
    assert sorted(rows) == sorted([f"{i}.png" for i in range(7)] + ["bad.png"]) and table.num_rows == 8
    assert rows["bad.png"]["tokens"] is None and "not an image" in rows["bad.png"]["error"]
    for i in range(7):
        r = rows[f"{i}.png"]
        expect = tok.encode(str(src / f"{i}.png"))
        assert r["error"] is None and r["grid"] == list(expect.shape) and (r["width"], r["height"]) == (40, 30 + i)
        assert torch.equal(torch.tensor(r["tokens"]).reshape(expect.shape), expect)
    # a Hugging Face style Parquet table (image struct column, id key)
    datasets = pytest.importorskip("datasets")
    imgs = [Image.fromarray(smooth_image(32, 32, 50 + i)) for i in range(4)]
    ds = datasets.Dataset.from_dict({"image": imgs, "id": [f"k{i}" for i in range(4)]},
                                    features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")}))
    (tmp_path / "hf").mkdir()
    ds.to_parquet(str(tmp_path / "hf" / "train.parquet"))
    recipe.tokenize_with_ray(str(tmp_path / "hf"), str(tmp_path / "out2"), model=str(model_dir), parquet=True,
                             key_column="id", batch_size=2)
    got = {r["key"]: r for r in pq.read_table(tmp_path / "out2").to_pylist()}
    assert sorted(got) == [f"k{i}" for i in range(4)]
    for i, im in enumerate(imgs):
        assert torch.equal(torch.tensor(got[f"k{i}"]["tokens"]).reshape(8, 8), tok.encode(im))

"""Codebook usage (issue 7): statistics on hand-built ids with known answers, streaming equality,
VQ-VAE-2 levels, the `imagetok usage` CLI (JSON schema, token files, refusals, PNG) and remaps."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_tokenizer  # tiny models with codebooks spread over real latents
from imagetok.cli import main
from imagetok.cli.usage import compare_usage, plot_usage
from imagetok.errors import ImagetokError, InputError, MissingDependencyError
from imagetok.llm import apply_remap, load_remap, remap_unused, save_remap, undo_remap
from imagetok.tokenfile import save_tokens
from imagetok.usage import DatasetUsage, UsageCounter, UsageReport, codebook_usage, codebook_usage_levels

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("usage_models")
    vq = make_tiny_tokenizer("vqgan")  # f4, 64 codes: 8x8 tokens at 32 px
    v2 = make_tiny_tokenizer("vqvae2")  # 64 codes per level: top 4x4, bottom 8x8 at 32 px
    vq.save_pretrained(root / "vq")
    v2.save_pretrained(root / "v2")
    return {"vq": vq, "v2": v2, "vq_dir": str(root / "vq"), "v2_dir": str(root / "v2")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """6 readable images (one in a subfolder, one of another size), one corrupt .jpg, a .txt."""
    d = tmp_path_factory.mktemp("usage_images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (d / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "sub" / "a.jpg")
    (d / "broken.jpg").write_bytes(b"definitely not a jpeg")
    (d / "notes.txt").write_text("not an image, not counted")
    return d


# ----------------------------------------------------------------------- known answers
def test_statistics_on_hand_built_ids():
    r = codebook_usage(torch.tensor([[0, 0], [1, 2]]), 8)
    assert r.counts == (2, 1, 1, 0, 0, 0, 0, 0)
    assert (r.tokens, r.grids, r.grid, r.codebook_size) == (4, 1, (2, 2), 8)
    assert r.codes_used == 3 and r.used_fraction == 3 / 8
    assert r.dead_codes == (3, 4, 5, 6, 7) and r.dead_count == 5
    assert r.entropy_bits == pytest.approx(1.5, abs=1e-12)  # -(1/2 log 1/2 + 2 * 1/4 log 1/4)
    assert r.perplexity == pytest.approx(2**1.5, abs=1e-12)
    assert r.max_entropy_bits == 3.0 and r.normalized_entropy == pytest.approx(0.5)
    assert r.top1pct_share == 0.5 and r.top10pct_share == 0.5  # ceil(8/100) = ceil(8/10) = 1 code
    # sorted counts 0,0,0,0,0,1,1,2: G = 2 * (6 + 7 + 16) / (8 * 4) - 9 / 8
    assert r.gini == pytest.approx(22 / 32, abs=1e-12)
    assert r.top_codes == ((0, 2), (1, 1), (2, 1))  # ties: lower id first
    assert r.position_distinct == ((1, 1), (1, 1))


def test_uniform_and_collapsed_extremes():
    u = codebook_usage(torch.arange(4).view(2, 2), 4)
    assert u.entropy_bits == pytest.approx(2.0) and u.perplexity == pytest.approx(4.0)
    assert u.gini == pytest.approx(0.0, abs=1e-12) and u.used_fraction == 1.0 and u.dead_codes == ()
    c = codebook_usage(torch.full((3, 2, 2), 3), 10)
    assert c.entropy_bits == 0.0 and math.copysign(1, c.entropy_bits) == 1  # no "-0.0"
    assert c.perplexity == 1.0 and c.gini == pytest.approx(0.9)  # (K - 1) / K
    assert c.top1pct_share == 1.0 and c.dead_count == 9 and c.top_codes == ((3, 12),)


def test_top_shares_and_gini_of_a_linear_ramp():
    k = 200
    r = UsageReport.from_counts(torch.arange(1, k + 1))  # c_i = i + 1
    n = k * (k + 1) // 2
    assert r.top1pct_share == pytest.approx((200 + 199) / n)  # ceil(200 / 100) = 2 codes
    assert r.top10pct_share == pytest.approx(sum(range(181, 201)) / n)  # 20 codes
    assert r.gini == pytest.approx((k - 1) / (3 * k))  # Gini of 1..n
    assert r.top_codes[0] == (199, 200) and len(r.top_codes) == 10
    assert r.grids == 0 and r.position_distinct is None


def test_per_position_distinct_codes():
    t = torch.tensor([[[1, 0], [5, 7]], [[1, 1], [5, 7]], [[1, 2], [6, 7]]])  # 3 grids of 2x2
    r = codebook_usage(t, 8)
    assert r.position_distinct == ((1, 3), (2, 1))
    assert r.position_stats == {"min": 1, "mean": 7 / 4, "max": 3}


def test_streamed_equals_all_at_once():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (20, 4, 4), generator=g) ** 2 % 50  # skewed, some codes dead
    whole = codebook_usage(ids, 50)
    counter = UsageCounter(50)
    for chunk in (ids[:1], ids[1], ids[2:9].numpy(), ids[9:9], ids[9:]):  # batch, one grid, numpy, empty
        counter.update(chunk)
    assert counter.report() == whole
    assert codebook_usage((b for b in ids.split(3)), 50) == whole  # a generator of batches
    assert sum(whole.counts) == 20 * 16 and whole.counts == tuple(torch.bincount(ids.flatten(), minlength=50).tolist())


def test_per_position_memory_bound_and_degrading():
    ids = torch.randint(0, 64, (4, 8, 8))
    c = UsageCounter(64)
    c.update(ids)
    assert c._seen.numel() == 8 * 8 * 64  # the documented bound: h * w * K bools
    big = codebook_usage(ids, 64, max_position_cells=8 * 8 * 64 - 1)
    assert big.position_distinct is None and "max_position_cells" in big.position_note
    assert big.counts == codebook_usage(ids, 64).counts and big.grid == (8, 8)
    mixed = UsageCounter(64).update(ids).update(ids[:, :4]).report()
    assert mixed.position_distinct is None and "different shapes" in mixed.position_note and mixed.grid is None
    assert mixed.tokens == 4 * 64 + 4 * 32
    flat = codebook_usage(ids.flatten(), 64)
    assert flat.position_distinct is None and "1-D" in flat.position_note and flat.grids == 0
    with pytest.raises(InputError, match="expected token grids of shape"):
        UsageCounter(64, grid=(4, 4)).update(ids)


def test_bad_ids_are_refused_and_nothing_is_counted():
    c = UsageCounter(8).update(torch.tensor([[1, 2]]))
    with pytest.raises(InputError, match=r"\[0, 8\)"):
        c.update(torch.tensor([[1, 8]]))
    with pytest.raises(InputError, match="integer"):
        c.update(torch.rand(2, 2))
    with pytest.raises(InputError, match=r"\[0, 8\)"):
        c.update(np.array([[-1, 0]]))
    assert c.tokens == 2 and c.report().counts[:3] == (0, 1, 1)
    with pytest.raises(InputError, match="no tokens"):
        UsageCounter(8).report()
    with pytest.raises(InputError, match="codebook_size"):
        UsageCounter(0)
    with pytest.raises(InputError, match="2 token levels"):
        codebook_usage_levels([torch.zeros(2, 2, dtype=torch.long)], (4, 4))
    with pytest.raises(InputError, match="codebook_usage_levels"):
        codebook_usage(torch.zeros(2, 2, dtype=torch.long), (4, 4))  # one return type: several levels is its own function


def test_report_dict_round_trip_is_exact():
    ids = torch.randint(0, 30, (5, 3, 3))
    r = codebook_usage(ids, 30, top=5)
    d = json.loads(json.dumps(r.to_dict()))
    assert UsageReport.from_dict(d) == r
    assert d["dead_count"] == len(d["dead_codes"]) and len(d["counts"]) == 30
    assert d["top_codes"][0]["share"] == pytest.approx(d["top_codes"][0]["count"] / d["tokens"])
    with pytest.raises(InputError, match="usage report"):
        DatasetUsage.from_dict({"format": "something-else"})


# ------------------------------------------------------------------------- tokenizers
def test_vqvae2_gives_one_report_per_level(models):
    tok = models["v2"]
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    top, bottom = tok.encode(x)
    u = tok.codebook_usage(x, batch_size=2)
    assert [lv.name for lv in u.levels] == ["top", "bottom"] and u.images == 5 and u.source == "tensors"
    assert u.levels[0].grid == (4, 4) and u.levels[1].grid == (8, 8)
    assert u.levels[0].counts == tuple(torch.bincount(top.flatten(), minlength=64).tolist())
    assert u.levels[1].counts == tuple(torch.bincount(bottom.flatten(), minlength=64).tolist())
    pure = codebook_usage_levels((top, bottom), (64, 64))
    assert pure == u.levels
    streamed = codebook_usage_levels(((t, b) for t, b in zip(top.split(2), bottom.split(2))), (64, 64))
    assert streamed == u.levels


def test_loader_forms_count_the_same(models):
    tok = models["vq"]
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref = tok.codebook_usage(x).levels
    loader = ((x[i : i + 4], torch.zeros(len(x[i : i + 4]))) for i in range(0, 6, 4))  # (images, labels)
    assert tok.codebook_usage(loader).levels == ref
    assert tok.codebook_usage([x[:3], x[3:]]).levels == ref  # a list of batches
    assert tok.codebook_usage(iter([{"pixel_values": x}]), batch_size=4).levels == ref
    assert ref[0].tokens == 6 * 64


def test_folder_streaming_skips_unreadable_files(models, folder, capsys):
    tok = models["vq"]
    u = tok.codebook_usage(folder, batch_size=4, progress=True)
    assert u.images == 6 and u.skipped_count == 1 and u.skipped[0][0].endswith("broken.jpg")
    assert "not an image" in u.skipped[0][1]
    err = capsys.readouterr().err
    assert "usage: 100%" in err and "7/7" in err  # a tqdm bar over every file, unreadable ones too
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg") and p.name != "broken.jpg")
    assert tok.codebook_usage(files, batch_size=1).levels == u.levels  # batch size does not matter
    assert tok.codebook_usage(iter(files + [str(folder / "broken.jpg")]), batch_size=3).levels == u.levels
    assert u.levels[0].counts == tuple(torch.bincount(tok.encode(files).flatten(), minlength=64).tolist())


# ------------------------------------------------------------------------------- CLI
LEVEL_KEYS = {"name", "codebook_size", "tokens", "grids", "grid", "codes_used", "used_fraction", "dead_count",
              "dead_codes", "perplexity", "entropy_bits", "max_entropy_bits", "normalized_entropy",
              "top1pct_share", "top10pct_share", "gini", "top_codes", "per_position", "per_position_note", "counts"}


def test_cli_json_schema_and_skipped_files(models, folder, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["usage", str(folder), "--model", models["vq_dir"], "--json", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1 and "1 input(s) could not be read" in cap.err  # the report is still written
    assert "codes used" in cap.out and "perplexity" in cap.out
    d = json.loads(out.read_text())
    assert set(d) == {"format", "model", "config_hash", "family", "source", "images", "skipped_count",
                      "skipped", "levels"}
    assert d["format"] == "imagetok-usage/1" and d["family"] == "vqgan" and d["source"] == "images"
    assert d["images"] == 6 and d["skipped_count"] == 1 and set(d["skipped"][0]) == {"path", "error"}
    (lv,) = d["levels"]
    assert set(lv) == LEVEL_KEYS
    assert lv["codebook_size"] == 64 and len(lv["counts"]) == 64 and sum(lv["counts"]) == lv["tokens"] == 6 * 64
    assert lv["codes_used"] + lv["dead_count"] == 64 and isinstance(lv["gini"], float)
    assert set(lv["per_position"]) == {"grid", "distinct", "min", "mean", "max"}
    assert lv["per_position"]["grid"] == [8, 8] and len(lv["per_position"]["distinct"]) == 8
    assert DatasetUsage.load(out).to_dict() == d


def test_cli_token_files_need_no_model(models, tmp_path, capsys):
    tok = models["v2"]
    g = torch.Generator().manual_seed(3)
    a, b = tok.encode(torch.rand(3, 3, 32, 32, generator=g)), tok.encode(torch.rand(2, 3, 32, 32, generator=g))
    save_tokens(tmp_path / "a.safetensors", a, model="v2", config=tok.config)
    save_tokens(tmp_path / "b.json", b, model="v2", config=tok.config)
    (tmp_path / "c.safetensors").write_bytes(b"corrupt")
    rc = main(["usage", str(tmp_path / "a.safetensors"), str(tmp_path / "b.json"), str(tmp_path / "c.safetensors"),
               "--json", "-", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1 and "c.safetensors" in cap.err  # skipped, counted, reported
    d = json.loads(cap.out)
    assert d["source"] == "tokens" and d["images"] == 5 and d["skipped_count"] == 1
    expect = codebook_usage_levels([a, b], (64, 64))
    assert [DatasetUsage.from_dict(d).levels[i].counts for i in (0, 1)] == [expect[0].counts, expect[1].counts]


def test_cli_refuses_tokens_from_another_model(models, tmp_path, capsys):
    vq, v2 = models["vq"], models["v2"]
    x = torch.rand(2, 3, 32, 32)
    save_tokens(tmp_path / "vq.safetensors", (vq.encode(x),), model="vq", config=vq.config)
    save_tokens(tmp_path / "v2.safetensors", v2.encode(x), model="v2", config=v2.config)
    np.save(tmp_path / "raw.npy", vq.encode(x).numpy())
    assert main(["usage", str(tmp_path / "vq.safetensors"), str(tmp_path / "v2.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "cannot be counted together" in err and "[64]" in err and "[64, 64]" in err
    assert main(["usage", str(tmp_path / "vq.safetensors"), "--model", models["v2_dir"]]) == 1
    assert "config hash" in capsys.readouterr().err
    assert main(["usage", str(tmp_path / "raw.npy")]) == 1
    assert "--model" in capsys.readouterr().err
    assert main(["usage", str(tmp_path / "raw.npy"), "--model", models["v2_dir"]]) == 1  # 2 levels vs 1
    assert "level" in capsys.readouterr().err
    big = np.full((1, 4, 4), 100, dtype=np.int64)  # ids beyond a 64-code codebook
    np.save(tmp_path / "big.npy", big)
    assert main(["usage", str(tmp_path / "big.npy"), "--model", models["vq_dir"]]) == 1
    assert "[0, 64)" in capsys.readouterr().err
    assert main(["usage", str(tmp_path / "raw.npy"), "--model", models["vq_dir"], "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2


def test_cli_refuses_tokens_from_other_weights(models, tmp_path, capsys):
    """Same architecture (config hash), different weights: the ids mean different things."""
    tok = models["vq"]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for name, sha in (("a", "aa" * 32), ("b", "bb" * 32), ("c", None)):
        save_tokens(tmp_path / f"{name}.json", (tok.encode(x),), model="vq", config=tok.config)
        d = json.loads((tmp_path / f"{name}.json").read_text())
        d["weights_sha256"] = sha
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    assert main(["usage", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "different weights" in err and "aa" * 32 in err and "bb" * 32 in err
    assert main(["usage", str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--json", "-", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4  # a file without a recorded sha256 is not refused


def test_cli_bad_inputs(models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["usage", str(tmp_path / "empty"), "--model", models["vq_dir"]]) == 1
    assert "no image files found" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    assert main(["usage", str(tmp_path / "bad"), "--model", models["vq_dir"], "--no-progress"]) == 1
    assert "all 1 input(s) were unreadable" in capsys.readouterr().err
    assert main(["usage", str(tmp_path / "missing"), "--model", models["vq_dir"]]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["usage"]) == 1


def test_cli_plot_writes_a_png(models, folder, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "u.png"
    assert main(["usage", str(folder / "sub"), str(folder / "0.png"), "--model", models["v2_dir"],
                 "--plot", str(png), "--no-progress"]) == 0
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.width >= 600 and im.height >= 600  # 2 level rows x 3 panels
        assert len(set(np.asarray(im.convert("L")).flatten().tolist())) > 10  # not a blank canvas


def test_missing_matplotlib_is_a_clear_error_before_any_work(models, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "r.json"
    assert main(["usage", str(folder), "--model", models["vq_dir"], "--plot", str(tmp_path / "p.png"),
                 "--json", str(out)]) == 1
    assert "pip install 'imagetok[plot]'" in capsys.readouterr().err and not out.exists()
    with pytest.raises(MissingDependencyError) as e:
        plot_usage(codebook_usage(torch.tensor([0, 1]), 2), tmp_path / "p.png")
    assert isinstance(e.value, ImagetokError) and isinstance(e.value, ImportError)


def test_compare_two_reports(models, tmp_path, capsys):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    a = models["vq"].codebook_usage(x)
    b = models["vq"].codebook_usage(x[:1])
    a.save(tmp_path / "full.json")
    b.save(tmp_path / "one.json")
    assert main(["usage", "--compare", str(tmp_path / "full.json"), str(tmp_path / "one.json")]) == 0
    out = capsys.readouterr().out
    assert "full" in out and "one" in out and "difference" in out
    row = next(line for line in out.splitlines() if line.startswith("codes used"))
    assert row.rstrip().endswith(f"{b.levels[0].codes_used - a.levels[0].codes_used:+,}")
    text = compare_usage([a.levels[0], b.levels[0]], ["x", "y"])
    assert f"{a.levels[0].perplexity:,.1f}" in text and f"{b.levels[0].perplexity:,.1f}" in text
    assert main(["usage", "--compare", str(tmp_path / "full.json"), "x.png"]) == 1  # not a report
    assert "no such usage report" in capsys.readouterr().err


def test_remap_drops_unused_codes(tmp_path):
    ids = torch.tensor([[7, 2], [2, 9]])
    r = codebook_usage(ids, 10)
    old_to_new, new_to_old = remap_unused(r)
    assert new_to_old.tolist() == [2, 7, 9] and old_to_new[[2, 7, 9]].tolist() == [0, 1, 2]
    assert (old_to_new[[0, 1, 3]] == -1).all()
    new = apply_remap(ids, old_to_new)
    assert new.tolist() == [[1, 0], [0, 2]] and torch.equal(undo_remap(new, new_to_old), ids)
    with pytest.raises(InputError, match="dropped"):
        apply_remap(torch.tensor([3]), old_to_new)
    usage = DatasetUsage(levels=(r,), images=1)
    ((o2n, n2o),) = load_remap(save_remap(usage, tmp_path / "remap.json"))
    assert torch.equal(o2n, old_to_new) and torch.equal(n2o, new_to_old)


def test_images_of_different_sizes_drop_per_position_usage(models, folder):
    u = models["vq"].codebook_usage(folder, size=None)  # 48x40 -> 12x10 grids, 32x32 -> 8x8
    (lv,) = u.levels
    assert u.images == 6 and lv.tokens == 5 * 12 * 10 + 8 * 8
    assert lv.grid is None and lv.position_distinct is None and "different shapes" in lv.position_note


def test_core_does_not_import_matplotlib():
    code = "import sys, imagetok, imagetok.usage, imagetok.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_image_usage_is_batched_and_memory_bounded(models, folder, monkeypatch):
    """Files are read as they are encoded: never more than batch_size preprocessed images wait."""
    tok = make_tiny_tokenizer("vqgan")
    state = {"read": 0, "encoded": 0, "max_waiting": 0, "batches": []}
    preprocess, encode_pixels = tok.preprocess, tok.encode_pixels

    def counting_preprocess(images, **kw):
        x, is_batch = preprocess(images, **kw)
        state["read"] += x.shape[0]
        state["max_waiting"] = max(state["max_waiting"], state["read"] - state["encoded"])
        return x, is_batch

    def counting_encode(x):
        state["batches"].append(x.shape[0])
        state["encoded"] += x.shape[0]
        return encode_pixels(x)

    monkeypatch.setattr(tok, "preprocess", counting_preprocess)
    monkeypatch.setattr(tok, "encode_pixels", counting_encode)
    u = tok.codebook_usage([folder, folder, folder], batch_size=4)  # 18 readable images
    assert u.images == 18 and state["batches"] == [4, 4, 4, 4, 2] and state["max_waiting"] <= 4
    once = tok.codebook_usage(folder, batch_size=5)
    assert u.levels[0].counts == tuple(3 * c for c in once.levels[0].counts)  # batching changes nothing

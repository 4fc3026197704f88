"""The CLI through main([...]): encode/decode/reconstruct/info on a tiny saved model, token files
in every format, and errors as one stderr line with exit status 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imagetok import Tokenizer
from imagetok.cli import main
from imagetok.metrics import psnr, ssim
from imagetok.tokenfile import load_tokens


@pytest.fixture
def setup(tiny_model_dir, make_image, tmp_path):
    """(model folder, loaded tokenizer, two image paths)."""
    model = tiny_model_dir("vqgan")
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(make_image(40, 48, seed=i)).save(p)
        paths.append(p)
    return model, Tokenizer.from_pretrained(model), paths


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(capsys, *argv, match: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and match in lines[0], lines[0]
    assert lines[0].startswith(f"imagetok {argv[0]}: error: ")
    return lines[0]


def test_encode_prints_json(capsys, setup):
    model, tok, paths = setup
    code, out, err = run(capsys, "encode", *paths, "--model", model)
    assert code == 0 and err == ""
    res = json.loads(out)
    assert res["model"] == str(model.resolve()) and res["family"] == "vqgan"
    assert [e["image"] for e in res["images"]] == [str(p) for p in paths]
    ref = tok.encode([str(p) for p in paths])
    for i, e in enumerate(res["images"]):
        assert e["shape"] == [8, 8]
        assert torch.equal(torch.tensor(e["tokens"]), ref[i])


def test_encode_fast_flag_uses_the_fast_path(capsys, setup):
    """--fast runs the bf16 network: same grid, tokens mostly equal to float32, equal to tok.fast."""
    model, tok, paths = setup
    code, out, _ = run(capsys, "encode", *paths, "--model", model, "--fast")
    assert code == 0
    got = torch.stack([torch.tensor(e["tokens"]) for e in json.loads(out)["images"]])
    exact = tok.encode([str(p) for p in paths])
    tok.fast = True
    assert torch.equal(got, tok.encode([str(p) for p in paths]))
    assert got.shape == exact.shape and (got == exact).float().mean() >= 0.7


def test_encode_size_options(capsys, setup):
    model, tok, paths = setup
    code, out, _ = run(capsys, "encode", paths[0], "-m", model, "--size", "64")
    assert code == 0 and json.loads(out)["images"][0]["shape"] == [16, 16]
    code, out, _ = run(capsys, "encode", paths[0], "-m", model, "--size", "0")  # keep 48x40
    assert code == 0 and json.loads(out)["images"][0]["shape"] == [10, 12]


def test_encode_vqvae2_json_names_levels(capsys, tiny_model_dir, make_image, tmp_path):
    model = tiny_model_dir("vqvae2")
    Image.fromarray(make_image(32, 32)).save(tmp_path / "a.png")
    code, out, _ = run(capsys, "encode", tmp_path / "a.png", "-m", model)
    entry = json.loads(out)["images"][0]
    assert code == 0 and entry["shape"] == {"top": [4, 4], "bottom": [8, 8]}
    top, bottom = Tokenizer.from_pretrained(model).encode(tmp_path / "a.png")
    assert entry["tokens"]["top"] == top.tolist() and entry["tokens"]["bottom"] == bottom.tolist()


@pytest.mark.parametrize("suffix", [".npy", ".json", ".safetensors"])
def test_encode_to_file_and_decode_back(capsys, setup, tmp_path, suffix):
    model, tok, paths = setup
    out_file = tmp_path / f"tokens{suffix}"
    code, out, err = run(capsys, "encode", *paths, "-m", model, "-o", out_file)
    assert code == 0 and out == "" and str(out_file) in err
    levels, meta = load_tokens(out_file)
    ref = tok.encode([str(p) for p in paths])
    assert len(levels) == 1 and torch.equal(levels[0], ref)
    if suffix != ".npy":
        assert meta["model"] == str(model.resolve()) and meta["images"] == [str(p) for p in paths]
    # decode: the model comes from the file's metadata, except for .npy which needs --model
    extra = ["-m", model] if suffix == ".npy" else []
    code, _, err = run(capsys, "decode", out_file, "-o", tmp_path / "dec", *extra)
    assert code == 0, err
    expect = tok.decode(ref, output="np")
    names = ["img0.png", "img1.png"] if suffix != ".npy" else ["00000.png", "00001.png"]
    for name, e in zip(names, expect):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "dec" / name)), e)


def test_decode_single_image_to_file(capsys, setup, tmp_path):
    model, tok, paths = setup
    run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.safetensors")
    code, _, err = run(capsys, "decode", tmp_path / "t.safetensors", "-o", tmp_path / "out.png")
    assert code == 0 and "out.png" in err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), tok.decode(tok.encode(paths[0]), output="np"))


def test_decode_npy_without_model_is_an_error(capsys, setup, tmp_path):
    model, _, paths = setup
    run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.npy")
    one_error_line(capsys, "decode", tmp_path / "t.npy", "-o", tmp_path / "x.png", match="--model")


def test_vqvae2_token_files(capsys, tiny_model_dir, make_image, tmp_path):
    model = tiny_model_dir("vqvae2")
    Image.fromarray(make_image(32, 32)).save(tmp_path / "a.png")
    tok = Tokenizer.from_pretrained(model)
    for suffix in (".json", ".safetensors"):
        assert run(capsys, "encode", tmp_path / "a.png", "-m", model, "-o", tmp_path / f"t{suffix}")[0] == 0
        code, _, err = run(capsys, "decode", tmp_path / f"t{suffix}", "-o", tmp_path / f"d{suffix}.png")
        assert code == 0, err
        expect = tok.decode(tok.encode(tmp_path / "a.png"), output="np")
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"d{suffix}.png")), expect)
    one_error_line(capsys, "encode", tmp_path / "a.png", "-m", model, "-o", tmp_path / "t.npy", match=".npy holds one token grid")


def test_reconstruct_prints_psnr_and_ssim(capsys, setup, tmp_path):
    model, tok, paths = setup
    code, out, _ = run(capsys, "reconstruct", paths[0], "-m", model, "-o", tmp_path / "rec.png")
    assert code == 0
    res = json.loads(out)
    x, _ = tok.preprocess(paths[0])
    y = tok.decode_pixels(tok.encode_pixels(x))
    assert res["psnr"] == pytest.approx(float(psnr(x, y)[0]), abs=1e-3)
    assert res["ssim"] == pytest.approx(float(ssim(x, y)[0]), abs=1e-4)
    assert 0 < res["psnr"] < 100 and -1 <= res["ssim"] <= 1
    assert Image.open(tmp_path / "rec.png").size == (32, 32)


def test_info(capsys, setup):
    model, tok, _ = setup
    code, out, _ = run(capsys, "info", "-m", model)
    info = json.loads(out)
    assert code == 0 and info["family"] == "vqgan" and info["model"] == str(model.resolve())
    assert info["codebook_sizes"] == [64] and info["downsample_factors"] == [4] and info["token_grids"] == [[8, 8]]
    assert info["parameters"] == sum(p.numel() for p in tok.model.parameters())


def test_errors_are_one_line(capsys, setup, tmp_path):
    model, _, paths = setup
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "bad.json").write_text("{broken")
    np.save(tmp_path / "big_ids.npy", np.full((1, 8, 8), 999, np.int64))
    np.save(tmp_path / "float_ids.npy", np.zeros((1, 8, 8), np.float32))
    cases = [
        (["encode", tmp_path / "missing.png", "-m", model], "no such file"),
        (["encode", tmp_path / "notes.jpg", "-m", model], "not an image"),
        (["encode", tmp_path, "-m", model], "is a directory"),
        (["encode", paths[0], "-m", model, "--size", "30"], "multiple of"),
        (["encode", paths[0], "-m", model, "-o", tmp_path / "t.txt"], "unknown token file type"),
        (["encode", paths[0], "-m", tmp_path / "no-model"], "no-model"),
        (["info", "-m", tmp_path], "config.json"),
        (["decode", tmp_path / "missing.json", "-o", tmp_path / "x.png", "-m", model], "no such token file"),
        (["decode", tmp_path / "bad.json", "-o", tmp_path / "x.png", "-m", model], "not a readable token file"),
        (["decode", tmp_path / "big_ids.npy", "-o", tmp_path / "x.png", "-m", model], "codebook of size 64"),
        (["decode", tmp_path / "float_ids.npy", "-o", tmp_path / "x.png", "-m", model], "integer"),
        (["reconstruct", tmp_path / "missing.png", "-o", tmp_path / "r.png", "-m", model], "no such file"),
    ]
    for argv, match in cases:
        one_error_line(capsys, *argv, match=match)


def test_decode_with_a_different_model_is_refused(capsys, setup, tiny_model_dir, tmp_path):
    model, _, paths = setup
    run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.safetensors")
    other = tiny_model_dir("vqvae")
    one_error_line(capsys, "decode", tmp_path / "t.safetensors", "-o", tmp_path / "x.png", "-m", other,
                   match="config hash")


def test_unwritable_output_is_one_line(capsys, setup, tmp_path):
    model, _, paths = setup
    run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.json")
    one_error_line(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "x.notanimage", match="x.notanimage")
    one_error_line(capsys, "reconstruct", paths[0], "-m", model, "-o", tmp_path / "r.notanimage", match="r.notanimage")


def test_debug_env_shows_traceback(capsys, setup, tmp_path, monkeypatch):
    model, _, _ = setup
    monkeypatch.setenv("IMAGETOK_DEBUG", "1")
    code, _, err = run(capsys, "encode", tmp_path / "missing.png", "-m", model)
    assert code == 1 and "Traceback (most recent call last)" in err and "InputError" in err
    assert err.strip().splitlines()[-1].startswith("imagetok encode: error:")

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
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{broken")
    np.save(tmp_path / "big_ids.npy", np.full((1, 8, 8), 999, np.int64))
    np.save(tmp_path / "float_ids.npy", np.zeros((1, 8, 8), np.float32))
    cases = [
        (["encode", tmp_path / "missing.png", "-m", model], "no such file"),
        (["encode", tmp_path / "notes.jpg", "-m", model], "not an image"),
        (["encode", tmp_path / "empty", "-m", model], "no image files found"),
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
    assert run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.safetensors")[0] == 0
    other = tiny_model_dir("vqvae")
    one_error_line(capsys, "decode", tmp_path / "t.safetensors", "-o", tmp_path / "x.png", "-m", other,
                   match="config hash")


def test_unwritable_output_is_one_line(capsys, setup, tmp_path):
    model, _, paths = setup
    assert run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.json")[0] == 0
    one_error_line(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "x.notanimage", match="x.notanimage")
    one_error_line(capsys, "reconstruct", paths[0], "-m", model, "-o", tmp_path / "r.notanimage", match="r.notanimage")


def test_debug_env_shows_traceback(capsys, setup, tmp_path, monkeypatch):
    model, _, _ = setup
    monkeypatch.setenv("IMAGETOK_DEBUG", "1")
    code, _, err = run(capsys, "encode", tmp_path / "missing.png", "-m", model)
    assert code == 1 and "Traceback (most recent call last)" in err and "InputError" in err
    assert err.strip().splitlines()[-1].startswith("imagetok encode: error:")


# ------------------------------------------------------------------ folders, outputs, token files
def test_encode_folders_one_file_per_image_or_one_for_all(capsys, setup, make_image, tmp_path):
    model, tok, _ = setup
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    (src / ".hidden").mkdir()
    for i, rel in enumerate(["a.png", "sub/b.jpg", "c.png", ".hidden/d.png"]):
        Image.fromarray(make_image(40, 48, seed=10 + i)).save(src / rel)
    (src / "notes.txt").write_text("not an image")
    code, _, err = run(capsys, "encode", src, "-m", model, "-o", tmp_path / "tok", "--batch-size", "2")
    assert code == 0 and "encode: 100%" in err  # more than one batch: a progress bar on stderr
    files = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert files == ["a.safetensors", "b.safetensors", "c.safetensors"]
    for name, rel in [("a", "a.png"), ("b", "sub/b.jpg")]:
        levels, meta = load_tokens(tmp_path / "tok" / f"{name}.safetensors")
        assert torch.equal(levels[0][0], tok.encode(src / rel)) and meta["images"] == [str(src / rel)]
        assert meta["weights_sha256"] == tok.provenance["weights_sha256"]
    one_error_line(capsys, "encode", src, "-m", model, "-o", tmp_path / "tok", match="exists; pass --overwrite")
    assert run(capsys, "encode", src, "-m", model, "-o", tmp_path / "tok", "--overwrite")[0] == 0
    code, _, err = run(capsys, "encode", src, src / "a.png", "-m", model, "-o", tmp_path / "all.json")
    levels, meta = load_tokens(tmp_path / "all.json")
    assert code == 0 and levels[0].shape == (4, 8, 8) and len(meta["images"]) == 4


def test_outputs_are_checked_before_any_work(capsys, setup, tmp_path):
    model, _, paths = setup
    before = paths[0].read_bytes()
    one_error_line(capsys, "reconstruct", paths[0], "-m", model, "-o", paths[0], match="is an input")
    assert paths[0].read_bytes() == before
    one_error_line(capsys, "reconstruct", paths[0], "-m", model, "-o", paths[1], match="exists; pass --overwrite")
    assert run(capsys, "reconstruct", paths[0], "-m", model, "-o", paths[1], "--overwrite")[0] == 0
    # output problems are reported before the model is loaded (this model does not exist)
    for out, match in [(tmp_path / "missing-dir" / "t.safetensors", "no such folder"), (tmp_path / "t.txt", "unknown token file type"),
                       (paths[1], "unknown token file type")]:
        one_error_line(capsys, "encode", paths[0], "-m", tmp_path / "no-model", "-o", out, match=match)
    assert run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.json")[0] == 0
    one_error_line(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.json", match="exists; pass --overwrite")
    one_error_line(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "t.json", match="cannot write an image file")
    assert run(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "x.png")[0] == 0  # the recorded local model
    one_error_line(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "x.png", match="exists; pass --overwrite")
    assert run(capsys, "encode", *paths, "-m", model, "-o", tmp_path / "two.json")[0] == 0
    one_error_line(capsys, "decode", tmp_path / "two.json", "-o", tmp_path / "y.png", match="-o must be a folder")


def test_decode_checks_the_weights_and_never_fetches_unasked(capsys, setup, tmp_path, monkeypatch):
    model, tok, paths = setup
    assert run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.json")[0] == 0
    other = Tokenizer.from_pretrained(model)
    with torch.no_grad():
        other.model.decoder.conv_out.bias.add_(0.5)  # same config, other weights
    other.save_pretrained(tmp_path / "other")
    one_error_line(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "x.png", "-m", tmp_path / "other",
                   match="other weights; pass --force")
    assert run(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "x.png", "-m", tmp_path / "other", "--force")[0] == 0
    meta = json.loads((tmp_path / "t.json").read_text())
    meta["model"] = "someone/else"  # a Hub repo id recorded in the file
    (tmp_path / "hub.json").write_text(json.dumps(meta))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_error_line(capsys, "decode", tmp_path / "hub.json", "-o", tmp_path / "z.png", match="pass --model someone/else")


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(images=["a.png"] * 2), "2 image name(s) for 1 token grid"),
    (lambda m: m.update(images=[3]), "must be a list of strings"),
    (lambda m: m["levels"][0]["tokens"][0][0].__setitem__(0, 1.5), "must be integers, got 1.5"),
    (lambda m: m["levels"][0]["tokens"][0][0].__setitem__(0, True), "must be integers, got True"),
    (lambda m: m.update(levels=[]), "non-empty list"),
    (lambda m: m.pop("levels"), "non-empty list"),
])
def test_malformed_json_token_files_are_refused(capsys, setup, tmp_path, change, match):
    model, _, paths = setup
    assert run(capsys, "encode", paths[0], "-m", model, "-o", tmp_path / "t.json")[0] == 0
    meta = json.loads((tmp_path / "t.json").read_text())
    change(meta)
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    one_error_line(capsys, "decode", tmp_path / "bad.json", "-o", tmp_path / "x.png", "-m", model, match=match)


def test_token_file_writer_and_reader_are_strict(setup, tmp_path):
    from safetensors.torch import save_file

    from imagetok.errors import InputError
    from imagetok.tokenfile import save_tokens

    _, tok, _ = setup
    grids = (torch.zeros(2, 8, 8, dtype=torch.long),)
    with pytest.raises(InputError, match="1 image name"):
        save_tokens(tmp_path / "a.safetensors", grids, model="m", config=tok.config, images=["x.png"])
    with pytest.raises(InputError, match="must be strings, got int"):
        save_tokens(tmp_path / "a.safetensors", grids, model="m", config=tok.config, images=["x.png", 7])
    assert not (tmp_path / "a.safetensors").exists()  # nothing written
    save_tokens(tmp_path / "a.safetensors", grids, model="m", config=tok.config, images=["x.png", "y.png"])
    with pytest.raises(InputError, match="exists"):
        save_tokens(tmp_path / "a.safetensors", grids, model="m", config=tok.config)
    meta = {"imagetok_format": json.dumps("imagetok-tokens/1")}
    save_file({"ids": grids[0]}, str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(InputError, match="named 'tokens'"):
        load_tokens(tmp_path / "b.safetensors")

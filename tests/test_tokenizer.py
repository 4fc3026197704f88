"""Tokenizer: save/load round trips, strict loading, strict configs, decode's input contract and
output types, flatten/unflatten, dtype handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from imagetok import Tokenizer, VQGANConfig, config_from_dict, config_to_dict
from imagetok.config import config_hash
from imagetok.errors import ConfigError, ImagetokError, InputError, UnknownModelError, WeightsError


TINY = {"family": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "z_channels": 8, "embed_dim": 8, "n_embed": 16, "resolution": 32}


def levels(tokens):
    return tokens if isinstance(tokens, tuple) else (tokens,)


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(levels(a), levels(b), strict=True))


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tiny_name, tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer(tiny_name)
    imgs = [make_image(40, 40, seed=i) for i in range(2)]
    ids = tok.encode(imgs)
    out = tok.decode(ids, output="pt")
    d = tok.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((d / "config.json").read_text()) == config_to_dict(tok.config)
    for source in (d, str(d), d / "model.safetensors"):
        loaded = Tokenizer.from_pretrained(source)
        assert loaded.config == tok.config and loaded.name == str(Path(source).resolve())
        assert not loaded.model.training
        assert same(loaded.encode(imgs), ids)
        assert torch.equal(loaded.decode(ids, output="pt"), out)
    state = load_file(str(d / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert state.keys() == tok.model.state_dict().keys()


def test_save_pretrained_is_byte_reproducible(tiny_tokenizer, tmp_path):
    """Same weights -> same model.safetensors bytes (so a published sha256 can be re-derived)."""
    tok = tiny_tokenizer("vqvae2")
    blobs = {tok.save_pretrained(tmp_path / str(i)).joinpath("model.safetensors").read_bytes() for i in range(4)}
    assert len(blobs) == 1


def test_save_from_bf16_writes_float32_and_load_with_dtype(tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer("vqgan")
    d = tok.save_pretrained(tmp_path / "fp32")
    tok.to(dtype=torch.bfloat16)
    d16 = tok.save_pretrained(tmp_path / "from-bf16")
    assert all(v.dtype == torch.float32 for v in load_file(str(d16 / "model.safetensors")).values())
    loaded = Tokenizer.from_pretrained(d, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.model.quantize.embedding.weight.dtype == torch.float32
    assert same(loaded.encode(make_image()), tok.encode(make_image()))


def _saved(tiny_tokenizer, tmp_path, name="vqgan"):
    d = tiny_tokenizer(name, spread=False).save_pretrained(tmp_path / "m")
    return d, load_file(str(d / "model.safetensors"))


def test_missing_extra_and_misshapen_tensors(tiny_tokenizer, tmp_path):
    d, state = _saved(tiny_tokenizer, tmp_path)
    w = d / "model.safetensors"
    key = "decoder.up.1.block.0.conv1.weight"
    cases = [
        ({k: v for k, v in state.items() if k != key}, rf"missing keys \['{key}'\]"),
        ({**state, "loss.discriminator.weight": torch.zeros(2)}, r"unexpected keys \['loss.discriminator.weight'\]"),
        ({**state, key: state[key][:, :3].contiguous()}, rf"shape mismatches \['{key}: file \(32, 3, 3, 3\) vs model \(32, 64, 3, 3\)'\]"),
        ({**state, "quantize.embedding.weight": torch.zeros(65, 8)}, r"quantize.embedding.weight: file \(65, 8\)"),
    ]
    for bad, msg in cases:
        save_file(bad, str(w))
        with pytest.raises(WeightsError, match=msg) as e:
            Tokenizer.from_pretrained(d)
        assert str(w) in str(e.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:5],  # truncated inside the header length
        lambda b: b"",  # empty
        lambda b: (2**40).to_bytes(8, "little") + b[8:],  # header length corrupted
        lambda b: b[:8] + b"{not json" + b[17:],  # header corrupted
        lambda b: b"PK\x03\x04" + b"\x00" * 200,  # a zip (e.g. a torch .pt renamed)
    ],
    ids=["half", "5-bytes", "empty", "bad-length", "bad-header", "zip"],
)
def test_corrupt_weights_file(tiny_tokenizer, tmp_path, damage):
    d, _ = _saved(tiny_tokenizer, tmp_path)
    w = d / "model.safetensors"
    w.write_bytes(damage(w.read_bytes()))
    with pytest.raises(WeightsError, match="safetensors"):
        Tokenizer.from_pretrained(d)


def test_missing_files_and_unknown_names(tiny_tokenizer, tmp_path):
    d, _ = _saved(tiny_tokenizer, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="weights file not found"):
        Tokenizer.from_pretrained(d)
    d2, _ = _saved(tiny_tokenizer, tmp_path / "b")
    (d2 / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json not found"):
        Tokenizer.from_pretrained(d2)
    with pytest.raises(ConfigError, match="config.json not found"):
        Tokenizer.from_pretrained(d2 / "model.safetensors")
    with pytest.raises(UnknownModelError, match="no-such-model"):
        Tokenizer.from_pretrained(str(tmp_path / "no-such-model"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ImagetokError):
        Tokenizer.from_pretrained(tmp_path / "x.txt")


@pytest.mark.parametrize(
    "edit, msg",
    [
        (lambda c: {**c, "n_layers": 3}, r"unknown vqgan config key\(s\) \['n_layers'\]"),
        (lambda c: {**c, "ch": "32"}, "'ch' must be an integer, got '32'"),
        (lambda c: {**c, "ch": 32.0}, "'ch' must be an integer"),
        (lambda c: {**c, "mid_attn": 1}, "'mid_attn' must be true or false"),
        (lambda c: {**c, "ch_mult": 2}, "'ch_mult' must be a list"),
        (lambda c: {**c, "ch_mult": [1, "2"]}, "'ch_mult' must be an integer"),
        (lambda c: {**c, "dropout": "0"}, "'dropout' must be a number"),
        (lambda c: {**c, "input_range": [0, 1, 2]}, "'input_range' must have 2 entries"),
        (lambda c: {**c, "quantizer": None}, "'quantizer' must be a string"),
        (lambda c: {k: v for k, v in c.items() if k != "family"}, "'family' must be one of"),
        (lambda c: {**c, "family": "vqgan2"}, "'family' must be one of"),
        (lambda c: {**c, "family": ["vqgan"]}, "'family' must be one of"),
        (lambda c: {**c, "format_version": 2}, "format_version 2 is not supported"),
        (lambda c: {**c, "format_version": True}, "format_version True is not supported"),
        (lambda c: {**c, "ch": 33}, "divisible by 32"),
        (lambda c: {**c, "n_embed": 0}, "n_embed must be >= 1"),
        (lambda c: {**c, "dropout": 1.5}, "dropout"),
        (lambda c: {**c, "quantizer": "fsq"}, "quantizer must be"),
        (lambda c: {**c, "codebook_norm": "l1"}, "codebook_norm"),
        (lambda c: {**c, "quantizer": "gumbel", "codebook_norm": "l2"}, "only defined for quantizer='vq'"),
        (lambda c: {**c, "input_range": [1, 1]}, "input_range"),
        (lambda c: {**c, "resolution": 30}, "resolution 30 must be a multiple of the downsampling factor 4"),
        (lambda c: [c], "JSON object"),
    ],
)
def test_bad_config_json(tiny_configs, tmp_path, edit, msg):
    d = tmp_path  # the config is read (and refused) before the weights
    (d / "model.safetensors").write_bytes(b"")
    cfg = config_to_dict(config_from_dict(tiny_configs["vqgan"]))
    (d / "config.json").write_text(json.dumps(edit(cfg)))
    with pytest.raises(ConfigError, match=msg) as e:
        Tokenizer.from_pretrained(d)
    assert "config.json" in str(e.value)
    with pytest.raises(ConfigError, match=msg):
        config_from_dict(edit(cfg))


def test_config_json_not_json(tiny_tokenizer, tmp_path):
    d, _ = _saved(tiny_tokenizer, tmp_path)
    (d / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Tokenizer.from_pretrained(d)


def test_config_round_trip_and_hash(tiny_configs):
    hashes = set()
    for name, c in tiny_configs.items():
        cfg = config_from_dict(c)
        assert config_from_dict(config_to_dict(cfg)) == cfg
        assert config_to_dict(cfg)["family"] == c["family"]
        h = config_hash(cfg)
        assert h == config_hash(config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))))
        hashes.add(h)
    assert len(hashes) == len(tiny_configs)  # every variant has its own vocabulary id
    with pytest.raises(ConfigError, match="unknown vqvae config key"):
        config_from_dict({"family": "vqvae", "ch": 32})  # a vqgan key on a vqvae


def test_from_config_validates_dataclasses():
    with pytest.raises(ConfigError, match="divisible by 32"):
        Tokenizer.from_config(VQGANConfig(ch=33))


# ----------------------------------------------------------------------------------- decode
def test_decode_accepts_what_encode_returned(tiny_name, tiny_tokenizer, make_image):
    tok = tiny_tokenizer(tiny_name)
    one = tok.encode(make_image(32, 48), size=None)
    batch = tok.encode([make_image(32, 48, seed=i) for i in range(2)], size=None)
    ref = tok.decode(one, output="pt")
    assert ref.shape == (3, 32, 48) and ref.dtype == torch.float32
    assert 0 <= float(ref.min()) and float(ref.max()) <= 1
    forms = [
        lambda t: t,
        lambda t: t.numpy(),  # numpy int64
        lambda t: t.numpy().astype(np.int32),
        lambda t: t.numpy().astype(np.uint8),
        lambda t: t.to(torch.int32),
    ]
    for form in forms:
        x = tuple(form(t) for t in one) if isinstance(one, tuple) else form(one)
        assert torch.equal(tok.decode(x, output="pt"), ref)
    assert torch.equal(tok.decode(list(levels(one)), output="pt"), ref)  # a list works as the tuple
    out = tok.decode(batch, output="pt")
    assert out.shape == (2, 3, 32, 48)
    first = tuple(t[0] for t in levels(batch))
    torch.testing.assert_close(out[0], tok.decode(first if len(first) > 1 else first[0], output="pt"), atol=1e-5, rtol=0)


def test_decode_output_types(tiny_tokenizer, make_image):
    tok = tiny_tokenizer("vqvae")
    ids = tok.encode(make_image(32, 48), size=None)
    pt = tok.decode(ids, output="pt")
    arr = tok.decode(ids, output="np")
    img = tok.decode(ids)  # "pil" is the default
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (48, 32)
    assert arr.dtype == np.uint8 and arr.shape == (32, 48, 3)
    np.testing.assert_array_equal(arr, np.asarray(img))
    np.testing.assert_array_equal(arr, (pt.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    batch = torch.stack([ids, ids])
    imgs = tok.decode(batch, output="pil")
    assert isinstance(imgs, list) and len(imgs) == 2 and all(isinstance(i, Image.Image) for i in imgs)
    assert tok.decode(batch, output="np").shape == (2, 32, 48, 3)
    assert tok.decode(batch, output="pt").shape == (2, 3, 32, 48)
    with pytest.raises(InputError, match="output must be 'pil', 'np' or 'pt'"):
        tok.decode(ids, output="tensor")


@pytest.mark.parametrize(
    "bad, msg",
    [
        (torch.full((8, 8), 64), r"\[0, 64\).*codebook of size 64.*max 64"),
        (torch.full((8, 8), -1), r"\[0, 64\).*min -1"),
        (np.full((2, 8, 8), 1000, np.int64), "codebook of size 64"),
        (np.full((8, 8), 2**40, np.uint64), "codebook of size 64"),
        (torch.zeros(8, 8), "integer tensor, got torch.float32"),
        (torch.zeros(8, 8, dtype=torch.bool), "integer tensor, got torch.bool"),
        (np.zeros((8, 8), np.float32), "integers, got numpy float32"),
        (torch.zeros(64, dtype=torch.long), r"\[h, w\] or \[B, h, w\], got \(64,\)"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.long), r"\[h, w\] or \[B, h, w\], got \(1, 1, 8, 8\)"),
        (torch.zeros(0, 8, dtype=torch.long), "empty"),
        ([[1, 2], [3, 4]], "torch tensor or numpy array, got list"),
        ("tokens", "torch tensor or numpy array"),
    ],
)
def test_decode_rejects_bad_tokens(tiny_tokenizer, bad, msg):
    tok = tiny_tokenizer("vqvae", spread=False)
    with pytest.raises(InputError, match=msg):
        tok.decode(bad)
    with pytest.raises(InputError, match=msg):
        tok.flatten(bad)


def test_decode_rejects_bad_vqvae2_levels(tiny_tokenizer):
    tok = tiny_tokenizer("vqvae2", spread=False)
    t, b = torch.zeros(4, 4, dtype=torch.long), torch.zeros(8, 8, dtype=torch.long)
    tok.decode((t, b))  # fine
    cases = [
        (t, r"tuple of 2 token grids \(top, bottom\), got Tensor"),
        ((t,), "tuple of 2 token grids"),
        ((t, b, b), "tuple of 2 token grids"),
        ((t, torch.zeros(4, 4, dtype=torch.long)), r"do not fit together: \(1, 4, 4\) then \(1, 4, 4\).*2x"),
        ((t, torch.zeros(8, 6, dtype=torch.long)), "do not fit together"),
        ((t[None], b[None].expand(2, 8, 8)), r"do not fit together: \(1, 4, 4\) then \(2, 8, 8\)"),
        ((t, b[None]), "all token levels must be single grids or all batches"),
        ((t, b + 64), "codebook of size 64"),
        ((t.float(), b), "integer"),
    ]
    for bad, msg in cases:
        with pytest.raises(InputError, match=msg):
            tok.decode(bad)


# ------------------------------------------------------------------------- flatten / unflatten
def test_flatten_unflatten_round_trip(tiny_name, tiny_tokenizer, make_image):
    tok = tiny_tokenizer(tiny_name)
    one = tok.encode(make_image(40, 40))
    seq = tok.flatten(one)
    assert seq.dtype == torch.int64 and seq.ndim == 1
    assert seq.numel() == sum(h * w for h, w in tok.grid_shapes())
    assert 0 <= int(seq.min()) and int(seq.max()) < tok.vocab_size
    assert same(tok.unflatten(seq), one)
    assert same(tok.unflatten(seq.tolist()), one)  # a plain list from an LLM
    assert same(tok.unflatten(seq.numpy()), one)
    batch = tok.encode([make_image(32, 48, seed=i) for i in range(3)], size=None)  # non-square
    seqs = tok.flatten(batch)
    assert seqs.shape[0] == 3
    grid = tuple(levels(batch)[0].shape[1:])
    assert same(tok.unflatten(seqs, grid=grid), batch)
    assert torch.equal(seqs[1], tok.flatten(tuple(t[1] for t in levels(batch)) if len(levels(batch)) > 1 else batch[1]))


def test_vqvae2_flatten_offsets_bottom_ids(tiny_tokenizer, make_image):
    tok = tiny_tokenizer("vqvae2")
    top, bottom = tok.encode(make_image())
    seq = tok.flatten((top, bottom))
    assert tok.vocab_size == 128
    assert torch.equal(seq[:16], top.flatten())  # coarse first, raster order
    assert torch.equal(seq[16:], bottom.flatten() + 64)  # offset by the top codebook size
    assert int(seq[16:].min()) >= 64


def test_unflatten_errors(tiny_tokenizer):
    tok = tiny_tokenizer("vqvae2", spread=False)
    ok = torch.cat([torch.zeros(16), torch.full((64,), 64)]).long()
    tok.unflatten(ok)
    with pytest.raises(InputError, match=r"sequence length 79 does not match grid \[\(4, 4\), \(8, 8\)\] \(80 ids\)"):
        tok.unflatten(ok[:-1])
    with pytest.raises(InputError, match=r"\[64, 128\)"):
        tok.unflatten(torch.zeros(80, dtype=torch.long))  # bottom ids without their offset
    with pytest.raises(InputError, match=r"\[0, 64\)"):
        tok.unflatten(torch.full((80,), 64))
    with pytest.raises(InputError, match="integer sequence"):
        tok.unflatten(ok.float())
    with pytest.raises(InputError, match="integer sequence"):
        tok.unflatten(ok.view(1, 1, 80))


# ----------------------------------------------------------------------------- other checks
def test_encode_pixels_validation(tiny_tokenizer):
    tok = tiny_tokenizer("vqvae", spread=False)
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        tok.encode_pixels(torch.rand(3, 32, 32))
    with pytest.raises(InputError, match="NaN"):
        tok.encode_pixels(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(InputError, match="multiples of 4"):
        tok.encode_pixels(torch.rand(1, 3, 30, 32))


def test_to_rejects_integer_dtype_and_reports_dtype(tiny_tokenizer):
    tok = tiny_tokenizer("vqvae", spread=False)
    with pytest.raises(InputError, match="floating-point"):
        tok.to(dtype=torch.int8)
    assert tok.to(dtype=torch.float64).dtype == torch.float64
    assert tok.model.quantize.embedding.weight.dtype == torch.float32
    assert "vqvae" in repr(tok) and "float64" in repr(tok)


def test_all_errors_share_the_base_class():
    for cls in (ConfigError, InputError, WeightsError, UnknownModelError):
        assert issubclass(cls, ImagetokError)


# ---------------------------------------------------------------------------- atomic saving
def test_interrupted_save_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    from imagetok import serialization

    old = Tokenizer.from_config(TINY, seed=0)
    folder = old.save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    new = Tokenizer.from_config(dict(TINY, resolution=64), seed=1)  # same shapes, other config and weights

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(serialization.json, "dumps", crash)  # dies after the weights were written
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no new weights beside the old config
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind
    new.save_pretrained(folder)
    assert Tokenizer.from_pretrained(folder).config.resolution == 64


def test_weights_and_config_from_different_saves_do_not_load(tmp_path):
    a = Tokenizer.from_config(TINY, seed=0).save_pretrained(tmp_path / "a")
    b = Tokenizer.from_config(dict(TINY, resolution=64), seed=1).save_pretrained(tmp_path / "b")
    (a / "config.json").write_bytes((b / "config.json").read_bytes())  # shapes match: only the hash tells
    with pytest.raises(WeightsError, match="saved with another config"):
        Tokenizer.from_pretrained(a)

"""Converters for IBQ, Open-MAGVIT2 (LFQ) and Cosmos DI (FSQ) against outputs of the original code.

Data: ``tests/data/modern`` (derived from the golden sets by ``make_data.py`` there; see its docstring).
Tokens must equal the originals' exactly; decoded images must agree within 1e-4.
"""

from __future__ import annotations

import importlib.util
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imagetok import Tokenizer
from imagetok.cli import main
from imagetok.convert import convert as _convert, load_original
from imagetok.convert._jit import read_torchscript_tensors
from imagetok.errors import ConversionError
from imagetok.models.quantizer import VectorQuantizer

DATA = Path(__file__).parent / "data" / "modern"
GROUPS = ("square", "nonsquare")
TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def convert(*args, **kwargs) -> Tokenizer:  # convert() returns a Conversion; these tests check the tokenizer it makes
    return Tokenizer.from_conversion(_convert(*args, **kwargs))


def _io(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(DATA / name / "io.safetensors"))


# ------------------------------------------------------------------------------------------ IBQ
@pytest.fixture(scope="module")
def ibq():
    return convert(DATA / "ibq/model.ckpt", from_format="ibq", config=DATA / "ibq/reference_config.yaml")


def test_ibq_tokens_and_images_match_the_original(ibq):
    assert ibq.config.quantizer == "ibq" and ibq.config.n_embed == 1024 and ibq.config.attn_resolutions == (8,)
    io = _io("ibq")
    with torch.no_grad():
        for g in GROUPS:
            x = io[f"{g}/x"]
            h = ibq.model.encode_latents(x)
            assert (h - io[f"raw_weights/{g}/h"]).abs().max() < TOL
            tokens = ibq.model.encode_indices(x)
            assert torch.equal(tokens.flatten(), io[f"raw_weights/{g}/indices"]), g
            assert (ibq.model.decode_indices(tokens) - io[f"raw_weights/{g}/decoded"]).abs().max() < TOL
            # the nearest code (VQ) would be a different token almost everywhere
            vq = VectorQuantizer(1024, 16)
            vq.embedding.weight.data.copy_(ibq.model.quantize.embedding.weight)
            assert (vq.codes_to_indices(h) != tokens).float().mean() > 0.9


def test_ibq_front_door_is_batch_invariant(ibq):
    x = (_io("ibq")["square/x"] + 1) / 2
    both = ibq.encode_pixels(x)
    singles = torch.cat([ibq.encode_pixels(x[i : i + 1]) for i in range(2)])
    assert both.dtype == torch.int64 and torch.equal(both, singles)
    assert torch.equal(both.flatten(), _io("ibq")["raw_weights/square/indices"])


def test_ibq_accounting_names_every_dropped_tensor():
    conv = load_original(DATA / "ibq/model.ckpt", from_format="ibq", config=DATA / "ibq/reference_config.yaml")
    sd = torch.load(DATA / "ibq/model.ckpt", weights_only=True)["state_dict"]
    dropped = [k for v in conv.ignored.values() for k in v]
    assert sorted(dropped + list(conv.state_dict)) == sorted(sd)
    assert all(k.startswith("loss.") for k in dropped)
    assert any("argmax of z . E" in n for n in conv.notes)


# ------------------------------------------------------------------------------ Open-MAGVIT2 LFQ
@pytest.fixture(scope="module")
def magvit():
    return convert(DATA / "open_magvit2/model.ckpt", from_format="open-magvit2", config=DATA / "open_magvit2/reference_config.yaml")


def test_open_magvit2_tokens_and_images_match_the_original(magvit):
    c = magvit.config
    assert (c.family, c.ch, c.ch_mult, c.embed_dim, c.n_embed, c.resolution) == ("magvit2", 32, (2, 1, 1), 10, 1024, 64)
    io = _io("open_magvit2")
    with torch.no_grad():
        for g in GROUPS:
            x = io[f"{g}/x"]
            h = magvit.model.encode_latents(x)
            assert (h - io[f"{g}/h"]).abs().max() < TOL
            tokens = magvit.model.encode_indices(x)
            assert torch.equal(tokens.flatten(), io[f"{g}/indices"]), g
            # channel k is bit k, channel 0 the least significant bit; exactly 0 gives bit 0
            bits = (io[f"{g}/h"] > 0).long()
            assert torch.equal(tokens, (bits * (2 ** torch.arange(10)).view(1, -1, 1, 1)).sum(1))
            assert (magvit.model.decode_indices(tokens) - io[f"{g}/decoded"]).abs().max() < TOL


def test_open_magvit2_token_factorisation_matches_the_original():
    tok = convert(
        DATA / "open_magvit2/model.ckpt", from_format="open-magvit2",
        config=DATA / "open_magvit2/reference_config_token_factorization.yaml",
    )  # fmt: skip
    assert tok.config.factorized_bits == (6, 4) and tok.codebook_sizes == (64, 16)
    io = _io("open_magvit2")
    for g in GROUPS:
        x = (io[f"{g}/x"] + 1) / 2
        pre, post = tok.encode_pixels(x)
        assert torch.equal(pre.flatten(), io[f"{g}/indices_pre"]) and torch.equal(post.flatten(), io[f"{g}/indices_post"])
        assert torch.equal(pre + (post << 6), io[f"{g}/indices"].view(pre.shape))
        y = tok.decode_pixels((pre, post)) * 2 - 1
        assert (y - io[f"{g}/decoded"].clamp(-1, 1)).abs().max() < TOL
    seq = tok.flatten((pre[0], post[0]))
    assert seq.shape == (2 * pre[0].numel(),) and int(seq.max()) < 64 + 16


def test_open_magvit2_weights_choice_and_accounting():
    src = DATA / "open_magvit2/model.ckpt"
    plain = load_original(src, from_format="open-magvit2")  # no config: live weights, resolution assumed
    assert any("EMA weights" in k for k in plain.ignored) and any(n.startswith("assumed resolution") for n in plain.assumed)
    assert plain.state_dict["encoder.conv_in.weight"].dtype == torch.float16  # the live copy (stored as fp16 here)
    ema = load_original(src, from_format="open-magvit2", use_ema=True)
    assert ema.state_dict["encoder.conv_in.weight"].dtype == torch.float32
    sd = torch.load(src, weights_only=True)["state_dict"]
    for conv in (plain, ema):
        dropped = [k for v in conv.ignored.values() for k in v]
        assert len(dropped) + len(conv.state_dict) == len(sd) and len(set(dropped)) == len(dropped)


def test_open_magvit2_errors_name_the_problem(tmp_path):
    sd = torch.load(DATA / "open_magvit2/model.ckpt", weights_only=True)["state_dict"]
    stray = tmp_path / "stray.ckpt"
    torch.save({"state_dict": {**sd, "decoder.extra.weight": torch.zeros(2)}}, stray)
    with pytest.raises(ConversionError, match="decoder.extra.weight"):
        convert(stray, from_format="open-magvit2")
    cfg = {"model": {"init_args": {"ddconfig": {"ch": 64, "ch_mult": [2, 1, 1], "z_channels": 10}}}}
    with pytest.raises(ConversionError, match="ch=64 but the checkpoint has ch=32"):
        convert(DATA / "open_magvit2/model.ckpt", from_format="open-magvit2", config=cfg)
    with pytest.raises(ConversionError, match="not a open-magvit2 checkpoint.*try from_format='taming'"):
        convert(DATA / "ibq/model.ckpt", from_format="open-magvit2")


def test_cli_converts_open_magvit2(tmp_path, capsys):
    out = tmp_path / "m"
    rc = main(["convert", str(DATA / "open_magvit2/model.ckpt"), "--from", "open-magvit2",
               "--config", str(DATA / "open_magvit2/reference_config.yaml"), "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    tok = Tokenizer.from_pretrained(out)
    io = _io("open_magvit2")
    assert torch.equal(tok.encode_pixels((io["nonsquare/x"] + 1) / 2).flatten(), io["nonsquare/indices"])
    assert "model_ema" in (out / "README.md").read_text()


# -------------------------------------------------------------------------------------- Cosmos
COSMOS_CFG = DATA / "cosmos/reference_config.json"


@pytest.fixture(scope="module")
def cosmos_jit(tmp_path_factory):
    """encoder.jit / decoder.jit traced from the golden weights and buffers (see make_cosmos_jit.py)."""
    spec = importlib.util.spec_from_file_location("make_cosmos_jit", DATA / "make_cosmos_jit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("cosmos_jit")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod.main(DATA / "cosmos", out)
    return out


def _check_cosmos(tok: Tokenizer) -> None:
    io = _io("cosmos")
    with torch.no_grad():
        for g in GROUPS:
            x = io[f"{g}/x"]
            assert (tok.model.encode_latents(x) - io[f"{g}/h"]).abs().max() < TOL
            tokens = tok.model.encode_indices(x)
            assert tokens.dtype == torch.int64 and torch.equal(tokens, io[f"{g}/indices"].long()), g
            assert (tok.model.decode_indices(tokens) - io[f"{g}/decoded"]).abs().max() < TOL


def test_cosmos_state_dict_matches_the_original():
    tok = convert(DATA / "cosmos/autoencoder_state_dict.pt", from_format="cosmos", config=COSMOS_CFG)
    c = tok.config
    assert (c.family, c.levels, c.patch_size, c.spatial_compression, tok.codebook_sizes) == ("cosmos", (8, 5, 5, 5), 4, 8, (1000,))
    _check_cosmos(tok)
    io = _io("cosmos")
    fsq = tok.model.quantizer
    assert torch.equal(fsq.all_codes(), io["fsq_all_codes"])  # every code of the 8x5x5x5 codebook
    synth = fsq.codes_to_indices(io["synthetic/h"])  # latents reaching every digit of every level
    assert torch.equal(synth, io["synthetic/indices"].long())
    assert (tok.model.decode_indices(synth) - io["synthetic/decoded"]).abs().max() < TOL


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_cosmos_jit_files_are_read_without_torchscript(cosmos_jit):
    listing: dict[str, list[str]] = {}
    for line in (DATA / "cosmos/jit_state_dict_keys.txt").read_text().splitlines():
        if not line.startswith("#"):
            part, _, key, *_ = line.split("\t")
            listing.setdefault(part, []).append(key)
    for name in ("encoder.jit", "decoder.jit"):
        tensors = read_torchscript_tensors(cosmos_jit / name)
        assert list(tensors) == listing[name]  # the key set of a real Cosmos archive
        reference = torch.jit.load(str(cosmos_jit / name)).state_dict()  # our own file: safe to load here
        assert all(torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype for k, v in reference.items())
    for src in ("encoder.jit", "decoder.jit"):
        conv = load_original(cosmos_jit / src, from_format="cosmos", config=COSMOS_CFG)
        reasons = " ".join(conv.ignored)
        assert "implicit_codebook" in reasons and "bfloat16" in reasons
        assert len(conv.state_dict) + sum(map(len, conv.ignored.values())) == sum(map(len, listing.values()))
    _check_cosmos(convert(cosmos_jit / "encoder.jit", from_format="cosmos", config=COSMOS_CFG))


def test_cosmos_autoencoder_jit_alone(cosmos_jit):
    conv = load_original(cosmos_jit / "autoencoder.jit", from_format="cosmos", config=COSMOS_CFG)
    assert "quantizer.implicit_codebook" in [k for v in conv.ignored.values() for k in v]
    _check_cosmos(convert(cosmos_jit / "autoencoder.jit", from_format="cosmos", config=COSMOS_CFG))


def test_cosmos_jit_without_config_reads_levels_from_the_archive(cosmos_jit):
    conv = load_original(cosmos_jit / "decoder.jit", from_format="cosmos")
    assert conv.config.levels == (8, 5, 5, 5) and conv.config.patch_method == "haar"
    assert any("resolution" in n for n in conv.assumed)
    _check_cosmos(convert(cosmos_jit / "decoder.jit", from_format="cosmos"))


def test_cosmos_errors(cosmos_jit, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "encoder.jit").write_bytes((cosmos_jit / "encoder.jit").read_bytes())
    with pytest.raises(ConversionError, match="decoder.jit must be in the same folder"):
        convert(lone / "encoder.jit", from_format="cosmos")
    with pytest.raises(ConversionError, match=r"levels=\[8, 8, 8, 5\] but the checkpoint has levels=\[8, 5, 5, 5\]"):
        convert(cosmos_jit / "encoder.jit", from_format="cosmos", config={"levels": [8, 8, 8, 5]})
    with pytest.raises(ConversionError, match="one set of weights"):
        convert(DATA / "cosmos/autoencoder_state_dict.pt", from_format="cosmos", config=COSMOS_CFG, use_ema=True)


def test_jit_reader_refuses_code_and_never_runs_it(cosmos_jit, tmp_path):
    """A .jit whose data.pkl calls os.system is refused by name; the command never runs."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil" / "encoder.jit"
    evil.parent.mkdir()

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with zipfile.ZipFile(cosmos_jit / "encoder.jit") as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(Boom(), protocol=2)
            dst.writestr(item, data)
    (evil.parent / "decoder.jit").write_bytes((cosmos_jit / "decoder.jit").read_bytes())
    with pytest.raises(ConversionError, match=r"refusing global (posix|os)\.system"):
        convert(evil, from_format="cosmos")
    assert not marker.exists()
    junk = tmp_path / "junk.jit"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConversionError, match="not a TorchScript"):
        read_torchscript_tensors(junk)


# ----------------------------------------------------------------------------- Show-o MAGVIT-v2
def test_showo_magvitv2_matches_the_original():
    """Tiny Show-o MAGVIT-v2 (per-level blocks, own encoder/decoder multipliers, attention, 6 MSB-first bits)."""
    src = DATA / "showo/pytorch_model.bin"
    tok = convert(src, from_format="showo", config={"resolution": 32, "attn_resolutions": [16]})
    c = tok.config
    assert (c.encoder_num_res_blocks, c.decoder_num_res_blocks, c.encoder_ch_mult, c.decoder_ch_mult) == ((2, 1), (1, 2), (1, 2), (1, 1))
    io = _io("showo")
    with torch.no_grad():
        for g in GROUPS:
            x = io[f"{g}/x"]
            tokens = tok.model.encode_indices(x)
            assert torch.equal(tokens.flatten(1), io[f"{g}/indices"]), g
            assert (tok.model.decode_indices(tokens) - io[f"{g}/decoded"]).abs().max() < TOL
            # channel 0 is the MOST significant bit here (Open-MAGVIT2: the least)
            bits = (tok.model.encode_latents(x) > 0).long()
            assert torch.equal(tokens, (bits * (2 ** torch.arange(5, -1, -1)).view(1, -1, 1, 1)).sum(1))
    conv = load_original(src, from_format="showo")  # no config: same attention placement at 256 px
    assert conv.config.attn_resolutions == (128,) and list(conv.ignored) == [
        "LFQ code tables (quantize.embedding, quantize.power_vals): checked, recomputed from z_channels"
    ]

def test_showo_refuses_another_bit_order(tmp_path):
    sd = torch.load(DATA / "showo/pytorch_model.bin", weights_only=True)
    sd["quantize.power_vals"] = sd["quantize.power_vals"].flip(0)  # an LSB-first table: not this model
    torch.save(sd, tmp_path / "flipped.bin")
    with pytest.raises(ConversionError, match="MSB-first"):
        convert(tmp_path / "flipped.bin", from_format="showo")


@pytest.mark.parametrize(
    "src, fmt, cfg, ema",
    [
        ("ibq/model.ckpt", "ibq", "ibq/reference_config.yaml", False),
        ("open_magvit2/model.ckpt", "open-magvit2", "open_magvit2/reference_config_token_factorization.yaml", True),
        ("cosmos/autoencoder_state_dict.pt", "cosmos", "cosmos/reference_config.json", False),
    ],
)
def test_reconverting_with_the_imagetok_config_gives_the_same_model(src, fmt, cfg, ema, tmp_path):
    """The hub converts manifest entries with their imagetok config (and use_ema): same result as the original config."""
    from imagetok.config import config_to_dict

    tok = convert(DATA / src, from_format=fmt, config=DATA / cfg)
    again = convert(DATA / src, from_format=fmt, config=config_to_dict(tok.config), use_ema=ema)
    assert again.config == tok.config
    a, b = tok.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = Tokenizer.from_pretrained(tok.save_pretrained(tmp_path / "m"))
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    t1, t2 = tok.encode_pixels(x), saved.encode_pixels(x)
    assert all(torch.equal(p, q) for p, q in zip(t1 if isinstance(t1, tuple) else (t1,), t2 if isinstance(t2, tuple) else (t2,)))

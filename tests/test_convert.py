"""Converters for original checkpoint formats (imagetok.convert).

Proof of correctness:
- golden cases (tests/data/golden, copied from the shared golden set): small random models saved
  exactly as taming / diffusers / LlamaGen / rosinality save them, with the outputs the original code
  computed. The converted model must give identical token ids, encoder latents ``h`` within 1e-4 and
  decoded images within 1e-4 (float32 CPU reproduces them to ~1e-5; each NOTE.md gives the smallest
  best/second-best code margin, ~2e-4 in squared distance, far above the ~1e-6 latent error seen).
- round trips on other architectures: imagetok models with different ch_mult / attention / mid
  attention / res blocks, written in each original layout by hand-written inverse maps (independent of
  the converter's code), converted back, compared output for output; and, when diffusers is installed,
  a real random diffusers VQModel with a non-golden config compared with diffusers' own outputs.
- strict accounting, safe loading and bad input: clear ConversionErrors, nothing half-written.
"""

from __future__ import annotations

import argparse
import fractions
import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import smooth_image, spread_codebooks
from safetensors.torch import load_file, save_file

from imagetok import Tokenizer
from imagetok.cli import main
from imagetok.config import config_to_dict
from imagetok.convert import SAFE_GLOBALS, load_original, read_checkpoint
from imagetok.convert import convert as _convert


def convert(*args, **kwargs) -> Tokenizer:  # convert() returns a Conversion; these tests check the tokenizer it makes
    return Tokenizer.from_conversion(_convert(*args, **kwargs))
from imagetok.errors import ConversionError

GOLDEN = Path(__file__).parent / "data" / "golden"
ATOL = 1e-4  # latents and decoded images vs the original implementation


def golden_io(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / case / "io.safetensors"))


def assert_matches_golden(tok: Tokenizer, case: str) -> None:
    io = golden_io(case)
    m = tok.model
    with torch.no_grad():
        if "indices_top" in io:
            top, bottom = m.encode_indices(io["x"])
            assert torch.equal(top, io["indices_top"]) and torch.equal(bottom, io["indices_bottom"])
            dec = m.decode_indices((io["indices_top"], io["indices_bottom"]))
        else:
            torch.testing.assert_close(m.encode_latents(io["x"]), io["h"], atol=ATOL, rtol=0)
            assert torch.equal(m.encode_indices(io["x"]), io["indices"])
            dec = m.decode_indices(io["indices"])
    torch.testing.assert_close(dec, io["decoded"], atol=ATOL, rtol=0)


def pixels(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth test images as a float32 [n, 3, size, size] batch in [-1, 1]."""
    arr = torch.stack([torch.from_numpy(smooth_image(size, size, seed=seed + i)) for i in range(n)])
    return arr.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def outputs(model: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        ids = model.encode_indices(x)
        return ids, model.decode_indices(ids)


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    ids_a, dec_a = outputs(a, x)
    ids_b, dec_b = outputs(b, x)
    for ta, tb in zip(ids_a if isinstance(ids_a, tuple) else (ids_a,), ids_b if isinstance(ids_b, tuple) else (ids_b,)):
        assert torch.equal(ta, tb)
        assert len(ta.unique()) > 4  # tokens are spread, so equality means something
    torch.testing.assert_close(dec_a, dec_b, atol=1e-6, rtol=0)


def save_golden_variant(tmp_path: Path, sd: dict, name: str = "model.ckpt", **extra) -> Path:
    p = tmp_path / name
    torch.save({"state_dict": sd, "global_step": 1, **extra}, p)
    return p


def taming_sd() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN / "taming_vqgan" / "model.ckpt", weights_only=True)["state_dict"]


# ------------------------------------------------------------------------------------ golden
GOLDEN_CASES = [
    ("taming_vqgan", "taming", "model.ckpt", "reference_config.json"),
    ("taming_vqgan", "taming", "model.ckpt", None),
    ("taming_gumbel", "taming", "model.ckpt", "reference_config.json"),
    ("taming_gumbel", "taming", "model.ckpt", None),
    ("diffusers_vqmodel", "diffusers", ".", None),
    ("diffusers_vqmodel", "diffusers", "diffusion_pytorch_model.safetensors", None),
    ("llamagen_vq", "llamagen", "model.pt", "reference_config.json"),
    ("llamagen_vq", "llamagen", "model.pt", None),
    ("rosinality_vqvae2", "rosinality", "model.pt", "reference_config.json"),
    ("rosinality_vqvae2", "rosinality", "model.pt", None),
]


@pytest.mark.parametrize("case,fmt,src,cfg", GOLDEN_CASES, ids=[f"{c[0]}-{c[2]}-{'cfg' if c[3] else 'nocfg'}" for c in GOLDEN_CASES])
def test_golden_outputs_reproduced(case, fmt, src, cfg):
    tok = convert(GOLDEN / case / src, from_format=fmt, config=GOLDEN / case / cfg if cfg else None)
    assert_matches_golden(tok, case)


def test_golden_configs_read_and_inferred():
    """With the original config the image size comes from it; without, it is assumed and noted."""
    with_cfg = load_original(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", config=GOLDEN / "taming_vqgan/reference_config.json")
    c = with_cfg.config
    assert (c.ch, c.ch_mult, c.num_res_blocks, c.attn_resolutions, c.resolution, c.n_embed, c.embed_dim) == (
        32, (1, 2, 2), 1, (16,), 64, 64, 16
    )
    assert with_cfg.assumed == []
    assert with_cfg.ignored == {"training loss (loss.*: perceptual network, discriminator)": [
        "loss.discriminator.main.0.weight", "loss.perceptual_loss.lin0.model.1.weight", "loss.logvar"]}
    bare = load_original(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming")
    assert bare.config.resolution == 256 and bare.config.attn_resolutions == (64,)  # same level (2) as 16 @ 64
    assert any("resolution=256" in n for n in bare.assumed)
    gumbel = load_original(GOLDEN / "taming_gumbel/model.ckpt", from_format="taming").config
    assert gumbel.quantizer == "gumbel" and gumbel.z_channels == 32 and gumbel.embed_dim == 16
    diff = load_original(GOLDEN / "diffusers_vqmodel", from_format="diffusers").config
    assert (diff.resolution, diff.mid_attn, diff.embed_dim, diff.z_channels) == (64, True, 16, 32)
    llama = load_original(GOLDEN / "llamagen_vq/model.pt", from_format="llamagen")
    assert llama.config.codebook_norm == "l2" and llama.config.num_res_blocks == 2 and llama.config.attn_resolutions == (64,)
    assert "LlamaGen codebook-usage statistic (quantize.codebook_used)" in llama.ignored
    assert load_original(GOLDEN / "llamagen_vq/model.pt", from_format="llamagen", config=GOLDEN / "llamagen_vq/reference_config.json").config == llama.config
    ros = load_original(GOLDEN / "rosinality_vqvae2/model.pt", from_format="rosinality").config
    assert (ros.family, ros.channel, ros.n_res_block, ros.n_res_channel, ros.embed_dim, ros.n_embed) == ("vqvae2", 32, 1, 8, 16, 32)


@pytest.mark.parametrize("case,fmt,src", [("taming_gumbel", "taming", "model.ckpt"), ("llamagen_vq", "llamagen", "model.pt"),
                                          ("diffusers_vqmodel", "diffusers", "."), ("rosinality_vqvae2", "rosinality", "model.pt")])  # fmt: skip
def test_imagetok_config_accepted_and_checked(case, fmt, src):
    """The hub passes the manifest's imagetok config: it fixes resolution/input range and must match the tensors."""
    inferred = load_original(GOLDEN / case / src, from_format=fmt).config
    wanted = {**config_to_dict(inferred), "resolution": 128, "input_range": [0.0, 1.0]}
    if wanted["family"] == "vqgan":
        wanted["attn_resolutions"] = [a // 2 for a in wanted["attn_resolutions"]]  # same levels at half the size
    conv = load_original(GOLDEN / case / src, from_format=fmt, config=wanted)
    assert config_to_dict(conv.config) == wanted and conv.assumed == []
    with pytest.raises(ConversionError, match=r"n_embed=999 but the checkpoint has n_embed="):
        load_original(GOLDEN / case / src, from_format=fmt, config={**wanted, "n_embed": 999})


def test_out_folder_reloads_and_names_source(tmp_path):
    out = tmp_path / "converted"
    tok = convert(GOLDEN / "llamagen_vq/model.pt", from_format="llamagen", out=out)
    assert tok.name == str(out.resolve())
    again = Tokenizer.from_pretrained(out)
    assert again.config == tok.config
    assert_matches_golden(again, "llamagen_vq")
    card = (out / "README.md").read_text()
    assert "model.pt" in card and "llamagen" in card and "assumed resolution=256" in card


# ------------------------------------------------------------------------------------ taming extras
def test_taming_yaml_and_params_block_configs(tmp_path):
    yaml = pytest.importorskip("yaml")
    ref = json.loads((GOLDEN / "taming_vqgan/reference_config.json").read_text())
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6, **ref}}))
    a = load_original(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", config=tmp_path / "model.yaml").config
    b = load_original(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", config=ref["params"]).config
    c = load_original(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", config=ref["params"]["ddconfig"]).config
    assert a == b == c and a.resolution == 64


def test_taming_ldm_pipeline_prefix(tmp_path):
    sd = {"first_stage_model." + k: v for k, v in taming_sd().items()}
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(4, 4)
    sd["cond_stage_model.embedding.weight"] = torch.zeros(3, 2)
    conv = load_original(save_golden_variant(tmp_path, sd), from_format="taming")
    assert sorted(conv.ignored["other LDM pipeline components (not first_stage_model.*)"]) == [
        "cond_stage_model.embedding.weight", "model.diffusion_model.input_blocks.0.0.weight"]
    tok = convert(tmp_path / "model.ckpt", from_format="taming", config=GOLDEN / "taming_vqgan/reference_config.json")
    assert_matches_golden(tok, "taming_vqgan")


def test_taming_ema_weights(tmp_path):
    live = taming_sd()
    tok = convert(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming")
    names = list(tok.model.state_dict())
    ema = {"model_ema." + n.replace(".", ""): live[n] * 0.5 for n in names}  # LitEma: dots removed
    ema.update({"model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(10),
                "model_ema.lossdiscriminatormain0weight": torch.zeros(8, 3, 4, 4)})  # fmt: skip
    path = save_golden_variant(tmp_path, {**live, **ema})

    plain = convert(path, from_format="taming")
    assert all(torch.equal(plain.model.state_dict()[n], live[n]) for n in names)
    with_ema = convert(path, from_format="taming", use_ema=True)
    assert all(torch.equal(with_ema.model.state_dict()[n], live[n] * 0.5) for n in names)
    conv = load_original(path, from_format="taming", use_ema=True)
    assert len(conv.ignored["live weights (replaced by their model_ema.* copies, use_ema=True)"]) == len(names)

    del ema["model_ema.encoderconv_inweight"]
    path = save_golden_variant(tmp_path, {**live, **ema}, name="partial.ckpt")
    with pytest.raises(ConversionError, match="model_ema.encoderconv_inweight"):
        convert(path, from_format="taming", use_ema=True)
    with pytest.raises(ConversionError, match="no model_ema"):
        convert(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", use_ema=True)


ROUNDTRIP_VQGAN = {
    # attention at two levels, no mid attention, 2 res blocks, non-uniform channels
    "attn2-nomid": dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=2, attn_resolutions=[16, 8], mid_attn=False,
                        z_channels=16, embed_dim=8, n_embed=48, resolution=32),
    # four levels (f8), attention at the top level only, Gumbel quantizer
    "f8-gumbel": dict(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, attn_resolutions=[32], mid_attn=True,
                      z_channels=16, embed_dim=8, n_embed=40, resolution=32, quantizer="gumbel"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ROUNDTRIP_VQGAN))
def test_taming_roundtrip_other_architectures(tmp_path, name):
    cfg = {"family": "vqgan", **ROUNDTRIP_VQGAN[name]}
    src = spread_codebooks(Tokenizer.from_config(cfg, seed=1))
    sd = {**src.model.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(2)}
    path = save_golden_variant(tmp_path, sd)
    dd = {k: cfg[k] for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution")}
    target = "taming.models.vqgan.GumbelVQ" if cfg.get("quantizer") == "gumbel" else "taming.models.vqgan.VQModel"
    yaml_like = {"target": target, "params": {"embed_dim": cfg["embed_dim"], "n_embed": cfg["n_embed"], "ddconfig": dd}}
    tok = convert(path, from_format="taming", config=yaml_like)
    assert tok.config == src.config
    inferred = load_original(path, from_format="taming", config={"resolution": cfg["resolution"]}).config
    assert inferred == src.config  # everything but the image size is read from the tensors
    assert_same_outputs(src.model, tok.model, pixels())


# ------------------------------------------------------------------------------------ diffusers
def to_diffusers(sd: dict[str, torch.Tensor], n: int, legacy: bool = False) -> dict[str, torch.Tensor]:
    """imagetok (taming) names -> diffusers VQModel names; written independently of imagetok.convert."""
    attn = {"norm": "group_norm", "q": "query" if legacy else "to_q", "k": "key" if legacy else "to_k",
            "v": "value" if legacy else "to_v", "proj_out": "proj_attn" if legacy else "to_out.0"}  # fmt: skip
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] in ("encoder", "decoder") and parts[1] in ("down", "up"):
            level = int(parts[2]) if parts[1] == "down" else n - 1 - int(parts[2])
            head = f"{parts[0]}.{'down_blocks' if parts[1] == 'down' else 'up_blocks'}.{level}"
            kind, rest = parts[3], parts[4:]
            if kind == "block":
                k = f"{head}.resnets.{rest[0]}." + ".".join(rest[1:]).replace("nin_shortcut", "conv_shortcut")
            elif kind == "attn":
                k = f"{head}.attentions.{rest[0]}.{attn[rest[1]]}.{rest[2]}"
                v = v[:, :, 0, 0] if v.ndim == 4 else v
            else:  # downsample / upsample
                k = f"{head}.{'downsamplers' if kind == 'downsample' else 'upsamplers'}.0.{'.'.join(rest)}"
        elif parts[0] in ("encoder", "decoder") and parts[1] == "mid":
            if parts[2] == "attn_1":
                k = f"{parts[0]}.mid_block.attentions.0.{attn[parts[3]]}.{parts[4]}"
                v = v[:, :, 0, 0] if v.ndim == 4 else v
            else:
                k = f"{parts[0]}.mid_block.resnets.{int(parts[2][-1]) - 1}." + ".".join(parts[3:]).replace("nin_shortcut", "conv_shortcut")
        elif parts[0] in ("encoder", "decoder") and parts[1] == "norm_out":
            k = f"{parts[0]}.conv_norm_out.{parts[2]}"
        out[k] = v.contiguous()
    return out


def diffusers_config(cfg: dict, **over) -> dict:
    n = len(cfg["ch_mult"])
    attn = [cfg["resolution"] >> i in cfg["attn_resolutions"] for i in range(n)]
    return {
        "_class_name": "VQModel", "_diffusers_version": "0.42.1", "act_fn": "silu", "in_channels": 3, "out_channels": 3,
        "block_out_channels": [cfg["ch"] * m for m in cfg["ch_mult"]], "layers_per_block": cfg["num_res_blocks"],
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)],
        "latent_channels": cfg["z_channels"], "vq_embed_dim": cfg["embed_dim"], "num_vq_embeddings": cfg["n_embed"],
        "norm_num_groups": 32, "norm_type": "group", "sample_size": cfg["resolution"], "scaling_factor": 0.18215,
        "mid_block_add_attention": cfg["mid_attn"], "lookup_from_codebook": True, "force_upcast": False, **over,
    }  # fmt: skip


@pytest.mark.parametrize("legacy", [False, True], ids=["attention-names", "legacy-attention-names"])
def test_diffusers_layout_roundtrip(tmp_path, legacy):
    cfg = {"family": "vqgan", **ROUNDTRIP_VQGAN["attn2-nomid"]}
    src = spread_codebooks(Tokenizer.from_config(cfg, seed=2))
    save_file(to_diffusers(src.model.state_dict(), len(cfg["ch_mult"]), legacy), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(diffusers_config(cfg)))
    tok = convert(tmp_path, from_format="diffusers")
    assert tok.config == src.config
    assert_same_outputs(src.model, tok.model, pixels())


def test_diffusers_pipeline_subfolder_and_vq_embed_dim_null(tmp_path):
    shutil.copytree(GOLDEN / "diffusers_vqmodel", tmp_path / "pipe" / "vqvae")
    conv = load_original(tmp_path / "pipe", from_format="diffusers")
    assert any("vqvae/" in n for n in conv.notes)
    cfg = json.loads((GOLDEN / "diffusers_vqmodel/config.json").read_text())
    sd = load_file(str(GOLDEN / "diffusers_vqmodel/diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConversionError, match=r"embed_dim=32 but the checkpoint has embed_dim=16"):
        load_original(GOLDEN / "diffusers_vqmodel", from_format="diffusers", config={**cfg, "vq_embed_dim": None})
    # vq_embed_dim null means latent_channels: a model whose codes have z_channels dimensions
    z = cfg["latent_channels"]
    sd["quant_conv.weight"], sd["quant_conv.bias"] = torch.randn(z, z, 1, 1), torch.randn(z)
    sd["post_quant_conv.weight"] = torch.randn(z, z, 1, 1)
    sd["quantize.embedding.weight"] = torch.randn(cfg["num_vq_embeddings"], z)
    (tmp_path / "nulldim").mkdir()
    save_file(sd, str(tmp_path / "nulldim/diffusion_pytorch_model.safetensors"))
    (tmp_path / "nulldim/config.json").write_text(json.dumps({**cfg, "vq_embed_dim": None}))
    assert load_original(tmp_path / "nulldim", from_format="diffusers").config.embed_dim == z


def test_diffusers_spatial_norm_config_must_match_the_tensors(tmp_path):
    # norm_type "spatial" (MoVQ) is supported (tests/test_convert_llm.py); claimed without spatial-norm tensors it is refused
    shutil.copytree(GOLDEN / "diffusers_vqmodel", tmp_path / "movq")
    cfg = json.loads((tmp_path / "movq/config.json").read_text())
    (tmp_path / "movq/config.json").write_text(json.dumps({**cfg, "norm_type": "spatial"}))
    with pytest.raises(ConversionError, match="norm_type='spatial'"):
        convert(tmp_path / "movq", from_format="diffusers")


def test_real_diffusers_vqmodel_non_golden_config(tmp_path):
    """A random diffusers VQModel (attention at level 1 only, no mid attention, 2 res blocks) vs imagetok."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.VQModel(
        block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=2,
        latent_channels=16, num_vq_embeddings=64, sample_size=32, mid_block_add_attention=False,
    ).eval()  # fmt: skip
    x = pixels(2, 32)
    with torch.no_grad():  # spread the codebook over real latents so tokens are informative
        h = ref.encode(pixels(4, 32, seed=50)).latents.permute(0, 2, 3, 1).reshape(-1, 16)
        ref.quantize.embedding.weight.copy_(h[torch.randperm(len(h), generator=torch.Generator().manual_seed(0))[:64]])
        h_ref = ref.encode(x).latents
        ids_ref = ref.quantize(h_ref)[2][2].view(2, 8, 8)
        codes = ref.quantize.embedding.weight[ids_ref].permute(0, 3, 1, 2)
        dec_ref = ref.decode(codes, force_not_quantize=True).sample
    ref.save_pretrained(tmp_path / "vq")

    tok = convert(tmp_path / "vq", from_format="diffusers")
    c = tok.config
    assert (c.attn_resolutions, c.mid_attn, c.num_res_blocks, c.embed_dim, c.resolution) == ((16,), False, 2, 16, 32)
    with torch.no_grad():
        h = tok.model.encode_latents(x)
        torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=0)
        ids = tok.model.encode_indices(x)
        dist = torch.cdist(h.permute(0, 2, 3, 1).reshape(-1, 16), ref.quantize.embedding.weight).pow(2)
        top2 = dist.topk(2, largest=False).values
        clear = (top2[:, 1] - top2[:, 0] > 1e-3).view(2, 8, 8)  # positions no float noise can flip
        assert clear.float().mean() > 0.9 and len(ids_ref.unique()) > 8
        assert torch.equal(ids[clear], ids_ref[clear])
        torch.testing.assert_close(tok.model.decode_indices(ids_ref), dec_ref, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------ LlamaGen
def to_llamagen(sd: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """imagetok (taming) names -> LlamaGen VQModel names; written independently of imagetok.convert."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", k)
        k = re.sub(r"^encoder\.down\.(\d+)\.(attn|downsample)\.", r"encoder.conv_blocks.\1.\2.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.conv_blocks.{n - 1 - int(m[1])}.res.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.(attn|upsample)\.", lambda m: f"decoder.conv_blocks.{n - 1 - int(m[1])}.{m[2]}.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid.0.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid.1.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid.2.", k)
        out[k] = v
    out["quantize.codebook_used"] = torch.zeros(65536)
    return out


def test_llamagen_roundtrip_other_architecture(tmp_path):
    """f8 (four levels, channels 32-32-64-64), attention at the last level, one res block, l2 codebook."""
    cfg = dict(family="vqgan", ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, attn_resolutions=[8], mid_attn=True,
               z_channels=16, embed_dim=4, n_embed=32, resolution=64, codebook_norm="l2")  # fmt: skip
    src = spread_codebooks(Tokenizer.from_config(cfg, seed=3))
    sd = to_llamagen(src.model.state_dict(), 4)
    args = argparse.Namespace(vq_model="VQ-8", image_size=64, codebook_l2_norm=True, codebook_size=32)
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "steps": 7, "args": args}, tmp_path / "vq.pt")
    conv = load_original(tmp_path / "vq.pt", from_format="llamagen")
    assert conv.config == src.config and conv.assumed == []  # image size and l2 read from args
    tok = convert(tmp_path / "vq.pt", from_format="llamagen")
    assert_same_outputs(src.model, tok.model, pixels(2, 32))

    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"model": sd, "ema": ema}, tmp_path / "ema.pt")
    with_ema = convert(tmp_path / "ema.pt", from_format="llamagen", use_ema=True)
    w = "encoder.down.3.attn.0.q.weight"
    assert torch.equal(with_ema.model.state_dict()[w], src.model.state_dict()[w] * 0.5)
    torch.save({"state_dict": sd}, tmp_path / "sd.pt")
    torch.save(sd, tmp_path / "bare.pt")
    for p in ("sd.pt", "bare.pt", "ema.pt"):
        assert torch.equal(convert(tmp_path / p, from_format="llamagen").model.state_dict()[w], src.model.state_dict()[w])


def test_llamagen_codebook_norm_from_config():
    plain = load_original(GOLDEN / "llamagen_vq/model.pt", from_format="llamagen", config={"codebook_l2_norm": False})
    assert plain.config.codebook_norm == "none"


# ------------------------------------------------------------------------------------ rosinality
def test_rosinality_roundtrip_other_architecture(tmp_path):
    cfg = dict(family="vqvae2", channel=64, n_res_block=2, n_res_channel=16, embed_dim=8, n_embed=24, resolution=32)
    src = spread_codebooks(Tokenizer.from_config(cfg, seed=4))
    sd = {}
    for k, v in src.model.state_dict().items():
        if m := re.match(r"(quantize_[tb])\.embedding\.weight$", k):
            sd[f"module.{m[1]}.embed"] = v.t().contiguous()  # rosinality: [dim, n_embed] buffers
            sd[f"module.{m[1]}.cluster_size"] = torch.ones(v.shape[0])
            sd[f"module.{m[1]}.embed_avg"] = v.t().clone()
        else:
            sd["module." + k] = v  # saved from DistributedDataParallel
    torch.save(sd, tmp_path / "vqvae.pt")
    tok = convert(tmp_path / "vqvae.pt", from_format="rosinality", config={"kwargs": {"channel": 64}, "resolution": 32})
    assert tok.config == src.config
    assert_same_outputs(src.model, tok.model, pixels(2, 32))
    with pytest.raises(ConversionError, match=r"n_embed=512 but the checkpoint has n_embed=24"):
        load_original(tmp_path / "vqvae.pt", from_format="rosinality", config={"n_embed": 512})


# ------------------------------------------------------------------------------------ safe loading
def test_llamagen_namespace_needs_the_allow_list():
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(GOLDEN / "llamagen_vq/model.pt", weights_only=True)
    assert isinstance(read_checkpoint(GOLDEN / "llamagen_vq/model.pt")["args"], argparse.Namespace)
    assert argparse.Namespace in SAFE_GLOBALS


def test_lightning_callback_key_loads_without_lightning(tmp_path, monkeypatch):
    """Lightning 1.x stores the ModelCheckpoint class as a dict key; it loads with weights_only, no Lightning."""
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    cls = type("ModelCheckpoint", (), {"__module__": mod.__name__})
    mod.ModelCheckpoint = cls
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
        monkeypatch.setitem(sys.modules, name, mod if name == mod.__name__ else types.ModuleType(name))
    save_golden_variant(tmp_path, taming_sd(), callbacks={cls: {"best_model_score": torch.tensor(0.5), "best_model_path": "x"}})
    monkeypatch.undo()  # Lightning is "uninstalled" again
    tok = convert(tmp_path / "model.ckpt", from_format="taming", config=GOLDEN / "taming_vqgan/reference_config.json")
    assert_matches_golden(tok, "taming_vqgan")


def test_unknown_pickle_global_refused_unless_trusted(tmp_path, caplog):
    path = save_golden_variant(tmp_path, taming_sd(), hparams=fractions.Fraction(1, 3))
    with pytest.raises(ConversionError, match=r"refusing to unpickle fractions\.Fraction.*trust_pickle=True"):
        convert(path, from_format="taming")
    with caplog.at_level("WARNING", logger="imagetok.convert"):
        tok = convert(path, from_format="taming", config=GOLDEN / "taming_vqgan/reference_config.json", trust_pickle=True)
    assert "full pickle" in caplog.text and "fractions.Fraction" in caplog.text
    assert_matches_golden(tok, "taming_vqgan")


@pytest.mark.parametrize("case,name,fmt", [("taming_vqgan", "model.ckpt", "taming"), ("diffusers_vqmodel", "diffusion_pytorch_model.safetensors", "diffusers"),
                                           ("llamagen_vq", "model.pt", "llamagen")])  # fmt: skip
def test_truncated_and_garbage_files(tmp_path, case, name, fmt):
    data = (GOLDEN / case / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    if fmt == "diffusers":
        shutil.copy(GOLDEN / case / "config.json", tmp_path / "config.json")
    with pytest.raises(ConversionError, match="truncated"):
        convert(tmp_path / name, from_format=fmt, out=tmp_path / "out")
    (tmp_path / name).write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError, match="truncated"):
        convert(tmp_path / name, from_format=fmt)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "src,fmt,hint",
    [
        ("taming_vqgan/model.ckpt", "llamagen", "try from_format='taming'"),
        ("llamagen_vq/model.pt", "taming", "try from_format='llamagen'"),
        ("rosinality_vqvae2/model.pt", "taming", "try from_format='rosinality'"),
        ("taming_vqgan/model.ckpt", "rosinality", "try from_format='taming'"),
        ("taming_vqgan/model.ckpt", "diffusers", "try from_format='taming'"),
        ("diffusers_vqmodel", "taming", "try from_format='diffusers'"),
        ("llamagen_vq/model.pt", "nonsense", "must be one of"),
    ],
)
def test_wrong_format_is_named(src, fmt, hint):
    with pytest.raises(ConversionError, match=re.escape(hint)):
        convert(GOLDEN / src, from_format=fmt)


def test_config_that_disagrees_with_tensors(tmp_path):
    ref = json.loads((GOLDEN / "taming_vqgan/reference_config.json").read_text())
    bad = json.loads(json.dumps(ref))
    bad["params"]["ddconfig"]["ch_mult"] = [1, 2, 4]
    bad["params"]["n_embed"] = 128
    with pytest.raises(ConversionError) as e:
        convert(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", config=bad, out=tmp_path / "out")
    msg = str(e.value)
    assert "ch_mult=[1, 2, 4] but the checkpoint has ch_mult=[1, 2, 2]" in msg and "encoder.down.2.block.0.conv1.weight is [64, 64, 3, 3]" in msg
    assert "n_embed=128 but the checkpoint has n_embed=64" in msg and "quantize.embedding.weight is [64, 16]" in msg
    assert not (tmp_path / "out").exists()
    noattn = json.loads(json.dumps(ref))
    noattn["params"]["ddconfig"]["attn_resolutions"] = [32]
    with pytest.raises(ConversionError, match=r"attention at levels \[1\], but the checkpoint has attention blocks at levels \[2\]"):
        convert(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", config=noattn)
    gumbel = {**ref, "target": "taming.models.vqgan.GumbelVQ"}
    with pytest.raises(ConversionError, match="quantizer='gumbel' but the checkpoint has quantizer='vq'"):
        convert(GOLDEN / "taming_vqgan/model.ckpt", from_format="taming", config=gumbel)
    dcfg = json.loads((GOLDEN / "diffusers_vqmodel/config.json").read_text())
    with pytest.raises(ConversionError, match=r"ch_mult=\[1, 2, 4\] but the checkpoint has ch_mult=\[1, 2, 2\]"):
        convert(GOLDEN / "diffusers_vqmodel", from_format="diffusers", config={**dcfg, "block_out_channels": [32, 64, 128]})
    with pytest.raises(ConversionError, match=r"n_embed=128 but the checkpoint has n_embed=64 \(quantize.embedding.weight is \[64, 8\]\)"):
        convert(GOLDEN / "llamagen_vq/model.pt", from_format="llamagen", config={"codebook_size": 128})


def test_unmapped_tensors_are_listed(tmp_path):
    sd = {**taming_sd(), "encoder.extra.weight": torch.zeros(2), "decoder.up.0.block.0.surprise": torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"2 tensor\(s\).*'decoder.up.0.block.0.surprise', 'encoder.extra.weight'"):
        convert(save_golden_variant(tmp_path, sd), from_format="taming")
    dsd = load_file(str(GOLDEN / "diffusers_vqmodel/diffusion_pytorch_model.safetensors"))
    dsd["decoder.up_blocks.0.time_emb_proj.weight"] = torch.zeros(2)
    (tmp_path / "d").mkdir()
    save_file(dsd, str(tmp_path / "d/diffusion_pytorch_model.safetensors"))
    shutil.copy(GOLDEN / "diffusers_vqmodel/config.json", tmp_path / "d/config.json")
    with pytest.raises(ConversionError, match="decoder.up_blocks.0.time_emb_proj.weight"):
        convert(tmp_path / "d", from_format="diffusers")
    missing = {k: v for k, v in taming_sd().items() if k != "decoder.conv_out.bias"}
    with pytest.raises(ConversionError, match=r"missing keys \['decoder.conv_out.bias'\]"):
        convert(save_golden_variant(tmp_path, missing, name="missing.ckpt"), from_format="taming")


# ------------------------------------------------------------------------------------ CLI
def test_cli_convert(tmp_path, capsys):
    out = tmp_path / "vq"
    rc = main(["convert", str(GOLDEN / "taming_gumbel/model.ckpt"), "--from", "taming",
               "--config", str(GOLDEN / "taming_gumbel/reference_config.json"), "--out", str(out)])  # fmt: skip
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().err
    assert_matches_golden(Tokenizer.from_pretrained(out), "taming_gumbel")
    rc = main(["convert", str(GOLDEN / "llamagen_vq/model.pt"), "--from", "rosinality", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "try from_format='llamagen'" in err
    assert not (tmp_path / "bad").exists()

"""Converters for the tokenizers inside today's multimodal LLMs, proven against independent references.

Each reference is a *different implementation* with random, perturbed weights (norm affines, BatchNorm
statistics, spatial-norm convs and biases all moved off their default init; codebooks drawn from real
latents so tokens spread over the codebook):

- diffusers ``VQModel(norm_type="spatial")`` (Kandinsky's MoVQ)        -> ``--from diffusers``
- transformers ``JanusVQVAE`` / ``ChameleonVQVAE`` / ``Emu3VQVAE``      -> ``--from transformers``
- DeepSeek's Janus layout (``gen_vision_model.*`` shards, bf16)          -> ``--from janus``
- Chameleon's ``tokenizer/vqgan.ckpt`` + ``vqgan.yaml`` (taming layout)  -> ``--from chameleon``

Same tokens, decoded pixels within 1e-4 (float32), over several tiny configs and non-square images.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_image, spread_codebooks

from imagetok import Tokenizer
from imagetok.errors import ConversionError, NoDecoderError

ATOL = 1e-4


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # references are run (and perturbed in place) without autograd
        yield


def pixels(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth photo-like images, float32 ``[n, 3, h, w]`` in [-1, 1]."""
    arr = torch.stack([torch.from_numpy(smooth_image(h, w, seed=seed + i)) for i in range(n)])
    return arr.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Move every float parameter and buffer off its init: x += scale * std(x) * noise (norms: around 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g)
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(noise * 0.1)
        elif t.ndim == 1:  # norm affines and biases: off 1 / 0
            t.add_(noise * scale)
        else:
            t.add_(noise * scale * float(t.std()))


def spread(embedding: torch.Tensor, latents: torch.Tensor, seed: int) -> None:
    """Codebook rows := latent vectors ``[B, D, ...]`` picked at random (so tokens are informative)."""
    flat = latents.movedim(1, -1).reshape(-1, latents.shape[1])
    pick = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(seed))[: embedding.shape[0]]
    embedding.copy_(flat[pick])


def nearest(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """float64 brute-force nearest code of ``[B, D, h, w]`` latents -> ``[B, h, w]``."""
    flat = latents.permute(0, 2, 3, 1).double()
    return torch.cdist(flat.reshape(-1, flat.shape[-1]), codebook.double()).argmin(1).view(flat.shape[:-1])


# --------------------------------------------------------------------------- MoVQ (diffusers spatial)
MOVQ_CONFIGS = {  # (diffusers VQModel kwargs, image sizes)
    "attn-last": (dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                       up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1), [(16, 24), (32, 16)]),
    "3-level-no-mid-attn": (dict(block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                                 up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, mid_block_add_attention=False),
                            [(16, 32), (24, 24)]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MOVQ_CONFIGS))
def test_movq_matches_diffusers_spatial_vqmodel(tmp_path, name):
    diffusers = pytest.importorskip("diffusers")
    kwargs, sizes = MOVQ_CONFIGS[name]
    torch.manual_seed(1)
    ref = diffusers.VQModel(latent_channels=4, vq_embed_dim=4, num_vq_embeddings=64, norm_type="spatial", sample_size=32, **kwargs).eval()
    perturb(ref, seed=2)
    spread(ref.quantize.embedding.weight, ref.encode(pixels(4, 32, 32, seed=50)).latents, seed=3)
    ref.save_pretrained(tmp_path / "movq")
    tok = Tokenizer.from_pretrained(_convert(tmp_path / "movq", "diffusers", tmp_path / "out"))
    assert tok.config.norm_type == "spatial" and json.loads((tmp_path / "out/config.json").read_text())["norm_type"] == "spatial"
    for h, w in sizes:
        x = pixels(2, h, w, seed=h * w)
        lat = ref.encode(x).latents
        ids_ref = ref.quantize(lat)[2][2].view(2, h // tok.downsample_factors[0], w // tok.downsample_factors[0])
        assert len(ids_ref.unique()) > 4
        ids = tok.model.encode_indices(x)
        assert torch.equal(ids, ids_ref)
        codes = ref.quantize.embedding.weight[ids_ref].permute(0, 3, 1, 2)
        dec_ref = ref.decode(codes, force_not_quantize=True).sample
        torch.testing.assert_close(tok.model.decode_indices(ids_ref), dec_ref, atol=ATOL, rtol=0)


def _convert(src: Path, fmt: str, out: Path, **kw) -> Path:
    from imagetok.convert import convert

    convert(src, from_format=fmt, out=out, **kw)
    return out


# ----------------------------------------------------------------------------------------------- Janus
JANUS_CONFIGS = {  # (transformers JanusVQVAEConfig kwargs, image sizes)
    "f4-attn-last": (dict(base_channels=32, channel_multiplier=[1, 2, 2], num_res_blocks=1, latent_channels=32, embed_dim=8,
                          num_embeddings=64, num_patches=4), [(16, 24), (24, 16)]),
    "f2-two-blocks": (dict(base_channels=32, channel_multiplier=[1, 2], num_res_blocks=2, latent_channels=16, embed_dim=4,
                           num_embeddings=32, num_patches=8), [(16, 16), (8, 24)]),
}  # fmt: skip


def janus_reference(kwargs: dict, seed: int):
    """A random, perturbed transformers JanusVQVAE (weights rounded to bf16, as Janus-Pro ships them)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    ref = transformers.JanusVQVAE(transformers.JanusVQVAEConfig(**kwargs)).eval()
    perturb(ref, seed=seed + 1)
    emb = ref.quantize.embedding.weight
    spread(emb, ref.quant_conv(ref.encoder(pixels(4, 32, 32, seed=50))), seed=seed + 2)
    emb.mul_(torch.rand(emb.shape[0], 1, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.5)  # codes of unequal norms
    for p in ref.parameters():
        p.copy_(p.bfloat16().float())
    return ref


def janus_tokens_and_pixels(ref, x: torch.Tensor):
    """LlamaGen / Janus rule with the reference's own modules: search and decode l2-normalised codes."""
    lat = ref.quant_conv(ref.encoder(x))
    cb = F.normalize(ref.quantize.embedding.weight, dim=1)
    ids = nearest(F.normalize(lat, dim=1), cb)
    dec = ref.decoder(ref.post_quant_conv(cb[ids].permute(0, 3, 1, 2)))
    return ids, dec


@pytest.mark.parametrize("name", sorted(JANUS_CONFIGS))
def test_janus_transformers_folder_follows_llamagens_l2_rule(tmp_path, name):
    kwargs, sizes = JANUS_CONFIGS[name]
    ref = janus_reference(kwargs, seed=len(name))
    ref.save_pretrained(tmp_path / "janus")
    tok = Tokenizer.from_pretrained(_convert(tmp_path / "janus", "transformers", tmp_path / "out"))
    f = tok.downsample_factors[0]
    assert tok.config.codebook_norm == "l2" and tok.config.resolution == kwargs["num_patches"] * f
    differs = 0
    for h, w in sizes:
        x = pixels(2, h, w, seed=h + w)
        ids_ref, dec_ref = janus_tokens_and_pixels(ref, x)
        ids = tok.model.encode_indices(x)
        assert torch.equal(ids, ids_ref) and len(ids.unique()) > 4
        # transformers' JanusVQVAE.encode searches without l2-normalising: other tokens where code norms differ
        ids_hf = ref.encode(x).image_tokens.view(ids.shape)
        differs += int((ids_hf != ids).sum())
        torch.testing.assert_close(tok.model.decode_indices(ids), dec_ref, atol=ATOL, rtol=0)
        if (h, w) == (kwargs["num_patches"] * f,) * 2:  # transformers' decode takes square grids of num_patches only
            torch.testing.assert_close(tok.model.decode_indices(ids), ref.decode(ids.flatten(1)), atol=ATOL, rtol=0)
    assert differs > 0


def janus_layout(sd: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """transformers JanusVQVAE names -> DeepSeek's Janus names (LlamaGen's, under gen_vision_model.)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", k)
        k = re.sub(r"^encoder\.down\.(\d+)\.(attn|downsample)\.", r"encoder.conv_blocks.\1.\2.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.block\.", r"decoder.conv_blocks.\1.res.", k)  # both run low-res first
        k = re.sub(r"^decoder\.up\.(\d+)\.(attn|upsample)\.", r"decoder.conv_blocks.\1.\2.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.", lambda m: f"{m[1]}.mid.{('block_1', 'attn_1', 'block_2').index(m[2])}.", k)
        out["gen_vision_model." + k] = v.bfloat16()
    out["gen_vision_model.quantize.codebook_used"] = torch.zeros(16, dtype=torch.bfloat16)
    return out


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_janus_original_sharded_bf16_checkpoint(tmp_path, kind):
    from safetensors.torch import save_file

    kwargs, sizes = JANUS_CONFIGS["f4-attn-last"]
    ref = janus_reference(kwargs, seed=7)
    sd = janus_layout(ref.state_dict(), len(kwargs["channel_multiplier"]))
    llm = {"language_model.model.embed_tokens.weight": torch.randn(8, 4).bfloat16(), "gen_head.output_mlp_projector.weight": torch.randn(4, 4)}
    names = [f"model-0000{i}-of-00003.{kind}" for i in (1, 2, 3)]
    keys = sorted(sd)
    head, lm = "gen_head.output_mlp_projector.weight", "language_model.model.embed_tokens.weight"
    half = len(keys) // 2
    parts = [{**{k: sd[k] for k in keys[:half]}, head: llm[head]}, {k: sd[k] for k in keys[half:]}, {lm: llm[lm]}]
    folder = tmp_path / "Janus-Pro"
    folder.mkdir()
    for name, part in zip(names[:2], parts[:2]):
        (save_file(part, str(folder / name)) if kind == "safetensors" else torch.save(part, folder / name))
    (folder / names[2]).write_bytes(b"not read: it holds no gen_vision_model.* tensor")
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    weight_map = {k: names[i] for i, part in enumerate(parts) for k in part}
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "multi_modality", "gen_vision_config": {
        "cls": "VQ-16", "model_type": "gen_vision", "params": {"image_token_size": 64, "n_embed": 8}}}))  # fmt: skip

    from imagetok.convert import load_original

    conv = load_original(folder, from_format="janus")
    assert any("2 of 3 shard(s)" in n for n in conv.notes) and any("bfloat16; upcast to float32" in n for n in conv.notes)
    assert conv.config.codebook_norm == "l2" and conv.config.resolution == 384 and conv.config.n_embed == 64
    assert set(conv.ignored) == {"the rest of the model (not gen_vision_model.*)", "LlamaGen codebook-usage statistic (quantize.codebook_used)"}
    tok = Tokenizer.from_pretrained(_convert(folder, "janus", tmp_path / "out"))
    for h, w in sizes:
        x = pixels(2, h, w, seed=3 * h + w)
        ids_ref, dec_ref = janus_tokens_and_pixels(ref, x)
        ids = tok.model.encode_indices(x)
        assert torch.equal(ids, ids_ref)
        torch.testing.assert_close(tok.model.decode_indices(ids), dec_ref, atol=ATOL, rtol=0)
    (folder / "config.json").write_text(json.dumps({"gen_vision_config": {"params": {"image_token_size": 128, "n_embed": 8}}}))
    with pytest.raises(ConversionError, match="n_embed=128 but the checkpoint has n_embed=64"):
        load_original(folder, from_format="janus")


# ------------------------------------------------------------------------------------------- Chameleon
CHAMELEON_CONFIGS = {  # (transformers ChameleonVQVAEConfig kwargs, image sizes)
    "no-level-attn": (dict(base_channels=32, channel_multiplier=[1, 1, 2], num_res_blocks=1, latent_channels=16, embed_dim=8,
                           num_embeddings=64, resolution=32, attn_resolutions=[]), [(16, 32), (24, 16)]),
    "attn-level-1": (dict(base_channels=32, channel_multiplier=[1, 2], num_res_blocks=2, latent_channels=32, embed_dim=4,
                          num_embeddings=32, resolution=32, attn_resolutions=[16]), [(8, 16), (32, 32)]),
}  # fmt: skip


def chameleon_reference(kwargs: dict, seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    ref = transformers.ChameleonVQVAE(transformers.ChameleonVQVAEConfig(**kwargs)).eval()
    perturb(ref, seed=seed + 1)
    spread(ref.quantize.embedding.weight, ref.quant_conv(ref.encoder(pixels(4, 32, 32, seed=50))), seed=seed + 2)
    return ref


@pytest.mark.parametrize("name", sorted(CHAMELEON_CONFIGS))
@pytest.mark.parametrize("layout", ["vq-folder", "whole-model-shards"])
def test_chameleon_hf_conversion_is_encoder_only(tmp_path, name, layout):
    from safetensors.torch import save_file

    kwargs, sizes = CHAMELEON_CONFIGS[name]
    ref = chameleon_reference(kwargs, seed=len(name))
    src = tmp_path / "chameleon"
    if layout == "vq-folder":
        ref.save_pretrained(src)
    else:  # facebook/chameleon-7b style: the VQ model under model.vqmodel.*, in one of two shards
        src.mkdir()
        save_file({"model.vqmodel." + k: v.contiguous() for k, v in ref.state_dict().items()}, str(src / "model-00001-of-00002.safetensors"))
        (src / "model-00002-of-00002.safetensors").write_bytes(b"not read")
        weight_map = {"model.vqmodel." + k: "model-00001-of-00002.safetensors" for k in ref.state_dict()}
        weight_map["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors"
        (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        (src / "config.json").write_text(json.dumps({"model_type": "chameleon", "vq_config": ref.config.to_dict()}))
    tok = Tokenizer.from_pretrained(_convert(src, "transformers", tmp_path / "out"))
    assert tok.config.decoder is False and not hasattr(tok.model, "decoder")
    for h, w in sizes:
        x = pixels(2, h, w, seed=h * 7 + w)
        ids_ref = ref.encode(x).image_tokens.view(2, h // tok.downsample_factors[0], w // tok.downsample_factors[0])
        ids = tok.model.encode_indices(x)
        assert torch.equal(ids, ids_ref) and len(ids.unique()) > 4
    with pytest.raises(NoDecoderError, match=r"encoder-only.*vqgan\.ckpt.*--from chameleon"):
        tok.decode(ids[0])


def test_chameleon_original_vqgan_ckpt_and_yaml(tmp_path):
    """tokenizer/vqgan.ckpt (taming Lightning checkpoint with loss.*) + vqgan.yaml; encoder vs transformers."""
    yaml = pytest.importorskip("yaml")
    kwargs, sizes = CHAMELEON_CONFIGS["attn-level-1"]
    ref = chameleon_reference(kwargs, seed=11)
    full = Tokenizer.from_config(dict(family="vqgan", ch=32, ch_mult=[1, 2], num_res_blocks=2, attn_resolutions=[16],
                                      z_channels=32, embed_dim=4, n_embed=32, resolution=32), seed=0)  # fmt: skip
    perturb(full.model, seed=12)
    sd = {k: v for k, v in full.model.state_dict().items() if k.startswith("decoder.")}
    sd.update(ref.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 10}, folder / "vqgan.ckpt")
    (folder / "vqgan.yaml").write_text(yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": 4, "n_embed": 32, "ddconfig": {"double_z": False, "z_channels": 32, "resolution": 32, "in_channels": 3,
        "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0},
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}}}}))  # fmt: skip
    from imagetok.convert import load_original

    conv = load_original(tmp_path, from_format="chameleon")  # the parent of tokenizer/ works too
    assert any("Chameleon Research License" in n for n in conv.notes) and conv.assumed == []
    tok = Tokenizer.from_pretrained(_convert(folder / "vqgan.ckpt", "chameleon", tmp_path / "out"))
    assert tok.config.decoder and tok.config.resolution == 32
    for h, w in sizes:
        x = pixels(1, h, w, seed=h + 2 * w)
        ids = tok.model.encode_indices(x)
        assert torch.equal(ids, ref.encode(x).image_tokens.view(ids.shape))
        codes = ref.quantize.embedding.weight[ids].permute(0, 3, 1, 2)  # Chameleon's codebook, taming's decoder
        torch.testing.assert_close(tok.model.decode_indices(ids), full.model.decoder(ref.post_quant_conv(codes)), atol=ATOL, rtol=0)
    (folder / "vqgan.yaml").unlink()
    with pytest.raises(ConversionError, match="no vqgan.yaml beside it"):
        load_original(folder, from_format="chameleon")


# ------------------------------------------------------------------------------------------------ Emu3
EMU3_CONFIGS = {  # (transformers Emu3VQVAEConfig kwargs, image sizes)
    "attn-last-t4": (dict(base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[1], hidden_size=64,
                          latent_channels=4, embed_dim=4, codebook_size=64, temporal_downsample_factor=4), [(16, 24), (24, 16)]),
    "3-level-t2": (dict(base_channels=32, channel_multiplier=[1, 1, 2], num_res_blocks=2, attn_resolutions=[], hidden_size=64,
                        latent_channels=8, embed_dim=8, codebook_size=32, temporal_downsample_factor=2), [(16, 32), (32, 24)]),
}  # fmt: skip


def emu3_reference(kwargs: dict, seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    ref = transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig(**kwargs)).eval()
    perturb(ref, seed=seed + 1)
    x = pixels(4, 32, 32, seed=50).unsqueeze(1).repeat(1, kwargs["temporal_downsample_factor"], 1, 1, 1)
    spread(ref.quantize.embedding.weight, ref.quant_conv(ref.encoder(x).permute(0, 2, 1, 3, 4)), seed=seed + 2)
    return ref


@pytest.mark.parametrize("name", sorted(EMU3_CONFIGS))
def test_emu3_matches_transformers_emu3vqvae(tmp_path, name):
    kwargs, sizes = EMU3_CONFIGS[name]
    ref = emu3_reference(kwargs, seed=len(name))
    ref.save_pretrained(tmp_path / "emu3")
    tok = Tokenizer.from_pretrained(_convert(tmp_path / "emu3", "transformers", tmp_path / "out"))
    c = tok.config
    assert (c.family, c.codebook_size, c.temporal_downsample_factor, c.resolution) == (
        "emu3", kwargs["codebook_size"], kwargs["temporal_downsample_factor"], 512)
    for h, w in sizes:
        x = pixels(2, h, w, seed=5 * h + w)
        ids_ref = torch.stack(ref.encode(x, image_sizes=torch.tensor([[h, w]] * 2)).image_tokens)
        ids = tok.model.encode_indices(x)
        assert torch.equal(ids, ids_ref) and len(ids.unique()) > 4
        torch.testing.assert_close(tok.model.decode_indices(ids), ref.decode(ids), atol=ATOL, rtol=0)


def test_emu3_video_clips_match_transformers(tmp_path):
    kwargs, _ = EMU3_CONFIGS["attn-last-t4"]
    ref = emu3_reference(kwargs, seed=3)
    ref.save_pretrained(tmp_path / "emu3")
    tok = Tokenizer.from_pretrained(_convert(tmp_path / "emu3", "transformers", tmp_path / "out"))
    clip = torch.stack([pixels(8, 16, 24, seed=10 * b) for b in range(2)])  # [2, 8 frames, 3, 16, 24]
    ids_ref = torch.stack(ref.encode(clip, image_sizes=torch.tensor([[16, 24]] * 2)).image_tokens)  # [2, 2, 8, 12]
    ids = tok.model.encode_video_indices(clip)
    assert ids.shape == (2, 2, 8, 12) and torch.equal(ids, ids_ref)
    # 8 decoded frames of magnitude up to ~6 (random weights): 1e-4 relative as well
    torch.testing.assert_close(tok.model.decode_video_indices(ids), ref.decode(ids), atol=ATOL, rtol=ATOL)


def test_emu3_original_remote_code_folder_and_imagetok_config(tmp_path):
    """BAAI/Emu3-VisionTokenizer's own files (Emu3's names, model_type Emu3VisionVQ); also a lone weights file
    with an imagetok config (how the manifest converts it)."""
    from safetensors.torch import save_file

    from imagetok.config import config_to_dict

    kwargs, sizes = EMU3_CONFIGS["attn-last-t4"]
    ref = emu3_reference(kwargs, seed=9)
    ref.save_pretrained(tmp_path / "hf")
    tok = Tokenizer.from_pretrained(_convert(tmp_path / "hf", "transformers", tmp_path / "out"))
    (tmp_path / "baai").mkdir()
    save_file({k: v.contiguous() for k, v in tok.model.state_dict().items()}, str(tmp_path / "baai/model.safetensors"))
    (tmp_path / "baai/config.json").write_text(json.dumps({"architectures": ["Emu3VisionVQModel"], "model_type": "Emu3VisionVQ",
        "codebook_size": 64, "embed_dim": 4, "z_channels": 4, "double_z": False, "in_channels": 3, "out_channels": 3,
        "temporal_downsample_factor": 4, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [1], "dropout": 0.0}))  # fmt: skip
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone/model.safetensors").write_bytes((tmp_path / "baai/model.safetensors").read_bytes())
    from imagetok.convert import convert

    for src, cfg in ((tmp_path / "baai", None), (tmp_path / "lone/model.safetensors", config_to_dict(tok.config))):
        other = Tokenizer.from_conversion(convert(src, from_format="transformers", config=cfg))
        assert other.config == tok.config
        x = pixels(1, *sizes[0], seed=1)
        ids = other.model.encode_indices(x)
        assert torch.equal(ids, torch.stack(ref.encode(x, image_sizes=torch.tensor([sizes[0]])).image_tokens))
        torch.testing.assert_close(other.model.decode_indices(ids), ref.decode(ids), atol=ATOL, rtol=0)
    with pytest.raises(ConversionError, match="no config.json"):
        convert(tmp_path / "lone/model.safetensors", from_format="transformers")


def test_janus_index_file_names_missing_shards(tmp_path):
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "gen_vision_model.encoder.conv_in.weight": "pytorch_model-00001-of-00002.bin", "lm.w": "pytorch_model-00002-of-00002.bin"}}))  # fmt: skip
    from imagetok.convert import load_original

    with pytest.raises(ConversionError, match=r"\['pytorch_model-00001-of-00002.bin'\] are not in"):
        load_original(tmp_path / "pytorch_model.bin.index.json", from_format="janus")


# ------------------------------------------------------------------------------------ manifest / list
LLM_ENTRIES = {
    "vqgan-f16-16384.janus-pro-7b": ("janus", (24, 24), 16384),
    "vqgan-f16-8192.chameleon": ("chameleon", (32, 32), 8192),
    "emu3-f8-32768.emu3-visiontokenizer": ("transformers", (64, 64), 32768),
    "vqgan-f8-16384.kandinsky-2-2-movq": ("diffusers", (64, 64), 16384),
}


def test_manifest_llm_entries_and_list_shows_licences(capsys):
    from imagetok import registry
    from imagetok.cli import main

    for name, (converter, grid, k) in LLM_ENTRIES.items():
        e = registry.get_entry(name)
        assert e.source.converter == converter and e.tokens.grids == (grid,) and e.tokens.vocab_sizes == (k,)
        assert e.source.revision is None and e.source.sha256 is None
    cham = registry.get_entry("vqgan-f16-8192.chameleon").license
    assert cham.non_commercial and cham.gated and cham.weights == "Chameleon Research License"
    assert registry.get_entry("vqgan-f8-16384.kandinsky-2-2-movq").config.norm_type == "spatial"
    assert main(["list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["vqgan-f16-8192.chameleon"].endswith("Chameleon Research License (non-commercial, gated)")
    assert rows["emu3-f8-32768.emu3-visiontokenizer"].endswith("Apache-2.0")
    assert rows["vqgan-f16-16384.janus-pro-7b"].endswith("DeepSeek License Agreement v1.0")
    assert "(non-commercial, gated)" in registry.markdown_table()


# ------------------------------------------------------------------------------ configs and fast path
def test_new_vqgan_fields_leave_existing_configs_unchanged():
    from imagetok.config import (
        VQGANConfig,
        config_from_dict,
        config_hash,
        config_to_dict,
    )

    plain = config_to_dict(VQGANConfig())
    assert "norm_type" not in plain and "decoder" not in plain  # old config.json files and hashes stay the same
    assert config_hash(VQGANConfig()) == config_hash(config_from_dict(plain))
    movq = config_to_dict(VQGANConfig(norm_type="spatial", decoder=False))
    assert (movq["norm_type"], movq["decoder"]) == ("spatial", False) and config_from_dict(movq).norm_type == "spatial"
    with pytest.raises(Exception, match="norm_type must be 'group' or 'spatial'"):
        config_from_dict({**plain, "norm_type": "batch"})


@pytest.mark.parametrize("cfg", [
    dict(family="emu3", ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[1], codebook_size=64, resolution=16),
    dict(family="vqgan", ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=4, embed_dim=4,
         n_embed=64, resolution=16, norm_type="spatial"),
])  # fmt: skip
def test_fast_path_and_bf16_run_on_emu3_and_movq(cfg, make_image):
    tok = spread_codebooks(Tokenizer.from_config(cfg, seed=0))
    img = make_image(16, 24)
    exact = tok.encode(img, size=None)
    assert len(exact.unique()) > 4
    tok.fast = True  # bf16 autocast + channels_last (2-D convs only for Emu3's Conv3d model)
    assert (tok.encode(img, size=None) == exact).float().mean() > 0.5  # bf16 network: most tokens agree
    assert tok.decode(exact, output="pt").shape == (3, 16, 24)
    tok.fast = False
    tok.to(dtype=torch.bfloat16)
    assert tok.decode_pixels(exact[None]).dtype == torch.float32 and tok.encode(img, size=None).shape == exact.shape == (8, 12)

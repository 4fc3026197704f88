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
from pathlib import Path

import pytest
import torch
from conftest import smooth_image

from imagetok import Tokenizer
from imagetok.errors import ConversionError, NoDecoderError

ATOL = 1e-4
torch.set_grad_enabled(False)


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

"""Converted LLM tokenizers vs their reference implementations on random configs and image shapes.

The tests (tests/test_convert_llm.py) pin a few tiny configs; this script draws NEW ones at random
(levels, channels, res blocks, attention placement, code dims, codebook sizes, temporal factor) and
random non-square image sizes, builds each reference with random, perturbed weights (norm affines,
biases, BatchNorm statistics, spatial-norm convs) and a codebook drawn from real latents, converts it
with imagetok and reports token agreement and the largest decoded-pixel difference:

- MoVQ: diffusers ``VQModel(norm_type="spatial")`` -> ``--from diffusers``
- Janus: transformers ``JanusVQVAE`` -> ``--from transformers`` (LlamaGen's l2 rule; the agreement with
  transformers' own un-normalised ``encode`` is reported too)
- Chameleon: transformers ``ChameleonVQVAE`` (encoder only) -> ``--from transformers``
- Emu3: transformers ``Emu3VQVAE`` -> ``--from transformers``

    python benchmarks/verify_llm_tokenizers.py --per-family 4 --seed 123

Results: printed table + JSON lines in benchmarks/results/verify_llm.jsonl.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import common as C
import torch
import torch.nn.functional as F

from imagetok import Tokenizer
from imagetok.convert import convert

torch.set_grad_enabled(False)


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g)
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(noise * 0.1)
        elif t.ndim == 1:
            t.add_(noise * scale)
        else:
            t.add_(noise * scale * float(t.std()))


def spread(embedding: torch.Tensor, latents: torch.Tensor, seed: int) -> None:
    flat = latents.movedim(1, -1).reshape(-1, latents.shape[1])
    pick = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(seed))[: embedding.shape[0]]
    embedding.copy_(flat[pick] + 1e-3 * torch.randn(embedding.shape, generator=torch.Generator().manual_seed(seed)))


def images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g), size=(h, w), mode="bicubic")
    return x.clamp(0, 1) * 2 - 1


def arch(r: random.Random) -> dict:
    levels = r.choice([2, 3])
    mult = [1] + [r.choice([1, 2]) for _ in range(levels - 1)]
    return dict(levels=levels, ch=r.choice([32, 64]), mult=mult, blocks=r.choice([1, 2]),
                attn=sorted(r.sample(range(levels), r.randint(0, levels))), codes=r.choice([32, 64, 128]))  # fmt: skip


def shape(r: random.Random, f: int) -> tuple[int, int]:
    while True:
        h, w = f * r.randint(2, 40 // f), f * r.randint(2, 40 // f)
        if h != w:
            return h, w


def movq(a: dict, seed: int, tmp: Path):
    import diffusers

    down = ["AttnDownEncoderBlock2D" if i in a["attn"] else "DownEncoderBlock2D" for i in range(a["levels"])]
    up = ["AttnUpDecoderBlock2D" if a["levels"] - 1 - k in a["attn"] else "UpDecoderBlock2D" for k in range(a["levels"])]
    z = random.Random(seed).choice([4, 8])
    torch.manual_seed(seed)
    ref = diffusers.VQModel(block_out_channels=[a["ch"] * m for m in a["mult"]], down_block_types=down, up_block_types=up,
                            layers_per_block=a["blocks"], latent_channels=z, vq_embed_dim=z, num_vq_embeddings=a["codes"],
                            norm_type="spatial", mid_block_add_attention=bool(seed % 2), sample_size=32).eval()  # fmt: skip
    perturb(ref, seed)
    spread(ref.quantize.embedding.weight, ref.encode(images(4, 32, 32, seed)).latents, seed)
    ref.save_pretrained(tmp)

    def run(x):
        ids = ref.quantize(ref.encode(x).latents)[2][2].view(x.shape[0], *(s // 2 ** (a["levels"] - 1) for s in x.shape[2:]))
        codes = ref.quantize.embedding.weight[ids].permute(0, 3, 1, 2)
        return ids, ref.decode(codes, force_not_quantize=True).sample, None

    return "diffusers", run


def janus(a: dict, seed: int, tmp: Path):
    import transformers

    a["attn"] = [a["levels"] - 1]  # Janus / LlamaGen: attention at the last level only
    torch.manual_seed(seed)
    ref = transformers.JanusVQVAE(transformers.JanusVQVAEConfig(
        base_channels=a["ch"], channel_multiplier=a["mult"], num_res_blocks=a["blocks"], latent_channels=random.Random(seed).choice([16, 32]),
        embed_dim=random.Random(seed + 1).choice([4, 8]), num_embeddings=a["codes"], num_patches=4)).eval()  # fmt: skip
    perturb(ref, seed)
    emb = ref.quantize.embedding.weight
    spread(emb, ref.quant_conv(ref.encoder(images(4, 32, 32, seed))), seed)
    emb.mul_(torch.rand(emb.shape[0], 1, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.5)
    ref.save_pretrained(tmp)

    def run(x):
        lat = ref.quant_conv(ref.encoder(x))
        cb = F.normalize(emb, dim=1)
        flat = F.normalize(lat, dim=1).permute(0, 2, 3, 1).double()
        ids = torch.cdist(flat.reshape(-1, flat.shape[-1]), cb.double()).argmin(1).view(flat.shape[:-1])
        dec = ref.decoder(ref.post_quant_conv(cb[ids].permute(0, 3, 1, 2)))
        return ids, dec, ref.encode(x).image_tokens.view(ids.shape)

    return "transformers", run


def chameleon(a: dict, seed: int, tmp: Path):
    import transformers

    res = 32
    torch.manual_seed(seed)
    ref = transformers.ChameleonVQVAE(transformers.ChameleonVQVAEConfig(
        base_channels=a["ch"], channel_multiplier=a["mult"], num_res_blocks=a["blocks"], latent_channels=random.Random(seed).choice([16, 32]),
        embed_dim=random.Random(seed + 1).choice([4, 8, 16]), num_embeddings=a["codes"], resolution=res,
        attn_resolutions=[res >> i for i in a["attn"]])).eval()  # fmt: skip
    perturb(ref, seed)
    spread(ref.quantize.embedding.weight, ref.quant_conv(ref.encoder(images(4, 32, 32, seed))), seed)
    ref.save_pretrained(tmp)

    def run(x):
        ids = ref.encode(x).image_tokens.view(x.shape[0], *(s // 2 ** (a["levels"] - 1) for s in x.shape[2:]))
        return ids, None, None

    return "transformers", run


def emu3(a: dict, seed: int, tmp: Path):
    import transformers

    chans = [a["ch"] * m for m in a["mult"]]
    a["attn"] = [i for i in a["attn"] if chans[i] == chans[-1]]  # transformers' Emu3 attention is hidden_size wide
    t = random.Random(seed).choice([2, 4])
    z = random.Random(seed + 1).choice([4, 8])
    torch.manual_seed(seed)
    ref = transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig(
        base_channels=a["ch"], channel_multiplier=a["mult"], num_res_blocks=a["blocks"], hidden_size=chans[-1],
        attn_resolutions=a["attn"], latent_channels=z, embed_dim=z,
        codebook_size=a["codes"], temporal_downsample_factor=t)).eval()  # fmt: skip
    perturb(ref, seed)
    clip = images(4, 32, 32, seed).unsqueeze(1).repeat(1, t, 1, 1, 1)
    spread(ref.quantize.embedding.weight, ref.quant_conv(ref.encoder(clip).permute(0, 2, 1, 3, 4)), seed)
    ref.save_pretrained(tmp)

    def run(x):
        ids = torch.stack(ref.encode(x, image_sizes=torch.tensor([list(x.shape[2:])] * x.shape[0])).image_tokens)
        return ids, ref.decode(ids), None

    return "transformers", run


FAMILIES = {"movq": movq, "janus": janus, "chameleon": chameleon, "emu3": emu3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-family", type=int, default=4)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=C.RESULTS / "verify_llm.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    r = random.Random(args.seed)
    rows = []
    for fam, build in FAMILIES.items():
        for i in range(args.per_family):
            a, seed = arch(r), r.randrange(10**6)
            with tempfile.TemporaryDirectory() as tmp:
                fmt, run = build(a, seed, Path(tmp) / "ref")
                tok = Tokenizer.from_conversion(convert(Path(tmp) / "ref", from_format=fmt))
            h, w = shape(r, 2 ** (a["levels"] - 1))
            x = images(2, h, w, seed + 7)
            ids_ref, dec_ref, hf_ids = run(x)
            ids = tok.model.encode_indices(x)
            row = dict(family=fam, arch={k: v for k, v in a.items() if k != "levels"}, seed=seed, image=[h, w],
                       grid=list(ids.shape[1:]), distinct_codes=int(ids.unique().numel()),
                       tokens_equal=float((ids == ids_ref).float().mean()))  # fmt: skip
            row["decode_max_abs_diff"] = float((tok.model.decode_indices(ids_ref) - dec_ref).abs().max()) if dec_ref is not None else None
            if hf_ids is not None:
                row["transformers_encode_equal"] = float((hf_ids == ids).float().mean())
            rows.append(row)
            dd = "encoder only" if row["decode_max_abs_diff"] is None else f"{row['decode_max_abs_diff']:.1e}"
            extra = f"  (transformers' own encode: {row['transformers_encode_equal']:.3f})" if hf_ids is not None else ""
            print(f"{fam:9s} ch {a['ch']:2d} mult {a['mult']!s:9s} blocks {a['blocks']} attn {a['attn']!s:9s} codes {a['codes']:3d} "
                  f"image {h}x{w}: tokens equal {row['tokens_equal']:.3f} ({row['distinct_codes']} codes), decode max diff {dd}{extra}", flush=True)  # fmt: skip
    C.write_jsonl(args.out, [{"bench": "verify_llm", "machine": C.machine(), "rows": rows}])
    bad = [r for r in rows if r["tokens_equal"] < 1.0 or (r["decode_max_abs_diff"] or 0) > 1e-4]
    print(f"{len(rows) - len(bad)} / {len(rows)} configs reproduce their reference (same tokens, decode within 1e-4)")


if __name__ == "__main__":
    main()

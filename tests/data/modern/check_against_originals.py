"""Compare imagetok with the ORIGINAL code on configs and shapes other than the golden tests' (dev-only).

Needs the original sources (not installed, not used by the test suite) and their small deps:

    git clone https://github.com/TencentARC/SEED-Voken   # commit b9a17ea
    git clone https://github.com/NVIDIA/Cosmos-Tokenizer # commit 3584ae7
    pip install --target /tmp/site einops==0.7.0 loguru==0.7.3
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python tests/data/modern/check_against_originals.py \\
        --voken SEED-Voken --cosmos Cosmos-Tokenizer --site /tmp/site

For each case: build the original model, give it random weights (init + 0.02 * N(0, 1), as the
golden sets), save them in the original's format (Lightning ``{"state_dict"}`` / plain state dict),
convert with ``imagetok.convert`` from the original's own config, run both on random inputs, and
print: token mismatches (must be 0), the decision margin (smallest |z| for LFQ, top-1 minus top-2
logit for IBQ, distance to a rounding boundary for FSQ) and the largest decoded difference.
Results of a run are in ``ORIGINALS_CHECK.md`` beside this script.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch


def perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v += 0.02 * torch.randn(v.shape, generator=g)


def inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1).clamp(-1, 1)


def report(name, ok, margin, dec):
    print(f"{name:58s} token mismatches {ok:3d}  margin {margin:.2e}  max|decoded diff| {dec:.2e}")


def magvit_cases(tmp: Path) -> None:
    from src.Open_MAGVIT2.modules.diffusionmodules.improved_model import Decoder, Encoder
    from src.Open_MAGVIT2.modules.vqvae.lookup_free_quantize import LFQ

    from imagetok.convert import convert

    cases = [
        (dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=2, z_channels=8), None, (3, 3, 48, 80)),
        (dict(ch=64, ch_mult=[1, 1, 2, 2], num_res_blocks=1, z_channels=12), [7, 5], (2, 3, 64, 40)),
        (dict(ch=32, ch_mult=[2, 2], num_res_blocks=3, z_channels=6), None, (1, 3, 30, 18)),
        (dict(ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=4, z_channels=18), None, (1, 3, 64, 48)),  # released 128_L
    ]
    for i, (dd, fact, shape) in enumerate(cases):
        dd = {**dd, "in_channels": 3, "out_ch": 3, "resolution": 64, "double_z": False}
        torch.manual_seed(i)
        enc, dec = Encoder(**dd), Decoder(**dd)
        k = dd["z_channels"]
        lfq = LFQ(dim=k, codebook_size=2**k, token_factorization=fact is not None, factorized_bits=fact or [9, 9]).eval()
        sd = {**{f"encoder.{n}": v for n, v in enc.state_dict().items()}, **{f"decoder.{n}": v for n, v in dec.state_dict().items()}}
        holder = torch.nn.Module()
        holder.encoder, holder.decoder = enc, dec
        perturb(holder, 100 + i)
        sd = {**{f"encoder.{n}": v for n, v in enc.state_dict().items()}, **{f"decoder.{n}": v for n, v in dec.state_dict().items()}}
        torch.save({"state_dict": sd}, tmp / "m.ckpt")
        cfg = {"model": {"class_path": "src.Open_MAGVIT2.models.lfqgan.VQModel", "init_args": {
            "ddconfig": dd, "n_embed": 2**k, "embed_dim": k, "token_factorization": fact is not None,
            "factorized_bits": fact or [9, 9]}}}  # fmt: skip
        tok = convert(tmp / "m.ckpt", from_format="open-magvit2", config=cfg)
        x = inputs(shape, i)
        with torch.no_grad():
            h = enc(x)
            quant, _, idx = lfq(h)
            ref_dec = dec(quant)
            mine = tok.model.encode_indices(x)
            if fact:
                pre, post = idx
                bhw = (shape[0], *mine[0].shape[1:])
                bad = int((mine[0] != pre.view(bhw)).sum() + (mine[1] != post.view(bhw)).sum())
            else:
                bad = int((mine != idx.view(mine.shape)).sum())
            diff = float((tok.model.decode_indices(mine) - ref_dec).abs().max())
        report(f"open-magvit2 {dd['ch_mult']} nrb={dd['num_res_blocks']} K={k} fact={fact} x{list(shape)}", bad,
               float(h.abs().min()), diff)  # fmt: skip


def ibq_cases(tmp: Path) -> None:
    from src.IBQ.modules.diffusionmodules.model import Decoder, Encoder
    from src.IBQ.modules.vqvae.quantize import IndexPropagationQuantize

    from imagetok.convert import convert

    cases = [
        (dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=2, z_channels=16, attn_resolutions=[16]), 512, 8, (3, 3, 48, 80)),
        (dict(ch=64, ch_mult=[1, 1, 2], num_res_blocks=1, z_channels=32, attn_resolutions=[]), 4096, 32, (1, 3, 40, 24)),
        (dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=4, z_channels=256, attn_resolutions=[16], resolution=256),
         16384, 256, (1, 3, 64, 64)),  # released imagenet256_16384 layout
    ]
    for i, (dd, n, d, shape) in enumerate(cases):
        dd = {"resolution": 64, **dd, "in_channels": 3, "out_ch": 3, "double_z": False, "dropout": 0.0}
        torch.manual_seed(i)
        m = torch.nn.Module()
        m.encoder, m.decoder = Encoder(**dd), Decoder(**dd)
        m.quant_conv = torch.nn.Conv2d(dd["z_channels"], d, 1)
        m.post_quant_conv = torch.nn.Conv2d(d, dd["z_channels"], 1)
        m.quantize = IndexPropagationQuantize(n, d)
        m.eval()
        perturb(m, 200 + i)
        torch.save({"state_dict": m.state_dict()}, tmp / "m.ckpt")
        cfg = {"model": {"class_path": "src.IBQ.models.ibqgan.IBQ", "init_args": {"ddconfig": dd, "n_embed": n, "embed_dim": d}}}
        tok = convert(tmp / "m.ckpt", from_format="ibq", config=cfg)
        x = inputs(shape, i)
        with torch.no_grad():
            h = m.quant_conv(m.encoder(x))
            quant, _, (_, _, idx) = m.quantize(h)
            ref_dec = m.decoder(m.post_quant_conv(quant))
            logits = torch.einsum("bdhw,nd->bnhw", h, m.quantize.embedding.weight)
            top = logits.topk(2, dim=1).values
            mine = tok.model.encode_indices(x)
            bad = int((mine.flatten() != idx.flatten()).sum())
            diff = float((tok.model.decode_indices(mine) - ref_dec).abs().max())
        report(f"ibq {dd['ch_mult']} nrb={dd['num_res_blocks']} attn={dd['attn_resolutions']} K={n} x{list(shape)}", bad,
               float((top[:, 0] - top[:, 1]).min()), diff)  # fmt: skip


def cosmos_cases(tmp: Path) -> None:
    from cosmos_tokenizer.networks import TokenizerModels

    from imagetok.convert import convert

    base = dict(channels=32, num_res_blocks=1, dropout=0.0, in_channels=3, out_channels=3, z_channels=16, z_factor=1,
                quantizer="FSQ", name="DI", encoder="Default", decoder="Default")  # fmt: skip
    cases = [  # DI8x8-like (3 levels, 1 downsampling: encoder/decoder attention disagree), DI16x16-like, rearrange
        (dict(channels_mult=[1, 2, 2], spatial_compression=8, patch_size=4, patch_method="haar", resolution=64,
              attn_resolutions=[8, 16], levels=[8, 8, 8, 5, 5, 5], embedding_dim=6), (2, 3, 40, 72)),
        (dict(channels_mult=[1, 2, 2], spatial_compression=16, patch_size=4, patch_method="haar", resolution=128,
              attn_resolutions=[16], levels=[7, 6, 5], embedding_dim=3), (3, 3, 64, 48)),
        (dict(channels_mult=[1, 1], spatial_compression=4, patch_size=2, patch_method="rearrange", resolution=32,
              attn_resolutions=[16], levels=[4, 4, 3], embedding_dim=3), (1, 3, 36, 20)),
        (dict(channels=128, channels_mult=[2, 4, 4], num_res_blocks=2, z_channels=256, spatial_compression=8, patch_size=4,
              patch_method="haar", resolution=1024, attn_resolutions=[32], levels=[8, 8, 8, 5, 5, 5], embedding_dim=6),
         (1, 3, 64, 48)),  # released DI8x8 layout
    ]  # fmt: skip
    for i, (c, shape) in enumerate(cases):
        cfg = {**base, **c}
        torch.manual_seed(i)
        model = TokenizerModels["DI"].value(**cfg).eval()
        model.to(dtype=torch.float32)  # as the golden set: keyword dtype, else FSQ casts codes to bf16
        perturb(model, 300 + i)
        torch.save(model.state_dict(), tmp / "sd.pt")
        tok = convert(tmp / "sd.pt", from_format="cosmos", config=cfg)
        x = inputs(shape, i)
        with torch.no_grad():
            idx, quant, _ = model.encode(x)
            ref_dec = model.decode_code(idx)
            bounded = model.quantizer.bound(model.quant_conv(model.encoder(x)).permute(0, 2, 3, 1))
            margin = float(((bounded - bounded.floor()) - 0.5).abs().min())
            mine = tok.model.encode_indices(x)
            bad = int((mine != idx.long()).sum())
            diff = float((tok.model.decode_indices(mine) - ref_dec).abs().max())
        attn = ([j for j, lv in enumerate(model.encoder.down) if len(lv.attn)], [j for j, lv in enumerate(model.decoder.up) if len(lv.attn)])
        report(f"cosmos s={c['spatial_compression']} p={c['patch_size']} {c['patch_method']} L={c['levels']} attn={attn} x{list(shape)}",
               bad, margin, diff)  # fmt: skip


def showo_cases(tmp: Path, showo: Path) -> None:
    """The released MAGVITv2() layout (95 M parameters) with random weights."""
    sys.path.insert(0, str(showo))
    from models.modeling_magvitv2 import LFQuantizer, VQGANDecoder, VQGANEncoder

    from imagetok.convert import convert

    torch.manual_seed(0)
    m = torch.nn.Module()
    m.encoder, m.decoder, m.quantize = VQGANEncoder(), VQGANDecoder(), LFQuantizer()
    m.eval()
    g = torch.Generator().manual_seed(400)
    with torch.no_grad():
        for p in m.parameters():
            p += 0.02 * torch.randn(p.shape, generator=g)
    torch.save(m.state_dict(), tmp / "pytorch_model.bin")
    tok = convert(tmp / "pytorch_model.bin", from_format="showo")
    x = inputs((2, 3, 64, 96), 4)
    with torch.no_grad():
        h = m.encoder(x)
        idx = m.quantize.get_indices(m.quantize(h)["z"]).reshape(2, -1)
        ref_dec = m.decoder(m.quantize.get_codebook_entry(idx, shape=(4, 6)))["output"]
        mine = tok.model.encode_indices(x)
        bad = int((mine.flatten(1) != idx).sum())
        diff = float((tok.model.decode_indices(mine) - ref_dec).abs().max())
    report("showo MAGVITv2() released layout x[2, 3, 64, 96]", bad, float(h.abs().min()), diff)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--voken", type=Path, required=True)
    ap.add_argument("--cosmos", type=Path, required=True)
    ap.add_argument("--site", type=Path, default=None)
    ap.add_argument("--showo", type=Path, default=None, help="folder holding Show-o's models/ (modeling_utils, misc stubbed)")
    a = ap.parse_args()
    sys.path[:0] = [str(p) for p in (a.site, a.voken, a.cosmos) if p is not None]
    sys.modules.setdefault("lightning", types.SimpleNamespace(LightningModule=torch.nn.Module))
    torch.set_num_threads(1)
    import logging

    logging.disable(logging.WARNING)
    try:
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as d:
        magvit_cases(Path(d))
        ibq_cases(Path(d))
        cosmos_cases(Path(d))
        if a.showo is not None:
            showo_cases(Path(d), a.showo)


if __name__ == "__main__":
    main()

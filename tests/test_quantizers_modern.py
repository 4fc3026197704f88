"""LFQ, FSQ and IBQ quantizers and the magvit2 / cosmos families (no checkpoints needed)."""

from __future__ import annotations

import math

import pytest
import torch

from imagetok import Tokenizer
from imagetok.config import config_from_dict
from imagetok.errors import ConfigError
from imagetok.models.cosmos import Patcher, UnPatcher, attention_levels
from imagetok.models.fsq import FSQuantizer
from imagetok.models.ibq import IBQuantizer, max_dot_code
from imagetok.models.lfq import LFQuantizer
from imagetok.models.magvit2 import depth_to_space

TINY_MAGVIT = {"family": "magvit2", "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "z_channels": 6, "embed_dim": 6,
               "n_embed": 64, "resolution": 16}  # fmt: skip
TINY_COSMOS = {"family": "cosmos", "channels": 32, "channels_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [4],
               "resolution": 16, "patch_size": 2, "spatial_compression": 4, "z_channels": 8, "embedding_dim": 3,
               "levels": [6, 5, 3]}  # fmt: skip


# ---------------------------------------------------------------------------------------- LFQ
def test_lfq_bit_k_is_channel_k_lsb_first_and_zero_is_bit_zero():
    q = LFQuantizer(4)
    z = torch.tensor([0.5, -0.1, 0.0, 2.0]).view(1, 4, 1, 1)  # bits 1, 0, 0 (z == 0), 1
    assert q.codes_to_indices(z).item() == 1 + 8
    assert q.indices_to_codes(torch.tensor([[[9]]])).flatten().tolist() == [1.0, -1.0, -1.0, 1.0]


def test_lfq_round_trip_over_every_code_and_factorisation():
    q, f = LFQuantizer(6), LFQuantizer(6, (4, 2))
    idx = torch.arange(64).view(1, 8, 8)
    codes = q.indices_to_codes(idx)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(q.codes_to_indices(codes), idx)
    pre, post = f.codes_to_indices(codes)
    assert torch.equal(pre, idx & 15) and torch.equal(post, idx >> 4)
    assert torch.equal(f.indices_to_codes((pre, post)), codes) and torch.equal(f.combine((pre, post)), idx)
    with pytest.raises(ValueError, match="sum to dim"):
        LFQuantizer(6, (4, 3))


def test_lfq_reads_bits_in_float32_from_half_precision_latents():
    q = LFQuantizer(8)
    z = torch.randn(3, 8, 5, 7).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = q.codes_to_indices(z)
    assert got.dtype == torch.int64 and torch.equal(got, q.codes_to_indices(z.float()))


# ---------------------------------------------------------------------------------------- FSQ
def _fsq_reference(z: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """The FSQ formula in float64, digit by digit (round half to even)."""
    out = torch.zeros(z.shape[0], z.shape[2], z.shape[3], dtype=torch.long)
    basis = 1
    for i, L in enumerate(levels):
        half_l = (L - 1) * (1 + 1e-3) / 2
        offset = 0.5 if L % 2 == 0 else 0.0
        b = torch.tanh(z[:, i].double() + math.atanh(offset / half_l)) * half_l - offset
        out += (torch.round(b) + L // 2).long() * basis
        basis *= L
    return out


def test_fsq_mixed_radix_channel_zero_least_significant():
    q = FSQuantizer((8, 5, 5, 5))
    assert q.basis == (1, 8, 40, 200) and q.n_embed == 1000
    codes = q.all_codes()
    assert codes.shape == (1000, 4)
    assert codes[1].tolist() == [-0.75, -1.0, -1.0, -1.0] and codes[8].tolist() == [-1.0, -0.5, -1.0, -1.0]
    assert sorted(set(codes[:, 0].tolist())) == [-1 + 0.25 * k for k in range(8)]
    idx = torch.arange(1000).view(1, 10, 100)
    assert torch.equal(q.indices_to_digits(idx)[0, :, 0, 1], torch.tensor([1, 0, 0, 0]))


def test_fsq_matches_the_formula_and_round_trips_every_code():
    levels = [8, 6, 5, 3]
    q = FSQuantizer(levels)
    z = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 2
    got = q.codes_to_indices(z)
    ref = _fsq_reference(z, levels)
    # float32 vs float64 bounding may differ only where a value sits on a rounding boundary
    assert (got != ref).float().mean() < 1e-3
    idx = torch.arange(q.n_embed).view(1, 1, -1)
    codes = q.indices_to_codes(idx)
    assert codes.dtype == torch.float32 and codes.abs().max() == 1
    # level 6: codes are k/3 computed in float32 (not bf16-rounded as Cosmos' implicit_codebook)
    assert torch.equal(codes[0, 1].unique(), (torch.arange(6) - 3).float() / 3)
    # a code is a fixed point: quantizing codes returns their indices (bound(code * scale) rounds back)
    half = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, -1, 1, 1)
    digits = q.indices_to_digits(idx).float() - half
    lv = torch.tensor(levels).view(1, -1, 1, 1).double()
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    z_code = torch.atanh((digits.double() + offset) / half_l) - torch.atanh(offset / half_l)
    assert torch.equal(q.codes_to_indices(z_code.float()), idx)


def test_fsq_training_pass_is_straight_through():
    q = FSQuantizer((8, 5, 5))
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z)
    assert torch.equal(out.indices, q.codes_to_indices(z.detach()))
    assert torch.allclose(out.quantized, out.codes)
    out.quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- IBQ
def test_max_dot_code_is_the_exact_argmax_and_batch_invariant():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(512, 16, generator=g)
    z = torch.randn(300, 16, generator=g)
    z[:10] = e[:10] * 0.5  # duplicate codes create near-ties with scaled copies
    e[10] *= 10
    e[11] = e[10]  # an exact tie for the largest product: the lower index wins
    z[10] = e[10]
    got = max_dot_code(z, e)
    ref = (z.double() @ e.double().t()).argmax(1)
    assert torch.equal(got, ref) and got[10] == 10
    singles = torch.cat([max_dot_code(z[i : i + 1], e) for i in range(0, 300, 7)])
    assert torch.equal(singles, got[::7])
    q = IBQuantizer(512, 16)
    q.embedding.weight.data.copy_(e)
    grid = z[:288].view(2, 12, 12, 16).permute(0, 3, 1, 2)
    assert torch.equal(q.codes_to_indices(grid).flatten(), ref[:288])
    assert torch.equal(q.indices_to_codes(q.codes_to_indices(grid)).permute(0, 2, 3, 1).reshape(-1, 16), e[ref[:288]])


# ------------------------------------------------------------------------------- trunk pieces
def test_depth_to_space_is_dcr_not_pixel_shuffle():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(2, 8, 3, 3)
    y = depth_to_space(x, 2)
    c = 2
    for i in range(2):
        for j in range(2):
            assert torch.equal(y[:, :, i::2, j::2], x[:, (2 * i + j) * c : (2 * i + j + 1) * c])
    assert not torch.equal(y, torch.nn.functional.pixel_shuffle(x, 2))


@pytest.mark.parametrize("method", ["haar", "rearrange"])
def test_patcher_inverts_and_haar_low_band_is_the_block_mean(method):
    x = torch.randn(2, 3, 16, 24)
    for p in (2, 4):
        y = Patcher(p, method)(x)
        assert y.shape == (2, 3 * p * p, 16 // p, 24 // p)
        assert torch.allclose(UnPatcher(p, method)(y), x, atol=1e-5)
    if method == "haar":
        assert torch.allclose(Patcher(4, "haar")(x)[:, :3], torch.nn.functional.avg_pool2d(x, 4), atol=1e-6)


def test_cosmos_attention_placement_follows_the_original_bookkeeping():
    # released DI8x8 layout: 3 levels, one downsampling after a 4x4 patcher
    c = config_from_dict({"family": "cosmos", "channels_mult": [2, 4, 4], "spatial_compression": 8, "resolution": 64,
                          "attn_resolutions": [8, 16]})  # fmt: skip
    # encoder sizes 16, 8, 8 (real); decoder sizes 8, 8, 4 (starts at 16 / 4 and doubles once): checked
    # against Cosmos-Tokenizer's layers2d.Encoder/Decoder at commit 3584ae7
    assert attention_levels(c) == ([0, 1, 2], [0, 1])
    c16 = config_from_dict({"family": "cosmos", "resolution": 1024, "attn_resolutions": [32]})
    assert attention_levels(c16) == ([], [])


# --------------------------------------------------------------------- families end to end
TINY_SHOWO = {"family": "showo", "ch": 32, "encoder_ch_mult": [1, 2], "encoder_num_res_blocks": [1, 2], "decoder_ch_mult": [1, 1],
              "decoder_num_res_blocks": [2, 1], "attn_resolutions": [8], "z_channels": 5, "resolution": 16}  # fmt: skip


@pytest.mark.parametrize("cfg", [TINY_MAGVIT, {**TINY_MAGVIT, "factorized_bits": [4, 2]}, TINY_COSMOS, TINY_SHOWO,
                                 {"family": "vqgan", "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [],
                                  "z_channels": 8, "embed_dim": 8, "n_embed": 64, "resolution": 16, "quantizer": "ibq"}])  # fmt: skip
def test_families_encode_decode_batch_invariant_and_half_precision(cfg):
    tok = Tokenizer.from_config(cfg, seed=0)
    x = torch.rand(3, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    tokens = tok.encode_pixels(x)
    parts = tokens if isinstance(tokens, tuple) else (tokens,)
    f = tok.downsample_factors[0]
    assert all(t.dtype == torch.int64 and t.shape == (3, 16 // f, 24 // f) for t in parts)
    for t, k in zip(parts, tok.codebook_sizes):
        assert 0 <= int(t.min()) and int(t.max()) < k
    single = tok.encode_pixels(x[1:2])
    for a, b in zip(parts, single if isinstance(single, tuple) else (single,)):
        assert torch.equal(a[1:2], b)
    y = tok.decode_pixels(tokens)
    assert y.shape == (3, 3, 16, 24) and y.dtype == torch.float32
    tok.to(dtype=torch.bfloat16)
    half = tok.encode_pixels(x)
    for t in half if isinstance(half, tuple) else (half,):
        assert t.dtype == torch.int64
    assert tok.decode_pixels(half).dtype == torch.float32


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({**TINY_MAGVIT, "n_embed": 100}, "n_embed must be 2 \\*\\* embed_dim"),
        ({**TINY_MAGVIT, "z_channels": 8}, "must equal embed_dim"),
        ({**TINY_MAGVIT, "factorized_bits": [3, 2]}, "sum to embed_dim"),
        ({**TINY_MAGVIT, "ch": 2048}, "ch must be at most 1024 \\(imagetok.config.MAX_BASE_CHANNELS\\)"),
        ({**TINY_MAGVIT, "ch": 1024, "ch_mult": [1, 8]}, "ch \\* ch_mult must be at most 4096 \\(imagetok.config.MAX_CHANNELS\\)"),
        ({**TINY_COSMOS, "levels": [6, 5]}, "must equal len\\(levels\\)"),
        ({**TINY_COSMOS, "patch_size": 3}, "power of two"),
        ({**TINY_COSMOS, "spatial_compression": 64}, "resampling stages"),
        ({**TINY_COSMOS, "levels": [1, 5, 3]}, "levels must be"),
        ({"family": "vqgan", "quantizer": "ibq", "codebook_norm": "l2"}, "only defined for quantizer='vq'"),
        ({**TINY_SHOWO, "decoder_num_res_blocks": [2]}, "blocks for each of the 2 levels"),
        ({**TINY_SHOWO, "decoder_ch_mult": [1, 1, 1], "decoder_num_res_blocks": [1, 1, 1]}, "same number of levels"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(cfg, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(cfg)


# ----------------------------------------------------------------------------- codebook usage
def test_lfq_per_bit_usage_and_balance():
    from imagetok.usage import BitCounter, quantizer_usage

    cfg = config_from_dict(TINY_MAGVIT)  # 6 bits
    tokens = torch.tensor([[0b000001, 0b000011], [0b000111, 0b000001]])  # bit0 always, bit1 half, bit2 1/4
    r = quantizer_usage(cfg, [tokens[None], tokens[None]])
    assert r.tokens == 8 and r.ones[:4] == (1.0, 0.5, 0.25, 0.0)
    assert r.balance[:3] == (0.0, 1.0, 0.5) and r.dead == (0, 3, 4, 5) and r.min_balance == 0.0
    assert r.entropy_bits[1] == 1.0 and abs(r.sum_entropy_bits - (1 + 0.8112781244591328)) < 1e-12
    fact = config_from_dict({**TINY_MAGVIT, "factorized_bits": [4, 2]})
    rf = quantizer_usage(fact, (tokens & 15, tokens >> 4))
    assert rf.ones == quantizer_usage(cfg, tokens).ones
    with pytest.raises(Exception, match=r"\[0, 2\*\*6\)"):
        quantizer_usage(cfg, torch.tensor([64]))
    c = BitCounter(3)
    c.update(torch.arange(8))
    assert c.report().balance == (1.0, 1.0, 1.0) and c.report().sum_entropy_bits == 3.0


def test_fsq_per_level_usage():
    from imagetok.usage import quantizer_usage

    cfg = config_from_dict(TINY_COSMOS)  # levels 6, 5, 3
    q = FSQuantizer((6, 5, 3))
    digits = torch.tensor([[5, 0, 2], [5, 4, 2], [0, 4, 2], [5, 0, 2]])
    idx = (digits * torch.tensor([1, 6, 30])).sum(1)
    assert torch.equal(q.indices_to_digits(idx.view(1, 2, 2))[0].permute(1, 2, 0).reshape(-1, 3), digits)
    r = quantizer_usage(cfg, idx.view(1, 2, 2))
    assert r.counts == ((1, 0, 0, 0, 0, 3), (2, 0, 0, 0, 2), (0, 0, 4)) and r.used == (2, 2, 1)
    assert r.usage == (2 / 6, 2 / 5, 1 / 3) and r.entropy_bits[1] == 1.0 and r.entropy_bits[2] == 0.0
    with pytest.raises(Exception, match="not 'vqgan'"):
        quantizer_usage(config_from_dict({"family": "vqgan"}), idx)


# ---------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    from test_train_regression import write_images

    root = tmp_path_factory.mktemp("modern_train")
    write_images(root / "train", 6, seed=0)
    return root / "train"


def _train(train_dir, out, model, steps, **kw):
    from imagetok.train import TrainConfig
    from imagetok.train.loop import Trainer
    from imagetok.usage import quantizer_usage

    cfg = TrainConfig(data=str(train_dir), out_dir=str(out), model=model, crop_size=32, steps=steps, batch_size=4,
                      warmup_steps=2, num_threads=1, log_every=1, eval_every=1000, save_every=1000, progress=False,
                      lr=1e-3, **kw)  # fmt: skip
    t = Trainer(cfg)
    rows = [t.train_step() for _ in range(steps)]
    t.model.eval()
    tok = Tokenizer(t.model, t.tok.config)
    tokens = tok.encode_pixels(t.data.batch(8, 0, 10**6, 0))  # 8 crops -> 512 tokens
    return rows, tokens, quantizer_usage(tok.config, tokens)


TRAIN_LFQ = {**TINY_MAGVIT, "resolution": 32}  # 6 bits: 64 codes
TRAIN_FSQ = {**TINY_COSMOS, "attn_resolutions": [], "resolution": 32, "levels": [5, 5, 5]}  # 125 codes


def test_lfq_trains_with_the_entropy_loss_without_collapsing(train_dir, tmp_path):
    rows, tokens, bits = _train(train_dir, tmp_path / "lfq", TRAIN_LFQ, 15)
    first, last = rows[0]["l1"], sum(r["l1"] for r in rows[-3:]) / 3
    assert last < 0.75 * first  # reconstruction improves (typically 0.48 -> 0.23)
    assert {"commit", "sample_entropy", "codebook_entropy"} <= set(rows[-1])
    # the batch entropy term keeps the codebook spread: measured 64/64 codes, min bit balance 0.50,
    # codebook entropy 3.86 of ln 64 = 4.16 nats (without it: 47/64 codes, min balance 0.29)
    assert len(tokens.unique()) >= 56 and bits.dead == () and bits.min_balance > 0.35
    assert rows[-1]["codebook_entropy"] > 0.85 * math.log(64)


def test_fsq_trains_and_uses_every_channel(train_dir, tmp_path):
    rows, tokens, levels = _train(train_dir, tmp_path / "fsq", TRAIN_FSQ, 15)
    assert sum(r["l1"] for r in rows[-3:]) / 3 < 0.75 * rows[0]["l1"]  # typically 0.64 -> 0.34
    assert all(u >= 3 for u in levels.used)  # measured 4, 3, 4 of 5 levels per channel
    with pytest.raises(ConfigError, match="need a learned codebook"):
        _train(train_dir, tmp_path / "bad", TRAIN_FSQ, 1, restart_every=5)


@pytest.mark.slow
def test_lfq_entropy_loss_is_what_prevents_collapse(train_dir, tmp_path):
    """40 steps with and without the entropy term (measured: 64 vs 43 codes, min balance 0.72 vs 0.33)."""
    _, with_tokens, with_bits = _train(train_dir, tmp_path / "a", TRAIN_LFQ, 40)
    _, without_tokens, without_bits = _train(train_dir, tmp_path / "b", TRAIN_LFQ, 40, entropy_weight=0.0)
    assert len(with_tokens.unique()) >= len(without_tokens.unique()) + 8
    assert with_bits.min_balance > without_bits.min_balance + 0.2


@pytest.mark.parametrize("cfg", [TINY_MAGVIT, {**TINY_MAGVIT, "factorized_bits": [4, 2]}, TINY_COSMOS])
def test_quantizer_usage_from_a_usage_report_and_the_cli(cfg, tmp_path, capsys):
    from PIL import Image

    from imagetok.cli import main
    from imagetok.usage import quantizer_usage, quantizer_usage_from_report

    tok = Tokenizer.from_config(cfg, seed=0)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    direct = quantizer_usage(tok.config, tok.encode_pixels(x))
    from_report = quantizer_usage_from_report(tok.config, tok.codebook_usage(x, size=None))
    assert direct == from_report
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(x):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(folder / f"{i}.png")
    tok.save_pretrained(tmp_path / "m")
    assert main(["usage", str(folder), "--model", str(tmp_path / "m"), "--size", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ("LFQ bits" in out and "min balance" in out) if cfg["family"] == "magvit2" else "FSQ levels" in out

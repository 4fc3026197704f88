"""Stage-2 priors: causality, KV cache vs recomputation, likelihoods, sampling options, storage, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from imagetok import Tokenizer
from imagetok.config import config_hash
from imagetok.errors import ConfigError, InputError, WeightsError
from imagetok.prior import Prior, PriorConfig, TokenData
from imagetok.prior.sampling import draw, filter_logits, run

ARCHS = {
    "transformer": dict(arch="transformer", codebook_sizes=(37,), grid=(4, 5)),
    "pixelcnn": dict(arch="pixelcnn", codebook_sizes=(37,), grid=(4, 5)),
    "vqvae2": dict(arch="vqvae2", codebook_sizes=(17, 19), grid=(2, 3, 4, 6)),
}


def tiny_prior(arch: str, num_classes: int = 3, seed: int = 0, **kw) -> Prior:
    cfg = PriorConfig(**{**ARCHS[arch], "width": 32, "depth": 2, "heads": 4, "num_classes": num_classes, **kw})
    prior = Prior.from_config(cfg, seed=seed)
    with torch.no_grad():  # larger than the 0.02 init so that logits react visibly to every input
        for p in prior.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    return prior


def random_levels(prior: Prior, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, k, (batch, *s), generator=g) for k, s in zip(prior.config.codebook_sizes, prior.grid_shapes))


def as_tuple(tokens):
    return tokens if isinstance(tokens, tuple) else (tokens,)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_causality_changing_token_t_changes_no_logit_up_to_t(arch):
    """Logit i predicts token i from tokens < i: changing token t leaves logits 0..t unchanged (and
    changes some later one). For VQ-VAE-2 this holds within each level; the bottom level sees the whole top."""
    prior = tiny_prior(arch)
    levels = random_levels(prior, 2)
    labels = torch.tensor([0, 2])
    base = prior.logits(levels, labels)
    for li, k in enumerate(prior.config.codebook_sizes):
        n = levels[li][0].numel()
        for t in range(n):
            changed = [x.clone() for x in levels]
            changed[li].view(2, -1)[:, t] = (changed[li].view(2, -1)[:, t] + 1) % k
            new = prior.logits(changed, labels)
            diff = (new[li] - base[li]).abs().amax(dim=(0, 2))
            assert diff[: t + 1].max() < 1e-5, (li, t, diff)
            if t < n - 1:
                assert diff[t + 1 :].max() > 1e-4, (li, t, diff)
            if li == 0 and len(levels) == 2:  # the bottom prior is conditioned on the top codes
                assert (new[1] - base[1]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", list(ARCHS))
def test_probabilities_over_all_sequences_sum_to_one(arch):
    """exp(log_prob) summed over every possible token grid is 1, for each class and unconditionally."""
    small = {
        "transformer": dict(arch="transformer", codebook_sizes=(3,), grid=(1, 4)),
        "pixelcnn": dict(arch="pixelcnn", codebook_sizes=(3,), grid=(2, 2)),
        "vqvae2": dict(arch="vqvae2", codebook_sizes=(2, 2), grid=(1, 1, 2, 2)),
    }[arch]
    prior = tiny_prior(arch, num_classes=2, **{k: v for k, v in small.items() if k != "arch"})
    sizes, shapes = prior.config.codebook_sizes, prior.grid_shapes
    per_level = [list(itertools.product(range(k), repeat=h * w)) for k, (h, w) in zip(sizes, shapes)]
    combos = list(itertools.product(*per_level))
    levels = tuple(torch.tensor([c[i] for c in combos]).reshape(len(combos), *shapes[i]) for i in range(len(sizes)))
    tokens = levels if len(levels) > 1 else levels[0]
    for label in (None, 0, 1):
        total = prior.log_prob(tokens, label=label).exp().sum()
        assert abs(float(total) - 1.0) < 1e-6


@pytest.mark.parametrize("arch", ["transformer", "vqvae2"])
def test_kv_cache_sampling_equals_full_recomputation(arch):
    prior = tiny_prior(arch)
    opts = dict(label=1, generator=7, top_k=10, top_p=0.95, temperature=0.9)
    cached = as_tuple(prior.sample(4, **opts))
    full = as_tuple(prior.sample(4, use_cache=False, **opts))
    for a, b in zip(cached, full):
        assert torch.equal(a, b)
    # the per-step logits agree to float precision, not only the picks
    m = prior.model if arch == "transformer" else prior.model.top
    lab = torch.tensor([0, 1, 2, 3 % 3])
    seq = random_levels(prior, 4)[0].flatten(1)
    s1, s2 = m.start(lab, None, True), m.start(lab, None, False)
    with torch.no_grad():
        for pos in range(seq.shape[1]):
            prev = None if pos == 0 else seq[:, pos - 1]
            torch.testing.assert_close(m.step(s1, pos, prev), m.step(s2, pos, prev), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sample_shapes_seed_and_batch_size_independence(arch):
    prior = tiny_prior(arch)
    a = as_tuple(prior.sample(5, label="1" if False else 1, generator=3))
    b = as_tuple(prior.sample(5, label=1, generator=3, batch_size=2))
    c = as_tuple(prior.sample(5, label=1, generator=4))
    for t, k, shape in zip(a, prior.config.codebook_sizes, prior.grid_shapes):
        assert t.dtype == torch.int64 and tuple(t.shape) == (5, *shape)
        assert 0 <= int(t.min()) and int(t.max()) < k
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert all(torch.equal(x, y) for x, y in zip(as_tuple(prior.sample(2, generator=g1)), as_tuple(prior.sample(2, generator=g2))))


def test_greedy_top_k_top_p_and_cfg_rules():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    kept = filter_logits(logits, top_k=2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True]]
    p = logits.softmax(-1)[0]  # [0.032, 0.644, 0.087, 0.237]
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=float(p[1] + 0.01))).tolist() == [[False, True, False, True]]
    assert int(draw(logits, torch.tensor([0.99]), 0.0)) == 1  # temperature 0: argmax whatever u
    # inverse CDF: u below the first mass picks token 0, just above picks token 1
    assert int(draw(logits, torch.tensor([float(p[0]) - 1e-4]), 1.0)) == 0
    assert int(draw(logits, torch.tensor([float(p[0]) + 1e-4]), 1.0)) == 1
    # classifier-free guidance: null + s * (cond - null)
    cond, null = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 2.0]])
    step = lambda state, pos, prev: torch.cat([cond, null])  # noqa: E731
    u = torch.zeros(1, 1)
    assert int(run(step, None, 1, u, temperature=0, cfg=0.0)[0, 0]) == 2  # null only
    assert int(run(step, None, 1, u, temperature=0, cfg=1.0)[0, 0]) == 0  # cond only
    assert int(run(step, None, 1, u, temperature=0, cfg=0.4)[0, 0]) == 2  # 0.8, 0, 1.6
    # prior-level: greedy sampling equals top_k=1 sampling, and is the argmax of log_prob's steps
    prior = tiny_prior("transformer")
    greedy = prior.sample(3, label=0, temperature=0, generator=1)
    assert torch.equal(greedy, prior.sample(3, label=0, top_k=1, generator=2))
    assert torch.equal(greedy, prior.sample(3, label=0, top_p=1e-6, generator=3))
    assert torch.equal(greedy[0], greedy[1])


def test_cfg_and_label_validation():
    prior = tiny_prior("transformer", classes=("cat", "dog", "fox"))
    with pytest.raises(InputError, match="needs a label"):
        prior.sample(2, cfg=3.0)
    with pytest.raises(InputError, match=r"unknown class 'cow'; known classes: \['cat', 'dog', 'fox'\]"):
        prior.sample(1, label="cow")
    with pytest.raises(InputError, match="out of range"):
        prior.sample(1, label=3)
    with pytest.raises(InputError, match="2 labels for 3 samples"):
        prior.sample(3, label=["cat", "dog"])
    for bad in (dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(n=0), dict(generator="x")):
        with pytest.raises(InputError):
            prior.sample(**{"n": 1, **bad})
    assert torch.equal(prior.sample(2, label="dog", generator=0), prior.sample(2, label=1, generator=0))
    assert torch.equal(prior.sample(2, label="dog", generator=0), prior.sample(2, label=["dog", "dog"], generator=0))
    with pytest.raises(InputError, match="one label for all samples"):
        prior.sample(2, label=["cat", "dog"], accept=lambda t: torch.ones(len(t), dtype=torch.bool))
    data = TokenData.from_tensors(torch.zeros(2, 4, 5, dtype=torch.long), [0, 1], codebook_sizes=(37,), classes=["cat", "cow"])
    with pytest.raises(InputError, match=r"classes \['cat', 'cow'\] are not this prior's \['cat', 'dog', 'fox'\]"):
        prior.bits_per_token(data)
    with pytest.raises(InputError, match="out of range for this prior's 3 classes"):
        prior.bits_per_token(TokenData.from_tensors(torch.zeros(2, 4, 5, dtype=torch.long), [0, 3], codebook_sizes=(37,)))
    guided = prior.sample(4, label="fox", cfg=3.0, generator=0)
    assert guided.shape == (4, 4, 5)
    uncond = tiny_prior("transformer", num_classes=0)
    with pytest.raises(InputError, match="unconditional"):
        uncond.sample(1, label=0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bad_tokens_refused(arch):
    prior = tiny_prior(arch)
    levels = random_levels(prior, 2)
    tokens = levels if len(levels) > 1 else levels[0]
    if len(levels) == 1:
        with pytest.raises(InputError, match=r"shape \[4, 5\].*got \[2, 5, 4\]"):
            prior.log_prob(levels[0].transpose(1, 2))
        bad = levels[0].clone()
        bad[0, 0, 0] = 37
        with pytest.raises(InputError, match=r"\[0, 37\)"):
            prior.log_prob(bad)
        with pytest.raises(InputError, match="integer"):
            prior.log_prob(levels[0].float())
        with pytest.raises(InputError, match="-1"):
            prior.log_prob(levels[0] - 1)
    else:
        with pytest.raises(InputError, match=r"2 token level"):
            prior.log_prob(levels[0])
        with pytest.raises(InputError, match=r"shape \[4, 6\]"):
            prior.log_prob((levels[0], levels[1][:, :2]))
        with pytest.raises(InputError, match=r"\[0, 19\)"):
            prior.log_prob((levels[0], levels[1] + 19))
    one = tuple(t[0] for t in levels) if len(levels) > 1 else levels[0][0]
    assert prior.log_prob(one).ndim == 0 and prior.log_prob(tokens).shape == (2,)


def _tok_info(tok: Tokenizer) -> dict:
    return {"name": tok.name, "config_hash": config_hash(tok.config)}


def test_save_load_roundtrip_names_the_tokenizer(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer("vqgan")
    tok.name = "tiny-vqgan"
    toks = tok.encode([np.full((32, 32, 3), v, np.uint8) for v in (10, 200)], size=32)
    data = TokenData.from_tensors(toks, [0, 1], classes=["dark", "light"], tokenizer=tok)
    prior = Prior.from_config(PriorConfig(arch="transformer", codebook_sizes=data.codebook_sizes, grid=data.grid, width=32,
                                          depth=1, heads=2, num_classes=2, classes=("dark", "light"), tokenizer=tok.name,
                                          tokenizer_hash=config_hash(tok.config)), seed=1)  # fmt: skip
    out = prior.save_pretrained(tmp_path / "p")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tokenizer"] == "tiny-vqgan" and cfg["tokenizer_hash"] == config_hash(tok.config) and cfg["format"] == "imagetok-prior"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = Prior.from_pretrained(out)
    torch.testing.assert_close(loaded.log_prob(toks, label=["dark", "light"]), prior.log_prob(toks, label=[0, 1]))
    assert torch.equal(loaded.sample(2, label="light", generator=0), prior.sample(2, label="light", generator=0))
    # saving again replaces the folder; no temporary folders are left beside it
    prior.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    # what the prior samples, the tokenizer decodes
    images = tok.decode(loaded.sample(2, generator=0), output="np")
    assert images.shape == (2, 32, 32, 3)
    # a tokenizer with a different config is refused, by name and hash
    other = tiny_tokenizer("vqvae")
    other.name = "tiny-vqvae"
    with pytest.raises(InputError, match=r"tokenizer 'tiny-vqvae' .*trained on tokens of 'tiny-vqgan'"):
        loaded.check_tokenizer(other)
    loaded.check_tokenizer(tok)
    same_shape_other = Tokenizer.from_config({**tok.config.__dict__, "family": "vqgan", "dropout": 0.1}, seed=0)
    other_data = TokenData.from_tensors(toks, [0, 1], tokenizer=same_shape_other)
    with pytest.raises(InputError, match="config hash"):
        loaded.bits_per_token(other_data)


def test_from_pretrained_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="not an imagetok prior config"):
        Prior.from_pretrained(tiny_model_dir("vqgan"))
    prior = tiny_prior("pixelcnn")
    out = prior.save_pretrained(tmp_path / "p")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "widht": 3}))
    with pytest.raises(ConfigError, match=r"unknown prior config key\(s\) \['widht'\]"):
        Prior.from_pretrained(out)
    (out / "config.json").write_text(json.dumps({**cfg, "width": 48}))
    with pytest.raises(WeightsError, match="saved with another config"):
        Prior.from_pretrained(out)
    for bad in (dict(arch="gpt"), dict(grid=(4,)), dict(width=30, heads=4, arch="transformer"), dict(codebook_sizes=(8, 8))):
        with pytest.raises(ConfigError):
            PriorConfig(**{**ARCHS["pixelcnn"], **bad})


def test_unknown_prior_names_and_unseeded_init(tmp_path):
    from imagetok.errors import UnknownModelError

    for name, why in ((tmp_path / "no" / "such" / "prior", "not a local model folder"),
                      ("vqgan-f8-4096.imagetok-photos", "names a tokenizer in the weights manifest, not a prior")):
        with pytest.raises(UnknownModelError, match=why):
            Prior.from_pretrained(name)
    cfg = PriorConfig(**ARCHS["transformer"], width=16, depth=1, heads=2)
    a, b = Prior.from_config(cfg), Prior.from_config(cfg)
    assert not torch.equal(a.model.tok_emb.weight, b.model.tok_emb.weight)
    assert torch.equal(Prior.from_config(cfg, seed=3).model.tok_emb.weight, Prior.from_config(cfg, seed=3).model.tok_emb.weight)


@pytest.mark.parametrize("family,arch", [("vqvae", "pixelcnn"), ("vqvae2", "vqvae2"), ("vqgan", "transformer")])
def test_samples_decode_with_their_tokenizer(tiny_tokenizer, family, arch):
    """sample() returns what encode() returns for a batch, so decode takes it as is (a (top, bottom) tuple for VQ-VAE-2)."""
    tok = tiny_tokenizer(family)
    encoded = tok.encode([np.full((32, 32, 3), 90, np.uint8)] * 2, size=32)
    levels = encoded if isinstance(encoded, tuple) else (encoded,)
    grid = tuple(int(s) for t in levels for s in t.shape[1:])
    prior = Prior.from_config(PriorConfig(arch=arch, codebook_sizes=tok.codebook_sizes, grid=grid, width=16, depth=1, heads=2,
                                          tokenizer_hash=config_hash(tok.config)), seed=0)  # fmt: skip
    prior.check_tokenizer(tok)
    sampled = prior.sample(3, generator=0, top_k=8)
    assert type(sampled) is type(encoded)
    for s, e in zip(as_tuple(sampled), levels):
        assert s.dtype == e.dtype and s.shape[1:] == e.shape[1:]
    assert tok.decode(sampled, output="np").shape == (3, 32, 32, 3)
    assert prior.log_prob(encoded).shape == (2,)

"""Prior training end to end: tokenize two colour classes, train, sample per class, decode; held-out
bits per token below the unigram entropy; exact resume; the ``imagetok prior`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imagetok import Tokenizer
from imagetok.cli import main
from imagetok.config import config_hash, config_to_dict
from imagetok.prior import Prior, TokenData, load_token_data
from imagetok.prior.trainer import train_prior

COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200)}


def colour_images(colour, n: int, seed: int, size: int = 32) -> list[np.ndarray]:
    """Flat colour with a horizontal brightness ramp, per-image jitter and a little noise (uint8 [size, size, 3])."""
    r = np.random.default_rng(seed)
    ramp = np.linspace(0.5, 1.0, size)[None, :, None]
    return [
        np.clip((np.array(colour, float) + r.uniform(-15, 15, 3)) * ramp + r.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
        for _ in range(n)
    ]


def unigram_bits(tokens: torch.Tensor) -> float:
    """Entropy (bits) of the empirical token distribution of ``tokens`` itself (a plug-in, optimistic estimate)."""
    counts = torch.bincount(tokens.flatten().long()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def mean_rgb(tok: Tokenizer, tokens) -> torch.Tensor:
    return tok.decode(tokens, output="pt").mean(dim=(0, 2, 3))


def write_token_dataset(folder: Path, tok: Tokenizer, tokens, labels=None, classes=None) -> Path:
    """A ``tokenize-dataset`` folder written directly: dataset_info.json + one shard in the writer's schema + ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    levels = tokens if isinstance(tokens, tuple) else (tokens,)
    n = levels[0].shape[0]
    (folder / "data").mkdir(parents=True)
    grid = [int(s) for t in levels for s in t.shape[1:]]
    flat = torch.cat([t.reshape(n, -1) for t in levels], 1).numpy().astype(np.uint16)
    cols = {
        "key": pa.array([f"{i:05d}.png" for i in range(n)]),
        "width": pa.array([32] * n, pa.int32()),
        "height": pa.array([32] * n, pa.int32()),
        "grid": pa.array([grid] * n, pa.list_(pa.int32())),
        "tokens": pa.array(list(flat), pa.list_(pa.uint16())),
    }
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int64())
    pq.write_table(pa.table(cols), folder / "data" / "train-00000-of-00001.parquet")
    info = {
        "format": "imagetok-token-dataset", "format_version": 1,
        "tokenizer": {"name": tok.name, "family": tok.config.family, "config_hash": config_hash(tok.config), "config": config_to_dict(tok.config),
                      "codebook_sizes": list(tok.codebook_sizes), "downsample_factors": list(tok.downsample_factors)},
        "shards": [{"file": "data/train-00000-of-00001.parquet", "index": 0, "rows": n, "failed": 0}],
    }  # fmt: skip
    if classes is not None:
        info["classes"] = list(classes)
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def bundled():
    return Tokenizer.from_pretrained()


def colour_data(tok: Tokenizer, per_class: int) -> TokenData:
    images, labels = [], []
    for i, colour in enumerate(COLOURS.values()):
        images += colour_images(colour, per_class, seed=i)
        labels += [i] * per_class
    return TokenData.from_tensors(tok.encode(images, size=32), labels, classes=list(COLOURS), tokenizer=tok)


def check_colours_and_bits(prior: Prior, tok: Tokenizer, held_out: TokenData, margin: float) -> None:
    for name in COLOURS:
        rgb = mean_rgb(tok, prior.sample(8, label=name, top_k=20, generator=1))
        other = 2 if name == "red" else 0
        mine = 0 if name == "red" else 2
        assert rgb[mine] > rgb[other] + margin, (name, rgb)
    assert prior.bits_per_token(held_out) < unigram_bits(held_out.tokens) - 1.0


def test_end_to_end_two_colour_classes_fast(tmp_path, bundled):
    """Tokenize (bundled model, 32 px -> 4x4 tokens), train 60 CPU steps, sample each class, decode."""
    data = colour_data(bundled, 48)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    train, held_out = data.subset(perm[:72]), data.subset(perm[72:])
    out = train_prior({"out_dir": str(tmp_path / "run"), "width": 64, "depth": 1, "heads": 2, "steps": 60, "batch_size": 16,
                       "lr": 1e-2, "warmup_steps": 10, "progress": False, "device": "cpu", "log_every": 20}, data=train)  # fmt: skip
    prior = Prior.from_pretrained(out)
    assert prior.classes == ("red", "blue") and prior.config.tokenizer == bundled.name
    check_colours_and_bits(prior, bundled, held_out, margin=0.1)
    # the label matters: the held-out set is likelier under its true labels than under swapped ones
    levels = held_out.levels()[0]
    true = prior.log_prob(levels, label=held_out.labels).sum()
    swapped = prior.log_prob(levels, label=1 - held_out.labels).sum()
    assert true > swapped + 10
    # rejection sampling with a score over decoded images; int seeds make sample i the same in every batch
    def reddish(tokens):
        rgb = bundled.decode(tokens, output="pt").mean(dim=(2, 3))
        return rgb[:, 0] > rgb[:, 2] + 0.15

    first = prior.sample(8, label="red", top_k=20, generator=5)
    kept = prior.sample(6, label="red", top_k=20, generator=5, accept=reddish, batch_size=8, max_tries=4)
    assert bool(reddish(kept).all())
    assert torch.equal(kept[: int(reddish(first).sum())], first[reddish(first)][:6])


def test_resume_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TokenData.from_tensors(torch.randint(0, 16, (20, 3, 3), generator=g), torch.randint(0, 2, (20,), generator=g), codebook_sizes=(16,))
    base = {"width": 16, "depth": 1, "heads": 2, "batch_size": 4, "warmup_steps": 2, "progress": False, "device": "cpu",
            "save_every": 3, "dropout": 0.1}  # fmt: skip
    straight = train_prior({**base, "out_dir": str(tmp_path / "a"), "steps": 6}, data=data)
    train_prior({**base, "out_dir": str(tmp_path / "b"), "steps": 3}, data=data)
    resumed = train_prior({**base, "out_dir": str(tmp_path / "b"), "steps": 6}, data=data)
    a, b = Prior.from_pretrained(straight).model.state_dict(), Prior.from_pretrained(resumed).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    with pytest.raises(Exception, match="different run"):
        train_prior({**base, "out_dir": str(tmp_path / "b"), "steps": 9, "seed": 1}, data=data)


def test_cli_train_sample_eval(tmp_path, capsys, tiny_tokenizer):
    tok = tiny_tokenizer("vqgan")
    tok.save_pretrained(tmp_path / "tok")
    tok = Tokenizer.from_pretrained(tmp_path / "tok")  # named by its folder, as the CLI will load it
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (12, 8, 8), generator=g)
    labels = [0, 1] * 6
    ds = write_token_dataset(tmp_path / "ds", tok, tokens, labels, classes=["cat", "dog"])
    assert main(["prior", "train", str(ds), "--out", str(tmp_path / "run"), "--steps", "3", "--width", "16", "--depth", "1",
                 "--heads", "2", "--device", "cpu"]) == 0  # fmt: skip
    prior_dir = capsys.readouterr().out.strip()
    assert Path(prior_dir) == tmp_path / "run" / "prior"
    assert Prior.from_pretrained(prior_dir).classes == ("cat", "dog")
    assert main(["prior", "train", str(ds), "--out", str(tmp_path / "uncond"), "--steps", "1", "--width", "16", "--depth", "1",
                 "--heads", "2", "--arch", "pixelcnn", "--unconditional"]) == 0  # fmt: skip
    uncond = Prior.from_pretrained(capsys.readouterr().out.strip())
    assert uncond.num_classes == 0 and uncond.config.arch == "pixelcnn"
    # token file -> `imagetok decode` (which finds the tokenizer in the file's metadata)
    assert main(["prior", "sample", prior_dir, "-n", "2", "--class", "dog", "--top-k", "5", "--cfg", "2", "-o", str(tmp_path / "s.safetensors")]) == 0
    assert main(["decode", str(tmp_path / "s.safetensors"), "-o", str(tmp_path / "dec")]) == 0
    assert len(list((tmp_path / "dec").glob("*.png"))) == 2
    assert main(["prior", "sample", prior_dir, "-n", "3", "--class", "1", "--decode", "-o", str(tmp_path / "png")]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 3
    capsys.readouterr()
    assert main(["prior", "eval", prior_dir, str(ds), "--json"]) == 0
    bpt = json.loads(capsys.readouterr().out)["bits_per_token"]
    assert abs(bpt - Prior.from_pretrained(prior_dir).bits_per_token(load_token_data(ds))) < 1e-6
    # a token file from `imagetok encode -o` / `prior sample -o` evaluates too (and names its tokenizer)
    capsys.readouterr()
    assert main(["prior", "eval", prior_dir, str(tmp_path / "s.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    # errors: one line, exit 1
    assert main(["prior", "sample", prior_dir, "--class", "cow", "-o", str(tmp_path / "x.json")]) == 1
    assert "unknown class 'cow'; known classes: ['cat', 'dog']" in capsys.readouterr().err
    other = tiny_tokenizer("vqgan_l2", seed=1)  # same grid and codebook size, another config: another vocabulary
    other.save_pretrained(tmp_path / "tok2")
    other = Tokenizer.from_pretrained(tmp_path / "tok2")
    ds2 = write_token_dataset(tmp_path / "ds2", other, tokens, labels, classes=["cat", "dog"])
    assert main(["prior", "eval", prior_dir, str(ds2)]) == 1
    err = capsys.readouterr().err.strip()
    assert "tok2" in err and "trained on tokens of" in err and len(err.splitlines()) == 1
    assert main(["prior", "sample", prior_dir, "--decode", "--tokenizer", str(tmp_path / "tok2"), "-o", str(tmp_path / "y")]) == 1
    assert main(["encode", str(tmp_path / "png" / "00000.png"), "-m", str(tmp_path / "tok2"), "--size", "32", "-o", str(tmp_path / "o.json")]) == 0
    assert main(["prior", "eval", prior_dir, str(tmp_path / "o.json")]) == 1
    assert "trained on tokens of" in capsys.readouterr().err


def test_token_data_from_parquet_with_labels(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer("vqvae2")
    toks = tok.encode([np.full((32, 32, 3), v, np.uint8) for v in (10, 100, 200)], size=32)
    data = load_token_data(write_token_dataset(tmp_path / "ds", tok, toks, labels=[1, 0, 1], classes=["a", "b"]))
    assert data.grid == (4, 4, 8, 8) and data.codebook_sizes == (64, 64) and data.classes == ("a", "b")
    assert data.labels.tolist() == [1, 0, 1] and data.tokenizer["config_hash"] == config_hash(tok.config)
    for a, b in zip(data.levels(), toks):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_end_to_end_through_tokenize_dataset_and_cli(tmp_path, bundled, capsys):
    """The whole path on files: PNG folders -> `imagetok tokenize-dataset` (labels added to its shards) ->
    `imagetok prior train` (300 steps) -> `prior sample --decode` per class -> PNGs of that colour."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    for split, seed in (("train", 0), ("test", 100)):
        for i, (name, colour) in enumerate(COLOURS.items()):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for j, a in enumerate(colour_images(colour, 100 if split == "train" else 25, seed + i)):
                Image.fromarray(a).save(folder / f"{j:03d}.png")
        assert main(["tokenize-dataset", str(tmp_path / split), "--out", str(tmp_path / f"{split}-tok"), "--size", "32"]) == 0
        out = tmp_path / f"{split}-tok"
        for shard in (out / "data").glob("*.parquet"):  # what `tokenize-dataset --labels folder` records
            table = pq.read_table(shard)
            labels = [list(COLOURS).index(k.split("/")[0]) for k in table.column("key").to_pylist()]
            pq.write_table(table.append_column("label", pa.array(labels, pa.int64())), shard)
        info = json.loads((out / "dataset_info.json").read_text())
        (out / "dataset_info.json").write_text(json.dumps({**info, "classes": list(COLOURS)}))
    capsys.readouterr()
    assert main(["prior", "train", str(tmp_path / "train-tok"), "--out", str(tmp_path / "run"), "--steps", "300", "--width", "64",
                 "--depth", "2", "--heads", "4", "--batch-size", "16", "--lr", "0.003", "--device", "cpu",
                 "--eval-data", str(tmp_path / "test-tok")]) == 0  # fmt: skip
    prior_dir = capsys.readouterr().out.strip()
    for name in COLOURS:
        assert main(["prior", "sample", prior_dir, "-n", "8", "--class", name, "--top-k", "20", "--decode", "-o", str(tmp_path / name)]) == 0
        rgb = np.mean([np.asarray(Image.open(p), float).mean(axis=(0, 1)) for p in (tmp_path / name).glob("*.png")], axis=0)
        assert (rgb[0] > rgb[2] + 25) if name == "red" else (rgb[2] > rgb[0] + 25), (name, rgb)
    held_out = load_token_data(tmp_path / "test-tok")
    assert main(["prior", "eval", prior_dir, str(tmp_path / "test-tok"), "--json"]) == 0
    bpt = json.loads(capsys.readouterr().out)["bits_per_token"]
    assert bpt < unigram_bits(held_out.tokens) - 2.0


def pattern_tokens(n: int, grid: tuple[int, int], k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids whose tokens follow from position, label and one random bit: ``(pos + 5 * label + bit) % k``."""
    g = torch.Generator().manual_seed(seed)
    labels, bits = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    pos = torch.arange(grid[0] * grid[1]).reshape(grid)
    return (pos[None] + 5 * labels[:, None, None] + bits[:, None, None]) % k, labels


@pytest.mark.parametrize("arch", ["transformer", "pixelcnn", "vqvae2"])
def test_every_arch_learns_held_out_structure(tmp_path, arch):
    """40 steps on structured grids: held-out bits per token far below the tokens' unigram entropy."""
    def make(seed):
        top, labels = pattern_tokens(64, (2, 2) if arch == "vqvae2" else (4, 4), 16, seed)
        if arch != "vqvae2":
            return TokenData.from_tensors(top, labels, codebook_sizes=(16,))
        bottom = (pattern_tokens(64, (4, 4), 16, seed)[0] + top.repeat_interleave(2, 1).repeat_interleave(2, 2)) % 16
        return TokenData.from_tensors((top, bottom), labels, codebook_sizes=(16, 16))

    train, held_out = make(0), make(1)
    out = train_prior({"out_dir": str(tmp_path / "run"), "arch": arch, "width": 32, "depth": 2, "heads": 2, "steps": 40,
                       "batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "progress": False, "device": "cpu"}, data=train)  # fmt: skip
    prior = Prior.from_pretrained(out)
    assert prior.config.arch == arch and prior.num_classes == 2
    assert prior.bits_per_token(held_out) < min(1.5, unigram_bits(held_out.tokens) - 2.0)


def test_rejection_sampling_with_token_classifier(tmp_path):
    """An unconditional prior of a two-class mixture + a token classifier: rejection sampling returns
    only samples that follow the requested class's pattern."""
    from imagetok.errors import InputError
    from imagetok.prior import TokenClassifier

    tokens, labels = pattern_tokens(96, (4, 4), 16, 0)
    data = TokenData.from_tensors(tokens, labels, codebook_sizes=(16,), classes=["zero", "one"])
    held_tokens, held_labels = pattern_tokens(64, (4, 4), 16, 1)
    held_out = TokenData.from_tensors(held_tokens, held_labels, codebook_sizes=(16,), classes=["zero", "one"])
    clf = TokenClassifier.fit(data, steps=60, width=16)
    assert clf.accuracy(held_out) > 0.95
    clf = TokenClassifier.from_pretrained(clf.save_pretrained(tmp_path / "clf"))
    assert clf.accuracy(held_out) > 0.95 and clf.classes == ("zero", "one")
    out = train_prior({"out_dir": str(tmp_path / "run"), "width": 32, "depth": 2, "heads": 2, "steps": 40, "conditional": False,
                       "batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "progress": False, "device": "cpu"}, data=data)  # fmt: skip
    prior = Prior.from_pretrained(out)
    assert prior.num_classes == 0
    plain = prior.sample(32, generator=0, top_k=3)
    first = plain[:, 0, 0]
    assert 0.15 < float(((first == 5) | (first == 6)).double().mean()) < 0.85  # a mixture of both classes
    chosen = prior.sample(12, generator=0, top_k=3, accept=clf.acceptor("one", 0.9), batch_size=8, max_tries=20)
    assert chosen.shape == (12, 4, 4)
    pos = torch.arange(16).reshape(4, 4)

    def matches(t, label):  # positions following class `label`'s pattern (either bit)
        return ((t == (pos + 5 * label) % 16) | (t == (pos + 5 * label + 1) % 16)).flatten(1).sum(1)

    assert bool((matches(chosen, 1) > matches(chosen, 0)).all())
    assert bool((matches(plain, 0) > matches(plain, 1)).any())  # without rejection, class 0 shows up
    assert bool((clf.predict_proba(chosen)[:, 1] >= 0.9).all())
    with pytest.raises(InputError, match="accepted 0 of 2 samples in 3 batches"):
        prior.sample(2, generator=0, accept=lambda t: torch.zeros(len(t), dtype=torch.bool), max_tries=3)
    with pytest.raises(InputError, match="one bool per sample"):
        prior.sample(2, generator=0, accept=lambda t: torch.ones(1, dtype=torch.bool))
    with pytest.raises(InputError, match=r"unknown class 'two'; known classes: \['zero', 'one'\]"):
        clf.acceptor("two")

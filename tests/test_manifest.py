"""The weights manifest: schema, names, every entry's architecture and parameter count, lookup."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from imagetok import Tokenizer, registry
from imagetok.card import model_card
from imagetok.errors import ConfigError, UnknownModelError
from imagetok.models import build_model

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "weights_manifest.json"
ZOO = {  # anchors.md section 6.7: the public zoo every release must list
    "vqgan-f16-1024.imagenet-taming",
    "vqgan-f16-16384.imagenet-taming",
    "vqgan-gumbel-f8-8192.openimages-taming",
    "vqgan-f4-8192.openimages-ldm",
    "vqgan-f8-16384.openimages-ldm",
    "vqgan-f8-256.openimages-ldm",
    "vqgan-f16-16384.openimages-ldm",
    "vqgan-f16-16384.imagenet-llamagen",
    "vqgan-f8-16384.imagenet-llamagen",
    "vqvae2-f8f4-512.ffhq-rosinality",
    "vqgan-f16-8192.amused-512",
}


def raw_manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def tiny_entry(**overrides) -> dict:
    cfg = {"family": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
           "z_channels": 8, "embed_dim": 8, "n_embed": 64, "resolution": 32}
    entry = {
        "name": "vqgan-f2-64.tiny-test",
        "description": "tiny",
        "config": cfg,
        "preprocess": {"size": 32, "input_range": [-1.0, 1.0], "resize": "shorter_side", "crop": "center", "interpolation": "bicubic"},
        "tokens": {"grids": [[16, 16]], "vocab_sizes": [64]},
        "source": {"kind": "hub", "repo_id": "org/tiny", "filename": "model.safetensors"},
        "license": {"code": "MIT", "weights": "MIT"},
        "metrics": [{"dataset": "d", "resolution": 32, "protocol": "p", "source": "s", "values": {"psnr": 20.0}}],
        "num_params": 1,
    }
    for key, value in overrides.items():
        target, *path = key.split(".")
        if not path:
            entry[target] = value
        else:
            d = entry[target]
            for p in path[:-1]:
                d = d[p]
            d[path[-1]] = value
    return entry


# ----------------------------------------------------------------------------- the shipped file
def test_manifest_names_unique_and_cover_the_zoo():
    names = [m["name"] for m in raw_manifest()["models"]]
    assert len(names) == len(set(names))
    assert ZOO <= set(names)
    assert registry.list_pretrained() == sorted(names)
    assert Tokenizer.list_pretrained() == sorted(names)
    for name in names:
        entry = registry.get_entry(name)
        assert registry.NAME_RE.match(name) and name.startswith(entry.family + "-")


def test_manifest_location_is_the_repo_file_or_the_env_override(tmp_path, monkeypatch):
    # source tree: the top-level file; installed wheel: the copy inside the package
    assert registry.manifest_location().read_bytes() == MANIFEST.read_bytes()
    custom = tmp_path / "m.json"
    custom.write_text(json.dumps({"format_version": 1, "models": [tiny_entry()]}))
    monkeypatch.setenv(registry.MANIFEST_ENV, str(custom))
    assert registry.list_pretrained() == ["vqgan-f2-64.tiny-test"]


def test_every_entry_num_params_matches_its_architecture():
    """Build each architecture on the meta device (no memory, no init) and count parameters."""
    for entry in registry.load_manifest().values():
        with torch.device("meta"):
            model = build_model(entry.config)
        assert sum(p.numel() for p in model.parameters()) == entry.num_params, entry.name


def test_small_entry_builds_and_tokens_match_the_spec():
    entry = registry.get_entry("vqvae2-f8f4-512.ffhq-rosinality")
    tok = Tokenizer.from_config(entry.config, seed=0)
    assert sum(p.numel() for p in tok.model.parameters()) == entry.num_params == 1454403
    top, bottom = tok.encode_pixels(torch.rand(1, 3, 32, 32))
    assert (top.shape[1:], bottom.shape[1:]) == ((4, 4), (8, 8))
    assert tok.grid_shapes(entry.preprocess.size) == entry.tokens.grids == ((32, 32), (64, 64))
    assert tok.codebook_sizes == entry.tokens.vocab_sizes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_entry_builds_encodes_and_decodes(name):
    """Real weights in memory (55-146 M parameters each): a few seconds per entry."""
    torch.manual_seed(0)
    entry = registry.get_entry(name)
    tok = Tokenizer.from_config(entry.config)
    assert sum(p.numel() for p in tok.model.parameters()) == entry.num_params
    f = max(tok.downsample_factors)
    x = torch.rand(1, 3, 2 * f, 2 * f)
    tokens = tok.encode_pixels(x)
    levels = tokens if isinstance(tokens, tuple) else (tokens,)
    for t, grid, k in zip(levels, entry.tokens.grids, entry.tokens.vocab_sizes):
        scale = entry.preprocess.size // (2 * f)
        assert tuple(t.shape[1:]) == (grid[0] // scale, grid[1] // scale)
        assert 0 <= int(t.min()) and int(t.max()) < k
    assert tok.decode_pixels(tokens).shape == x.shape


def test_entries_are_consistent_with_the_converters():
    from imagetok.convert import FORMATS

    assert set(registry.CONVERTERS) <= set(FORMATS)
    for entry in registry.load_manifest().values():
        s = entry.source
        assert (s.converter is None) == (s.format == "imagetok")
        assert s.sha256 is None or registry.SHA256_RE.match(s.sha256)
        assert s.revision is None or registry.COMMIT_RE.match(s.revision)
        assert entry.preprocess.input_range == entry.config.input_range
        for m in entry.metrics:
            assert m.protocol and m.source and m.values
        assert entry.citation and entry.license.code


# ----------------------------------------------------------------------------------- schema
def test_tiny_entry_is_valid():
    entry = registry.parse_entry(tiny_entry())
    assert (entry.arch, entry.tag, entry.family) == ("vqgan-f2-64", "tiny-test", "vqgan")
    assert entry.metrics[0].values == {"psnr": 20.0}


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"extra": 1}, "unknown key(s) ['extra']"),
        ({"name": "VQGAN_f16"}, "family-variant.tag"),
        ({"name": "vqvae-f2-64.tiny"}, "must start with its family 'vqgan'"),
        ({"config.n_embedd": 3}, "n_embedd"),
        ({"tokens.grids": [[8, 8]]}, "do not follow from the config"),
        ({"tokens.vocab_sizes": [65]}, "do not follow from the config"),
        ({"preprocess.input_range": [0.0, 1.0]}, "differs from config input_range"),
        ({"preprocess.size": 33}, "not a multiple"),
        ({"source.sha256": "abc"}, "64 lower-case hex"),
        ({"source.revision": "main"}, "pinned 40-hex commit"),
        ({"source.kind": "ftp"}, "source.kind must be one of"),
        ({"source.format": "lightning-ckpt"}, "needs a converter"),
        ({"source.repo_id": None}, "needs repo_id"),
        ({"source.converter": "dalle", "source.format": "pickle"}, "converter must be one of"),
        ({"metrics": [{"dataset": "d", "protocol": "p", "source": "s", "values": {"fidd": 1.0}}]}, "fidd"),
        ({"metrics": [{"dataset": "d", "source": "s", "values": {"rfid": 1.0}}]}, "missing key(s) ['protocol']"),
        ({"num_params": 0}, "num_params must be a positive integer"),
        ({"license": {"code": "MIT"}}, "missing key(s) ['weights']"),
    ],
)
def test_malformed_entries_are_rejected(overrides, needle):
    with pytest.raises(ConfigError) as e:
        registry.parse_entry(tiny_entry(**copy.deepcopy(overrides)))
    assert needle in str(e.value)


def test_duplicate_names_and_bad_files_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="duplicate model name"):
        registry.parse_manifest({"format_version": 1, "models": [tiny_entry(), tiny_entry()]})
    with pytest.raises(ConfigError, match="format_version"):
        registry.parse_manifest({"format_version": 2, "models": []})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON manifest"):
        registry.load_manifest(bad)
    with pytest.raises(ConfigError, match="not found"):
        registry.load_manifest(tmp_path / "missing.json")


def test_bundled_source_kind(tmp_path):
    entry = registry.parse_entry(tiny_entry(source={"kind": "bundled"}))
    assert entry.source.kind == "bundled" and entry.source.format == "imagetok"
    with pytest.raises(ConfigError, match="bundled"):
        registry.parse_entry(tiny_entry(source={"kind": "bundled", "repo_id": "a/b"}))


# ------------------------------------------------------------------------------- name lookup
def test_parse_name_forms(tmp_path):
    ref = registry.parse_name("hf-hub:org/repo@v1.0")
    assert (ref.kind, ref.repo_id, ref.revision) == ("hub", "org/repo", "v1.0")
    assert registry.parse_name("org/repo").repo_id == "org/repo"
    assert registry.parse_name(f"local-dir:{tmp_path}").path == tmp_path
    assert registry.parse_name(str(tmp_path)).kind == "local"
    ref = registry.parse_name("vqgan-f16-1024.imagenet-taming")
    assert ref.kind == "manifest" and ref.entry.config.n_embed == 1024
    assert registry.parse_name("vqgan-f4-8192").entry.name == "vqgan-f4-8192.openimages-ldm"  # arch with one tag
    with pytest.raises(UnknownModelError, match="several pretrained tags"):
        registry.get_entry("vqgan-f16-16384")
    with pytest.raises(UnknownModelError, match="empty revision"):
        registry.parse_name("hf-hub:org/repo@")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownModelError) as e:
        registry.parse_name("vqgan-f16-1024.imagenet-tamming")
    msg = str(e.value)
    assert "did you mean 'vqgan-f16-1024.imagenet-taming'" in msg and "imagetok list" in msg
    with pytest.raises(UnknownModelError, match="did you mean"):
        Tokenizer.from_pretrained("vqgan_f16_1024")  # no such folder, not a manifest name or repo id


def test_list_filter_and_markdown_table():
    assert registry.list_pretrained("*llamagen") == ["vqgan-f16-16384.imagenet-llamagen", "vqgan-f8-16384.imagenet-llamagen"]
    table = registry.markdown_table()
    assert all(f"`{n}`" in table for n in ZOO)
    assert "rfid 2.19" in table and "72.1 M" in table


def test_card_from_entry_carries_licence_metrics_protocol_and_usage():
    entry = registry.get_entry("vqgan-f16-1024.imagenet-taming")
    card = model_card("hf-hub:org/x", entry.config, **entry.card_kwargs())
    front = card.split("---")[1]
    assert "library_name: imagetok" in front and "license: other" in front and "- imagenet-1k" in front
    assert "Protocol: MaskBit re-evaluation" in card and "| codebook_usage | 100.0 % |" in card
    assert "arXiv:2012.09841" in card and 'Tokenizer.from_pretrained("hf-hub:org/x")' in card
    llamagen = model_card("n", registry.get_entry("vqgan-f16-16384.imagenet-llamagen").config,
                          **registry.get_entry("vqgan-f16-16384.imagenet-llamagen").card_kwargs())
    assert "license: mit" in llamagen


@pytest.mark.slow
def test_wheel_ships_the_manifest(tmp_path):
    """A plain (non-editable) install must find the manifest: hatch force-includes it."""
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("hatchling")  # build offline, without build isolation
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("imagetok-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("imagetok/weights_manifest.json") == MANIFEST.read_bytes()

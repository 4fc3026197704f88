"""imagetok.hub with the real huggingface_hub client against a local Hub look-alike server.

Nothing here can reach huggingface.co: importing ``hub_server`` points huggingface_hub at a dead
local endpoint, offline, with a throwaway HF_HOME before it is imported, and the ``hf_hub`` fixture
redirects it to the loopback server with a fresh cache per test.
"""
# ruff: noqa: F811  (pytest fixtures imported from hub_server are test-function parameters)

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub, git_blob_sha1, hf_hub, hub_server  # noqa: F401  (fixtures)
from safetensors.torch import save_file

from imagetok import Tokenizer, registry
from imagetok.cli import main
from imagetok.config import config_to_dict
from imagetok.errors import ChecksumError, ConfigError, HubError, ImagetokError, UnknownModelError, WeightsError

torch.set_num_threads(1)

TINY = {"family": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "z_channels": 8, "embed_dim": 8, "n_embed": 64, "resolution": 32}


@pytest.fixture(scope="module")
def tiny():
    return Tokenizer.from_config(TINY, seed=0)


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def folder_bytes(tok: Tokenizer, tmp: Path) -> dict[str, bytes]:
    d = tok.save_pretrained(tmp)
    return {n: (d / n).read_bytes() for n in ("config.json", "model.safetensors")}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def use_manifest(monkeypatch, tmp_path: Path, *entries: dict) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format_version": 1, "models": list(entries)}))
    monkeypatch.setenv(registry.MANIFEST_ENV, str(path))


def entry(name: str, source: dict, config: dict = TINY) -> dict:
    n_params = sum(p.numel() for p in Tokenizer.from_config(config).model.parameters())
    return {
        "name": name, "description": "test entry", "config": config,
        "preprocess": {"size": 32, "input_range": [-1.0, 1.0], "resize": "shorter_side", "crop": "center"},
        "tokens": {"grids": [[16, 16]], "vocab_sizes": [64]}, "source": source,
        "license": {"code": "MIT", "weights": "MIT"}, "num_params": n_params,
    }


def cache_files(root: str | Path, pattern: str) -> list[Path]:
    return sorted(Path(root).rglob(pattern))


# ------------------------------------------------------------------------------ push and pull
def test_push_pull_encode_through_the_real_client(hf_hub, tiny, pixels):
    url = tiny.push_to_hub("alice/tiny", commit_message="first upload")
    assert url.startswith(hf_hub.endpoint + "/alice/tiny/commit/")
    files = hf_hub.files("alice/tiny")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: imagetok\n") and 'from_pretrained("hf-hub:alice/tiny")' in card
    assert json.loads(files["config.json"]) == config_to_dict(tiny.config)

    pulled = Tokenizer.from_pretrained("hf-hub:alice/tiny")
    assert pulled.name == "hf-hub:alice/tiny"
    ids = tiny.encode_pixels(pixels)
    assert torch.equal(pulled.encode_pixels(pixels), ids)
    assert torch.equal(pulled.decode_pixels(ids), tiny.decode_pixels(ids))
    agents = {h.get("user-agent", "") for m, p, h in hf_hub.requests if "/resolve/" in p}
    assert agents and all(a.startswith("imagetok/") for a in agents)

    bf16 = Tokenizer.from_pretrained("alice/tiny", dtype=torch.bfloat16)  # bare repo id works too
    assert bf16.dtype == torch.bfloat16 and bf16.model.quantize.embedding.weight.dtype == torch.float32


def test_branches_pull_requests_revisions_and_private_repos(hf_hub, tiny, pixels, monkeypatch, tmp_path):
    other = Tokenizer.from_config(TINY, seed=1)
    tiny.push_to_hub("alice/rev")
    main_commit = hf_hub.repos["alice/rev"].refs["main"]
    other.push_to_hub("alice/rev", branch="dev")
    assert hf_hub.repos["alice/rev"].refs["main"] == main_commit  # main untouched
    dev = Tokenizer.from_pretrained("hf-hub:alice/rev@dev")
    assert torch.equal(dev.encode_pixels(pixels), other.encode_pixels(pixels))
    pinned = Tokenizer.from_pretrained("hf-hub:alice/rev", revision=main_commit)
    assert torch.equal(pinned.encode_pixels(pixels), tiny.encode_pixels(pixels))

    pr_url = other.push_to_hub("alice/rev", create_pr=True)
    assert pr_url.endswith("/alice/rev/discussions/1")
    assert "refs/pr/1" in hf_hub.repos["alice/rev"].refs and hf_hub.repos["alice/rev"].refs["main"] == main_commit

    with pytest.raises(HubError) as e:
        Tokenizer.from_pretrained("hf-hub:alice/rev@nope")
    assert "revision 'nope' does not exist" in str(e.value) and "dev, main" in str(e.value)

    tiny.push_to_hub("alice/secret", private=True)
    assert hf_hub.repos["alice/secret"].private
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="not logged in"):
        Tokenizer.from_pretrained("hf-hub:alice/secret")
    with pytest.raises(HubError, match="hf auth login"):  # pushing needs a token too
        tiny.push_to_hub("alice/another")
    with pytest.raises(ImagetokError, match="either branch or create_pr"):
        tiny.push_to_hub("alice/rev", branch="x", create_pr=True)


def test_cli_push_and_list(hf_hub, tiny, tmp_path, capsys):
    folder = tiny.save_pretrained(tmp_path / "model")
    assert main(["push", str(folder), "bob/cli", "--branch", "exp", "-m", "from the CLI"]) == 0
    url = capsys.readouterr().out.strip()
    commit = hf_hub.repos["bob/cli"].refs["exp"]
    assert url.endswith(commit) and hf_hub.repos["bob/cli"].messages[commit] == "from the CLI"
    assert hf_hub.files("bob/cli", "exp")["README.md"] == (folder / "README.md").read_bytes()  # kept as written

    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "bob/cli"]) == 1
    assert "config.json not found" in capsys.readouterr().err

    assert main(["list", "--filter", "*ldm"]) == 0
    out = capsys.readouterr().out
    assert "vqgan-f4-8192.openimages-ldm" in out and "manual download" in out
    assert main(["list", "--json", "-f", "vqvae2*"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["num_params"] == 1454403


# ------------------------------------------------------------------------- manifest + sha256
def test_manifest_entry_checks_sha256_on_download_and_cache_hits(hf_hub, tiny, pixels, tmp_path, monkeypatch):
    files = folder_bytes(tiny, tmp_path / "src")
    hf_hub.commit("zoo/tiny", files)
    good = sha256(files["model.safetensors"])
    use_manifest(monkeypatch, tmp_path, entry("vqgan-f2-64.tiny-zoo", {
        "kind": "hub", "repo_id": "zoo/tiny", "filename": "model.safetensors", "sha256": good}))

    tok = Tokenizer.from_pretrained("vqgan-f2-64.tiny-zoo")
    assert tok.name == "vqgan-f2-64.tiny-zoo"
    assert torch.equal(tok.encode_pixels(pixels), tiny.encode_pixels(pixels))

    from huggingface_hub import constants

    (blob,) = [p for p in cache_files(constants.HF_HUB_CACHE, "blobs/*") if p.read_bytes() == files["model.safetensors"]]
    corrupt = files["model.safetensors"][:-10] + b"0123456789"  # same size, different bytes
    blob.write_bytes(corrupt)
    with pytest.raises(ChecksumError) as e:
        Tokenizer.from_pretrained("vqgan-f2-64.tiny-zoo")
    msg = str(e.value)
    assert f"expected {good}, got {sha256(corrupt)}" in msg and "snapshots" in msg and "model.safetensors" in msg
    assert not blob.exists(), "the corrupt blob must not stay in the cache"
    downloads = hf_hub.count("GET", "/zoo/tiny/resolve/")
    tok = Tokenizer.from_pretrained("vqgan-f2-64.tiny-zoo")  # fetched again, verified, used
    assert hf_hub.count("GET", "/zoo/tiny/resolve/") == downloads + 1
    assert torch.equal(tok.encode_pixels(pixels), tiny.encode_pixels(pixels))

    Tokenizer.from_pretrained("vqgan-f2-64.tiny-zoo", cache_dir=tmp_path / "own-cache")
    assert cache_files(tmp_path / "own-cache", "models--zoo--tiny/snapshots/*/model.safetensors")
    tok.push_to_hub("zoo/copy")  # a manifest model's card carries the entry's metadata
    card = hf_hub.files("zoo/copy")["README.md"].decode()
    assert "license: mit" in card and "- tiny-zoo" in card and "test entry" in card


def test_sha256_mismatch_on_download_is_refused(hf_hub, tiny, tmp_path, monkeypatch):
    files = folder_bytes(tiny, tmp_path / "src")
    hf_hub.commit("zoo/changed", files)
    wrong = sha256(b"the published file")
    use_manifest(monkeypatch, tmp_path, entry("vqgan-f2-64.tiny-changed", {
        "kind": "hub", "repo_id": "zoo/changed", "filename": "model.safetensors", "sha256": wrong}))
    with pytest.raises(ChecksumError) as e:
        Tokenizer.from_pretrained("vqgan-f2-64.tiny-changed")
    msg = str(e.value)
    assert f"expected {wrong}, got {sha256(files['model.safetensors'])}" in msg and "was not used" in msg
    from huggingface_hub import constants

    assert not [p for p in cache_files(constants.HF_HUB_CACHE, "*") if p.is_file() and p.read_bytes() == files["model.safetensors"]]


def taming_checkpoint(tok: Tokenizer) -> bytes:
    """A Lightning-style taming checkpoint: state_dict with training-only ``loss.*`` tensors."""
    import io

    state = {k: v.clone() for k, v in tok.model.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    buf = io.BytesIO()
    torch.save({"state_dict": state, "global_step": 10, "epoch": 1}, buf)
    return buf.getvalue()


def test_foreign_checkpoint_is_converted_once_and_cached(hf_hub, tiny, pixels, tmp_path, monkeypatch):
    import imagetok.convert as convert_mod

    ckpt = taming_checkpoint(tiny)
    hf_hub.commit("taming/tiny", {"ckpts/last.ckpt": ckpt})
    use_manifest(monkeypatch, tmp_path, entry("vqgan-f2-64.tiny-taming", {
        "kind": "hub", "repo_id": "taming/tiny", "filename": "ckpts/last.ckpt", "format": "lightning-ckpt",
        "converter": "taming", "sha256": sha256(ckpt)}))
    calls = []
    real = convert_mod.convert
    monkeypatch.setattr(convert_mod, "convert", lambda *a, **k: calls.append(k["from_format"]) or real(*a, **k))

    tok = Tokenizer.from_pretrained("vqgan-f2-64.tiny-taming")
    assert calls == ["taming"] and tok.name == "vqgan-f2-64.tiny-taming"
    assert torch.equal(tok.encode_pixels(pixels), tiny.encode_pixels(pixels))
    from huggingface_hub import constants

    commit = hf_hub.repos["taming/tiny"].refs["main"]
    folder = Path(constants.HF_HOME) / "imagetok-converted" / "vqgan-f2-64.tiny-taming" / commit
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "imagetok-source.json"}
    assert json.loads((folder / "imagetok-source.json").read_text())["source_sha256"] == sha256(ckpt)

    again = Tokenizer.from_pretrained("vqgan-f2-64.tiny-taming")  # cached: no second conversion
    assert calls == ["taming"] and torch.equal(again.encode_pixels(pixels), tiny.encode_pixels(pixels))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: still served from the caches
    n = len(hf_hub.requests)
    assert Tokenizer.from_pretrained("vqgan-f2-64.tiny-taming").name == "vqgan-f2-64.tiny-taming"
    assert len(hf_hub.requests) == n and calls == ["taming"]
    for p in cache_files(constants.HF_HUB_CACHE, "models--taming--tiny"):  # even with the original gone
        shutil.rmtree(p)
    assert Tokenizer.from_pretrained("vqgan-f2-64.tiny-taming").name == "vqgan-f2-64.tiny-taming"
    assert calls == ["taming"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    data = (folder / "model.safetensors").read_bytes()  # a corrupt converted copy is rebuilt, not used
    (folder / "model.safetensors").write_bytes(data[:-8] + b"\0" * 8)
    rebuilt = Tokenizer.from_pretrained("vqgan-f2-64.tiny-taming")
    assert calls == ["taming", "taming"] and (folder / "model.safetensors").read_bytes() == data
    assert torch.equal(rebuilt.encode_pixels(pixels), tiny.encode_pixels(pixels))


def test_failed_conversion_names_the_file_and_the_manual_command(hf_hub, tmp_path, monkeypatch):
    hf_hub.commit("taming/broken", {"last.ckpt": b"not a checkpoint"})
    use_manifest(monkeypatch, tmp_path, entry("vqgan-f2-64.tiny-broken", {
        "kind": "hub", "repo_id": "taming/broken", "filename": "last.ckpt", "format": "lightning-ckpt", "converter": "taming"}))
    with pytest.raises(ImagetokError) as e:
        Tokenizer.from_pretrained("vqgan-f2-64.tiny-broken")
    assert "imagetok convert" in str(e.value) and "last.ckpt" in str(e.value)
    from huggingface_hub import constants

    assert not list((Path(constants.HF_HOME) / "imagetok-converted").rglob("model.safetensors"))


def test_url_sources_explain_the_manual_route():
    with pytest.raises(HubError) as e:
        Tokenizer.from_pretrained("vqgan-f4-8192.openimages-ldm")
    msg = str(e.value)
    assert "https://ommer-lab.com/files/latent-diffusion/vq-f4.zip" in msg and "imagetok convert FILE --from taming" in msg


# ------------------------------------------------------------------------------- bad repos
def test_bad_repositories_give_clear_errors(hf_hub, tiny, tmp_path):
    files = folder_bytes(tiny, tmp_path / "src")
    hf_hub.commit("bad/nothing", {"notes.txt": b"hello"})
    with pytest.raises(HubError) as e:
        Tokenizer.from_pretrained("hf-hub:bad/nothing")
    assert "has no config.json, so it is not an imagetok model" in str(e.value) and "notes.txt" in str(e.value)

    cfg = json.loads(files["config.json"])
    hf_hub.commit("bad/keys", {"config.json": json.dumps({**cfg, "n_embedd": 3}).encode(), "model.safetensors": files["model.safetensors"]})
    with pytest.raises(ConfigError, match="n_embedd"):
        Tokenizer.from_pretrained("hf-hub:bad/keys")

    hf_hub.commit("bad/truncated", {"config.json": files["config.json"], "model.safetensors": files["model.safetensors"][:1000]})
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        Tokenizer.from_pretrained("hf-hub:bad/truncated")

    hf_hub.commit("bad/pickle", {"config.json": files["config.json"], "model.safetensors": b"PK\x03\x04 a zip, not safetensors"})
    with pytest.raises(WeightsError):
        Tokenizer.from_pretrained("hf-hub:bad/pickle")

    hf_hub.commit("bad/noweights", {"config.json": files["config.json"]})
    with pytest.raises(HubError, match="no model.safetensors"):
        Tokenizer.from_pretrained("hf-hub:bad/noweights")

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    hf_hub.commit("bad/mismatch", {"config.json": files["config.json"], "model.safetensors": (tmp_path / "other.safetensors").read_bytes()})
    with pytest.raises(WeightsError, match="missing keys"):
        Tokenizer.from_pretrained("hf-hub:bad/mismatch")

    with pytest.raises(HubError, match="not found"):
        Tokenizer.from_pretrained("hf-hub:bad/absent")
    (tmp_path / "last.ckpt").write_bytes(b"x")
    with pytest.raises(WeightsError, match="imagetok convert"):
        Tokenizer.from_pretrained(tmp_path / "last.ckpt")
    with pytest.raises(UnknownModelError):
        Tokenizer.from_pretrained("hf-hub:not a repo")


# ----------------------------------------------------------------------------- offline cache
def prefill_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Write the HF cache layout by hand: blobs/<etag>, snapshots/<commit>/<file> -> blob, refs/main."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        etag = git_blob_sha1(data)
        (repo / "blobs").mkdir(exist_ok=True)
        (repo / "blobs" / etag).write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / etag, link.parent))
    return commit


@pytest.fixture
def offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    home = tmp_path / "offline-home"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


def test_offline_mode_reads_a_prefilled_cache(offline, tiny, pixels, tmp_path, monkeypatch):
    files = folder_bytes(tiny, tmp_path / "src")
    prefill_cache(offline, "cached/tiny", files)
    tok = Tokenizer.from_pretrained("hf-hub:cached/tiny")
    assert torch.equal(tok.encode_pixels(pixels), tiny.encode_pixels(pixels))

    with pytest.raises(HubError) as e:
        Tokenizer.from_pretrained("hf-hub:cached/absent")
    assert "HF_HUB_OFFLINE=1" in str(e.value) and str(offline) in str(e.value)

    use_manifest(monkeypatch, tmp_path, entry("vqgan-f2-64.tiny-offline", {
        "kind": "hub", "repo_id": "cached/tiny", "filename": "model.safetensors", "sha256": "0" * 64}))
    with pytest.raises(ChecksumError) as e:  # cache hit, wrong content: refused and evicted
        Tokenizer.from_pretrained("vqgan-f2-64.tiny-offline")
    assert "0" * 64 in str(e.value) and sha256(files["model.safetensors"]) in str(e.value)
    assert not cache_files(offline, "snapshots/*/model.safetensors")


def test_network_down_names_offline_mode(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda s: None))  # skip the 23 s of back-off
    with pytest.raises(HubError) as e:
        Tokenizer.from_pretrained("hf-hub:org/model")
    msg = str(e.value)
    assert "could not reach the Hugging Face Hub" in msg and dead in msg and "HF_HUB_OFFLINE=1" in msg


def test_import_does_not_load_huggingface_hub():
    code = "import sys, imagetok, imagetok.hub, imagetok.registry; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------- one name parser, one check
def test_every_spelling_of_the_bundled_model_gets_the_sha256_check(tmp_path, monkeypatch):
    bundled = registry.entry_to_dict(registry.get_entry(registry.BUNDLED_NAME))
    good = Tokenizer.from_pretrained()
    assert good.provenance["weights_sha256"] == bundled["source"]["sha256"]
    assert good.provenance["revision"] is None and good.provenance["name"] == registry.BUNDLED_NAME
    bundled["source"]["sha256"] = "0" * 64  # the manifest now disagrees with the shipped file
    use_manifest(monkeypatch, tmp_path, bundled)
    for spelling in (None, registry.BUNDLED_NAME, registry.BUNDLED_NAME.split(".")[0]):
        with pytest.raises(ChecksumError, match="sha256 mismatch"):
            Tokenizer.from_pretrained(spelling)


def test_resolve_returns_a_folder_and_never_builds_a_model(hf_hub, tiny, tmp_path):
    from imagetok import hub

    files = folder_bytes(tiny, tmp_path / "src")
    hf_hub.commit("carol/tiny", files)
    folder = hub.resolve("hf-hub:carol/tiny")
    assert folder.is_dir() and (folder / "config.json").read_bytes() == files["config.json"]
    commit = hf_hub.repos["carol/tiny"].refs["main"]
    assert hub.revision_of(folder) == commit
    tok = Tokenizer.from_pretrained("hf-hub:carol/tiny")
    assert tok.provenance == {"name": "hf-hub:carol/tiny", "config_hash": tiny.provenance["config_hash"],
                              "weights_sha256": sha256(files["model.safetensors"]), "revision": commit}
    assert tiny.provenance["weights_sha256"] == sha256(files["model.safetensors"])  # in memory: as saved in float32
    assert hub.resolve(str(tmp_path / "src")) == tmp_path / "src"  # a local folder is returned as it is

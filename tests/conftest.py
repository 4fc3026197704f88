"""Shared fixtures: tiny configs of every model family, a tiny-tokenizer factory, test images.

Everything here is small enough that building a model and encoding a 32-64 px image takes
milliseconds on one CPU core.

Fixtures:
    tiny_name / tiny_config: parametrised over :data:`TINY_CONFIGS` (name / config dict).
    tiny_configs: the whole ``{name: config dict}`` mapping.
    tiny_tokenizer: factory ``tiny_tokenizer(name="vqgan", seed=0, spread=True) -> Tokenizer``.
    make_image: factory ``make_image(h=48, w=40, seed=0) -> uint8 [h, w, 3]`` smooth "photo".
    tiny_model_dir: factory ``tiny_model_dir(name="vqgan") -> Path`` of a saved tiny model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imagetok import Tokenizer

torch.set_num_threads(1)  # the test machine is shared; tiny models gain nothing from threads

_VQGAN = dict(
    family="vqgan", ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[],
    z_channels=8, embed_dim=8, n_embed=64, resolution=32,
)  # fmt: skip
_VQVAE = dict(channel=32, n_res_block=1, n_res_channel=8, embed_dim=8, n_embed=64, resolution=32)

TINY_CONFIGS: dict[str, dict] = {
    "vqgan": _VQGAN,  # f4, plain nearest-code quantizer, mid attention
    "vqgan_gumbel": {**_VQGAN, "quantizer": "gumbel"},
    "vqgan_l2": {**_VQGAN, "codebook_norm": "l2"},
    "vqgan_attn": {**_VQGAN, "attn_resolutions": [16], "mid_attn": False},  # attention at level 1
    "vqvae": {"family": "vqvae", **_VQVAE},  # f4
    "vqvae2": {"family": "vqvae2", **_VQVAE},  # f8 top, f4 bottom
}


def smooth_image(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like uint8 ``[h, w, 3]`` image: a few random low-frequency waves."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / 32.0
    out = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fx, fy, ph = r.uniform(-2, 2), r.uniform(-2, 2), r.uniform(0, 2 * np.pi)
            out[..., c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    out = (out - out.min()) / (out.max() - out.min())
    return (out * 255).round().astype(np.uint8)


def spread_codebooks(tok: Tokenizer, seed: int = 0) -> Tokenizer:
    """Replace each nearest-code codebook by encoder latents of sample images.

    Randomly initialised codebooks are tiny (taming's init), so random models map most positions
    to a handful of codes and tests of "same tokens" would prove little. With codes drawn from
    real latents, tokens spread over the codebook and react to small input changes.
    Levels are set coarse to fine, since a finer level's latents depend on the coarser codes.
    """
    quantizers = [m for m in tok.model.modules() if hasattr(m, "embedding") and hasattr(m, "codes_to_indices")]
    x = tok.preprocess([smooth_image(64, 64, seed=100 + i) for i in range(4)], size=None)[0]
    g = torch.Generator().manual_seed(seed)
    for q in quantizers:
        captured: list[torch.Tensor] = []
        orig = q.codes_to_indices
        q.codes_to_indices = lambda z, _o=orig: (captured.append(z.detach().float()), _o(z))[1]
        try:
            tok.encode_pixels(x)
        finally:
            del q.codes_to_indices
        flat = captured[0].permute(0, 2, 3, 1).reshape(-1, captured[0].shape[1])
        pick = torch.randperm(flat.shape[0], generator=g)[: q.n_embed]
        with torch.no_grad():
            q.embedding.weight.copy_(flat[pick])
    return tok


def make_tiny_tokenizer(name: str = "vqgan", seed: int = 0, spread: bool = True) -> Tokenizer:
    tok = Tokenizer.from_config(dict(TINY_CONFIGS[name]), seed=seed)
    return spread_codebooks(tok, seed) if spread else tok


@pytest.fixture(params=list(TINY_CONFIGS))
def tiny_name(request) -> str:
    """Each tiny config name in turn (``"vqgan"``, ``"vqgan_gumbel"``, ... ``"vqvae2"``)."""
    return request.param


@pytest.fixture
def tiny_config(tiny_name) -> dict:
    """The config dict of ``tiny_name`` (so a test using it runs once per variant)."""
    return dict(TINY_CONFIGS[tiny_name])


@pytest.fixture
def tiny_configs() -> dict[str, dict]:
    """All tiny config dicts by name."""
    return {k: dict(v) for k, v in TINY_CONFIGS.items()}


@pytest.fixture
def tiny_tokenizer():
    """Factory: ``tiny_tokenizer(name="vqgan", seed=0, spread=True)`` -> a fresh tiny Tokenizer."""
    return make_tiny_tokenizer


@pytest.fixture
def make_image():
    """Factory: ``make_image(h=48, w=40, seed=0)`` -> deterministic smooth uint8 ``[h, w, 3]``."""
    return smooth_image


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Factory: ``tiny_model_dir(name="vqgan")`` -> folder with a saved tiny model (save_pretrained)."""

    def make(name: str = "vqgan", seed: int = 0):
        return make_tiny_tokenizer(name, seed).save_pretrained(tmp_path / f"model-{name}-{seed}")

    return make


def child_pids(pid: int) -> set[int]:
    """Linux: the pids of ``pid``'s child processes (from /proc)."""
    kids = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids |= {int(c) for c in (task / "children").read_text().split()}
    return kids


def pid_alive(pid: int) -> bool:
    """Linux: whether ``pid`` runs (a zombie counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


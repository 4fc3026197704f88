"""Prior.push_to_hub / Prior.from_pretrained(hub id) through the real huggingface_hub client and a local fake Hub."""

# ruff: noqa: F811  (pytest fixtures imported from hub_server are test-function parameters)
from __future__ import annotations

import json

import pytest
import torch

from hub_server import hf_hub, hub_server  # noqa: F401  (fixtures)
from imagetok.errors import HubError
from imagetok.prior import Prior, PriorConfig


def test_prior_push_and_pull(hf_hub):
    cfg = PriorConfig(arch="transformer", codebook_sizes=(16,), grid=(3, 3), width=16, depth=1, heads=2, num_classes=2,
                      classes=("a", "b"), tokenizer="tiny", tokenizer_hash="0123456789abcdef")  # fmt: skip
    prior = Prior.from_config(cfg, seed=0)
    url = prior.push_to_hub("alice/prior", commit_message="a prior")
    assert "alice/prior" in url
    files = hf_hub.files("alice/prior")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert json.loads(files["config.json"])["tokenizer_hash"] == "0123456789abcdef"
    for name in ("hf-hub:alice/prior", "alice/prior", "hf-hub:alice/prior@main"):
        pulled = Prior.from_pretrained(name)
        assert pulled.config == prior.config
        assert torch.equal(pulled.sample(3, label="b", generator=1), prior.sample(3, label="b", generator=1))
    with pytest.raises(HubError, match="not found"):
        Prior.from_pretrained("alice/missing")

"""imagetok.serialization with a model that is not a tokenizer (as a stage-2 prior would use it):
atomic save_folder, strict header-checked loading through caller-supplied config parsing and build."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from imagetok.errors import ConfigError, WeightsError
from imagetok.serialization import load_folder, read_header, save_folder


class Mlp(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.inp = nn.Linear(cfg["width"], cfg["hidden"])
        self.out = nn.Linear(cfg["hidden"], cfg["width"])
        self.register_buffer("scale", torch.ones(cfg["width"]))


def parse(d: dict) -> dict:
    if set(d) != {"kind", "width", "hidden"} or d["kind"] != "mlp":
        raise ConfigError(f"not an mlp config: {d}")
    return d


def test_a_non_tokenizer_model_round_trips(tmp_path):
    cfg = {"kind": "mlp", "width": 4, "hidden": 8}
    torch.manual_seed(0)
    model = Mlp(cfg)
    folder = save_folder(tmp_path / "prior", cfg, model.state_dict(), card="# a prior\n", metadata={"note": "x"})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text()) == cfg
    header, meta = read_header(folder / "model.safetensors")
    assert header["inp.weight"] == ("F32", (8, 4)) and meta["note"] == "x"
    loaded = load_folder(folder, parse_config=parse, build=Mlp)
    assert loaded.config == cfg and not any(p.is_meta for p in loaded.model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    again = save_folder(tmp_path / "again", cfg, model.state_dict(), card="# a prior\n", metadata={"note": "x"})
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()  # reproducible

    (folder / "config.json").write_text(json.dumps(dict(cfg, hidden=4096)))  # edited by hand: shapes differ
    with pytest.raises(WeightsError, match="another config"):
        load_folder(folder, parse_config=parse, build=Mlp)
    save_folder(tmp_path / "plain", cfg, model.state_dict())
    with pytest.raises(ConfigError, match="config 'family' must be one of"):
        load_folder(tmp_path / "plain", build=Mlp)  # the default parser reads tokenizer configs only
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"kind": "mlp", "width": 4}))
    with pytest.raises(ConfigError, match="not an mlp config"):
        load_folder(tmp_path / "plain", parse_config=parse, build=Mlp)


class WithTable(Mlp):
    """A module with a non-persistent buffer computed in __init__ (not stored in the file)."""

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.register_buffer("table", torch.tensor([2.0 * i for i in range(cfg["width"])]), persistent=False)


def test_non_persistent_buffers_are_computed_not_left_on_meta(tmp_path):
    cfg = {"kind": "mlp", "width": 4, "hidden": 8}
    model = WithTable(cfg)
    folder = save_folder(tmp_path / "m", cfg, model.state_dict())
    loaded = load_folder(folder, parse_config=parse, build=WithTable).model
    assert torch.equal(loaded.table, torch.tensor([0.0, 2.0, 4.0, 6.0]))
    assert torch.equal(loaded.inp.weight, model.inp.weight)

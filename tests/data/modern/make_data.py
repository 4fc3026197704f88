"""Derive the small test copies in this folder from the golden sets (run once; outputs are committed).

    python tests/data/modern/make_data.py /path/to/golden tests/data/modern

Each golden set (``NOTE.md`` there) holds a random-weight model saved in the original's own format
and the original code's outputs. To keep the repo small the copies drop what the tests do not use:

- ``ibq/model.ckpt``: the Lightning ``{"state_dict"}`` with the live weights and ``loss.*`` (the EMA
  copies are dropped); ``io.safetensors`` keeps ``x`` and the golden ``raw_weights/*`` outputs.
- ``open_magvit2/model.ckpt``: live weights stored as float16 (only their shapes are read when the
  config selects the EMA weights), the float32 ``model_ema.*`` copies and ``loss.*``;
  ``io.safetensors`` keeps ``x``/``h``/``indices``/``decoded`` (EMA) and the factorised indices.
- ``cosmos/``: the autoencoder state dict, the non-persistent buffers of the ``.jit`` files and the
  golden key listing (the tests trace ``.jit`` archives from these), ``x``/``indices``/``decoded``, the
  synthetic latents and ``fsq_all_codes``.

``showo/`` is not derived from a golden set: ``make_showo.py`` writes it with Show-o's own code.
"""

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def keep(src: Path, dst: Path, names: list[str]) -> None:
    io = load_file(str(src))
    save_file({k: io[k].contiguous() for k in names}, str(dst))


def main(golden: Path, out: Path) -> None:
    groups = ("square", "nonsquare")
    d = out / "ibq"
    d.mkdir(parents=True, exist_ok=True)
    sd = torch.load(golden / "ibq/model.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("model_ema.")}}, d / "model.ckpt")
    keep(golden / "ibq/io.safetensors", d / "io.safetensors",
         [f"{g}/x" for g in groups] + [f"raw_weights/{g}/{t}" for g in groups for t in ("h", "indices", "decoded")])
    shutil.copy(golden / "ibq/reference_config.yaml", d)

    d = out / "open_magvit2"
    d.mkdir(parents=True, exist_ok=True)
    sd = torch.load(golden / "open_magvit2_lfq/model.ckpt", weights_only=True)["state_dict"]
    small = {k: (v.half() if k.startswith(("encoder.", "decoder.")) else v) for k, v in sd.items()}
    torch.save({"state_dict": small}, d / "model.ckpt")
    io = load_file(str(golden / "open_magvit2_lfq/io.safetensors"))
    tf = load_file(str(golden / "open_magvit2_lfq/io_token_factorization.safetensors"))
    kept = {f"{g}/{t}": io[f"{g}/{t}"] for g in groups for t in ("x", "h", "indices", "decoded")}
    kept.update({f"{g}/{t}": tf[f"{g}/{t}"] for g in groups for t in ("indices_pre", "indices_post")})
    save_file({k: v.contiguous() for k, v in kept.items()}, str(d / "io.safetensors"))
    for name in ("reference_config.yaml", "reference_config_token_factorization.yaml"):
        shutil.copy(golden / "open_magvit2_lfq" / name, d)

    d = out / "cosmos"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("autoencoder_state_dict.pt", "jit_extra_buffers.pt", "jit_state_dict_keys.txt", "reference_config.json"):
        shutil.copy(golden / "cosmos_di_fsq" / name, d)
    keep(golden / "cosmos_di_fsq/io.safetensors", d / "io.safetensors",
         [f"{g}/{t}" for g in groups for t in ("x", "h", "indices", "decoded")]
         + [f"synthetic/{t}" for t in ("h", "indices", "decoded")] + ["fsq_all_codes"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

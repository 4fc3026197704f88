"""Write Cosmos ``encoder.jit`` / ``decoder.jit`` / ``autoencoder.jit`` test fixtures (the tests call ``main``).

Real Cosmos ``.jit`` files are ``torch.jit.trace`` archives of ``DiscreteImageTokenizer.encoder_jit()``
(``encoder``, ``quant_conv``, ``quantizer``) and ``decoder_jit()`` (``inv_quant.quantizer``,
``post_quant_conv``, ``decoder``). This script traces imagetok's own Cosmos modules arranged under
the same names, with the golden weights and the golden non-persistent buffers (``jit_extra_buffers.pt``,
including the bf16-rounded ``implicit_codebook``), so the archives expose exactly the state-dict keys
listed in the golden ``jit_state_dict_keys.txt`` (``autoencoder.jit``: the whole model under its
own names, as ``cosmos_tokenizer.utils.load_model`` reads it). Usage (from the repo root):

    PYTHONPATH=$PWD python tests/data/modern/make_cosmos_jit.py /path/to/golden/cosmos_di_fsq tests/data/modern/cosmos
"""

import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from imagetok.config import config_from_dict
from imagetok.models import build_model

KEYS = ("attn_resolutions", "channels", "channels_mult", "dropout", "resolution", "patch_size", "patch_method",
        "spatial_compression", "z_channels", "embedding_dim", "levels", "num_res_blocks")


class Quantizer(nn.Module):
    def __init__(self, fsq, extra, prefix):
        super().__init__()
        self.__dict__["fsq"] = fsq  # not a submodule: the traced state dict has only the three buffers below
        for name in ("_levels", "_basis", "implicit_codebook"):
            self.register_buffer(name, extra[f"{prefix}{name}"].clone(), persistent=False)

    def forward(self, h):
        return self.fsq.codes_to_indices(h)


class InvQuant(nn.Module):
    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, idx):
        return self.quantizer.fsq.indices_to_codes(idx)


class Autoencoder(nn.Module):
    """The whole ``DiscreteImageTokenizer`` (``autoencoder.jit``): same attribute names."""

    def __init__(self, model, quantizer):
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder
        self.quant_conv, self.post_quant_conv = model.quant_conv, model.post_quant_conv
        self.quantizer = quantizer

    def forward(self, x):
        idx = self.quantizer(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(self.quantizer.fsq.indices_to_codes(idx)))


def main(golden: Path, out: Path) -> None:
    rc = json.loads((golden / "reference_config.json").read_text())
    model = build_model(config_from_dict({"family": "cosmos", **{k: rc[k] for k in KEYS}}))
    model.load_state_dict(torch.load(golden / "autoencoder_state_dict.pt", weights_only=True))
    extra = torch.load(golden / "jit_extra_buffers.pt", weights_only=True)
    enc_extra = {k.split(":", 1)[1]: v for k, v in extra.items() if k.startswith("encoder.jit:")}
    dec_extra = {k.split(":", 1)[1]: v for k, v in extra.items() if k.startswith("decoder.jit:")}
    for m, src in ((model.encoder.patcher, "encoder.patcher."), (model.decoder.unpatcher, "decoder.unpatcher.")):
        d = enc_extra if src.startswith("encoder") else dec_extra
        m.wavelets.copy_(d[src + "wavelets"])
        m._arange.copy_(d[src + "_arange"])
    enc = nn.Sequential(OrderedDict(encoder=model.encoder, quant_conv=model.quant_conv,
                                    quantizer=Quantizer(model.quantizer, enc_extra, "quantizer.")))
    dec_q = Quantizer(model.quantizer, dec_extra, "inv_quant.quantizer.")
    dec = nn.Sequential(OrderedDict(inv_quant=InvQuant(dec_q), post_quant_conv=model.post_quant_conv, decoder=model.decoder))
    out.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.jit.trace(enc.eval(), x, check_trace=False).save(str(out / "encoder.jit"))
        torch.jit.trace(dec.eval(), torch.zeros(1, 8, 8, dtype=torch.long), check_trace=False).save(str(out / "decoder.jit"))
        auto = Autoencoder(model, Quantizer(model.quantizer, enc_extra, "quantizer."))
        torch.jit.trace(auto.eval(), x, check_trace=False).save(str(out / "autoencoder.jit"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

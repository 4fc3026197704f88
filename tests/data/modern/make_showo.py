"""Write ``showo/`` (a tiny Show-o MAGVIT-v2 with random weights and the ORIGINAL code's outputs).

Run once with Show-o's ``models/modeling_magvitv2.py`` and ``models/common_modules.py`` (commit of
showlab/Show-o fetched for imagetok; ``modeling_utils``/``misc`` stubbed: they only provide
ConfigMixin/ModelMixin/typing names) and einops on the path:

    PYTHONPATH=/path/with/models:/path/to/einops python tests/data/modern/make_showo.py tests/data/modern/showo

The model is built from the original classes with a small config (per-level block counts, different
encoder/decoder multipliers, attention at one level, 6 bits), weights = init + 0.02 * N(0, 1), saved
as ``pytorch_model.bin`` (the original's state dict, including the quantizer's buffers).
``io.safetensors``: ``<g>/x``, ``<g>/indices`` (``MAGVITv2.get_code``: [B, h*w]), ``<g>/decoded``
(``decode_code``) for ``square`` [2, 3, 32, 32] and ``nonsquare`` [1, 3, 32, 48].
"""

import sys
from pathlib import Path

import torch
from models.modeling_magvitv2 import LFQuantizer, VQGANDecoder, VQGANEncoder
from safetensors.torch import save_file

CFG = dict(ch=32, attn_resolutions=[16], dropout=0.0, resolution=32, z_channels=6)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = VQGANEncoder(ch_mult=[1, 2], num_res_blocks=[2, 1], **CFG)
        self.decoder = VQGANDecoder(ch_mult=[1, 1], num_res_blocks=[1, 2], **CFG)
        self.quantize = LFQuantizer(codebook_dim=6)

    def get_code(self, x):  # MAGVITv2.get_code
        return self.quantize.get_indices(self.quantize(self.encoder(x))["z"]).reshape(x.shape[0], -1)

    def decode_code(self, idx, shape):  # MAGVITv2.decode_code
        return self.decoder(self.quantize.get_codebook_entry(idx, shape=shape))["output"]


def main(out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    m = Model().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():  # not the quantizer's code tables (buffers)
            p += 0.02 * torch.randn(p.shape, generator=g)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(m.state_dict(), out / "pytorch_model.bin")
    io = {}
    for name, shape in (("square", (2, 3, 32, 32)), ("nonsquare", (1, 3, 32, 48))):
        x = (torch.rand(shape, generator=g) * 2 - 1)
        with torch.no_grad():
            idx = m.get_code(x)
            dec = m.decode_code(idx, (shape[2] // 2, shape[3] // 2))
        io.update({f"{name}/x": x, f"{name}/indices": idx, f"{name}/decoded": dec})
    save_file(io, str(out / "io.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

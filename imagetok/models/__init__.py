"""Model families. ``build_model(config)`` maps a config to its ``nn.Module``.

Every model has ``encode_indices(x)`` (``[B, 3, H, W]`` in the config's input range -> int64 tokens,
a tensor or, for VQ-VAE-2, a ``(top, bottom)`` tuple) and ``decode_indices(tokens)`` (the inverse,
unclamped images in the input range).
"""

from __future__ import annotations

from torch import nn

from ..config import Config
from .emu3 import Emu3VisionVQ
from .movq import MoVQ
from .vqgan import VQGAN
from .vqvae import VQVAE
from .vqvae2 import VQVAE2
from .cosmos import CosmosDI
from .magvit2 import Magvit2
from .showo import ShowoMagvit2

ARCHITECTURES: dict[str, type[nn.Module]] = {"vqgan": VQGAN, "vqvae": VQVAE, "vqvae2": VQVAE2, "emu3": Emu3VisionVQ}
ARCHITECTURES.update({"magvit2": Magvit2, "cosmos": CosmosDI, "showo": ShowoMagvit2})


def build_model(config: Config) -> nn.Module:
    """A randomly initialised model for ``config``, in eval mode, float32, on the CPU."""
    if config.family == "vqgan" and config.norm_type == "spatial":
        return MoVQ(config).eval()  # MoVQ decoder (imagetok.models.movq)
    return ARCHITECTURES[config.family](config).eval()

"""imagetok: images to discrete tokens and back with VQ-VAE, VQ-VAE-2 and VQGAN tokenizers.

>>> from imagetok import Tokenizer
>>> tok = Tokenizer.from_pretrained()      # bundled model; or a name, hub id or folder
>>> ids = tok.encode("photo.jpg")          # int64 [h, w]
>>> img = tok.decode(ids)                  # PIL.Image
"""

from . import errors
from ._version import __version__
from .config import VQGANConfig, VQVAE2Config, VQVAEConfig, config_from_dict, config_to_dict
from .errors import ImagetokError
from .tokenizer import Tokenizer
from .prior import Prior  # stage 2: generate token grids (imagetok.prior)

__all__ = [
    "Tokenizer",
    "Prior",
    "ImagetokError",
    "errors",
    "VQGANConfig",
    "VQVAEConfig",
    "VQVAE2Config",
    "config_from_dict",
    "config_to_dict",
    "__version__",
]

"""Stage-2 priors: generate token grids (and so images) the way the seed systems do.

- ``transformer``: a decoder-only transformer over raster-order tokens (VQGAN + taming's GPT).
- ``pixelcnn``: a class-conditional gated PixelCNN (VQ-VAE's prior).
- ``vqvae2``: a top prior, then a bottom prior conditioned on the top codes (VQ-VAE-2).

>>> from imagetok import Prior
>>> prior = Prior.from_pretrained("runs/prior/prior")
>>> tok = prior.load_tokenizer()
>>> images = tok.decode(prior.sample(4, label="red", top_k=50, generator=0))

Rejection sampling with a token classifier (VQ-VAE-2's recipe, on tokens):
``prior.sample(8, accept=TokenClassifier.fit(labelled).acceptor("red", 0.9))``.

Training (``imagetok.prior.trainer``, not imported here): ``imagetok prior train DATA --out DIR``.
"""

from .classifier import TokenClassifier
from .config import PriorConfig
from .data import TokenData, load_token_data
from .prior import Prior

__all__ = ["Prior", "PriorConfig", "TokenClassifier", "TokenData", "load_token_data"]

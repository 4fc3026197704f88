"""PatchGAN discriminator in taming's ``NLayerDiscriminator`` layout (Isola et al. 2017).

Same modules, names and initialisation as taming-transformers
(``taming/modules/discriminator/model.py`` with ``use_actnorm=False``), so a taming
``loss.discriminator.*`` state dict loads into it (after stripping the prefix) and back.
"""

from __future__ import annotations

import torch
from torch import nn


class NLayerDiscriminator(nn.Module):
    """``main``: Conv(k4, s2) + LeakyReLU(0.2), then ``n_layers - 1`` x [Conv(k4, s2, no bias) +
    BatchNorm + LeakyReLU], one [Conv(k4, s1, no bias) + BatchNorm + LeakyReLU], and a Conv(k4, s1)
    to one logit channel.

    Args:
        input_nc: image channels.
        ndf: channels of the first layer (doubling per layer, capped at ``8 * ndf``).
        n_layers: number of stride-2 convolutions.

    ``forward``: ``[B, input_nc, H, W]`` images (the generator's range) -> ``[B, 1, h, w]`` logits,
    one per overlapping patch (70x70 receptive field for ``n_layers=3``).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*seq)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def weights_init(m: nn.Module) -> None:
    """taming's init: conv weights N(0, 0.02) (biases keep torch's default), BatchNorm N(1, 0.02) / 0."""
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)

"""LPIPS-VGG16 perceptual loss (Zhang et al. 2018) in plain torch, loading user-supplied weights.

No weights can be downloaded here, so the network is built with the exact state-dict layout of
the usual files and loaded strictly from what the user gives:

* torchvision's ``vgg16`` state dict (``features.0.weight`` ... ``features.28.bias``; the
  ``classifier.*`` keys are ignored), e.g. ``vgg16-397923af.pth``;
* the LPIPS linear layers ``lin0.model.1.weight`` ... ``lin4.model.1.weight`` (``[1, C, 1, 1]``),
  e.g. LPIPS's ``weights/v0.1/vgg.pth``.

Both may sit in one file or in several files of one folder (``.safetensors``, or ``.pth``/``.pt``
read with ``weights_only=True``). A taming/LPIPS full state dict (``net.slice{1..5}.N.*``,
``scaling_layer.*``, ``lin*``) is accepted too: ``net.sliceK.N`` is torchvision's ``features.N``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

# torchvision vgg16 "D" configuration; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices (in ``features``) of the ReLUs whose outputs LPIPS compares
CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS ScalingLayer: inputs in [-1, 1] -> ImageNet-normalised
_SCALE = (0.458, 0.448, 0.450)
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class _Lin(nn.Module):
    """LPIPS ``NetLinLayer``: ``model = Sequential(Dropout, Conv2d(C, 1, 1, bias=False))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS distance with a VGG16 trunk. Frozen, always in eval mode.

    State dict: ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}`` (torchvision names)
    and ``lin{0..4}.model.1.weight``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU()]
                c_in = int(v)
        self.features = nn.Sequential(*layers)  # 30 modules: features[29] is relu5_3
        for k, c in enumerate(CHANNELS):
            self.add_module(f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # dropout in the lin layers must stay off

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance of ``[B, 3, H, W]`` images in [-1, 1] -> float32 ``[B]``.

        Differentiable w.r.t. both inputs (the network itself is frozen).
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS inputs must both be [B, 3, H, W], got {tuple(x.shape)} and {tuple(y.shape)}")
        n = x.shape[0]
        total = torch.zeros(n, device=x.device)
        for k, f in enumerate(self._taps(torch.cat([x, y]))):  # one pass over both batches
            a, b = _unit(f[:n].float()), _unit(f[n:].float())
            lin = getattr(self, f"lin{k}").model[1]
            total = total + F.conv2d((a - b) ** 2, lin.weight.float()).mean(dim=(1, 2, 3))
        return total


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """LPIPS ``normalize_tensor``: divide each position's feature vector by its l2 norm (+eps)."""
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise WeightsError(f"{path}: cannot read safetensors file ({e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot read as a plain tensor state dict with weights_only=True ({e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return sd


def _canonical(key: str) -> str | None:
    """Map a key of the accepted layouts to this module's name; None for keys to ignore."""
    key = key.removeprefix("perceptual_loss.").removeprefix("loss.perceptual_loss.")
    if key.startswith(("classifier.", "scaling_layer.")):
        return None
    m = re.fullmatch(r"net\.slice[1-5]\.(\d+)\.(weight|bias)", key)
    if m:
        return f"features.{m.group(1)}.{m.group(2)}"
    return key


def load_lpips(path: str | Path) -> LPIPS:
    """Build :class:`LPIPS` and load weights strictly from a file, or every weight file of a folder.

    Raises:
        WeightsError: missing path/file, unreadable file, a key given twice, missing or unexpected
            keys, or a shape mismatch (the message names them).
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in _WEIGHT_SUFFIXES)
        if not files:
            raise WeightsError(f"{p}: no weight files ({', '.join(_WEIGHT_SUFFIXES)}) in the perceptual weights folder")
    elif p.is_file():
        files = [p]
    else:
        raise WeightsError(f"{p}: perceptual weights not found (give torchvision vgg16 + LPIPS lin weights)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        for k, v in _read(f).items():
            name = _canonical(k)
            if name is None:
                continue
            if name in sd:
                raise WeightsError(f"perceptual weights: key {name!r} is given twice (second time in {f})")
            sd[name] = v.float()
    net = LPIPS()
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"perceptual weights {p}: missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} "
            "(expected torchvision vgg16 'features.*' and LPIPS 'lin{0..4}.model.1.weight')"
        )
    bad = [f"{k}: {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise WeightsError(f"perceptual weights {p}: shape mismatch: {bad[:4]}")
    net.load_state_dict(sd, strict=True)
    return net

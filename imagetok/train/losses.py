"""Training losses: reconstruction, vector-quantisation (codebook + commitment) and SSIM.

The commitment weight multiplies the encoder term ``||z - sg(e)||^2`` as in van den Oord et al.
(2017); taming's ``legacy=True`` puts it on the codebook term instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import ssim
from ..models.fsq import FSQuantizer
from ..models.lfq import LFQuantizer
from ..models.quantizer import QuantizerOutput


def vq_losses(q: QuantizerOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook loss ``||sg(z) - e||^2``, commitment loss ``||z - sg(e)||^2``), float32 means."""
    codebook = F.mse_loss(q.codes, q.latents.detach())
    commitment = F.mse_loss(q.latents, q.codes.detach())
    return codebook, commitment


def reconstruction_losses(rec: torch.Tensor, x: torch.Tensor, x01_range: tuple[float, float]) -> dict[str, torch.Tensor]:
    """L1, L2 and (1 - SSIM) between ``rec`` and ``x`` (both ``[B, 3, H, W]`` in ``x01_range``)."""
    rec, x = rec.float(), x.float()
    lo, hi = x01_range
    to01 = lambda t: ((t - lo) / (hi - lo)).clamp(0, 1)
    return {
        "l1": (rec - x).abs().mean(),
        "l2": F.mse_loss(rec, x),
        "ssim": 1.0 - ssim(to01(rec), to01(x)).mean(),
    }


def d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss (taming ``hinge_d_loss`` / ``vanilla_d_loss``), a float32 scalar.

    hinge: ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``;
    non_saturating: ``0.5 * (mean(softplus(-real)) + mean(softplus(fake)))``.
    """
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator loss: hinge ``-mean(fake)`` (as taming); non_saturating ``mean(softplus(-fake))``."""
    fake = logits_fake.float()
    if kind == "hinge":
        return -fake.mean()
    if kind == "non_saturating":
        return F.softplus(-fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def adaptive_weight(nll: torch.Tensor, gen: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """taming's ``calculate_adaptive_weight``: ``||d nll/d w|| / (||d gen/d w|| + 1e-4)``, clamped to
    ``[0, max_weight]`` and detached, where ``w`` is the decoder's last layer weight.

    Both losses keep their graphs (``retain_graph``) for the backward pass that follows.
    """
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, last_layer, retain_graph=True)[0]
    return (g_nll.float().norm() / (g_gen.float().norm() + 1e-4)).clamp(0.0, max_weight).detach()


# ------------------------------------------------------------------ LFQ / FSQ (issue 14)

def lfq_entropy_terms(
    latents: torch.Tensor, temperature: float = 0.01, exact_max_codes: int = 2**12
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAGVIT-v2 / Open-MAGVIT2 entropy terms of LFQ latents: (per-sample entropy, codebook entropy).

    The original takes ``logits = 2 z . c`` over all ``2**K`` codes ``c`` in {-1, 1}^K and
    ``p = softmax(logits / temperature)``. That distribution factorises over bits
    (``p(bit_k = 1) = sigmoid(4 z_k / temperature)``), so the mean per-sample entropy is the sum
    of per-bit binary entropies, computed exactly for any K. The codebook entropy (entropy of the
    batch-averaged ``p``) does not factorise: it is exact for ``2**K <= exact_max_codes`` and
    otherwise the sum of the per-bit entropies of the batch-averaged bit probabilities (an upper
    bound that equals it when the bits are independent across the batch).

    Args:
        latents: ``[B, K, h, w]`` float latents.
        temperature: softmax temperature (Open-MAGVIT2: 0.01).

    Returns:
        Two float32 scalars in nats. The loss is ``sample_w * sample - batch_w * codebook``.
    """
    z = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    k = z.shape[1]
    logit = 4.0 * z / temperature  # log p(1) - log p(0) per bit
    p1 = torch.sigmoid(logit)
    # binary entropy from logits (stable): H = softplus(l) - p * l
    h_bits = F.softplus(logit) - p1 * logit
    sample = h_bits.sum(1).mean()
    if 2**k <= exact_max_codes:
        codes = ((torch.arange(2**k, device=z.device)[:, None] >> torch.arange(k, device=z.device)) & 1).float() * 2 - 1
        probs = torch.softmax(2.0 * z @ codes.t() / temperature, dim=1)
        avg = probs.mean(0)
        codebook = -(avg * torch.log(avg.clamp_min(1e-30))).sum()
    else:
        q = p1.mean(0).clamp(1e-7, 1 - 1e-7)
        codebook = -(q * q.log() + (1 - q) * (1 - q).log()).sum()
    return sample, codebook


def scalar_quantizer_losses(
    quantizer: torch.nn.Module, q: QuantizerOutput, *, commitment_beta: float, entropy_weight: float,
    entropy_temperature: float, entropy_batch_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Auxiliary loss of a codebook-free quantizer and its logged parts.

    LFQ (Open-MAGVIT2's recipe): ``commitment_beta * ||z - sg(sign z)||^2 + entropy_weight *
    (per_sample_entropy - entropy_batch_weight * codebook_entropy)`` -- the entropy term pushes each
    latent's bits away from 0 (confident codes) while spreading the batch over the codebook, which is
    what keeps LFQ from collapsing. FSQ needs nothing (its bounded, rounded levels cannot collapse to
    one code by construction; the loss is 0).
    """
    if isinstance(quantizer, LFQuantizer):
        commit = F.mse_loss(q.latents, q.codes.detach())
        sample, codebook = lfq_entropy_terms(q.latents, entropy_temperature)
        loss = commitment_beta * commit + entropy_weight * (sample - entropy_batch_weight * codebook)
        return loss, {"commit": commit.detach(), "sample_entropy": sample.detach(), "codebook_entropy": codebook.detach()}
    if isinstance(quantizer, FSQuantizer):
        return q.latents.new_zeros(()), {}
    raise TypeError(f"no auxiliary loss for {type(quantizer).__name__}")

"""Least-squares GAN losses on raw discriminator scores (docs/method.md: no sigmoid, targets 1 and 0).

Scores are cast to float32 before squaring and averaging: under bf16 autocast they arrive as bf16, and a mean
over B * H/4 * W/4 squared values is a reduction worth doing at full precision.
"""

from __future__ import annotations

import torch


def lsgan_generator(fake_scores: torch.Tensor) -> torch.Tensor:
    """mean((D(fake) - 1)^2): the generator wants its fakes scored as real. Scores any shape -> scalar float32."""
    return (fake_scores.float() - 1.0).square().mean()


def lsgan_discriminator(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"real": mean((D(real) - 1)^2), "fake": mean(D(fake)^2)}, scalar float32 each (unweighted, summed by
    the caller)."""
    return {"real": (real_scores.float() - 1.0).square().mean(), "fake": fake_scores.float().square().mean()}

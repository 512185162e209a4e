"""Cycle-consistency loss: L1 between an image and its round trip through both generators."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """mean |F(G(x)) - x| (or |G(F(y)) - y|): two (B, C, H, W) tensors in [-1, 1] of one shape -> scalar
    float32 (computed in float32 whatever the autocast dtype of `reconstructed`)."""
    if reconstructed.shape != original.shape:
        raise ValueError(f"cycle_loss: shapes {tuple(reconstructed.shape)} and {tuple(original.shape)} differ")
    return F.l1_loss(reconstructed.float(), original.float())

"""Batch augmentation of the training streams: flips, a small affine warp and MR intensity jitter, and the resize
to the training size, all in one warp per sample.

Every draw comes from the per-sample generator the stream passes in (seeded by the sample's position in its
slot's stream), so a batch is reproducible and exact resume sees the same warps again.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cmgan.config import AugmentConfig


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor | None,
    rngs: list[np.random.Generator],
    cfg: AugmentConfig,
    size: int,
    intensity: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flips + small affine (one draw per sample, the same warp for image, mask and label) and resize to `size`.

    images (B, C, h, w) float32 in [-1, 1] (background -1); masks (B, 1, h, w) {0, 1}; labels (B, h, w) int64.
    Image: bilinear; mask, label: nearest; outside the source: background. MR (`intensity`): gamma/contrast
    jitter of the foreground. returns the same at (size, size).
    """
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3)
    warp = images.shape[-1] != size or images.shape[-2] != size
    for i, rng in enumerate(rngs):
        fx = -1.0 if rng.random() < cfg.hflip else 1.0
        fy = -1.0 if rng.random() < cfg.vflip else 1.0
        a = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg > 0 else 0.0
        s = 1.0 + (rng.uniform(-cfg.scale, cfg.scale) if cfg.scale > 0 else 0.0)
        tx, ty = (rng.uniform(-cfg.translate, cfg.translate, 2) * 2 if cfg.translate > 0 else (0.0, 0.0))
        c, n = np.cos(a) / s, np.sin(a) / s
        theta[i] = torch.tensor([[c * fx, -n * fy, tx], [n * fx, c * fy, ty]], dtype=torch.float32)
        warp |= fx < 0 or fy < 0 or a != 0.0 or s != 1.0 or tx != 0.0 or ty != 0.0
    if warp:
        grid = _affine_grid(theta, size)
        images = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
        # Mask and label share one nearest-neighbour warp (they stay aligned to each other by construction).
        stacked = masks if labels is None else torch.cat([masks, labels[:, None].float()], 1)
        stacked = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        masks = stacked[:, :1]
        if labels is not None:
            labels = stacked[:, 1].round().long()
    if intensity and cfg.intensity > 0:
        j = cfg.intensity
        params = torch.tensor([[np.exp(r.uniform(-j, j)), 1 + r.uniform(-j, j), r.uniform(-j, j) / 2] for r in rngs],
                              dtype=torch.float32)
        gamma, contrast, shift = (params[:, k].view(b, 1, 1, 1) for k in range(3))
        x01 = ((images + 1) / 2).clamp(0, 1)
        images = ((x01.pow(gamma) - 0.5) * contrast + 0.5 + shift).clamp(0, 1) * 2 - 1
    images = images.masked_fill_(masks == 0, -1.0).clamp_(-1.0, 1.0)
    return images.contiguous(), masks, labels


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """F.affine_grid(theta, (B, C, size, size), align_corners=False), computed elementwise (5-10x faster on the CPU).

    theta (B, 2, 3) maps output to input normalized coordinates; returns (B, size, size, 2) (x, y).
    """
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # pixel centres in (-1, 1)
    x, y = c.view(1, 1, size), c.view(1, size, 1)
    t = theta.view(-1, 6, 1, 1)
    gx = t[:, 0] * x + t[:, 1] * y + t[:, 2]
    gy = t[:, 3] * x + t[:, 4] * y + t[:, 5]
    return torch.stack([gx, gy], dim=-1)

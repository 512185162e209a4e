"""Structure-preserving losses: the colorized image keeps the MR's luma and its Laplacian edges.

    gray_loss(color, gray):  mean |gray(color) - gray|                         (paper eq. for L_gray)
    edge_loss(a, b, kind):   mean |Lap(gray(a)) - Lap(gray(b))|                (paper eq. 9-10, L_edge)

Both are shape-checked: (B, 1, H, W) against (B, 1, H, W) after the luma conversion (the public code compared
(B, 1, H, W) with (B, H, W) and so averaged over a (B, B, H, W) broadcast at batch > 1). Both keep the graph
(the public code detached the edge maps, so its edge loss never reached G). Luma, Laplacian and the mean run
in float32 (see cmgan.models.edges).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmgan.models.edges import laplacian, to_gray


def _same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: maps {tuple(a.shape)} and {tuple(b.shape)} differ; "
                         "pass images of one batch and size")


def gray_loss(color: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    """mean |gray(color) - gray(gray)|: color (B, 3 or 1, H, W), gray (B, 1 or 3, H, W), in [-1, 1]
    -> scalar float32. Either argument may be RGB (converted with BT.601) or 1-channel."""
    a, b = to_gray(color), to_gray(gray)
    _same_shape("gray_loss", a, b)
    return F.l1_loss(a, b)


def edge_loss(a: torch.Tensor, b: torch.Tensor, kind: str = "4") -> torch.Tensor:
    """mean |Lap(gray(a)) - Lap(gray(b))|: (B, 1 or 3, H, W) each in [-1, 1] -> scalar float32."""
    la, lb = laplacian(to_gray(a), kind), laplacian(to_gray(b), kind)
    _same_shape("edge_loss", la, lb)
    return F.l1_loss(la, lb)

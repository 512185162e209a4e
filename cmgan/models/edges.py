"""Luma and Laplacian edge maps, differentiable, shared by the discriminators and the edge loss.

    to_gray(img)          (B, 3, H, W) or (B, 1, H, W) in [-1, 1] -> (B, 1, H, W) float32 in [-1, 1]
    laplacian(img, kind)  (B, C, H, W) -> (B, C, H, W) float32, per channel
    edge_map(img, kind)   sigmoid(laplacian(to_gray(img))): (B, 1, H, W) float32 in (0, 1)

All three run in float32 with autocast off, whatever the input dtype: a Laplacian is a sum of differences of
neighbouring pixels, and in bfloat16 (8 significant bits, steps of 2**-7 near 1) those differences would be
mostly rounding noise, which the edge loss would then train G to match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ITU-R BT.601 luma weights (R, G, B). The paper prints 0.576 for G, a typo: BT.601 is 0.587.
BT601 = (0.299, 0.587, 0.114)

#: 3x3 Laplacian kernels. "4": the paper's eq. 9 (negative centre); "8": the public code's (positive centre).
#: The two differ in sign as well as in reach, so sigmoid(Lap) is bright on opposite sides of an edge.
LAPLACIAN_KERNELS: dict[str, tuple[tuple[float, ...], ...]] = {
    "4": ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
    "8": ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0)),
}


def to_gray(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of an RGB batch; a 1-channel batch passes through (as float32).

    img: (B, 3, H, W) or (B, 1, H, W), any float dtype, in [-1, 1] -> (B, 1, H, W) float32 in [-1, 1]
    (the weights sum to 1, so the affine map [0, 1] -> [-1, 1] commutes with it).
    """
    if img.dim() != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f"to_gray expects (B, 1 or 3, H, W), got shape {tuple(img.shape)}")
    img = img.float()
    if img.shape[1] == 1:
        return img
    r, g, b = BT601
    return r * img[:, 0:1] + g * img[:, 1:2] + b * img[:, 2:3]


_KERNELS: dict[tuple[str, torch.device], torch.Tensor] = {}


def _kernel(kind: str, device: torch.device) -> torch.Tensor:
    def make() -> torch.Tensor:
        return torch.tensor(LAPLACIAN_KERNELS[kind], dtype=torch.float32, device=device).view(1, 1, 3, 3)

    if torch.compiler.is_compiling():  # traced once into the graph as a constant
        return make()
    # Cached per device: building it on every call would be a host-to-device copy (a sync on CUDA) per step.
    key = (kind, device)
    if key not in _KERNELS:
        _KERNELS[key] = make()
    return _KERNELS[key]


def laplacian(img: torch.Tensor, kind: str = "4") -> torch.Tensor:
    """3x3 Laplacian of every channel: (B, C, H, W) -> (B, C, H, W) float32.

    Replicate padding, not zero padding: images are in [-1, 1] with background -1, so a zero border would be a
    step of +1 at every image edge and light up a frame that exists in no image. With replicate padding a
    constant region (background included) has Laplacian 0 up to the border.
    """
    if kind not in LAPLACIAN_KERNELS:
        raise ValueError(f"laplacian kind={kind!r} is not one of {sorted(LAPLACIAN_KERNELS)}")
    if img.dim() != 4:
        raise ValueError(f"laplacian expects (B, C, H, W), got shape {tuple(img.shape)}")
    with torch.autocast(img.device.type, enabled=False):
        b, c, h, w = img.shape
        x = F.pad(img.float().reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, _kernel(kind, img.device)).view(b, c, h, w)


def edge_map(img: torch.Tensor, kind: str = "4") -> torch.Tensor:
    """E = sigmoid(Lap(gray(img))): (B, 1 or 3, H, W) in [-1, 1] -> (B, 1, H, W) float32 in (0, 1)."""
    with torch.autocast(img.device.type, enabled=False):
        return torch.sigmoid(laplacian(to_gray(img), kind))

"""The multi-modal patch discriminator (Dx judges MR slices, Dy judges color images).

D sees the image together with its own edge map E = sigmoid(Lap(gray(img))), computed inside `forward` from
the very image it judges, so a fake is judged with the fake's edges (the public code paired the fake with the
real image's edges). Input modes (`model.disc_input`; the paper's numbering in brackets):
    concat   [2]  cat(img, E)       C + 1 channels (the paper's best)
    residual [1]  img + img * E     C channels
    gate     [3]  img * E           C channels
    image   [off] img               C channels

Layers at width w (the paper: w = 32): conv3x3/s2 w -> s1 2w -> s2 4w -> s1 8w -> s1 8w -> conv3x3 1.
LeakyReLU 0.2 after all but the last; InstanceNorm on the four middle layers (their convs have no bias: the
norm cancels it); spectral norm on all but the last. Raw scores (least-squares GAN, no sigmoid),
(B, 1, H/4, W/4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn

from cmgan.models.edges import LAPLACIAN_KERNELS, edge_map
from cmgan.models.layers import ConvBlock


class InputMode(NamedTuple):
    """How the image and its edge map E (B, 1, H, W) combine into D's input; `extra_channels` beyond C."""

    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    extra_channels: int


def _concat(img: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return torch.cat([img, e.to(img.dtype)], dim=1)


def _residual(img: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return img + img * e.to(img.dtype)


def _gate(img: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return img * e.to(img.dtype)


#: Discriminator input modes by config name (`model.disc_input`). `image` never computes E.
DISC_INPUT: dict[str, InputMode] = {
    "concat": InputMode(_concat, 1),
    "residual": InputMode(_residual, 0),
    "gate": InputMode(_gate, 0),
    "image": InputMode(lambda img, e: img, 0),
}


class PatchDiscriminator(nn.Module):
    """forward(img): img (B, in_channels, H, W) in [-1, 1], H and W divisible by 4 -> scores (B, 1, H/4, W/4)."""

    def __init__(self, in_channels: int, width: int = 32, input_mode: str = "concat", laplacian: str = "4") -> None:
        super().__init__()
        if input_mode not in DISC_INPUT:
            raise ValueError(f"PatchDiscriminator input_mode={input_mode!r} is not one of {list(DISC_INPUT)}")
        if laplacian not in LAPLACIAN_KERNELS:
            raise ValueError(f"PatchDiscriminator laplacian={laplacian!r} is not one of {list(LAPLACIAN_KERNELS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"PatchDiscriminator in_channels={in_channels} must be 1 (MR) or 3 (RGB)")
        if width < 1:
            raise ValueError(f"PatchDiscriminator width={width} must be >= 1")
        self.in_channels, self.input_mode, self.laplacian = in_channels, input_mode, laplacian
        w = width
        lrelu = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        cin = in_channels + DISC_INPUT[input_mode].extra_channels
        self.net = nn.Sequential(
            ConvBlock(nn.Conv2d(cin, w, 3, 2, 1), lrelu(), norm=False),
            ConvBlock(nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False), lrelu()),
            ConvBlock(nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=False), lrelu()),
            ConvBlock(nn.Conv2d(4 * w, 8 * w, 3, 1, 1, bias=False), lrelu()),
            ConvBlock(nn.Conv2d(8 * w, 8 * w, 3, 1, 1, bias=False), lrelu()),
            nn.Conv2d(8 * w, 1, 3, 1, 1),  # raw scores: no spectral norm, no norm
        )

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        """D's input for `img`: the image combined with its own edge map per `input_mode`."""
        if img.dim() != 4 or img.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDiscriminator expects img of shape (B, {self.in_channels}, H, W), got {tuple(img.shape)}"
            )
        if img.shape[-2] % 4 or img.shape[-1] % 4:
            raise ValueError(f"PatchDiscriminator needs H and W divisible by 4, got {tuple(img.shape[-2:])}")
        mode = DISC_INPUT[self.input_mode]
        if self.input_mode == "image":
            return img
        return mode.combine(img, edge_map(img, self.laplacian))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(img))


"""The segmentation U-Net S: trained offline on labelled MR slices, then frozen; G fuses its features.

Structure (the public code's, at width w and depth d; w = 64, d = 4 gives channels 64 .. 1024):
    level 0: double conv3x3 (Cin -> w)                            full resolution
    level i: maxpool 2, double conv3x3 (w*2**(i-1) -> w*2**i)    1/2**i, i = 1..d
    up i:    convT2x2/s2 (w*2**i -> w*2**(i-1)), cat skip, double conv3x3 -> w*2**(i-1), i = d..1
    head:    conv1x1 (w -> num_classes) logits
Every conv3x3 is followed by BatchNorm and ReLU.

G's fusion points take two maps at half resolution with 2w channels: `enc`, the encoder's level-1 output, and
`dec`, the decoder's level-1 output. `features(x)` stops there (the full-resolution decoder stage and the
head, a third of S's work, are skipped); `forward(x, return_features=True)` gives logits and features from
one pass.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BatchNorm -> ReLU) x 2; the conv has no bias (BatchNorm's shift replaces it)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """convT2x2/s2 (c_in -> c_out), concatenate the skip (c_out), DoubleConv (2 c_out -> c_out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, 2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class SegUNet(nn.Module):
    """U-Net segmenter with BatchNorm + ReLU.

    forward(x): x (B, in_channels, H, W) in [-1, 1] (the normalization of the MR shards), H and W divisible by
    2**depth -> logits (B, num_classes, H, W); with return_features=True -> (logits, (enc, dec)).
    features(x) -> (enc, dec), each (B, 2 * width, H/2, W/2), without computing the full-resolution decoder.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 5, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width), ("depth", depth)):
            if v < 1:
                raise ValueError(f"SegUNet {name}={v} must be >= 1")
        self.in_channels, self.num_classes, self.width, self.depth = in_channels, num_classes, width, depth
        c = [width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, c[0])
        self.downs = nn.ModuleList(DoubleConv(c[i - 1], c[i]) for i in range(1, depth + 1))
        # ups[k] lands at level depth-1-k; ups[-1] is the full-resolution stage.
        self.ups = nn.ModuleList(Up(c[i], c[i - 1]) for i in range(depth, 0, -1))
        self.head = nn.Conv2d(c[0], num_classes, 1)

    @property
    def feature_channels(self) -> int:
        """Channels of each map returned by `features` (2 * width)."""
        return 2 * self.width

    def _run(self, x: torch.Tensor, full: bool) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SegUNet expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % 2**self.depth or x.shape[-1] % 2**self.depth:
            raise ValueError(
                f"SegUNet(depth={self.depth}) needs H and W divisible by {2**self.depth}, got {tuple(x.shape[-2:])}"
            )
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        enc = skips[1]
        y = skips[-1]
        for k, up in enumerate(self.ups[:-1]):
            y = up(y, skips[-2 - k])
        dec = y  # level 1: half resolution, 2 * width channels
        if not full:
            return None, (enc, dec)
        logits = self.head(self.ups[-1](y, skips[0]))
        return logits, (enc, dec)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        logits, feats = self._run(x, full=True)
        return (logits, feats) if return_features else logits

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(enc, dec) feature maps at half resolution, each (B, 2 * width, H/2, W/2)."""
        return self._run(x, full=False)[1]

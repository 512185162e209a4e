"""The ColorMedGAN generator: a U-shaped conv net with segmentation-feature fusion at half resolution.

G (MR -> RGB) is `Generator(1, 3, fusion="sigmoid")`; F (RGB -> MR) is `Generator(3, 1, fusion="none")`.

Trunk at width w, depth d (the paper: w = 64, d = 3; c_i = min(w * 2**i, 8w) channels at 1/2**i resolution):

    x0 = conv5x5/s1 (Cin -> c0)                                   full resolution
    e1 = conv3x3/s2 (c0 -> c1)                                    1/2   <- fusion point 1 (encoder)
    e_i = conv3x3/s2 (c_{i-1} (+ fused) -> c_i), i = 2..d          the first of these sees fuse(e1, S_enc);
                                                                   the ungated e1 still feeds the skip
    b  = conv1x1 (c_d -> c_d)                                     1/2**d
    y  = convT4x4/s2 (cat(e_d, b) -> c_{d-1}); then for i = d-1..1: y = convT4x4/s2 (cat(y, e_i) -> c_{i-1})
         the up conv that lands at 1/2 is followed by fuse(y, S_dec)  <- fusion point 2 (decoder)
    out = tanh(conv5x5 (c0 -> Cout))

Every conv: spectral norm -> InstanceNorm (affine=False) -> ReLU; the last conv has neither norm nor spectral
norm. `upsample="resize"` replaces each convT4x4/s2 by nearest-neighbour x2 then conv3x3/s1 (Odena et al. 2016):
a stride-2 transposed conv whose kernel is not divisible by its stride overlaps its outputs unevenly and paints
a 2-pixel checkerboard that the generator must learn to cancel; the resize conv cannot produce it.
Convs followed by the norm have no bias: InstanceNorm's mean subtraction cancels it exactly (its
gradient is zero), and dropping it saves a reduction per backward. At w = 64, d = 3 this is 7.32M parameters
(sigmoid fusion with 128-channel S features).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cmgan.models.layers import ConvBlock, spectral_norm

SegFeatures = tuple[torch.Tensor, torch.Tensor]


class SigmoidFusion(nn.Module):
    """`x * sigmoid(s)` (the paper's best mode). When S's channel count differs from the generator's at half
    resolution (c1 = 2 * width), a spectrally normalized 1x1 conv projects s to c1 channels first (only then)."""

    def __init__(self, channels: int, seg_channels: int) -> None:
        super().__init__()
        self.extra_channels = 0
        self.proj = spectral_norm(nn.Conv2d(seg_channels, channels, 1)) if seg_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.proj(s)).to(x.dtype)


class ConcatFusion(nn.Module):
    """`cat(x, s)` along channels (the paper's ablation); the next conv is `seg_channels` wider."""

    def __init__(self, channels: int, seg_channels: int) -> None:
        super().__init__()
        self.extra_channels = seg_channels

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, s.to(x.dtype)], dim=1)


class NoFusion(nn.Module):
    """No segmentation branch: x passes through (F, and the ablation without S)."""

    def __init__(self, channels: int, seg_channels: int) -> None:
        super().__init__()
        self.extra_channels = 0

    def forward(self, x: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        return x


def up_transpose(cin: int, cout: int) -> nn.Module:
    """x2 up: convT 4x4 stride 2 (the paper's)."""
    return nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)


class ResizeConv(nn.Sequential):
    """x2 up: nearest-neighbour upsampling, then conv 3x3 stride 1 (no checkerboard)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1, bias=False))
        self.out_channels = cout


#: Upsampling layers by config name (`model.upsample`); ConvBlock spectrally normalizes their conv.
UPSAMPLE = {"transpose": up_transpose, "resize": ResizeConv}

#: Fusion modes by config name (`model.fusion`).
FUSION: dict[str, type[nn.Module]] = {"sigmoid": SigmoidFusion, "concat": ConcatFusion, "none": NoFusion}


def stage_channels(width: int, depth: int) -> list[int]:
    """Channels c_0..c_depth of the trunk: width doubling per stage, capped at 8 * width."""
    return [min(width * 2**i, 8 * width) for i in range(depth + 1)]


class Generator(nn.Module):
    """Image-to-image generator with optional segmentation fusion.

    forward(x, seg): x (B, in_channels, H, W) in [-1, 1], H and W divisible by 2**depth;
    seg = (enc, dec), each (B, seg_channels, H/2, W/2) (`SegUNet.features`), required unless fusion = "none"
    -> (B, out_channels, H, W) in [-1, 1] (tanh), in the autocast dtype when run under autocast.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        width: int = 64,
        depth: int = 3,
        fusion: str = "sigmoid",
        seg_channels: int = 128,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        if fusion not in FUSION:
            raise ValueError(f"Generator fusion={fusion!r} is not one of {list(FUSION)}")
        if upsample not in UPSAMPLE:
            raise ValueError(f"Generator upsample={upsample!r} is not one of {list(UPSAMPLE)}")
        if depth < 2:
            raise ValueError(f"Generator depth={depth} must be >= 2 (fusion needs a down conv after the first)")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width),
                        ("seg_channels", seg_channels)):
            if v < 1:
                raise ValueError(f"Generator {name}={v} must be >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depth, self.fusion, self.seg_channels = depth, fusion, seg_channels
        c = stage_channels(width, depth)
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731

        self.stem = ConvBlock(nn.Conv2d(in_channels, c[0], 5, 1, 2, bias=False), relu())
        self.fuse_enc = FUSION[fusion](c[1], seg_channels)
        self.fuse_dec = FUSION[fusion](c[1], seg_channels)
        downs = [ConvBlock(nn.Conv2d(c[0], c[1], 3, 2, 1, bias=False), relu())]
        for i in range(2, depth + 1):
            extra = self.fuse_enc.extra_channels if i == 2 else 0
            downs.append(ConvBlock(nn.Conv2d(c[i - 1] + extra, c[i], 3, 2, 1, bias=False), relu()))
        self.downs = nn.ModuleList(downs)
        self.bottleneck = ConvBlock(nn.Conv2d(c[depth], c[depth], 1, bias=False), relu())
        # ups[k] lands at 1/2**(depth-1-k); its input is cat(previous, skip) (+ S_dec after the 1/2 one).
        up = UPSAMPLE[upsample]
        ups = [ConvBlock(up(2 * c[depth], c[depth - 1]), relu())]
        for i in range(depth - 1, 0, -1):
            extra = self.fuse_dec.extra_channels if i == 1 else 0
            ups.append(ConvBlock(up(2 * c[i] + extra, c[i - 1]), relu()))
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(c[0], out_channels, 5, 1, 2)  # no spectral norm, no norm (docs/method.md)

    def _check(self, x: torch.Tensor, seg: SegFeatures | None) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Generator expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 2**self.depth or w % 2**self.depth:
            raise ValueError(f"Generator(depth={self.depth}) needs H and W divisible by {2**self.depth}, got {h}x{w}")
        if self.fusion == "none":
            return
        if seg is None:
            raise ValueError(
                f"Generator(fusion={self.fusion!r}) needs seg=(enc, dec) feature maps of the segmentation net "
                "(SegUNet.features(x)); pass them, or build the generator with fusion='none'"
            )
        want = (x.shape[0], self.seg_channels, h // 2, w // 2)
        for name, s in zip(("enc", "dec"), seg):
            if tuple(s.shape) != want:
                raise ValueError(f"Generator seg {name} features must have shape {want}, got {tuple(s.shape)}")

    def forward(self, x: torch.Tensor, seg: SegFeatures | None = None) -> torch.Tensor:
        self._check(x, seg)
        enc, dec = seg if seg is not None else (None, None)
        h = self.downs[0](self.stem(x))
        skips = [h]  # the ungated e1 feeds the skip
        h = self.fuse_enc(h, enc)
        for down in self.downs[1:]:
            h = down(h)
            skips.append(h)
        y = torch.cat([skips[-1], self.bottleneck(h)], dim=1)
        for k, up in enumerate(self.ups):
            y = up(y)
            if k == self.depth - 2:  # this up conv landed at 1/2 resolution
                y = self.fuse_dec(y, dec)
            if k < self.depth - 1:
                y = torch.cat([y, skips[-2 - k]], dim=1)
        return torch.tanh(self.head(y))

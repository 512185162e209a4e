"""Networks of ColorMedGAN, built from `ModelConfig`.

    G  = Generator(1, 3, fusion=model.fusion)   MR -> RGB, fuses S's features   (paper: G)
    F  = Generator(3, 1, fusion="none")         RGB -> MR                        (paper: F)
    Dx = PatchDiscriminator(1)                  judges MR slices                 (paper: D_X)
    Dy = PatchDiscriminator(3)                  judges color images              (paper: D_Y)
    S  = SegUNet(1, model.seg_classes)          frozen segmenter                 (paper: S)
"""

from __future__ import annotations

from typing import NamedTuple

from cmgan.config import ModelConfig
from cmgan.models.discriminator import DISC_INPUT, PatchDiscriminator
from cmgan.models.generator import FUSION, Generator
from cmgan.models.segmentation import SegUNet


class Networks(NamedTuple):
    """The four trained networks of the cycle."""

    G: Generator
    F: Generator
    Dx: PatchDiscriminator
    Dy: PatchDiscriminator


def build_generator(model: ModelConfig) -> Generator:
    """G: 1 -> 3 channels, with `model.fusion` of S's features (2 * seg_width channels each)."""
    return Generator(1, 3, model.width, model.depth, model.fusion, seg_channels=2 * model.seg_width,
                     upsample=model.upsample)


def build_networks(model: ModelConfig) -> Networks:
    """G, F, Dx, Dy as `model` describes them (fresh weights; seed torch before calling for reproducibility)."""
    return Networks(
        G=build_generator(model),
        F=Generator(3, 1, model.width, model.depth, "none", upsample=model.upsample),
        Dx=PatchDiscriminator(1, model.disc_width, model.disc_input, model.laplacian),
        Dy=PatchDiscriminator(3, model.disc_width, model.disc_input, model.laplacian),
    )


def build_segmenter(model: ModelConfig) -> SegUNet:
    """S: a 1-channel U-Net with `seg_classes` outputs; its features have 2 * seg_width channels."""
    return SegUNet(1, model.seg_classes, model.seg_width, model.seg_depth)


__all__ = [
    "DISC_INPUT", "FUSION", "Generator", "Networks", "PatchDiscriminator", "SegUNet",
    "build_generator", "build_networks", "build_segmenter",
]

"""sRGB -> CIELAB: the one conversion of the package (D65 white, 2 degree observer), equal to scikit-image's
`rgb2lab` (same matrix, same white, same piecewise cube root) to float64 rounding.

    lab = srgb_to_lab(rgb)           # (..., 3) float tensor, sRGB in [0, 1] -> (..., 3) float64 tensor
    lab = srgb8_to_lab(rgb_uint8)    # (..., 3) uint8 array -> (..., 3) float64 array

L is in [0, 100]; a and b are about [-128, 127]. Used by the demo's color metrics (cmgan.eval.color) and by the
slice-to-slice color change of colorized volumes (cmgan.colorize.consistency).
"""

from __future__ import annotations

import numpy as np
import torch

XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
"""Linear sRGB -> CIE XYZ (scikit-image's matrix)."""

WHITE_D65 = (0.95047, 1.0, 1.08883)
"""Reference white of illuminant D65, 2 degree observer."""


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) sRGB in [0, 1] -> (..., 3) CIELAB (L in [0, 100]) float64."""
    rgb = rgb.to(torch.float64)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ torch.tensor(XYZ_FROM_RGB, dtype=torch.float64).T
    xyz = xyz / torch.tensor(WHITE_D65, dtype=torch.float64)
    f = torch.where(xyz > 0.008856, torch.pow(xyz.clamp_min(0.0), 1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], -1)


def srgb8_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float64 CIELAB (`srgb_to_lab` of rgb / 255)."""
    return srgb_to_lab(torch.from_numpy(np.asarray(rgb, dtype=np.uint8)).to(torch.float64) / 255.0).numpy()

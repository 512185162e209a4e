"""cmgan.colorspace: the one sRGB -> CIELAB conversion equals scikit-image's rgb2lab."""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb2lab

from cmgan.colorspace import srgb8_to_lab, srgb_to_lab


def test_float_conversion_equals_scikit_image_including_black_white_and_the_linear_segment():
    rgb = np.random.default_rng(0).random((256, 3))
    rgb[:4] = 0.0
    rgb[4:8] = 1.0
    rgb[8:12] = 0.03  # below sRGB's linear-segment threshold (0.04045)
    rgb[12:16] = 0.004  # XYZ below the cube root's threshold
    np.testing.assert_allclose(srgb_to_lab(torch.from_numpy(rgb)).numpy(), rgb2lab(rgb[None])[0], atol=1e-10)


def test_every_8_bit_gray_and_random_8_bit_colors_equal_scikit_image():
    gray = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    colors = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    np.testing.assert_allclose(srgb8_to_lab(gray), rgb2lab(gray[None])[0], atol=1e-10)
    np.testing.assert_allclose(srgb8_to_lab(colors), rgb2lab(colors), atol=1e-10)
    assert abs(srgb8_to_lab(np.array([255, 255, 255], np.uint8))[0] - 100.0) < 1e-6

"""cmgan.colorize.consistency: the flicker metric measures colour jumps between slices; smoothing removes them
without touching luminance."""

from __future__ import annotations

import numpy as np

from cmgan.colorize.consistency import slice_consistency, smooth_chroma
from cmgan.colorspace import srgb8_to_lab


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _tissue(shape=(20, 24, 16)) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return x**2 + y**2 + z**2 < 0.8


def test_steady_colour_scores_zero_and_flicker_scores_its_jump_along_the_axis_only():
    mask = _tissue()
    steady = np.zeros(mask.shape + (3,), np.uint8)
    steady[mask] = (180, 120, 90)
    c = slice_consistency(steady, mask, axis=2)
    assert c["delta_e"] == 0 and c["pairs"] == int(mask.any(axis=(0, 1)).sum()) - 1

    flicker = steady.copy()
    flicker[:, :, ::2][mask[:, :, ::2]] = (150, 130, 120)  # even slices another hue
    jump = float(np.linalg.norm(srgb8_to_lab(np.array([180, 120, 90], np.uint8))
                                - srgb8_to_lab(np.array([150, 130, 120], np.uint8))))
    c = slice_consistency(flicker, mask, axis=2)
    assert abs(c["delta_e"] - jump) < 1e-3 and c["delta_ab"] > 0
    # Along another axis the same volume has no jumps except where the hue bands begin and end.
    assert slice_consistency(flicker, mask, axis=0)["delta_e"] == 0


def test_chroma_smoothing_reduces_flicker_and_keeps_luminance_and_background():
    rng = np.random.default_rng(1)
    mask = _tissue()
    luma = rng.integers(60, 200, mask.shape).astype(np.float32)
    cb = rng.normal(0, 20, mask.shape[2])[None, None, :] * np.ones(mask.shape)  # chroma noise per slice
    cr = rng.normal(0, 20, mask.shape[2])[None, None, :] * np.ones(mask.shape)
    rgb = np.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], axis=-1)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    rgb[~mask] = 0

    smooth = smooth_chroma(rgb, mask, axis=2, sigma=2.0, block=7)
    before = slice_consistency(rgb, mask, 2)["delta_ab"]
    after = slice_consistency(smooth, mask, 2)["delta_ab"]
    assert after < 0.3 * before
    inside = mask & (rgb.min(axis=-1) > 0) & (rgb.max(axis=-1) < 255)  # unclipped voxels
    assert np.abs(_luma(smooth) - _luma(rgb))[inside].max() <= 1.5  # luminance kept up to uint8 rounding
    assert not smooth[~mask].any()
    np.testing.assert_array_equal(smooth_chroma(rgb, mask, 2, sigma=0), rgb)

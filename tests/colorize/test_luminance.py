"""`keep_luminance`: the output's luma is the input's, its chroma is the prediction's."""

from __future__ import annotations

import numpy as np
import pytest

from cmgan.colorize.luminance import keep_luminance

LUMA = np.array([0.299, 0.587, 0.114])
CB = np.array([-0.168736, -0.331264, 0.5])
CR = np.array([0.5, -0.418688, -0.081312])


def test_luma_becomes_the_input_and_chroma_stays_where_nothing_clips():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(-0.3, 0.3, (5, 7, 3)).astype(np.float32)
    gray = rng.uniform(-0.3, 0.3, (5, 7)).astype(np.float32)
    out = keep_luminance(rgb, gray)
    assert out.dtype == np.float32 and out.shape == rgb.shape
    assert np.abs(out).max() < 1.0  # nothing clipped: the identities below are exact
    np.testing.assert_allclose(out @ LUMA, gray, atol=1e-5)
    np.testing.assert_allclose(out @ CB, rgb @ CB, atol=1e-5)
    np.testing.assert_allclose(out @ CR, rgb @ CR, atol=1e-5)
    assert np.abs(out @ LUMA - rgb @ LUMA).max() > 0.1  # it did change the brightness


def test_colours_that_do_not_fit_at_the_inputs_brightness_lose_saturation_not_luma():
    rgb = np.array([[0.9, -0.2, 0.1], [0.9, -0.2, 0.1], [0.9, -0.2, 0.1], [0.2, 0.2, 0.2]], np.float32)
    gray = np.array([-1.0, -0.9, 0.95, 0.95], np.float32)
    out = keep_luminance(rgb, gray)
    assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_allclose(out @ LUMA, gray, atol=1e-5)  # luma exact even where the chroma had to shrink
    np.testing.assert_allclose(out[0], -1.0, atol=1e-6)  # the background level has no room for colour: black
    c_in, c_out = rgb[1] - rgb[1] @ LUMA, out[1] - out[1] @ LUMA
    ratio = c_out / c_in
    assert 0 < ratio[0] < 1 and np.allclose(ratio, ratio[0], atol=1e-5)  # the same hue, less saturated
    np.testing.assert_allclose(out[3], 0.95, atol=1e-6)  # gray stays gray


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="keep_luminance"):
        keep_luminance(np.zeros((4, 4, 3)), np.zeros((4, 5)))

"""CIELAB and CIEDE2000 agree with scikit-image; the demo color metrics measure what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000

from cmgan.eval import color


def test_ciede2000_equals_scikit_image_including_gray_and_hue_wrap_cases():
    rng = np.random.default_rng(1)
    lab1 = rng.uniform([0, -100, -100], [100, 100, 100], (2000, 3))
    lab2 = rng.uniform([0, -100, -100], [100, 100, 100], (2000, 3))
    lab1[:20, 1:] = 0  # achromatic (C = 0)
    lab2[20:40] = lab1[20:40]  # identical
    lab1[40:60, 1:] = [[10.0, -1.0]]  # hue near 354 deg ...
    lab2[40:60, 1:] = [[10.0, 1.0]]  # ... vs 6 deg: the mean hue wraps around
    ours = color.ciede2000(torch.from_numpy(lab1), torch.from_numpy(lab2)).numpy()
    np.testing.assert_allclose(ours, deltaE_ciede2000(lab1, lab2), atol=1e-10)
    assert np.all(ours[20:40] == 0)


def test_delta_e_is_averaged_inside_the_mask_only():
    truth = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    truth[..., 0] = 200
    out = torch.full((2, 3, 8, 8), -1.0)
    out[:, 0] = 200 / 255 * 2 - 1  # equal to the truth ...
    out[:, :, :, :4] = 1.0  # ... except the left half, painted white
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, :, 4:] = True  # slice 0: only the correct half; slice 1: everything
    mask[1] = True
    de = color.slice_delta_e(color.output_lab(out), color.truth_lab(truth), mask)
    white = color.ciede2000(color.srgb_to_lab(torch.tensor([1.0, 1.0, 1.0])),
                            color.srgb_to_lab(torch.tensor([200 / 255, 0.0, 0.0])))
    assert de[0].item() == pytest.approx(0, abs=1e-5)  # float32 output: 200/255 is not exact
    assert de[1].item() == pytest.approx(white.item() / 2, rel=1e-6)
    assert torch.isnan(color.slice_delta_e(color.output_lab(out), color.truth_lab(truth), mask & False)).all()


def test_label_colors_and_their_spread_across_slices():
    lab = torch.zeros(3, 4, 4, 3, dtype=torch.float64)
    label = torch.zeros(3, 4, 4, dtype=torch.int64)
    label[:, :2] = 1  # 8 pixels of label 1 on every slice
    label[0, 2:, :1] = 2  # label 2: 2 pixels on slice 0 only (below min_pixels)
    for s, l_value in enumerate([40.0, 50.0, 60.0]):
        lab[s, :2] = torch.tensor([l_value, 3.0, -4.0], dtype=torch.float64)
    means = color.label_mean_lab(lab, label, num_labels=3, min_pixels=4)
    assert means.shape == (3, 3, 3)
    assert torch.isnan(means[:, 0]).all() and torch.isnan(means[:, 2]).all()  # background; too few pixels
    assert means[:, 1, 0].tolist() == [40.0, 50.0, 60.0]
    spread = color.color_spread(means.numpy())
    assert spread[1] == pytest.approx(np.sqrt(200 / 3))  # RMS distance of L = 40, 50, 60 to 50
    assert np.isnan(spread[0]) and np.isnan(spread[2])
    constant = means.clone()
    constant[:, 1] = means[0, 1]
    assert color.color_spread(constant.numpy())[1] == 0.0


def test_mismatched_label_and_image_sizes_are_refused():
    with pytest.raises(ValueError, match="labels"):
        color.label_mean_lab(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 5, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="truth"):
        color.slice_delta_e(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 5, 3), torch.ones(1, 4, 4, dtype=torch.bool))

"""cmgan.data.intensity: MR normalization and intensity foreground masks (on the MNI152 template)."""

from __future__ import annotations

import numpy as np
import pytest

from cmgan.data.intensity import Normalization, foreground_mask, normalize_mr


@pytest.fixture(scope="module")
def mni():
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    brain = datasets.load_mni152_brain_mask(resolution=2)
    return np.asarray(t1.get_fdata(), np.float32), np.asarray(brain.get_fdata()) > 0.5


def test_normalization_round_trips_through_its_dict() -> None:
    norm = Normalization(lower=1.0, upper=99.0)
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="unknown normalization key"):
        Normalization.from_dict({**norm.to_dict(), "gain": 2})
    with pytest.raises(ValueError, match="lower < upper"):
        Normalization(lower=50, upper=10)


def test_normalized_mri_spans_minus_one_to_one_with_background_minus_one(mni) -> None:
    t1, _ = mni
    fg = foreground_mask(t1)
    out = normalize_mr(t1, Normalization())
    assert out.dtype == np.float32 and out.shape == t1.shape
    assert out.min() == -1.0 and out.max() == 1.0
    assert (out[~fg] == -1.0).all()
    # The window is the 0.5/99.5 percentile of the foreground: ~0.5% of it saturates at each end.
    assert 0.002 < (out[fg] >= 1.0).mean() < 0.01
    # Linear inside the window: intensity order is kept.
    inside = fg & (out > -1) & (out < 1)
    order = np.argsort(t1[inside])
    assert (np.diff(out[inside][order]) >= -1e-6).all()


def test_intensity_window_does_not_depend_on_the_label_mask(mni) -> None:
    t1, brain = mni
    with_labels = normalize_mr(t1, Normalization(), mask=brain & (t1 > t1.mean()))
    without = normalize_mr(t1, Normalization())
    both = (with_labels > -1) & (without > -1)
    np.testing.assert_array_equal(with_labels[both], without[both])


def test_intensity_foreground_of_the_mni_template_matches_its_brain_mask(mni) -> None:
    t1, brain = mni
    fg = foreground_mask(t1)
    dice = 2 * (fg & brain).sum() / (fg.sum() + brain.sum())
    assert dice > 0.85

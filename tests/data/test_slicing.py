"""cmgan.data.slicing: the slice geometry helpers (take/put, to_size/from_size, foreground box)."""

from __future__ import annotations

import numpy as np

from cmgan.data.slicing import Placement, foreground_box, from_size, put_slice, slice_spacing, take_slice, to_size


def test_axial_slice_shows_anterior_up_and_put_slice_inverts_take_slice() -> None:
    vol = np.zeros((4, 5, 3), np.float32)
    vol[0, 4, 1] = 1.0  # patient's left-most column, most anterior row
    img = take_slice(vol, 2, 1)
    assert img.shape == (5, 4) and img[0, 0] == 1.0
    back = np.zeros_like(vol)
    for axis in range(3):
        back[:] = 0
        rnd = np.random.default_rng(axis).random(vol.shape).astype(np.float32)
        for k in range(vol.shape[axis]):
            put_slice(back, axis, k, take_slice(rnd, axis, k))
        np.testing.assert_array_equal(back, rnd)


def test_to_size_keeps_the_physical_aspect_and_from_size_restores_the_shape() -> None:
    img = np.zeros((40, 20), np.float32)
    img[10:30, 5:15] = 1.0
    out, place = to_size(img, 64, background=-1.0, spacing=(1.0, 2.0))  # 40 mm x 40 mm: becomes square
    assert out.shape == (64, 64) and place.scaled == (64, 64)
    square = out[place.offset[0] : place.offset[0] + 64, place.offset[1] : place.offset[1] + 64]
    rows, cols = np.nonzero(square > 0.5)
    # The rectangle is 20 rows x 10 columns of 1 x 2 mm pixels: a 20 mm square, so square in the output too.
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(height - 32) <= 2 and abs(width - 32) <= 2
    out, place = to_size(img, 32, background=-1.0)
    assert place.scaled == (32, 16) and (out[:, : place.offset[1]] == -1.0).all()
    back = from_size(out, place)
    assert back.shape == img.shape
    assert ((back > 0.5) == (img > 0.5)).mean() > 0.97


def test_to_size_with_nearest_keeps_label_values() -> None:
    lab = np.random.default_rng(0).integers(0, 5, (37, 23)).astype(np.uint8)
    out, place = to_size(lab, 64, order=0)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= set(range(5))
    np.testing.assert_array_equal(from_size(out, place, order=0), lab)


def test_slice_spacing_is_row_then_column_of_the_displayed_slice() -> None:
    assert slice_spacing((1.0, 2.0, 3.0), 2) == (2.0, 1.0)
    assert slice_spacing((1.0, 2.0, 3.0), 0) == (3.0, 2.0)


def test_crop_to_the_foreground_box_fills_the_frame_and_from_size_puts_it_back() -> None:
    vol = np.zeros((30, 40, 5), bool)
    vol[10:20, 5:35, 1:4] = True  # 10 wide (x) x 30 tall (y) in the axial display
    box = foreground_box(vol, axis=2, margin=0.0)
    img = take_slice(vol, 2, 2).astype(np.float32)
    assert box == (5, 10, 30, 10)
    out, place = to_size(img, 60, background=-1.0, crop=box)
    assert place.scaled == (60, 20) and (out[:, place.offset[1] : place.offset[1] + 20] == 1.0).all()
    back = from_size(out, place, background=-1.0)
    assert back.shape == img.shape
    np.testing.assert_array_equal(back == 1.0, img == 1.0)
    assert Placement.from_dict(place.to_dict()) == place
    assert foreground_box(np.zeros((4, 4), bool)) is None

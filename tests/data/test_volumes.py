"""Reading NIfTI, DICOM series and Zarr volumes into canonical RAS+ `Volume`s; clear errors for bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cmgan.data.volumes import VolumeError, read_dicom_series, read_volume
from shards.dicom_write import write_dicom_series


def _oblique_affine() -> np.ndarray:
    a = np.eye(4)
    t = 0.3
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    a[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    a[:3, 3] = [10.0, -20.0, 30.0]
    return a


def test_nifti_stored_in_lps_order_is_read_back_in_ras_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ras = rng.uniform(0, 100, (5, 6, 7)).astype(np.float32)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [4, 5]
    nib.save(nib.Nifti1Image(ras[::-1, ::-1].copy(), affine @ flip), tmp_path / "x.nii.gz")
    vol = read_volume(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(vol.data, ras)
    np.testing.assert_allclose(vol.affine, affine)
    assert vol.spacing == (2.0, 3.0, 4.0) and vol.kind == "nifti" and vol.identity == "x"


def test_dicom_series_is_sorted_by_position_rescaled_and_placed_like_the_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.uniform(-100, 900, (6, 5, 8)).astype(np.float32)
    names = [f"IM{i:03d}" for i in rng.permutation(8)]  # file order unrelated to slice order, no extension
    write_dicom_series(data, _oblique_affine(), tmp_path / "series", slope=0.5, intercept=-100.0, file_names=names)
    vol = read_volume(tmp_path / "series", canonical=False)
    np.testing.assert_allclose(vol.data, data, atol=0.25)  # uint16 storage at slope 0.5
    np.testing.assert_allclose(vol.affine, _oblique_affine(), atol=1e-5)
    assert vol.kind == "dicom"


def test_dicom_geometry_matches_nibabel_on_a_real_scanner_file(tmp_path: Path) -> None:
    from nibabel.nicom import dicomwrappers

    src = get_testdata_file("MR_small.dcm")
    shutil.copy(src, tmp_path / "MR_small.dcm")
    vol = read_dicom_series(tmp_path)
    wrapper = dicomwrappers.wrapper_from_file(src)
    # nibabel indexes (row, column); we index (column, row) like dcm2niix: swap the first two axes.
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine
    np.testing.assert_allclose(vol.affine[:3, [1, 0, 3]], expected[:3, [0, 1, 3]], atol=1e-6)
    np.testing.assert_array_equal(vol.data[:, :, 0], np.asarray(wrapper.get_data(), np.float32).T)


def _nifti(tmp_path: Path, name: str, data: np.ndarray) -> tuple[Path, Path]:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path, path


def _nan(tmp_path: Path) -> tuple[Path, Path]:
    data = np.ones((4, 4, 3), np.float32)
    data[1, 2, 0] = np.nan
    return _nifti(tmp_path, "nan.nii.gz", data)


def _garbage(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"not a nifti at all")
    return path, path


def _no_pixel_dicom(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "series"
    paths = write_dicom_series(np.arange(32, dtype=np.float32).reshape(4, 4, 2), np.eye(4), folder)
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1])
    return folder, paths[1]


def _empty_folder(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", tmp_path / "empty"


@pytest.mark.parametrize(
    "make, problem",
    [
        (_nan, "NaN"),
        (lambda p: _nifti(p, "fourd.nii.gz", np.ones((4, 4, 4, 2), np.float32)), "4D"),
        (lambda p: _nifti(p, "flat.nii.gz", np.zeros((4, 4, 4), np.float32)), "constant"),
        (_garbage, "not a readable NIfTI"),
        (_no_pixel_dicom, "no pixel data"),
        (_empty_folder, "empty folder"),
    ],
    ids=["nan", "4d", "constant", "garbage", "dicom-without-pixels", "empty-folder"],
)
def test_bad_volume_raises_an_error_naming_the_file_and_the_problem(tmp_path: Path, make, problem: str) -> None:
    path, culprit = make(tmp_path)
    with pytest.raises(VolumeError) as info:
        read_volume(path)
    assert problem in str(info.value)
    assert str(info.value).startswith(str(culprit))


def test_zarr_volume_written_by_a_build_reads_back_with_its_affine(demo_shards: Path) -> None:
    import json

    manifest = json.loads((demo_shards / "mr" / "manifest.json").read_text())
    vid = next(iter(manifest["volumes"]))
    vol = read_volume(demo_shards / "mr" / "volumes.zarr" / vid)
    assert vol.kind == "zarr" and vol.shape == tuple(manifest["volumes"][vid]["shape"])
    assert vol.data.min() == -1.0 and vol.data.max() <= 1.0
    assert vol.spacing == pytest.approx(tuple(manifest["volumes"][vid]["spacing"]))
    assert vol.meta["subject"] == manifest["volumes"][vid]["subject"]

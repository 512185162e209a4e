"""cmgan.colorize.writers: RGB NIfTI on the input's grid (as ITK reads it), OME-NGFF pyramid, PNG montage."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cmgan.colorize.volume import NativeGeometry
from cmgan.colorize.writers import (
    RGB24,
    downsample2,
    read_rgb_nifti,
    remove_stale,
    tmp_name,
    write_montage,
    write_ome_zarr,
    write_rgb_nifti,
)

from .conftest import reoriented, write_nifti


@pytest.fixture()
def oblique_input(tmp_path, brain):
    """A NIfTI stored PSR with distinct qform and sform (codes 1 and 4) and anisotropic voxels."""
    data, affine = reoriented(*brain, "PSR")
    affine = affine @ np.diag([1.0, 1.5, 0.8, 1.0])
    path = write_nifti(tmp_path / "in.nii.gz", data, affine)
    img = nib.load(str(path))
    qform = affine.copy()
    qform[:3, 3] += 0.25
    img.header.set_qform(qform, code=1)
    img.header.set_sform(affine, code=4)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, img.header), str(path))
    return path


def _geometry(path):
    img = nib.load(str(path))
    return NativeGeometry(img.shape, img.affine, nib.orientations.io_orientation(img.affine), img.header.copy())


def test_rgb_nifti_has_rgb24_voxels_and_the_input_header_geometry(tmp_path, oblique_input):
    g = _geometry(oblique_input)
    rgb = np.random.default_rng(0).integers(0, 256, g.shape + (3,)).astype(np.uint8)
    out = write_rgb_nifti(tmp_path / "o" / "c.nii.gz", rgb, g)
    src, dst = nib.load(str(oblique_input)).header, nib.load(str(out)).header
    assert dst.get_data_dtype() == RGB24 and int(dst["datatype"]) == 128 and dst.get_data_shape() == g.shape
    for field in ("qform_code", "sform_code", "pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                  "srow_x", "srow_y", "srow_z", "xyzt_units", "dim_info"):
        np.testing.assert_array_equal(dst[field], src[field], err_msg=field)
    back, affine = read_rgb_nifti(out)
    np.testing.assert_array_equal(back, rgb)
    np.testing.assert_allclose(affine, nib.load(str(oblique_input)).affine)
    assert list(out.parent.glob(".*")) == []  # no temporaries left


def test_itk_reads_the_rgb_nifti_as_rgb_pixels_on_the_input_geometry(tmp_path, oblique_input):
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK (dev extra) reads NIfTI as 3D Slicer/ITK-SNAP do")
    g = _geometry(oblique_input)
    rgb = np.random.default_rng(1).integers(0, 256, g.shape + (3,)).astype(np.uint8)
    out = write_rgb_nifti(tmp_path / "c.nii.gz", rgb, g)
    color, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(oblique_input))
    assert color.GetNumberOfComponentsPerPixel() == 3 and color.GetPixelIDValue() == sitk.sitkVectorUInt8
    assert color.GetSize() == source.GetSize()
    np.testing.assert_allclose(color.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(color.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(color.GetDirection(), source.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(color), rgb.transpose(2, 1, 0, 3))


def test_ome_zarr_is_an_ngff_multiscale_with_physical_scale_and_rgb_channels(tmp_path):
    import zarr

    rgb = np.random.default_rng(2).integers(0, 256, (70, 41, 9, 3)).astype(np.uint8)
    affine = np.diag([0.5, 1.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    out = write_ome_zarr(tmp_path / "c.ome.zarr", rgb, affine, "sub-01")
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"] and ms["axes"][0]["type"] == "channel"
    assert [c["color"] for c in ome["omero"]["channels"]] == ["FF0000", "00FF00", "0000FF"]
    root = zarr.open_group(str(out), mode="r")
    shapes = [root[d["path"]].shape for d in ms["datasets"]]
    assert shapes[0] == (3, 9, 41, 70) and shapes[1] == (3, 5, 21, 35) and len(shapes) >= 3
    assert max(shapes[-1][1:]) <= 32
    np.testing.assert_array_equal(root["0"][...], rgb.transpose(3, 2, 1, 0))
    np.testing.assert_array_equal(root["1"][...], downsample2(root["0"][...]))
    assert root["0"].metadata.dimension_names == ("c", "z", "y", "x")
    s0, s1 = (d["coordinateTransformations"] for d in ms["datasets"][:2])
    assert s0[0]["scale"] == [1.0, 3.0, 1.0, 0.5] and s1[0]["scale"] == [1.0, 6.0, 2.0, 1.0]
    assert s0[1]["translation"] == [0.0, 30.0, 20.0, -10.0]
    assert s1[1]["translation"] == [0.0, 31.5, 20.5, -9.75]  # coarse voxel centres sit half a fine voxel on
    assert meta["attributes"]["cmgan"]["affine"] == affine.tolist()


def test_ome_zarr_validates_as_an_ngff_0_5_image_with_ome_zarr_models(tmp_path):
    ngff = pytest.importorskip("ome_zarr_models.v05.image", reason="ome-zarr-models (dev extra) validates OME-NGFF")
    import zarr

    rgb = np.random.default_rng(3).integers(0, 256, (40, 33, 7, 3)).astype(np.uint8)
    out = write_ome_zarr(tmp_path / "c.ome.zarr", rgb, np.diag([0.8, 0.8, 2.0, 1.0]), "sub-01")
    # The whole store: the group's "ome" attributes against the 0.5 spec and each level against its array.
    image = ngff.Image.from_zarr(zarr.open_group(str(out), mode="r"))
    ms = image.ome_attributes.multiscales[0]
    assert [(a.name, a.type, a.unit) for a in ms.axes] == [
        ("c", "channel", None), ("z", "space", "millimeter"), ("y", "space", "millimeter"),
        ("x", "space", "millimeter")]
    assert [d.path for d in ms.datasets] == sorted(image.members, key=int)
    assert ms.datasets[1].coordinateTransformations[0].scale == [1.0, 4.0, 1.6, 1.6]
    # The validation is not a rubber stamp: the same store with a translation before its scale, or naming a
    # level it lacks, is rejected (pydantic's ValidationError, a ValueError, or a ValueError naming the path).
    group = zarr.open_group(str(out), mode="r+")
    good = json.loads(json.dumps(dict(group.attrs)["ome"]))
    for name, broken in (("translation first", lambda d: d[0]["coordinateTransformations"].reverse()),
                         ("missing level", lambda d: d.append({**d[-1], "path": "9"}))):
        ome = json.loads(json.dumps(good))
        broken(ome["multiscales"][0]["datasets"])
        group.attrs["ome"] = ome
        with pytest.raises(ValueError):
            ngff.Image.from_zarr(zarr.open_group(str(out), mode="r"))
            pytest.fail(f"accepted with a {name}")


def test_downsampling_averages_2x2x2_blocks_and_repeats_odd_edges():
    a = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(1, 3, 2, 2) * 7
    out = downsample2(a)
    assert out.shape == (1, 2, 1, 1)
    assert out[0, 0, 0, 0] == np.rint(a[0, :2].mean()) and out[0, 1, 0, 0] == np.rint(a[0, 2].mean())


def test_montage_shows_gray_above_color_for_tissue_slices(tmp_path):
    from PIL import Image

    mask = np.zeros((10, 12, 20), bool)
    mask[2:8, 3:9, 5:15] = True
    image = np.where(mask, 0.5, -1.0).astype(np.float32)
    rgb = np.zeros(mask.shape + (3,), np.uint8)
    rgb[mask] = (200, 50, 10)
    out = write_montage(tmp_path / "m.png", image, rgb, mask, axis=2, count=4)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * 12, 4 * 10, 3)
    assert set(map(tuple, sheet[12:].reshape(-1, 3))) == {(0, 0, 0), (200, 50, 10)}
    assert set(map(tuple, sheet[:12].reshape(-1, 3))) == {(0, 0, 0), (191, 191, 191)}


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    final = tmp_path / "x.nii.gz"
    tmp_name(final).write_bytes(b"half")
    (tmp_path / ".x.nii.gz.999.tmp.ome.zarr").mkdir()  # another (killed) process's
    (tmp_path / ".x.nii.gz.old999").mkdir()  # an output moved aside by a killed swap
    (tmp_path / ".y.nii.gz.1.tmp").write_bytes(b"other volume")
    remove_stale(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.nii.gz.1.tmp"]

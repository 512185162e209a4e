"""cmgan.colorize.volume: the generator sees exactly what training saw; outputs land on the input's grid."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

import nibabel as nib
import numpy as np
import pytest
import torch

from cmgan.colorize.inputs import Input, discover, input_sha256
from cmgan.colorize.volume import (
    NativeGeometry,
    colorize_prepared,
    prepare_volume,
    read_source,
    to_native,
)
from cmgan.data.intensity import Normalization
from cmgan.data.volumes import Volume, to_canonical
from cmgan.export import load_export

from .conftest import reoriented, write_nifti


@pytest.fixture()
def shard_set(tmp_path, brain):
    """Two NIfTI volumes (one stored LPI) and the training shards `python -m shards build` makes of them."""
    from shards.build import BuildOptions, build

    data, affine = brain
    a = write_nifti(tmp_path / "in" / "a.nii.gz", data, affine)
    b = write_nifti(tmp_path / "in" / "b.nii.gz", *reoriented(data * 1.7 + 5, affine, "LPI"))
    res = build([a, b], BuildOptions(domain="mr", out=tmp_path / "shards", size=32, salt_file=tmp_path / "salt",
                                     split=(1.0, 0.0, 0.0)))
    assert res.exit_code == 0
    return [a, b], tmp_path / "shards", res.manifest


def _shard_slices(shard_dir, manifest):
    """{(source sha256, slice index): mr.npy} of every sample in the shards."""
    volumes = manifest["volumes"]
    out = {}
    for s in manifest["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard_dir / s["name"]) as tar:
            for m in tar.getmembers():
                key, _, name = m.name.partition(".")
                members.setdefault(key, {})[name] = tar.extractfile(m).read()
        for sample in members.values():
            meta = json.loads(sample["meta.json"])
            out[(volumes[meta["volume"]]["source_sha256"], meta["slice"])] = np.load(io.BytesIO(sample["mr.npy"]))
    return out


def test_model_inputs_are_bit_identical_to_the_training_shards_of_the_same_volume(shard_set):
    files, shard_dir, manifest = shard_set
    stored = _shard_slices(shard_dir, manifest)
    compared = 0
    for f in files:
        inp = Input(f, "nifti", f.name)
        vol, geometry = read_source(inp)
        prep = prepare_volume(vol, geometry, Normalization(), axis=2, size=32)
        sha = input_sha256(inp)
        for j, k in enumerate(prep.indices):
            if (sha, int(k)) in stored:  # the shards skip slices with < 1% foreground; we colorize them too
                np.testing.assert_array_equal(prep.slices[j], stored[(sha, int(k))])
                compared += 1
    assert compared == sum(v["samples"] for v in manifest["volumes"].values()) > 20


def test_shards_zarr_subject_is_colorized_from_its_stored_normalized_image(shard_set):
    files, shard_dir, manifest = shard_set
    zarr_inputs, _ = discover([shard_dir])
    by_sha = {v["source_sha256"]: k for k, v in manifest["volumes"].items()}
    for f in files:
        inp = Input(f, "nifti", f.name)
        vol, geometry = read_source(inp)
        from_nifti = prepare_volume(vol, geometry, Normalization(), axis=2, size=32)
        z = next(i for i in zarr_inputs if i.key.endswith(by_sha[input_sha256(inp)]))
        zvol, zgeom = read_source(z)
        from_zarr = prepare_volume(zvol, zgeom, Normalization(), axis=2, size=32)
        assert from_zarr.normalized_input and not from_nifti.normalized_input and from_zarr.note == ""
        np.testing.assert_array_equal(from_zarr.mask, from_nifti.mask)
        np.testing.assert_array_equal(from_zarr.indices, from_nifti.indices)
        # The store keeps the normalized volume in float16: equal up to that rounding.
        np.testing.assert_allclose(from_zarr.slices.astype(np.float32), from_nifti.slices.astype(np.float32),
                                   atol=2e-3)
        np.testing.assert_allclose(from_zarr.affine, from_nifti.affine, atol=1e-5)


def test_to_native_inverts_the_canonical_reorientation_for_all_48_axis_orders():
    rng = np.random.default_rng(0)
    data = rng.random((3, 4, 5)).astype(np.float32)
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            affine = np.eye(4)
            affine[:3, :3] = 0
            for i, (p, f) in enumerate(zip(perm, flips)):
                affine[p, i] = f * (i + 1)
            canon = to_canonical(Volume(data, affine, "x", "nifti"))
            geometry = NativeGeometry(data.shape, affine, nib.orientations.io_orientation(affine))
            np.testing.assert_array_equal(to_native(canon.data, geometry), data)
            rgb = np.stack([canon.data, canon.data * 2, canon.data * 3], axis=-1)
            np.testing.assert_array_equal(to_native(rgb, geometry)[..., 2], data * 3)


def test_colorized_volume_is_black_outside_the_foreground_and_colored_inside(tmp_path, brain, export_path):
    f = write_nifti(tmp_path / "a.nii.gz", *brain)
    vol, geometry = read_source(Input(f, "nifti", "a"))
    prep = prepare_volume(vol, geometry, Normalization(), axis=2, size=32)
    calls = []
    rgb = colorize_prepared(load_export(export_path), prep, batch=5, on_slices=calls.append)
    assert rgb.shape == vol.data.shape + (3,) and rgb.dtype == np.uint8
    assert sum(calls) == len(prep.slices) and max(calls) == 5
    assert not rgb[~prep.mask].any()
    assert (rgb[prep.mask].max(axis=-1) > 0).mean() > 0.99


def test_batches_come_out_in_order_each_equal_to_its_own_generator_call(export_path):
    """The transfer pipeline hands batch i out after batch i + 1 was queued; order and values are unchanged."""
    from cmgan.colorize.volume import colorize_batches
    from cmgan.export import load_export

    export = load_export(export_path, "cpu", autocast=None)
    slices = np.random.default_rng(0).uniform(-1, 1, (10, 32, 32)).astype(np.float32)
    out = list(colorize_batches(export, slices, 4))
    assert [s for s, _ in out] == [0, 4, 8] and [r.shape for _, r in out] == [(4, 32, 32, 3)] * 2 + [(2, 32, 32, 3)]
    for start, rgb in out:
        direct = export.colorize(torch.from_numpy(slices[start:start + 4])[:, None]).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(rgb, direct)

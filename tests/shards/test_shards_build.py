"""`python -m shards build` from NIfTI, DICOM and PNG sources, checked by verify and by reading the outputs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cmgan.data import schema
from cmgan.data.codec import decode_sample
from cmgan.data.intensity import Normalization
from cmgan.data.slicing import foreground_box, is_empty_slice, take_slice, to_size
from cmgan.data.volumes import read_volume
from shards.__main__ import main
from shards.build import BuildError, BuildOptions, assign_splits, build
from shards.deid import SaltError, pseudonym
from shards.dicom_write import write_dicom_series
from shards.verify import verify


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _samples(out: Path) -> dict[str, dict]:
    """Every sample of a shard directory, decoded, with its shard's split."""
    manifest = json.loads((out / "manifest.json").read_text())
    samples = {}
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            raw: dict[str, dict] = {}
            for m in tar:
                key, _, name = m.name.partition(".")
                raw.setdefault(key, {})[name] = tar.extractfile(m).read()
        for key, members in raw.items():
            samples[key] = {**decode_sample({"__key__": key, **members}), "split": shard["split"]}
    return samples


def _mni_sources(tmp_path: Path, mni_arrays) -> tuple[Path, Path]:
    """Three 'subjects' from the template: as is, left-right mirrored in LPS storage, rescaled intensities."""
    t1, labels, affine = mni_arrays
    src, lab = tmp_path / "nifti", tmp_path / "labels"
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [t1.shape[0] - 1, t1.shape[1] - 1]
    _nifti(src / "sub-01_T1w.nii.gz", t1, affine)
    _nifti(lab / "sub-01_dseg.nii.gz", labels, affine)
    _nifti(src / "sub-02_T1w.nii.gz", np.ascontiguousarray(t1[::-1, ::-1]), affine @ flip)
    _nifti(lab / "sub-02_dseg.nii.gz", np.ascontiguousarray(labels[::-1, ::-1]), affine @ flip)
    _nifti(src / "sub-03_T1w.nii.gz", t1 * 800 + 50, affine)
    _nifti(lab / "sub-03_dseg.nii.gz", labels, affine)
    return src, lab


def test_build_from_nifti_with_labels_gives_verified_aligned_slices_split_by_subject(
    tmp_path: Path, mni_arrays, salt_file: Path
) -> None:
    src, lab = _mni_sources(tmp_path, mni_arrays)
    out = tmp_path / "out"
    norm = Normalization(crop_margin=0.05)
    result = build([src], BuildOptions(domain="mr", out=out, size=32, labels=(str(lab),), salt_file=salt_file,
                                       max_count=40, normalization=norm))
    assert result.exit_code == 0 and verify(out) == []
    manifest = result.manifest
    t1, labels, _ = mni_arrays
    brain = labels > 0
    expected = sum(not is_empty_slice(take_slice(brain, 2, k)) for k in range(t1.shape[2]))
    assert manifest["counts"]["samples"] == 3 * expected
    assert {len(v) for v in manifest["splits"].values()} == {1}  # 3 subjects -> 1 / 1 / 1
    samples = _samples(out)
    by_volume: dict[str, set[str]] = {}
    for key, s in samples.items():
        by_volume.setdefault(key.rsplit("_", 1)[0], set()).add(s["split"])
        assert s["mr.npy"].shape == (32, 32) and s["label.npy"].shape == (32, 32)
    assert all(len(splits) == 1 for splits in by_volume.values())  # never split a subject across splits

    # Labels sit on their own anatomy: the slice equals the source label slice, resized like the image.
    sub1 = pseudonym(salt_file.read_text().strip().encode(), "sub-01")
    k = 47
    s = samples[schema.slice_key(sub1, k)]
    box = foreground_box(brain, 2, 0.05)  # this build crops each volume to its foreground (5% margin)
    want, _ = to_size(take_slice(labels, 2, k), 32, 0, (2.0, 2.0), order=0, crop=box)
    np.testing.assert_array_equal(s["label.npy"], want)
    mr = s["mr.npy"].astype(np.float32)
    assert mr[s["label.npy"] == 3].mean() > mr[s["label.npy"] == 1].mean() + 0.2  # T1: white matter brighter
    # The mirrored subject, once reoriented, is the same anatomy: identical labels.
    sub2 = pseudonym(salt_file.read_text().strip().encode(), "sub-02")
    np.testing.assert_array_equal(samples[schema.slice_key(sub2, k)]["label.npy"], want)
    # The Zarr volume holds what the shards were cut from.
    vol = read_volume(out / "volumes.zarr" / sub1)
    from_zarr, _ = to_size(take_slice(vol.data, 2, k), 32, -1.0, (2.0, 2.0), crop=box)
    from_zarr[want == 0] = -1
    np.testing.assert_allclose(from_zarr, mr, atol=2e-3)


PATIENT = {
    "PatientName": "Doemaier^Janeliese",
    "PatientID": "PID-93817465",
    "PatientBirthDate": "19640229",
    "AccessionNumber": "ACC77123456",
    "InstitutionName": "Sankt Irgendwo Klinikum",
    "ReferringPhysicianName": "Hausarzt^Heinrich",
    "OtherPatientIDs": "OTHER-5550123",
    "PatientAddress": "Musterweg 17, 12345 Beispielstadt",
}


def test_dicom_series_build_like_their_nifti_and_leave_no_patient_identifier_in_any_output(
    tmp_path: Path, mni_arrays, salt_file: Path
) -> None:
    t1, _, affine = mni_arrays
    crop = np.ascontiguousarray(t1[:, :, 35:55])  # 20 axial slices through the ventricles
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * 35
    rng = np.random.default_rng(0)
    for i in range(3):
        fields = {k: (v + str(i) if k != "PatientBirthDate" else v) for k, v in PATIENT.items()}
        names = [f"IMG{n:05d}" for n in rng.permutation(20)]
        write_dicom_series(crop * (1 + i), crop_affine, tmp_path / "dicom" / f"patient{i}" / "series1",
                           patient=fields, slope=1e-4, intercept=-0.5, file_names=names, seed=i)
        _nifti(tmp_path / "nifti" / f"p{i}.nii.gz", crop * (1 + i), crop_affine)
    out_dcm, out_nii = tmp_path / "out_dcm", tmp_path / "out_nii"
    assert main(["build", "--domain", "mr", "--out", str(out_dcm), "--size", "32", "--salt-file", str(salt_file),
                 str(tmp_path / "dicom")]) == 0
    assert main(["build", "--domain", "mr", "--out", str(out_nii), "--size", "32", "--salt-file", str(salt_file),
                 str(tmp_path / "nifti")]) == 0
    assert verify(out_dcm) == []
    dcm, nii = _samples(out_dcm), _samples(out_nii)
    assert len(dcm) == len(nii) > 0
    by_slice_nii = {}
    for s in nii.values():
        by_slice_nii.setdefault(s["meta.json"]["slice"], []).append(s["mr.npy"].astype(np.float32))
    for s in dcm.values():  # each DICOM slice equals the NIfTI slice of the same position (some subject)
        diffs = [np.abs(s["mr.npy"].astype(np.float32) - x).max() for x in by_slice_nii[s["meta.json"]["slice"]]]
        assert min(diffs) < 5e-3

    secrets = [v for f in PATIENT.values() for v in (f, f.split("^")[0], f.split("^")[-1], f.split(",")[0])]
    secrets += [salt_file.read_text().strip(), str(tmp_path / "dicom"), "patient0"]
    files = [p for p in out_dcm.rglob("*") if p.is_file()]
    assert any(p.suffix == ".tar" for p in files) and any("zarr" in str(p) for p in files)
    for path in files:
        data = path.read_bytes().lower()
        for secret in secrets:
            assert secret.lower().encode() not in data, f"{secret!r} found in {path}"
        assert "patient" not in path.name.lower()


def test_build_from_png_folders_gives_verified_color_slices(tmp_path: Path, salt_file: Path) -> None:
    rng = np.random.default_rng(0)
    counts = {}
    for body, (h, w) in {"body-a": (48, 40), "body-b": (30, 50), "body-c": (40, 40)}.items():
        folder = tmp_path / "photos" / body
        folder.mkdir(parents=True)
        for k in range(5):
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[5 : h - 5, 6 : w - 6] = rng.integers(60, 250, 3)
            if k == 4:
                rgb[:] = 0  # nothing on this section: skipped
            if body == "body-a":  # transparent background (RGBA)
                alpha = (rgb.max(2) > 0).astype(np.uint8) * 255
                rgb[alpha == 0] = 200  # background color under alpha 0 must not survive
                Image.fromarray(np.dstack([rgb, alpha])).save(folder / f"s{k}.png")
            else:
                Image.fromarray(rgb).save(folder / f"s{k}.{'png' if body == 'body-b' else 'tif'}")
        counts[body] = 4
    out = tmp_path / "out"
    result = build([tmp_path / "photos"], BuildOptions(domain="color", out=out, size=32, salt_file=salt_file))
    assert result.exit_code == 0 and verify(out) == []
    samples = _samples(out)
    assert len(samples) == sum(counts.values())
    for s in samples.values():
        rgb, mask = s["rgb.npy"], s["mask.npy"]
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
        assert (rgb[mask == 0] == 0).all() and (rgb[mask == 1].max(axis=-1) >= 50).mean() > 0.95
    assert result.manifest["zarr"] is None and result.manifest["normalization"] is None


def test_bad_inputs_are_named_the_build_goes_on_and_verify_fails(
    tmp_path: Path, mni_arrays, salt_file: Path, capsys: pytest.CaptureFixture
) -> None:
    t1, _, affine = mni_arrays
    small = np.ascontiguousarray(t1[::2, ::2, 30:60:2])
    good = _nifti(tmp_path / "in" / "good.nii.gz", small, affine)
    nan = small.copy()
    nan[10, 10, 5] = np.nan
    bad = {
        "nan": _nifti(tmp_path / "in" / "nan.nii.gz", nan, affine),
        "4d": _nifti(tmp_path / "in" / "fourd.nii.gz", np.stack([small, small], -1), affine),
    }
    paths = write_dicom_series(small, affine, tmp_path / "in" / "nopix")
    import pydicom

    ds = pydicom.dcmread(paths[3])
    del ds.PixelData
    ds.save_as(paths[3])
    bad["dicom"] = paths[3]
    (tmp_path / "empty").mkdir()
    bad["empty"] = tmp_path / "empty"
    code = main(["build", "--domain", "mr", "--out", str(tmp_path / "out"), "--size", "16", "--salt-file",
                 str(salt_file), str(tmp_path / "in"), str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 1
    assert "4 input(s) FAILED" in err
    for what, path in bad.items():
        assert str(path) in err, what
    assert "NaN" in err and "4D" in err and "no pixel data" in err and "empty folder" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["volumes"] == 1 and len(manifest["errors"]) == 4
    assert not any(str(tmp_path) in json.dumps(e) for e in manifest["errors"])  # paths stay out of outputs
    assert main(["verify", str(tmp_path / "out")]) == 1
    assert "the build failed on input" in capsys.readouterr().err
    assert good.exists()


def test_a_bad_photo_is_reported_and_the_rest_of_its_folder_is_built(tmp_path: Path, salt_file: Path) -> None:
    folder = tmp_path / "photos" / "body"
    folder.mkdir(parents=True)
    for k in range(3):
        rgb = np.zeros((20, 20, 3), np.uint8)
        rgb[4:16, 4:16] = 120 + 40 * k
        Image.fromarray(rgb).save(folder / f"{k}.png")
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = build([tmp_path / "photos"], BuildOptions(domain="color", out=tmp_path / "out", size=16,
                                                       salt_file=salt_file))
    assert result.exit_code == 1 and result.manifest["counts"]["samples"] == 3
    assert [f.path for f in result.failures] == [str(folder / "3.png")]


def test_salt_inside_the_output_and_rebuild_without_overwrite_are_refused(tmp_path: Path, mni_arrays) -> None:
    t1, _, affine = mni_arrays
    src = _nifti(tmp_path / "in" / "a.nii.gz", np.ascontiguousarray(t1[::3, ::3, ::3]), affine)
    with pytest.raises(SaltError, match="inside the output"):
        build([src], BuildOptions(domain="mr", out=tmp_path / "out", size=16, salt_file=tmp_path / "out" / "s"))
    salt = tmp_path / "new-salt"
    assert build([src], BuildOptions(domain="mr", out=tmp_path / "out", size=16, salt_file=salt)).exit_code == 0
    assert salt.exists() and oct(salt.stat().st_mode & 0o777) == "0o600"  # created, private
    with pytest.raises(BuildError, match="--overwrite"):
        build([src], BuildOptions(domain="mr", out=tmp_path / "out", size=16, salt_file=salt))


def test_subjects_are_split_whole_by_the_fractions() -> None:
    subjects = [f"s{i:02d}" for i in range(20)]
    splits = assign_splits(subjects, (0.8, 0.1, 0.1))
    assert sorted(splits) == subjects
    assert [sum(v == sp for v in splits.values()) for sp in schema.SPLITS] == [16, 2, 2]
    small = assign_splits(["a", "b", "c"], (0.8, 0.1, 0.1))
    assert sorted(small.values()) == ["test", "train", "val"]
    assert set(assign_splits(["a"], (0.8, 0.1, 0.1)).values()) == {"train"}


def test_verify_names_the_shard_and_sample_of_a_corrupt_member_and_a_truncated_tar(
    tmp_path: Path, mni_arrays, salt_file: Path
) -> None:
    t1, labels, affine = mni_arrays
    for i in range(3):
        _nifti(tmp_path / "in" / f"sub-{i}.nii.gz", np.ascontiguousarray(t1[::2, ::2, 20:70:2]) + i, affine)
    out = tmp_path / "out"
    build([tmp_path / "in"], BuildOptions(domain="mr", out=out, size=16, salt_file=salt_file, max_count=5))
    assert verify(out) == []
    shards = sorted(out.glob("train-*.tar"))
    with tarfile.open(shards[0]) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    victim = members[0][0].split(".")[0]
    with tarfile.open(shards[0], "w") as tar:
        for name, data in members:
            data = data[:-7] + b"garbage" if name == f"{victim}.mask.npy" else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shards[1].write_bytes(shards[1].read_bytes()[:1500])
    problems = verify(out)
    assert any(str(shards[0]) in p and victim in p and "mask.npy" in p for p in problems)
    assert any(str(shards[1]) in p and "sha256" in p for p in problems)
    assert any(str(shards[1]) in p and ("unreadable tar" in p or "samples, the manifest says" in p)
               for p in problems)


def test_parallel_build_writes_the_same_bytes_as_a_serial_one(tmp_path: Path, mni_arrays, salt_file: Path) -> None:
    t1, _, affine = mni_arrays
    for i in range(3):
        _nifti(tmp_path / "in" / f"sub-{i}.nii.gz", np.ascontiguousarray(t1[::3, ::3, ::3]) * (i + 1), affine)
    shas = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        build([tmp_path / "in"], BuildOptions(domain="mr", out=out, size=16, salt_file=salt_file, workers=workers,
                                              max_count=4))
        shas.append([s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]])
    assert shas[0] == shas[1] and len(shas[0]) > 3

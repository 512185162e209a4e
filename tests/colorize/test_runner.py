"""End to end: `launch/colorize.py` over archives of NIfTI volumes and DICOM series, with a real export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cmgan.colorize.cli import main
from cmgan.colorize.runner import ColorizeOptions, run_colorize
from cmgan.colorize.submit import merge_summaries
from cmgan.colorize.writers import RGB24, read_rgb_nifti
from cmgan.data.intensity import Normalization, foreground_mask, normalize_mr
from cmgan.data.slicing import from_size, slice_spacing, take_slice, to_size
from cmgan.data.volumes import read_volume
from cmgan.export import load_export

from .conftest import make_export, reoriented, write_dicom_series, write_nifti


@pytest.fixture(autouse=True)
def _restore_threads():
    """`--threads` sets torch's thread count for the process: give the next tests their own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

ROOT = Path(__file__).resolve().parents[2]
LUMA = np.array([0.299, 0.587, 0.114])


def _archive(root: Path, brain, n_nifti: int = 2, dicom: bool = True) -> Path:
    """NIfTI volumes in different orientations and intensity scales (+ one DICOM series) under `root`."""
    data, affine = brain
    codes = ["RAS", "LPI", "PSR", "ILA", "SAL", "RPI", "LAS", "AIR"]
    for i in range(n_nifti):
        d, a = reoriented(data * (1 + 0.3 * i) + 7 * i, affine, codes[i % len(codes)])
        write_nifti(root / f"sub-{i + 1:02d}" / "anat" / f"sub-{i + 1:02d}_T1w.nii.gz", d, a)
    if dicom:
        write_dicom_series(root / "sub-dcm" / "t1_axial", data[:, :, 8:20] * 4)
    return root


def _summary(out: Path, name: str = "summary.json") -> dict:
    return json.loads((out / name).read_text())


def _direct_luminance(path: Path, export_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Expected output luminance of a volume, computed independently: the shards' normalization with the public
    `cmgan.data` functions, one call of `export.colorize` on all slices, `from_size` back.
    returns ((X, Y, Z) float luma in [0, 255] canonical, (X, Y, Z) bool mask)."""
    vol = read_volume(path)
    mask = foreground_mask(vol.data)
    image = normalize_mr(vol.data, Normalization(), mask=mask, window_mask=mask)
    pixel = slice_spacing(vol.spacing, 2)
    ks = [k for k in range(vol.data.shape[2]) if take_slice(mask, 2, k).any()]
    inputs, place = [], None
    for k in ks:
        img, place = to_size(take_slice(image, 2, k), 32, -1.0, pixel)
        m, _ = to_size(take_slice(mask, 2, k).astype(np.uint8), 32, 0, pixel, order=0)
        img[m == 0] = -1.0
        inputs.append(np.clip(img, -1, 1).astype(np.float16).astype(np.float32))
    pred = load_export(export_path, autocast=None).colorize(torch.from_numpy(np.stack(inputs))[:, None]).numpy()
    luma = np.zeros(vol.data.shape, np.float64)
    for k, p in zip(ks, pred):
        rgb = (from_size(p.transpose(1, 2, 0), place) + 1.0) * 127.5
        index = [slice(None)] * 3
        index[2] = k
        luma[tuple(index)] = np.swapaxes(np.flip(rgb @ LUMA, axis=0), 0, 1)  # inverse of take_slice
    return luma, mask


def _to_canonical(rgb: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.orientations.apply_orientation(rgb, nib.orientations.io_orientation(affine))


def test_archive_of_nifti_and_a_dicom_series_becomes_rgb_nifti_on_each_input_grid(tmp_path, brain, export_path):
    archive = _archive(tmp_path / "archive", brain, n_nifti=2)
    out = tmp_path / "out"
    code = main(["--checkpoint", str(export_path), str(archive), "--out", str(out), "--format", "nifti,png",
                 "--precision", "fp32", "--batch", "7", "--quiet"])
    assert code == 0
    summary = _summary(out)
    assert summary["counts"] == {"inputs": 3, "done": 3, "skipped": 0, "failed": 0}
    sources = {"sub-01/anat/sub-01_T1w": archive / "sub-01/anat/sub-01_T1w.nii.gz",
               "sub-02/anat/sub-02_T1w": archive / "sub-02/anat/sub-02_T1w.nii.gz",
               "sub-dcm/t1_axial": archive / "sub-dcm/t1_axial"}
    assert {r["key"] for r in summary["inputs"]} == set(sources)
    for key, src in sources.items():
        rec = next(r for r in summary["inputs"] if r["key"] == key)
        assert rec["slices"] > 0 and rec["slices_per_s"] > 0 and rec["consistency"]["pairs"] > 0
        assert Path(rec["outputs"]["png"]).is_file()
        rgb, affine = read_rgb_nifti(Path(rec["outputs"]["nifti"]))
        native = read_volume(src, canonical=False)  # the input file's own voxel order and affine
        assert rgb.shape == native.data.shape + (3,)
        np.testing.assert_allclose(affine, native.affine, atol=1e-4)
        if src.is_file():
            assert nib.load(str(src)).shape == rgb.shape[:3]
        luma_out = _to_canonical(rgb, affine).astype(np.float64) @ LUMA
        luma_direct, mask = _direct_luminance(src, export_path)
        assert np.abs(luma_out - luma_direct)[mask].max() <= 1.0  # uint8 rounding of R, G, B
        assert not _to_canonical(rgb, affine)[~mask].any()  # background stays black


def test_rerun_skips_finished_volumes_and_redoes_a_changed_input_or_model(tmp_path, brain, export_path):
    archive = _archive(tmp_path / "archive", brain, n_nifti=3, dicom=False)
    out = tmp_path / "out"
    opts = ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),), out=str(out), formats=("nifti",))
    first = run_colorize(opts)
    assert first["counts"]["done"] == 3
    files = sorted(out.rglob("*.nii.gz")) + sorted(out.rglob("*.colorize.json"))
    stamps = {f: f.stat().st_mtime_ns for f in files}

    again = run_colorize(opts)
    assert again["counts"] == {"inputs": 3, "done": 0, "skipped": 3, "failed": 0}
    assert {f: f.stat().st_mtime_ns for f in files} == stamps

    d, a = brain
    write_nifti(archive / "sub-02/anat/sub-02_T1w.nii.gz", d * 0.5 + 3, a)  # a corrected scan replaces it
    changed = run_colorize(opts)
    status = {r["key"]: (r["status"], r.get("redo_reason")) for r in changed["inputs"]}
    assert status == {"sub-01/anat/sub-01_T1w": ("skipped", None), "sub-02/anat/sub-02_T1w": ("done", "input changed"),
                      "sub-03/anat/sub-03_T1w": ("skipped", None)}

    new_model = make_export(tmp_path / "export2" / "generator.pt", seed=1)
    retrained = run_colorize(ColorizeOptions(checkpoint=str(new_model), inputs=(str(archive),), out=str(out),
                                             formats=("nifti",)))
    assert {(r["status"], r["redo_reason"]) for r in retrained["inputs"]} == {("done", "model changed")}
    assert retrained["model_id"] != first["model_id"]


def test_bad_inputs_are_reported_with_their_reason_while_the_rest_completes(tmp_path, brain, export_path):
    data, affine = brain
    archive = tmp_path / "archive"
    write_nifti(archive / "good.nii.gz", data, affine)
    (archive / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))
    write_nifti(archive / "fmri.nii.gz", np.stack([data] * 3, axis=-1), affine)
    rgb = np.zeros(data.shape + (3,), np.uint8)
    nib.save(nib.Nifti1Image(rgb.view(RGB24).reshape(data.shape), affine), str(archive / "color.nii.gz"))
    write_nifti(archive / "blank.nii.gz", np.zeros_like(data), affine)
    write_nifti(archive / "huge.nii.gz", np.pad(data, 20), affine)
    dicom = write_dicom_series(archive / "broken_series", data[:, :, 8:14] * 4)
    first = sorted(dicom.iterdir())[0]
    first.write_bytes(first.read_bytes()[:-100])  # truncated pixel data

    out = tmp_path / "out"
    code = main(["--checkpoint", str(export_path), str(archive), str(tmp_path / "missing.nii"), "--out", str(out),
                 "--format", "nifti", "--max-voxels", str(data.size * 2), "--quiet"])
    assert code == 1
    records = {Path(r["input"]).name: r for r in _summary(out)["inputs"]}
    assert records["good.nii.gz"]["status"] == "done" and Path(records["good.nii.gz"]["outputs"]["nifti"]).is_file()
    reasons = {
        "corrupt.nii.gz": "not a readable NIfTI", "fmri.nii.gz": "4D", "color.nii.gz": "not a scalar intensity",
        "blank.nii.gz": "constant", "huge.nii.gz": "enormous", "broken_series": "pixel data cannot be decoded",
        "missing.nii": "does not exist",
    }
    for name, reason in reasons.items():
        rec = records[name]
        assert rec["status"] == "failed" and reason in rec["error"], (name, rec["error"])
        assert rec["outputs"] == {}
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == ["good.nii.gz"]


def test_two_shards_of_a_partition_colorize_every_input_exactly_once(tmp_path, brain, export_path):
    archive = _archive(tmp_path / "archive", brain, n_nifti=4, dicom=True)
    out = tmp_path / "out"
    summaries = [run_colorize(ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),), out=str(out),
                                              formats=("nifti",), shard=f"{i}/2", run_id="r1")) for i in range(2)]
    keys = [[r["key"] for r in s["inputs"]] for s in summaries]
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) + len(keys[1]) == 5 and abs(len(keys[0]) - len(keys[1])) <= 1
    assert all(r["status"] == "done" for s in summaries for r in s["inputs"])
    assert len(list(out.rglob("*.nii.gz"))) == 5
    assert (out / "summary.shard-0000-of-0002.json").is_file() and (out / "summary.shard-0001-of-0002.json").is_file()
    merged = merge_summaries(out, "r1")
    assert merged["complete"] and merged["counts"] == {"inputs": 5, "done": 5, "skipped": 0, "failed": 0}


def test_neighbour_chroma_smoothing_lowers_slice_flicker_of_real_outputs(tmp_path, brain, export_path):
    archive = _archive(tmp_path / "archive", brain, n_nifti=1, dicom=False)
    plain = run_colorize(ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),), out=str(tmp_path / "a"),
                                         formats=("nifti",)))["inputs"][0]
    smooth = run_colorize(ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),),
                                          out=str(tmp_path / "b"), formats=("nifti",), smooth_chroma=1.5))["inputs"][0]
    assert smooth["consistency_raw"] == plain["consistency"]
    assert smooth["consistency"]["delta_ab"] < 0.7 * plain["consistency"]["delta_ab"]
    a, _ = read_rgb_nifti(Path(plain["outputs"]["nifti"]))
    b, _ = read_rgb_nifti(Path(smooth["outputs"]["nifti"]))
    inside = (a.min(axis=-1) > 0) & (a.max(axis=-1) < 255) & (b.max(axis=-1) < 255) & (b.min(axis=-1) > 0)
    assert np.abs(a @ LUMA - b @ LUMA)[inside].max() <= 1.5


@pytest.mark.slow
def test_killed_mid_archive_the_rerun_matches_an_uninterrupted_run_without_recomputing(tmp_path, brain, export_path):
    data, affine = brain
    big = (np.repeat(np.repeat(data, 2, axis=0), 2, axis=1), affine @ np.diag([0.5, 0.5, 1, 1]))
    archive = _archive(tmp_path / "archive", big, n_nifti=6, dicom=True)
    # One thread in every run: fp32 convolutions may round differently with another thread count, and the
    # outputs are compared byte for byte.
    args = ["--checkpoint", str(export_path), str(archive), "--format", "nifti,omezarr", "--batch", "4", "--quiet",
            "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "colorize.py"), *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def markers() -> list[Path]:
        try:  # a temporary output folder can vanish (renamed into place) while rglob walks it
            return list(out.rglob("*.colorize.json"))
        except FileNotFoundError:
            return []

    deadline = time.monotonic() + 120
    while not markers():
        assert proc.poll() is None, "the run ended before its first marker appeared"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(out.rglob("*.colorize.json"))
    assert 1 <= len(finished) < 7, "kill came too late to interrupt the archive"
    stamps = {p: p.stat().st_mtime_ns for m in finished for p in [m, *m.parent.glob(m.name.split(".")[0] + ".nii.gz")]}

    assert main([*args, "--out", str(out)]) == 0
    status = {r["key"]: r["status"] for r in _summary(out)["inputs"]}
    done_before = {str(m.relative_to(out))[: -len(".colorize.json")] for m in finished}
    assert {k for k, s in status.items() if s == "skipped"} == done_before, _summary(out)["inputs"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished volumes were not recomputed

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
                and not p.name.endswith(".colorize.json") and not p.name.startswith("summary")}

    whole, resumed = files(tmp_path / "whole"), files(out)
    assert whole.keys() == resumed.keys() and all(whole[k] == resumed[k] for k in whole)
    assert not [p for p in out.rglob(".*")]  # no temporaries left behind


def test_progress_bars_count_every_volume_and_slice(tmp_path, brain, export_path):
    import io

    from rich.console import Console

    from cmgan.colorize.progress import RichReporter

    archive = _archive(tmp_path / "archive", brain, n_nifti=2, dicom=True)
    (archive / "broken.nii.gz").write_bytes(b"not a volume")
    screen = io.StringIO()
    reporter = RichReporter(Console(file=screen, force_terminal=True, width=120))
    summary = run_colorize(ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),),
                                           out=str(tmp_path / "out"), formats=("nifti",)), reporter)
    last = [r for r in summary["inputs"] if r["status"] == "done"][-1]
    text = screen.getvalue()
    assert "volumes" in text and "4/4" in text and "done 3 failed 1" in text
    assert f"{last['slices']}/{last['slices']}" in text and last["key"] in text


def test_a_missing_export_or_a_bad_flag_stops_before_any_work_with_status_2(tmp_path, brain, export_path, caplog):
    archive = _archive(tmp_path / "archive", brain, n_nifti=1, dicom=False)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "no-run"), str(archive), "--out", str(out), "--quiet"]) == 2
    assert "no generator export found" in caplog.text
    assert main(["--checkpoint", str(export_path), str(archive), "--out", str(out), "--format", "nifti,tiff"]) == 2
    assert "--format" in caplog.text and "omezarr" in caplog.text
    assert main(["--checkpoint", str(export_path), str(archive), "--out", str(out), "--shard", "2/2"]) == 2
    assert not list(out.rglob("*.nii.gz"))


def test_a_shards_zarr_store_colorizes_each_subject_onto_its_stored_grid(tmp_path, brain, export_path):
    from shards.build import BuildOptions, build

    archive = _archive(tmp_path / "archive", brain, n_nifti=2, dicom=False)
    res = build([archive], BuildOptions(domain="mr", out=tmp_path / "shards", size=32, salt_file=tmp_path / "salt",
                                        split=(1.0, 0.0, 0.0)))
    assert res.exit_code == 0
    out = tmp_path / "out"
    summary = run_colorize(ColorizeOptions(checkpoint=str(export_path), inputs=(str(tmp_path / "shards"),),
                                           out=str(out), formats=("nifti", "omezarr")))
    assert summary["counts"]["done"] == 2
    for rec in summary["inputs"]:
        subject = rec["key"].split("/")[-1]
        stored = read_volume(tmp_path / "shards" / "volumes.zarr" / subject)
        rgb, affine = read_rgb_nifti(Path(rec["outputs"]["nifti"]))
        assert rgb.shape == stored.data.shape + (3,)
        np.testing.assert_allclose(affine, stored.affine, atol=1e-5)
        assert Path(rec["outputs"]["omezarr"], "zarr.json").is_file()


def test_keep_luminance_gives_the_inputs_brightness_and_the_predicted_chroma(tmp_path, brain, export_path):
    archive = _archive(tmp_path / "archive", brain, n_nifti=1, dicom=False)  # sub-01 is stored RAS (canonical)
    runs = {keep: run_colorize(ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),),
                                               out=str(tmp_path / str(keep)), formats=("nifti",),
                                               keep_luminance=keep))["inputs"][0] for keep in (False, True)}
    plain, _ = read_rgb_nifti(Path(runs[False]["outputs"]["nifti"]))
    kept, _ = read_rgb_nifti(Path(runs[True]["outputs"]["nifti"]))
    vol = read_volume(archive / "sub-01/anat/sub-01_T1w.nii.gz")
    mask = foreground_mask(vol.data)
    expected = (normalize_mr(vol.data, Normalization(), mask=mask, window_mask=mask) + 1.0) * 127.5
    a, b = plain.astype(np.float64), kept.astype(np.float64)
    assert np.abs(b @ LUMA - expected)[mask].max() <= 1.0  # rounding of three channels, nothing else
    # The chroma is the prediction's wherever it fits at the input's brightness (no channel at 0 or 255); the
    # untrained G's saturated colours do not fit everywhere, where they are scaled down instead.
    fits = mask & (kept.min(-1) > 0) & (kept.max(-1) < 255)
    assert fits.sum() > 0.2 * mask.sum()
    cb, cr = np.array([-0.168736, -0.331264, 0.5]), np.array([0.5, -0.418688, -0.081312])
    assert np.abs(b @ cb - a @ cb)[fits].max() <= 1.5 and np.abs(b @ cr - a @ cr)[fits].max() <= 1.5
    assert np.abs(b @ LUMA - a @ LUMA)[mask].mean() > 5  # the untrained G's own luma is far from the input's
    assert (kept[~mask] == 0).all()

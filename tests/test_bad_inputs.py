"""The bad-input matrix: every entry point meets each kind of broken input the way users feed it.

Each case is its own test id (`pytest --collect-only tests/test_bad_inputs.py` lists them). What every case asks:
one line naming the file and the problem, no traceback, a non-zero exit status, the good inputs of the same
call still processed, and nothing written before changed. To stay fast, each entry point runs ONCE over all of its
bad inputs together (module fixtures); the cases then read their own line from that run.

Entry points: `python -m shards build` and `launch/colorize.py` (subprocesses, the user's path) over volumes;
`launch/evaluate.py` and `launch/train.py` (their `main`, in this process) over broken shard sets and a broken
export; `launch/sweep.py` (subprocess) over broken sweep files.
Training is the one place where a corrupt sample does not stop the run: it is skipped with a warning naming the
shard and the sample (a week-long run must not die on one bad slice) and counted in the checkpointed data state;
a shard set that cannot feed training at all stops it with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import runpy
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmgan.data import schema
from cmgan.data.manifest import read_manifest
from shards import phantoms
from shards.dicom_write import write_dicom_series

REPO = Path(__file__).resolve().parents[1]
NO_TRACEBACK = "Traceback (most recent call last)"


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), COLUMNS="250")
    return env


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _lines_naming(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


# ---------------------------------------------------------------------------------------------- volumes


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _zero_voxel_size(path: Path, data: np.ndarray) -> Path:
    """A NIfTI whose qform (its only geometry) has a zero voxel size along z: a singular affine."""
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header["sform_code"] = 0
    img.header["qform_code"] = 1
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    raw[88:92] = struct.pack("<f", 0.0)  # pixdim[3] (nibabel would refuse to write the zero itself)
    path.write_bytes(bytes(raw))
    return path


VOLUME_CASES = {
    # id: (file or folder name, words of which one must be in the message)
    "truncated": ("truncated.nii.gz", ("unreadable", "not a readable")),
    "empty": ("empty.nii.gz", ("not a readable", "empty")),
    "wrong_format": ("notes.nii.gz", ("not a readable",)),
    "nan": ("nan.nii.gz", ("NaN",)),
    "constant": ("constant.nii.gz", ("constant",)),
    "2d": ("flat.nii.gz", ("2D",)),
    "4d": ("series.nii.gz", ("4D",)),
    "singular_affine": ("collapsed.nii", ("singular affine",)),
    "dicom_without_pixels": ("nopixels", ("no pixel data",)),
}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One good phantom MR volume (32^3) and one broken input per VOLUME_CASES entry, all in one folder."""
    root = tmp_path_factory.mktemp("volumes")
    ph = phantoms.make_phantom(11, 32)
    t1 = phantoms.mri(ph).astype(np.float32)
    affine = ph.affine
    out = {"good": _save(root / "good.nii.gz", t1, affine)}
    good_bytes = out["good"].read_bytes()
    (root / "truncated.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 2])
    (root / "empty.nii.gz").write_bytes(b"")
    (root / "notes.nii.gz").write_text("scan notes, not an image\n")
    nan = t1.copy()
    nan[5, 5, 5] = np.nan
    _save(root / "nan.nii.gz", nan, affine)
    _save(root / "constant.nii.gz", np.full_like(t1, 7.0), affine)
    _save(root / "flat.nii.gz", np.ascontiguousarray(t1[:, :, 16]), affine)
    _save(root / "series.nii.gz", np.stack([t1, t1], -1), affine)
    _zero_voxel_size(root / "collapsed.nii", t1)
    files = write_dicom_series(t1[:, :, 10:16] / t1.max() * 1000, affine, root / "nopixels")
    import pydicom

    ds = pydicom.dcmread(files[2])
    del ds.PixelData
    ds.save_as(files[2])
    for case, (name, _) in VOLUME_CASES.items():
        out[case] = root / name
    return out


@pytest.fixture(scope="module")
def build_run(volumes, tmp_path_factory) -> dict:
    """`python -m shards build` over the good volume and every broken one, in one call."""
    root = tmp_path_factory.mktemp("build")
    salt = root / "salt"
    salt.write_text("bad-input-matrix-salt-0123456789abcdef\n")
    before = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in volumes.items() if p.is_file()}
    done = _run("-m", "shards", "build", *map(str, volumes.values()), "--domain", "mr", "--out", str(root / "out"),
                "--size", "32", "--salt-file", str(salt))
    after = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in volumes.items() if p.is_file()}
    return {"done": done, "out": root / "out", "inputs_unchanged": before == after}


@pytest.mark.parametrize("case", list(VOLUME_CASES))
def test_shards_build_names_the_bad_input_and_builds_the_rest(build_run, volumes, case):
    done = build_run["done"]
    assert done.returncode == 1, done.stderr
    assert NO_TRACEBACK not in done.stderr
    lines = _lines_naming(done.stderr, str(volumes[case]))
    assert len(lines) == 1, done.stderr
    assert any(word in lines[0] for word in VOLUME_CASES[case][1]), lines[0]
    manifest = read_manifest(build_run["out"])
    assert manifest["counts"]["volumes"] == 1  # the good volume is built
    assert build_run["inputs_unchanged"]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    from tests.colorize.conftest import make_export

    return make_export(tmp_path_factory.mktemp("export") / "generator.pt")


@pytest.fixture(scope="module")
def colorize_run(volumes, tiny_export, tmp_path_factory) -> dict:
    """`launch/colorize.py`: first the good volume alone, then the good one with every broken one into the same
    output folder (the good one is already done: it must be skipped and its files left as they were)."""
    out = tmp_path_factory.mktemp("colorized")
    common = ["--checkpoint", str(tiny_export), "--out", str(out), "--format", "nifti", "--quiet"]
    first = _run("launch/colorize.py", str(volumes["good"]), *common)
    assert first.returncode == 0, first.stderr
    written = _digest(out)
    inputs = [str(volumes[c]) for c in VOLUME_CASES]
    done = _run("launch/colorize.py", str(volumes["good"]), *inputs, *common)
    summary = json.loads((out / "summary.json").read_text())
    kept = {k: v for k, v in _digest(out).items() if k in written and not k.startswith("summary")}
    return {"done": done, "summary": summary, "unchanged": kept == {k: v for k, v in written.items()
                                                                      if not k.startswith("summary")}}


@pytest.mark.parametrize("case", list(VOLUME_CASES))
def test_colorize_names_the_bad_input_and_keeps_what_was_written(colorize_run, volumes, case):
    done, summary = colorize_run["done"], colorize_run["summary"]
    assert done.returncode == 1
    assert NO_TRACEBACK not in done.stderr
    lines = [line for line in _lines_naming(done.stderr, str(volumes[case])) if "ERROR" in line]
    assert len(lines) == 1, done.stderr
    assert any(word in lines[0] for word in VOLUME_CASES[case][1]), lines[0]
    statuses = {Path(r["input"]).name: r["status"] for r in summary["inputs"]}
    assert statuses["good.nii.gz"] == "skipped" and statuses[volumes[case].name] == "failed"
    assert colorize_run["unchanged"]


# ---------------------------------------------------------------------------------------------- shard sets


def _rewrite_tar(path: Path, change) -> None:
    """Rewrite a shard with `change(index, name, data) -> bytes` applied to every member."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, (m, data) in enumerate(members):
            data = change(i, m.name, data)
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime, info.mode = len(data), m.mtime, m.mode
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _first_mr_member(i: int, name: str) -> bool:
    return i < 8 and name.endswith("." + schema.MR_KEY)


def _out_of_range(data: bytes) -> bytes:
    arr = np.load(io.BytesIO(data))
    out = io.BytesIO()
    np.save(out, np.full_like(arr, 3.0))  # float16 3.0: outside the schema's [-1, 1]
    return out.getvalue()


SHARD_CASES = {
    # id: (how the shards of the split break, words one of which the message holds)
    "missing_manifest": ("manifest", ("manifest.json",)),
    "corrupt_tar_member": ("garbage", ("not a plain .npy",)),
    "member_fails_schema": ("schema", ("expected [-1.0, 1.0]",)),
    "truncated_shard": ("truncate", ("unreadable", "truncated", "unexpected end")),
}


def _break_shards(src: Path, dst: Path, how: str, split: str) -> Path:
    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    shards = [dst / s["name"] for s in manifest["shards"] if s["split"] == split]
    if how == "manifest":
        (dst / "manifest.json").unlink()
    for shard in shards:
        if how == "garbage":
            _rewrite_tar(shard, lambda i, n, d: b"\x00garbage" if _first_mr_member(i, n) else d)
        elif how == "schema":
            _rewrite_tar(shard, lambda i, n, d: _out_of_range(d) if _first_mr_member(i, n) else d)
        elif how == "truncate":
            data = shard.read_bytes()
            shard.write_bytes(data[: int(len(data) * 0.6)])
    return shards[0] if how != "manifest" else dst / "manifest.json"


@pytest.fixture(scope="module")
def demo32(tmp_path_factory) -> Path:
    from shards.demo import demo

    out = tmp_path_factory.mktemp("demo32")
    demo(out, subjects=3, color_subjects=3, size=32, seed=0, max_count=16)
    return out


def _known_gap(case: str, gaps: dict[str, str]):
    """A case of the matrix that exposes a defect not fixed yet: strict xfail, so the test fails once it is fixed
    and the marker must go."""
    return pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=gaps[case])) if case in gaps else case


EVALUATE_GAPS = {"truncated_shard": "the evaluator reads the readable part of a truncated test shard and exits 0"}
TRAIN_GAPS = {c: "training skips corrupt samples with a warning logged in the loader workers, which does not "
                 "reach the launcher's stderr naming the shard" for c in ("corrupt_tar_member", "member_fails_schema",
                                                                             "truncated_shard")}


@pytest.mark.parametrize("case", [_known_gap(c, EVALUATE_GAPS) for c in SHARD_CASES])
def test_evaluate_names_the_broken_shard_set_and_keeps_the_previous_result(demo32, tiny_export, tmp_path, case,
                                                                            capfd):
    how, words = SHARD_CASES[case]
    bad = _break_shards(demo32 / "mr", tmp_path / "mr", how, "test")
    out = tmp_path / "eval.json"
    out.write_text('{"previous": true}\n')
    main = runpy.run_path(str(REPO / "launch" / "evaluate.py"))["main"]
    code = main(["--checkpoint", str(tiny_export), "--data", str(tmp_path / "mr"), "--out", str(out),
                 "model.image_size=32", "model.width=8", "model.seg_width=8", "model.disc_width=8"])
    err = capfd.readouterr().err
    assert code == 2, err
    assert NO_TRACEBACK not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0], err
    assert any(word in lines[0] for word in words), lines[0]
    assert out.read_text() == '{"previous": true}\n'


def test_evaluate_names_a_truncated_export(demo32, tiny_export, tmp_path, capfd):
    broken = tmp_path / "generator.pt"
    data = tiny_export.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    main = runpy.run_path(str(REPO / "launch" / "evaluate.py"))["main"]
    code = main(["--checkpoint", str(broken), "--data", str(demo32 / "mr")])
    err = capfd.readouterr().err
    assert code == 2 and NO_TRACEBACK not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(broken) in lines[0], err


TRAIN_TINY = ["model.image_size=32", "model.width=8", "model.depth=2", "model.disc_width=8", "model.fusion=none",
              "data.batch_size=2", "data.num_workers=1", "data.shuffle_buffer=2", "train.log_every=1",
              "train.sample_every=0", "train.ckpt_every_minutes=0", "train.steps=2", "train.ckpt_every_steps=1"]


@pytest.mark.parametrize("case", [_known_gap(c, TRAIN_GAPS) for c in SHARD_CASES])
def test_train_on_broken_shards_names_the_file(demo32, tmp_path, case, capfd):
    how, words = SHARD_CASES[case]
    bad = _break_shards(demo32 / "mr", tmp_path / "mr", how, "train")
    run = tmp_path / "run"
    main = runpy.run_path(str(REPO / "launch" / "train.py"))["main"]
    code = main([*TRAIN_TINY, f"data.mr_shards='{tmp_path / 'mr'}'", f"data.color_shards='{demo32 / 'color'}'",
                 f"train.run_dir='{run}'"])
    err = capfd.readouterr().err
    assert NO_TRACEBACK not in err
    named = _lines_naming(err, str(bad))
    assert named and all(any(w in line for w in words) for line in named[:1]), err
    if how == "manifest":
        # Nothing to train on: one error line, exit 1, no checkpoint written.
        assert code == 1 and len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
        assert not list((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else True
    else:
        # A corrupt sample or shard tail is skipped with a warning; the rest trains and the run completes.
        assert code == 0, err
        assert (run / "export" / "generator.pt").is_file()


# ---------------------------------------------------------------------------------------------- sweep files


SWEEP_CASES = {
    "unknown_key": ('[[runs]]\nname = "x"\nbogus = 1\n', ("bogus",)),
    "invalid_toml": ('name = \n', ("not valid TOML",)),
    "missing_file": (None, ("does not exist",)),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_sweep_file_errors_name_the_file_and_the_problem(tmp_path, case):
    text, words = SWEEP_CASES[case]
    bad = tmp_path / f"{case}.toml"
    if text is not None:
        bad.write_text(text)
    state = tmp_path / "sweep"
    done = _run("launch/sweep.py", str(bad), "--profile", "subprocess", "--dry-run", "--sweep-dir", str(state))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert NO_TRACEBACK not in output
    lines = _lines_naming(output, bad.name)
    assert lines and any(w in " ".join(lines) for w in words), output
    assert (bad.read_text() if text is not None else None) == text and not state.exists()

"""Segmentation pretraining on a partly labelled MR archive (the usual case), through the real command lines:
`python -m shards build ... --labels A B --` then `python launch/train.py --stage seg key=value ...`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cmgan.data.manifest import read_manifest
from cmgan.data.splits import labelled_volumes
from shards.demo import write_sources

from .conftest import REPO, TRAIN_SCRIPT, subprocess_env, tiny_overrides

SUBJECTS = 8


def shards_build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards", "build", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def partly_labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MR shards of 8 phantoms (32x32), split half train, half val, labels given for 4 of them only."""
    root = tmp_path_factory.mktemp("partly")
    dirs = write_sources(root, SUBJECTS, 0, 32, seed=3)
    images = sorted(dirs["mr"].glob("*.nii.gz"))
    labels = sorted(dirs["mr_labels"].glob("*.nii.gz"))[::2]  # sub-01, sub-03, ...: half of the subjects
    out = root / "mr"
    # INPUTs first, then the label list closed with `--`, as the build help recommends.
    done = shards_build(*map(str, images), "--domain", "mr", "--out", str(out), "--size", "32",
                        "--split", "0.5,0.5,0", "--max-count", "8", "--salt-file", str(dirs["salt"]),
                        "--labels", *map(str, labels), "--")
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(out)
    # The salted split must mix labelled and unlabelled volumes in both splits for this test to mean anything.
    for split in ("train", "val"):
        labelled, unlabelled = labelled_volumes(manifest, split)
        assert labelled and unlabelled, (split, labelled, unlabelled)
    return out


def seg_command(shards: Path, run: Path, *extra: str) -> list[str]:
    overrides = tiny_overrides(shards.parent, run, f"data.mr_shards='{shards}'", "seg.steps=4", "seg.batch_size=4",
                               "seg.val_every=2", *extra)
    # Overrides after `--stage seg`: the order users type.
    return [sys.executable, str(TRAIN_SCRIPT), "--stage", "seg", *overrides]


def test_seg_pretraining_on_a_partly_labelled_archive_trains_and_validates_on_the_labelled_volumes(
    partly_labelled, tmp_path
):
    manifest = read_manifest(partly_labelled)
    done = subprocess.run(seg_command(partly_labelled, tmp_path), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["steps"] == 4
    skipped = {s: labelled_volumes(manifest, s)[1] for s in ("train", "val")}
    assert summary["unlabelled_volumes_skipped"] == skipped
    assert f"skipped unlabelled volumes: {skipped['train']} of train, {skipped['val']} of val" in done.stderr
    # Validation measured something: Dice in [0, 1] for the classes present in the labelled val slices.
    dice = [d for d in summary["val_dice"].values() if not math.isnan(d)]
    assert dice and all(0.0 <= d <= 1.0 for d in dice)
    assert Path(summary["export"]).is_file()


def test_seg_pretraining_without_any_labelled_volume_fails_with_one_line(tmp_path):
    dirs = write_sources(tmp_path / "src", 2, 0, 32, seed=4)
    shards = tmp_path / "mr"
    done = shards_build(str(dirs["mr"]), "--domain", "mr", "--out", str(shards), "--size", "32",
                        "--split", "0.5,0.5,0", "--salt-file", str(dirs["salt"]))
    assert done.returncode == 0, done.stderr
    done = subprocess.run(seg_command(shards, tmp_path / "run"), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(shards) in errors[0] and "no labelled volume" in errors[0], done.stderr

"""cmgan.colorize.inputs: discovery of NIfTI / DICOM / shards-Zarr volumes, keys, checksums, partitions."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cmgan.colorize.inputs import (
    Input,
    Shard,
    discover,
    input_sha256,
    parse_shard,
    partition,
    peek_voxels,
    shard_from_env,
)

from .conftest import write_dicom_series, write_nifti


@pytest.fixture()
def archive(tmp_path, brain) -> Path:
    data, affine = brain
    root = tmp_path / "archive"
    write_nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", data, affine)
    write_nifti(root / "sub-02" / "anat" / "sub-02_T1w.nii", data * 2, affine)
    write_dicom_series(root / "sub-03" / "series1", data[:, :, :6])
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{}")  # a BIDS sidecar is not a volume
    return root


def test_discovery_finds_nifti_and_dicom_series_with_keys_mirroring_the_tree(archive):
    inputs, failures = discover([archive])
    assert failures == []
    assert [(i.key, i.kind) for i in inputs] == [
        ("sub-01/anat/sub-01_T1w", "nifti"), ("sub-02/anat/sub-02_T1w", "nifti"), ("sub-03/series1", "dicom")]
    assert inputs[2].path == archive / "sub-03" / "series1"


def test_globs_key_from_their_fixed_folder_and_single_inputs_by_their_name(archive):
    inputs, failures = discover([str(archive / "sub-0*" / "anat" / "*.nii*"), archive / "sub-03" / "series1",
                                 archive / "sub-02" / "anat" / "sub-02_T1w.nii"])
    assert failures == []
    assert [i.key for i in inputs] == ["series1", "sub-01/anat/sub-01_T1w", "sub-02/anat/sub-02_T1w"]


def test_missing_paths_empty_folders_and_unknown_files_are_reported_not_raised(tmp_path, archive):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    inputs, failures = discover([archive, tmp_path / "nope.nii.gz", tmp_path / "empty", tmp_path / "notes.txt",
                                 str(tmp_path / "*.mgz")])
    assert len(inputs) == 3
    problems = {Path(f.path).name: f.problem for f in failures}
    assert problems["nope.nii.gz"] == "does not exist"
    assert "no NIfTI, DICOM or Zarr" in problems["empty"]
    assert "not a recognized input" in problems["notes.txt"]
    assert problems["*.mgz"] == "matches no file"


def test_output_folder_inside_the_archive_is_not_searched(archive, brain):
    out = archive / "colored"
    write_nifti(out / "sub-01_T1w.nii.gz", *brain)  # e.g. an earlier run's output
    inputs, _ = discover([archive], exclude=[out])
    assert all("colored" not in i.key for i in inputs) and len(inputs) == 3


def test_same_relative_layout_under_two_inputs_gets_distinct_keys(tmp_path, brain):
    a = write_nifti(tmp_path / "a" / "T1w.nii.gz", *brain)
    b = write_nifti(tmp_path / "b" / "T1w.nii.gz", *brain)
    inputs, _ = discover([a, b, a])  # a named twice is kept once
    assert len(inputs) == 2 and len({i.key for i in inputs}) == 2
    assert all(i.key.startswith("T1w-") for i in inputs)


def test_shards_zarr_store_yields_one_volume_per_subject(tmp_path, archive):
    from shards.build import BuildOptions, build

    res = build([archive / "sub-01", archive / "sub-02"], BuildOptions(
        domain="mr", out=tmp_path / "shards", size=32, salt_file=tmp_path / "salt", split=(1.0, 0.0, 0.0)))
    assert res.exit_code == 0
    inputs, failures = discover([tmp_path / "shards"])
    subjects = sorted(res.manifest["volumes"])
    assert failures == []
    assert [i.key for i in inputs] == [f"volumes/{s}" for s in subjects]
    assert all(i.kind == "zarr" for i in inputs)
    assert peek_voxels(inputs[0]) == int(np.prod(res.manifest["volumes"][subjects[0]]["shape"]))


def test_dicom_checksum_changes_when_any_file_of_the_series_changes(archive):
    series = Input(archive / "sub-03" / "series1", "dicom", "s")
    before = input_sha256(series)
    assert input_sha256(series) == before
    f = sorted(series.path.iterdir())[2]
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    assert input_sha256(series) != before


def test_partition_shards_are_disjoint_and_cover_every_input(archive):
    inputs = [Input(Path(f"v{i}.nii"), "nifti", f"v{i:02d}") for i in range(11)]
    for n in (1, 2, 3, 5, 11, 13):
        parts = [partition(inputs, Shard(i, n)) for i in range(n)]
        keys = [x.key for part in parts for x in part]
        assert sorted(keys) == sorted(i.key for i in inputs) and len(keys) == len(set(keys))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # Order of discovery does not matter: every process computes the same partition.
    assert partition(inputs[::-1], Shard(1, 3)) == partition(inputs, Shard(1, 3))


def test_slurm_array_tasks_times_ranks_give_distinct_shards_covering_all():
    seen = set()
    for task, rank in itertools.product(range(3), range(2)):
        env = {"SLURM_ARRAY_TASK_ID": str(10 + task), "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3",
               "RANK": str(rank), "WORLD_SIZE": "2"}
        s = shard_from_env(env)
        assert s.count == 6
        seen.add(s.index)
    assert seen == set(range(6))
    assert shard_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"}) == Shard(1, 4)
    # A batch script's own shell (SLURM_NTASKS but no srun step) is one process: it takes every input.
    assert shard_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == Shard(0, 1)
    assert shard_from_env({}) == Shard(0, 1)


def test_shard_flag_is_parsed_and_bad_values_name_the_flag():
    assert parse_shard("2/5") == Shard(2, 5)
    for bad in ("5/5", "a/b", "1", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)

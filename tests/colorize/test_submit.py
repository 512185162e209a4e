"""cmgan.colorize.submit: an archive colorized by a job array (real SLURM), and the job's resume contract."""

from __future__ import annotations

import pytest

from cmgan.colorize.runner import ColorizeOptions
from cmgan.colorize.submit import ColorizeJob, submit_colorize

from .test_runner import _archive


def test_requeued_array_task_resumes_as_the_same_shard_and_skips_finished_volumes(tmp_path, brain, export_path):
    archive = _archive(tmp_path / "archive", brain, n_nifti=3, dicom=False)
    opts = ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),), out=str(tmp_path / "out"),
                           formats=("nifti",), run_id="job")
    job = ColorizeJob(opts, task=1, tasks=2)
    assert str(job.shard()) == "1/2"
    first = job()
    assert first == {"shard": "1/2", "counts": {"inputs": 1, "done": 1, "skipped": 0, "failed": 0}}
    again = job.checkpoint()  # what submitit resubmits after a preemption or time limit
    assert again.function.shard() == job.shard()
    assert again.function()["counts"]["skipped"] == 1


@pytest.mark.slurm
@pytest.mark.slow
def test_profile_submits_a_job_array_whose_tasks_colorize_the_archive_once(tmp_path, brain, export_path,
                                                                         monkeypatch):
    from cmgan.cluster import load_profile, slurm_available

    if not slurm_available():
        pytest.skip("SLURM does not answer (start it with slurm/local/start.sh; .ci/run does)")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    archive = _archive(tmp_path / "archive", brain, n_nifti=3, dicom=True)
    out = tmp_path / "out"
    opts = ColorizeOptions(checkpoint=str(export_path), inputs=(str(archive),), out=str(out), formats=("nifti",))
    summary = submit_colorize(opts, load_profile("local").with_resources({"poll_s": 0.5}), jobs=2)
    assert summary["job_errors"] == []
    assert summary["complete"] and sorted(summary["shards"]) == ["0/2", "1/2"]
    assert summary["counts"] == {"inputs": 4, "done": 4, "skipped": 0, "failed": 0}
    keys = [r["key"] for r in summary["inputs"]]
    assert len(keys) == len(set(keys)) == 4
    assert len(list(out.rglob("*.nii.gz"))) == 4

"""A run asking for 2 tasks trains as 2 ranks inside one SLURM job and checkpoints/resumes like a 1-task run."""

from __future__ import annotations

import subprocess

import pytest

from cmgan import checkpoint
from cmgan.sweep import run_sweep
from tests.slurm.helpers import loss_terms, real_sweep, train_progress, wait_until

pytestmark = pytest.mark.slurm

STEPS = 12


@pytest.mark.slow
def test_two_task_run_trains_as_two_ranks_in_one_job_and_resumes_after_preemption(tmp_path, demo_shards, local_profile):
    runs = [{"name": "whole"}, {"name": "preempted"}]
    sweep = real_sweep(tmp_path, demo_shards, runs, STEPS, "ranks", resources={"tasks_per_node": 2})
    states = {s.name: s for s in run_sweep(sweep, local_profile, wait=False)}
    assert all(s.num_tasks == 2 for s in states.values())

    wait_until(lambda: train_progress(sweep, "preempted") >= 3, 150, "the 2-rank run to train")
    subprocess.run(["scancel", "--signal=USR2", states["preempted"].job_id], check=True)
    final = {s.name: s for s in run_sweep(sweep, local_profile, timeout_s=240)}

    for name in ("whole", "preempted"):
        s = final[name]
        assert s.status == "done", (name, s.error)
        train = s.result["train"]
        assert train["status"] == "completed" and train["steps"] == STEPS and train["world_size"] == 2
        # one checkpoint per save, written by both ranks of the one job: per-rank state files 0 and 1
        for _, path in checkpoint.list_complete(sweep.sweep_dir / "runs" / name / "checkpoints"):
            meta = checkpoint.read_meta(path)
            assert meta["world_size"] == 2 and meta["replicas_identical"], meta
            assert sorted(p.name for p in path.glob("rank_*.pt")) == ["rank_00000.pt", "rank_00001.pt"]
    assert final["whole"].result["restarts"] == 0 and final["whole"].result["train"]["start_step"] == 0
    pre = final["preempted"]
    assert pre.job_id == states["preempted"].job_id and pre.attempts == 1
    assert pre.result["restarts"] >= 1 and 3 <= pre.result["train"]["start_step"] < STEPS
    reasons = [checkpoint.read_meta(p)["reason"] for _, p in
               checkpoint.list_complete(sweep.sweep_dir / "runs" / "preempted" / "checkpoints")]
    assert reasons[0] == "signal" and reasons[-1] == "end"
    # the interrupted 2-rank run ends exactly where the uninterrupted 2-rank run ends
    assert loss_terms(pre.result["train"]) == loss_terms(final["whole"].result["train"])

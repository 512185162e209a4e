"""Without SLURM, sweeps run as local subprocesses (the `subprocess` profile, submitit's local backend), and a
stop signal still ends in a checkpoint and a resumed run. Needs no scheduler, so it is not marked `slurm`."""

from __future__ import annotations

import pytest

from cmgan import checkpoint
from cmgan.sweep import load_profile, run_sweep
from tests.slurm.helpers import real_sweep

STEPS = 8


@pytest.mark.slow
def test_a_local_run_stopped_by_the_preemption_signal_restarts_and_resumes_from_its_checkpoint(
    tmp_path, demo_shards, monkeypatch
):
    # The trainer's test hook: at step 4, rank 0 sends itself SIGUSR2 (submitit's preemption signal) through the
    # real handler; submitit's local controller then restarts the task, which resumes.
    monkeypatch.setenv("CMGAN_TEST_SIGNAL_AT_STEP", "4:SIGUSR2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = real_sweep(tmp_path, demo_shards, [{"name": "solo"}], STEPS, "local")
    profile = load_profile("subprocess").with_resources({"poll_s": 0.5})
    (s,) = run_sweep(sweep, profile, timeout_s=240)
    assert s.status == "done", s.error
    assert s.cluster == "local" and s.attempts == 1
    train = s.result["train"]
    assert train["status"] == "completed" and train["steps"] == STEPS and train["start_step"] == 4
    reasons = [checkpoint.read_meta(p)["reason"] for _, p in
               checkpoint.list_complete(sweep.sweep_dir / "runs" / "solo" / "checkpoints")]
    assert reasons == ["signal", "end"]
    assert -1.0 <= s.metrics["ssim"] <= 1.0

"""Runs interrupted by SLURM resume from their checkpoints and end exactly where uninterrupted training ends.

Runs save only when stopped and at the end (`train.ckpt_every_steps=0`), so a restart past step 0 proves the
stop path saved; deterministic training with exact data resume makes an interrupted run's final losses equal
to an uninterrupted run's, so nothing was lost or repeated.
"""

from __future__ import annotations

import subprocess

import pytest

from cmgan import checkpoint
from cmgan.sweep import run_sweep
from tests.slurm.helpers import (
    job_info,
    loss_terms,
    real_sweep,
    reference_weights,
    starts,
    toy_sweep,
    train_progress,
    wait_until,
)

pytestmark = pytest.mark.slurm

STEPS = 30


@pytest.mark.slow
def test_runs_preempted_by_a_higher_priority_job_usr2_and_requeue_resume_and_match_uninterrupted_training(
    tmp_path, demo_shards, local_profile
):
    names = ["urgent", "usr2", "requeue"]
    # `scontrol requeue` calls no checkpoint(): that run resumes from what the trainer saved on its schedule
    # (or on the SIGTERM that precedes the kill).
    runs = [{"name": "urgent"}, {"name": "usr2"}, {"name": "requeue", "overrides": ["train.ckpt_every_steps=3"]}]
    sweep = real_sweep(tmp_path / "p", demo_shards, runs, STEPS, "preempt")
    job = {s.name: s.job_id for s in run_sweep(sweep, local_profile, wait=False)}
    fired: dict[str, str] = {}
    base = dict.fromkeys(names, 0)  # the step each run's current start resumed from
    restarts = dict.fromkeys(names, 0)

    def ready(name: str, ahead: int) -> bool:
        """The run's current start is RUNNING and has trained `ahead` steps."""
        state, n = job_info(job[name])
        if n != restarts[name]:
            restarts[name], base[name] = n, train_progress(sweep, name)
        return state == "RUNNING" and train_progress(sweep, name) >= base[name] + ahead

    def scheduled_since_start() -> bool:
        done = checkpoint.list_complete(sweep.sweep_dir / "runs" / "requeue" / "checkpoints")
        return any(step > base["requeue"] for step, _ in done)

    def interrupt_when_ready() -> bool:
        if "urgent" not in fired:
            if all(ready(n, 3) for n in names):
                # A whole-node job in the high-priority partition: SLURM preempts (requeues) all three, after
                # sending them their --signal (preempt_send_user_signal).
                fired["urgent"] = subprocess.run(
                    ["sbatch", "--parsable", "-p", "urgent", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 1"],
                    check=True, capture_output=True, text=True).stdout.strip()
            return False
        # then, in their next start, the other two mechanisms
        if "usr2" not in fired and ready("usr2", 3) and restarts["usr2"]:
            subprocess.run(["scancel", "--signal=USR2", job["usr2"]], check=True)  # what submitit's --signal sends
            fired["usr2"] = job["usr2"]
        if "requeue" not in fired and ready("requeue", 3) and restarts["requeue"] and scheduled_since_start():
            subprocess.run(["scontrol", "requeue", job["requeue"]], check=True)  # admin requeue: SIGTERM only
            fired["requeue"] = job["requeue"]
        return len(fired) == 3

    wait_until(interrupt_when_ready, 180, "each run to reach its interruption point")
    final = {s.name: s for s in run_sweep(sweep, local_profile, timeout_s=240)}
    # The uninterrupted reference, submitted once nothing else will preempt it.
    ref = real_sweep(tmp_path / "r", demo_shards, [{"name": "whole"}], STEPS, "reference")
    (whole,) = run_sweep(ref, local_profile, timeout_s=180)
    assert whole.status == "done" and whole.result["restarts"] == 0 and whole.result["train"]["start_step"] == 0
    for name in names:
        s = final[name]
        assert s.status == "done", (name, s.error)
        assert s.job_id == job[name] and s.attempts == 1, "resumed by requeue, not by a new submission"
        train = s.result["train"]
        assert train["status"] == "completed" and train["steps"] == STEPS
        assert s.result["restarts"] >= (1 if name == "urgent" else 2), (name, s.result["restarts"])
        assert 3 <= train["start_step"] < STEPS, (name, train)
        reasons = [checkpoint.read_meta(p)["reason"] for _, p in
                   checkpoint.list_complete(sweep.sweep_dir / "runs" / name / "checkpoints")]
        assert reasons[-1] == "end" and ("signal" in reasons or name == "requeue"), (name, reasons)
        assert loss_terms(train) == loss_terms(whole.result["train"]), name
    sacct = subprocess.run(["sacct", "-n", "-X", "-o", "State", "-j", fired["urgent"]], capture_output=True, text=True)
    assert "COMPLETED" in sacct.stdout


@pytest.mark.slow
def test_a_run_past_its_time_limit_requeues_itself_and_finishes(tmp_path, toy_env, local_profile, monkeypatch):
    # SLURM checks time limits every 30 s and signals once `now + signal_delay + 30 s >= end`: with a 1-minute limit
    # and the signal 30 s ahead that is the first check after the start, 0-30 s into every job. A run needing 33 s
    # of training therefore cannot finish inside one job. The toy trainer starts in ~2 s (the real one needs ~10 s
    # on this shared 2-core box, which a signal that early would often catch before its first step).
    monkeypatch.setenv("CMGAN_TOY_STEP_S", "1.1")
    steps = 30
    profile = local_profile.with_resources({"time_min": 1, "signal_delay_s": 30, "max_requeues": 10})
    sweep = toy_sweep(tmp_path, toy_env, [{"name": "long"}], steps=steps, name="timelimit")
    (s,) = run_sweep(sweep, profile, timeout_s=240)
    assert s.status == "done", s.error
    assert s.result["train"]["step"] == steps and s.attempts == 1
    assert s.result["restarts"] >= 1
    # A signal that lands before the loop starts (imports) has nothing new to save; the others save progress.
    resumed = [r["start_step"] for r in starts(sweep, "long") if r["restart"] > 0]
    assert any(step > 0 for step in resumed), resumed
    assert s.result["train"]["weights"] == pytest.approx(reference_weights(tmp_path, toy_env, steps), abs=1e-5)

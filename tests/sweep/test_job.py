"""The job callable's pieces: the trainer's status, the rendezvous environment, checkpoint() without I/O."""

from __future__ import annotations

import os

import pytest
import submitit

from cmgan.config import load_config
from cmgan.distenv import master_port
from cmgan.sweep import RunJob
from cmgan.sweep.job import set_distributed_env, train_status


def test_the_trainers_status_decides_finished_resumable_or_failed():
    cfg = load_config(None, ["train.steps=10"])
    assert train_status({"status": "completed", "steps": 10}, cfg) == "finished"
    assert train_status({"status": "stopped", "steps": 4}, cfg) == "resumable"
    assert train_status({"status": "diverged"}, cfg) == "failed:diverged"
    assert train_status({"step": 3}, cfg) == "resumable" and train_status({"step": 10}, cfg) == "finished"


def test_the_rendezvous_port_is_shared_by_the_ranks_of_a_job_and_changes_after_a_requeue():
    assert master_port("4242", 0) == master_port("4242", 0)
    assert master_port("4242", 1) != master_port("4242", 0)
    assert master_port("4243", 0) != master_port("4242", 0)
    assert all(20000 <= master_port(str(j), r) < 40000 for j in range(0, 100000, 997) for r in range(3))


def test_distributed_environment_comes_from_the_scheduler_without_overriding_what_is_set(monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_JOB_ID",
              "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "node7")
    # submitit's local backend describes rank 1 of a 2-task job through these variables
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    for k, v in dict(SUBMITIT_LOCAL_JOB_ID="321", SUBMITIT_LOCAL_NTASKS="2", SUBMITIT_LOCAL_JOB_NUM_NODES="1",
                     SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_GLOBALID="1", SUBMITIT_LOCAL_LOCALID="1").items():
        monkeypatch.setenv(k, v)
    set_now = set_distributed_env(submitit.JobEnvironment())
    assert "MASTER_ADDR" not in set_now and os.environ["MASTER_ADDR"] == "node7"
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["LOCAL_WORLD_SIZE"] == "2" and os.environ["MASTER_PORT"] == str(master_port("321", 0))


def test_checkpoint_hands_back_a_fresh_submission_of_the_same_run_without_touching_disk(tmp_path):
    cfg = load_config(None, [f"train.run_dir='{tmp_path / 'run'}'"])
    job = RunJob(cfg, "cmgan.train.trainer:train", max_requeues=4)
    delayed = job.checkpoint()
    again = delayed.function
    assert isinstance(again, RunJob) and again is not job
    assert (again.cfg, again.entry, again.max_requeues) == (cfg, job.entry, 4)
    assert not (tmp_path / "run").exists()


def test_a_missing_entry_names_it():
    from cmgan.sweep.job import import_entry

    with pytest.raises(ImportError, match="cmgan.nothing:train"):
        import_entry("cmgan.nothing:train")

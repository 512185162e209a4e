"""Cluster profiles: shipped profiles load, their fields become the right sbatch flags, mistakes are named."""

from __future__ import annotations

import pytest

from cmgan.cluster import ClusterProfile, load_profile, make_executor, preempt_signal
from cmgan.config import ConfigError


def sbatch_text(profile: ClusterProfile, tmp_path) -> str:
    """The batch script submitit would hand to sbatch for this profile."""
    ex = make_executor(profile, tmp_path / "%j", job_name="cmgan-x")
    with preempt_signal(profile.signal):
        return ex._executor._make_submission_file_text("python -m job", "uid")


def test_every_shipped_profile_loads():
    for name in ("local", "subprocess", "example-gpu"):
        assert load_profile(name).name == name
    assert load_profile("subprocess").cluster == "local"


@pytest.mark.slurm  # submitit's SLURM executor needs `srun` on the PATH, even to write a batch script
def test_a_gpu_cluster_profile_becomes_the_matching_sbatch_flags(tmp_path):
    text = sbatch_text(load_profile("example-gpu").with_resources({"additional": {"mail-type": "END"}}), tmp_path)
    for flag in ("--partition=gpu", "--account=my-lab", "--qos=normal", "--nodes=1", "--ntasks-per-node=4",
                 "--gpus-per-node=4", "--cpus-per-task=8", "--mem=256GB", "--time=1440", "--signal=USR2@300",
                 "--job-name=cmgan-x", "--mail-type=END"):
        assert f"#SBATCH {flag}\n" in text, flag
    assert "module load" not in text  # pip's torch wheel brings its own CUDA libraries
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in text and "NCCL_ASYNC_ERROR_HANDLING=1\nexport" not in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun  # one failed rank ends the step instead of a wait for NCCL's watchdog


@pytest.mark.slurm
def test_the_local_test_cluster_profile_requests_no_gpus_memory_or_account(tmp_path):
    text = sbatch_text(load_profile("local"), tmp_path)
    assert "#SBATCH --partition=debug\n" in text and "#SBATCH --signal=USR2@90\n" in text
    for absent in ("--gpus", "--gres", "--mem", "--account", "--qos"):
        assert absent not in text, absent


@pytest.mark.slurm
def test_another_preemption_signal_is_requested_from_slurm_and_handled_in_the_job(tmp_path):
    text = sbatch_text(load_profile("local").with_resources({"signal": "USR1", "signal_delay_s": 120}), tmp_path)
    assert "#SBATCH --signal=USR1@120\n" in text
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in text  # so submitit's handler in the job listens for it
    assert "--signal=USR2@" in sbatch_text(load_profile("local"), tmp_path)  # the swap was temporary


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"cluster": "pbs"}, "cluster='pbs'"),
        ({"signal": "TERM"}, "signal='TERM'"),
        ({"tasks_per_node": 0}, "tasks_per_node=0"),
        ({"time_min": 1, "signal_delay_s": 90}, "signal_delay_s=90 must be shorter"),
        ({"cluster": "local", "nodes": 2}, "nodes = 1"),
        ({"gpus": 2}, "unknown key"),
        ({"tasks_per_node": 4, "gpus_per_node": 2}, "tasks_per_node=4 > gpus_per_node=2"),
        ({"additional": {"mail-type": ["END"]}}, "table of sbatch flags"),
    ],
)
def test_profile_mistakes_are_errors_that_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("local").with_resources(fields)


def test_an_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"known profiles: \[.*'local'"):
        load_profile("nowhere")


def _visible_devices() -> str | None:
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("parent", [None, "1,3"], ids=["all_gpus", "the_sweeps_gpus"])
def test_local_runs_see_the_gpus_of_the_machine(tmp_path, monkeypatch, parent):
    """submitit's local executor sets CUDA_VISIBLE_DEVICES="" for a profile asking no GPUs, hiding a
    workstation's GPUs from every run; a real local job must see what the sweep itself sees."""
    if parent is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent)
    job = make_executor(load_profile("subprocess"), tmp_path / "jobs").submit(_visible_devices)
    assert job.result() == parent


def test_idle_gpus_of_a_profile_are_named_at_submission(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="cmgan.cluster"):
        make_executor(load_profile("subprocess").with_resources({"gpus_per_node": 2}), tmp_path)
    assert "2 GPUs per node but 1 task(s)" in caplog.text

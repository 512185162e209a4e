"""The distributed environment: launcher variables, rank -> device, tasks vs GPUs, GPUs given but unusable, and the
collectives on a real 2-rank gloo group."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cmgan.distenv import (
    CudaUnavailableError,
    DistEnv,
    DistributedError,
    check_gpus,
    detect_env,
    device_index,
    expand_hostlist,
    export_env,
    gpus_assigned,
    master_port,
    require_cuda_if_assigned,
)


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[8-10]b", ["a8b", "a9b", "a10b"]),
        ("r[1-2]n[3-4]", ["r1n3", "r1n4", "r2n3", "r2n4"]),
    ],
)
def test_slurm_host_lists_expand_like_scontrol_show_hostnames(text, hosts):
    assert expand_hostlist(text) == hosts


def test_an_srun_step_gives_rank_world_and_a_master_on_the_first_node():
    env = detect_env({
        "SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
        "SLURM_STEP_NODELIST": "gpu[07-10]", "SLURM_STEP_TASKS_PER_NODE": "2(x4)", "SLURM_JOB_ID": "123456",
    })
    assert env == DistEnv(rank=5, world_size=8, local_rank=1, local_world_size=2, master_addr="gpu07",
                          master_port=master_port("123456", 0), launcher="slurm")


def test_one_master_port_rule_same_for_a_job_new_after_a_requeue():
    assert master_port("4242", 0) == master_port("4242", 0)
    assert master_port("4242", 1) != master_port("4242", 0)
    assert master_port("4243", 0) != master_port("4242", 0)
    assert all(20000 <= master_port(str(j), r) < 40000 for j in range(0, 100000, 997) for r in range(3))
    step = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "2"}
    assert detect_env(step).master_port == master_port("77", 2)


def test_torchrun_variables_win_over_slurm_and_a_batch_shell_is_one_process():
    both = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234",
            "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4"}
    assert detect_env(both).launcher == "torchrun" and detect_env(both).rank == 1
    # sbatch's own shell has SLURM_NTASKS but is not an srun step: one process, no rendezvous to hang on.
    assert detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"}).world_size == 1


def test_a_single_process_exports_rendezvous_variables_only_when_asked(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    export_env(DistEnv())
    assert "RANK" not in os.environ
    env = export_env(DistEnv(), single=True)  # what DeepSpeed needs for one process (else: MPI discovery)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) == env.master_port > 0
    assert detect_env().world_size == 1


@pytest.mark.parametrize(
    ("local_rank", "count", "index"),
    [(0, 1, 0), (3, 1, 0),   # one GPU per task: every rank sees its own device as cuda:0
     (0, 4, 0), (3, 4, 3)],  # every rank sees the node's GPUs: one each
)
def test_rank_to_device_for_both_gpu_layouts(local_rank, count, index):
    assert device_index(local_rank, count) == index


def test_more_tasks_than_gpus_is_refused_before_nccl_and_idle_gpus_are_named(caplog):
    with pytest.raises(DistributedError, match="4 tasks on this node but only 2 GPUs"):
        check_gpus(DistEnv(local_rank=0, local_world_size=4, world_size=4), count=2)
    with pytest.raises(DistributedError, match="local rank 2 but this process sees only 2 GPUs"):
        device_index(2, 2)
    check_gpus(DistEnv(local_rank=3, local_world_size=4, world_size=4), count=1)  # --gpus-per-task=1
    with caplog.at_level(logging.WARNING, logger="cmgan.distenv"):
        check_gpus(DistEnv(local_rank=0, local_world_size=2, world_size=2), count=4)
    assert "GPU(s) [2, 3] stay idle" in caplog.text


def test_gpus_given_to_the_job_are_recognised_from_slurm_and_cuda_visible_devices():
    assert gpus_assigned({}) is None
    assert gpus_assigned({"CUDA_VISIBLE_DEVICES": ""}) is None  # submitit's local executor with no GPUs
    assert gpus_assigned({"SLURM_GPUS_ON_NODE": "0"}) is None
    assert gpus_assigned({"SLURM_JOB_GPUS": "0"}) == "SLURM_JOB_GPUS=0"  # GPU index 0, not a count
    assert gpus_assigned({"SLURM_GPUS_PER_NODE": "a100:4"}) == "SLURM_GPUS_PER_NODE=a100:4"
    assert gpus_assigned({"CUDA_VISIBLE_DEVICES": "2,3"}) == "CUDA_VISIBLE_DEVICES=2,3"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is unavailable")
def test_a_job_given_gpus_without_usable_cuda_stops_with_the_reason_and_the_fix():
    require_cuda_if_assigned({})  # nothing given: the CPU is fine
    with pytest.raises(CudaUnavailableError) as e:
        require_cuda_if_assigned({"SLURM_JOB_GPUS": "0,1"})
    message = str(e.value)
    assert "\n" not in message and "SLURM_JOB_GPUS=0,1" in message and "docs/gpu.md" in message
    assert ("CPU-only wheel" in message) == (torch.version.cuda is None)
    require_cuda_if_assigned({"SLURM_JOB_GPUS": "0,1", "CMGAN_ALLOW_CPU": "1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is unavailable")
def test_the_training_entry_point_refuses_gpus_it_cannot_use(tmp_path):
    """The real launcher, in a fresh process that was 'given' GPU 0: one line on stderr, no traceback."""
    from tests.train.conftest import REPO, TRAIN_SCRIPT, subprocess_env

    env = subprocess_env(CUDA_VISIBLE_DEVICES="0", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), f"train.run_dir='{tmp_path}'", "model.fusion=none"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode != 0
    assert "CUDA_VISIBLE_DEVICES=0" in done.stderr and "CUDA is unavailable" in done.stderr
    assert "Traceback" not in done.stderr


def test_gather_broadcast_and_sum_on_two_real_ranks(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import torch
        from cmgan import distenv
        env, device = distenv.init_process_group()
        assert device.type == "cpu" and distenv.world() == (env.rank, 2)
        assert distenv.gather(env.rank * 10) == [0, 10]
        assert distenv.broadcast(f"from {env.rank}") == "from 0"
        t = torch.tensor([1.0, env.rank], dtype=torch.float64)
        assert distenv.all_reduce_sum(t).tolist() == [2.0, 1.0]
        try:
            distenv.raise_if_any_failed(ValueError("bad") if env.rank == 1 else None)
        except Exception as e:
            print(f"rank {env.rank}: {type(e).__name__}: {e}", flush=True)
    """))
    from tests.train.conftest import REPO, free_port, subprocess_env, torchrun

    done = subprocess.run(torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), str(script)),
                          env=subprocess_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 0: RuntimeError: failed on another rank: rank 1: ValueError: bad" in done.stdout
    assert "rank 1: ValueError: bad" in done.stdout

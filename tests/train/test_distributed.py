import pytest
import torch

from cmgan.config import ConfigError, load_config
from cmgan.train.distributed import DistEnv, DistributedError, detect_env, expand_hostlist, setup


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
                          master_port=20000 + 123456 % 20000, launcher="slurm")


def test_torchrun_variables_win_over_slurm_and_a_batch_shell_is_one_process():
    both = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234",
            "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4"}
    assert detect_env(both).launcher == "torchrun" and detect_env(both).rank == 1
    # sbatch's own shell has SLURM_NTASKS but is not an srun step: one process, no rendezvous to hang on.
    assert detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"}).world_size == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal of fp16")
def test_fp16_on_the_cpu_is_refused_with_the_setting_to_use():
    with pytest.raises(DistributedError, match="train.precision=bf16"):
        setup(load_config(None, ["train.precision=fp16"]).train, batch_size=1)


def test_deepspeed_refuses_fp16_and_skipping_in_the_config():
    with pytest.raises(ConfigError, match="use bf16"):
        load_config(None, ["train.backend=deepspeed", "train.precision=fp16"])
    with pytest.raises(ConfigError, match="nonfinite=skip"):
        load_config(None, ["train.backend=deepspeed", "train.nonfinite=skip"])


def test_a_job_of_the_wrong_size_is_refused_at_start_up():
    with pytest.raises(DistributedError, match="train.expect_world_size=2 but this job runs 1"):
        setup(load_config(None, ["train.expect_world_size=2"]).train, batch_size=1)

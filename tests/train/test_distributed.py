import pytest
import torch

from cmgan.config import ConfigError, load_config
from cmgan.distenv import DistributedError
from cmgan.train.distributed import setup


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

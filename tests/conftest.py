"""Suite-wide fixtures, and the skip rule of the `slurm` marker."""

import os
import shutil

import pytest

SLURM_CLIENTS = ("srun", "sbatch", "sinfo")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `gpu` skips without a CUDA device. A test marked `slurm` skips, saying why, where SLURM's
    client commands are not on the PATH (a fresh machine): submitit's SLURM executor refuses to build without
    `srun`, and nothing can be submitted without `sbatch`. Tests that also need a controller that answers check
    that in their fixture (tests/slurm)."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    if item.get_closest_marker("slurm") is None:
        return
    missing = [c for c in SLURM_CLIENTS if shutil.which(c) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not on PATH): "
                    "bash slurm/local/setup.sh && bash slurm/local/start.sh (as root) starts a local one")


@pytest.fixture(autouse=True)
def _restore_environment():
    """Code under test may export variables (the sweep job exports RANK/WORLD_SIZE/MASTER_* for torchrun-style
    launchers); restore the environment after every test so no test sees another's distributed setup."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)

"""Fixtures of the tests against the real single-node SLURM (slurm/local/*.sh; `.ci/run` starts it in CI).

Tests here are marked `slurm` and skip, saying why, when no controller answers and none can be started. The
runs train `tests/slurm/toy_train.py` (real SGD, real checkpoints, the trainer's stop protocol) so that each
job takes seconds; its step time comes from CMGAN_TOY_STEP_S.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # jobs and tests import tests.slurm.toy_train / tests.slurm.helpers
    sys.path.insert(0, str(REPO))

from cmgan.sweep import ClusterProfile, load_profile, slurm_available  # noqa: E402


def _start_local_slurm() -> str | None:
    """Start the local test cluster if it is installed and we may; returns why not otherwise."""
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        return "SLURM is not installed (run slurm/local/setup.sh, then slurm/local/start.sh, as root)"
    if os.geteuid() != 0:
        return "SLURM is installed but not running, and starting it needs root (slurm/local/start.sh)"
    done = subprocess.run([str(REPO / "slurm/local/start.sh")], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return f"slurm/local/start.sh failed: {done.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A SLURM controller that answers, with the local cluster's partitions `debug` and `urgent`."""
    if not slurm_available():
        why = _start_local_slurm()
        if why or not slurm_available():
            pytest.skip(why or "SLURM does not answer (sinfo failed) after slurm/local/start.sh")
    parts = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
    if not {"debug", "urgent"} <= set(parts):
        pytest.skip(f"SLURM partitions {parts} lack debug/urgent: these tests need slurm/local/start.sh's cluster")
    return "local"


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Jobs can import the toy trainer (the environment travels with sbatch); returns a stand-in shard dir."""
    tmp = tmp_path_factory.mktemp("toy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        mp.setenv("CMGAN_TOY_STEP_S", "0.1")
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.chdir(tmp)
        shards = tmp / "shards"
        shards.mkdir()
        yield shards


@pytest.fixture(scope="module")
def local_profile(slurm_cluster: str) -> ClusterProfile:
    """The local cluster's profile, polled often (tests wait on it)."""
    return load_profile(slurm_cluster).with_resources({"poll_s": 0.5})


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m shards demo` output at 32x32 (3 MR phantoms with labels, 3 color phantoms)."""
    from shards.demo import demo

    out = tmp_path_factory.mktemp("demo")
    demo(out, subjects=3, color_subjects=3, size=32, seed=0)
    return out

"""Evaluation on one and two GPUs (marked `gpu`; skipped with the reason where the GPUs are missing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible here)")]


def _evaluate(tmp_path, demo_shards, demo_run, fid_weights, name, launcher, **extra_env):
    args = ["launch/evaluate.py", "--checkpoint", str(demo_run), "--data", str(demo_shards / "mr"),
            "--real", str(demo_shards / "color"), "--out", str(tmp_path / f"{name}.json"),
            f"eval.inception_weights={fid_weights}", f"eval.stats_cache={tmp_path / name}", "eval.fid_dims=192",
            "eval.batch_size=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra_env}
    done = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_one_gpu_evaluation_matches_the_cpu(tmp_path, demo_shards, demo_run, fid_weights):
    gpu = _evaluate(tmp_path, demo_shards, demo_run, fid_weights, "gpu", [sys.executable])
    # The reference: the same command with the GPU hidden (and the CPU allowed on purpose).
    cpu = _evaluate(tmp_path, demo_shards, demo_run, fid_weights, "cpu", [sys.executable],
                    CUDA_VISIBLE_DEVICES="", CMGAN_ALLOW_CPU="1")
    assert gpu["count"] == cpu["count"] > 0
    assert gpu["metrics"]["ssim"]["mean"] == pytest.approx(cpu["metrics"]["ssim"]["mean"], abs=2e-2)
    assert gpu["metrics"]["fid"] == pytest.approx(cpu["metrics"]["fid"], rel=0.05)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_evaluation_equals_one_gpu(tmp_path, demo_shards, demo_run, fid_weights):
    one = _evaluate(tmp_path, demo_shards, demo_run, fid_weights, "one", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29573"]
    two = _evaluate(tmp_path, demo_shards, demo_run, fid_weights, "two", torchrun)
    assert one["count"] == two["count"] > 0
    assert two["metrics"]["fid"] == pytest.approx(one["metrics"]["fid"], rel=1e-6)
    one["metrics"].pop("fid"), two["metrics"].pop("fid")
    assert one["metrics"] == two["metrics"]  # every slice in the same batch on the same kind of GPU

"""Helpers of the SLURM tests: toy sweeps, reading a toy run's progress, waiting, accounting queries."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmgan.sweep import Sweep, build_sweep

TOY_ENTRY = "tests.slurm.toy_train:train"

# Tiny real runs (as tests/train): 32x32 slices, width 8, no segmentation branch; deterministic with exact data
# resume, so a run stopped and resumed ends bit-identical to an uninterrupted one. Checkpoints only on signals
# and at the end, so a resumed start past step 0 proves the stop path saved.
TINY = [
    "model.image_size=32", "model.width=8", "model.depth=2", "model.seg_width=4", "model.seg_depth=2",
    "model.disc_width=8", "model.fusion=none", "data.batch_size=2", "data.num_workers=1", "data.shuffle_buffer=8",
    "data.resume=exact", "train.deterministic=true", "train.log_every=1", "train.sample_every=0",
    "train.ckpt_every_steps=0", "train.ckpt_every_minutes=0", "train.keep_last=10", "eval.batch_size=8",
    "eval.max_images=8",
]  # fmt: skip


def real_sweep(tmp_path: Path, demo: Path, runs: list[dict[str, Any]], steps: int, name: str, **extra: Any) -> Sweep:
    """A sweep of tiny runs of the real trainer (cmgan.train.trainer:train) on the 32x32 demo shards."""
    data = {
        "name": f"{name}-{uuid.uuid4().hex[:6]}",
        "overrides": [*TINY, f"train.steps={steps}", f"data.mr_shards='{demo / 'mr'}'",
                      f"data.color_shards='{demo / 'color'}'"],
        "runs": runs,
        **extra,
    }
    return build_sweep(data, base_dir=tmp_path, sweep_dir=tmp_path / "sweep")


def loss_terms(summary: dict[str, Any]) -> dict[str, float]:
    """The loss terms (and lr) the trainer last logged, without the timing figures that differ between runs."""
    return {k: v for k, v in summary["losses"].items() if k not in ("images_per_s", "data_wait")}


def job_info(job_id: str) -> tuple[str, int]:
    """(JobState, Restarts) of a job from `scontrol show job`."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState", ""), int(fields.get("Restarts", 0))


def train_progress(sweep: Sweep, run: str) -> int:
    """The real run's last logged step (train.log_every=1), -1 before its first."""
    try:
        lines = (sweep.sweep_dir / "runs" / run / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else -1
    except (FileNotFoundError, json.JSONDecodeError, IndexError):
        return -1


def toy_sweep(
    tmp_path: Path,
    shards: Path,
    runs: list[dict[str, Any]],
    steps: int = 20,
    name: str = "t",
    **extra: Any,
) -> Sweep:
    """A sweep of toy runs (`runs`: [[runs]] tables) in `tmp_path/sweep`; checkpoints only on signals."""
    data = {
        "name": f"{name}-{uuid.uuid4().hex[:6]}",  # unique: accounting keeps earlier test sessions' jobs
        "entry": TOY_ENTRY,
        "overrides": [f"train.steps={steps}", "train.ckpt_every_steps=0", f'data.mr_shards="{shards}"'],
        "runs": runs,
        **extra,
    }
    return build_sweep(data, base_dir=tmp_path, sweep_dir=tmp_path / "sweep")


def progress(sweep: Sweep, run: str) -> int:
    """The toy run's last completed step (-1 before its first)."""
    try:
        return json.loads((sweep.sweep_dir / "runs" / run / "progress.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def starts(sweep: Sweep, run: str) -> list[dict[str, Any]]:
    """One record per rank per (re)start of the toy run: rank, world, start_step, restart, port, job."""
    path = sweep.sweep_dir / "runs" / run / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def reference_weights(tmp_path: Path, shards: Path, steps: int, seed: int = 0, world: int = 1) -> list[float]:
    """The toy's final weights after `steps` uninterrupted steps, trained here in-process (one rank)."""
    from cmgan.config import load_config
    from tests.slurm.toy_train import train

    assert world == 1
    cfg = load_config(None, [f"train.steps={steps}", f"train.seed={seed}", "train.ckpt_every_steps=0",
                             f'data.mr_shards="{shards}"', f'train.run_dir="{tmp_path / "reference"}"'])
    old = os.environ.pop("CMGAN_TOY_STEP_S", None)
    os.environ["CMGAN_TOY_STEP_S"] = "0"
    try:
        return train(cfg)["weights"]
    finally:
        os.environ["CMGAN_TOY_STEP_S"] = old or "0.1"


def sweep_jobs(sweep: Sweep) -> dict[str, set[str]]:
    """This sweep's submissions (any state, last hour) from accounting: job name -> job ids seen under it.

    Every submission (one sbatch: a job or an array) has its own name, so the keys count submissions; an array's
    task ids show up in accounting only as its tasks start."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1hours", "-o", "JobID,JobName"],
                         capture_output=True, text=True, check=True).stdout
    jobs: dict[str, set[str]] = {}
    for line in out.splitlines():
        jid, _, name = line.partition("|")
        if name.startswith(f"cmgan-{sweep.name}-"):
            jobs.setdefault(name, set()).add(jid)
    return jobs

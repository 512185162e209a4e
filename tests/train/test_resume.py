"""Exact continuation: stopped (SIGTERM) or killed (SIGKILL mid-checkpoint) runs end bitwise equal to an
uninterrupted run (deterministic CPU mode, exact data resume), and log the same losses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cmgan import checkpoint
from cmgan.train.trainer import train

from .conftest import TRAIN_SCRIPT, subprocess_env, tiny_config, tiny_overrides

STEPS = 6
EXACT = ["train.deterministic=true", "data.resume=exact", f"train.steps={STEPS}"]


def final_state(run_dir):
    replicated, per_rank = checkpoint.load(checkpoint.latest(run_dir / "checkpoints"), 0)
    assert replicated["step"] == STEPS
    return replicated, per_rank


def logged_losses(run_dir):
    """{step: {term: value}} of metrics.jsonl without the timing fields (a resumed run appends to the file)."""
    timing = {"time", "images_per_s", "data_wait"}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k not in timing} for r in lines}


def assert_same_training_state(a, b):
    (ra, pa), (rb, pb) = a, b
    for group in ("generators", "discriminators"):
        for name, state in ra[group]["nets"].items():
            for key, value in state.items():
                assert torch.equal(value, rb[group]["nets"][name][key]), f"{group}.{name}.{key}"
        for pid, s in ra[group]["optimizer"]["state"].items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(s[key], rb[group]["optimizer"]["state"][pid][key]), f"{group} Adam {key}"
        assert ra[group]["scheduler"] == rb[group]["scheduler"]
    assert torch.equal(pa["pools"]["y"]["images"], pb["pools"]["y"]["images"])
    assert torch.equal(pa["rng"]["torch"], pb["rng"]["torch"])
    assert pa["data"]["batches"] == pb["data"]["batches"] == STEPS


@pytest.fixture(scope="module")
def uninterrupted(demo_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_config(demo_shards, run, *EXACT, "train.ckpt_every_steps=0"))
    return final_state(run), logged_losses(run)


def test_two_runs_of_one_seed_log_bitwise_identical_losses(demo_shards, tmp_path, uninterrupted):
    train(tiny_config(demo_shards, tmp_path, *EXACT, "train.ckpt_every_steps=0"))
    again = logged_losses(tmp_path)
    assert sorted(again) == list(range(1, STEPS + 1)) and "cycle_x" in again[STEPS]
    assert again == uninterrupted[1]
    assert_same_training_state(final_state(tmp_path), uninterrupted[0])


@pytest.mark.parametrize("k", [3, 4], ids=["at_a_checkpoint_step", "between_checkpoint_steps"])
def test_a_run_stopped_by_sigterm_at_step_k_resumes_to_a_bitwise_identical_end(
    demo_shards, tmp_path, uninterrupted, monkeypatch, k
):
    cfg = tiny_config(demo_shards, tmp_path, *EXACT, "train.ckpt_every_steps=3")
    monkeypatch.setenv("CMGAN_TEST_SIGNAL_AT_STEP", str(k))  # rank 0 sends itself SIGTERM before step k's end
    stopped = train(cfg)
    assert stopped["status"] == "stopped" and stopped["steps"] == k and stopped["signal"] == "SIGTERM"
    assert stopped["export"] is None
    assert checkpoint.read_meta(checkpoint.latest(tmp_path / "checkpoints"))["reason"] == "signal"
    monkeypatch.delenv("CMGAN_TEST_SIGNAL_AT_STEP")
    resumed = train(cfg)
    assert resumed["status"] == "completed" and resumed["start_step"] == k
    assert_same_training_state(final_state(tmp_path), uninterrupted[0])
    assert logged_losses(tmp_path) == uninterrupted[1]


@pytest.mark.slow
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_previous_complete_one(
    demo_shards, tmp_path, uninterrupted, monkeypatch
):
    cfg = tiny_config(demo_shards, tmp_path, *EXACT, "train.ckpt_every_steps=2")
    monkeypatch.setenv("CMGAN_TEST_SIGNAL_AT_STEP", "2")
    assert train(cfg)["steps"] == 2  # a complete checkpoint at step 2
    monkeypatch.delenv("CMGAN_TEST_SIGNAL_AT_STEP")
    ckpts = tmp_path / "checkpoints"

    # The same run continues in another process; cmgan.checkpoint's test hook sleeps 60 s after each file it
    # writes, so the SIGKILL lands in the middle of the real write of step 4.
    overrides = tiny_overrides(demo_shards, tmp_path, "model.fusion=none", *EXACT, "train.ckpt_every_steps=2")
    # Same thread count as this process: bitwise equality is only promised for identical runs.
    env = subprocess_env(CMGAN_CKPT_PAUSE_S="60", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    partial = checkpoint.temp_dir(ckpts, 4) / checkpoint.rank_file(0)
    deadline = time.monotonic() + 240
    while not partial.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the step-4 checkpoint write never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader worker
    proc.wait()
    assert checkpoint.latest(ckpts).name == "step_00000002"

    summary = train(cfg)
    assert summary["start_step"] == 2 and summary["status"] == "completed"
    assert not checkpoint.temp_dir(ckpts, 4).exists()  # the half-written folder was removed on start
    assert_same_training_state(final_state(tmp_path), uninterrupted[0])

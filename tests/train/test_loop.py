"""The shared training loop: its schedule (metrics, checkpoints, stop, non-finite skips) on a small real stage,
and exact continuation of S pretraining through it (the CycleGAN's is in test_resume.py)."""

import json

import pytest
import torch
from torch import nn

from cmgan import checkpoint
from cmgan.config import OptimConfig, TrainConfig, load_config
from cmgan.train import distributed
from cmgan.train.loop import CheckpointState, NonFiniteLossError, TrainLoop, Window
from cmgan.train.monitor import Monitor
from cmgan.train.seg_pretrain import pretrain_segmenter
from cmgan.train.state import capture_rng, restore_rng
from cmgan.train.stop import StopFlag

from .conftest import tiny_overrides


class LineFit:
    """A real stage: fits y = 3x with one Linear layer and Adam; `nan_at` makes the loss of those steps NaN."""

    name = "linefit"
    fix = "Lower the learning rate"

    def __init__(self, backend, steps, nan_at=()):
        torch.manual_seed(0)
        self.backend, self.nan_at, self.done = backend, set(nan_at), 0
        optim = OptimConfig(lr=0.1, betas=(0.9, 0.999), schedule="constant", scale_lr=False)
        self.net = backend.prepare("line", {"f": nn.Linear(1, 1)}, 0.1, optim, steps)
        self.replicas = [self.net.raw["f"]]
        self.observed, self.windows = [], []

    def forward_backward(self):
        x = torch.randn(8, 1)
        loss = (self.net.nets["f"](x) - 3 * x).pow(2).mean()
        if self.done + 1 in self.nan_at:
            loss = loss * float("nan")
        self.backend.backward(self.net, loss)
        self.done += 1
        return {"mse": loss.detach()}, ~torch.isfinite(loss)

    def update(self):
        self.backend.step(self.net, True)

    def skip(self):
        self.backend.skip(self.net)

    def scalars(self, window: Window):
        self.windows.append(window)
        return {"weight": float(self.net.raw["f"].weight.detach()), "skipped": float(window.skips)}

    def observe(self, step, monitor):
        self.observed.append(step)

    def checkpoint_state(self, step):
        return CheckpointState({"step": step, "net": self.backend.state_dict(self.net)}, {"rng": capture_rng()},
                               {"done": self.done})


def run_line(tmp_path, steps, start_step=0, resumed_from=None, nan_at=(), **train):
    tc = TrainConfig(**{"log_every": 2, "ckpt_every_steps": 3, "ckpt_every_minutes": 0, "keep_last": 10, **train})
    backend = distributed.setup(tc, batch_size=8)
    try:
        stage = LineFit(backend, steps, nan_at)
        if resumed_from is not None:
            replicated, per_rank = checkpoint.load(resumed_from, 0)
            backend.load_state_dict(stage.net, replicated["net"], resumed_from)
            restore_rng(per_rank["rng"])
        with StopFlag() as stop:
            loop = TrainLoop(stage, tc, backend, stop, Monitor(tmp_path, steps, start_step, True, tensorboard=False),
                             tmp_path / "checkpoints", steps=steps, start_step=start_step, resumed_from=resumed_from)
            return loop.run(), stage
    finally:
        backend.close()


def logged(run_dir, *keys):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: r[k] for k in keys} for r in lines}


def test_the_loop_logs_saves_and_stops_on_its_schedule_and_a_resume_continues_exactly(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    straight.mkdir()
    result, stage = run_line(straight, steps=7)
    assert (result.status, result.steps, result.signal) == ("completed", 7, "")
    assert sorted(logged(straight, "weight")) == [2, 4, 6, 7]  # every log_every=2 steps and the last
    assert [w.steps for w in stage.windows] == [2, 2, 2, 1] and all(w.images == 8 * w.steps for w in stage.windows)
    assert stage.observed == [1, 2, 3, 4, 5, 6, 7]
    reasons = {s: checkpoint.read_meta(p)["reason"] for s, p in checkpoint.list_complete(straight / "checkpoints")}
    assert reasons == {3: "schedule", 6: "schedule", 7: "end"}
    meta = checkpoint.read_meta(result.checkpoint)
    assert meta["stage"] == "linefit" and meta["done"] == 7 and meta["replicas_identical"]
    assert meta["losses"] == result.losses and result.losses["weight"] != 0.0

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    monkeypatch.setenv("CMGAN_TEST_SIGNAL_AT_STEP", "5:SIGUSR2")  # a real SIGUSR2 through the real handler
    result, _ = run_line(stopped, steps=7)
    assert (result.status, result.steps, result.signal) == ("stopped", 5, "SIGUSR2")
    assert sorted(logged(stopped, "weight")) == [2, 4, 5]  # the stop step is logged too
    assert [s for s, _ in checkpoint.list_complete(stopped / "checkpoints")] == [3, 5]
    assert checkpoint.read_meta(result.checkpoint)["reason"] == "signal"
    monkeypatch.delenv("CMGAN_TEST_SIGNAL_AT_STEP")

    result, _ = run_line(stopped, steps=7, start_step=5, resumed_from=result.checkpoint)
    assert (result.status, result.steps) == ("completed", 7)
    assert logged(stopped, "weight")[7] == logged(straight, "weight")[7]  # bitwise: same floats after resume
    assert logged(stopped, "weight")[6] == logged(straight, "weight")[6]


def test_skip_mode_skips_a_non_finite_step_without_updating_and_raises_after_the_limit(tmp_path):
    with pytest.raises(NonFiniteLossError, match="linefit step 5: .* 2 consecutive steps skipped"):
        run_line(tmp_path, steps=7, nan_at=(2, 4, 5), nonfinite="skip", max_nonfinite_skips=1, log_every=1)
    lines = logged(tmp_path, "weight", "skipped")
    assert sorted(lines) == [1, 2, 3, 4]  # step 5 raised before its update and its line
    assert [lines[s]["skipped"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]  # consecutive skips, reset by step 3
    assert lines[2]["weight"] == lines[1]["weight"] != lines[3]["weight"] == lines[4]["weight"]  # skipped: no update
    assert checkpoint.latest(tmp_path / "checkpoints").name == "step_00000003"


def test_stop_mode_raises_before_updating_and_names_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="linefit step 4: non-finite loss") as err:
        run_line(tmp_path, steps=7, nan_at=(4,))
    latest = checkpoint.latest(tmp_path / "checkpoints")
    assert latest.name == "step_00000003" and str(latest) in str(err.value)
    assert str(err.value).endswith("Lower the learning rate")  # the stage's fix ends the message


SEG = ["seg.steps=4", "seg.batch_size=4", "seg.val_every=0", "train.deterministic=true", "data.resume=exact",
       "train.ckpt_every_steps=0", "data.num_workers=0"]


def seg_state(run_dir):
    replicated, per_rank = checkpoint.load(checkpoint.latest(run_dir / "checkpoints"), 0)
    assert replicated["step"] == 4
    return replicated["segmenter"], per_rank


def test_seg_pretraining_stopped_by_sigusr1_resumes_to_the_losses_and_weights_of_an_uninterrupted_run(
    demo_shards, tmp_path, monkeypatch
):
    runs = {}
    for name in ("straight", "stopped"):
        runs[name] = tmp_path / name
        cfg = load_config(None, tiny_overrides(demo_shards, tmp_path, *SEG, f"seg.run_dir='{runs[name]}'"))
        if name == "stopped":
            monkeypatch.setenv("CMGAN_TEST_SIGNAL_AT_STEP", "2:SIGUSR1")
            summary = pretrain_segmenter(cfg)
            assert summary["status"] == "stopped" and summary["steps"] == 2 and summary["export"] is None
            monkeypatch.delenv("CMGAN_TEST_SIGNAL_AT_STEP")
        summary = pretrain_segmenter(cfg)
        assert summary["status"] == "completed" and summary["steps"] == 4
    straight, stopped = (logged(runs[n], "ce", "dice_loss") for n in ("straight", "stopped"))
    assert straight == stopped and sorted(straight) == [1, 2, 3, 4]  # bitwise the same losses, resumed or not
    (sa, pa), (ss, ps) = seg_state(runs["straight"]), seg_state(runs["stopped"])
    for key, value in sa["nets"]["S"].items():
        assert torch.equal(value, ss["nets"]["S"][key]), key
    for pid, s in sa["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg_sq"], ss["optimizer"]["state"][pid]["exp_avg_sq"])
    assert pa["data"]["batches"] == ps["data"]["batches"] == 4 and torch.equal(pa["rng"]["torch"], ps["rng"]["torch"])

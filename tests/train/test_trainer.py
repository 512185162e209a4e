import json

import numpy as np
import pytest
import torch
from PIL import Image

from cmgan import checkpoint
from cmgan.config import replace
from cmgan.export import load_export
from cmgan.train.loop import NonFiniteLossError
from cmgan.train.trainer import train

from .conftest import tiny_config


def test_a_tiny_run_writes_checkpoints_metrics_samples_and_a_loadable_export(demo_shards, tmp_path):
    cfg = tiny_config(demo_shards, tmp_path / "run", "train.steps=4", "train.ckpt_every_steps=2",
                      "train.sample_every=2", "train.ema_decay=0.9")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 4 and summary["start_step"] == 0
    run = tmp_path / "run"
    assert [s for s, _ in checkpoint.list_complete(run / "checkpoints")] == [2, 4]
    meta = checkpoint.read_meta(run / "checkpoints" / "step_00000004")
    assert meta["step"] == 4 and meta["replicas_identical"] and meta["reason"] == "end"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert {"cycle_x", "adv_g", "dy_fake", "images_per_s", "data_wait", "lr"} <= set(lines[-1])
    assert all(np.isfinite(v) for r in lines for v in r.values())
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    grid = np.asarray(Image.open(run / "samples" / "step_00000004.png"))
    assert grid.shape == (2 * 32 + 2, 4 * 32 + 3 * 2, 3)  # 2 images: MR | colorized | reconstructed | edges
    export = load_export(summary["export"], use_ema=True, autocast=None)
    assert export.uses_ema
    rgb = export.colorize(torch.zeros(1, 1, 32, 32))
    assert rgb.shape == (1, 3, 32, 32) and rgb.abs().max() <= 1.0
    assert json.loads((run / "summary.json").read_text())["export"] == summary["export"]


def test_a_run_directory_with_a_checkpoint_resumes_automatically(demo_shards, tmp_path):
    # Time-based checkpoints only (every 6 ms: after every step here).
    cfg = tiny_config(demo_shards, tmp_path / "run", "train.steps=2", "train.ckpt_every_steps=0",
                      "train.ckpt_every_minutes=0.0001")
    assert train(cfg)["steps"] == 2
    assert [s for s, _ in checkpoint.list_complete(tmp_path / "run" / "checkpoints")] == [1, 2]
    summary = train(replace(cfg, ["train.steps=3", "train.ckpt_every_minutes=0"]))
    assert summary["start_step"] == 2 and summary["steps"] == 3 and summary["status"] == "completed"
    assert [s for s, _ in checkpoint.list_complete(tmp_path / "run" / "checkpoints")] == [1, 2, 3]


def test_a_non_finite_loss_stops_with_a_clear_message_and_the_last_good_checkpoint_intact(demo_shards, tmp_path):
    # A learning rate of 1e38 overflows the weights after the first update: a real NaN, not an injected one.
    cfg = tiny_config(demo_shards, tmp_path / "run", "train.steps=5", "train.ckpt_every_steps=1",
                      "optim.lr=1e38", "optim.scale_lr=false", "optim.schedule=constant", "train.precision=fp32")
    with pytest.raises(NonFiniteLossError, match="non-finite loss") as err:
        train(cfg)
    latest = checkpoint.latest(tmp_path / "run" / "checkpoints")
    assert latest is not None and str(latest) in str(err.value)
    replicated, _ = checkpoint.load(latest, 0)  # complete and loadable
    assert replicated["step"] >= 1


def test_skip_mode_skips_non_finite_updates_then_gives_up_after_the_limit(demo_shards, tmp_path):
    cfg = tiny_config(demo_shards, tmp_path / "run", "train.steps=8", "train.ckpt_every_steps=0",
                      "optim.lr=1e38", "optim.scale_lr=false", "optim.schedule=constant", "train.precision=fp32",
                      "train.nonfinite=skip", "train.max_nonfinite_skips=2")
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps skipped"):
        train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in lines if r["skipped"]][:2] == [1.0, 2.0]


def test_bf16_training_stays_finite_and_close_to_fp32(demo_shards, tmp_path):
    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(demo_shards, tmp_path / precision, "train.steps=4", f"train.precision={precision}",
                          "train.deterministic=true", "data.resume=exact")
        summary = train(cfg)
        state, _ = checkpoint.load(summary["checkpoint"], 0)
        finals[precision] = (summary["losses"], state["generators"]["nets"]["G"])
    (l32, g32), (l16, g16) = finals["fp32"], finals["bf16"]
    for term in ("cycle_x", "cycle_y", "gray_g", "edge_g", "adv_g", "dx_real", "dy_fake"):
        assert np.isfinite(l16[term])
        assert l16[term] == pytest.approx(l32[term], rel=0.02), term  # measured: < 0.3 %
    for name, w in g32.items():
        if w.is_floating_point():
            assert torch.isfinite(g16[name]).all()
            assert (g16[name] - w).norm() <= 0.03 * w.norm() + 1e-6, name  # measured: < 1 %

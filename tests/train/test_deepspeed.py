"""DeepSpeed in one process (no MPI), in the precision configured, and resumed ZeRO runs equal to uninterrupted ones."""

import json
import subprocess
import sys

import pytest
import torch

from cmgan import checkpoint
from cmgan.train import distributed
from cmgan.train.trainer import build, train

from .conftest import REPO, TRAIN_SCRIPT, one_step_conv_dtypes, subprocess_env, tiny_config, tiny_overrides

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

STEPS, STOP_AT = 4, 2
# fp32 NCHW: the resume test is about state, and on the CPU DeepSpeed's contiguous weights make bf16 slow.
EXACT = ["train.deterministic=true", "data.resume=exact", f"train.steps={STEPS}", "train.backend=deepspeed",
         "train.precision=fp32", "train.channels_last=false"]


def test_the_single_process_deepspeed_command_runs_without_mpi(demo_shards, tmp_path):
    """The README's command, with the test's tiny shards and networks: one process, no launcher, no mpi4py."""
    overrides = tiny_overrides(demo_shards, tmp_path, "model.fusion=none", "train.steps=2")
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--config", str(REPO / "configs" / "demo.toml"),
           'train.backend="deepspeed"', *overrides]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mpi4py" not in done.stderr and "deepspeed backend, 1 process(es)" in done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["status"] == "completed" and summary["steps"] == 2 and summary["lr"] > 0


def test_a_deepspeed_step_runs_the_generator_in_bf16(demo_shards, tmp_path):
    """The engine switches an outer autocast off inside its forward (on CUDA) unless its own config asks for one:
    the backend must declare it, and the activations inside G during a real step are bf16."""
    cfg = tiny_config(demo_shards, tmp_path, "train.backend=deepspeed", "train.precision=bf16")
    backend = distributed.setup(cfg.train, cfg.data.batch_size)
    try:
        parts = build(cfg, backend)
        engine = parts.gen.engine
        assert engine.torch_autocast_enabled() and engine.torch_autocast_dtype() == torch.bfloat16
        seen, terms, nonfinite = one_step_conv_dtypes(cfg, backend, parts)
        assert seen == {torch.bfloat16}
        assert not bool(nonfinite) and all(v.dtype == torch.float32 for v in terms.values())  # losses in fp32
        # Weights, gradients and optimizer states stay float32 (autocast only), as with ddp.
        assert all(p.dtype == torch.float32 for p in parts.gen.raw["G"].parameters())
    finally:
        backend.close()


def engine_weights(ckpt):
    """Every tensor the DeepSpeed engines saved (module weights; optimizer states with ZeRO 0)."""
    out = {}
    for group in ("ds_generators", "ds_discriminators"):
        for f in sorted((ckpt / group / "engine").glob("*.pt")):
            state = torch.load(f, map_location="cpu", weights_only=False)
            for key, value in _tensors(state):
                out[f"{group}/{f.name}/{key}"] = value
    return out


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_a_resumed_zero_run_ends_bitwise_equal_to_an_uninterrupted_one(demo_shards, tmp_path, monkeypatch, stage):
    straight = tiny_config(demo_shards, tmp_path / "straight", *EXACT, f"train.zero_stage={stage}")
    assert train(straight)["steps"] == STEPS
    cfg = tiny_config(demo_shards, tmp_path / "resumed", *EXACT, f"train.zero_stage={stage}")
    monkeypatch.setenv("CMGAN_TEST_SIGNAL_AT_STEP", str(STOP_AT))
    assert train(cfg)["status"] == "stopped"
    monkeypatch.delenv("CMGAN_TEST_SIGNAL_AT_STEP")
    resumed = train(cfg)
    assert resumed["status"] == "completed" and resumed["start_step"] == STOP_AT

    a = engine_weights(checkpoint.latest(tmp_path / "straight" / "checkpoints"))
    b = engine_weights(checkpoint.latest(tmp_path / "resumed" / "checkpoints"))
    assert a.keys() == b.keys() and any("module" in k for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    _, pa = checkpoint.load(checkpoint.latest(tmp_path / "straight" / "checkpoints"), 0)
    _, pb = checkpoint.load(checkpoint.latest(tmp_path / "resumed" / "checkpoints"), 0)
    assert torch.equal(pa["pools"]["y"]["images"], pb["pools"]["y"]["images"])
    assert torch.equal(pa["rng"]["torch"], pb["rng"]["torch"])

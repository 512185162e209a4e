"""The training paths on a real GPU (marked `gpu`; skipped with the reason where CUDA is unavailable)."""

import pytest
import torch

from cmgan.train import distributed
from cmgan.train.trainer import _accumulate_step, build, train

from .conftest import one_step_conv_dtypes, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible here)")]


def native_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def activation_dtypes(cfg):
    """The dtype of G's first convolution output during one real step, and the backend used."""
    backend = distributed.setup(cfg.train, cfg.data.batch_size)
    try:
        parts = build(cfg, backend)
        seen, _, nonfinite = one_step_conv_dtypes(cfg, backend, parts)
        assert not bool(nonfinite) and backend.device.type == "cuda"
        return seen, parts
    finally:
        backend.close()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_real_training_run_on_the_gpu(demo_shards, tmp_path, precision):
    summary = train(tiny_config(demo_shards, tmp_path, f"train.precision={precision}", "train.steps=3"))
    assert summary["status"] == "completed" and all(v == v for v in summary["losses"].values())
    expected = precision if precision == "fp16" or native_bf16() else "fp16"
    assert summary["precision"] == expected


def test_fp16_keeps_one_loss_scaler_per_optimizer_and_runs_half_precision(demo_shards, tmp_path):
    dtypes, parts = activation_dtypes(tiny_config(demo_shards, tmp_path, "train.precision=fp16"))
    assert dtypes == {torch.float16}
    assert parts.gen.scaler is not None and parts.disc.scaler is not None and parts.gen.scaler is not parts.disc.scaler


@pytest.mark.skipif(not native_bf16(), reason="bf16 needs compute capability >= 8.0")
@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_runs_bf16_inside_the_engine_and_trains(demo_shards, tmp_path, stage):
    extra = ("train.backend=deepspeed", "train.precision=bf16", f"train.zero_stage={stage}")
    dtypes, _ = activation_dtypes(tiny_config(demo_shards, tmp_path / "probe", *extra))
    assert dtypes == {torch.bfloat16}  # the engine would switch an outer CUDA autocast off otherwise
    summary = train(tiny_config(demo_shards, tmp_path / "run", *extra, "train.steps=3", "train.ckpt_every_steps=2"))
    assert summary["status"] == "completed" and summary["precision"] == "bf16"


def test_deterministic_training_on_cuda_repeats_bitwise(demo_shards, tmp_path):
    exact = ("train.deterministic=true", "data.resume=exact", "train.steps=3")
    a = train(tiny_config(demo_shards, tmp_path / "a", *exact))
    b = train(tiny_config(demo_shards, tmp_path / "b", *exact))
    assert a["losses"] == b["losses"]


def test_the_hot_loop_does_not_wait_for_the_gpu(demo_shards, tmp_path):
    """Forward + backward of a step's micro-batches queue work without one host synchronization (the flag and the
    loss terms stay on the GPU until the step's single agreement)."""
    import warnings

    cfg = tiny_config(demo_shards, tmp_path, "train.precision=bf16", "train.grad_accum=2")
    backend = distributed.setup(cfg.train, cfg.data.batch_size)
    try:
        parts = build(cfg, backend)
        from cmgan.data.pipeline import UnpairedStream

        batches = iter(UnpairedStream(cfg.data, cfg.model.image_size, 0, 1, cfg.train.seed))
        _accumulate_step(cfg, backend, parts, batches)  # warm-up (allocations, cuDNN plans)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _accumulate_step(cfg, backend, parts, batches)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        assert not syncs, syncs
    finally:
        backend.close()

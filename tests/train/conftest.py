"""Fixtures and helpers of the trainer tests: tiny demo shards (32x32), tiny run configs, subprocess launching."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from cmgan.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "launch" / "train.py"

# Tiny networks: a step takes tens of milliseconds on one core.
TINY = [
    "model.image_size=32", "model.width=8", "model.depth=2", "model.seg_width=4", "model.seg_depth=2",
    "model.disc_width=8", "data.batch_size=2", "data.num_workers=1", "data.shuffle_buffer=8",
    "train.log_every=1", "train.sample_every=0", "train.ckpt_every_minutes=0", "train.keep_last=10",
]


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m shards demo` output at 32x32 (3 MR phantoms with labels, 3 color phantoms)."""
    from shards.demo import demo

    out = tmp_path_factory.mktemp("demo")
    demo(out, subjects=3, color_subjects=3, size=32, seed=0)
    return out


def tiny_overrides(demo: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.mr_shards='{demo / 'mr'}'", f"data.color_shards='{demo / 'color'}'",
            f"train.run_dir='{run_dir}'", f"seg.run_dir='{run_dir / 'seg'}'", *extra]


def tiny_config(demo: Path, run_dir: Path, *extra: str) -> RunConfig:
    """A tiny CycleGAN config (fusion off unless overridden) on the demo shards."""
    return load_config(None, tiny_overrides(demo, run_dir, "model.fusion=none", *extra))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for training subprocesses: one thread per rank (2 cores, 2 ranks), no inherited rank vars."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "CMGAN_TEST"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def one_step_conv_dtypes(cfg, backend, parts) -> tuple[set, dict, object]:
    """Run one real step (`_accumulate_step`) of `parts` and return (the dtypes of G's first convolution's
    outputs during it, the step's loss terms, its non-finite flag)."""
    import torch

    from cmgan.data.pipeline import UnpairedStream
    from cmgan.train.trainer import _accumulate_step

    seen = []
    conv = next(m for m in parts.gen.raw["G"].modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        batches = iter(UnpairedStream(cfg.data, cfg.model.image_size, 0, 1, cfg.train.seed))
        _, terms, nonfinite, _ = _accumulate_step(cfg, backend, parts, batches)
    finally:
        hook.remove()
    return set(seen), terms, nonfinite

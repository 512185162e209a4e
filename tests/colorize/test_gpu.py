"""Colorization on a GPU (marked `gpu`; skipped with the reason where CUDA is unavailable)."""

import numpy as np
import pytest
import torch

from cmgan.colorize.volume import colorize_batches
from cmgan.export import load_export

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible here)")]


def test_gpu_colorization_matches_the_cpu_in_fp32(export_path):
    slices = np.random.default_rng(0).uniform(-1, 1, (11, 32, 32)).astype(np.float32)
    gpu = load_export(export_path, "cuda", autocast=None)
    cpu = load_export(export_path, "cpu", autocast=None)
    got = list(colorize_batches(gpu, slices, 4))
    ref = list(colorize_batches(cpu, slices, 4))
    assert [s for s, _ in got] == [0, 4, 8]
    for (_, a), (_, b) in zip(got, ref):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3


def test_gpu_colorization_in_bf16_runs_and_stays_close(export_path):
    slices = np.random.default_rng(1).uniform(-1, 1, (6, 32, 32)).astype(np.float32)
    gpu = load_export(export_path, "cuda")
    cpu = load_export(export_path, "cpu", autocast=None)
    [(_, a)], [(_, b)] = list(colorize_batches(gpu, slices, 8)), list(colorize_batches(cpu, slices, 8))
    assert np.abs(a - b).mean() < 0.05

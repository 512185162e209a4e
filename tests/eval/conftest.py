"""Shared fixtures of the evaluation tests: random FID Inception weights in pytorch-fid's format, varied images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cmgan.eval.inception import FID_WEIGHTS_NAME, build_backbone


def write_random_fid_weights(path: Path, seed: int = 0) -> Path:
    """pytorch-fid's FID Inception3 with random weights, saved as its weights file would be.

    He-normal convs and perturbed BN statistics keep pool3 features O(0.1) through the 94 layers (PyTorch's
    default init shrinks them to ~1e-8, which would make the FID comparisons meaningless).
    """
    g = torch.Generator().manual_seed(seed)
    net = build_backbone()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel())
        elif isinstance(m, nn.BatchNorm2d):
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean.data = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var.data = 1 + torch.rand(m.running_var.shape, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose hub cache holds random weights under pytorch-fid's file name (so it never downloads)."""
    home = tmp_path_factory.mktemp("torch_home")
    write_random_fid_weights(home / "hub" / "checkpoints" / FID_WEIGHTS_NAME)
    return home


@pytest.fixture(scope="session")
def fid_weights(torch_home: Path) -> Path:
    return torch_home / "hub" / "checkpoints" / FID_WEIGHTS_NAME


def varied_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) float32 in [-1, 1]: smooth random patterns with per-image colour and contrast."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.randn(n, 3, size, size, generator=g) * 0.1
    offset = torch.rand(n, 3, 1, 1, generator=g) - 0.5
    return torch.tanh(smooth * 1.5 + noise + offset)


@pytest.fixture(scope="session")
def make_images():
    """The `varied_images(n, seed, size)` factory."""
    return varied_images


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m shards demo` at 32x32: <dir>/mr (test split with truth and labels) and <dir>/color."""
    from shards.__main__ import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--subjects", "3", "--color-subjects", "2", "--size", "32"]) == 0
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> Path:
    """A run directory holding an export of an untrained (seeded) tiny generator + segmenter."""
    from cmgan.config import ModelConfig
    from cmgan.data.manifest import read_manifest
    from cmgan.export import save_export
    from cmgan.models import build_generator, build_segmenter

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, width=8, seg_width=8)
    run = tmp_path_factory.mktemp("run")
    save_export(run / "export" / "generator.pt", model_cfg=cfg, generator_state=build_generator(cfg).state_dict(),
                segmenter_state=build_segmenter(cfg).state_dict(),
                normalization=read_manifest(demo_shards / "mr")["normalization"] or {}, meta={"step": 0})
    return run

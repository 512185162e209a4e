"""Real-domain FID statistics are computed once, cached under a key of the data and the weights, and reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmgan.config import EvalConfig
from cmgan.eval import evaluator, reference
from cmgan.export import load_export
from cmgan.files import sha256_file


def test_real_statistics_are_cached_under_a_key_of_data_and_weights(tmp_path, demo_shards, demo_run, fid_weights):
    cfg = EvalConfig(inception_weights=str(fid_weights), stats_cache=str(tmp_path), fid_dims=64, max_images=3,
                     batch_size=8, real_splits=("train",))
    export = load_export(demo_run, autocast=None)
    first = evaluator.evaluate(export, demo_shards / "mr", demo_shards / "color", cfg, out=tmp_path / "m.json")
    second = evaluator.evaluate(export, demo_shards / "mr", demo_shards / "color", cfg)
    assert first["count"] == 3  # eval.max_images
    assert first["settings"]["fid"]["real"]["cached"] is False and second["settings"]["fid"]["real"]["cached"] is True
    assert second["metrics"] == first["metrics"]
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == first["metrics"]
    model, _ = reference.load_fid_model(cfg)
    key = reference.real_stats_key(demo_shards / "color", ["train"], model, cfg)
    assert key["weights_sha256"] == first["settings"]["fid"]["weights_sha256"]
    assert key["manifest_sha256"] == sha256_file(demo_shards / "color" / "manifest.json")
    assert Path(first["settings"]["fid"]["real"]["cache"]).is_file()
    # A reference set without images: FID unavailable with the reason, the other metrics still measured.
    empty = evaluator.evaluate(export, demo_shards / "mr", demo_shards / "color",
                               EvalConfig(inception_weights=str(fid_weights), max_images=2, real_splits=("test",)))
    assert empty["metrics"]["fid"] is None and "no real color images" in empty["metrics"]["fid_unavailable"]
    assert empty["metrics"]["ssim"]["count"] == 2


def test_pytorch_fid_stats_file_of_another_feature_size_is_refused(tmp_path, fid_weights):
    from cmgan.eval import fid

    path = tmp_path / "stats.npz"
    fid.save_stats(path, np.zeros(64), np.eye(64), 10, {})
    cfg = EvalConfig(inception_weights=str(fid_weights))
    model, _ = reference.load_fid_model(cfg)
    with pytest.raises(ValueError, match="stats.npz: statistics of 64-d features, eval.fid_dims=2048"):
        reference.real_statistics(path, model, cfg)


def test_fid_features_run_without_tf32_and_the_cache_key_names_precision_and_device(tmp_path, fid_weights):
    import torch

    cfg = EvalConfig(inception_weights=str(fid_weights), fid_dims=64, fid_precision="fp32")
    model, _ = reference.load_fid_model(cfg)
    seen = []
    hook = model.net.register_forward_hook(lambda m, i, o: seen.append(
        (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)))
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    features = model.features(torch.rand(2, 3, 32, 32))
    hook.remove()
    assert features.shape == (2, 64) and seen == [("ieee", "ieee")]  # TF32 off inside (Ampere+ would use it)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
    assert model.device_name == "cpu" and model.precision == "fp32"


def test_real_statistics_of_another_precision_are_cached_apart(tmp_path, demo_shards, fid_weights):
    keys = []
    for precision in ("fp32", "bf16"):
        cfg = EvalConfig(inception_weights=str(fid_weights), fid_dims=64, fid_precision=precision)
        model, _ = reference.load_fid_model(cfg)
        keys.append(reference.real_stats_key(demo_shards / "color", ["train"], model, cfg))
    assert [k["precision"] for k in keys] == ["fp32", "bf16"] and keys[0]["device"] == keys[1]["device"] == "cpu"
    assert keys[0] != keys[1]

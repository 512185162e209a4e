"""bench/quality_mni.py: the MNI152 tissue labels, the shards built from them, and the volume scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def _bench():
    return load_script(REPO / "bench" / "quality_mni.py", "quality_mni")


def test_tissue_labels_follow_the_maps_inside_the_mask():
    q = _bench()
    gm = np.array([0.6, 0.2, 0.1, 0.9, 0.0], np.float32)
    wm = np.array([0.3, 0.7, 0.1, 0.0, 0.0], np.float32)
    brain = np.array([True, True, True, False, True])
    # csf = 1 - gm - wm: 0.1, 0.1, 0.8, -, 1.0
    assert q.tissue_labels(gm, wm, brain).tolist() == [1, 3, 4, 0, 4]


@pytest.mark.slow
def test_mni_data_preparation_builds_labelled_train_shards(tmp_path):
    pytest.importorskip("nilearn")
    import nibabel as nib

    from cmgan.data import schema
    from cmgan.data.manifest import read_manifest
    from cmgan.data.splits import read_split

    q = _bench()
    data = q.prepare_data(tmp_path, size=16, axis=2, resolution=2)  # 2 mm: 8x fewer voxels
    label = nib.load(str(data["label"])).get_fdata().astype(np.uint8)
    t1 = nib.load(str(data["t1"])).get_fdata()
    brain = data["brain"]
    assert label.shape == t1.shape == brain.shape and len(brain.shape) == 3
    assert not label[~brain].any() and not t1[~brain].any()  # background (0) outside the brain mask
    counts = np.bincount(label[brain], minlength=5)
    assert counts[[1, 3, 4]].min() > 0.05 * brain.sum()  # cortex, white matter and csf all present in quantity
    assert counts[0] == 0 and counts[2] == 0  # every brain voxel has a tissue; deep GM is not separable here
    manifest = read_manifest(data["shards"])
    assert manifest["counts"]["train"] == manifest["counts"]["samples"] == data["samples"] > 50
    sample = next(iter(read_split(data["shards"], "train", keys=(schema.MR_KEY, schema.LABEL_KEY))))
    assert sample[schema.MR_KEY].shape == sample[schema.LABEL_KEY].shape == (16, 16)
    json.dumps(manifest)  # the manifest holds no arrays


def test_score_volume_perfect_and_gray_outputs():
    q = _bench()
    rng = np.random.default_rng(0)
    shape = (24, 28, 10)
    brain = np.zeros(shape, bool)
    brain[4:20, 4:24, 1:9] = True  # 8 slices: a 2-voxel shell leaves an interior
    tissue = np.zeros(shape, np.uint8)
    tissue[brain] = 3
    tissue[4:12, 4:24, 1:9] = 1
    tissue[4:8, 4:10, 1:9] = 4
    tissue[~brain] = 0
    image = np.where(brain, rng.uniform(-0.6, 0.8, shape), -1.0).astype(np.float32)
    gray8 = np.repeat(np.clip(np.rint((image + 1) * 127.5), 0, 255).astype(np.uint8)[..., None], 3, -1)
    quantized = gray8[..., 0].astype(np.float32) / 127.5 - 1  # the input as the uint8 output can hold it
    perfect = q.score_volume(quantized, gray8, brain, tissue, axis=2, grid_image=quantized)
    assert perfect["ssim_fg"] == pytest.approx(1.0) and perfect["grid_ssim_fg"] == pytest.approx(1.0)
    assert perfect["psnr_fg"] >= 99  # identical: capped at PSNR_MAX_DB
    assert perfect["separation_ab"] == pytest.approx(0.0, abs=0.05)  # gray output: no tissue color difference
    assert perfect["flicker_ab"] == pytest.approx(0.0, abs=0.05)
    assert set(perfect["tissue_lab"]) == {"cortex", "white_matter", "csf"}
    # Color each tissue differently: separation > 0, structure of the luminance lower than the gray copy's.
    colored = gray8.copy()
    colored[tissue == 1] = [200, 60, 60]
    colored[tissue == 4] = [40, 60, 200]
    scored = q.score_volume(quantized, colored, brain, tissue, axis=2)
    assert scored["separation_ab"] > 30 and scored["ssim_fg"] < 0.9
    assert scored["tissue_lab"]["cortex"][1] > 30  # red: a* > 0
    assert "grid_ssim_fg" not in scored
    assert perfect["rim_dy"] == pytest.approx(0.0, abs=0.003)
    assert perfect["interior_dy"] == pytest.approx(0.0, abs=0.003)
    # A dark halo: the brain's outer 2-voxel shell 40 levels darker, the interior untouched.
    halo = gray8.astype(np.int16)
    eroded = ndimage.binary_erosion(brain, ndimage.generate_binary_structure(3, 1), q.RIM_VOXELS)
    halo[brain & ~eroded] -= 40
    dark = q.score_volume(quantized, np.clip(halo, 0, 255).astype(np.uint8), brain, tissue, axis=2)
    assert dark["rim_dy"] < -0.1 and dark["interior_dy"] == pytest.approx(0.0, abs=0.003)


def test_reuse_runs_keeps_only_a_completed_run_of_the_same_config_and_never_trains_over_another(tmp_path):
    from cmgan.config import dumps_toml, load_config

    q = _bench()
    cfg = load_config(REPO / "configs" / "quality.toml", [f'train.run_dir="{tmp_path}"', "train.seed=1"])
    assert not q.completed_run(tmp_path, cfg)  # nothing there
    (tmp_path / "config.toml").write_text(dumps_toml(cfg))
    (tmp_path / "summary.json").write_text(json.dumps({"status": "stopped", "export": "g.pt"}))
    assert not q.completed_run(tmp_path, cfg)  # preempted: train it again
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed", "export": "g.pt"}))
    assert q.completed_run(tmp_path, cfg)
    # Recorded before a field existed (here: train.compile_backend, at its default): still the same config.
    older = "\n".join(line for line in dumps_toml(cfg).splitlines() if not line.startswith("compile_backend"))
    assert older != dumps_toml(cfg)
    (tmp_path / "config.toml").write_text(older)
    assert q.completed_run(tmp_path, cfg)
    # Another recipe: one line naming the difference, and the completed run is left alone.
    linear = load_config(REPO / "configs" / "quality.toml", [
        f'train.run_dir="{tmp_path}"', "train.seed=1", "optim.schedule=linear"])
    with pytest.raises(SystemExit, match=r"another config \(differs in optim.schedule\)"):
        q.completed_run(tmp_path, linear)
    assert (tmp_path / "config.toml").read_text() == older

"""The evaluator's result does not depend on the number of ranks, and bad inputs fail clearly on every rank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmgan import files
from cmgan.config import EvalConfig
from cmgan.data import schema
from cmgan.eval import evaluator, reference, slices

SUBJECTS = ("subjA", "subjB", "subjC")


def toy_colorize(mr: torch.Tensor) -> torch.Tensor:
    """A fixed, deterministic 'generator': (B, 1, H, W) -> (B, 3, H, W) in [-1, 1], not gray."""
    return torch.cat([mr, torch.tanh(0.6 * mr + 0.2), 0.8 * torch.sin(2 * mr)], 1)


def make_samples(n: int = 9, size: int = 32, seed: int = 0) -> list[dict]:
    """Decoded MR test samples as read_split yields them: mr, mask, label, truth, meta; 3 subjects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    out = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        r = np.hypot(yy, xx * (1 + 0.1 * i))
        label = np.select([r < 0.15, r < 0.3, r < 0.4], [3, 1, 4], 0).astype(np.uint8)
        mr = np.where(label > 0, label / 4 - 0.3 + 0.05 * rng.standard_normal((size, size)), -1).clip(-1, 1)
        truth = np.zeros((size, size, 3), np.uint8)
        truth[label == 1], truth[label == 3], truth[label == 4] = (200, 120, 110), (230, 220, 200), (90, 60, 70)
        out.append({
            "__key__": schema.slice_key(subject, i),
            schema.MR_KEY: mr.astype(np.float16),
            schema.MASK_KEY: (label > 0).astype(np.uint8),
            schema.LABEL_KEY: label,
            schema.TRUTH_KEY: truth,
            schema.META_KEY: {"subject": subject, "slice": i},
        })
    return out


def failing_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Rank 1's generator produces NaN; both ranks must raise (no rank may hang in a collective)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)

    def colorize(mr):
        out = toy_colorize(mr)
        return out * math.nan if rank == 1 else out

    samples = make_samples(4)[rank * 2: rank * 2 + 2]
    try:
        evaluator.evaluate_batches(colorize, slices.mr_batches(samples, 2), EvalConfig())
        message = "no error"
    except Exception as e:  # noqa: BLE001 - the test inspects it
        message = f"{type(e).__name__}: {e}"
    Path(out_dir, f"rank{rank}.txt").write_text(message)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_failure_on_one_rank_is_raised_on_every_rank(tmp_path):
    mp.spawn(failing_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    own = (tmp_path / "rank1.txt").read_text()
    other = (tmp_path / "rank0.txt").read_text()
    assert own.startswith("ValueError: the generator produced NaN") and "subjA_0003" in own
    assert other.startswith("RuntimeError: failed on another rank: rank 1: ValueError")


def test_aggregates_are_the_means_of_per_slice_metrics():
    samples = make_samples(4)
    cfg = EvalConfig(batch_size=3, color_min_pixels=4)
    result = evaluator.evaluate_batches(toy_colorize, slices.mr_batches(samples, 3), cfg, fid_reason="none here")
    batch = next(slices.mr_batches(samples, 4))
    rgb = toy_colorize(batch.mr)
    from cmgan.eval import structure

    per_slice = structure.structure_metrics(batch.mr, rgb)
    assert result["metrics"]["ssim"]["mean"] == pytest.approx(per_slice["ssim"].mean().item(), rel=1e-12)
    assert result["metrics"]["psnr"]["std"] == pytest.approx(per_slice["psnr"].std(unbiased=False).item(), rel=1e-9)
    assert result["metrics"]["fid"] is None and result["metrics"]["fid_unavailable"] == "none here"
    subj_a = [i for i, s in enumerate(samples) if s[schema.META_KEY]["subject"] == "subjA"]
    assert result["per_subject"]["subjA"]["count"] == len(subj_a)
    assert result["per_subject"]["subjA"]["mi"] == pytest.approx(per_slice["mi"][subj_a].mean().item(), rel=1e-12)


def test_nan_output_is_refused_naming_the_slice():
    def broken(mr):
        out = toy_colorize(mr)
        out[-1, 0, 0, 0] = math.nan
        return out

    with pytest.raises(ValueError, match=r"NaN or infinite values for slice\(s\) \['subjB_0001'\]"):
        evaluator.evaluate_batches(broken, slices.mr_batches(make_samples(2), 2), EvalConfig())


def test_nan_input_is_refused_naming_the_slice():
    samples = make_samples(3)
    samples[2][schema.MR_KEY][3, 3] = np.nan
    with pytest.raises(ValueError, match=r"input slice\(s\) \['subjC_0002'\]"):
        evaluator.evaluate_batches(toy_colorize, slices.mr_batches(samples, 4), EvalConfig())


def test_empty_set_is_refused():
    with pytest.raises(ValueError, match="no slices to evaluate"):
        evaluator.evaluate_batches(toy_colorize, slices.mr_batches([], 4), EvalConfig())


def test_mismatched_sizes_are_refused_naming_what_differs():
    with pytest.raises(ValueError, match=r"has shape \(2, 3, 16, 16\), expected \(2, 3, 32, 32\)"):
        evaluator.evaluate_batches(lambda mr: toy_colorize(mr)[..., :16, :16], slices.mr_batches(make_samples(2), 2),
                                   EvalConfig())
    samples = make_samples(2)
    samples[1][schema.TRUTH_KEY] = samples[1][schema.TRUTH_KEY][:16]
    with pytest.raises(ValueError, match=r"'subjB_0001': truth.npy has shape \(16, 32, 3\), the image \(32, 32\)"):
        list(slices.mr_batches(samples, 2))


def test_fid_is_reported_unavailable_without_weights_and_other_metrics_still_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no pytorch-fid file in the hub cache either
    model, reason = reference.load_fid_model(EvalConfig())
    assert model is None and "python -m cmgan.eval.inception convert" in reason
    model, reason = reference.load_fid_model(EvalConfig(inception_weights=str(tmp_path / "typo.pth")))
    assert model is None and "typo.pth" in reason
    result = evaluator.evaluate_batches(toy_colorize, slices.mr_batches(make_samples(3), 4), EvalConfig(),
                                        fid_reason=reason)
    assert result["metrics"]["fid"] is None and "typo.pth" in result["metrics"]["fid_unavailable"]
    assert result["metrics"]["ssim"]["count"] == 3


def test_result_json_is_written_atomically_and_strict(tmp_path):
    result = evaluator.evaluate_batches(toy_colorize, slices.mr_batches(make_samples(3), 4), EvalConfig())
    path = files.write_json(tmp_path / "m" / "metrics.json", result, allow_nan=False)  # as evaluate() writes it
    assert json.loads(path.read_text()) == result  # strict JSON (NaN would have been refused)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_records_carry_foreground_metrics_over_the_dilated_mask():
    from cmgan.eval import structure

    samples = make_samples(4)
    cfg = EvalConfig(fg_dilate=1)
    result = evaluator.evaluate_batches(toy_colorize, slices.mr_batches(samples, 4), cfg)
    batch = next(slices.mr_batches(samples, 4))
    region = structure.foreground(batch.mask, 1)
    x, y = structure.to_unit(batch.mr), structure.to_unit(structure.luminance(toy_colorize(batch.mr).double()))
    want_psnr = [10 * math.log10(1 / ((y[i] - x[i])[region[i]] ** 2).mean().item()) for i in range(4)]
    records = evaluator.slice_records(batch, toy_colorize(batch.mr), cfg, len(schema.LABEL_NAMES))
    assert [r["psnr_fg"] for r in records] == pytest.approx(want_psnr, rel=1e-12)
    assert all(r["psnr_fg"] != r["psnr"] and r["ssim_fg"] != r["ssim"] for r in records)
    assert result["metrics"]["psnr_fg"]["mean"] == pytest.approx(np.mean(want_psnr), rel=1e-12)
    subj_a = [i for i, s in enumerate(samples) if s[schema.META_KEY]["subject"] == "subjA"]
    assert result["per_subject"]["subjA"]["ssim_fg"] == pytest.approx(
        np.mean([records[i]["ssim_fg"] for i in subj_a]), rel=1e-12)
    wider = evaluator.slice_records(batch, toy_colorize(batch.mr), EvalConfig(fg_dilate=4), len(schema.LABEL_NAMES))
    assert [r["psnr_fg"] for r in wider] != [r["psnr_fg"] for r in records]  # the dilation is used


def test_without_a_mask_foreground_metrics_are_missing_not_made_up():
    samples = make_samples(2)
    for s in samples:
        del s[schema.MASK_KEY]
    result = evaluator.evaluate_batches(toy_colorize, slices.mr_batches(samples, 2), EvalConfig())
    assert result["metrics"]["ssim_fg"]["count"] == 0 and result["metrics"]["ssim_fg"]["mean"] is None
    assert result["metrics"]["ssim"]["count"] == 2


def _authors_scores(mr: torch.Tensor, rgb: torch.Tensor, win: int) -> tuple[list[float], list[float]]:
    """What the authors' script computes: 8-bit PNGs, the output read as gray, scikit-image on uint8."""
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def png(a: np.ndarray, mode: str) -> np.ndarray:  # write an 8-bit PNG in memory the usual way, read it back
        return np.asarray(Image.fromarray(a, mode))

    ssims, psnrs = [], []
    for i in range(mr.shape[0]):
        gray = np.floor((mr[i, 0].double().numpy() + 1) / 2 * 255 + 0.5).clip(0, 255).astype(np.uint8)
        color = np.floor((rgb[i].double().permute(1, 2, 0).numpy() + 1) / 2 * 255 + 0.5).clip(0, 255).astype(np.uint8)
        out_gray = np.asarray(Image.fromarray(png(color, "RGB"), "RGB").convert("L"))
        ssims.append(structural_similarity(out_gray, png(gray, "L"), win_size=win, data_range=255))
        psnrs.append(peak_signal_noise_ratio(png(gray, "L"), out_gray))
    return ssims, psnrs


def test_paper_preset_matches_scikit_image_with_the_authors_settings():
    # 128 x 128 slices fit the authors' 101-pixel window as it is.
    samples = make_samples(3, size=128)
    batch = next(slices.mr_batches(samples, 3))
    rgb = toy_colorize(batch.mr)
    records = evaluator.slice_records(batch, rgb, EvalConfig(preset="paper"), len(schema.LABEL_NAMES))
    ssims, psnrs = _authors_scores(batch.mr, rgb, 101)
    assert [r["paper_window"] for r in records] == [101] * 3
    assert [r["ssim_paper"] for r in records] == pytest.approx(ssims, abs=1e-9)
    assert [r["psnr_paper"] for r in records] == pytest.approx(psnrs, abs=1e-9)
    # Not the default definition: float luminance with a Gaussian 11 window scores differently.
    assert all(abs(r["ssim_paper"] - r["ssim"]) > 1e-3 for r in records)


def test_at_64_pixels_the_paper_window_is_clipped_to_63_and_recorded():
    samples = make_samples(2, size=64)
    result = evaluator.evaluate_batches(toy_colorize, slices.mr_batches(samples, 2), EvalConfig(preset="paper"))
    batch = next(slices.mr_batches(samples, 2))
    ssims, psnrs = _authors_scores(batch.mr, toy_colorize(batch.mr), 63)
    assert result["paper_windows"] == [63]
    assert result["metrics"]["ssim_paper"]["mean"] == pytest.approx(np.mean(ssims), abs=1e-9)
    assert result["metrics"]["psnr_paper"]["mean"] == pytest.approx(np.mean(psnrs), abs=1e-9)
    assert result["metrics"]["headline"] == ["ssim_paper", "psnr_paper"]
    assert evaluator.paper_window(64, 64) == 63 and evaluator.paper_window(256, 200) == 101
    assert evaluator.paper_window(32, 48) == 31
    settings = evaluator.settings(EvalConfig(preset="paper"), None, None, result["paper_windows"])
    assert settings["paper"]["windows_used"] == [63] and settings["preset"]["headline"] == ["ssim_paper", "psnr_paper"]

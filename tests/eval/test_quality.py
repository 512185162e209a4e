"""The quality figures tell a perfect colorist from a gray one and from a flickering one."""

from __future__ import annotations

import pytest
import torch

from cmgan.data import schema
from cmgan.eval.quality import QualityAccumulator
from cmgan.eval.slices import MR_MEMBERS, mr_batches, read_samples


def _score(demo_shards, colorize) -> dict:
    acc = QualityAccumulator(schema.LABEL_NAMES)
    for batch in mr_batches(read_samples(demo_shards / "mr", "test", 0, 1, MR_MEMBERS, 8), 8):
        acc.update(batch, colorize(batch))
    return acc.result()


def _truth(batch) -> torch.Tensor:
    return batch.truth.permute(0, 3, 1, 2).float() / 127.5 - 1


def test_the_true_colors_score_perfect_color_figures(demo_shards):
    r = _score(demo_shards, _truth)
    assert r["delta_e2000"] == pytest.approx(0, abs=1e-3)
    assert r["separation_ratio"] == pytest.approx(1, abs=1e-3) and r["separation_ab"] > 5
    assert r["flicker_ab"] == pytest.approx(r["flicker_ab_truth"], abs=1e-3)
    assert set(r["tissue_de2000"]) <= set(schema.LABEL_NAMES[1:]) and len(r["tissue_de2000"]) >= 2


def test_a_gray_output_keeps_structure_but_has_no_tissue_color(demo_shards):
    r = _score(demo_shards, lambda b: b.mr.expand(-1, 3, -1, -1))
    assert r["ssim_fg"] > 0.999 and r["psnr_fg"] > 60
    assert r["separation_ab"] < 0.05 and r["flicker_ab"] < 0.05  # neutral gray: a*, b* ~ 0 (rounding)
    assert r["delta_e2000"] > 5


def test_flicker_counts_chroma_jumps_between_adjacent_slices(demo_shards):
    # Alternate the hue of every other slice: same structure, large slice-to-slice chroma change.
    def alternating(batch):
        rgb = _truth(batch).clone()
        odd = torch.tensor([int(k.rsplit("_", 1)[1]) % 2 == 1 for k in batch.keys])
        rgb[odd] = rgb[odd][:, [2, 1, 0]]
        return rgb

    steady, jumpy = _score(demo_shards, _truth), _score(demo_shards, alternating)
    assert jumpy["flicker_ab"] > steady["flicker_ab"] + 5

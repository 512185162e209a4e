import json
import math

import pytest
import torch

from cmgan.config import load_config
from cmgan.data.schema import LABEL_NAMES
from cmgan.export import load_export
from cmgan.seg_export import SegExportError, load_segmenter
from cmgan.train.seg_pretrain import dice_ce_loss, pretrain_segmenter
from cmgan.train.trainer import train

from .conftest import tiny_overrides


def test_dice_ce_loss_is_lowest_for_the_true_labels():
    label = torch.randint(0, 5, (2, 8, 8))
    right = torch.nn.functional.one_hot(label, 5).permute(0, 3, 1, 2).float() * 20
    wrong = torch.roll(right, 1, dims=1)
    good, bad = dice_ce_loss(right, label, 1.0), dice_ce_loss(wrong, label, 1.0)
    assert good["dice"] < 1e-3 and good["ce"] < 1e-3
    assert bad["dice"] > 0.9 and bad["total"] > good["total"]


@pytest.mark.slow
def test_pretrained_segmenter_is_exported_frozen_and_feeds_the_colorization_run(demo_shards, tmp_path):
    overrides = tiny_overrides(demo_shards, tmp_path / "gan", "seg.steps=12", "seg.batch_size=4", "seg.val_every=12",
                               "seg.lr=3e-3", f"seg.run_dir='{tmp_path / 'seg'}'")
    cfg = load_config(None, overrides)
    summary = pretrain_segmenter(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert set(summary["val_dice"]) == set(LABEL_NAMES)
    assert all(0.0 <= d <= 1.0 for d in summary["val_dice"].values() if not math.isnan(d))
    lines = [json.loads(line) for line in (tmp_path / "seg" / "metrics.jsonl").read_text().splitlines()]
    ce = [r["ce"] for r in lines if "ce" in r]
    assert len(ce) == 12 and sum(ce[-3:]) < sum(ce[:3])  # Dice + CE training lowers the cross-entropy
    assert any(k.startswith("val_dice/") for k in lines[-1])
    export = tmp_path / "seg" / "export" / "seg.pt"
    assert summary["export"] == str(export)

    S, normalization, dice = load_segmenter(export, cfg.model)
    assert not S.training and not any(p.requires_grad for p in S.parameters())
    assert normalization["method"] == "percentile"
    assert dice == summary["val_dice"] and set(dice) >= {"background", "white_matter"}
    with pytest.raises(SegExportError, match="model.seg_width=4"):
        load_segmenter(export, load_config(None, ["model.seg_width=8"]).model)

    gan = load_config(None, overrides + ["model.fusion=sigmoid", f"train.seg_checkpoint='{export}'",
                                         "train.steps=2", "train.ckpt_every_steps=0"])
    result = train(gan)
    assert result["status"] == "completed"
    assert result["seg_dice"] == dice  # S's quality travels with the run it conditions
    colorizer = load_export(result["export"], autocast=None)
    assert colorizer.segmenter is not None
    assert colorizer.colorize(torch.full((1, 1, 32, 32), -1.0)).shape == (1, 3, 32, 32)


def test_dice_ignores_classes_absent_from_the_labels_without_reading_the_device():
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[:, :4] = 2  # classes 0 and 2 present; 1, 3, 4 absent
    logits = torch.nn.functional.one_hot(label, 5).permute(0, 3, 1, 2).float() * 20
    loss = dice_ce_loss(logits, label, 1.0)
    assert loss["dice"] < 1e-3  # absent classes add nothing (not a free 1.0 each, not a penalty)
    # The same value as averaging over the present classes by boolean indexing (the old, syncing form).
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(label, 5).permute(0, 3, 1, 2).float()
    dice = (2 * (probs * onehot).sum((0, 2, 3)) + 1e-6) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-6)
    wrong = torch.roll(logits, 1, dims=1)
    expected = 1 - ((2 * (wrong.softmax(1) * onehot).sum((0, 2, 3)) + 1e-6)
                    / (wrong.softmax(1).sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-6))[[0, 2]].mean()
    assert torch.allclose(dice_ce_loss(wrong, label, 1.0)["dice"], expected, atol=1e-7)
    assert dice[[0, 2]].min() > 0.99


def test_hard_dice_counts_equal_the_per_class_definition():
    from cmgan.train.seg_pretrain import dice_counts

    g = torch.Generator().manual_seed(0)
    pred, label = torch.randint(0, 4, (3, 9, 7), generator=g), torch.randint(0, 4, (3, 9, 7), generator=g)
    counts = dice_counts(pred, label, 5)
    assert counts.dtype == torch.float64 and counts.shape == (5, 2)
    for c in range(5):
        p, t = pred == c, label == c
        assert counts[c, 0] == 2 * (p & t).sum() and counts[c, 1] == p.sum() + t.sum()

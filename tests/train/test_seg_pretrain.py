import json
import math

import pytest
import torch

from cmgan.config import load_config
from cmgan.data.schema import LABEL_NAMES
from cmgan.export import load_export
from cmgan.seg_export import SegExportError, load_segmenter
from cmgan.train.seg_pretrain import pretrain_segmenter
from cmgan.train.trainer import train

from .conftest import tiny_overrides


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

"""cmgan.seg_export: the frozen segmenter S that S pretraining writes and the CycleGAN trainer loads."""

import pytest
import torch

from cmgan.config import ModelConfig
from cmgan.models import build_segmenter
from cmgan.seg_export import SegExportError, load_segmenter, save_seg_export

TINY = ModelConfig(image_size=32, width=8, seg_width=8, seg_depth=2, disc_width=8)


def test_a_saved_segmenter_loads_frozen_with_its_weights_normalization_and_dice(tmp_path):
    torch.manual_seed(0)
    S = build_segmenter(TINY).eval()
    save_seg_export(tmp_path / "export" / "seg.pt", model=TINY, state=S.state_dict(),
                    normalization={"method": "percentile"}, val_dice={"background": 0.9}, meta={"steps": 3})
    loaded, normalization, dice = load_segmenter(tmp_path, TINY)  # a run directory resolves to its export
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert normalization == {"method": "percentile"} and dice == {"background": 0.9}
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded(x), S(x))


def test_bad_segmenter_exports_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(SegExportError, match="pretrain S first"):
        load_segmenter(tmp_path / "missing.pt", TINY)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SegExportError, match="junk.pt: cannot be read"):
        load_segmenter(tmp_path / "junk.pt", TINY)
    path = save_seg_export(tmp_path / "seg.pt", model=TINY, state=build_segmenter(TINY).state_dict(),
                           normalization=None, val_dice={}, meta={})
    wider = ModelConfig(image_size=32, width=8, seg_width=16, seg_depth=2, disc_width=8)
    with pytest.raises(SegExportError, match="set model.seg_width=8 model.seg_depth=2"):
        load_segmenter(path, wider)

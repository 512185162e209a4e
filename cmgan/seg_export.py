"""The segmenter export: the frozen U-Net S that S pretraining writes and the CycleGAN trainer loads.

    save_seg_export(path, model=cfg.model, state=S.state_dict(), normalization=..., val_dice=..., meta=...)
    S, normalization, dice = load_segmenter(path, cfg.model, device)   # frozen, eval mode

The file (`<seg.run_dir>/export/seg.pt`) is a `torch.save` dict of tensors and plain values only, so it loads
with `weights_only=True`: S's weights, its architecture (seg_width, seg_depth, seg_classes: G's fusion width
depends on them), the MR normalization of the shards S was trained on (S must see the same normalization later)
and its last validation Dice ({class name: float in [0, 1]}).

It sits beside `cmgan.export` (the generator export) rather than inside it: the two are different files with
different readers (this one feeds training, that one the evaluator and the colorizer, and carries its own copy
of S's weights), so each module holds one file format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmgan import checkpoint
from cmgan.config import ModelConfig
from cmgan.models import build_segmenter
from cmgan.models.segmentation import SegUNet

SEG_FORMAT = "cmgan-seg-v1"
SEG_EXPORT = Path("export") / "seg.pt"


class SegExportError(ValueError):
    """A segmenter export is missing, of another format or does not fit the model config."""


def save_seg_export(path: str | Path, *, model: ModelConfig, state: dict, normalization: dict | None,
                    val_dice: dict[str, float], meta: dict) -> Path:
    """Write the frozen segmenter atomically (tensors and plain values: loads with weights_only=True)."""
    path = Path(path)
    payload = {
        "format": SEG_FORMAT,
        "architecture": {"seg_width": model.seg_width, "seg_depth": model.seg_depth, "seg_classes": model.seg_classes},
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "normalization": dict(normalization or {}),
        "val_dice": dict(val_dice),
        "meta": dict(meta),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_file(payload, path)
    return path


def load_segmenter(
    path: str | Path, model: ModelConfig, device: torch.device | str = "cpu"
) -> tuple[SegUNet, dict, dict[str, float]]:
    """The exported S, frozen (eval mode, requires_grad False) on `device`, the normalization it was trained
    with, and its per-class validation Dice ({class name: Dice}; empty when it had no validation split).
    The export's architecture must match `model.seg_width/seg_depth/seg_classes` (G's fusion width depends on
    it); a mismatch raises an error naming the values to set."""
    path = Path(path)
    if path.is_dir():
        path = path / SEG_EXPORT
    if not path.is_file():
        raise SegExportError(
            f"train.seg_checkpoint={str(path)!r}: no such file; pretrain S first "
            "(`python launch/train.py --stage seg ...`) or set model.fusion=none"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise SegExportError(f"{path}: cannot be read as a segmenter export ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != SEG_FORMAT:
        raise SegExportError(f"{path}: not a cmgan segmenter export (format {payload.get('format')!r})")
    arch = payload["architecture"]
    wanted = {"seg_width": model.seg_width, "seg_depth": model.seg_depth, "seg_classes": model.seg_classes}
    if arch != wanted:
        fix = " ".join(f"model.{k}={v}" for k, v in arch.items())
        raise SegExportError(f"{path}: S was trained with {arch} but the config asks for {wanted}; set {fix}")
    S = build_segmenter(model)
    S.load_state_dict(payload["state_dict"])
    S.eval().requires_grad_(False)
    return S.to(device), dict(payload.get("normalization") or {}), dict(payload.get("val_dice") or {})

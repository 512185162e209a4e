"""Segmentation loss and metric of S: soft Dice + cross-entropy for training, hard-Dice counts for validation.

    terms = dice_ce_loss(logits, label, dice_weight)    # {"ce", "dice", "total"}: scalar float32 tensors
    counts = dice_counts(pred, label, num_classes)      # (C, 2) float64 [2 |P∩T|, |P| + |T|]; Dice = c[0] / c[1]

logits (B, C, H, W) any float dtype; label, pred (B, H, W) integer class maps in [0, C). Used by S pretraining and
by the benchmarks that measure S.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, label: torch.Tensor, dice_weight: float) -> dict[str, torch.Tensor]:
    """logits (B, C, H, W) any float dtype, label (B, H, W) int64 in [0, C) -> {"ce", "dice", "total"} float32.

    Soft Dice per class over the whole batch, averaged over the classes present in the batch (a class absent from
    the labels contributes nothing instead of a free 1.0); computed in float32. No value is read on the host
    (the present classes are a 0/1 weight, not a boolean index), so on a GPU the step never waits here.
    """
    logits = logits.float()
    ce = _cross_entropy(logits, label)
    probs = logits.softmax(1)
    onehot = F.one_hot(label, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = (onehot.sum((0, 2, 3)) > 0).to(probs.dtype)
    dice = (2 * inter + 1e-6) / (denom + 1e-6)
    n_present = present.sum()
    dice_loss = torch.where(n_present > 0, 1.0 - (dice * present).sum() / n_present.clamp(min=1.0),
                            torch.zeros_like(n_present))
    return {"ce": ce, "dice": dice_loss, "total": ce + dice_weight * dice_loss}


def _cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; under deterministic algorithms on a GPU as log-softmax + gather, because CUDA's
    nll_loss2d has no deterministic kernel (it would raise)."""
    if logits.is_cuda and torch.are_deterministic_algorithms_enabled():
        return -logits.log_softmax(1).gather(1, label[:, None]).mean()
    return F.cross_entropy(logits, label)


def dice_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard-Dice sufficient statistics: (C, 2) float64 on the CPU of [2 |P∩T|, |P| + |T|] per class; pred, label
    (B, H, W) integer class maps on any device (one confusion matrix, one transfer)."""
    pred, label = pred.reshape(-1).long(), label.reshape(-1).to(pred.device).long()
    confusion = torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    confusion = confusion[: num_classes * num_classes].view(num_classes, num_classes).cpu().to(torch.float64)
    inter = confusion.diagonal()
    return torch.stack([2.0 * inter, confusion.sum(0) + confusion.sum(1)], dim=1)

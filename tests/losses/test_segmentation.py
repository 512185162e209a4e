"""cmgan.losses.segmentation: S's Dice + cross-entropy loss and its hard-Dice counts."""

import torch

from cmgan.losses.segmentation import dice_ce_loss, dice_counts


def test_dice_ce_loss_is_lowest_for_the_true_labels():
    label = torch.randint(0, 5, (2, 8, 8))
    right = torch.nn.functional.one_hot(label, 5).permute(0, 3, 1, 2).float() * 20
    wrong = torch.roll(right, 1, dims=1)
    good, bad = dice_ce_loss(right, label, 1.0), dice_ce_loss(wrong, label, 1.0)
    assert good["dice"] < 1e-3 and good["ce"] < 1e-3
    assert bad["dice"] > 0.9 and bad["total"] > good["total"]


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
    g = torch.Generator().manual_seed(0)
    pred, label = torch.randint(0, 4, (3, 9, 7), generator=g), torch.randint(0, 4, (3, 9, 7), generator=g)
    counts = dice_counts(pred, label, 5)
    assert counts.dtype == torch.float64 and counts.shape == (5, 2)
    for c in range(5):
        p, t = pred == c, label == c
        assert counts[c, 0] == 2 * (p & t).sum() and counts[c, 1] == p.sum() + t.sum()

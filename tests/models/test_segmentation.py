"""cmgan.models.segmentation: logits, and the half-resolution features G fuses, from one pass."""

import torch

from cmgan.models.segmentation import SegUNet


def test_logits_and_features_have_the_documented_shapes():
    s = SegUNet(1, num_classes=5, width=8, depth=3).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    logits, (enc, dec) = s(x, return_features=True)
    assert logits.shape == (2, 5, 32, 32)
    assert enc.shape == dec.shape == (2, 16, 16, 16) and s.feature_channels == 16
    assert not torch.allclose(enc, dec)


def test_features_equal_those_of_the_full_pass_without_the_full_resolution_stage():
    torch.manual_seed(0)
    s = SegUNet(1, width=8, depth=3).eval()
    calls = []
    s.ups[-1].register_forward_hook(lambda *a: calls.append("full-res decoder"))
    s.head.register_forward_hook(lambda *a: calls.append("head"))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    enc, dec = s.features(x)
    assert calls == []
    _, (enc2, dec2) = s(x, return_features=True)
    assert calls == ["full-res decoder", "head"]
    assert torch.equal(enc, enc2) and torch.equal(dec, dec2)


def test_segmenter_learns_a_simple_mask():
    torch.manual_seed(0)
    s = SegUNet(1, num_classes=2, width=4, depth=2)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    target = (x[:, 0] > 0).long()
    opt = torch.optim.Adam(s.parameters(), 1e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(s(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

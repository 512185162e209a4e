"""cmgan.losses.gray_edge: per-sample luma loss at batch > 1, and an edge loss that trains G."""

import pytest
import torch

from cmgan.losses.gray_edge import edge_loss, gray_loss
from cmgan.models.generator import Generator


def test_gray_loss_compares_each_image_with_its_own_input_at_batch_three():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8) * 2 - 1  # three different MR slices
    color = x.repeat(1, 3, 1, 1)  # gray(color_i) == x_i exactly
    assert gray_loss(color, x).item() == pytest.approx(0.0, abs=1e-6)
    # a (B, B, H, W) broadcast would compare image i with slice j != i too and be far from 0
    assert gray_loss(color + 0.1, x).item() == pytest.approx(0.1, abs=1e-5)
    assert gray_loss(x, color).item() == pytest.approx(0.0, abs=1e-6)  # F(y) vs gray(y) direction


def test_gray_loss_rejects_images_of_different_batch_or_size():
    with pytest.raises(ValueError, match="differ"):
        gray_loss(torch.zeros(2, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, H, W\)"):  # the public code's (B, H, W) target
        gray_loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8))


def test_edge_loss_ignores_color_and_brightness_but_sees_blur():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert edge_loss(x.repeat(1, 3, 1, 1), x).item() == pytest.approx(0.0, abs=1e-6)
    assert edge_loss(x + 0.3, x).item() == pytest.approx(0.0, abs=1e-5)  # a brightness shift has no edges
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disk = (((xx - 7.5) ** 2 + (yy - 7.5) ** 2) < 25).float().view(1, 1, 16, 16) * 2 - 1
    blur1 = torch.nn.functional.avg_pool2d(disk, 3, 1, 1, count_include_pad=False)
    assert edge_loss(blur1, disk) > 0.1  # blurring a boundary changes its edges
    assert edge_loss(blur1, disk) == pytest.approx(edge_loss(disk, blur1).item())


@pytest.mark.parametrize("kind", ["4", "8"])
def test_edge_loss_passes_gradient_into_generator(kind):
    torch.manual_seed(0)
    g = Generator(1, 3, width=4, fusion="none")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    edge_loss(g(x), x, kind).backward()
    for name, p in g.named_parameters():
        if name.endswith(("weight.original", "head.weight")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name

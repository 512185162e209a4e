"""cmgan.models.edges: BT.601 luma and the two Laplacians, checked against hand-computed values."""

import pytest
import torch

from cmgan.models.edges import edge_map, laplacian, to_gray


def test_to_gray_uses_bt601_weights():
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # pure red in [-1, 1]
    assert to_gray(red).item() == pytest.approx(0.299 - 0.587 - 0.114)
    white = torch.ones(2, 3, 4, 4)
    assert torch.allclose(to_gray(white), torch.ones(2, 1, 4, 4))
    mr = torch.rand(2, 1, 4, 4)
    assert torch.equal(to_gray(mr), mr)


def test_four_neighbour_laplacian_of_a_point_matches_the_kernel():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0
    lap = laplacian(img, "4")[0, 0]
    want = torch.zeros(5, 5)
    want[2, 2] = -4.0
    want[1, 2] = want[3, 2] = want[2, 1] = want[2, 3] = 1.0
    assert torch.equal(lap, want)


def test_eight_neighbour_laplacian_of_a_point_matches_the_kernel():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0
    lap = laplacian(img, "8")[0, 0]
    want = torch.zeros(5, 5)
    want[1:4, 1:4] = -1.0
    want[2, 2] = 8.0
    assert torch.equal(lap, want)


@pytest.mark.parametrize("kind, border", [("4", 1.0), ("8", -3.0)])
def test_laplacian_of_a_ramp_is_zero_inside_and_replicate_padded_at_the_border(kind, border):
    # f(i, j) = j. Inside, every Laplacian of a linear function is 0. At column 0 replicate padding makes the
    # left neighbour equal f = 0: 4-kernel: f(-1) + f(1) - 2 f(0) = 1; 8-kernel: -(3 * 0 + 3 * 1) + 0 = -3.
    img = torch.arange(6.0).repeat(6, 1).view(1, 1, 6, 6)
    lap = laplacian(img, kind)[0, 0]
    assert torch.equal(lap[:, 1:5], torch.zeros(6, 4))
    assert torch.equal(lap[:, 0], torch.full((6,), border))
    assert torch.equal(lap[:, 5], torch.full((6,), -border))


def test_constant_background_has_no_edges_at_the_image_border():
    background = -torch.ones(2, 3, 8, 8)
    assert torch.equal(laplacian(background), torch.zeros_like(background))
    assert torch.allclose(edge_map(background), torch.full((2, 1, 8, 8), 0.5))


def test_edge_maps_are_float32_and_differentiable_under_bf16_autocast():
    img = torch.rand(2, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = edge_map(img.bfloat16())
    assert e.dtype == torch.float32 and e.shape == (2, 1, 8, 8)
    e.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0

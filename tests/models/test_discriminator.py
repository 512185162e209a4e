"""cmgan.models.discriminator: quarter-size raw scores, and each input mode sees the judged image's own edges."""

import pytest
import torch
import torch.nn as nn

from cmgan.models.discriminator import DISC_INPUT, PatchDiscriminator
from cmgan.models.edges import edge_map
from cmgan.models.layers import is_spectral_normed

MODES = ["concat", "residual", "gate", "image"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_a_quarter_of_the_input_size(mode, channels):
    d = PatchDiscriminator(channels, width=4, input_mode=mode)
    assert d(torch.rand(2, channels, 32, 48) * 2 - 1).shape == (2, 1, 8, 12)


@pytest.mark.parametrize("kind", ["4", "8"])
@pytest.mark.parametrize("mode", MODES)
def test_each_input_mode_combines_the_image_with_its_own_edges(mode, kind):
    d = PatchDiscriminator(3, width=4, input_mode=mode, laplacian=kind)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    e = edge_map(img, kind)
    want = {"concat": torch.cat([img, e], 1), "residual": img + img * e, "gate": img * e, "image": img}[mode]
    assert torch.allclose(d.prepare(img), want)
    assert d.net[0][0].in_channels == 3 + DISC_INPUT[mode].extra_channels


@pytest.mark.parametrize("mode", MODES)
def test_gradient_reaches_the_image_through_its_edge_path(mode):
    # A fake must be judged with its own edges: D's gradient w.r.t. the image then includes the edge path.
    torch.manual_seed(0)
    d = PatchDiscriminator(3, width=4, input_mode=mode).eval()  # eval: no power iteration between the calls
    img = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_()
    (g_full,) = torch.autograd.grad(d(img).sum(), img)
    combine = DISC_INPUT[mode].combine
    e_detached = edge_map(img).detach()
    out = d.net(combine(img, e_detached) if mode != "image" else img)
    (g_no_edges,) = torch.autograd.grad(out.sum(), img)
    assert torch.allclose(g_full, g_no_edges) == (mode == "image")


def test_spectral_norm_on_all_but_the_last_conv_and_instance_norm_in_the_middle():
    d = PatchDiscriminator(1, width=4)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [is_spectral_normed(c) for c in convs] == [True] * 5 + [False]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 1]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1, 1, 1]
    assert sum(type(m).__name__ == "InstanceNorm" for m in d.modules()) == 4


def test_unknown_input_mode_and_laplacian_list_the_choices():
    with pytest.raises(ValueError, match=r"\['concat', 'residual', 'gate', 'image'\]"):
        PatchDiscriminator(1, input_mode="sum")
    with pytest.raises(ValueError, match=r"\['4', '8'\]"):
        PatchDiscriminator(1, laplacian="5")

"""cmgan.models.generator: the trunk of docs/method.md, spectral norm everywhere but the head, the fusion modes."""

import pytest
import torch
import torch.nn as nn

from cmgan.models.generator import FUSION, Generator
from cmgan.models.layers import is_spectral_normed


def seg_for(x, channels=16):
    b, _, h, w = x.shape
    return torch.randn(b, channels, h // 2, w // 2), torch.randn(b, channels, h // 2, w // 2)


def test_generator_has_about_7_3M_parameters_at_width_64():
    g = Generator(1, 3, width=64, depth=3, fusion="sigmoid", seg_channels=128)
    n = sum(p.numel() for p in g.parameters())
    assert 7.25e6 < n < 7.35e6
    # seg features of a different width add exactly one 1x1 projection per fusion point
    g2 = Generator(1, 3, width=64, fusion="sigmoid", seg_channels=64)
    assert sum(p.numel() for p in g2.parameters()) - n == 2 * (64 * 128 + 128)


@pytest.mark.parametrize("cin, cout, fusion, batch", [(1, 3, "sigmoid", 2), (1, 3, "concat", 1), (3, 1, "none", 3)])
def test_output_has_the_input_size_and_lies_in_minus_one_one(cin, cout, fusion, batch):
    torch.manual_seed(0)
    g = Generator(cin, cout, width=8, fusion=fusion, seg_channels=16)
    x = torch.rand(batch, cin, 32, 32) * 2 - 1
    y = g(x, seg_for(x) if fusion != "none" else None)
    assert y.shape == (batch, cout, 32, 32)
    assert y.min() >= -1 and y.max() <= 1 and y.std() > 0


def test_every_conv_but_the_last_is_spectrally_normalized():
    g = Generator(1, 3, width=8, fusion="sigmoid", seg_channels=12)  # 12 != 16: projections exist
    convs = [(n, m) for n, m in g.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 1 + 3 + 1 + 3 + 1 + 2  # stem, downs, bottleneck, ups, head, two projections
    for name, m in convs:
        assert is_spectral_normed(m) == (name != "head"), name
        assert (m.bias is None) == (name != "head" and "proj" not in name), name  # no bias before a norm
    norms = [m for m in g.modules() if type(m).__name__ == "InstanceNorm"]
    assert len(norms) == 8  # every conv block, not the head nor the projections


@pytest.mark.parametrize("fusion", ["none", "sigmoid", "concat"])
def test_fusion_mode_decides_whether_segmentation_features_reach_the_output(fusion):
    torch.manual_seed(0)
    g = Generator(1, 3, width=8, fusion=fusion, seg_channels=16)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    enc, dec = (s.requires_grad_() for s in seg_for(x))
    g(x, (enc, dec)).square().sum().backward()
    for s in (enc, dec):
        if fusion == "none":
            assert s.grad is None
        else:
            assert s.grad is not None and s.grad.abs().sum() > 0


def test_sigmoid_fusion_gates_the_encoder_but_the_skip_stays_ungated():
    torch.manual_seed(0)
    g = Generator(1, 3, width=8, fusion="sigmoid", seg_channels=16).eval()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    seen = {}
    g.downs[1].register_forward_hook(lambda m, i, o: seen.update(down2_in=i[0]))
    g.ups[-1].register_forward_hook(lambda m, i, o: seen.update(last_up_in=i[0]))
    enc, dec = seg_for(x)
    g(x, (enc, dec))
    e1 = g.downs[0](g.stem(x))
    assert torch.allclose(seen["down2_in"], e1 * torch.sigmoid(enc), atol=1e-6)
    assert torch.allclose(seen["last_up_in"][:, -16:], e1, atol=1e-6)  # the skip half of cat(y2, e1)


def test_batched_call_equals_per_sample_calls():
    # translate() concatenates images of one network into one batch; instance norm makes that exact.
    torch.manual_seed(0)
    g = Generator(1, 3, width=8, fusion="sigmoid", seg_channels=16).eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    enc, dec = seg_for(x)
    whole = g(x, (enc, dec))
    parts = torch.cat([g(x[i : i + 1], (enc[i : i + 1], dec[i : i + 1])) for i in range(3)])
    assert torch.allclose(whole, parts, atol=1e-5)


def test_depth_and_width_generalize():
    g = Generator(1, 3, width=4, depth=4, fusion="concat", seg_channels=8)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert g(x, seg_for(x, 8)).shape == (2, 3, 32, 32)
    assert g.downs[-1][0].out_channels == 32  # 4 * 2**4 = 64 capped at 8 * width


def test_fused_generator_without_segmentation_features_raises_a_clear_error():
    g = Generator(1, 3, width=8, fusion="sigmoid", seg_channels=16)
    with pytest.raises(ValueError, match="needs seg=.*fusion='none'"):
        g(torch.zeros(1, 1, 32, 32))


def test_wrong_segmentation_feature_shape_is_rejected():
    g = Generator(1, 3, width=8, fusion="sigmoid", seg_channels=16)
    x = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"enc features must have shape \(1, 16, 16, 16\)"):
        g(x, seg_for(x, 8))


def test_unknown_fusion_lists_the_choices():
    with pytest.raises(ValueError, match=r"\['sigmoid', 'concat', 'none'\]"):
        Generator(fusion="add")
    assert list(FUSION) == ["sigmoid", "concat", "none"]


def test_input_size_not_divisible_by_two_to_the_depth_is_rejected():
    g = Generator(3, 1, width=8, fusion="none")
    with pytest.raises(ValueError, match="divisible by 8"):
        g(torch.zeros(1, 3, 36, 36))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_instance_norm_matches_torch_in_both_memory_formats_and_keeps_channels_last(dtype):
    from cmgan.models.layers import InstanceNorm

    x = (torch.randn(3, 8, 6, 6) * 3 + 1).to(dtype)
    want = nn.functional.instance_norm(x.float())
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.clone(memory_format=fmt).requires_grad_()
        y = InstanceNorm(8)(xf)
        assert y.is_contiguous(memory_format=fmt) and y.dtype == dtype
        assert torch.allclose(y.float(), want, atol=1e-5 if dtype == torch.float32 else 5e-2)
        y.float().square().sum().backward()
        assert xf.grad is not None and xf.grad.is_contiguous(memory_format=fmt)


def test_generator_keeps_channels_last_through_the_trunk_under_bf16_autocast():
    g = Generator(1, 3, width=8, fusion="sigmoid", seg_channels=16).to(memory_format=torch.channels_last)
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    seen = []
    for m in g.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or type(m).__name__ == "InstanceNorm":
            m.register_forward_hook(lambda mod, i, o: seen.append((type(mod).__name__, o)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = g(x, seg_for(x))
    assert out.dtype == torch.bfloat16
    for name, o in seen:
        if o.shape[1] > 1:
            assert o.is_contiguous(memory_format=torch.channels_last), name


def test_spectral_norm_runs_in_float32_under_autocast_and_in_bf16_when_the_model_is_cast():
    torch.manual_seed(0)
    g = Generator(3, 1, width=4, fusion="none")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g(x)
    sn = g.stem[0].parametrizations["weight"][0]
    assert sn._u.dtype == torch.float32 and g.stem[0].weight.dtype == torch.float32
    g.bfloat16()  # a wholesale cast (as DeepSpeed bf16 does) moves the power-iteration state along
    assert g(x.bfloat16()).dtype == torch.bfloat16 and sn._u.dtype == torch.bfloat16


def test_resize_upsampling_keeps_shapes_and_spectral_norm():
    G = Generator(1, 3, width=8, depth=3, fusion="none", upsample="resize")
    out = G(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    convs = [m for m in G.ups.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(is_spectral_normed(c) for c in convs)


def test_resize_upsampling_paints_no_checkerboard_where_a_transposed_conv_does():
    # A constant feature map: a stride-2 4x4 transposed conv overlaps its taps unevenly (2 vs 1 per output in
    # each direction at the border of its period), a nearest-neighbour resize + 3x3 conv gives a constant interior.
    from cmgan.models.generator import UPSAMPLE

    torch.manual_seed(0)
    x = torch.ones(1, 4, 8, 8)
    for name, periodic in (("transpose", True), ("resize", False)):
        y = UPSAMPLE[name](4, 2)(x)[..., 2:-2, 2:-2]
        even_odd = (y[..., ::2, ::2] - y[..., 1::2, 1::2]).abs().max().item()
        assert (even_odd > 1e-3) == periodic, name

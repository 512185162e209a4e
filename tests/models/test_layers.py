"""InstanceNorm (with its fused activation) against torch's nn.InstanceNorm2d, forward and backward."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmgan.models.layers import ConvBlock, InstanceNorm, _InstanceNormActChannelsLast

ACTS = {"none": lambda: None, "relu": lambda: nn.ReLU(inplace=True), "lrelu": lambda: nn.LeakyReLU(0.2, inplace=True)}


def reference(x: torch.Tensor, act: str) -> torch.Tensor:
    """act(nn.InstanceNorm2d(affine=False)(x)) in float64, the unfused composition."""
    y = nn.InstanceNorm2d(x.shape[1], affine=False)(x)
    return {"none": y, "relu": F.relu(y), "lrelu": F.leaky_relu(y, 0.2)}[act]


@pytest.mark.parametrize("act", list(ACTS))
def test_fused_channels_last_function_passes_gradcheck_in_float64(act):
    """The fused autograd function itself (InstanceNorm routes only bf16 to it; its math is dtype-free)."""
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 4, 3, dtype=torch.float64) * 2 + 1).contiguous(memory_format=torch.channels_last)
    slope = {"none": None, "relu": 0.0, "lrelu": 0.2}[act]
    x = x.detach().requires_grad_()
    fused = lambda t: _InstanceNormActChannelsLast.apply(t, 1e-5, slope)  # noqa: E731
    assert torch.autograd.gradcheck(fused, (x,), eps=1e-6, atol=1e-6, fast_mode=True)
    assert torch.allclose(fused(x), reference(x, act), atol=1e-10)


def test_bf16_channels_last_takes_the_fused_function_and_fp32_does_not():
    """bf16 channels_last takes the fusion; fp32 keeps the unfused composition (the fusion was slower in fp32)."""
    norm = InstanceNorm(4, act=nn.ReLU())
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)

    def backward_node(t: torch.Tensor) -> str:
        return type(norm(t.detach().requires_grad_()).grad_fn).__name__

    assert backward_node(x.bfloat16()) == "_InstanceNormActChannelsLastBackward"
    assert backward_node(x) != "_InstanceNormActChannelsLastBackward"
    assert backward_node(x.bfloat16().contiguous()) != "_InstanceNormActChannelsLastBackward"


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", list(ACTS))
def test_forward_and_backward_match_instance_norm_2d(act, dtype, fmt):
    """At 64x64 (reductions over 4096 values, where a bf16 accumulation would show) in both memory formats."""
    torch.manual_seed(1)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = (torch.randn(3, 8, 64, 64) * 3 + 2).to(dtype)
    grad = torch.randn(3, 8, 64, 64).to(dtype)
    x64 = x.double().requires_grad_()
    want = reference(x64, act)
    want.backward(grad.double())

    xi = x.clone(memory_format=memory_format).requires_grad_()
    y = InstanceNorm(8, act=ACTS[act]())(xi)
    assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
    y.backward(grad.contiguous(memory_format=memory_format))
    assert xi.grad.dtype == dtype and xi.grad.is_contiguous(memory_format=memory_format)

    # bf16 keeps 8 bits: outputs up to ~4 are within 2 ulp (0.03); the gradient is compared where the
    # pre-activation is off the kink (a bf16 rounding may put a value within 0.02 of 0 on the other side).
    tol_y, tol_g = (1e-5, 1e-4) if dtype == torch.float32 else (0.05, 0.03)
    assert (y.double() - want).abs().max() <= tol_y
    off_kink = nn.InstanceNorm2d(8)(x.double()).abs() > 0.02
    if act == "none":
        off_kink = torch.ones_like(off_kink)
    err = (xi.grad.double() - x64.grad)[off_kink].abs().max()
    assert err <= tol_g * x64.grad.abs().max()


def test_fused_conv_block_equals_the_unfused_composition_under_bf16_autocast():
    torch.manual_seed(2)
    block = ConvBlock(nn.Conv2d(4, 8, 3, 1, 1, bias=False), nn.LeakyReLU(0.2, inplace=True))
    assert isinstance(block[1], InstanceNorm) and len(block) == 2
    assert set(block.state_dict()) == {"0.parametrizations.weight.original", "0.parametrizations.weight.0._u",
                                       "0.parametrizations.weight.0._v"}
    block.eval()  # freeze the spectral-norm power iteration so both paths see the same weight
    x = torch.randn(2, 4, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.leaky_relu(nn.InstanceNorm2d(8)(block[0](x).float()), 0.2)
        got = block.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert (got.float() - want).abs().max() < 0.05


def test_only_relu_and_leaky_relu_can_be_fused():
    with pytest.raises(ValueError, match="ReLU or LeakyReLU"):
        InstanceNorm(4, act=nn.Tanh())
    assert InstanceNorm(4, act=nn.Identity()).act is None


def test_output_of_the_fused_path_may_not_be_changed_in_place_before_backward():
    """The backward takes the activation's mask from the saved output; autograd must catch a later edit."""
    x = torch.randn(2, 4, 8, 8).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = InstanceNorm(4, act=nn.ReLU())(x)
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()

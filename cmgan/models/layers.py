"""Building blocks shared by the generator and the discriminator: spectral norm, instance norm, conv blocks."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


class SpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization with autocast off: computed in float32 (the dtype of its state).

    Under CUDA autocast `torch.mv` runs in fp16/bf16; the power iteration would then estimate sigma from
    rounded vectors and keep the rounding in its persistent `_u`, `_v` state. Disabling autocast here costs
    nothing (a few matrix-vector products per forward) and makes the result independent of the precision
    the rest of the network runs in. The returned weight keeps the parameter's dtype and memory format.
    (torch's class is private but has kept its constructor `(weight, n_power_iterations, dim, eps)` since 1.11.)
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # The power-iteration state `_u`, `_v` is float32 unless the whole model was cast (e.g. DeepSpeed bf16);
        # compute in its dtype so the two always match.
        dtype = getattr(self, "_u", weight).dtype
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.to(dtype)).to(weight.dtype)


def spectral_norm(module: nn.Module) -> nn.Module:
    """Register `SpectralNorm` on `module.weight` (one power iteration per training forward), like
    `torch.nn.utils.parametrizations.spectral_norm`: dim 1 for transposed convolutions, 0 otherwise."""
    if isinstance(module, nn.Sequential):  # e.g. upsample -> conv: normalize the conv
        spectral_norm(next(m for m in module if hasattr(m, "weight")))
        return module
    dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    parametrize.register_parametrization(module, "weight", SpectralNorm(module.weight, 1, dim, 1e-12))
    return module


def is_spectral_normed(module: nn.Module) -> bool:
    """True when `module.weight` is produced by a `SpectralNorm` parametrization."""
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, SpectralNorm) for p in module.parametrizations["weight"]
    )


_aten = torch.ops.aten


def _activation_slope(act: nn.Module | None) -> float | None:
    """Negative slope of a fusable activation (ReLU: 0.0, LeakyReLU: its slope), None for no activation."""
    if act is None or isinstance(act, nn.Identity):
        return None
    if isinstance(act, nn.ReLU):
        return 0.0
    if isinstance(act, nn.LeakyReLU) and act.negative_slope >= 0:
        return float(act.negative_slope)
    raise ValueError(f"InstanceNorm can fuse ReLU or LeakyReLU (slope >= 0), not {act!r}")


class _InstanceNormActChannelsLast(torch.autograd.Function):
    """Instance norm (+ ReLU / LeakyReLU) of a channels_last (B, C, H, W) CPU tensor, forward and backward.

    Per sample, batch statistics are instance statistics, so each sample goes through torch's channels-last
    batch-norm kernels (fast, statistics accumulated in float32 even for bf16; torch's channels-last
    group_norm backward is ~30x slower in bf16, and instance_norm returns NCHW, a layout conversion before every
    next conv). Compared with the plain composition (split -> batch_norm per sample -> cat -> activation) this
    writes every sample straight into one channels_last output, applies the activation in place on it, and in
    backward takes the activation's mask from that saved output: no cat in forward, no split/cat in backward,
    no separate activation node (its input is never kept).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, slope: float | None) -> torch.Tensor:
        out = torch.empty_like(x, memory_format=torch.channels_last)
        # Saved statistics have the input's dtype (what torch's own batch_norm keeps for bf16 inputs).
        mean = x.new_empty(x.shape[:2])
        invstd = x.new_empty(x.shape[:2])
        for b in range(x.shape[0]):
            _aten.native_batch_norm.out(x[b:b + 1], None, None, None, None, True, 0.0, eps,
                                        out=out[b:b + 1], save_mean=mean[b], save_invstd=invstd[b])
        if slope == 0.0:
            out.relu_()
        elif slope is not None:
            F.leaky_relu_(out, slope)
        ctx.eps, ctx.slope = eps, slope
        ctx.save_for_backward(x, out, mean, invstd)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, out, mean, invstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        if ctx.slope == 0.0:
            grad = _aten.threshold_backward(grad, out, 0)
        elif ctx.slope is not None:  # the output has the input's sign (slope > 0), so it gives the mask
            grad = _aten.leaky_relu_backward(grad, out, ctx.slope, True)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        for b in range(x.shape[0]):
            dx[b:b + 1] = _aten.native_batch_norm_backward(
                grad[b:b + 1], x[b:b + 1], None, None, None, mean[b], invstd[b], True, ctx.eps, [True, False, False]
            )[0]
        return dx, None, None


class InstanceNorm(nn.Module):
    """Instance normalization without affine parameters, optionally fused with the activation after it.

    forward(x): (B, C, H, W) -> same shape, dtype and memory format; each (sample, channel) map to zero mean,
    unit variance (eps 1e-5, biased variance), then `act` (ReLU or LeakyReLU; None: none). Same result as
    `act(nn.InstanceNorm2d(C, affine=False)(x))`, computed by whichever kernel is fast for the input:
    * CPU, channels_last, bf16: `_InstanceNormActChannelsLast` (torch's channels-last batch-norm kernels per
      sample, activation fused, no layout conversion; torch's channels-last group_norm backward is ~30x slower
      than that in bf16, measured on an AVX512-BF16 CPU, the hardware where bf16 is the chosen precision; the
      fusion saves the `cat` copies and the activation's saved input there, its speed was not measured there);
    * CPU channels_last, other dtypes (fp32): `batch_norm` in training mode on each sample, concatenated, then
      the activation in place (the composition the fused function replaces). On this project's AVX2 machine
      (fp32, alternating rounds, bench/instancenorm.py, docs/performance.md) the fused function was 1.37x
      slower than this with 1 thread, and `group_norm` on the channels_last tensor 2x slower; with 2 threads
      on the overloaded machine the order reversed (thread-scheduling waits), so fp32 keeps this path;
    * CPU NCHW: `group_norm` with one group per channel, then the activation in place;
    * CUDA: torch's native instance_norm (cuDNN), then the activation in place.
    """

    def __init__(self, channels: int, eps: float = 1e-5, act: nn.Module | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.slope = _activation_slope(act)
        self.act = act if self.slope is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if x.device.type == "cpu" and x.dim() == 4 and x.shape[1] > 1 and channels_last:
            if x.dtype == torch.bfloat16:
                return _InstanceNormActChannelsLast.apply(x, self.eps, self.slope)
            y = torch.cat([F.batch_norm(s, None, None, training=True, eps=self.eps) for s in x.split(1)])
        elif x.device.type == "cuda":
            y = F.instance_norm(x, eps=self.eps)
        else:
            y = F.group_norm(x, self.channels, eps=self.eps)
        if self.slope == 0.0:
            return y.relu_()
        return y if self.slope is None else F.leaky_relu_(y, self.slope)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, affine=False"


class ConvBlock(nn.Sequential):
    """conv (spectral norm) -> InstanceNorm (affine=False) -> activation; the activation runs inside the norm
    (fused) when there is one: [conv, InstanceNorm(act)], else [conv, act]. The conv is always index 0.

    conv: a `nn.Conv2d` or `nn.ConvTranspose2d`; act: ReLU (G) or LeakyReLU 0.2 (D).
    """

    def __init__(self, conv: nn.Module, act: nn.Module, norm: bool = True) -> None:
        layers: list[nn.Module] = [spectral_norm(conv)]
        layers.append(InstanceNorm(conv.out_channels, act=act) if norm else act)
        super().__init__(*layers)

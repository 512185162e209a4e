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


class InstanceNorm(nn.Module):
    """Instance normalization without affine parameters: each (sample, channel) map to zero mean, unit variance.

    Same result as `nn.InstanceNorm2d(c, affine=False)` (eps 1e-5, biased variance), computed by whichever
    torch kernel is fast for the input's memory format (measured on the CPU, bench/step.py):
    * NCHW: `group_norm` with one group per channel (torch's instance_norm reshapes to a (1, B*C, H, W)
      batch_norm and is slower);
    * channels_last: `batch_norm` in training mode (no running stats) on each sample, concatenated. Per
      sample, batch statistics are instance statistics; torch's channels-last batch_norm kernels are fast,
      while its channels-last group_norm backward is ~30x slower than NCHW in bf16 and instance_norm returns
      NCHW (a format conversion before every next conv). The output stays channels_last.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if x.dim() == 4 and x.shape[1] > 1 and channels_last:
            return torch.cat([F.batch_norm(s, None, None, training=True, eps=self.eps) for s in x.split(1)])
        return F.group_norm(x, self.channels, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, affine=False"


class ConvBlock(nn.Sequential):
    """conv (spectral norm) -> InstanceNorm (affine=False) -> activation.

    conv: a `nn.Conv2d` or `nn.ConvTranspose2d`; act: a module (ReLU in G, LeakyReLU 0.2 in D).
    """

    def __init__(self, conv: nn.Module, act: nn.Module, norm: bool = True) -> None:
        layers: list[nn.Module] = [spectral_norm(conv)]
        if norm:
            layers.append(InstanceNorm(conv.out_channels))
        layers.append(act)
        super().__init__(*layers)

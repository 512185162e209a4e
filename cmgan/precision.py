"""Which floating-point precision a run computes in, decided once from the hardware (`train.precision=auto`).

bf16 autocast is the fast path only where the hardware has bf16 arithmetic: CUDA devices of compute capability
8.0 or newer (Ampere on) and CPUs where oneDNN runs bf16 natively (AVX512-BF16 or AMX). Elsewhere torch emulates
bf16 and it is slower than fp32 by far: measured here on an AVX2-only AMD EPYC, a 64->64 channel 3x3 convolution
at 64x64, batch 8, took 523 ms in bf16 channels_last against 39 ms in fp32 (13x), and 8 s in bf16 NCHW. So
`auto` picks bf16 on such hardware, fp16 with a loss scaler on older GPUs (where the backend allows it), else fp32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def cuda_has_fast_bf16(device: torch.device | int | None = None) -> bool:
    """True for CUDA devices of compute capability >= 8.0 (torch.cuda.is_bf16_supported also counts emulation)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def resolve(precision: str, device_type: str, fp16_ok: bool = True) -> str:
    """The concrete precision (fp32 | bf16 | fp16) of `precision` (PRECISIONS) on a device of `device_type`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if cuda_has_fast_bf16() else ("fp16" if fp16_ok else "fp32")
    return "bf16" if device_type == "cpu" and cpu_has_fast_bf16() else "fp32"

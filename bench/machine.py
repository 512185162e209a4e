"""What a benchmark ran on, for its JSON line: figures from different machines are not comparable.

    from machine import machine_info
    result = {"bench": "...", **machine_info(), ...}

CPU model (from /proc/cpuinfo where there is one), torch's CPU capability (the widest vector ISA its kernels use:
"AVX2", "AVX512", ...), whether oneDNN runs bf16 natively here (AVX512-BF16 / AMX; without it bf16 is emulated
and far slower than fp32, so `train.precision=auto` picks fp32), the precision `auto` resolves to, intra-op
threads, logical CPUs, the CUDA device if any, the torch version, and the 1-minute load average at the call.
"""

from __future__ import annotations

import os
import platform

import torch

from cmgan.precision import cpu_has_fast_bf16, resolve


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "auto_precision": resolve("auto", device),
        "cuda": torch.cuda.get_device_name() if device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }

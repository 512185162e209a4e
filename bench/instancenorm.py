"""InstanceNorm + ReLU alone, forward + backward: the kernels cmgan can use, on the same tensors, alternating.

    python bench/instancenorm.py                                  # (2, 64, 64, 64) fp32, 5 rounds
    python bench/instancenorm.py --shape 4,64,128,128 --dtype bf16 --variants fused_bn_cl,group_norm_cl

Variants (all compute act(InstanceNorm2d(affine=False)(x))):
- fused_bn_cl:    `_InstanceNormActChannelsLast` (per-sample channels-last batch-norm kernels, ReLU fused);
- unfused_bn_cl:  the same kernels composed as before: per-sample `batch_norm`, `cat`, then ReLU;
- group_norm_cl:  `group_norm` (one group per channel) on the channels_last tensor, then ReLU;
- via_nchw:       channels_last -> NCHW copy, `group_norm`, ReLU, copy back to channels_last;
- group_norm_nchw: `group_norm` on an NCHW tensor (the layout of the fp32 NCHW baseline).
Prints ONE JSON line: median milliseconds of each and the machine (bench/machine.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from machine import machine_info

from cmgan.models.layers import _InstanceNormActChannelsLast


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


VARIANTS = {
    "fused_bn_cl": (lambda x: _InstanceNormActChannelsLast.apply(x, 1e-5, 0.0), cl),
    "unfused_bn_cl": (lambda x: F.relu(torch.cat([F.batch_norm(s, None, None, training=True, eps=1e-5)
                                                  for s in x.split(1)])), cl),
    "group_norm_cl": (lambda x: F.relu(F.group_norm(x, x.shape[1], eps=1e-5)), cl),
    "via_nchw": (lambda x: cl(F.relu(F.group_norm(x.contiguous(), x.shape[1], eps=1e-5))), cl),
    "group_norm_nchw": (lambda x: F.relu(F.group_norm(x, x.shape[1], eps=1e-5)), torch.Tensor.contiguous),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="2,64,64,64")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    x0, g0 = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    names = args.variants.split(",")

    def once(name: str) -> None:
        fn, fmt = VARIANTS[name]
        x = fmt(x0).requires_grad_()
        fn(x).backward(fmt(g0))

    for name in names:
        once(name)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:  # alternating: load from other processes falls on all alike
            t0 = time.perf_counter()
            once(name)
            times[name].append(time.perf_counter() - t0)
    print(json.dumps({"bench": "instancenorm", **machine_info(), "shape": list(shape), "dtype": args.dtype,
                      "rounds": args.rounds,
                      "median_ms_fwd_bwd": {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()}}))


if __name__ == "__main__":
    main()

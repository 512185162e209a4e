"""Operator profile of one real training step (torch.profiler): where the time of a step goes.

    python bench/profile_step.py                                   # 256x256, batch 4, width 64, cmgan's defaults
    python bench/profile_step.py --size 64 --batch 2 --width 16    # small, for a quick look

The step is `bench/trainstep.py`'s (the trainer's own build and step, identity term on with VGG19). After
`--warmup` untimed steps, one step is profiled. Prints a table of the top operators by self CPU time with their
share of the step, and ONE JSON line (last) with the step time, the top operators and the grouped shares:
convolutions (forward and backward), normalization (InstanceNorm's kernels), elementwise/other.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info
from torch.profiler import ProfilerActivity, profile
from trainstep import TrainStep, bench_setup, find_vgg

from cmgan.precision import resolve

#: Operator name fragments by group (self time of aten ops; a parent's time is not double-counted).
GROUPS = {
    "convolution": ("convolution", "conv2d", "mkldnn_conv", "conv_transpose", "_slow_conv"),
    "normalization": ("batch_norm", "group_norm", "instance_norm", "native_norm", "var_mean", "instnorm"),
    "matmul": ("mm", "addmm", "bmm", "matmul", "linear"),
}


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS.items():
        if any(k in low for k in keys):
            return group
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: what train.precision=auto picks on this machine (fp32 where bf16 is emulated)")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--vgg", default="auto", help="auto, none (pixel L1) or a weights file")
    args = p.parse_args()
    logging.disable(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="cmgan-bench-profile-") as tmp:
        setup = bench_setup(Path(tmp), args.size, args.width, find_vgg(args.vgg))
        precision = resolve(args.precision, "cuda" if torch.cuda.is_available() else "cpu")
        step = TrainStep(setup, precision, not args.nchw, args.batch)
        for _ in range(args.warmup):
            step()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    print(f"{'operator':48s} {'self ms':>10s} {'share':>7s} {'calls':>6s}")
    top = []
    for e in events[:args.top]:
        share = e.self_cpu_time_total / total
        print(f"{e.key[:48]:48s} {e.self_cpu_time_total / 1e3:10.1f} {share:7.1%} {e.count:6d}")
        top.append({"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1), "share": round(share, 4),
                    "calls": e.count})
    print(json.dumps({
        "bench": "profile", "variant": step.name, "size": args.size, "batch": args.batch, "width": args.width,
        "vgg": os.path.basename(setup.vgg) or "none", **machine_info(), "step_s_profiled": round(wall, 3),
        "group_share": {g: round(v / total, 4) for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top": top,
    }))


if __name__ == "__main__":
    main()

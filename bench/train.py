"""Training throughput of the real step, identity (VGG19 perceptual) term on, against baselines measured in the run.

    python bench/train.py                                   # 256x256, batch 4, width 64 (the paper's networks)
    python bench/train.py --size 64 --batch 2 --width 16 --rounds 2     # small, for a quick look

Variants, each its own networks in this one process (world size 1), same weights, same fixed images
(`bench/trainstep.py`: the trainer's own build and step, so DDP-free but otherwise the real loop):
- `ours`:      cmgan's defaults at `--batch`: `train.precision=auto` resolved on this machine (bf16 autocast where
               the CPU/GPU computes bf16 natively, else fp32: on an AVX2-only CPU bf16 is emulated and many times
               slower) and channels_last (`train.channels_last=true`); `--precision` forces one;
- `fp32`:      fp32, NCHW, eager, at `--batch` (what a user gets without those choices): the baseline;
- `fp32_b1`:   fp32, NCHW, eager, batch 1: the public code's published configuration (its precision, layout and
               batch; run with cmgan's networks and step, since the public code itself is not part of this repo);
- `fp32_b1xB` (with `--accum`): fp32, NCHW, eager, `--batch` micro-batches of 1 accumulated into one update
               (`train.grad_accum`): ours' effective batch at the published configuration's per-image cost;
- `ours_compiled` (with `--compile`): ours under torch.compile (compile time reported).
Also in every round: the machine's 3x3 conv throughput (128 -> 128 channels, (4, 128, S, S), S = `--conv-size`)
in ours' precision and channels_last, forward alone and forward + backward. After `--warmup` untimed steps per
variant, `--rounds` rounds each time one step of every variant and the convs, in turn (load from other processes
falls on all alike); medians are reported, with the load average and the machine (`bench/machine.py`).

Utilization = model FLOP/s of ours / conv FLOP/s (same precision, channels_last) of the same round set. Model
FLOPs (forward + backward of G, F, S, Dx, Dy and the VGG) are counted by torch.utils.flop_counter at 64x64,
batch 1, and scaled by (size/64)^2 x batch: every layer is a convolution whose cost is proportional to the pixel count.

Memory (unless `--memory-batches ''`; `--memory-only` runs just this): peak RSS (VmHWM) of a fresh process
running two steps of ours at each of the given batches; the slope over batch is the memory per image, the
intercept the fixed cost; the largest batch that fits 16 GiB is extrapolated linearly from them (an estimate,
not a run at that batch: `--memory-only --memory-batches N,N+1` around it measures it). Data loading is not in
these steps (fixed batches): bench/loader.py measures the loader against the step rate.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info
from trainstep import TrainStep, bench_setup, conv_throughput, find_vgg, step_flops

from cmgan.precision import resolve

HOST_BUDGET_GIB = 16.0
FLOP_COUNT_SIZE = 64


def memory_child(args: argparse.Namespace) -> None:
    """Two steps of ours at `--child-batch` in this fresh process; prints its peak RSS (GiB)."""
    setup = bench_setup(Path(args.root), args.size, args.width, args.vgg_file)
    step = TrainStep(setup, args.precision, True, args.child_batch)
    step(), step()
    print(json.dumps({"batch": args.child_batch, "peak_rss_gib": peak_rss_gib()}))


def peak_rss_gib() -> float:
    """This process's own peak RSS: VmHWM, the high-water mark of its address space. Not getrusage's ru_maxrss: Linux
    carries the pre-exec high-water mark into it, so a child forked from a large parent reports the parent's size
    (measured: 8.61 GiB at batch 1 and 2 alike, when the process alone peaks at 2.8 GiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure_memory(args: argparse.Namespace, root: Path, batches: list[int]) -> dict:
    rss = {}
    for b in batches:
        cmd = [sys.executable, __file__, "--child-batch", str(b), "--root", str(root), "--size", str(args.size),
               "--width", str(args.width), "--vgg", args.vgg_file or "none", "--precision", args.precision]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"memory run at batch {b} failed:\n{res.stderr[-3000:]}")
        rss[b] = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_gib"]
    out = {f"peak_rss_gib_b{b}": round(v, 3) for b, v in rss.items()}
    if len(batches) >= 2:
        n = len(batches)
        mx, my = sum(batches) / n, sum(rss.values()) / n
        slope = sum((b - mx) * (rss[b] - my) for b in batches) / sum((b - mx) ** 2 for b in batches)
        fixed = my - slope * mx
        out.update({
            "rss_gib_per_image": round(slope, 3),
            "rss_gib_fixed": round(fixed, 3),
            "max_batch_in_16gib_extrapolated": int((HOST_BUDGET_GIB - fixed) // slope) if slope > 0 else None,
        })
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=64, help="G and S width (D gets half); 64 = the paper")
    p.add_argument("--rounds", type=int, default=2, help="alternating timed rounds (one step per variant each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    p.add_argument("--vgg", default="auto", help="VGG weights of the identity term: auto, none, or a file")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="ours' precision (auto: what train.precision=auto picks on this machine)")
    p.add_argument("--conv-size", type=int, default=128, help="spatial size of the conv-throughput probe")
    p.add_argument("--no-published", action="store_true", help="skip the fp32 batch-1 variant")
    p.add_argument("--compile", action="store_true", help="add ours under torch.compile")
    p.add_argument("--accum", action="store_true", help="add fp32 NCHW, --batch micro-batches of 1 accumulated")
    p.add_argument("--memory-only", action="store_true", help="only the peak-RSS runs of --memory-batches")
    p.add_argument("--memory-batches", default="1,2", help="batches of the peak-RSS runs ('' = skip)")
    p.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    args.vgg_file = find_vgg(args.vgg)
    args.precision = resolve(args.precision, "cuda" if torch.cuda.is_available() else "cpu")
    if args.child_batch:
        memory_child(args)
        return

    if args.memory_only:  # the peak-RSS runs alone (fresh processes), without the timed rounds
        with tempfile.TemporaryDirectory(prefix="cmgan-bench-train-") as tmp:
            bench_setup(Path(tmp) / "main", args.size, args.width, args.vgg_file)
            memory = measure_memory(args, Path(tmp) / "main", [int(b) for b in args.memory_batches.split(",")])
        print(json.dumps({"bench": "train_memory", **machine_info(), "size": args.size, "width": args.width,
                          "identity_vgg": os.path.basename(args.vgg_file) or "none (pixel L1)", **memory}))
        return

    with tempfile.TemporaryDirectory(prefix="cmgan-bench-train-") as tmp:
        tmp = Path(tmp)
        setup = bench_setup(tmp / "main", args.size, args.width, args.vgg_file)
        flops_1 = step_flops(bench_setup(tmp / "count", FLOP_COUNT_SIZE, args.width, args.vgg_file)) * (
            args.size / FLOP_COUNT_SIZE) ** 2
        variants = [(args.precision, True, args.batch, False, 1), ("fp32", False, args.batch, False, 1)]
        if not args.no_published:
            variants.append(("fp32", False, 1, False, 1))
        if args.accum:
            variants.append(("fp32", False, 1, False, args.batch))
        if args.compile:
            variants.append((args.precision, True, args.batch, True, 1))
        steps = {}
        compile_s = None
        for precision, cl, batch, comp, accum in variants:
            step = TrainStep(setup, precision, cl, batch, compile=comp, accum=accum)
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                step()
            if comp:
                compile_s = time.perf_counter() - t0  # first steps: tracing and compilation
            steps[step.name] = step
        ours = steps[TrainStep.variant_name(args.precision, True, args.batch)].name
        base = TrainStep.variant_name("fp32", False, args.batch)
        load_start = os.getloadavg()[0]
        times: dict[str, list[float]] = {name: [] for name in steps}
        gpu_peak_gib = {name: 0.0 for name in steps}
        conv_fwd, conv_train = [], []
        for _ in range(args.rounds):
            for name, step in steps.items():
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                step()  # returns a Python float: on a GPU the step has finished
                times[name].append(time.perf_counter() - t0)
                if torch.cuda.is_available():
                    gpu_peak_gib[name] = max(gpu_peak_gib[name], torch.cuda.max_memory_allocated() / 2**30)
            conv_fwd.append(conv_throughput(args.precision, True, size=args.conv_size))
            conv_train.append(conv_throughput(args.precision, True, backward=True, size=args.conv_size))
        load_end = os.getloadavg()[0]
        memory = {}
        if args.memory_batches:
            memory = measure_memory(args, tmp / "main", [int(b) for b in args.memory_batches.split(",")])

    rate = {name: steps[name].images / statistics.median(t) for name, t in times.items()}
    peak_fwd, peak_train = statistics.median(conv_fwd), statistics.median(conv_train)
    achieved = flops_1 * rate[ours]
    result = {
        "bench": "train", **machine_info(), "size": args.size, "batch": args.batch, "width": args.width,
        "identity_vgg": os.path.basename(args.vgg_file) or "none (pixel L1)", "rounds": args.rounds,
        "warmup": args.warmup, "ours": ours, "baseline": base,
        "load_avg_1m_start": round(load_start, 2), "load_avg_1m_end": round(load_end, 2),
        "step_s": {name: [round(x, 3) for x in t] for name, t in times.items()},
        "images_per_s": {name: round(r, 4) for name, r in rate.items()},
        "speedup_ours_over_fp32_nchw": round(rate[ours] / rate[base], 2),
    }
    if "fp32_b1" in rate:
        result["speedup_ours_over_published_fp32_b1"] = round(rate[ours] / rate["fp32_b1"], 2)
    if args.accum:
        accum = TrainStep.variant_name("fp32", False, 1, accum=args.batch)
        result["speedup_accum_b1_over_ours"] = round(rate[accum] / rate[ours], 2)
    if args.compile:
        result["compile_s_incl_warmup"] = round(compile_s, 1)
        result["speedup_compiled_over_eager"] = round(rate[f"{ours}_compiled"] / rate[ours], 2)
    result.update({
        "model_gflop_per_image": round(flops_1 / 1e9, 2),
        "conv_probe": f"3x3 128->128 on (4, 128, {args.conv_size}, {args.conv_size}), {args.precision} channels_last",
        "conv_tflops_fwd": round(peak_fwd / 1e12, 4),
        "conv_tflops_fwd_bwd": round(peak_train / 1e12, 4),
        "model_tflops_ours": round(achieved / 1e12, 4),
        "utilization_of_conv_fwd": round(achieved / peak_fwd, 3),
        "utilization_of_conv_fwd_bwd": round(achieved / peak_train, 3),
        **memory,
    })
    if torch.cuda.is_available():  # tensors allocated by the step (the variants' weights and states included)
        result["peak_gpu_gib"] = {name: round(v, 3) for name, v in gpu_peak_gib.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Training throughput of the real loop (`cmgan.train.trainer.train`): fp32 NCHW vs bf16 autocast + channels_last.

    python bench/train.py                                   # 256x256, batch 4, the paper's widths, demo shards
    python bench/train.py --size 64 --batch 2 --width 16 --steps 3 --warmup 1    # small, for a quick look

Each variant runs `train(cfg)` in its own process (so its peak RSS is its own) on demo shards resampled to
`--size`: data stream with a worker, S (frozen, fused by sigmoid gates), G, F, Dx, Dy, pools, the per-step
agreement, logging. The first `--warmup` steps are discarded; images/s and the data-wait share (time blocked on
the loader / step time) come from the trainer's own per-step metrics over the next `--steps` steps.

Also measured in this run:
- model FLOPs of one training step (forward + backward of G, F, S, Dx, Dy), counted by
  torch.utils.flop_counter.FlopCounterMode at batch 1 and scaled by the batch;
- the machine's conv throughput (3x3 conv, 128 -> 128 channels, 128x128, batch 4) in fp32 NCHW and bf16
  channels_last; utilization = achieved model FLOP/s / that throughput (same precision);
- peak RSS of the training process per image (the loader worker is a separate process, not counted), from
  runs at batch 1 and `--batch`: the slope is the memory per image, the intercept the fixed cost; the largest
  batch that fits 16 GiB is extrapolated from them (an estimate, not a run at that batch).
Reference (not re-measured here): the paper's public code, timed with its own step on this CPU (fp32, batch 1,
256x256), does about 0.1 images/s (issue 4).

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PUBLIC_CODE_IMAGES_PER_S = 0.1
HOST_BUDGET_GIB = 16.0


def make_shards(root: Path, size: int) -> Path:
    """Demo phantoms (64^3 volumes) through the real ingest, resampled to `size` x `size` slices."""
    from shards.build import BuildOptions, build
    from shards.demo import write_sources

    dirs = write_sources(root, subjects=2, color_subjects=2, size=64, seed=0)
    common = dict(size=size, salt_file=dirs["salt"], max_count=64, split=(1.0, 0.0, 0.0))
    build([dirs["mr"]], BuildOptions(domain="mr", out=root / "mr", labels=(str(dirs["mr_labels"]),), **common))
    build([dirs["color"]], BuildOptions(domain="color", out=root / "color", **common))
    return root


def overrides(args: argparse.Namespace, root: Path, precision: str, batch: int) -> list[str]:
    cl = "true" if precision == "bf16" else "false"
    return [
        f"model.image_size={args.size}", f"model.width={args.width}", f"model.seg_width={args.width}",
        f"model.disc_width={args.width // 2}", "model.fusion=sigmoid", f"train.seg_checkpoint='{root / 'seg.pt'}'",
        f"data.mr_shards='{root / 'mr'}'", f"data.color_shards='{root / 'color'}'", f"data.batch_size={batch}",
        f"data.num_workers={args.workers}", f"train.precision={precision}", f"train.channels_last={cl}",
        f"train.steps={args.warmup + args.steps}", "train.log_every=1", "train.sample_every=0",
        "train.ckpt_every_steps=0", "train.ckpt_every_minutes=0", "train.keep_last=1",
        f"train.run_dir='{root / f'run-{precision}-b{batch}'}'",
    ]


def child(args: argparse.Namespace) -> dict:
    """One variant in this process: run the trainer, read its per-step metrics."""
    from cmgan.config import load_config
    from cmgan.train.trainer import train

    root = Path(args.root)
    cfg = load_config(None, overrides(args, root, args.child, args.child_batch))
    summary = train(cfg)
    lines = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    timed = lines[args.warmup:]
    start = lines[args.warmup - 1]["time"] if args.warmup else timed[0]["time"] - 1 / timed[0]["images_per_s"]
    span = timed[-1]["time"] - start
    step_times = [cfg.data.batch_size / r["images_per_s"] for r in timed]
    wait = sum(r["data_wait"] * t for r, t in zip(timed, step_times))
    return {
        "images_per_s": len(timed) * cfg.data.batch_size / span,
        "data_wait_share": wait / sum(step_times),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "final_losses_finite": all(v == v and abs(v) != float("inf") for v in summary["losses"].values()),
    }


def step_flops(args: argparse.Namespace, root: Path) -> float:
    """FLOPs of one training step at batch 1 (forward + backward of every network), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from cmgan.config import load_config
    from cmgan.train import distributed
    from cmgan.train.step import discriminator_forward, generator_forward
    from cmgan.train.trainer import build

    cfg = load_config(None, overrides(args, root, "fp32", 1))
    backend = distributed.setup(cfg.train, 1)
    try:
        parts = build(cfg, backend)
        x = torch.rand(1, 1, args.size, args.size) * 2 - 1
        y = torch.rand(1, 3, args.size, args.size) * 2 - 1
        with FlopCounterMode(display=False) as counter:
            with backend.frozen(parts.disc):
                images, g = generator_forward(parts.nets, x, y, cfg.loss, cfg.model.laplacian, backend.autocast())
            d = discriminator_forward(parts.nets, x, y, images.fake_x, images.fake_y, cfg.loss, backend.autocast())
            (g.total + d.total).backward()
        return float(counter.get_total_flops())
    finally:
        backend.close()


def conv_throughput(precision: str, reps: int = 5) -> float:
    """FLOP/s of a 3x3 conv 128 -> 128 on (4, 128, 128, 128): fp32 NCHW or bf16 channels_last."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device)
    x = torch.randn(4, 128, 128, 128, device=device)
    if precision == "bf16":
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), ctx:
        conv(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            conv(x)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / reps
    return 2 * 128 * 128 * 9 * 128 * 128 * 4 / dt


def run_child(args: argparse.Namespace, root: Path, precision: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", precision, "--child-batch", str(batch), "--root", str(root),
           "--size", str(args.size), "--width", str(args.width), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--workers", str(args.workers)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CMGAN_TEST_SIGNAL_AT_STEP": ""})
    if res.returncode != 0:
        raise RuntimeError(f"{precision} batch {batch} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=64, help="G and S width (D gets half); 64 = the paper")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="loader workers")
    p.add_argument("--child", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    p.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step includes start-up)")
    if args.child:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(child(args)))
        return

    with tempfile.TemporaryDirectory(prefix="cmgan-bench-train-") as tmp:
        root = make_shards(Path(tmp), args.size)
        from cmgan.config import load_config
        from cmgan.models import build_segmenter
        from cmgan.train.seg_pretrain import save_seg_export

        model = load_config(None, overrides(args, root, "fp32", 1)).model
        torch.manual_seed(0)  # S's weights do not change its cost; an untrained S stands in for a pretrained one
        save_seg_export(root / "seg.pt", model=model, state=build_segmenter(model).state_dict(),
                        normalization={}, val_dice={}, meta={"bench": True})
        fp32 = run_child(args, root, "fp32", args.batch)
        bf16 = run_child(args, root, "bf16", args.batch)
        bf16_1 = run_child(args, root, "bf16", 1) if args.batch > 1 else bf16
        flops_1 = step_flops(args, root)
    peaks = {"fp32": conv_throughput("fp32"), "bf16": conv_throughput("bf16")}
    flops = flops_1 * args.batch
    per_image = (bf16["peak_rss_gib"] - bf16_1["peak_rss_gib"]) / max(1, args.batch - 1)
    fixed = bf16_1["peak_rss_gib"] - per_image
    result = {
        "bench": "train",
        "size": args.size, "batch": args.batch, "width": args.width, "steps": args.steps, "workers": args.workers,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "fp32_images_per_s": round(fp32["images_per_s"], 3),
        "bf16_cl_images_per_s": round(bf16["images_per_s"], 3),
        "speedup_bf16_cl_over_fp32": round(bf16["images_per_s"] / fp32["images_per_s"], 2),
        "public_code_fp32_b1_images_per_s_reported": PUBLIC_CODE_IMAGES_PER_S,
        "speedup_bf16_cl_over_public_code": round(bf16["images_per_s"] / PUBLIC_CODE_IMAGES_PER_S, 1),
        "fp32_data_wait_share": round(fp32["data_wait_share"], 4),
        "bf16_cl_data_wait_share": round(bf16["data_wait_share"], 4),
        "model_gflop_per_step": round(flops / 1e9, 2),
        "conv_tflops_fp32": round(peaks["fp32"] / 1e12, 3),
        "conv_tflops_bf16_cl": round(peaks["bf16"] / 1e12, 3),
        "utilization_fp32": round(flops * fp32["images_per_s"] / args.batch / peaks["fp32"], 3),
        "utilization_bf16_cl": round(flops * bf16["images_per_s"] / args.batch / peaks["bf16"], 3),
        "peak_rss_gib_fp32": round(fp32["peak_rss_gib"], 3),
        "peak_rss_gib_bf16_cl": round(bf16["peak_rss_gib"], 3),
        "peak_rss_gib_per_image_fp32": round(fp32["peak_rss_gib"] / args.batch, 3),
        "peak_rss_gib_per_image_bf16_cl": round(bf16["peak_rss_gib"] / args.batch, 3),
        "rss_gib_per_extra_image_bf16_cl": round(per_image, 3),
        "rss_gib_fixed_bf16_cl": round(fixed, 3),
        "max_batch_in_16gib_bf16_cl_estimate": int((HOST_BUDGET_GIB - fixed) // per_image) if per_image > 0 else None,
        "peak_gpu_gib_fp32": fp32["peak_gpu_gib"], "peak_gpu_gib_bf16_cl": bf16["peak_gpu_gib"],
        "losses_finite": fp32["final_losses_finite"] and bf16["final_losses_finite"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

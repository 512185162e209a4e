"""torch.compile under DDP with several ranks, the real command: compile time, step time and recompiles.

    python bench/compile_ddp.py                     # 2 ranks, 64x64, width 16, batch 4 per rank, identity on
    python bench/compile_ddp.py --size 32 --width 8 --steps 6 --rounds 1     # a quick look

Each round runs `launch/train.py` under torchrun twice, eager then `train.compile=true` (inductor), on the same
demo shards, seed and config (the paper's networks at `--width`, S from an untrained export, identity term on
with VGG19; `bench/trainstep.py`'s overrides), with `--threads` intra-op threads per rank (default: the CPUs
split among the ranks). All rounds share one inductor cache directory, fresh for this benchmark: round 1
compiles cold, as a new job does; later rounds find the cache, as a preempted job resumed on the same
filesystem does.

From each run's metrics (`train.log_every=1`) and log (TORCH_LOGS=recompiles):
- `to_step_1_s`: wall time from the launch to step 1's metric line (start-up, and for compiled runs compiling);
  compile overhead = compiled minus eager of the same round;
- `step_s`: median time between consecutive steps after step 2 (the steady rate);
- `recompiles_after_step_1`: rank 0's recompilations logged after step 1 (0: the graphs survive DDP);
- `loss_g_rel_diff_step_1`: |compiled - eager| / eager of step 1's generator loss (inductor reorders float sums).
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info
from trainstep import bench_setup, find_vgg, overrides

from cmgan.precision import resolve

REPO = Path(__file__).resolve().parents[1]


def run_once(args: argparse.Namespace, setup, shards: Path, run_dir: Path, compiled: bool, cache: Path) -> dict:
    """One torchrun job of `args.steps` steps; its timings from metrics.jsonl and its recompiles from the log."""
    cfg = overrides(setup, args.precision, True, args.batch, compile=compiled, extra=(
        f"data.mr_shards='{shards / 'mr'}'", f"data.color_shards='{shards / 'color'}'", "data.num_workers=1",
        f"train.steps={args.steps}", "train.log_every=1", "train.sample_every=0", "train.ckpt_every_steps=0",
        "train.ckpt_every_minutes=0", "optim.schedule=constant", f"train.run_dir='{run_dir}'"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(OMP_NUM_THREADS=str(args.threads), ACCELERATE_USE_CPU="true", TORCH_LOGS="recompiles",
               TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks), "--master_port",
           str(args.port), str(REPO / "launch" / "train.py"), *cfg]
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{'compiled' if compiled else 'eager'} run failed:\n{res.stderr[-4000:]}")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in lines]
    log = res.stderr.splitlines()
    first = next(i for i, line in enumerate(log) if f"step 1/{args.steps}" in line)
    return {
        "to_step_1_s": times[0] - t0,
        "step_s": statistics.median(b - a for a, b in zip(times[1:], times[2:])),
        "loss_g_step_1": lines[0]["loss_g"],
        "recompiles_step_1": sum("[rank0]" in line and "Recompiling function" in line for line in log[:first]),
        "recompiles_after_step_1": sum("[rank0]" in line and "Recompiling function" in line for line in log[first:]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per rank (0: CPUs / ranks)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=16, help="G and S width (D gets half)")
    p.add_argument("--batch", type=int, default=4, help="per rank")
    p.add_argument("--steps", type=int, default=12, help="steps per run (the steady rate is taken after step 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (round 1 compiles with a cold cache)")
    p.add_argument("--vgg", default="auto", help="VGG weights of the identity term: auto, none, or a file")
    p.add_argument("--port", type=int, default=29517)
    args = p.parse_args()
    if args.steps < 4:
        raise SystemExit("--steps must be at least 4 (the steady rate is taken after step 2)")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.ranks)
    args.precision = resolve("auto", "cpu")  # cmgan's default on this CPU (the ranks run on the CPU)
    from shards.demo import demo

    with tempfile.TemporaryDirectory(prefix="cmgan-bench-compile-ddp-") as tmp:
        tmp = Path(tmp)
        setup = bench_setup(tmp / "setup", args.size, args.width, find_vgg(args.vgg))
        demo(tmp / "shards", subjects=3, color_subjects=3, size=args.size, seed=0)
        rounds = []
        for r in range(args.rounds):
            eager = run_once(args, setup, tmp / "shards", tmp / f"eager-{r}", False, tmp / "inductor-cache")
            compiled = run_once(args, setup, tmp / "shards", tmp / f"compiled-{r}", True, tmp / "inductor-cache")
            rounds.append({"eager": eager, "compiled": compiled})

    eager_step = statistics.median(r["eager"]["step_s"] for r in rounds)
    compiled_step = statistics.median(r["compiled"]["step_s"] for r in rounds)
    overhead = [r["compiled"]["to_step_1_s"] - r["eager"]["to_step_1_s"] for r in rounds]
    saved = eager_step - compiled_step
    print(json.dumps({
        "bench": "compile_ddp", **machine_info(), "ranks": args.ranks, "threads_per_rank": args.threads,
        "size": args.size, "width": args.width, "batch_per_rank": args.batch, "steps": args.steps,
        "rounds": args.rounds, "precision": args.precision, "channels_last": True, "baseline": "eager, same round",
        "per_round": [{mode: {k: round(v, 4) for k, v in fig.items()} for mode, fig in r.items()} for r in rounds],
        "step_s_eager": round(eager_step, 4), "step_s_compiled": round(compiled_step, 4),
        "speedup_compiled_over_eager": round(eager_step / compiled_step, 3),
        "compile_overhead_s_cold_cache": round(overhead[0], 1),
        "compile_overhead_s_warm_cache": [round(o, 1) for o in overhead[1:]],
        "steps_to_pay_back_cold": round(overhead[0] / saved) if saved > 0 else None,
        "recompiles_after_step_1": max(r["compiled"]["recompiles_after_step_1"] for r in rounds),
        "loss_g_rel_diff_step_1": max(abs(r["compiled"]["loss_g_step_1"] - r["eager"]["loss_g_step_1"])
                                      / abs(r["eager"]["loss_g_step_1"]) for r in rounds),
    }))


if __name__ == "__main__":
    main()

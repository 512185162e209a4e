"""Evaluate a trained generator: SSIM / PSNR / MI on the MR test split, FID against real color data.

    python launch/evaluate.py --checkpoint runs/x --data demo/shards/mr --real demo/shards/color
    torchrun --nproc_per_node 4 launch/evaluate.py --checkpoint runs/x --data SHARDS --real COLOR eval.batch_size=32
    srun -n 8 python launch/evaluate.py --checkpoint runs/x/export/generator.pt --data SHARDS --out m.json

--checkpoint: a run directory (-> <run>/export/generator.pt) or an export file. --real: color shards or a
pytorch-fid statistics .npz. Overrides are dotted config keys (eval.ssim_window=101 eval.ssim_kernel=uniform).
Writes the metrics JSON (rank 0) and prints a table.
"""

from __future__ import annotations

import argparse
import sys

import torch.distributed as dist


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory or generator export file")
    p.add_argument("--data", required=True, help="MR shard directory (its eval.split is evaluated)")
    p.add_argument("--real", default=None, help="real color shard directory or pytorch-fid .npz (for FID)")
    p.add_argument("--out", default=None, help="metrics JSON (default: <run>/eval.json)")
    p.add_argument("--config", default=None, help="TOML config (default: the run's config.toml)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.ssim_window=101")
    args = p.parse_args(argv)

    from rich.console import Console

    from cmgan.distenv import DistributedError, detect_env
    from cmgan.eval.evaluator import evaluate_checkpoint
    from cmgan.eval.report import result_table
    from cmgan.logs import setup_logging

    setup_logging(rank=detect_env().rank)
    try:
        result = evaluate_checkpoint(args.checkpoint, args.data, args.real, args.out, args.config, args.overrides)
    except ValueError as e:  # bad input: a clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DistributedError as e:  # GPUs given but unusable, more tasks than GPUs: what to change
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not dist.is_initialized() or dist.get_rank() == 0:
        console = Console()
        console.print(result_table(result))
        console.print(f"metrics: {result['out']}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

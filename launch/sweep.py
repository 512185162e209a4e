"""Submit a sweep of training runs to SLURM (or local subprocesses), follow it, and tabulate the results.

    python launch/sweep.py                                   # no sweep file: the end-to-end demo (launch/demo.py)
    python launch/sweep.py configs/sweeps/fusion.toml        # submit, follow, print the table
    python launch/sweep.py configs/sweeps/fusion.toml --profile example-gpu --dry-run
    python launch/sweep.py configs/sweeps/fusion.toml --status
    python launch/sweep.py configs/sweeps/fusion.toml --seeds 3     # every run x seeds 0, 1, 2; mean, std, CI
    python launch/sweep.py configs/sweeps/fusion.toml --report      # report.md + figures from what it holds
    python launch/sweep.py configs/sweeps/demo-ablations.toml --seeds 3   # the demo's ablation with CIs

Re-running a sweep skips finished runs (and finished seeds), reattaches to running ones and resubmits failed
ones (up to max_attempts). A finished sweep writes report.md (tables, metric bars with error bars, training
curves, sample grids) into its directory. The demo's sweep file needs the demo's data (`python
launch/sweep.py` builds it) and resolves its paths under ./demo as the demo does. Profiles:
slurm/profiles/<name>.toml (default: `local` when SLURM answers, else `subprocess`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", help="sweep file (TOML); omit to run the demo end to end")
    p.add_argument("--profile", help="cluster profile: a name in slurm/profiles/ or a path to a TOML file")
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted; submit nothing")
    p.add_argument("--status", action="store_true", help="show the sweep's runs and results; submit nothing")
    p.add_argument("--no-wait", action="store_true", help="submit (or reattach) and return without following")
    p.add_argument("--sweep-dir", help="directory of the sweep's state and runs (default: from the sweep file)")
    p.add_argument("--max-attempts", type=int, help="submissions per run before it stays failed")
    p.add_argument("--seeds", help="repeat every run per seed: N (seeds 0..N-1) or a list like 0,3,7; replaces "
                                   "the sweep file's `seeds`")
    p.add_argument("--report", action="store_true", help="write report.md and figures from the sweep's current "
                                                         "results; submit nothing")
    p.add_argument("--poll", type=float, help="seconds between status polls (default: the profile's poll_s)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every submission and state change")
    args = p.parse_args(argv)
    from cmgan.logs import setup_logging

    setup_logging(level=logging.INFO if args.verbose else logging.WARNING)

    if args.sweep is None:
        if args.seeds or args.report:
            p.error("--seeds/--report need a sweep file; the demo's ablation with seeds: "
                    "python launch/sweep.py configs/sweeps/demo-ablations.toml --seeds 3")
        from launch.demo import run_demo  # the end-to-end demo: shards, S, a small sweep, eval, colorize

        return run_demo(profile=args.profile, dry_run=args.dry_run) or 0

    from cmgan.sweep.cli import sweep_command
    from cmgan.sweep.spec import load_sweep
    from launch.demo import is_demo_sweep, load_demo_sweep

    # The demo's own sweep file is resolved as the demo runs it (paths under ./demo), so its seeded rerun
    # reuses the demo's data and finished seed; every other file is read as it stands.
    load = load_demo_sweep if is_demo_sweep(args.sweep) else load_sweep
    return sweep_command(
        args.sweep, profile=args.profile, dry_run=args.dry_run, status=args.status, wait=not args.no_wait,
        sweep_dir=args.sweep_dir, max_attempts=args.max_attempts, poll_s=args.poll, seeds=args.seeds,
        report=args.report, load=load,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

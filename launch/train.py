"""Train one run: `python launch/train.py --config FILE [--stage cyclegan|seg] [key=value ...]`.

Runs in every process of a job (torchrun, srun tasks, or alone). Exit status: 0 done, 75 stopped by a signal
after saving a checkpoint (run the same command again to resume), 2 bad config, 1 other errors.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="TOML config (defaults apply where it is silent)")
    p.add_argument("--stage", choices=("cyclegan", "seg"), default="cyclegan",
                   help="cyclegan: colorization (default); seg: pretrain the segmentation U-Net S")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=100")
    args = p.parse_args(argv)

    from cmgan.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.stage == "seg":
        from cmgan.train.seg_pretrain import pretrain_segmenter as run
    else:
        from cmgan.train.trainer import train as run
    from cmgan.distenv import DistributedError
    from cmgan.train.rundir import EXIT_RESUMABLE

    try:
        summary = run(cfg)
    except DistributedError as e:  # the launch does not fit the machine (GPUs, tasks, world size): say what to do
        print(f"error: {e}", file=sys.stderr)
        return 1
    # One write per line: ranks share stdout, and print's separate newline write lets their lines interleave.
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return EXIT_RESUMABLE if summary["status"] == "stopped" else 0


if __name__ == "__main__":
    sys.exit(main())

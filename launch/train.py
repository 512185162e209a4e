"""Train one run: `python launch/train.py --config FILE [--stage cyclegan|seg] [key=value ...]`.

Runs in every process of a job (torchrun, srun tasks, or alone). Exit status: 0 done, 75 stopped by a signal
after saving a checkpoint (run the same command again to resume), 2 bad config, 1 other errors. Overrides may
stand anywhere on the line (`--stage seg seg.steps=10` as well as `seg.steps=10 --stage seg`). A user error (bad
shards, a missing segmenter export, an unreadable checkpoint, a non-finite loss) ends with one line naming the
file and the problem, and exit status 1; anything else is a bug and keeps its traceback.
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
    # Intermixed: an override after `--stage seg` is still an override (plain parse_args rejects it).
    args = p.parse_intermixed_args(argv)

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
    from cmgan.train.jobframe import EXIT_RESUMABLE

    try:
        summary = run(cfg)
    except (DistributedError, *_user_errors()) as e:  # bad inputs, or a launch that does not fit the machine
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    # One write per line: ranks share stdout, and print's separate newline write lets their lines interleave.
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return EXIT_RESUMABLE if summary["status"] == "stopped" else 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the inputs (their messages name the file and the fix), not by a bug in cmgan."""
    from cmgan.checkpoint import CheckpointError
    from cmgan.data.codec import DecodeError
    from cmgan.data.intensity import NormalizationError
    from cmgan.data.manifest import ManifestError
    from cmgan.data.schema import SchemaError
    from cmgan.data.splits import DataError
    from cmgan.seg_export import SegExportError

    return (DataError, ManifestError, SchemaError, DecodeError, NormalizationError, SegExportError,
            CheckpointError, FloatingPointError)


def _one_line(e: BaseException) -> str:
    """The message of `e` on one line. An error raised in a DataLoader worker arrives re-raised as
    "Caught X in DataLoader worker process 0. Original Traceback ...": keep its last line, the original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())

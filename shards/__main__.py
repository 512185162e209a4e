"""Command line of the offline data tools: build | verify | demo (see `python -m shards <command> --help`).

Exit status: build 0 = every input built, 1 = some inputs failed (the good ones are written and the manifest lists
the failures, so `verify` fails until they are fixed or removed), 2 = nothing built / bad options;
verify 0 = no problem, 1 = problems (each printed with the file and sample key); demo like build.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cmgan.data.intensity import Normalization
from cmgan.logs import setup_logging

BUILD_HELP = """\
Build 2D slice shards from MR volumes or color photographs.
INPUTs are files or folders. MR: *.nii / *.nii.gz files, folders directly holding one DICOM series each
(.dcm/.ima or files with the DICM preamble), folders of PNG/JPEG/TIFF slices (one stack each). Color: folders of
PNG/JPEG/TIFF photographs with the background removed (transparent or black); one folder = one subject.
Labels match images by name: sub-01_T1w.nii.gz <- sub-01_T1w_seg.nii.gz, sub-01_dseg.nii.gz, ...; DICOM folders and
image stacks by folder name. Subjects get salted pseudonyms (HMAC-SHA256); the salt file (--salt-file, default
$CMGAN_SALT_FILE or ~/.config/cmgan/pseudonym-salt, created if missing) must stay outside the output and private.
--labels and --truth take several values: put the INPUTs first (or end the list with --).
Shards: at least ranks x loader workers per split, so every slot of the loader reads its own (--max-size,
--max-count). Exit status: 0 all inputs built; 1 some inputs failed (the rest is written, the manifest lists the
failures); 2 nothing built or bad options."""


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated numbers (e.g. 0.8,0.1,0.1)") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} needs three fractions train,val,test")
    return parts  # type: ignore[return-value]


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 1000000, 512M, 1G)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log every shard written")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build shards from NIfTI / DICOM / image folders", description=BUILD_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("inputs", nargs="+", metavar="INPUT")
    b.add_argument("--domain", required=True, choices=["mr", "color"])
    b.add_argument("--out", required=True, type=Path, help="output shard directory")
    b.add_argument("--labels", nargs="+", default=[], metavar="FILE_OR_GLOB", help="label maps (MR)")
    b.add_argument("--truth", nargs="+", default=[], metavar="FILE_OR_GLOB",
                   help="true color volumes (X,Y,Z,3) uint8 NIfTI matched like labels; stored for the test split")
    b.add_argument("--size", type=int, default=256, help="side of the square slices (default 256)")
    b.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="slice axis in RAS: 0 sagittal, "
                   "1 coronal, 2 axial (default)")
    b.add_argument("--max-size", type=_bytes, default=256 << 20, help="bytes per shard (default 256M)")
    b.add_argument("--max-count", type=int, default=10_000, help="samples per shard (default 10000)")
    b.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), help="train,val,test by subject")
    b.add_argument("--salt-file", type=Path, default=None)
    b.add_argument("--lower", type=float, default=Normalization.lower, help="lower intensity percentile")
    b.add_argument("--upper", type=float, default=Normalization.upper, help="upper intensity percentile")
    b.add_argument("--min-foreground", type=float, default=0.01, help="skip slices with less foreground")
    b.add_argument("--workers", type=int, default=1, help="processes reading inputs")
    b.add_argument("--overwrite", action="store_true", help="replace an existing shard set in --out")
    b.add_argument("--no-zarr", action="store_true", help="do not write volumes.zarr")
    b.add_argument("--crop-margin", type=float, default=None, help="crop each volume (color: each folder of "
                   "same-size images) in-plane to its foreground box grown by this fraction before resizing "
                   "(e.g. 0.05; default: whole slices). Stored in the normalization, so colorizers crop alike")

    v = sub.add_parser("verify", help="check a shard directory against its manifest")
    v.add_argument("dirs", nargs="+", type=Path, metavar="DIR")

    d = sub.add_parser("demo", help="write synthetic demo data (DIR/mr, DIR/color)")
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--subjects", type=int, default=6, help="MR phantoms (default 6)")
    d.add_argument("--color-subjects", type=int, default=6, help="color phantoms (default 6)")
    d.add_argument("--size", type=int, default=64, help="slice side (default 64)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int, default=1)
    d.add_argument("--max-count", type=int, default=16,
                   help="samples per shard (default 16: many shards, so ranks x workers can split them)")
    return p


def _summary(name: str, result) -> None:
    m = result.manifest
    if m is not None:
        c = m["counts"]
        print(f"{name}: {c['samples']} samples from {c['subjects']} subjects (train {c['train']}, val {c['val']}, "
              f"test {c['test']}) in {len(m['shards'])} shards -> {result.out}")
    if result.failures:
        print(f"{name}: {len(result.failures)} input(s) FAILED and were skipped:", file=sys.stderr)
        for f in result.failures:
            print(f"  {f.message}", file=sys.stderr)
    if m is None:
        print(f"{name}: nothing was built", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[-1] == "--":
        # `build IN --labels A B --`: the help tells users to end a --labels/--truth list with `--`; after the
        # last option argparse has nothing left for it and would reject it as an unknown argument.
        argv.pop()
    args = _parser().parse_args(argv)
    setup_logging(level=logging.INFO if args.verbose else logging.WARNING)
    from shards.build import BuildError, BuildOptions, build
    from shards.deid import SaltError

    try:
        if args.command == "build":
            opts = BuildOptions(
                domain=args.domain, out=args.out, size=args.size, axis=args.axis, max_size=args.max_size,
                max_count=args.max_count, split=args.split, salt_file=args.salt_file, labels=tuple(args.labels),
                truth=tuple(args.truth), normalization=Normalization(
                    lower=args.lower, upper=args.upper, crop_margin=args.crop_margin),
                min_foreground=args.min_foreground, workers=args.workers, overwrite=args.overwrite,
                zarr=not args.no_zarr)
            result = build(args.inputs, opts)
            _summary(args.domain, result)
            return result.exit_code
        if args.command == "verify":
            from shards.verify import verify

            worst = 0
            for d in args.dirs:
                problems = verify(d)
                for p in problems:
                    print(p, file=sys.stderr)
                print(f"{d}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
                worst = max(worst, 1 if problems else 0)
            return worst
        if args.command == "demo":
            from shards.demo import demo

            results = demo(args.out, args.subjects, args.color_subjects, args.size, args.seed, args.workers,
                           args.max_count)
            for name, result in results.items():
                _summary(name, result)
            return max(r.exit_code for r in results.values())
    except (BuildError, SaltError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())

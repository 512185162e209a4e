"""Command line of `launch/colorize.py` (argument parsing and the exit status; the work is `run_colorize`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cmgan.colorize.writers import FORMATS
from cmgan.logs import setup_logging

EPILOG = """\
inputs: NIfTI files (.nii/.nii.gz), DICOM series folders (one series per folder), Zarr stores written by
`python -m shards` (each subject is one volume), folders searched recursively for these, or quoted globs.
outputs under --out, mirroring each input's path relative to the INPUT it was found under:
  <key>.nii.gz (RGB24, the input's grid and affine), <key>.ome.zarr (OME-NGFF 0.5 pyramid), <key>.png (montage),
  <key>.colorize.json (done-marker), summary.json (or summary.shard-<i>-of-<n>.json).
A rerun skips volumes whose marker matches the input checksum, the model and the settings; it redoes the rest.
exit status: 0 all inputs done or skipped, 1 some failed (see the summary), 2 the run could not start.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/colorize.py", description="Colorize MRI volumes with a trained "
                                "cmgan generator export.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, Zarr stores or globs")
    p.add_argument("--checkpoint", required=True, help="generator export file, export folder or training run folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="nifti,omezarr",
                   help=f"comma-separated outputs from {','.join(FORMATS)} (default: nifti,omezarr)")
    p.add_argument("--shard", default=None, help="i/n: only shard i of n of the sorted inputs (default: from "
                   "SLURM_ARRAY_TASK_ID/COUNT and RANK/WORLD_SIZE, else all)")
    p.add_argument("--batch", type=int, default=16, help="slices per generator call (default 16)")
    p.add_argument("--axis", type=int, default=None, choices=(0, 1, 2),
                   help="slicing axis of the RAS+ volume (default: the export's, else 2 = axial)")
    p.add_argument("--smooth-chroma", type=float, default=0.0, metavar="SIGMA",
                   help="average chroma over neighbouring slices (Gaussian sigma in slices; 0 = off, default)")
    p.add_argument("--keep-luminance", action="store_true",
                   help="keep the input's brightness: output luma = the normalized MR, chroma as predicted "
                   "(structure of the input kept exactly; see docs/quality.md)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the generator (default: torch's; fewer can be faster on a busy CPU)")
    p.add_argument("--max-voxels", type=int, default=1 << 27, help="refuse larger volumes (default 512^3)")
    p.add_argument("--montage-slices", type=int, default=8, help="slices in the PNG montage (default 8)")
    p.add_argument("--profile", default=None, help="submit as a job array on this cluster profile "
                   "(slurm/profiles/<NAME>.toml or a path) instead of running here")
    p.add_argument("--jobs", type=int, default=None,
                   help="array tasks with --profile (default: min(volumes, the profile's array_parallelism))")
    p.add_argument("--no-wait", action="store_true", help="with --profile: return after submitting")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(level=logging.DEBUG if args.verbose else logging.INFO)
    log = logging.getLogger("cmgan.colorize")

    from cmgan.colorize.runner import ColorizeOptions, exit_code, run_colorize
    from cmgan.distenv import DistributedError
    from cmgan.export import ExportError

    try:
        opts = ColorizeOptions(
            checkpoint=args.checkpoint, inputs=tuple(args.inputs), out=args.out,
            formats=tuple(f.strip() for f in args.format.split(",") if f.strip()), shard=args.shard,
            batch=args.batch, axis=args.axis, smooth_chroma=args.smooth_chroma,
            keep_luminance=args.keep_luminance, precision=args.precision,
            device=args.device, threads=args.threads, max_voxels=args.max_voxels,
            montage_slices=args.montage_slices,
        )
    except ValueError as e:
        log.error("%s", e)
        return 2
    try:
        if args.profile:
            summary = _submit(opts, args)
            if summary is None:
                return 0
        else:
            reporter = None
            if not args.quiet and sys.stderr.isatty():
                from cmgan.colorize.progress import RichReporter

                reporter = RichReporter()
            summary = run_colorize(opts, reporter)
    except (ExportError, ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    except DistributedError as e:  # GPUs given to the job but unusable: the reason and what to do
        log.error("%s", e)
        return 1
    c = summary["counts"]
    log.info("%d done, %d skipped, %d failed of %d; %s slices/s; summary in %s", c["done"], c["skipped"],
             c["failed"], c["inputs"], summary.get("slices_per_s"), args.out)
    return exit_code(summary)


def _submit(opts, args):  # noqa: ANN001, ANN202 - argparse namespace
    from cmgan.cluster import load_profile
    from cmgan.colorize.inputs import discover
    from cmgan.colorize.submit import submit_colorize
    from cmgan.export import resolve_export_path

    resolve_export_path(opts.checkpoint)  # a wrong path fails here, not in every array task
    profile = load_profile(args.profile)
    jobs = args.jobs
    if jobs is None:
        found, _ = discover(list(opts.inputs), exclude=[opts.out])
        jobs = max(1, min(len(found), profile.array_parallelism))
    return submit_colorize(opts, profile, jobs, wait=not args.no_wait)

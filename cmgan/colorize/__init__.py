"""Batch colorization of MRI archives with a trained generator export.

    inputs.py       find volumes (NIfTI, DICOM series, shards Zarr), keys, checksums, deterministic sharding
    volume.py       normalize exactly as the shards were built, slice, colorize in batches, reassemble
    consistency.py  colour flicker between adjacent slices (Lab) and optional chroma smoothing along the axis
    writers.py      RGB24 NIfTI on the input's grid, OME-NGFF 0.5 pyramid, PNG montage; all atomic
    markers.py      done-markers (input checksum + model id + settings) for resumable reruns
    runner.py       one process's shard: loader / generator / writer stages and the summary JSON
    submit.py       the same as a submitit job array on a cluster profile
    progress.py     rich progress bars (launcher only)
    cli.py          the command line of launch/colorize.py
"""

from cmgan.colorize.inputs import Input, Shard, discover, parse_shard, partition, shard_from_env
from cmgan.colorize.runner import ColorizeOptions, exit_code, run_colorize

__all__ = ["ColorizeOptions", "Input", "Shard", "discover", "exit_code", "parse_shard", "partition",
           "run_colorize", "shard_from_env"]

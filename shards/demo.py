"""`python -m shards demo --out DIR`: synthetic, deterministic data for both domains, built by the real ingest.

Writes the sources first, then runs the same `build` as for user data:
    DIR/sources/mr/sub-NN_T1w.nii.gz         T1-like phantoms (stored LPS-oriented, so reorientation is exercised)
    DIR/sources/mr_labels/sub-NN_dseg.nii.gz 5-class labels (schema.LABEL_NAMES)
    DIR/sources/mr_truth/sub-NN_truth.nii.gz (X, Y, Z, 3) uint8 true cryosection colors of each MR phantom
    DIR/sources/color/body-NN/slice-KKK.png  color sections of OTHER phantoms (unpaired), background black
    DIR/sources/demo-salt                    fixed salt (synthetic subjects: pseudonyms need no secrecy here)
    DIR/mr, DIR/color                        shard sets with manifests; DIR/mr/volumes.zarr holds the MR volumes
The MR test split carries `truth.npy` per slice (and a `truth` array in Zarr) to measure color correctness.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from cmgan.data.slicing import take_slice
from shards import phantoms
from shards.build import BuildOptions, BuildResult, build

log = logging.getLogger(__name__)


def _save_lps(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save a RAS-canonical array flipped to LPS voxel order (as DICOM converters often write it)."""
    flipped = np.ascontiguousarray(data[::-1, ::-1])
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3] = data.shape[0] - 1
    flip[1, 3] = data.shape[1] - 1
    img = nib.Nifti1Image(flipped, affine @ flip)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_sources(out: Path, subjects: int, color_subjects: int, size: int, seed: int) -> dict[str, Path]:
    src = out / "sources"
    dirs = {k: src / k for k in ("mr", "mr_labels", "mr_truth", "color")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(subjects):
        ph = phantoms.make_phantom(seed * 100_003 + i, size)
        name = f"sub-{i + 1:02d}"
        _save_lps(phantoms.mri(ph), ph.affine, dirs["mr"] / f"{name}_T1w.nii.gz")
        _save_lps(ph.labels, ph.affine, dirs["mr_labels"] / f"{name}_dseg.nii.gz")
        _save_lps(phantoms.color(ph), ph.affine, dirs["mr_truth"] / f"{name}_truth.nii.gz")
    for i in range(color_subjects):
        # Other anatomies (different seeds), sampled 1.5x finer, like photographs of higher resolution than MRI.
        ph = phantoms.make_phantom(seed * 100_003 + 50_000 + i, int(size * 1.5))
        rgb = phantoms.color(ph)
        folder = dirs["color"] / f"body-{i + 1:02d}"
        folder.mkdir(exist_ok=True)
        for k in range(rgb.shape[2]):
            Image.fromarray(take_slice(rgb, 2, k)).save(folder / f"slice-{k:03d}.png")
    salt = src / "demo-salt"
    salt.write_text(hashlib.sha256(f"cmgan-demo-{seed}".encode()).hexdigest() + "\n")
    dirs["salt"] = salt
    return dirs


def demo(out: str | Path, subjects: int = 6, color_subjects: int = 6, size: int = 64, seed: int = 0,
         workers: int = 1, max_count: int = 16) -> dict[str, BuildResult]:
    """Write the demo sources and build DIR/mr and DIR/color; returns the two build results."""
    out = Path(out)
    dirs = write_sources(out, subjects, color_subjects, size, seed)
    # Several small shards per split, so multi-rank x multi-worker loading has shards to split.
    common = dict(size=size, axis=2, salt_file=dirs["salt"], workers=workers, overwrite=True, max_count=max_count)
    mr = build([dirs["mr"]], BuildOptions(domain="mr", out=out / "mr", labels=(str(dirs["mr_labels"]),),
                                          truth=(str(dirs["mr_truth"]),), **common))
    color = build([dirs["color"]], BuildOptions(domain="color", out=out / "color", **common))
    return {"mr": mr, "color": color}

"""Fixtures for the shard tests: real anatomy (MNI152 2 mm from nilearn, offline) as NIfTI sources with labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="session")
def mni_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t1 float32, labels uint8, affine) of the MNI152 2009 template at 2 mm (99 x 117 x 95, RAS).

    Labels from the template's tissue maps: 1 cortex (gray matter > 0.5), 3 white matter (> 0.5), 4 CSF (the rest
    of the brain mask).
    """
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    labels = np.zeros(t1.shape, np.uint8)
    labels[brain] = 4
    labels[brain & (gm > 0.5)] = 1
    labels[brain & (wm > 0.5)] = 3
    return np.asarray(t1.get_fdata(), np.float32), labels, np.asarray(t1.affine, np.float64)


@pytest.fixture
def salt_file(tmp_path: Path) -> Path:
    path = tmp_path / "private" / "salt"
    path.parent.mkdir()
    path.write_text("0123456789abcdef0123456789abcdef-test-salt\n")
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path

"""`python -m shards demo`: deterministic phantoms of both domains, built and verified through the real ingest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmgan.data.splits import read_split
from cmgan.data.volumes import read_volume
from shards import phantoms
from shards.__main__ import main
from shards.verify import verify


def test_demo_writes_verified_unpaired_domains_with_truth_for_the_mr_test_split(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path / "a"), "--subjects", "3", "--color-subjects", "3", "--size", "32",
                 "--seed", "4"]) == 0
    mr, color = tmp_path / "a" / "mr", tmp_path / "a" / "color"
    assert verify(mr) == [] and verify(color) == []
    m_mr = json.loads((mr / "manifest.json").read_text())
    m_color = json.loads((color / "manifest.json").read_text())
    assert m_mr["label_names"] == ["background", "cortex", "subcortical_gm", "white_matter", "csf"]
    assert set(m_mr["label_values"]) == {0, 1, 2, 3, 4}
    subjects_mr = {v["subject"] for v in m_mr["volumes"].values()}
    subjects_color = {v["subject"] for v in m_color["volumes"].values()}
    assert len(subjects_mr) == 3 and len(subjects_color) == 3 and not subjects_mr & subjects_color  # unpaired

    assert all("truth.npy" not in s for s in read_split(mr, "train", keys=None))
    test = list(read_split(mr, "test", keys=None))
    assert test and all("truth.npy" in s for s in test)
    label = np.concatenate([s["label.npy"].ravel() for s in test])
    truth = np.concatenate([s["truth.npy"].reshape(-1, 3) for s in test]).astype(np.float32)
    # Cryosection colors: white matter pale cream, cortex pink-brown, CSF dark blue-gray.
    wm, cortex, csf = (truth[label == c].mean(0) for c in (3, 1, 4))
    assert wm.sum() > cortex.sum() > csf.sum() and cortex[0] > cortex[2] and csf[2] > csf[0]
    assert (truth[label == 0] == 0).all()

    vid = next(v for v, info in m_mr["volumes"].items() if info["split"] == "test")
    vol = read_volume(mr / "volumes.zarr" / vid)
    assert vol.shape == tuple(m_mr["volumes"][vid]["shape"]) and vol.spacing == (6.0, 6.0, 6.0)

    assert main(["demo", "--out", str(tmp_path / "b"), "--subjects", "3", "--color-subjects", "3", "--size", "32",
                 "--seed", "4"]) == 0
    again = json.loads((tmp_path / "b" / "mr" / "manifest.json").read_text())
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in m_mr["shards"]]


def test_phantoms_vary_in_shape_and_have_every_tissue() -> None:
    a, b = phantoms.make_phantom(1, 32), phantoms.make_phantom(2, 32)
    assert not np.array_equal(a.tissue, b.tissue)
    assert set(np.unique(a.tissue)) == set(range(8))
    t1 = phantoms.mri(a)
    means = {t: t1[a.tissue == t].mean() for t in (phantoms.WM, phantoms.CORTEX, phantoms.CSF)}
    assert means[phantoms.WM] > means[phantoms.CORTEX] > means[phantoms.CSF]  # T1 contrast
    assert t1.min() >= 0 and np.isfinite(t1).all()

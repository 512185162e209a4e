"""The `python -m shards` command line as users type it."""

from __future__ import annotations

from cmgan.data.manifest import read_manifest
from shards.__main__ import main
from shards.demo import write_sources


def test_build_accepts_the_double_dash_that_ends_a_labels_list(tmp_path, capsys):
    dirs = write_sources(tmp_path / "src", 1, 0, 32, seed=1)
    image = next(dirs["mr"].glob("*.nii.gz"))
    label = next(dirs["mr_labels"].glob("*.nii.gz"))
    out = tmp_path / "mr"
    code = main(["build", str(image), "--domain", "mr", "--out", str(out), "--size", "32",
                 "--salt-file", str(dirs["salt"]), "--labels", str(label), "--"])
    assert code == 0, capsys.readouterr().err
    assert all(v["labelled"] for v in read_manifest(out)["volumes"].values())

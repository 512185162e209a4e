"""`launch/evaluate.py` on real demo shards and a real export: one process and two torchrun ranks agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    # The same thread count in both runs: kernels may sum in another order with another count.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_one_process_and_two_torchrun_ranks_write_the_same_metrics(tmp_path, demo_shards, demo_run, fid_weights):
    def args(name: str) -> list[str]:
        return ["launch/evaluate.py", "--checkpoint", str(demo_run), "--data", str(demo_shards / "mr"),
                "--real", str(demo_shards / "color"), "--out", str(tmp_path / f"{name}.json"),
                f"eval.inception_weights={fid_weights}", f"eval.stats_cache={tmp_path / name}",
                "eval.fid_dims=192", "eval.batch_size=4"]

    single = subprocess.run([sys.executable, *args("one")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    assert "SSIM (Y, gaussian 11)" in single.stdout and "FID (192-d)" in single.stdout
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571"]
    double = subprocess.run([*torchrun, *args("two")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert double.returncode == 0, double.stderr

    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["count"] == b["count"] > 0 and a["metrics"]["fid"] > 0
    assert b["metrics"]["fid"] == pytest.approx(a["metrics"]["fid"], rel=1e-9)  # real stats summed in another order
    for r in (a, b):
        r["metrics"].pop("fid")
    assert a["metrics"] == b["metrics"]  # every slice colorized in the same batch: bitwise equal
    assert a["per_subject"] == b["per_subject"]
    assert "delta_e2000" in a["metrics"] and "color_spread" in a["metrics"]  # the demo's truth was used
    # Both computed the real statistics (fresh caches) under the same key, to the same values.
    (fa,), (fb,) = (list((tmp_path / n).glob("real-*.npz")) for n in ("one", "two"))
    assert fa.name == fb.name
    np.testing.assert_allclose(np.load(fb)["mu"], np.load(fa)["mu"], rtol=1e-12)


def test_a_bad_checkpoint_gives_a_clear_error_and_exit_status_2(tmp_path, demo_shards, capsys):
    import runpy

    main = runpy.run_path(str(ROOT / "launch" / "evaluate.py"))["main"]
    assert main(["--checkpoint", str(tmp_path / "nope"), "--data", str(demo_shards / "mr")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "no generator export found" in err

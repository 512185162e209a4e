"""A seeded sweep runs every configuration once per seed as its own job; a rerun with more seeds submits only
the new ones. The jobs run the toy trainer (real SGD whose data and init come from train.seed) as subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cmgan.sweep import SweepRunner, build_sweep, load_profile, run_sweep

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the jobs import tests.slurm.toy_train
    sys.path.insert(0, str(REPO))

from tests.slurm.helpers import TOY_ENTRY, reference_weights  # noqa: E402

STEPS = 3


def _sweep(tmp_path: Path, shards: Path, seeds: list[int]):
    data = {"name": "seeded", "entry": TOY_ENTRY, "seeds": seeds, "reference": "b",
            "overrides": [f"train.steps={STEPS}", "train.ckpt_every_steps=0", f'data.mr_shards="{shards}"'],
            "runs": [{"name": "a", "overrides": ["loss.edge=0.0"]}, {"name": "b"}]}
    return build_sweep(data, base_dir=tmp_path, sweep_dir=tmp_path / "sweep")


@pytest.mark.slow  # six subprocess jobs (each imports torch): ~30 s on an idle 2-core machine
def test_each_seed_is_its_own_job_with_its_seed_and_reruns_skip_finished_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CMGAN_TOY_STEP_S", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    shards = tmp_path / "shards"
    shards.mkdir()
    profile = load_profile("subprocess").with_resources({"poll_s": 0.3})

    first = {s.name: s for s in run_sweep(_sweep(tmp_path, shards, [0, 1]), profile, evaluate=False, timeout_s=300)}
    assert sorted(first) == ["a-s0", "a-s1", "b-s0", "b-s1"]
    assert all(s.status == "done" for s in first.values()), {n: s.error for n, s in first.items()}
    assert len({s.job_id for s in first.values()}) == 4  # one job per (configuration, seed)
    # The toy's weights after training depend only on its seed: each job trained with its own seed.
    for name, s in first.items():
        assert s.result["train"]["weights"] == reference_weights(tmp_path / name, shards, STEPS, seed=s.seed), name
    assert first["a-s0"].result["train"]["weights"] != first["a-s1"].result["train"]["weights"]

    bigger = _sweep(tmp_path, shards, [0, 1, 2])
    plan = {item.name: item.action for item in SweepRunner(bigger, profile).plan()}
    assert plan == {"a-s0": "skip", "a-s1": "skip", "b-s0": "skip", "b-s1": "skip", "a-s2": "submit",
                    "b-s2": "submit"}
    again = {s.name: s for s in run_sweep(bigger, profile, evaluate=False, timeout_s=300)}
    assert all(s.status == "done" for s in again.values())
    assert all(again[n].job_id == first[n].job_id and again[n].attempts == 1 for n in first)  # not rerun
    assert again["b-s2"].seed == 2 and again["b-s2"].config == "b"
    summary = __import__("json").loads((bigger.sweep_dir / "summary.json").read_text())
    assert summary["reference"] == "b" and [c["runs"] for c in summary["configs"]] == [3, 3]

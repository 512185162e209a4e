"""A sweep of tiny real runs on SLURM: one job array, evaluated, failures reported per run, re-runs idempotent."""

from __future__ import annotations

import csv
import json

import pytest

from cmgan.sweep import SweepRunner, run_sweep
from tests.slurm.helpers import real_sweep, sweep_jobs

pytestmark = pytest.mark.slurm

STEPS = 6


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_shards, local_profile):
    """Three good runs, one with an invalid config, one whose shards are missing (fails when it runs)."""
    runs = [
        {"name": "paper"},
        {"name": "edge-off", "overrides": ["loss.edge=0.0"]},
        {"name": "cycle-5", "overrides": ["loss.cycle=5.0"]},
        {"name": "bad-config", "overrides": ["model.fusion=sideways"]},
        {"name": "no-data", "overrides": ["data.mr_shards='/nonexistent/shards/mr'"]},
    ]
    sweep = real_sweep(tmp_path_factory.mktemp("sweep"), demo_shards, runs, STEPS, "tiny", max_attempts=2)
    states = {s.name: s for s in run_sweep(sweep, local_profile, timeout_s=240)}
    return sweep, states, local_profile


@pytest.mark.slow
def test_sweep_of_tiny_runs_completes_as_one_job_array_evaluated_and_rerun_submits_nothing(finished):
    sweep, states, profile = finished
    good = [states[n] for n in ("paper", "edge-off", "cycle-5")]
    assert [s.status for s in good] == ["done"] * 3, [s.error for s in good]
    assert all(s.result["train"]["status"] == "completed" and s.result["train"]["steps"] == STEPS for s in good)
    assert len({json.dumps(s.result["train"]["losses"], sort_keys=True) for s in good}) == 3  # different objectives
    # the independent runs (and no-data's first attempt) went out as one array: ids <array>_<index>
    assert len({s.job_id.split("_")[0] for s in good}) == 1 and all("_" in s.job_id for s in good)
    # each finished run was evaluated in its job; the table holds the metrics
    rows = {r["run"]: r for r in csv.DictReader(open(sweep.sweep_dir / "results.csv"))}
    assert list(rows) == ["paper", "edge-off", "cycle-5", "bad-config", "no-data"]
    for s in good:
        assert -1.0 <= s.metrics["ssim"] <= 1.0 and s.metrics["psnr"] > 0 and s.metrics["count"] == 8
        assert float(rows[s.name]["ssim"]) == pytest.approx(s.metrics["ssim"])
        assert rows[s.name]["steps"] == str(STEPS)
        assert (sweep.sweep_dir / "runs" / s.name / "export" / "generator.pt").is_file()
    assert json.loads((sweep.sweep_dir / "results.json").read_text())[0]["status"] == "done"

    jobs_before = sweep_jobs(sweep)
    assert len(jobs_before) == 2  # the array, and no-data's second attempt
    again = {s.name: s for s in run_sweep(sweep, profile, timeout_s=60)}
    assert set(sweep_jobs(sweep)) == set(jobs_before), "a finished sweep submitted new jobs when run again"
    for name, s in again.items():
        assert (s.status, s.job_id, s.attempts) == (states[name].status, states[name].job_id, states[name].attempts)
    assert [item.action for item in SweepRunner(sweep, profile).plan()] == ["skip"] * 3 + ["failed"] * 2


def test_broken_runs_are_reported_failed_with_their_errors_while_the_others_finish(finished):
    sweep, states, _ = finished
    assert all(states[n].status == "done" for n in ("paper", "edge-off", "cycle-5"))
    bad = states["bad-config"]
    assert bad.status == "failed" and bad.attempts == 0 and bad.job_id is None
    assert "model.fusion='sideways'" in bad.error and "sigmoid" in bad.error
    missing = states["no-data"]
    assert missing.status == "failed" and missing.attempts == 2  # resubmitted once, up to max_attempts
    assert "/nonexistent/shards/mr" in missing.error
    assert "Traceback" in missing.traceback
    assert len(missing.history) == 1 and missing.history[0]["job_id"] != missing.job_id
    on_disk = json.loads((sweep.sweep_dir / "state" / "no-data.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["error"] == missing.error

"""The submitting process may die at any point: a re-run finds its jobs again and never submits duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from cmgan.sweep import StateStore, run_sweep
from cmgan.sweep.runner import CRASH_HOOK
from tests.slurm.helpers import TOY_ENTRY, sweep_jobs, wait_until

pytestmark = pytest.mark.slurm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_sweep_file(path, shards, steps: int, names: list[str]) -> None:
    runs = "".join(f'[[runs]]\nname = "{n}"\noverrides = ["train.seed={i}"]\n' for i, n in enumerate(names))
    path.write_text(
        f'name = "{path.stem}-{uuid.uuid4().hex[:6]}"\nentry = "{TOY_ENTRY}"\n'
        f'overrides = ["train.steps={steps}", "train.ckpt_every_steps=0", \'data.mr_shards="{shards}"\']\n{runs}'
    )


def _launch(sweep_file, sweep_dir, env=None):
    cmd = [sys.executable, os.path.join(REPO, "launch", "sweep.py"), str(sweep_file), "--profile", "local",
           "--sweep-dir", str(sweep_dir), "--poll", "0.5"]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_submitter_is_replaced_by_a_rerun_that_reattaches_instead_of_duplicating(
    tmp_path, toy_env, local_profile
):
    from cmgan.sweep import load_sweep

    sweep_file = tmp_path / "reattach.toml"
    _write_sweep_file(sweep_file, toy_env, steps=40, names=["a", "b"])
    sweep = load_sweep(sweep_file, sweep_dir=tmp_path / "sweep")
    store = StateStore(sweep.sweep_dir)
    proc = _launch(sweep_file, sweep.sweep_dir)
    try:
        wait_until(lambda: all((s := store.load(n)) and s.status == "running" for n in ("a", "b")), 90,
                   "both runs to be running")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {n: store.load(n) for n in ("a", "b")}
    wait_until(lambda: len(sweep_jobs(sweep)) == 1, 30, "accounting to record the submission")  # one array
    jobs = sweep_jobs(sweep)
    final = {s.name: s for s in run_sweep(sweep, local_profile, timeout_s=120)}
    for n in ("a", "b"):
        assert final[n].status == "done", final[n].error
        assert final[n].job_id == before[n].job_id and final[n].attempts == 1
        assert final[n].result["train"]["step"] == 40 and final[n].result["restarts"] == 0
    # still the one submission (its array tasks' ids appear in accounting as they start: compare names)
    assert set(sweep_jobs(sweep)) == set(jobs), "the re-run submitted jobs again"


def test_a_crash_between_submission_and_recording_the_job_id_is_resolved_by_the_job_name(
    tmp_path, toy_env, local_profile
):
    from cmgan.sweep import load_sweep

    sweep_file = tmp_path / "crash.toml"
    _write_sweep_file(sweep_file, toy_env, steps=5, names=["only"])
    sweep = load_sweep(sweep_file, sweep_dir=tmp_path / "sweep")
    proc = _launch(sweep_file, sweep.sweep_dir, env={CRASH_HOOK: "1"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 70, out.decode()
    crashed = StateStore(sweep.sweep_dir).load("only")
    assert crashed.status == "submitting" and crashed.job_id is None and crashed.token
    wait_until(lambda: len(sweep_jobs(sweep)) == 1, 30, "accounting to record the submission")
    ((name, (submitted,)),) = sweep_jobs(sweep).items()  # the job did reach SLURM
    assert name == crashed.token

    (s,) = run_sweep(sweep, local_profile, timeout_s=90)
    assert s.status == "done", s.error
    assert s.job_id == submitted and s.attempts == 1
    assert sweep_jobs(sweep) == {name: {submitted}}

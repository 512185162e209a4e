"""Run state files are replaced atomically, and one process at a time manages a sweep."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cmgan.sweep import RunState, StateStore
from cmgan.sweep.state import SweepLock


def test_state_round_trips_and_a_rewrite_leaves_no_temporary_files(tmp_path):
    store = StateStore(tmp_path)
    state = RunState("a", status="submitted", job_id="12_3", attempts=1, overrides=["loss.edge=0.0"])
    store.save(state)
    state.status = "running"
    store.save(state)
    assert store.load("a") == state
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["a.json"]
    assert json.loads((tmp_path / "state" / "a.json").read_text())["status"] == "running"
    assert store.load("missing") is None and list(store.load_all()) == ["a"]


def test_a_resubmission_archives_the_previous_attempt(tmp_path):
    state = RunState("a", status="failed", job_id="7", attempts=1, error="boom", traceback="Traceback ...")
    state.archive_attempt()
    assert state.history == [{"job_id": "7", "status": "failed", "error": "boom", "finished_at": None}]
    assert (state.job_id, state.error, state.traceback, state.attempts) == (None, None, None, 1)


def test_a_second_process_cannot_manage_a_locked_sweep_until_the_first_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cmgan.sweep.state import SweepLock\n"
         f"with SweepLock({str(tmp_path)!r}):\n print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"another process \\(pid {holder.pid}\\)"):
            with SweepLock(tmp_path):
                pass
    finally:
        holder.kill()  # a killed submitter must not leave the sweep locked
        holder.wait()
    with SweepLock(tmp_path):
        pass

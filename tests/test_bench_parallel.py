"""bench/parallel.py: seeds mapped over spawned processes keep their order and split the threads."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[1]


def _parallel():
    return load_script(REPO / "bench" / "parallel.py", "bench_parallel")


def where_it_ran(seed: int, scale: int) -> tuple[int, int, int]:
    """Module level, so that a spawned process can unpickle it by name."""
    return seed * scale, torch.get_num_threads(), os.getpid()


def test_threads_are_split_between_jobs_and_never_zero():
    p = _parallel()
    assert [p.threads_per_job(16, j) for j in (0, 1, 2, 3, 32)] == [16, 16, 8, 5, 1]


def test_one_job_runs_in_this_process_in_order():
    rows = _parallel().map_in_processes(where_it_ran, [(s, 10) for s in range(3)], jobs=1)
    assert [r[0] for r in rows] == [0, 10, 20]
    assert {r[2] for r in rows} == {os.getpid()}


def test_jobs_run_in_other_processes_with_their_share_of_threads():
    rows = _parallel().map_in_processes(where_it_ran, [(s, 10) for s in range(3)], jobs=2, threads=2)
    assert [r[0] for r in rows] == [0, 10, 20]  # the calls' order, whichever process finished first
    assert {r[1] for r in rows} == {1}  # a spawned child alone would take every core
    assert os.getpid() not in {r[2] for r in rows}

"""Seeds of a benchmark trained at once, each in its own process, the CPU's threads split between them.

    from parallel import map_in_processes, threads_per_job
    per_job = threads_per_job(threads, jobs)
    rows = map_in_processes(run_seed, [(cfg, seed, per_job) for seed in range(3)], jobs)

One training step on a 2-core CPU does not use both cores well at small sizes, so two seeds side by side finish
sooner than one after the other. Processes are spawned, not forked: a forked child would inherit the parent's
OpenMP thread pool and torch state.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch


def threads_per_job(threads: int, jobs: int) -> int:
    """Intra-op threads each of `jobs` concurrent processes gets out of `threads` (at least 1)."""
    return max(1, threads // max(1, jobs))


def map_in_processes(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int,
                     threads: int | None = None) -> list[Any]:
    """[fn(*call) for call in calls], in order; with jobs > 1 in that many spawned processes, each set to
    threads_per_job(threads, jobs) intra-op threads (threads: default torch's current count). `fn` must be a
    module-level function (it is pickled by name)."""
    if jobs <= 1:
        return [fn(*call) for call in calls]
    per_job = threads_per_job(torch.get_num_threads() if threads is None else threads, jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, ctx, initializer=torch.set_num_threads, initargs=(per_job,)) as pool:
        return list(pool.map(fn, *zip(*calls)))

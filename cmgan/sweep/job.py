"""The callable a sweep submits for each run: train (resuming from the run directory), evaluate, return.

Preemption and time limits, with submitit 1.5 (docs/cluster.md):
- SLURM sends the job's signal (USR2 by default) before the time limit and, with `preempt_send_user_signal`,
  at preemption. The trainer's handler records it; at the next step boundary all ranks agree, save a
  checkpoint together, and the trainer hands the signal on to submitit's handler, which on global rank 0 calls
  `RunJob.checkpoint()` (no I/O there: it returns a fresh `DelayedSubmission` of the same run), runs
  `scontrol requeue` and exits. The requeued job calls `RunJob` again, and the trainer resumes from the
  newest checkpoint in `train.run_dir`.
- Nothing else is needed for `scontrol requeue`, node failures or SIGTERM-only preemption: the job restarts
  from the original pickle and resumes from whatever the trainer saved (on its schedule or on SIGTERM).
- A trainer that returns an unfinished, resumable status without having been requeued (a signal submitit
  does not handle, or ranks other than 0) is requeued here, or waits for SLURM's own requeue/cancel to end it;
  either way no result file is written, so the sweep does not mistake a stopped run for a finished one.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import DelayedSubmission

from cmgan import files
from cmgan.config import RunConfig
from cmgan.distenv import master_port
from cmgan.logs import setup_logging
from cmgan.sweep.evaluate import evaluate_run

log = logging.getLogger(__name__)

FINISHED = {"done", "finished", "completed", "complete"}
"""Trainer statuses of a run that reached `train.steps`."""
RESUMABLE = {"stopped", "interrupted", "preempted", "requeue"}
"""Trainer statuses of a run that stopped early on a signal and saved a checkpoint to resume from."""
LOCAL_REQUEUE_EXIT = 144
"""Exit code that makes submitit's local job controller start the tasks again (submitit.local.local)."""


def import_entry(entry: str) -> Callable[[RunConfig], Any]:
    """`package.module:function` -> the function; errors name the entry."""
    module, _, name = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import the sweep entry {entry!r}: {e}") from e


def train_status(result: Any, cfg: RunConfig) -> str:
    """Classify the trainer's return value: "finished", "resumable" or "failed:<status>"."""
    if not isinstance(result, dict):
        return "finished"
    status = str(result.get("status", "")).lower()
    if status in FINISHED:
        return "finished"
    if status in RESUMABLE:
        return "resumable"
    if status:
        return f"failed:{status}"
    step = result.get("step")
    if isinstance(step, int) and step < cfg.train.steps:
        return "resumable"
    return "finished"


def set_distributed_env(env: submitit.JobEnvironment) -> dict[str, str]:
    """Export the torch.distributed variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE) derived from the scheduler's, for launchers that read torchrun's convention.

    Variables already set (by a profile's setup lines) win. Returns what was set.
    """
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    job_id = os.environ.get("SLURM_JOB_ID") or str(env.job_id)
    hosts = env.hostnames
    values = {
        "MASTER_ADDR": hosts[0] if hosts else "127.0.0.1",
        "MASTER_PORT": str(master_port(job_id, restarts)),
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // max(env.num_nodes, 1)),
    }
    set_now = {}
    for k, v in values.items():
        if k not in os.environ:
            os.environ[k] = v
            set_now[k] = v
    return set_now


def _slurm_job_ref() -> str:
    """The id `scontrol` knows this job (array task: `<array id>_<task>`)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def slurm_job_state(job_ref: str) -> str:
    """The job's state from `scontrol show job` (RUNNING, COMPLETING, PENDING, ...); "" if unknown."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_ref], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else ""


def limit_threads(n: int) -> None:
    """Keep this rank's CPU threads to the `n` cores the job was given (`cpus_per_task`).

    torch otherwise starts one OpenMP thread per core of the machine in every rank: several runs of a sweep on one
    node (the `subprocess` profile, or SLURM packing jobs) then oversubscribe the cores, and OpenMP threads that
    wait at barriers for a descheduled sibling made a 5-run sweep on 2 cores 9x slower per step than 1 thread
    each. Setting OMP_NUM_THREADS here would be too late: torch was imported when the job was unpickled.
    """
    import torch

    n = max(1, n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # for processes this rank starts (data-loader workers, evaluators)
    torch.set_num_threads(n)


class RunJob:
    """One run of a sweep as a checkpointable submitit callable (picklable; holds only the config).

    Returns {"status": "done", "train": <trainer's dict>, "metrics": <evaluate_run's dict>, "restarts": n} on
    rank 0 (other ranks return their trainer dict), or {"status": "<trainer status>", ...} when the trainer
    reports a non-resumable stop (e.g. a non-finite loss).
    """

    def __init__(self, cfg: RunConfig, entry: str, max_requeues: int = 10, evaluate: bool = True,
                 threads: int = 1) -> None:
        self.cfg = cfg
        self.entry = entry
        self.max_requeues = max_requeues
        self.evaluate = evaluate
        self.threads = threads

    def __call__(self) -> dict[str, Any]:
        setup_logging()  # the job's own process: its log goes to the job's stderr file
        env = submitit.JobEnvironment()
        set_distributed_env(env)
        limit_threads(int(os.environ.get("SLURM_CPUS_PER_TASK") or self.threads))
        run_dir = Path(self.cfg.train.run_dir)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        log.info("run %s: rank %d/%d, restart %d", run_dir.name, env.global_rank, env.num_tasks, restarts)

        try:
            result = import_entry(self.entry)(self.cfg)
        except Exception:
            if env.cluster == "slurm" and slurm_job_state(_slurm_job_ref()) not in ("RUNNING", ""):
                # SLURM is requeueing, preempting or cancelling this job and its SIGTERM broke the run (e.g. it
                # killed a data-loader worker): this is not the run's failure, and an error result would make the
                # sweep resubmit a run SLURM is about to restart. Exit without a result; SLURM decides.
                log.exception("run %s raised while SLURM ends the job; leaving it to SLURM", run_dir.name)
                sys.exit(-1)
            raise
        status = train_status(result, self.cfg)
        if status == "resumable":
            return self._interrupted(env, result, restarts)
        if status.startswith("failed:"):
            return {"status": status.split(":", 1)[1], "train": result, "metrics": None, "restarts": restarts}
        metrics: dict[str, Any] | None = None
        # Rank 0 alone evaluates, on its own device: the trainer has closed the process group, and the test split
        # is small next to training. The other ranks return.
        if self.evaluate and env.global_rank == 0:
            metrics = evaluate_run(run_dir, self.cfg)
        elif env.global_rank == 0:
            metrics = {"available": False, "reason": "evaluation switched off"}
        if env.global_rank == 0:
            files.write_json(run_dir / "metrics.json", metrics, indent=2, default=str)
        return {"status": "done", "train": result, "metrics": metrics if env.global_rank == 0 else None,
                "restarts": restarts}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on global rank 0 inside its signal handler before it requeues the job.

        The trainer already saved (collectively, at a step boundary) or saves on its schedule; a collective save
        here would hang, so this only hands back a fresh submission that resumes from the run directory.
        """
        return DelayedSubmission(RunJob(self.cfg, self.entry, self.max_requeues, self.evaluate, self.threads))

    def _interrupted(self, env: submitit.JobEnvironment, result: Any, restarts: int) -> dict[str, Any]:
        """The trainer saved and stopped early: get the job requeued, or report it when the budget is spent."""
        if env.cluster == "local":
            # submitit's local controller restarts the tasks when one exits with this code.
            sys.exit(LOCAL_REQUEUE_EXIT)
        if env.cluster != "slurm" or restarts >= self.max_requeues:
            why = f"stopped after {restarts} requeue(s) (max_requeues={self.max_requeues}); resubmit to resume"
            return {"status": "interrupted", "train": result, "metrics": None, "restarts": restarts, "reason": why}
        ref = _slurm_job_ref()
        state = slurm_job_state(ref)
        if env.global_rank == 0 and state == "RUNNING":
            # Still running: the stop came from a signal nobody requeued for (e.g. USR1, or SIGTERM sent by
            # hand). A job SLURM is already requeueing, preempting or cancelling is left to SLURM.
            log.info("run %s stopped while RUNNING: requeueing job %s", self.cfg.train.run_dir, ref)
            done = subprocess.run(["scontrol", "requeue", ref], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                why = f"scontrol requeue {ref} failed: {done.stderr.strip()}; resubmit to resume"
                return {"status": "interrupted", "train": result, "metrics": None, "restarts": restarts, "reason": why}
        # Wait for SLURM to end this job (requeue or cancel) without writing a result, so the sweep never
        # takes a stopped run for a finished one; other ranks must also not exit early (KillOnBadExit).
        deadline = time.time() + 180
        while time.time() < deadline and slurm_job_state(ref) == "RUNNING":
            time.sleep(1.0)
        log.info("run %s: job %s left RUNNING (%s); exiting for the requeue", self.cfg.train.run_dir, ref, state)
        sys.exit(-1)

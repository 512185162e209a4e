"""Run state files: one JSON per run in `<sweep_dir>/state/`, each replaced atomically.

The state is the sweep's memory across invocations of `launch/sweep.py`: a process killed at any point leaves
every file either old or new, never half-written, and a later invocation continues from it (skips done runs,
reattaches to submitted ones by job id, resubmits failed ones up to the attempt limit).

Statuses:
    pending     not submitted yet
    submitting  about to be handed to the scheduler under job name `token` (resolved on the next start when
                the process died before the job id was recorded)
    submitted   queued (job id known)              running    started (SLURM RUNNING)
    done        finished; `result` holds the job's return value, `metrics` the evaluation
    failed      `error` says why; resubmitted while `attempts < max_attempts` unless `retry` is false
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmgan import files

STATUSES = ("pending", "submitting", "submitted", "running", "done", "failed")
ACTIVE = ("submitting", "submitted", "running")


@dataclass
class RunState:
    """What the sweep knows about one run (serialized as `<sweep_dir>/state/<name>.json`)."""

    name: str
    status: str = "pending"
    job_id: str | None = None
    """Scheduler job id of the current/last submission (`123`, or `123_4` for array task 4; a PID for local)."""
    cluster: str | None = None
    """Backend of that submission: slurm or local."""
    num_tasks: int = 1
    """Ranks of the submission (result files are written per rank)."""
    attempts: int = 0
    """Submissions so far."""
    error: str | None = None
    """Why the run failed (last line of the job's traceback, the scheduler state, or the config error)."""
    retry: bool = True
    """False when resubmitting cannot help (an invalid config)."""
    token: str | None = None
    """SLURM job name of the current submission: finds the job again if its id was never recorded."""
    array_index: int | None = None
    """Index of this run in its submission's job array."""
    slurm_state: str | None = None
    """Last scheduler state seen (PENDING, RUNNING, COMPLETED, ...), for display."""
    run_dir: str = ""
    overrides: list[str] = field(default_factory=list)
    config: str = ""
    """The configuration this run repeats (see `cmgan.sweep.spec`); empty in states written before seeds."""
    seed: int | None = None
    """The run's seed when the sweep has seeds."""
    result: dict[str, Any] | None = None
    """The job's return value: {"status": "done", "train": <trainer's dict>, "metrics": ...}."""
    metrics: dict[str, Any] | None = None
    traceback: str | None = None
    """Full traceback of the last failure, when the job reported one."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Earlier submissions: job id, final status, error."""
    submitted_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def archive_attempt(self) -> None:
        """Move the current submission's outcome into `history` before a resubmission."""
        if self.job_id is not None:
            self.history.append(
                {"job_id": self.job_id, "status": self.status, "error": self.error, "finished_at": self.finished_at}
            )
        self.job_id = self.token = self.array_index = self.slurm_state = None
        self.error = self.traceback = self.result = self.metrics = None
        self.finished_at = None


class StateStore:
    """The state directory of one sweep."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.dir = self.sweep_dir / "state"

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, name: str) -> RunState | None:
        try:
            return RunState.from_dict(json.loads(self.path(name).read_text()))
        except FileNotFoundError:
            return None

    def load_all(self) -> dict[str, RunState]:
        out = {}
        for p in sorted(self.dir.glob("*.json")):
            state = RunState.from_dict(json.loads(p.read_text()))
            out[state.name] = state
        return out

    def save(self, state: RunState) -> None:
        state.updated_at = time.time()
        files.write_json(self.path(state.name), state.to_dict(), indent=2, default=str)


class SweepLock:
    """An exclusive lock on a sweep directory: one submitting process per sweep at a time.

    `flock` locks vanish with their process, so a killed submitter never leaves the sweep locked.
    """

    def __init__(self, sweep_dir: str | Path) -> None:
        self.path = Path(sweep_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeError(
                f"sweep {self.path.parent} is being managed by another process (pid {holder}); "
                "wait for it, or use --status to look at it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

"""What the scheduler says about submitted jobs: states by job id (squeue, then sacct), jobs by name, and the
result files submitit writes when a job's function returns or raises.

Everything here works from ids and files alone, so a new process can reattach to jobs an earlier one
submitted (nothing depends on submitit `Job` objects held in memory).
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths, pickle_load

log = logging.getLogger(__name__)

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD", "POWER_UP_NODE"}
ACTIVE = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED", "RESIZING"}
TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
}  # fmt: skip


def _run(cmd: list[str], timeout: float = 60.0) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, "", str(e)
    return p.returncode, p.stdout, p.stderr


def _parse(lines: str) -> dict[str, str]:
    out = {}
    for line in lines.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            # sacct writes "CANCELLED by 0"; squeue writes plain states.
            out[jid.strip()] = state.strip().split(" ")[0].rstrip("+")
    return out


def slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """SLURM state of each job id (`123` or array task `123_4`): squeue for queued/running jobs, sacct for
    finished ones; "" for an id that is in neither (not queued, and no accounting record). None when squeue
    itself failed: then nothing is known, and nothing may be concluded (a controller hiccup must not turn
    running jobs into failed ones)."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    rc, out, err = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    if rc != 0:
        log.warning("squeue failed (states unknown until it answers): %s", err.strip())
        return None
    queued = _parse(out)
    states = {j: queued[j] for j in job_ids if j in queued}
    missing = [j for j in job_ids if j not in states]
    if missing:
        rc, out, err = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(missing)])
        acct = _parse(out) if rc == 0 else {}
        if rc != 0:
            log.warning("sacct failed (is accounting enabled?): %s", err.strip())
        for j in missing:
            states[j] = acct.get(j, "")
    return states


def slurm_jobs_named(name: str) -> dict[str, str] | None:
    """Job ids (array tasks expanded where squeue knows them) and states of this user's jobs named `name`;
    None when squeue did not answer (then absence proves nothing)."""
    found = {}
    rc, out, _ = _run(["sacct", "-X", "-n", "-P", "-S", "now-30days", "--name", name, "-o", "JobID,State"])
    if rc == 0:
        found.update(_parse(out))
    rc, out, _ = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "--name", name, "-o", "%i|%T"])
    if rc != 0:
        return None
    found.update(_parse(out))
    return found


def pid_alive(pid: str) -> bool:
    """The local backend's job (its id is the PID of submitit's job controller) is still running: the process
    exists, is not a zombie, and is a submitit controller (not an unrelated process that reused the PID)."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"submitit" in cmdline


def result_path(folder: str | Path, job_id: str, task: int = 0) -> Path:
    """Where submitit writes the result of task `task` of `job_id` (`folder` may contain %j)."""
    return JobPaths(folder, job_id=job_id, task_id=task).result_pickle


def read_result(folder: str | Path, job_id: str, not_before: float | None = None) -> tuple[str, Any] | None:
    """("success", value) or ("error", traceback text) of rank 0, or None when no result exists yet.

    `not_before` (a submission time) ignores a stale file left by an earlier job with the same id (SLURM job
    ids restart at 1 when a cluster's state is wiped)."""
    path = result_path(folder, job_id)
    try:
        if not_before is not None and path.stat().st_mtime < not_before - 5:
            return None
        return pickle_load(path)
    except FileNotFoundError:
        return None
    except Exception as e:  # a corrupt/partial pickle: report it as the run's error
        return "error", f"cannot read result file {path}: {e}"


def log_tail(folder: str | Path, job_id: str, lines: int = 1) -> str:
    """Last non-empty lines of rank 0's stderr log, to explain a job that ended without a result."""
    path = JobPaths(folder, job_id=job_id, task_id=0).stderr
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])

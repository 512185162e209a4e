"""Submit a colorization as a job array through the same submitit machinery as training sweeps.

    summary = submit_colorize(opts, load_profile("local"), jobs=8)      # waits, then merges the shard summaries

Array task t of n (and rank r of w inside it, when the profile asks for several tasks per node) colorizes shard
t*w + r of n*w. A preempted or timed-out task is requeued by submitit (`checkpoint` returns the same job) and
skips every volume whose marker was written before it stopped; a task that died is simply rerun the same way.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
from pathlib import Path
from typing import Any

from cmgan import files
from cmgan.cluster import make_executor, preempt_signal
from cmgan.colorize.inputs import Shard
from cmgan.colorize.runner import SUMMARY_FORMAT, ColorizeOptions, run_colorize
from cmgan.logs import setup_logging

log = logging.getLogger(__name__)


class ColorizeJob:
    """The picklable callable of one array task: colorize shard `task` of `tasks` (split again by rank)."""

    def __init__(self, opts: ColorizeOptions, task: int, tasks: int) -> None:
        self.opts, self.task, self.tasks = opts, task, tasks

    def shard(self) -> Shard:
        try:
            import submitit

            env = submitit.JobEnvironment()
            rank, world = env.global_rank, env.num_tasks
        except RuntimeError:  # called outside a submitit job (tests, a plain python call)
            rank, world = 0, 1
        return Shard(self.task * world + rank, self.tasks * world)

    def __call__(self) -> dict[str, Any]:
        setup_logging()  # the job's own process: its log goes to the job's stderr file
        shard = self.shard()
        opts = dataclasses.replace(self.opts, shard=f"{shard.index}/{shard.count}")
        summary = run_colorize(opts)
        return {"shard": summary["shard"], "counts": summary["counts"]}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On preemption/time limit: requeue the same task; markers make it resume where it stopped."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(ColorizeJob(self.opts, self.task, self.tasks))


def submit_colorize(opts: ColorizeOptions, profile: Any, jobs: int, wait: bool = True) -> dict[str, Any] | None:
    """Submit `jobs` array tasks on `profile` (a `cmgan.cluster.ClusterProfile`).

    wait=True: block until all tasks end, merge their shard summaries into `<out>/summary.json` and return it;
    wait=False: return None right after submission (job ids are logged and written to `<out>/submission.json`).
    """
    if jobs < 1:
        raise ValueError(f"--jobs {jobs} must be >= 1")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    executor = make_executor(profile, out / ".submitit" / "%j", job_name=f"cmgan-colorize-{opts.run_id}")
    with preempt_signal(profile.signal):
        with executor.batch():
            submitted = [executor.submit(ColorizeJob(opts, t, jobs)) for t in range(jobs)]
    ids = [str(j.job_id) for j in submitted]
    log.info("submitted %d colorize task(s) on profile %s: %s", jobs, profile.name, ", ".join(ids))
    files.write_json(out / "submission.json", {"run_id": opts.run_id, "profile": profile.name, "jobs": ids,
                                               "shards": jobs * profile.num_tasks})
    if not wait:
        return None
    errors = []
    for job in submitted:
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 - one failed task must not hide the others' results
            errors.append(f"job {job.job_id}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}")
    summary = merge_summaries(out, opts.run_id)
    summary["job_errors"] = errors
    if errors:
        summary["counts"]["failed"] += len(errors)
    files.write_json(out / "summary.json", summary)
    return summary


def merge_summaries(out: Path, run_id: str) -> dict[str, Any]:
    """One summary from the shard summaries of run `run_id` under `out` (inputs concatenated, counts added)."""
    parts = []
    paths = sorted(glob.glob(str(Path(out) / "summary.shard-*.json"))) + [str(Path(out) / "summary.json")]
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if data.get("format") == SUMMARY_FORMAT and data.get("run_id") == run_id:
            parts.append(data)
    if not parts:
        return {"format": SUMMARY_FORMAT, "version": 1, "run_id": run_id, "complete": False, "shards": [],
                "counts": {"inputs": 0, "done": 0, "skipped": 0, "failed": 0}, "inputs": []}
    counts = {k: sum(p["counts"][k] for p in parts) for k in ("inputs", "done", "skipped", "failed")}
    slices = sum(p["slices_colorized"] for p in parts)
    inputs = sorted((r for p in parts for r in p["inputs"]), key=lambda r: (r["key"] or "", r["input"] or ""))
    first = parts[0]
    return {
        "format": SUMMARY_FORMAT, "version": 1, "run_id": run_id,
        "complete": all(p["complete"] for p in parts) and len(parts) == _shard_count(parts),
        "shards": [p["shard"] for p in parts], "export": first["export"], "model_id": first["model_id"],
        "settings": first["settings"], "formats": first["formats"], "counts": counts,
        "slices_colorized": slices,
        "slices_per_s": round(sum(p["slices_per_s"] or 0 for p in parts), 2) or None,
        "inputs": inputs,
    }


def _shard_count(parts: list[dict[str, Any]]) -> int:
    return int(parts[0]["shard"].split("/")[1])

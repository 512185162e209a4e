"""Drive a sweep: submit due runs (job arrays where runs share resources), reattach to submitted ones, poll
until every run is done or out of attempts, resubmit failures, and write the results table.

    sweep = load_sweep("configs/sweeps/fusion.toml")
    states = run_sweep(sweep, load_profile("local"))         # blocks until all runs are settled
    states = run_sweep(sweep, profile, wait=False)           # submit (or reattach) and return
    states = sweep_status(sweep, profile)                    # read-only look at a sweep in progress

All knowledge lives in the state files (`cmgan.sweep.state`); this process can be killed at any moment and
started again: runs already submitted are found again by job id (or, if the id was never recorded, by the
job name written just before submission) and never submitted twice.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import submitit

from cmgan import files
from cmgan.cluster import ClusterProfile, make_executor, preempt_signal, profile_to_dict
from cmgan.config import ConfigError
from cmgan.sweep import scheduler
from cmgan.sweep.job import RunJob
from cmgan.sweep.results import collect_rows, summarize, write_results, write_summary
from cmgan.sweep.spec import RunSpec, Sweep
from cmgan.sweep.state import ACTIVE, RunState, StateStore, SweepLock

log = logging.getLogger(__name__)

CRASH_HOOK = "CMGAN_SWEEP_EXIT_AFTER_SUBMIT"
"""Test hook: when this variable is set, the process exits right after the scheduler accepted a submission and
before the job ids are recorded, the one moment a crash could otherwise lose track of a job (the state then
says `submitting`, and the next start finds the job by its name). It changes nothing else."""
TERMINAL_GRACE_S = 5.0
"""A job the scheduler calls finished but without a result file yet is given this long for the file to
appear (shared file systems show files late) before the run is declared failed."""


@dataclass
class PlanItem:
    """What the next invocation would do with one run."""

    name: str
    action: str
    """submit | resubmit | reattach | resolve | skip | failed"""
    detail: str = ""
    resources: dict[str, Any] = field(default_factory=dict)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text.strip()


class SweepRunner:
    """Submission and bookkeeping of one sweep on one cluster profile."""

    def __init__(
        self,
        sweep: Sweep,
        profile: ClusterProfile,
        max_attempts: int | None = None,
        poll_s: float | None = None,
        evaluate: bool = True,
        on_update: Callable[[list[RunState]], None] | None = None,
    ) -> None:
        self.sweep = sweep
        self.profile = profile
        self.max_attempts = max_attempts or sweep.max_attempts
        self.poll_s = poll_s or profile.poll_s
        self.evaluate = evaluate
        self.on_update = on_update
        self.store = StateStore(sweep.sweep_dir)
        self.folder = sweep.sweep_dir / "submitit" / "%j"
        self._local_jobs: dict[str, submitit.Job] = {}
        self._terminal_since: dict[str, float] = {}

    # ------------------------------------------------------------------ planning

    def _run_profile(self, run: RunSpec) -> ClusterProfile:
        return self.profile.with_resources(run.resources, where=f"run {run.name}: resources")

    def _config_error(self, run: RunSpec) -> str | None:
        if run.error:
            return run.error
        try:
            self._run_profile(run)
        except ConfigError as e:
            return f"invalid resources: {e}"
        return None

    def due(self, state: RunState) -> bool:
        if state.status == "pending":
            return True
        return state.status == "failed" and state.retry and state.attempts < self.max_attempts

    def load_states(self) -> list[RunState]:
        """The state of every run of the sweep (new runs start pending), with config errors applied."""
        states = []
        for run in self.sweep.runs:
            state = self.store.load(run.name) or RunState(
                run.name, run_dir=str(run.run_dir), overrides=list(run.overrides)
            )
            state.config, state.seed = run.config, run.seed
            error = self._config_error(run)
            if state.status not in ACTIVE and state.status != "done":
                if error:
                    state.status, state.error, state.retry = "failed", error, False
                elif not state.retry and state.attempts == 0:  # its config was invalid and is fixed now
                    state.archive_attempt()
                    state.status, state.retry, state.attempts = "pending", True, 0
                state.run_dir, state.overrides = str(run.run_dir), list(run.overrides)
            states.append(state)
        return states

    def plan(self) -> list[PlanItem]:
        """What `run()` would do now, without submitting or writing anything (for --dry-run)."""
        items = []
        for run, state in zip(self.sweep.runs, self.load_states()):
            res = {} if self._config_error(run) else profile_to_dict(self._run_profile(run))
            if state.status == "done":
                items.append(PlanItem(run.name, "skip", "done", res))
            elif state.status == "submitting":
                items.append(PlanItem(run.name, "resolve", f"find job named {state.token}", res))
            elif state.status in ACTIVE:
                items.append(PlanItem(run.name, "reattach", f"job {state.job_id}", res))
            elif self.due(state):
                action = "submit" if state.status == "pending" else "resubmit"
                items.append(PlanItem(run.name, action, f"attempt {state.attempts + 1}/{self.max_attempts}", res))
            else:
                items.append(PlanItem(run.name, "failed", state.error or "", res))
        return items

    # ------------------------------------------------------------------ submission

    def _submit(self, runs: list[tuple[RunSpec, RunState]]) -> None:
        """Submit due runs; runs with equal resources go into one job array (SLURM)."""
        groups: dict[str, list[tuple[RunSpec, RunState, ClusterProfile]]] = {}
        for run, state in runs:
            prof = self._run_profile(run)
            groups.setdefault(repr(sorted(profile_to_dict(prof).items())), []).append((run, state, prof))
        for group in groups.values():
            prof = group[0][2]
            if prof.cluster == "slurm" and len(group) > 1:
                self._submit_group(group, prof)
            else:
                for item in group:
                    self._submit_group([item], prof)

    def _submit_group(self, group: list[tuple[RunSpec, RunState, ClusterProfile]], prof: ClusterProfile) -> None:
        token = f"cmgan-{self.sweep.name}-{uuid.uuid4().hex[:10]}"
        now = time.time()
        for i, (_, state, _) in enumerate(group):
            if state.status == "failed":
                state.archive_attempt()
            state.status, state.token, state.array_index = "submitting", token, i if len(group) > 1 else None
            state.cluster, state.num_tasks, state.submitted_at = prof.cluster, prof.num_tasks, now
            state.attempts += 1
            state.error = None
            self.store.save(state)  # written before sbatch: a crash from here on is resolved by `token`
        ex = make_executor(prof, self.folder, job_name=token)
        fns = [RunJob(run.cfg, self.sweep.entry, prof.max_requeues, self.evaluate, prof.cpus_per_task)
               for run, _, _ in group]
        try:
            with preempt_signal(prof.signal):
                if len(fns) > 1:
                    with ex.batch():
                        jobs = [ex.submit(fn) for fn in fns]
                else:
                    jobs = [ex.submit(fns[0])]
        except Exception as e:  # sbatch refused the job (bad partition, impossible request, ...)
            msg = f"submission failed: {_last_line(str(e))}"
            log.error("%s: %s", [s.name for _, s, _ in group], msg)
            for _, state, _ in group:
                state.status, state.error, state.traceback = "failed", msg, str(e)
                self.store.save(state)
            return
        if os.environ.get(CRASH_HOOK):
            os._exit(70)  # test hook: die exactly where a crash would lose the job ids (see CRASH_HOOK)
        for (run, state, _), job in zip(group, jobs):
            state.status, state.job_id, state.slurm_state = "submitted", str(job.job_id), "PENDING"
            if prof.cluster == "local":
                self._local_jobs[state.job_id] = job
            self.store.save(state)
            log.info("run %s submitted as job %s (attempt %d)", run.name, job.job_id, state.attempts)

    # ------------------------------------------------------------------ refreshing

    def _resolve_submitting(self, state: RunState) -> None:
        """The process died between writing `submitting` and recording the job id: find the job by name."""
        found = scheduler.slurm_jobs_named(state.token) if state.cluster == "slurm" and state.token else {}
        if found is None:
            return  # SLURM did not answer: try again on the next poll
        want = None
        for jid in found:
            _, _, idx = jid.partition("_")
            if state.array_index is None and not idx:
                want = jid
            elif state.array_index is not None and idx == str(state.array_index):
                want = jid
        if want:
            state.status, state.job_id = "submitted", want
            log.info("run %s: found job %s submitted by an earlier process", state.name, want)
        else:  # never reached the scheduler: that attempt does not count
            state.status, state.attempts = "pending", max(0, state.attempts - 1)
            state.token = state.array_index = None
        self.store.save(state)

    def _finish_from_result(self, state: RunState, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        state.finished_at = time.time()
        if kind == "success" and isinstance(value, dict) and value.get("status") == "done":
            state.status, state.result, state.metrics = "done", value, value.get("metrics")
            state.error = None
        elif kind == "success":
            status = value.get("status") if isinstance(value, dict) else repr(value)
            reason = value.get("reason", "") if isinstance(value, dict) else ""
            state.status, state.result = "failed", value if isinstance(value, dict) else None
            state.error = f"trainer stopped with status {status!r}" + (f": {reason}" if reason else "")
            # An interrupted run resumes when resubmitted; any other stop (e.g. a non-finite loss) would repeat.
            state.retry = status == "interrupted"
        else:  # the job's function raised: SLURM records the job as FAILED
            state.status, state.error, state.traceback = "failed", _last_line(str(value)), str(value)
            state.slurm_state = "FAILED"
        if state.status == "done":
            state.slurm_state = "COMPLETED"

    def refresh(self, states: list[RunState], save: bool = True) -> None:
        """Bring active runs' states up to date from the scheduler and the result files."""
        for state in states:
            if state.status == "submitting":
                if save:
                    self._resolve_submitting(state)
        active = [s for s in states if s.status in ("submitted", "running") and s.job_id]
        slurm_ids = [s.job_id for s in active if s.cluster == "slurm"]
        sl_states = scheduler.slurm_states(slurm_ids) if slurm_ids else {}
        now = time.time()
        for state in active:
            if state.cluster == "slurm" and sl_states is None:
                continue  # the scheduler did not answer: conclude nothing this round
            before = (state.status, state.slurm_state)
            sched = self._job_state(state, sl_states or {})
            # While SLURM still holds the job (queued, running, requeued) a result file is not final: a job killed
            # for a requeue may leave one behind, and its next start overwrites it.
            held = state.cluster == "slurm" and (sched in scheduler.QUEUED or sched in scheduler.ACTIVE)
            outcome = None if held else scheduler.read_result(self.folder, state.job_id, state.submitted_at)
            if outcome is not None:
                self._finish_from_result(state, outcome)
            else:
                state.slurm_state = sched or state.slurm_state
                if sched in scheduler.QUEUED:
                    state.status = "submitted"
                elif sched in scheduler.ACTIVE:
                    state.status = "running"
                else:  # finished or forgotten by the scheduler, and no result (yet)
                    first = self._terminal_since.setdefault(state.job_id, now)
                    if now - first >= TERMINAL_GRACE_S:
                        tail = scheduler.log_tail(self.folder, state.job_id)
                        what = f"SLURM state {sched}" if sched else "job no longer known to the scheduler"
                        state.status, state.finished_at = "failed", now
                        state.error = f"{what}, no result written" + (f"; log: {tail}" if tail else "")
            if save and (state.status, state.slurm_state) != before:
                self.store.save(state)
                if state.status in ("done", "failed"):
                    log.info("run %s %s%s", state.name, state.status, f": {state.error}" if state.error else "")

    def _job_state(self, state: RunState, sl_states: dict[str, str]) -> str:
        if state.cluster == "slurm":
            return sl_states.get(state.job_id, "")
        job = self._local_jobs.get(state.job_id)
        if job is not None:  # our own child: poll it (this also reaps it)
            return "RUNNING" if job.get_info().get("jobState") == "RUNNING" else "COMPLETED"
        return "RUNNING" if scheduler.pid_alive(state.job_id) else ""

    # ------------------------------------------------------------------ driving

    def _write_manifest(self) -> None:
        files.write_json(
            self.sweep.sweep_dir / "sweep.json",
            {
                "name": self.sweep.name,
                "file": str(self.sweep.path) if self.sweep.path else None,
                "entry": self.sweep.entry,
                "profile": profile_to_dict(self.profile),
                "max_attempts": self.max_attempts,
                "seeds": list(self.sweep.seeds),
                "reference": self.sweep.reference,
                "runs": {r.name: {"overrides": list(r.overrides), "resources": r.resources, "config": r.config,
                                  "seed": r.seed} for r in self.sweep.runs},
            },
            indent=2, default=str,
        )

    def run(self, wait: bool = True, timeout_s: float | None = None) -> list[RunState]:
        """Submit what is due and (with `wait`) poll until every run is done or has no attempts left.

        Holds the sweep's lock throughout; returns the final states and writes results.csv/json (one row per
        run) and summary.csv/json (one row per configuration: mean, std, n, difference from the reference)."""
        with SweepLock(self.sweep.sweep_dir):
            self._write_manifest()
            states = self.load_states()
            for s in states:
                self.store.save(s)
            self.refresh(states)
            deadline = None if timeout_s is None else time.time() + timeout_s
            while True:
                by_name = {s.name: s for s in states}
                due = [(r, by_name[r.name]) for r in self.sweep.runs if self.due(by_name[r.name])]
                if due:
                    self._submit(due)
                self._report(states)
                unsettled = [s for s in states if s.status in ACTIVE or self.due(s)]
                if not wait or not unsettled:
                    break
                if deadline is not None and time.time() > deadline:
                    raise TimeoutError(f"sweep {self.sweep.name}: runs still unsettled after {timeout_s} s: "
                                       f"{[s.name for s in unsettled]}")
                time.sleep(self.poll_s)
                self.refresh(states)
            rows = collect_rows(states)
            write_results(self.sweep.sweep_dir, rows)
            write_summary(self.sweep.sweep_dir, summarize(rows, self.sweep.reference))
            return states

    def status(self) -> list[RunState]:
        """Current states, refreshed from the scheduler in memory only (safe while another process runs)."""
        states = self.load_states()
        self.refresh(states, save=False)
        return states

    def _report(self, states: list[RunState]) -> None:
        if self.on_update is not None:
            self.on_update(states)


def run_sweep(sweep: Sweep, profile: ClusterProfile, wait: bool = True, **kwargs: Any) -> list[RunState]:
    """Submit/resume `sweep` on `profile`; see `SweepRunner` for the keyword arguments."""
    timeout_s = kwargs.pop("timeout_s", None)
    return SweepRunner(sweep, profile, **kwargs).run(wait=wait, timeout_s=timeout_s)


def sweep_status(sweep: Sweep, profile: ClusterProfile) -> list[RunState]:
    """Read-only, refreshed states of a sweep."""
    return SweepRunner(sweep, profile).status()

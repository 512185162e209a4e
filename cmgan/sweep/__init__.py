"""Sweeps of training runs on SLURM (or local subprocesses) through submitit.

    from cmgan.sweep import load_sweep, load_profile, run_sweep
    states = run_sweep(load_sweep("configs/sweeps/fusion.toml"), load_profile("local"))

Module map: spec.py (sweep files -> named runs with configs), job.py (the checkpointable callable each job
runs), state.py (one atomic JSON per run, the sweep lock), scheduler.py (job states by id from squeue/sacct,
result files), runner.py (submit, reattach, poll, resubmit), results.py (per-run table; per-configuration mean,
std, n and seed-paired CI; CSV, JSON), report.py (report.md with figures), evaluate.py (the seam to the
evaluator). Cluster profiles (-> submitit executors) are `cmgan.cluster`, shared with the colorizer.
"""

from cmgan.cluster import ClusterProfile, default_profile_name, load_profile, make_executor, slurm_available
from cmgan.sweep.evaluate import evaluate_run
from cmgan.sweep.job import RunJob
from cmgan.sweep.report import write_report
from cmgan.sweep.results import collect_rows, render_summary, render_table, summarize, write_results, write_summary
from cmgan.sweep.runner import PlanItem, SweepRunner, run_sweep, sweep_status
from cmgan.sweep.spec import RunSpec, Sweep, build_sweep, load_sweep
from cmgan.sweep.state import RunState, StateStore

__all__ = [
    "ClusterProfile", "PlanItem", "RunJob", "RunSpec", "RunState", "StateStore", "Sweep", "SweepRunner",
    "build_sweep", "collect_rows", "default_profile_name", "evaluate_run", "load_profile", "load_sweep",
    "make_executor", "render_summary", "render_table", "run_sweep", "slurm_available", "summarize", "sweep_status",
    "write_report", "write_results", "write_summary",
]  # fmt: skip

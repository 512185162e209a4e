"""The `launch/sweep.py` screen: plan (--dry-run), submit and follow (default), or show (--status) a sweep.

Console output lives here and only here; the rest of `cmgan.sweep` logs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cmgan.config import ConfigError
from cmgan.sweep.profile import ClusterProfile, default_profile_name, load_profile
from cmgan.sweep.results import collect_rows, render_table
from cmgan.sweep.runner import SweepRunner
from cmgan.sweep.spec import Sweep, load_sweep
from cmgan.sweep.state import RunState

log = logging.getLogger(__name__)


def resolve_profile(name: str | None, sweep: Sweep | None = None) -> ClusterProfile:
    """--profile, else the sweep file's `profile`, else `local` when SLURM answers, else `subprocess`."""
    chosen = name or (sweep.profile if sweep else None) or default_profile_name()
    return load_profile(chosen)


def _plan_table(runner: SweepRunner) -> Table:
    table = Table(title=f"sweep {runner.sweep.name}: plan on profile {runner.profile.name} (dry run)")
    for col in ("run", "action", "detail", "where", "nodes x tasks", "gpus", "time", "overrides"):
        table.add_column(col, overflow="fold")
    by_name = {r.name: r for r in runner.sweep.runs}
    for item in runner.plan():
        res = item.resources
        run = by_name[item.name]
        where = f"{res['cluster']}:{res['partition'] or 'default'}" if res else ""
        table.add_row(
            item.name, item.action, item.detail, where,
            f"{res['nodes']} x {res['tasks_per_node']}" if res else "",
            str(res.get("gpus_per_node", "")), f"{res['time_min']} min" if res else "", " ".join(run.variant),
        )  # fmt: skip
    common = [o for o in runner.sweep.runs[0].overrides if o not in runner.sweep.runs[0].variant][:-1]
    if common:
        table.caption = "every run: " + " ".join(common)
    return table


def sweep_command(
    sweep_file: str | Path,
    profile: str | None = None,
    dry_run: bool = False,
    status: bool = False,
    wait: bool = True,
    sweep_dir: str | Path | None = None,
    max_attempts: int | None = None,
    poll_s: float | None = None,
    console: Console | None = None,
) -> int:
    """Run one sweep command; returns the process exit code (0: all runs done or still running fine,
    1: some run failed for good, 2: the sweep file or profile is invalid)."""
    if console is None:
        # Logs and pipes get wide tables: rich would wrap them at 80 columns there.
        console = Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", "160")))
    try:
        sweep = load_sweep(sweep_file, sweep_dir=sweep_dir)
        prof = resolve_profile(profile, sweep)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    title = f"sweep {sweep.name} ({prof.name}: {prof.cluster}) - {sweep.sweep_dir}"
    if dry_run:
        console.print(_plan_table(SweepRunner(sweep, prof, max_attempts=max_attempts)))
        return 0
    if status:
        states = SweepRunner(sweep, prof).status()
        console.print(render_table(collect_rows(states), title=title))
        return 0
    if console.is_terminal:
        with Live(console=console, refresh_per_second=2) as live:

            def show(states: list[RunState]) -> None:
                live.update(render_table(collect_rows(states), title=title))

            states = SweepRunner(sweep, prof, max_attempts, poll_s, on_update=show).run(wait=wait)
            live.update(render_table(collect_rows(states), title=title))
    else:
        states = SweepRunner(sweep, prof, max_attempts, poll_s).run(wait=wait)
        console.print(render_table(collect_rows(states), title=title))
    console.print(f"results: {sweep.sweep_dir / 'results.csv'}, {sweep.sweep_dir / 'results.json'}")
    runner = SweepRunner(sweep, prof, max_attempts)
    lost = [s for s in states if s.status == "failed" and not runner.due(s)]
    return 1 if lost else 0

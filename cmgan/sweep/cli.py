"""The `launch/sweep.py` screen: plan (--dry-run), submit and follow (default), show (--status) or report
(--report) a sweep. A finished sweep also writes its report (`cmgan.sweep.report`).

Console output lives here and only here; the rest of `cmgan.sweep` logs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cmgan.cluster import ClusterProfile, default_profile_name, load_profile
from cmgan.config import ConfigError
from cmgan.sweep.report import write_report
from cmgan.sweep.results import collect_rows, render_summary, render_table, summarize
from cmgan.sweep.runner import SweepRunner
from cmgan.sweep.spec import Sweep, load_sweep
from cmgan.sweep.state import RunState

log = logging.getLogger(__name__)

SweepLoader = Callable[..., Sweep]  # (sweep_file, sweep_dir=, seeds=) -> Sweep, as `load_sweep`


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


def _print_summary(console: Console, sweep: Sweep, states: list[RunState]) -> None:
    """The per-configuration tables (mean +- std, difference from the reference with its CI)."""
    if sweep.seeds or len(sweep.configs) > 1:
        for table in render_summary(summarize(collect_rows(states), sweep.reference), title=f"sweep {sweep.name}"):
            console.print(table)


def _print_results(console: Console, sweep: Sweep, states: list[RunState], title: str) -> None:
    console.print(render_table(collect_rows(states), title=title))
    _print_summary(console, sweep, states)


def report_command(sweep: Sweep, states: list[RunState], console: Console) -> None:
    """Write the sweep's report.md and figures; a failure is one line, never a lost sweep."""
    try:
        console.print(f"report: {write_report(sweep, states)}")
    except Exception as e:  # noqa: BLE001 - the sweep's own results are already written
        log.warning("report failed", exc_info=True)
        console.print(f"[red]report not written:[/] {type(e).__name__}: {e}")


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
    seeds: str | None = None,
    report: bool = False,
    load: SweepLoader = load_sweep,
) -> int:
    """Run one sweep command; returns the process exit code (0: all runs done or still running fine,
    1: some run failed for good, 2: the sweep file or profile is invalid).

    seeds: replaces the file's seeds ("3": seeds 0, 1, 2; "0,4,7": those). report: write report.md from what the
    sweep holds now and submit nothing. load: how the sweep file becomes a `Sweep`, called as
    `load(sweep_file, sweep_dir=..., seeds=...)` (`load_sweep`; launch/sweep.py hands the demo's own loader for
    the demo's sweep file, which resolves its paths under ./demo)."""
    if console is None:
        # Logs and pipes get wide tables: rich would wrap them at 80 columns there.
        console = Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", "160")))
    try:
        sweep = load(sweep_file, sweep_dir=sweep_dir, seeds=seeds)
        prof = resolve_profile(profile, sweep)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    title = f"sweep {sweep.name} ({prof.name}: {prof.cluster}) - {sweep.sweep_dir}"
    if dry_run:
        console.print(_plan_table(SweepRunner(sweep, prof, max_attempts=max_attempts)))
        return 0
    if status or report:
        states = SweepRunner(sweep, prof).status()
        _print_results(console, sweep, states, title)
        if report:
            report_command(sweep, states, console)
        return 0
    if console.is_terminal:
        with Live(console=console, refresh_per_second=2) as live:

            def show(states: list[RunState]) -> None:
                live.update(render_table(collect_rows(states), title=title))

            states = SweepRunner(sweep, prof, max_attempts, poll_s, on_update=show).run(wait=wait)
            live.update(render_table(collect_rows(states), title=title))
        _print_summary(console, sweep, states)
    else:
        states = SweepRunner(sweep, prof, max_attempts, poll_s).run(wait=wait)
        _print_results(console, sweep, states, title)
    console.print(f"results: {sweep.sweep_dir / 'results.csv'}, {sweep.sweep_dir / 'summary.csv'}")
    if wait:
        report_command(sweep, states, console)
    runner = SweepRunner(sweep, prof, max_attempts)
    lost = [s for s in states if s.status == "failed" and not runner.due(s)]
    return 1 if lost else 0

"""A rich progress display for a colorization run: one bar over volumes, one over the current volume's slices.

Drawn on stderr; the launcher uses it only when stderr is a terminal (logs and SLURM output files stay clean).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class RichReporter:
    """`cmgan.colorize.runner.Reporter` drawing two rich progress bars."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), console=console or Console(stderr=True), transient=False,
        )
        self.volumes = self.progress.add_task("volumes", total=0, info="")
        self.current = self.progress.add_task("slices", total=0, info="")
        self.counts = {"done": 0, "skipped": 0, "failed": 0}

    def start(self, volumes: int) -> None:
        self.progress.update(self.volumes, total=volumes)
        self.progress.start()

    def volume(self, key: str, slices: int) -> None:
        self.progress.reset(self.current, total=slices, info=key)

    def slices(self, n: int) -> None:
        self.progress.advance(self.current, n)

    def finished(self, record: dict[str, Any]) -> None:
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        info = " ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        # Failures of arguments (no volume) are reported too but are not volumes of the bar.
        self.progress.update(self.volumes, advance=1 if record.get("key") else 0, info=info)

    def close(self) -> None:
        self.progress.stop()

"""The sweep's results table: one row per run (status, job, attempts, steps, metrics, error), written as
`<sweep_dir>/results.csv` and `results.json`, and rendered as a rich table for the console."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from cmgan.sweep.state import RunState, write_json_atomic

BASE_COLUMNS = ("run", "status", "job_id", "attempts", "slurm_state", "steps", "restarts")
STATUS_STYLE = {"done": "green", "failed": "red", "running": "cyan", "submitted": "yellow", "pending": "dim"}


def _metric_values(metrics: dict[str, Any] | None) -> dict[str, float]:
    if not metrics:
        return {}
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def current_step(run_dir: str | Path) -> int | None:
    """The last step the trainer logged in `<run_dir>/metrics.jsonl` (reads only the file's tail), if any."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def collect_rows(states: list[RunState]) -> list[dict[str, Any]]:
    """Flat rows for the table/CSV/JSON; metric columns are the union of every run's numeric metrics."""
    rows = []
    for s in states:
        result = s.result or {}
        train = result.get("train") if isinstance(result.get("train"), dict) else {}
        row: dict[str, Any] = {
            "run": s.name,
            "status": s.status,
            "job_id": s.job_id or "",
            "attempts": s.attempts,
            "slurm_state": s.slurm_state or "",
            "steps": train.get("steps", train.get("step", "")),  # a running run shows its progress below
            "restarts": result.get("restarts", ""),
        }
        if s.status == "running" and s.run_dir:
            row["steps"] = current_step(s.run_dir) or ""
        row.update(_metric_values(s.metrics))
        note = ""
        if s.metrics and s.metrics.get("available") is False:
            note = str(s.metrics.get("reason", "unavailable"))
        row["metrics_note"] = note
        row["error"] = s.error or ""
        rows.append(row)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    metric_cols = sorted({k for r in rows for k in r} - set(BASE_COLUMNS) - {"metrics_note", "error"})
    return [*BASE_COLUMNS, *metric_cols, "metrics_note", "error"]


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue()


def write_results(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write `results.csv` and `results.json` atomically; returns their paths."""
    sweep_dir = Path(sweep_dir)
    csv_path, json_path = sweep_dir / "results.csv", sweep_dir / "results.json"
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    tmp.write_text(to_csv(rows))
    os.replace(tmp, csv_path)
    write_json_atomic(json_path, rows)
    return csv_path, json_path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


HEADERS = {"job_id": "job", "attempts": "tries", "slurm_state": "slurm", "metrics_note": "metrics"}


def render_table(rows: list[dict[str, Any]], title: str = "sweep") -> Table:
    """A rich table of the rows: empty columns are left out, and a metrics note shared by every run
    (e.g. "evaluator unavailable") goes into the caption instead of each row."""
    table = Table(title=title, show_lines=False)
    notes = {r.get("metrics_note", "") for r in rows if r.get("metrics_note")}
    shared_note = len(notes) == 1 and all(r.get("metrics_note") for r in rows if r["status"] == "done")
    cols = [c for c in columns(rows) if any(r.get(c) not in ("", None) for r in rows) or c in ("run", "status")]
    if shared_note:
        cols.remove("metrics_note")
        table.caption = f"metrics: {notes.pop()}"
    for c in cols:
        table.add_column(HEADERS.get(c, c), overflow="fold", ratio=3 if c in ("error", "metrics_note") else None)
    for r in rows:
        cells = [_cell(r.get(c, "")) for c in cols]
        style = STATUS_STYLE.get(r["status"], "")
        cells[cols.index("status")] = f"[{style}]{r['status']}[/]" if style else r["status"]
        table.add_row(*cells)
    return table

"""The results table: one row per run, metric columns from every run's metrics, CSV/JSON on disk."""

from __future__ import annotations

import csv
import json

from rich.console import Console

from cmgan.sweep import RunState, collect_rows, render_table, write_results


def _states() -> list[RunState]:
    done = RunState("a", status="done", job_id="5_0", attempts=1,
                    result={"status": "done", "restarts": 1, "train": {"status": "completed", "steps": 30}},
                    metrics={"ssim": 0.9, "psnr": 33.2, "fid": 84.8, "count": 16, "fid_unavailable": None})
    partial = RunState("b", status="done", job_id="5_1", attempts=1,
                       result={"status": "done", "restarts": 0, "train": {"steps": 30}},
                       metrics={"available": False, "reason": "evaluator missing"})
    failed = RunState("c", status="failed", attempts=2, error="FileNotFoundError: /x")
    return [done, partial, failed]


def test_rows_hold_status_steps_metrics_and_errors_with_the_union_of_metric_columns(tmp_path):
    rows = collect_rows(_states())
    assert rows[0]["steps"] == 30 and rows[0]["restarts"] == 1 and rows[0]["ssim"] == 0.9
    assert rows[1]["metrics_note"] == "evaluator missing" and "ssim" not in rows[1]
    assert rows[2]["error"] == "FileNotFoundError: /x"
    csv_path, json_path = write_results(tmp_path, rows)
    table = list(csv.DictReader(open(csv_path)))
    assert list(table[0])[:7] == ["run", "status", "job_id", "attempts", "slurm_state", "steps", "restarts"]
    assert {"count", "fid", "psnr", "ssim"} <= set(table[0]) and table[1]["ssim"] == ""
    assert json.loads(json_path.read_text()) == rows


def test_the_rich_table_shows_each_run_and_leaves_out_empty_columns():
    console = Console(width=200, record=True)
    console.print(render_table(collect_rows(_states()), title="sweep x"))
    text = console.export_text()
    assert "sweep x" in text and "84.8" in text and "FileNotFoundError" in text
    assert "slurm" not in text.split("\n")[2]  # no run has a SLURM state: no such column


def test_a_running_run_shows_the_last_step_its_trainer_logged(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss_g": 1.0}) + "\n" for s in (1, 2, 3)))
    (row,) = collect_rows([RunState("r", status="running", job_id="9", run_dir=str(run_dir))])
    assert row["steps"] == 3

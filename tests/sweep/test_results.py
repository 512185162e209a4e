"""The results table: one row per run, metric columns from every run's metrics, CSV/JSON on disk."""

from __future__ import annotations

import csv
import json

import pytest
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
    assert list(table[0])[:9] == ["run", "config", "seed", "status", "job_id", "attempts", "slurm_state", "steps",
                                  "restarts"]
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


def _seeded(config: str, seed: int, ssim: float | None, status: str = "done") -> RunState:
    metrics = {"ssim": ssim, "psnr": 30.0 + seed, "count": 4} if ssim is not None else None
    return RunState(f"{config}-s{seed}", status=status, config=config, seed=seed, metrics=metrics)


def test_configurations_get_mean_std_n_and_a_seed_paired_t_interval_against_the_reference(tmp_path):
    import math

    import numpy as np
    from scipy import stats

    from cmgan.sweep.results import summarize, write_summary

    ref = {0: 0.70, 1: 0.74, 2: 0.69, 3: 0.72}
    alt = {0: 0.75, 1: 0.76, 2: 0.74, 3: 0.80}  # clearly better on every seed
    same = {0: 0.71, 1: 0.73, 2: 0.70}  # seed 3 missing (failed): paired on 0..2 only
    states = [_seeded("paper", s, v) for s, v in ref.items()] + [_seeded("alt", s, v) for s, v in alt.items()]
    states += [_seeded("same", s, v) for s, v in same.items()] + [_seeded("same", 3, None, "failed")]
    summary = summarize(collect_rows(states), reference="paper")
    by = {c["config"]: c for c in summary["configs"]}
    assert summary["reference"] == "paper" and "diff" not in by["paper"]
    assert by["alt"]["metrics"]["ssim"]["mean"] == pytest.approx(np.mean(list(alt.values())), rel=1e-12)
    assert by["alt"]["metrics"]["ssim"]["std"] == pytest.approx(np.std(list(alt.values()), ddof=1), rel=1e-12)
    assert by["same"]["metrics"]["ssim"]["n"] == 3 and by["same"]["runs"] == 4 and by["same"]["done"] == 3

    for config, values in (("alt", alt), ("same", same)):
        d = np.array([values[s] - ref[s] for s in values])
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))  # by hand
        got = by[config]["diff"]["ssim"]
        assert got["n"] == len(d)
        assert (got["mean"], got["lo"], got["hi"]) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half),
                                                                    rel=1e-12)
        # and the same interval as scipy's own one-sample t interval on the differences
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert (got["lo"], got["hi"]) == pytest.approx((lo, hi), rel=1e-12)
    assert by["alt"]["diff"]["ssim"]["contains_zero"] is False
    assert by["same"]["diff"]["ssim"]["contains_zero"] is True

    csv_path, json_path = write_summary(tmp_path, summary)
    table = {r["config"]: r for r in csv.DictReader(open(csv_path))}
    assert table["alt"]["ssim_diff_contains_zero"] == "False" and table["paper"]["ssim_diff"] == ""
    assert json.loads(json_path.read_text())["reference"] == "paper"


def test_one_seed_gives_no_interval_and_the_tables_say_how_the_interval_was_made():
    from cmgan.sweep.results import render_summary, summarize

    summary = summarize(collect_rows([_seeded("a", 0, 0.7), _seeded("b", 0, 0.8)]))
    assert summary["reference"] == "a"
    d = summary["configs"][1]["diff"]["ssim"]
    assert d["n"] == 1 and d["lo"] is None and d["mean"] == pytest.approx(0.1)
    console = Console(width=250, record=True)
    for table in render_summary(summary):
        console.print(table)
    text = console.export_text()
    assert "Student t" in text and "paired by seed" in text and "+0.1 (n=1)" in text
    assert "paper def" not in text  # no such metric measured: no column that invites a wrong comparison
    summary = summarize(collect_rows([_seeded("a", 0, 0.7)]) + [{"run": "b", "status": "done", "ssim_paper": 0.6}])
    console = Console(width=250, record=True)
    for table in render_summary(summary):
        console.print(table)
    assert "SSIM [paper def]" in console.export_text()  # the label survives rich's markup


def test_the_paper_preset_puts_the_paper_pair_first_and_labels_it():
    from cmgan.sweep.results import LABELS, metric_order

    rows = [{"run": "a", "ssim": 0.8, "psnr": 30.0, "ssim_paper": 0.7, "psnr_paper": 29.0, "fid": 80.0}]
    assert metric_order(rows) == ["ssim", "psnr", "ssim_paper", "psnr_paper", "fid"]
    assert metric_order([{**rows[0], "preset": "paper"}])[:2] == ["ssim_paper", "psnr_paper"]
    assert "paper" in LABELS["ssim_paper"][0] and "paper" not in LABELS["ssim"][0]


def test_rows_show_the_segmenters_per_class_dice_beside_the_metrics():
    state = RunState("s", status="done", attempts=1, metrics={"ssim": 0.8},
                     result={"train": {"steps": 3, "seg_dice": {"background": 0.99, "cortex": 0.91,
                                                                "subcortical_gm": 0.0}}})
    row = collect_rows([state])[0]
    assert row["S dice cortex"] == 0.91 and row["S dice subcortical_gm"] == 0.0
    assert "S dice background" not in row  # the background says nothing about the tissue features G reads

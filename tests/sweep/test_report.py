"""`launch/sweep.py SWEEP --report`: report.md with the tables and three figures, one entry per configuration
(bars), per run (curves) and per configuration beside the input (samples), from a sweep's state files, its runs'
metrics.jsonl and their generator exports colorizing the same real test slices."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console

from cmgan.sweep.state import RunState, StateStore

CONFIGS = ("paper", "concat", "no-edge")
SEEDS = (0, 1)
TINY = ["model.image_size=32", "model.width=8", "model.depth=2", "model.seg_width=4", "model.seg_depth=2",
        "model.disc_width=8", "model.fusion=none"]


def _write_sweep(tmp_path: Path, shards: Path) -> Path:
    overrides = [*TINY, f"data.mr_shards='{shards / 'mr'}'", f"data.color_shards='{shards / 'color'}'"]
    runs = "\n".join(f'[[runs]]\nname = "{c}"\noverrides = []\n' for c in CONFIGS)
    path = tmp_path / "sweep.toml"
    path.write_text(f'name = "rep"\nsweep_dir = "{tmp_path / "sweep"}"\nseeds = {list(SEEDS)}\n'
                    f'reference = "paper"\noverrides = {json.dumps(overrides)}\n{runs}')
    return path


def _finished_runs(sweep) -> None:
    """Each run as a finished sweep leaves it: a state with metrics, a metrics.jsonl, a generator export."""
    from cmgan.data.manifest import read_manifest
    from cmgan.export import save_export
    from cmgan.models import build_generator

    store = StateStore(sweep.sweep_dir)
    for i, run in enumerate(sweep.runs):
        torch.manual_seed(i)  # a different (untrained) generator per run: different colors in the grid
        save_export(run.run_dir / "export" / "generator.pt", model_cfg=run.cfg.model,
                    generator_state=build_generator(run.cfg.model).state_dict(),
                    normalization=read_manifest(run.cfg.data.mr_shards)["normalization"] or {}, meta={"step": 4})
        lines = [json.dumps({"step": s, "loss_g": 5.0 - s * 0.1 * (i + 1), "loss_d": 0.5, "cycle": 1.0 / s})
                 for s in (1, 2, 3, 4)]
        (run.run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        k = CONFIGS.index(run.config)
        metrics = {"ssim": 0.7 + 0.05 * k + 0.01 * run.seed, "psnr": 25.0 + k, "ssim_paper": 0.6 + 0.05 * k,
                   "psnr_paper": 24.0 + k, "ssim_fg": 0.5 + 0.1 * k, "psnr_fg": 20.0 + k, "count": 19}
        store.save(RunState(run.name, status="done", job_id=str(100 + i), attempts=1, run_dir=str(run.run_dir),
                            config=run.config, seed=run.seed, metrics=metrics,
                            result={"status": "done", "train": {"steps": 4}, "metrics": metrics}))


def test_report_has_tables_and_figures_with_one_entry_per_configuration(tmp_path, demo_shards):
    from cmgan.sweep.cli import sweep_command
    from cmgan.sweep.report import metrics_figure
    from cmgan.sweep.results import collect_rows, summarize
    from cmgan.sweep.spec import load_sweep

    path = _write_sweep(tmp_path, demo_shards)
    sweep = load_sweep(path)
    _finished_runs(sweep)
    console = Console(width=250, record=True)
    assert sweep_command(path, profile="subprocess", report=True, console=console) == 0
    out = sweep.sweep_dir
    shown = console.export_text()
    assert "report:" in shown and "difference from 'paper'" in shown and "SSIM [paper def]" in shown
    for name in ("report.md", "metrics.png", "curves.png", "samples.png", "figures.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    assert "![metrics](metrics.png)" in text and "![samples](samples.png)" in text and "Student t" in text
    assert all(f"| {c}" in text for c in CONFIGS) and "SSIM [paper def]" in text

    figures = json.loads((out / "figures.json").read_text())
    assert figures["metrics"]["ssim"]["configs"] == list(CONFIGS)  # one bar per configuration ...
    assert [len(v) for v in figures["metrics"]["ssim"]["values"]] == [2, 2, 2]  # ... over its two seeds
    assert sorted(figures["curves"]["loss_g"]) == sorted(r.name for r in sweep.runs)  # one line per run
    assert figures["samples"]["columns"] == ["input", *CONFIGS]
    assert figures["samples"]["runs"] == [f"{c}-s0" for c in CONFIGS]  # each configuration's lowest seed
    assert len(figures["samples"]["slices"]) == 4

    # The drawn figure itself: one bar per configuration in every metric panel.
    states = list(StateStore(sweep.sweep_dir).load_all().values())
    fig, _ = metrics_figure(summarize(collect_rows(states), "paper"))
    assert [len(ax.patches) for ax in fig.axes if ax.patches] == [len(CONFIGS)] * 6


def test_a_report_of_runs_without_exports_says_why_a_figure_is_missing(tmp_path, demo_shards):
    from cmgan.sweep.report import write_report
    from cmgan.sweep.spec import load_sweep

    sweep = load_sweep(_write_sweep(tmp_path, demo_shards))
    states = [RunState(r.name, status="failed", config=r.config, seed=r.seed, error="boom") for r in sweep.runs]
    report = write_report(sweep, states).read_text()
    assert "samples.png not drawn: ValueError: no finished run to colorize with" in report
    assert "metrics.png not drawn" in report and "6 failed" in report

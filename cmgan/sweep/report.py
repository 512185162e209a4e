"""The sweep report: `<sweep_dir>/report.md` with the per-configuration tables and three PNG figures.

    write_report(sweep, states)      # python launch/sweep.py SWEEP --report (and at the end of every sweep)

- `metrics.png`: one panel per metric, one bar per configuration (mean over its seeds, error bar = std over
  seeds, dots = the seeds' values).
- `curves.png`: one panel per training loss, one line per run (from each run's `metrics.jsonl`).
- `samples.png`: the same test slices colorized by every configuration (its lowest finished seed), side by side,
  input first.
- `figures.json`: the numbers each figure plots (one entry per configuration / run), for checks and re-plotting.

Figures need matplotlib (a main dependency); without it, or when a figure cannot be drawn (no finished run, no
export, unreadable shards), the report says why in place of the figure and the rest is still written.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from cmgan import files
from cmgan.sweep.results import LABELS, collect_rows, diff_cell, mean_std_cell, summarize
from cmgan.sweep.spec import Sweep
from cmgan.sweep.state import RunState

log = logging.getLogger(__name__)

CURVE_KEYS = ("loss_g", "loss_d", "cycle", "gray", "edge", "identity", "adversarial")
"""Training losses drawn in `curves.png`, those the runs logged (names as in metrics.jsonl)."""
SAMPLE_SLICES = 4
"""Test slices in the sample grid."""
SAMPLE_POOL = 64
"""The sample slices are the most anatomy-filled of the split's first this-many slices (deterministic)."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with files.atomic_path(path, suffix=".png") as tmp:  # the suffix tells savefig the format
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return path


# ------------------------------------------------------------------------------------------------ figures


def metrics_figure(summary: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Bars with error bars per metric -> (figure, {metric: {"configs", "mean", "std", "values"}})."""
    plt = _pyplot()
    metrics = [m for m in summary["metrics"] if any(c["metrics"][m]["n"] for c in summary["configs"])]
    if not metrics:
        raise ValueError("no finished run has metrics")
    configs = [c["config"] for c in summary["configs"]]
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    data: dict[str, Any] = {}
    x = np.arange(len(configs))
    for ax, m in zip(axes.flat, metrics):
        stats = [c["metrics"][m] for c in summary["configs"]]
        mean = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        std = [s["std"] if s["std"] is not None else 0.0 for s in stats]
        ax.bar(x, mean, yerr=std, capsize=4, color="#8fb3d9", edgecolor="#2f5d8a")
        for i, s in enumerate(stats):
            ax.plot([i] * len(s["values"]), s["values"], "o", color="#20344d", ms=3)
        ax.set_xticks(x, configs, rotation=30, ha="right", fontsize=8)
        ax.set_title(LABELS.get(m, (m,))[0], fontsize=10)
        data[m] = {"configs": configs, "mean": [None if np.isnan(v) else v for v in mean],
                   "std": [s["std"] for s in stats], "values": [s["values"] for s in stats]}
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("mean over seeds; error bar: std over seeds; dots: seeds", fontsize=9)
    fig.tight_layout()
    return fig, data


def read_curves(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{loss: (steps, values)} from `<run_dir>/metrics.jsonl` for the CURVE_KEYS it holds (bad lines skipped)."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return curves
    for line in lines:
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, KeyError, TypeError):
            continue
        for k in CURVE_KEYS:
            v = rec.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                steps, values = curves.setdefault(k, ([], []))
                steps.append(step)
                values.append(float(v))
    return curves


def curves_figure(runs: list[tuple[str, str, str]]) -> tuple[Any, dict[str, Any]]:
    """runs: [(run name, configuration, run dir)] -> (figure, {loss: {run: {"step", "value"}}}): one panel per
    loss, one line per run, one color per configuration."""
    plt = _pyplot()
    per_run = {name: read_curves(d) for name, _, d in runs}
    keys = [k for k in CURVE_KEYS if any(k in c for c in per_run.values())]
    if not keys:
        raise ValueError("no run has a metrics.jsonl with training losses")
    configs = list(dict.fromkeys(c for _, c, _ in runs))
    colors = plt.get_cmap("tab10")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    data: dict[str, Any] = {}
    for ax, k in zip(axes.flat, keys):
        data[k] = {}
        for name, config, _ in runs:
            if k in per_run[name]:
                steps, values = per_run[name][k]
                first = name == next(n for n, c, _ in runs if c == config and k in per_run[n])
                ax.plot(steps, values, color=colors(configs.index(config) % 10), lw=1,
                        label=config if first else None)
                data[k][name] = {"step": steps, "value": values}
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig, data


def sample_slices(mr_shards: str | Path, split: str = "test", n: int = SAMPLE_SLICES) -> Any:
    """The `n` slices of the split's first SAMPLE_POOL with the most anatomy (mask pixels; else the first n),
    in reading order, as one SliceBatch."""
    from cmgan.eval.slices import MR_MEMBERS, mr_batches, read_samples

    pool = list(read_samples(mr_shards, split, 0, 1, MR_MEMBERS, 1, SAMPLE_POOL))
    if not pool:
        raise ValueError(f"{mr_shards}: the {split} split has no slices")
    batch = next(mr_batches(pool, len(pool)))  # the slices of the first image size
    pool = pool[: len(batch.keys)]
    if batch.mask is not None:
        area = batch.mask.flatten(1).sum(1)
        keep = sorted(_largest(area.tolist(), min(n, len(pool))))
    else:
        keep = list(range(min(n, len(pool))))
    return next(mr_batches([pool[i] for i in keep], len(keep)))


def _largest(values: list[float], k: int) -> list[int]:
    """Indices of the k largest values (ties: the earlier index first)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return order[:k]


def samples_figure(batch: Any, runs: list[tuple[str, str, str]]) -> tuple[Any, dict[str, Any]]:
    """batch: the sample SliceBatch; runs: [(configuration, run name, run dir)], one per configuration ->
    (figure, {"slices", "columns", "runs"}): rows = slices, columns = the input then each configuration."""
    import torch

    from cmgan.export import load_export

    plt = _pyplot()
    outputs = []
    for _, _, run_dir in runs:
        export = load_export(run_dir, "cpu", autocast=None)
        with torch.inference_mode():
            outputs.append(export.colorize(batch.mr).float())
    n = batch.mr.shape[0]
    cols = 1 + len(runs)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False)
    gray = ((batch.mr[:, 0].numpy() + 1) / 2).clip(0, 1)
    for i in range(n):
        axes[i, 0].imshow(gray[i], cmap="gray", vmin=0, vmax=1)
        for j, rgb in enumerate(outputs):
            axes[i, j + 1].imshow(((rgb[i].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1))
        axes[i, 0].set_ylabel(batch.keys[i], fontsize=7)
    titles = ["input", *[c for c, _, _ in runs]]
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig, {"slices": list(batch.keys), "columns": titles, "runs": [r for _, r, _ in runs]}


# ------------------------------------------------------------------------------------------------ report


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The two summary tables (mean +- std; difference from the reference with its CI) and their footnotes."""
    metrics = [m for m in summary["metrics"] if any(c["metrics"][m]["n"] for c in summary["configs"])]
    labels = [LABELS.get(m, (m,))[0] for m in metrics]
    means = [[c["config"] + (" (reference)" if c["config"] == summary["reference"] else ""),
              f"{max((c['metrics'][m]['n'] for m in metrics), default=0)}/{c['runs']}",
              *[mean_std_cell(c["metrics"][m]) for m in metrics]] for c in summary["configs"]]
    diffs = [[c["config"], *[diff_cell(c["diff"][m]) for m in metrics]] for c in summary["configs"] if "diff" in c]
    notes = "\n".join(f"- **{LABELS[m][0]}**: {LABELS[m][1]}" for m in metrics if m in LABELS)
    parts = ["### Mean +- std over seeds (n finished / runs)", _md_table(["configuration", "n", *labels], means)]
    if diffs:
        parts += [f"### Difference from `{summary['reference']}` [95% CI, paired by seed]",
                  _md_table(["configuration", *labels], diffs), f"_{summary['ci_note']}._"]
    parts += ["Columns:", notes]
    return "\n\n".join(parts)


def _figure(name: str, out_dir: Path, build: Any, figures: dict[str, Any]) -> str:
    """Draw one figure (build() -> (fig, data)), save it, record its data; the markdown for it or for why not."""
    try:
        fig, data = build()
    except ImportError as e:
        why = f"matplotlib is not installed ({e})" if "matplotlib" in str(e) else str(e)
        figures[name] = {"error": why}
        return f"_{name}.png not drawn: {why}_"
    except Exception as e:  # noqa: BLE001 - a figure that cannot be drawn must not lose the report
        log.warning("report figure %s failed: %s", name, e)
        figures[name] = {"error": f"{type(e).__name__}: {e}"}
        return f"_{name}.png not drawn: {type(e).__name__}: {e}_"
    _save(fig, out_dir / f"{name}.png")
    _pyplot().close(fig)
    figures[name] = data
    return f"![{name}]({name}.png)"


def write_report(sweep: Sweep, states: list[RunState], out_dir: str | Path | None = None) -> Path:
    """Write report.md, metrics.png, curves.png, samples.png and figures.json into `out_dir` (default: the sweep
    directory); returns the report's path."""
    out = Path(out_dir or sweep.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(states)
    summary = summarize(rows, sweep.reference)
    by_name = {r.name: r for r in sweep.runs}
    done = [s for s in states if s.status == "done" and s.name in by_name]
    figures: dict[str, Any] = {}

    metrics_md = _figure("metrics", out, lambda: metrics_figure(summary), figures)
    curve_runs = [(s.name, by_name[s.name].config, str(by_name[s.name].run_dir)) for s in states if s.name in by_name]
    curves_md = _figure("curves", out, lambda: curves_figure(curve_runs), figures)

    def build_samples() -> tuple[Any, dict[str, Any]]:
        chosen = []  # per configuration its finished run with the lowest seed
        for config in sweep.configs:
            runs = sorted((by_name[s.name] for s in done if by_name[s.name].config == config),
                          key=lambda r: (r.seed is None, r.seed or 0))
            if runs:
                chosen.append((config, runs[0].name, str(runs[0].run_dir)))
        if not chosen:
            raise ValueError("no finished run to colorize with")
        cfg = by_name[chosen[0][1]].cfg
        return samples_figure(sample_slices(cfg.data.mr_shards, cfg.eval.split), chosen)

    samples_md = _figure("samples", out, build_samples, figures)
    files.write_json(out / "figures.json", figures, indent=2, default=str)

    status = {}
    for s in states:
        status[s.status] = status.get(s.status, 0) + 1
    seeds = ", ".join(map(str, sweep.seeds)) if sweep.seeds else "none (each config's own train.seed)"
    text = "\n\n".join([
        f"# Sweep `{sweep.name}`",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} from `{sweep.sweep_dir}`"
        + (f" (sweep file `{sweep.path}`)" if sweep.path else "") + ".",
        f"Configurations: {len(sweep.configs)}; seeds: {seeds}; runs: "
        + ", ".join(f"{n} {k}" for k, n in sorted(status.items())) + f"; reference: `{summary['reference']}`.",
        summary_markdown(summary),
        "## Metrics per configuration", metrics_md,
        "## Training curves", curves_md,
        "## Samples (the same test slices for every configuration; its lowest finished seed)", samples_md,
        "Per-run numbers: `results.csv`; per-configuration: `summary.csv`; figure data: `figures.json`.",
    ]) + "\n"
    return files.write_text(out / "report.md", text)

"""The sweep's results: one row per run (status, job, attempts, steps, metrics, error), written as
`<sweep_dir>/results.csv` and `results.json`; one row per configuration (mean, std and n over its seeds, and its
difference from the reference configuration with a 95% confidence interval paired by seed), written as
`summary.csv` and `summary.json`; both rendered as rich tables for the console.

The confidence interval: for a configuration C and the reference R, the paired differences d_s = C_s - R_s over
the seeds s where both runs finished with the metric; mean(d) +- t(0.975, n - 1) * sd(d) / sqrt(n), sd with
n - 1 (Student t). It needs n >= 2; an interval that contains 0 is marked: no evidence of a difference.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from scipy import stats

from cmgan import files
from cmgan.sweep.state import RunState

BASE_COLUMNS = ("run", "config", "seed", "status", "job_id", "attempts", "slurm_state", "steps", "restarts")
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
            "config": s.config or s.name,
            "seed": "" if s.seed is None else s.seed,
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
        # S's per-class validation Dice (train summary): a weak S makes the fusion meaningless.
        for name, dice in (train.get("seg_dice") or {}).items():
            if name != "background" and isinstance(dice, (int, float)):
                row[f"S dice {name}"] = round(float(dice), 3)
        note = ""
        if s.metrics and s.metrics.get("available") is False:
            note = str(s.metrics.get("reason", "unavailable"))
        row["metrics_note"] = note
        if s.metrics and isinstance(s.metrics.get("preset"), str):
            row["preset"] = s.metrics["preset"]
        row["error"] = s.error or ""
        rows.append(row)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    metric_cols = sorted({k for r in rows for k in r} - set(BASE_COLUMNS) - {"metrics_note", "error", "preset"})
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
    files.write_text(csv_path, to_csv(rows))
    files.write_json(json_path, rows, indent=2, default=str)
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
    cols.remove("config")  # the run's name holds it
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


# ---------------------------------------------------------------------------------------------- configurations

METRICS = ("ssim", "psnr", "ssim_fg", "psnr_fg", "ssim_paper", "psnr_paper", "mi", "fid", "delta_e2000")
"""Metrics summarized per configuration, in table order (the paper preset moves its pair to the front)."""
LABELS = {
    "ssim": ("SSIM", "SSIM of the luminance vs the input, whole slice, float images, eval.ssim_* window "
                     "(default Gaussian 11, population covariance)"),
    "psnr": ("PSNR", "PSNR (dB) of the luminance vs the input, whole slice, float images"),
    "ssim_fg": ("SSIM fg", "SSIM over the anatomy only (mask dilated by eval.fg_dilate px)"),
    "psnr_fg": ("PSNR fg", "PSNR (dB) over the anatomy only (mask dilated by eval.fg_dilate px)"),
    "ssim_paper": ("SSIM [paper def]", "SSIM as the paper's authors computed it: 8-bit images, uniform 101 px "
                                       "window (clipped to the slice), sample covariance; the one to compare with "
                                       "the paper's SSIM"),
    "psnr_paper": ("PSNR [paper def]", "PSNR (dB) on the 8-bit images; the one to compare with the paper's PSNR"),
    "mi": ("MI", "mutual information (bits) of output and input luminance"),
    "fid": ("FID", "FID of the outputs against the color domain (pytorch-fid Inception, 2048-d)"),
    "delta_e2000": ("dE2000", "CIEDE2000 to the true colors (demo data), mean over the anatomy"),
}
CI_LEVEL = 0.95
CI_NOTE = (f"difference from the reference: mean of the per-seed differences, [{CI_LEVEL:.0%} CI] by Student t on "
           "the differences paired by seed (n - 1 degrees of freedom); ~ marks an interval that contains 0 (no "
           "evidence of a difference); std over seeds uses n - 1")


def metric_order(rows: list[dict[str, Any]]) -> list[str]:
    """The summarized metrics present in `rows`: METRICS order, the paper pair first when the runs were
    evaluated with `eval.preset=paper`, then any other numeric metric."""
    present = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    order = list(METRICS)
    if any(r.get("preset") == "paper" for r in rows):
        order = ["ssim_paper", "psnr_paper", *[m for m in order if m not in ("ssim_paper", "psnr_paper")]]
    extra = sorted(present - set(order) - {"seed", "attempts", "steps", "restarts", "count", "fid_count"})
    return [m for m in order if m in present] + extra


def paired_interval(diffs: list[float], level: float = CI_LEVEL) -> dict[str, Any]:
    """Mean of paired differences and its Student-t confidence interval -> {"mean", "lo", "hi", "n",
    "contains_zero"}; lo/hi are None for n < 2 (and contains_zero None: unknown)."""
    n = len(diffs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "contains_zero": None}
    mean = math.fsum(diffs) / n
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "contains_zero": None}
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "contains_zero": bool(lo <= 0.0 <= hi)}


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(rows: list[dict[str, Any]], reference: str | None = None) -> dict[str, Any]:
    """Per configuration (in order of first appearance): runs, done, seeds, and per metric mean, std (n - 1),
    n over its finished runs, and the difference from `reference` (default: the first configuration) paired by
    seed (`paired_interval`; by position when the runs have no seeds).

    returns {"reference", "metrics", "ci_note", "configs": [{"config", "runs", "done", "seeds",
    "metrics": {m: {"mean", "std", "n", "values"}}, "diff": {m: paired_interval} (absent for the reference)}]}
    """
    order = metric_order(rows)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("config") or r["run"]), []).append(r)
    if reference is None or reference not in groups:
        reference = next(iter(groups), None)

    def done_by_seed(config: str) -> dict[Any, dict[str, Any]]:
        done = [r for r in groups[config] if r.get("status") == "done"]
        return {(r["seed"] if r.get("seed") not in ("", None) else i): r for i, r in enumerate(done)}

    ref_runs = done_by_seed(reference) if reference else {}
    configs = []
    for config, members in groups.items():
        runs = done_by_seed(config)
        entry: dict[str, Any] = {
            "config": config, "runs": len(members), "done": len(runs),
            "seeds": sorted(r["seed"] for r in members if r.get("seed") not in ("", None)), "metrics": {},
        }
        for m in order:
            values = [float(r[m]) for r in runs.values() if _finite_number(r.get(m))]
            n = len(values)
            mean = math.fsum(values) / n if n else None
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
            entry["metrics"][m] = {"mean": mean, "std": std, "n": n, "values": values}
        if config != reference:
            entry["diff"] = {}
            for m in order:
                pairs = [(runs[k][m], ref_runs[k][m]) for k in runs if k in ref_runs
                         and _finite_number(runs[k].get(m)) and _finite_number(ref_runs[k].get(m))]
                entry["diff"][m] = paired_interval([float(a) - float(b) for a, b in pairs])
        configs.append(entry)
    return {"reference": reference, "metrics": order, "ci_note": CI_NOTE, "configs": configs}


def _num(v: float | None, digits: int = 4, sign: bool = False) -> str:
    if v is None:
        return "-"
    text = f"{v:+.{digits}g}" if sign else f"{v:.{digits}g}"
    return text


def mean_std_cell(stat: dict[str, Any]) -> str:
    """"0.912 +- 0.004" (or "0.912" for n = 1, "-" for none)."""
    if stat["mean"] is None:
        return "-"
    return _num(stat["mean"]) + (f" +- {_num(stat['std'], 2)}" if stat["std"] is not None else "")


def diff_cell(d: dict[str, Any]) -> str:
    """"+0.012 [-0.003, +0.027] ~" (~: the interval contains 0); "+0.012 (n=1)" without an interval."""
    if d["mean"] is None:
        return "-"
    if d["lo"] is None:
        return f"{_num(d['mean'], 3, True)} (n={d['n']})"
    mark = " ~" if d["contains_zero"] else ""
    return f"{_num(d['mean'], 3, True)} [{_num(d['lo'], 3, True)}, {_num(d['hi'], 3, True)}]{mark}"


def summary_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows of `summarize`'s result for CSV: config, runs, done, then per metric mean/std/n and, against
    the reference, diff/lo/hi/n/contains_zero."""
    out = []
    for c in summary["configs"]:
        row: dict[str, Any] = {"config": c["config"], "runs": c["runs"], "done": c["done"],
                               "seeds": " ".join(map(str, c["seeds"])),
                               "reference": c["config"] == summary["reference"]}
        for m in summary["metrics"]:
            s = c["metrics"][m]
            row.update({f"{m}_mean": s["mean"], f"{m}_std": s["std"], f"{m}_n": s["n"]})
            d = c.get("diff", {}).get(m)
            if d is not None:
                row.update({f"{m}_diff": d["mean"], f"{m}_diff_lo": d["lo"], f"{m}_diff_hi": d["hi"],
                            f"{m}_diff_n": d["n"], f"{m}_diff_contains_zero": d["contains_zero"]})
        out.append(row)
    return out


def write_summary(sweep_dir: str | Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write `summary.csv` (flat, `summary_records`) and `summary.json` atomically; returns their paths."""
    sweep_dir = Path(sweep_dir)
    csv_path, json_path = sweep_dir / "summary.csv", sweep_dir / "summary.json"
    records = summary_records(summary)
    fields = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    files.write_text(csv_path, buf.getvalue())
    files.write_json(json_path, summary, indent=2, default=str)
    return csv_path, json_path


def render_summary(summary: dict[str, Any], title: str = "configurations") -> list[Table]:
    """Two rich tables: mean +- std (n) per configuration, and the difference from the reference with its
    paired 95% CI; the captions say what the columns mean."""
    metrics = [m for m in summary["metrics"] if any(c["metrics"][m]["n"] for c in summary["configs"])]
    means = Table(title=f"{title}: mean +- std over seeds")
    means.add_column("config")
    means.add_column("n", justify="right")
    for m in metrics:
        means.add_column(escape(LABELS.get(m, (m,))[0]), justify="right")
    for c in summary["configs"]:
        n = max((c["metrics"][m]["n"] for m in metrics), default=0)
        ref = " (ref)" if c["config"] == summary["reference"] else ""
        means.add_row(c["config"] + ref, f"{n}/{c['runs']}", *[mean_std_cell(c["metrics"][m]) for m in metrics])
    means.caption = escape("; ".join(f"{LABELS[m][0]}: {LABELS[m][1]}" for m in metrics if m in LABELS))
    diffs = Table(title=escape(f"{title}: difference from {summary['reference']!r} [95% CI, paired by seed]"))
    diffs.add_column("config")
    for m in metrics:
        diffs.add_column(escape(LABELS.get(m, (m,))[0]), justify="right")
    for c in summary["configs"]:
        if "diff" in c:
            diffs.add_row(escape(c["config"]), *[escape(diff_cell(c["diff"][m])) for m in metrics])
    diffs.caption = escape(summary["ci_note"])
    return [means, diffs]

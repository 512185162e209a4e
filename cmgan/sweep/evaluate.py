"""The one seam between a finished sweep run and the evaluator: `evaluate_run(run_dir, cfg)`.

The sweep calls it right after training finished, on global rank 0 alone (the trainer has closed its process
group), on that rank's device; and stores what it
returns in `<run_dir>/metrics.json` and in the sweep's results table. Evaluation never fails a run: an
evaluator that is missing or raises yields {"available": False, "reason": ...}. The evaluator's full result
(per subject, settings) is written to `<run_dir>/eval.json`.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from cmgan.config import RunConfig

log = logging.getLogger(__name__)

HEADLINE = ("ssim", "psnr", "ssim_fg", "psnr_fg", "ssim_paper", "psnr_paper", "mi", "fid", "delta_e2000")
"""Metrics shown as columns of the sweep's table (means over slices; FID over all outputs): whole-slice,
foreground-only and the paper's definition of SSIM/PSNR side by side (see `cmgan.eval.evaluator`)."""


def headline_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The evaluator's result -> flat {"ssim": mean, "psnr": mean, "mi": mean, "fid": value, ...}."""
    metrics = result.get("metrics", {})
    flat: dict[str, Any] = {}
    for name in HEADLINE:
        value = metrics.get(name)
        if isinstance(value, dict):
            value = value.get("mean")
        if value is not None:
            flat[name] = value
    if metrics.get("fid") is None and metrics.get("fid_unavailable"):
        flat["fid_unavailable"] = metrics["fid_unavailable"]
    flat["count"] = result.get("count")
    flat["preset"] = (result.get("settings") or {}).get("eval", {}).get("preset", "default")
    return flat


def evaluate_run(run_dir: str | Path, cfg: RunConfig) -> dict[str, Any]:
    """Metrics of the finished run in `run_dir` (its generator export) on `cfg.eval.split` of the MR shards,
    FID against the color shards -> {"ssim", "psnr", "mi", "fid" | "fid_unavailable", "count", ...}; or
    {"available": False, "reason": "..."} when the evaluator or the export is missing or evaluation fails."""
    run_dir = Path(run_dir)
    try:
        from cmgan.distenv import rank_device
        from cmgan.eval.evaluator import evaluate
        from cmgan.export import load_export
    except ImportError as e:
        return {"available": False, "reason": f"the evaluator is not importable: {e}"}
    try:
        export = load_export(run_dir, rank_device())
        result = evaluate(
            export, cfg.data.mr_shards, cfg.data.color_shards, cfg.eval, out=run_dir / "eval.json"
        )
    except Exception as e:  # evaluation must not turn a trained run into a failed one
        log.warning("evaluation of %s failed: %s", run_dir, e)
        return {"available": False, "reason": f"evaluation failed: {e}", "traceback": traceback.format_exc()}
    return headline_metrics(result)

"""A person's view of an evaluation result: a rich table of the headline metrics (the JSON holds the rest)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def result_table(result: dict[str, Any]) -> Table:
    """Metric | mean | std | count rows for SSIM, PSNR, MI, CIEDE2000, tissue color spread and FID."""
    m = result["metrics"]
    s = result.get("settings", {})
    ssim = s.get("ssim", {})
    table = Table(title=f"{result.get('data')} ({result.get('split')} split): {result['count']} slices, "
                        f"{result['subjects']} subjects")
    for col in ("metric", "mean", "std", "count"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    names = {
        "ssim": f"SSIM (Y, {ssim.get('kernel', '?')} {ssim.get('window', '?')})",
        "psnr": "PSNR dB (Y)",
        "mi": "MI bits (Y)",
        "delta_e2000": "CIEDE2000 vs truth",
    }
    for key, label in names.items():
        if isinstance(m.get(key), dict):
            row = m[key]
            table.add_row(label, _fmt(row["mean"]), _fmt(row["std"]), str(row["count"]))
    for key, label in (("color_spread", "tissue color spread"), ("color_spread_truth", "  (truth's own)")):
        if isinstance(m.get(key), dict):
            row = m[key]["all"]
            table.add_row(label, _fmt(row["mean"]), _fmt(row["std"]), str(row["count"]))
    if m.get("fid") is not None:
        table.add_row(f"FID ({s.get('fid', {}).get('dims', 2048)}-d)", _fmt(m["fid"], 3), "", str(m["fid_count"]))
    else:
        table.add_row("FID", "unavailable", "", "")
        table.caption = f"FID: {m.get('fid_unavailable')}"
    return table

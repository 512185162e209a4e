"""Done-markers: a volume counts as colorized only when its marker says so and everything it names still holds.

`<out>/<key>.colorize.json` is written (atomically) after every output of the volume was written, verified and
renamed into place; before a volume is redone its marker is deleted first, so a run killed at any point leaves
either a marker that tells the truth or no marker (and the volume is redone).

    {"format": "cmgan-colorize-marker", "version": 1, "input": "...", "input_sha256": "...", "model_id": "...",
     "settings": {...}, "outputs": {"nifti": {"path": "sub-01_T1w.nii.gz", "bytes": 123}, ...},
     "slices": 96, "seconds": {...}, "consistency": {...}, "finished_at": "..."}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "cmgan-colorize-marker"
VERSION = 1
SUFFIX = ".colorize.json"


def marker_path(out: Path, key: str) -> Path:
    return Path(out) / f"{key}{SUFFIX}"


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker at `path`, or None when it is missing, unreadable or of another format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        return None
    return data


def why_not_done(marker: dict[str, Any] | None, *, input_sha256: str, model_id: str, settings: dict[str, Any],
                 formats: tuple[str, ...], out: Path) -> str | None:
    """None when the marker proves the volume done for these inputs, model, settings and formats; else the reason
    it must be (re)done."""
    if marker is None:
        return "no marker"
    if marker.get("input_sha256") != input_sha256:
        return "input changed"
    if marker.get("model_id") != model_id:
        return "model changed"
    if marker.get("settings") != settings:
        return "settings changed"
    outputs = marker.get("outputs", {})
    for fmt in formats:
        entry = outputs.get(fmt)
        if entry is None:
            return f"no {fmt} output yet"
        path = Path(out) / entry["path"]
        if not path.exists():
            return f"{fmt} output missing"
        if path.is_file() and path.stat().st_size != entry.get("bytes"):
            return f"{fmt} output changed size"
    return None

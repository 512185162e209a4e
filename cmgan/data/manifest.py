"""`manifest.json` of a shard directory (written by `python -m shards build`, read by verify and the loaders).

    {
      "format": "cmgan-shards", "version": 1, "domain": "mr" | "color", "size": 256, "axis": 2,
      "min_foreground": 0.01, "crop_margin": 0.05 | null, "image_key": "mr.npy" | "rgb.npy", "background": -1 | 0,
      "normalization": {...} | null,          # cmgan.data.intensity.Normalization.to_dict() (MR only)
      "members": ["mask.npy", "meta.json", "mr.npy", ...],   # members the samples carry
      "label_names": [...] | null, "label_values": [0, 1, ...] | null,   # when labels were given
      "split_fractions": [0.8, 0.1, 0.1],
      "splits": {"train": [subject, ...], "val": [...], "test": [...]},   # salted pseudonyms; by subject, disjoint
      "volumes": {volume: {"subject", "split", "samples", "labelled", "truth", "shape", "spacing", "source_sha256"}},
      "counts": {"subjects": n, "volumes": n, "samples": n, "train": n, "val": n, "test": n},  # samples per split
      "shards": [{"name": "train-000000.tar", "split": "train", "samples": n, "bytes": n, "sha256": hex}],
      "zarr": {"path": "volumes.zarr", "arrays": ["image", "label", "mask", "truth"]} | null,
      "errors": [{"source_id": "src<hex>", "problem": "..."}]    # failed inputs (salted id; paths are not stored)
    }
A volume id is its subject's pseudonym, or `<subject>v<n>` when a subject has several volumes; sample keys are
`<volume>_<slice:04d>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmgan import files

FORMAT = "cmgan-shards"
VERSION = 1
NAME = "manifest.json"


class ManifestError(ValueError):
    """A shard directory has no readable manifest."""


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / NAME
    files.write_json(path, manifest, indent=1)
    return path


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """The manifest of a shard directory; ManifestError names the file and the problem."""
    path = Path(shard_dir) / NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing (not a shard directory written by `python -m shards build`)") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ManifestError(f"{path}: manifest version {manifest.get('version')}, this code reads {VERSION}")
    return manifest

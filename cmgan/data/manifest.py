"""`manifest.json` of a shard directory (written by `python -m shards build`, read by verify and the loaders).

    {
      "format": "cmgan-shards", "version": 1, "domain": "mr" | "color", "size": 256, "axis": 2,
      "min_foreground": 0.01, "crop_margin": 0.05 | null, "image_key": "mr.npy" | "rgb.npy", "background": -1 | 0,
      "normalization": {...} | null,          # cmgan.data.normalize.Normalization.to_dict() (MR only)
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

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "cmgan-shards"
VERSION = 1
NAME = "manifest.json"


class ManifestError(ValueError):
    """A shard directory has no readable manifest."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / NAME
    write_atomic(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
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

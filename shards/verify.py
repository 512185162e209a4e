"""`python -m shards verify DIR`: re-read every shard and the Zarr store against the manifest; list every problem.

Checks: the manifest is readable and records no build errors; every listed shard exists with its sha256, byte
size and sample count; every tar member belongs to the schema and decodes safely (never unpickled); every sample
has its image, mask and meta (label where the volume is labelled, truth where the manifest says so), matches
`schema.check_member` at the manifest's size, has its background where the mask is 0, and meta that agrees with
its key, shard split and the manifest; keys are unique; counts per volume and split match; splits are disjoint;
no unlisted `.tar` lies beside the manifest; the Zarr store holds each volume with the right shapes, value ranges
and as many non-empty slices as the shards hold samples. Problems name the file and the sample key.
"""

from __future__ import annotations

import tarfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cmgan.data import schema
from cmgan.data.codec import DecodeError, decode_sample
from cmgan.data.manifest import ManifestError, read_manifest
from cmgan.data.slicing import is_empty_slice, take_slice
from cmgan.files import sha256_file


def verify(shard_dir: str | Path) -> list[str]:
    """Every problem found in the shard directory (empty list: all good)."""
    root = Path(shard_dir)
    try:
        manifest = read_manifest(root)
    except ManifestError as e:
        return [str(e)]
    problems: list[str] = []
    mpath = root / "manifest.json"
    for err in manifest.get("errors", []):
        problems.append(f"{mpath}: the build failed on input {err.get('source_id')}: {err.get('problem')}")
    volumes: dict[str, Any] = manifest.get("volumes", {})
    splits: dict[str, list[str]] = manifest.get("splits", {})
    seen_subjects: dict[str, str] = {}
    for split, subjects in splits.items():
        for s in subjects:
            if s in seen_subjects:
                problems.append(f"{mpath}: subject {s} is in both {seen_subjects[s]} and {split}")
            seen_subjects[s] = split

    per_volume: Counter[str] = Counter()
    per_split: Counter[str] = Counter()
    keys: dict[str, str] = {}
    listed = set()
    for shard in manifest.get("shards", []):
        listed.add(shard["name"])
        problems += _verify_shard(root, shard, manifest, volumes, per_volume, per_split, keys)
    for p in sorted(root.glob("*.tar")):
        if p.name not in listed:
            problems.append(f"{p}: shard not listed in the manifest")

    counts = manifest.get("counts", {})
    for split in schema.SPLITS:
        if per_split[split] != counts.get(split, 0):
            problems.append(f"{mpath}: split {split} lists {counts.get(split, 0)} samples, the shards hold "
                            f"{per_split[split]}")
    for vid, info in volumes.items():
        if per_volume[vid] != info.get("samples"):
            problems.append(f"{mpath}: volume {vid} lists {info.get('samples')} samples, the shards hold "
                            f"{per_volume[vid]}")
        if info.get("subject") not in splits.get(info.get("split"), []):
            problems.append(f"{mpath}: volume {vid}: subject {info.get('subject')} missing from split "
                            f"{info.get('split')}")
    if manifest.get("zarr"):
        problems += _verify_zarr(root, manifest)
    return problems


def _verify_shard(root: Path, shard: dict[str, Any], manifest: dict[str, Any], volumes: dict[str, Any],
                  per_volume: Counter, per_split: Counter, keys: dict[str, str]) -> list[str]:
    path = root / shard["name"]
    if not path.exists():
        return [f"{path}: listed in the manifest but missing"]
    problems = []
    if path.stat().st_size != shard.get("bytes"):
        problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {shard.get('bytes')}")
    if sha256_file(path) != shard.get("sha256"):
        problems.append(f"{path}: sha256 differs from the manifest (modified or corrupted)")
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isreg():
                    problems.append(f"{path}: member {info.name!r} is not a regular file")
                    continue
                key, _, member = info.name.partition(".")
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                f = tar.extractfile(info)
                samples[key][member] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"{path}: unreadable tar after {len(order)} samples ({type(e).__name__}: {e})")
    if len(order) != shard.get("samples"):
        problems.append(f"{path}: {len(order)} samples, the manifest says {shard.get('samples')}")
    for key in order:
        problems += [f"{path}: {p}" for p in _verify_sample(key, samples[key], shard["split"], manifest, volumes)]
        if key in keys:
            problems.append(f"{path}: sample {key!r} also in {keys[key]}")
        keys[key] = shard["name"]
        vid = key.rsplit("_", 1)[0]
        per_volume[vid] += 1
        per_split[shard["split"]] += 1
    return problems


def _verify_sample(key: str, raw: dict[str, bytes], split: str, manifest: dict[str, Any],
                   volumes: dict[str, Any]) -> list[str]:
    domain = manifest["domain"]
    size = manifest["size"]
    problems = []
    sample: dict[str, Any] = {"__key__": key}
    for name, data in raw.items():  # member by member, so that every bad member is reported
        try:
            sample.update(decode_sample({"__key__": key, name: data}, strict=True))
        except DecodeError as e:
            problems.append(str(e))
    if problems:
        return problems
    image_key = schema.IMAGE_KEY[domain]
    vid = key.rsplit("_", 1)[0]
    info = volumes.get(vid)
    if info is None:
        return [f"sample {key!r}: volume {vid!r} not in the manifest"]
    need = {image_key, schema.MASK_KEY, schema.META_KEY}
    if info.get("labelled"):
        need.add(schema.LABEL_KEY)
    if info.get("truth"):
        need.add(schema.TRUTH_KEY)
    allowed = need | ({schema.LABEL_KEY, schema.TRUTH_KEY} if domain == "mr" else set())
    for name in sorted(need - set(sample)):
        problems.append(f"sample {key!r}: member {name!r} missing")
    for name in sorted(set(sample) - allowed - {"__key__"}):
        problems.append(f"sample {key!r}: member {name!r} does not belong to a {domain} sample")
    for name, value in sample.items():
        if name in schema.MEMBERS:
            try:
                schema.check_member(key, name, value, size)
            except schema.SchemaError as e:
                problems.append(str(e))
    if problems:
        return problems
    mask = sample[schema.MASK_KEY]
    image = sample[image_key]
    bg = schema.BACKGROUND[domain]
    if (image[mask == 0] != bg).any():
        problems.append(f"sample {key!r}: {image_key} differs from the background {bg} outside the mask")
    if schema.LABEL_KEY in sample:
        label = sample[schema.LABEL_KEY]
        if (label[mask == 0] != 0).any():
            problems.append(f"sample {key!r}: label is not 0 outside the mask")
        allowed_values = set(manifest.get("label_values") or [])
        extra = set(np.unique(label).tolist()) - allowed_values
        if extra:
            problems.append(f"sample {key!r}: label values {sorted(extra)} not in the manifest's "
                            f"{sorted(allowed_values)}")
    meta = sample[schema.META_KEY]
    missing = [f for f in schema.META_FIELDS if f not in meta]
    if missing:
        problems.append(f"sample {key!r}: meta.json lacks {missing}")
        return problems
    if meta["split"] != split:
        problems.append(f"sample {key!r}: meta split {meta['split']!r} but stored in a {split} shard")
    if meta["domain"] != domain:
        problems.append(f"sample {key!r}: meta domain {meta['domain']!r}, the manifest says {domain!r}")
    if meta["subject"] != info.get("subject") or info.get("split") != split:
        problems.append(f"sample {key!r}: meta subject/split disagree with the manifest")
    try:
        if schema.slice_key(meta.get("volume", meta["subject"]), int(meta["slice"])) != key:
            problems.append(f"sample {key!r}: key does not match meta volume/slice")
    except (ValueError, TypeError) as e:
        problems.append(f"sample {key!r}: bad meta ({e})")
    return problems


def _verify_zarr(root: Path, manifest: dict[str, Any]) -> list[str]:
    import zarr

    path = root / manifest["zarr"]["path"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            store = zarr.open_group(str(path), mode="r", use_consolidated=True)
    except Exception as e:
        return [f"{path}: unreadable Zarr store ({type(e).__name__}: {e})"]
    problems = []
    axis = manifest["axis"]
    threshold = manifest.get("min_foreground", 0.01)
    for vid, info in manifest.get("volumes", {}).items():
        where = f"{path}/{vid}"
        try:
            group = store[vid]
            image = np.asarray(group["image"][...])
            mask = np.asarray(group["mask"][...])
            label = np.asarray(group["label"][...]) if info.get("labelled") else None
        except Exception as e:
            problems.append(f"{where}: missing or unreadable ({type(e).__name__}: {e})")
            continue
        shape = tuple(info.get("shape", ()))
        for name, arr in (("image", image), ("mask", mask), ("label", label)):
            if arr is not None and arr.shape != shape:
                problems.append(f"{where}/{name}: shape {arr.shape}, the manifest says {shape}")
        if problems and problems[-1].startswith(where):
            continue
        if not np.isfinite(image).all() or image.min() < -1 or image.max() > 1:
            problems.append(f"{where}/image: values outside [-1, 1] or not finite")
        if (image[mask == 0] != -1).any():
            problems.append(f"{where}/image: not -1 outside the mask")
        if group.attrs.get("subject") != info.get("subject") or group.attrs.get("split") != info.get("split"):
            problems.append(f"{where}: attributes subject/split disagree with the manifest")
        if "affine" not in group.attrs or np.asarray(group.attrs["affine"]).shape != (4, 4):
            problems.append(f"{where}: attribute 'affine' missing or not 4x4")
        nonempty = sum(not is_empty_slice(take_slice(mask, axis, k), threshold) for k in range(mask.shape[axis]))
        if nonempty != info.get("samples"):
            problems.append(f"{where}: {nonempty} non-empty slices, the shards hold {info.get('samples')} samples")
    return problems

"""Which shards and samples of a split each process reads.

- `split_shards`: a split's shard files, from the manifest (names checked: never a `pipe:` URL, never outside
  the directory).
- `assign_shards`: the training streams' dealing of shards to `world_size * num_workers` slots (disjoint slots
  whose union is the split).
- `read_split`, `split_range`, `split_size`: the ordered reader of evaluation and segmentation validation, the
  split's samples in manifest order cut into contiguous rank blocks.
- `labelled_volumes`, `all_labelled`, `shards_with_labels`: which volumes and shards of a split carry labels.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cmgan.data import schema
from cmgan.data.codec import DecodeError, decode_sample
from cmgan.data.manifest import read_manifest

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.tar$")


class DataError(ValueError):
    """The shard directory cannot feed this loader (missing split, wrong domain, unsafe shard name...)."""




def split_shards(shard_dir: str | Path, split: str, domain: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """Absolute paths of the shards of `split` (manifest order) and the manifest; DataError if unusable."""
    root = Path(shard_dir).resolve()
    manifest = read_manifest(root)
    if domain is not None and manifest["domain"] != domain:
        raise DataError(f"{root}: holds the {manifest['domain']!r} domain, expected {domain!r}")
    urls = []
    for s in manifest["shards"]:
        # Names come from a file: never let one become a "pipe:" URL or escape the directory.
        if not _SHARD_NAME.match(s["name"]):
            raise DataError(f"{root}/manifest.json: unsafe shard name {s['name']!r}")
        if s["split"] == split:
            urls.append(str(root / s["name"]))
    if not urls:
        raise DataError(f"{root}: no shards in split {split!r} (the manifest has {manifest['counts']})")
    return urls, manifest


def sample_counts(urls: list[str], manifest: dict[str, Any]) -> tuple[int, ...]:
    """The manifest's sample count of each shard of `urls` (0 where it does not say)."""
    by_name = {s["name"]: int(s.get("samples", 0)) for s in manifest["shards"]}
    return tuple(by_name.get(Path(url).name, 0) for url in urls)


def assign_shards(urls: list[str], n_slots: int, seed: int) -> list[list[str]]:
    """Deal shards to slots: a seeded permutation, then round-robin; disjoint, union = `urls`.

    With fewer shards than slots, slot s reads shard s mod n (slots share shards; not disjoint).
    """
    order = [urls[i] for i in np.random.default_rng([seed, 7919]).permutation(len(urls))]
    if len(order) >= n_slots:
        return [order[s::n_slots] for s in range(n_slots)]
    log.warning("%d shards for %d rank x worker slots: slots share shards; build with a smaller --max-count",
                len(order), n_slots)
    return [[order[s % len(order)]] for s in range(n_slots)]




def all_labelled(manifest: dict[str, Any], split: str) -> bool:
    vols = [v for v in manifest.get("volumes", {}).values() if v.get("split") == split]
    return bool(vols) and all(v.get("labelled") for v in vols)


def labelled_volumes(manifest: dict[str, Any], split: str) -> tuple[int, int]:
    """(labelled, unlabelled) volume counts of `split` in a shard manifest."""
    vols = [v for v in manifest.get("volumes", {}).values() if v.get("split") == split]
    labelled = sum(1 for v in vols if v.get("labelled"))
    return labelled, len(vols) - labelled


def shards_with_labels(urls: list[str]) -> list[str]:
    """The shards holding at least one label member (tar headers only; an unreadable shard is kept, so the
    stream's skipper reports it)."""
    keep = []
    for url in urls:
        try:
            with tarfile.open(url, "r:") as tar:
                if any(name.endswith("." + schema.LABEL_KEY) for name in tar.getnames()):
                    keep.append(url)
        except (tarfile.TarError, OSError, EOFError):
            keep.append(url)
    return keep




def split_range(n: int, rank: int, world_size: int, align: int = 1) -> tuple[int, int]:
    """[start, stop) of rank's contiguous block of n items; blocks are disjoint and cover 0..n-1.

    align > 1 cuts blocks only at multiples of `align` (the last block takes the remainder). The evaluator aligns
    to its batch size: convolution results depend slightly on which images share a batch (measured on the demo
    generator: up to 1e-4 in fp32, 6e-3 in bf16), so with aligned blocks slice i lands in the same batch
    [i // B * B, ...) for any number of ranks and every output is computed identically.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
    if align < 1:
        raise DataError(f"align={align} must be >= 1")
    units = -(-n // align)
    first, last = units * rank // world_size, units * (rank + 1) // world_size
    return min(first * align, n), min(last * align, n)


def split_size(shard_dir: str | Path, split: str, rank: int = 0, world_size: int = 1) -> int:
    """How many samples `read_split` gives this rank (from the manifest; all ranks can agree on batch counts)."""
    manifest = read_manifest(shard_dir)
    n = sum(s["samples"] for s in manifest["shards"] if s["split"] == split)
    start, stop = split_range(n, rank, world_size)
    return stop - start


def read_split(shard_dir: str | Path, split: str, rank: int = 0, world_size: int = 1,
               keys: tuple[str, ...] | None = None, *, align: int = 1, limit: int = 0,
               strict: bool = False) -> Iterator[dict[str, Any]]:
    """Ordered, deterministic samples of one split (no shuffle, no resampling, no augmentation).

    The split's samples in manifest order (the first `limit` only, when limit > 0) are cut into `world_size`
    contiguous blocks, at multiples of `align` (see `split_range`); this rank reads block `rank` (ranks are
    disjoint and together cover every sample exactly once). Whole shards before the block are skipped without
    reading. keys: members to decode (default: all known members present), e.g. ("mr.npy", "truth.npy",
    "meta.json"). Yields {"__key__": str, member: np.ndarray | dict}; arrays as stored (schema dtypes). Corrupt
    samples and unreadable shards are logged and skipped, or with strict=True raise DataError naming the shard
    (and the sample) (evaluation must not quietly measure a subset).
    """
    urls, manifest = split_shards(shard_dir, split)
    counts = [s["samples"] for s in manifest["shards"] if s["split"] == split]
    n = min(limit, sum(counts)) if limit else sum(counts)
    start, stop = split_range(n, rank, world_size, align)
    offset = 0
    for url, count in zip(urls, counts):
        if offset + count <= start or offset >= stop:
            offset += count
            continue
        seen, complete = 0, True
        try:
            with tarfile.open(url, "r:") as tar:
                for index, (key, members) in enumerate(_tar_samples(tar)):
                    seen = index + 1
                    if offset + index < start:
                        continue
                    if offset + index >= stop:
                        break
                    try:
                        sample = decode_sample({"__key__": key, **members}, keep=keys)
                        for name, value in sample.items():
                            if name in schema.MEMBERS:
                                schema.check_member(key, name, value, manifest["size"])
                    except (DecodeError, schema.SchemaError) as e:
                        if strict:  # an evaluation must not measure a subset without saying so
                            raise DataError(f"{url}: {e}; check it with `python -m shards verify`") from None
                        log.warning("%s: skipped: %s", url, e)
                        continue
                    yield sample
                else:  # read to the end: did the archive end, or was it cut?
                    complete = seen == count and _has_end_marker(tar, url)
        except (tarfile.TarError, OSError, EOFError) as e:
            if strict:
                raise DataError(f"{url}: unreadable shard ({type(e).__name__}: {e}); "
                                "check it with `python -m shards verify`") from None
            log.warning("%s: unreadable shard, rest of it skipped (%s)", url, e)
        if not complete:
            problem = f"truncated shard: it ends after {seen} of its {count} samples, without tar's end marker"
            if strict:
                raise DataError(f"{url}: {problem}; check it with `python -m shards verify`")
            log.warning("%s: %s", url, problem)
        offset += count


def _has_end_marker(tar: Any, url: str) -> bool:
    """Whether the archive holds tar's end-of-archive marker (two zero blocks) after its last member. tarfile
    stops silently at a header cut short, so without this a shard cut between members reads as a shorter one."""
    with open(url, "rb") as f:
        f.seek(tar.offset)
        return f.read(1024) == bytes(1024)


def _tar_samples(tar: Any) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) of consecutive members sharing a key."""
    key, members = None, {}
    for info in tar:
        if not info.isreg():
            continue
        k, _, name = info.name.partition(".")
        if k != key and key is not None:
            yield key, members
            members = {}
        key = k
        f = tar.extractfile(info)
        members[name] = f.read() if f is not None else b""
    if key is not None:
        yield key, members

"""The evaluator's input: a split's slices, read in manifest order, cut into batch-aligned rank shares.

`read_samples` is `cmgan.data.pipeline.read_split` (same shard list, safe decoding, schema checks; a corrupt
sample is logged with its key and skipped) with one difference: each rank's contiguous share of the split starts
on a multiple of the batch size (`batch_range`), so every slice is colorized in the same batch for any number
of ranks. `mr_batches` / `rgb_batches` turn decoded samples into tensors.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmgan.data import schema

log = logging.getLogger(__name__)

MR_MEMBERS = (schema.MR_KEY, schema.MASK_KEY, schema.LABEL_KEY, schema.TRUTH_KEY, schema.META_KEY)
"""Members the evaluator decodes from MR samples (those present)."""


def batch_range(n: int, rank: int, world_size: int, batch_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items, cut at multiples of batch_size.

    Why aligned: convolution kernels give results that depend on which images share a batch (measured on the
    demo generator here: up to 1e-4 in fp32, 6e-3 in bf16). When every rank's share starts on a multiple of batch_size, slice i always lands in the
    batch [i // B * B, ...) whatever the number of ranks, so each output is computed identically.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    units = -(-n // batch_size)
    first, last = units * rank // world_size, units * (rank + 1) // world_size
    return min(first * batch_size, n), min(last * batch_size, n)


def _tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) of consecutive tar members sharing a key (WebDataset's grouping)."""
    key, members = None, {}
    with tarfile.open(path, "r:") as tar:
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


def read_samples(
    shard_dir: str | Path, split: str, rank: int, world_size: int, members: tuple[str, ...], batch_size: int,
    limit: int = 0,
) -> Iterator[dict[str, Any]]:
    """This rank's decoded samples of a split: `batch_range` of the split in manifest order (the first `limit`
    samples only, when limit > 0). Shards outside the range are not opened; samples before it are not decoded.

    Like `cmgan.data.pipeline.read_split` (same shard list, safe decoding, schema checks; a corrupt sample is
    logged with its key and skipped), but cut at batch boundaries (see `batch_range`), and an unreadable shard
    is an error naming it (a silently shorter test set would change the metrics).
    """
    from cmgan.data.codec import DecodeError, decode_sample
    from cmgan.data.pipeline import split_shards

    urls, manifest = split_shards(shard_dir, split)
    counts = [s["samples"] for s in manifest["shards"] if s["split"] == split]
    n = sum(counts) if not limit else min(limit, sum(counts))
    start, stop = batch_range(n, rank, world_size, batch_size)
    offset = 0
    for url, count in zip(urls, counts):
        if offset + count <= start or offset >= stop:
            offset += count
            continue
        try:
            for index, (key, raw) in enumerate(_tar_samples(url), start=offset):
                if index >= stop:
                    break
                if index < start:
                    continue
                try:
                    sample = decode_sample({"__key__": key, **raw}, keep=members)
                    for name, value in sample.items():
                        if name in schema.MEMBERS:
                            schema.check_member(key, name, value, manifest["size"])
                except (DecodeError, schema.SchemaError) as e:
                    log.warning("%s: skipped: %s", url, e)
                    continue
                yield sample
        except (tarfile.TarError, OSError, EOFError) as e:
            # Unlike training, evaluation must not quietly measure a subset: name the shard and stop.
            raise ValueError(
                f"{url}: unreadable shard ({type(e).__name__}: {e}); check it with `python -m shards verify`"
            ) from None
        offset += count


@dataclass
class SliceBatch:
    """Slices to evaluate, in reading order.

    mr: (B, 1, H, W) float32 in [-1, 1]; mask: (B, H, W) bool or None; label: (B, H, W) int64 or None;
    truth: (B, H, W, 3) uint8 or None (the demo's true color rendering).
    """

    keys: list[str]
    subjects: list[str]
    mr: torch.Tensor
    mask: torch.Tensor | None = None
    label: torch.Tensor | None = None
    truth: torch.Tensor | None = None


def subject_of(sample: dict[str, Any]) -> str:
    """The subject pseudonym of a decoded sample: meta.json's, else the key before its slice number."""
    meta = sample.get(schema.META_KEY)
    if isinstance(meta, dict) and meta.get("subject"):
        return str(meta["subject"])
    return str(sample["__key__"]).rsplit("_", 1)[0]


def mr_batches(samples: Iterable[dict[str, Any]], batch_size: int) -> Iterator[SliceBatch]:
    """Decoded MR samples (schema members as arrays) -> SliceBatch; ValueError names a sample that does not fit.

    A batch holds slices of one size (a size change starts a new batch). mask/label/truth are kept only when
    every slice of the batch has them.
    """
    pending: list[dict[str, Any]] = []

    def flush() -> SliceBatch:
        def stack(name: str, dtype: torch.dtype | None = None) -> torch.Tensor | None:
            if not all(name in s for s in pending):
                return None
            t = torch.stack([torch.from_numpy(np.ascontiguousarray(s[name])) for s in pending])
            return t if dtype is None else t.to(dtype)

        keys = [str(s["__key__"]) for s in pending]
        return SliceBatch(
            keys=keys,
            subjects=[subject_of(s) for s in pending],
            mr=stack(schema.MR_KEY, torch.float32).unsqueeze(1),
            mask=None if (m := stack(schema.MASK_KEY)) is None else m.bool(),
            label=stack(schema.LABEL_KEY, torch.int64),
            truth=stack(schema.TRUTH_KEY),
        )

    for sample in samples:
        key = sample.get("__key__", "?")
        if schema.MR_KEY not in sample:
            raise ValueError(f"sample {key!r} has no {schema.MR_KEY} (is this an MR shard directory?)")
        mr = np.asarray(sample[schema.MR_KEY])
        if mr.ndim != 2:
            raise ValueError(f"sample {key!r}: {schema.MR_KEY} has shape {mr.shape}, expected (H, W)")
        for name in (schema.MASK_KEY, schema.LABEL_KEY, schema.TRUTH_KEY):
            if name in sample and np.asarray(sample[name]).shape[:2] != mr.shape:
                raise ValueError(
                    f"sample {key!r}: {name} has shape {np.asarray(sample[name]).shape}, the image {mr.shape}"
                )
        if pending and (len(pending) == batch_size or pending[0][schema.MR_KEY].shape != mr.shape):
            yield flush()
            pending = []
        pending.append(sample)
    if pending:
        yield flush()


def rgb_batches(samples: Iterable[dict[str, Any]], batch_size: int) -> Iterator[torch.Tensor]:
    """Decoded color samples -> (B, 3, H, W) uint8 batches of one size each."""
    pending: list[np.ndarray] = []
    for sample in samples:
        rgb = np.asarray(sample.get(schema.RGB_KEY))
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"sample {sample.get('__key__', '?')!r}: {schema.RGB_KEY} is not (H, W, 3) uint8")
        if pending and (len(pending) == batch_size or pending[0].shape != rgb.shape):
            yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2)
            pending = []
        pending.append(rgb)
    if pending:
        yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2)

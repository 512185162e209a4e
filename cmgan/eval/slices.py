"""The evaluator's input: a split's slices, read in manifest order, cut into batch-aligned rank shares.

`read_samples` is `cmgan.data.splits.read_split` with each rank's contiguous share of the split starting on a
multiple of the batch size (`batch_range`), so every slice is colorized in the same batch for any number of
ranks, and with unreadable shards as errors. `mr_batches` / `rgb_batches` turn decoded samples into tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmgan.data import schema
from cmgan.data.splits import read_split, split_range

log = logging.getLogger(__name__)

MR_MEMBERS = (schema.MR_KEY, schema.MASK_KEY, schema.LABEL_KEY, schema.TRUTH_KEY, schema.META_KEY)
"""Members the evaluator decodes from MR samples (those present)."""


def batch_range(n: int, rank: int, world_size: int, batch_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items, cut at multiples of batch_size (see
    `cmgan.data.splits.split_range`: then every slice is colorized in the same batch for any number of ranks)."""
    return split_range(n, rank, world_size, align=batch_size)


def read_samples(
    shard_dir: str | Path, split: str, rank: int, world_size: int, members: tuple[str, ...], batch_size: int,
    limit: int = 0,
) -> Iterator[dict[str, Any]]:
    """This rank's decoded samples of a split (the first `limit` only, when limit > 0), in manifest order, cut
    at batch boundaries; an unreadable shard is a ValueError naming it (a silently shorter test set would change
    the metrics). A thin call of `cmgan.data.splits.read_split`."""
    return read_split(shard_dir, split, rank, world_size, keys=members, align=batch_size, limit=limit, strict=True)


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

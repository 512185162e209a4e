"""The training streams over the shards: unpaired MR + color batches for the CycleGAN, labelled MR batches for
the segmentation U-Net. (The ordered reader of evaluation is `cmgan.data.splits.read_split`.)

Training stream, per domain, inside each DataLoader worker (a chain of small stages; the stage's module in
brackets):

    slot shards [splits] -> open -> tar members (webdataset) -> samples, bad shards noted [tarstream]
      -> shuffle buffer [shuffle]
      -> [skip: exact resume] -> safe decode + schema check (bad samples skipped, counted, logged with their key)
      -> batch -> augment [augment]

Node and worker splitting: the split's shards are permuted once by the seed and dealt round-robin to the
`world_size * num_workers` slots (slot = rank * num_workers + worker), so slots read disjoint shards whose union is
the split. Each slot cycles through its own shards forever, in a new seeded order every pass, so every rank can
run exactly as many steps as the trainer asks (unequal counts would hang DDP). Build shard sets with at least
`world_size * num_workers` shards per split (`--max-count`); with fewer, slots share shards (logged).

Reproducibility and resume: every random choice (shard order, shuffle buffer, augmentation) is seeded from
(seed, restarts, slot, domain); augmentation is keyed on the sample's position in the slot's stream. `state()`
returns a small JSON-able dict to store in the checkpoint; pass it back as `start_state`:
- `resume="reseed"` (default): the restart counter is incremented and folded into every seed. The resumed stream is
  reproducible for (seed, state) and does not replay the sequence seen before the restart; it is not the stream an
  uninterrupted run would have seen.
- `resume="exact"`: each worker fast-forwards its raw sample stream (through the shuffle buffer, without decoding)
  to where the consumed batches ended, and workers keep their round-robin turn: the resumed batches are identical
  to an uninterrupted run's. Costs reading the consumed samples' bytes once at start-up; requires the same
  `num_workers`, batch size and shards.

Iterating a stream again continues it (one underlying iterator); `close()` stops its workers.

Batches (torch, CPU):
    "mr": (B, 1, H, W) float32 in [-1, 1] (background -1);  "mr_mask": (B, 1, H, W) float32 in {0, 1}
    "mr_label": (B, H, W) int64 (only when every volume of the split is labelled);  "mr_keys": list[str]
    "color": (B, 3, H, W) float32 in [-1, 1] (background -1); "color_mask"; "color_keys"
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cmgan.config import AugmentConfig, DataConfig
from cmgan.data import schema
from cmgan.data.augment import augment_batch
from cmgan.data.codec import DecodeError, decode_sample
from cmgan.data.shuffle import shuffle_buffer
from cmgan.data.splits import (
    DataError,
    all_labelled,
    assign_shards,
    labelled_volumes,
    sample_counts,
    shards_with_labels,
    split_shards,
)
from cmgan.data.tarstream import Skipper, raw_samples

log = logging.getLogger(__name__)

RESUME_MODES = ("reseed", "exact")


# ---------------------------------------------------------------------------------------------- decode


def decode_checked(raw: dict[str, Any], domain: str, size: int, label: bool) -> dict[str, Any]:
    """Decode a raw sample safely and check it against the schema; DecodeError/SchemaError if unusable."""
    image_key = schema.IMAGE_KEY[domain]
    keep = (image_key, schema.MASK_KEY) + ((schema.LABEL_KEY,) if label else ())
    sample = decode_sample(raw, keep=keep)
    key = sample["__key__"]
    for name in keep:
        if name not in sample:
            raise DecodeError(f"sample {key!r} ({raw.get('__url__', '?')}): member {name!r} missing")
        schema.check_member(key, name, sample[name], size)
    return sample


def _to_tensor(sample: dict[str, Any], domain: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if domain == "mr":
        image = torch.from_numpy(sample[schema.MR_KEY].astype(np.float32))[None]
    else:
        image = torch.from_numpy(sample[schema.RGB_KEY]).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    mask = torch.from_numpy(sample[schema.MASK_KEY]).float()[None]
    label = torch.from_numpy(sample[schema.LABEL_KEY].astype(np.int64)) if schema.LABEL_KEY in sample else None
    return image, mask, label


# ---------------------------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _Domain:
    """Everything a worker needs to stream one domain (picklable)."""

    name: str  # output prefix: "mr" | "color"
    domain: str
    urls: tuple[str, ...]
    manifest_size: int
    label: bool
    classes: int = 0
    """Labels must lie in [0, classes) (0: unchecked); checked here on the CPU, where a bad value names its sample
    (on a GPU it would be an opaque device-side assert inside the loss)."""
    samples: tuple[int, ...] = ()
    """The manifest's sample count of each shard of `urls` (empty: unchecked): a shard that ends early is reported."""


class _BatchStream(IterableDataset):
    """Yields collated, augmented batches of one or more domains from the slot of this rank and worker."""

    def __init__(self, domains: list[_Domain], rank: int, world_size: int, num_workers: int, seed: int,
                 restarts: int, batch_size: int, image_size: int, shuffle_buffer: int, augment: AugmentConfig,
                 batches_done: int, positions: dict[int, dict[str, int]] | None) -> None:
        super().__init__()
        self.domains = domains
        self.rank, self.world_size = rank, world_size
        self.workers = max(1, num_workers)
        self.seed, self.restarts = seed, restarts
        self.batch_size, self.image_size = batch_size, image_size
        self.shuffle_buffer, self.augment = shuffle_buffer, augment
        self.batches_done = batches_done
        self.positions = positions or {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        # Exact resume: the DataLoader starts at physical worker 0, so physical worker i plays the logical worker
        # whose turn comes i batches after the last one consumed.
        logical = (physical + self.batches_done) % self.workers
        slot = self.rank * self.workers + logical
        n_slots = self.world_size * self.workers
        streams = {}
        skippers = {}
        for d_index, d in enumerate(self.domains):
            seed = (self.seed, self.restarts, slot, d_index)
            urls = assign_shards(list(d.urls), n_slots, self.seed + d_index)[slot]
            skippers[d.name] = Skipper()
            streams[d.name] = self._batches(d, urls, seed, self.positions.get(logical, {}).get(d.name, 0),
                                            skippers[d.name])
        while True:
            out: dict[str, Any] = {}
            pos = {}
            for name, stream in streams.items():
                batch, pos[name] = next(stream)
                out.update(batch)
            out["_worker"] = logical
            out["_pos"] = pos
            out["_skipped"] = {name: s.count for name, s in skippers.items()}
            out["_skip_notes"] = [note for s in skippers.values() for note in s.drain()]
            yield out

    def _batches(self, d: _Domain, urls: list[str], seed: tuple[int, ...], skip: int, skipper: Skipper
                 ) -> Iterator[tuple[dict[str, Any], int]]:
        samples = dict(zip(d.urls, d.samples))
        raw = shuffle_buffer(raw_samples(urls, seed, skipper, samples), self.shuffle_buffer,
                             random.Random(str(seed)))
        position = 0
        for _ in range(skip):  # exact resume: replay raw samples (no decoding) to restore the shuffle buffer
            next(raw)
            position += 1
        batch: list[tuple[dict[str, Any], int]] = []
        bad_run = 0
        for sample in raw:
            index = position
            position += 1
            if d.label and schema.LABEL_KEY not in sample:
                continue  # a slice of an unlabelled volume in a partly labelled split: not an error, not used
            try:
                decoded = decode_checked(sample, d.domain, d.manifest_size, d.label)
                if d.classes:
                    check_labels(decoded, d.classes, sample.get("__url__", "?"))
                batch.append((decoded, index))
                bad_run = 0
            except (DecodeError, schema.SchemaError) as e:
                skipper(str(e), sample.get("__url__", "?"))
                bad_run += 1
                if bad_run > 10_000:
                    raise DataError(f"{d.name}: 10000 corrupt samples in a row in {urls}; last: {e}") from None
                continue
            if len(batch) < self.batch_size:
                continue
            yield self._collate(d, batch, seed), position
            batch = []

    def _collate(self, d: _Domain, batch: list[tuple[dict[str, Any], int]], seed: tuple[int, ...]) -> dict[str, Any]:
        images, masks, labels = zip(*(_to_tensor(s, d.domain) for s, _ in batch))
        rngs = [np.random.default_rng([*seed, 104729, index]) for _, index in batch]
        image, mask, label = augment_batch(
            torch.stack(images), torch.stack(masks), torch.stack(labels) if d.label else None,
            rngs, self.augment, self.image_size, intensity=d.domain == "mr",
        )
        out = {d.name: image, f"{d.name}_mask": mask, f"{d.name}_keys": [s["__key__"] for s, _ in batch]}
        if label is not None:
            out[f"{d.name}_label"] = label
        return out


def check_labels(sample: dict[str, Any], classes: int, url: str = "?") -> None:
    """SchemaError unless every label value of the decoded `sample` is in [0, classes)."""
    label = sample[schema.LABEL_KEY]
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= classes:
        raise schema.SchemaError(f"sample {sample['__key__']!r} ({url}): label values {lo}..{hi} outside "
                                 f"[0, {classes}) (model.seg_classes={classes})")


class _Stream:
    """Shared machinery of the training streams: DataLoader over `_BatchStream`, state tracking."""

    def __init__(self, domains: list[_Domain], data_cfg: DataConfig, image_size: int, rank: int, world_size: int,
                 seed: int, start_state: dict[str, Any] | None, batch_size: int, resume: str) -> None:
        if resume not in RESUME_MODES:
            raise DataError(f"resume={resume!r} is not valid; choose one of {list(RESUME_MODES)}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.cfg = data_cfg
        self.workers = max(1, data_cfg.num_workers)
        restarts, batches, positions = 0, 0, None
        if start_state:
            if int(start_state.get("seed", seed)) != seed:
                log.warning("data stream resumed with seed %s (was %s)", seed, start_state.get("seed"))
            restarts = int(start_state.get("restarts", 0))
            batches = int(start_state.get("batches", 0))
            same_layout = (int(start_state.get("workers", -1)) == self.workers
                           and int(start_state.get("batch_size", -1)) == batch_size)
            if resume == "exact" and same_layout:
                positions = {int(w): dict(p) for w, p in start_state.get("positions", {}).items()}
            else:
                if resume == "exact":
                    log.warning("exact data resume needs the same num_workers and batch size; reseeding instead")
                restarts += 1
        self.seed, self.restarts, self.batch_size = seed, restarts, batch_size
        self._progress = _Progress(batches, dict(positions or {}))
        # numpy seeds must be non-negative: fold any int into [0, 2**63).
        self.dataset = _BatchStream(domains, rank, world_size, data_cfg.num_workers, seed % (1 << 63), restarts,
                                    batch_size, image_size, data_cfg.shuffle_buffer, data_cfg.augment,
                                    batches if positions is not None else 0, positions)
        self._batches: Iterator[dict[str, Any]] | None = None

    @property
    def batches(self) -> int:
        """Batches this rank consumed so far (across restarts)."""
        return self._progress.batches

    def state(self) -> dict[str, Any]:
        """JSON-able position of this rank's stream, for the checkpoint; pass back as `start_state`."""
        p = self._progress
        return {"seed": self.seed, "restarts": self.restarts, "batches": p.batches, "workers": self.workers,
                "batch_size": self.batch_size, "positions": {str(w): v for w, v in sorted(p.positions.items())},
                "skipped": sum(sum(d.values()) for d in p.skipped.values())}

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the stream is garbage-collected)."""
        if self._batches is not None:
            self._batches.close()  # type: ignore[attr-defined]
            self._batches = None

    def _iterate(self) -> Iterator[dict[str, Any]]:
        """The one batch iterator of this stream (iterating again continues it; it never restarts)."""
        if self._batches is None:
            kw: dict[str, Any] = {}
            if self.cfg.num_workers > 0:
                kw = {"persistent_workers": True, "prefetch_factor": self.cfg.prefetch_factor,
                      "multiprocessing_context": worker_context()}
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.cfg.num_workers,
                                pin_memory=torch.cuda.is_available(), **kw)
            self._batches = _track(loader, self._progress)
        return self._batches


def worker_context() -> multiprocessing.context.BaseContext:
    """Where loader workers come from: a fork server, not the trainer.

    A worker forked from the trainer inherits the locks of the trainer's other threads (TensorBoard's event
    writer, zarr's event loop, the checkpoint writer) as they were at that instant, and one that takes such a lock
    waits forever: CI saw a worker fall silent for 10 minutes. The fork server is a fresh single-threaded process
    that imports the pipeline (and torch) once, at the first loader of a process, and forks every worker after
    that: a new loader's workers start in about 0.1 s (spawned workers import torch each: about 3 s).

    The server (and multiprocessing's resource tracker) start with SIGUSR1/SIGUSR2 blocked; the mask survives the
    exec into them and the fork into every worker. SLURM sends the job's USR signal (submitit's USR2, before the
    time limit and at preemption) to every process of the job, and a worker or server killed by it would crash
    the trainer before it saves its stop checkpoint. Blocked, not ignored, in the trainer: a signal that arrives
    meanwhile waits and is then delivered. SIGTERM keeps its default: multiprocessing ends workers with it.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["cmgan.data.pipeline"])
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return ctx


@dataclass
class _Progress:
    """What the main process knows of the stream's position (held apart from the stream object so the batch
    generator does not reference the stream: a reference cycle would leave the DataLoader's workers to the cyclic
    garbage collector, whose late teardown waits seconds per worker)."""

    batches: int
    positions: dict[int, dict[str, int]]
    skipped: dict[int, dict[str, int]] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)  # shards whose first problem was logged


def _track(loader: DataLoader, progress: _Progress) -> Iterator[dict[str, Any]]:
    for batch in loader:
        worker = batch.pop("_worker")
        progress.positions[worker] = batch.pop("_pos")
        progress.skipped[worker] = batch.pop("_skipped")
        for url, problem in batch.pop("_skip_notes"):
            if url not in progress.reported:  # once per shard: workers read their shards again every pass
                progress.reported.add(url)
                log.warning("%s: %s; skipped, training goes on (later problems in this shard are only counted; "
                            "`python -m shards verify` checks it)", url, problem)
        progress.batches += 1
        yield batch


class UnpairedStream(_Stream):
    """Endless unpaired batches {"mr", "mr_mask", ["mr_label"], "mr_keys", "color", "color_mask", "color_keys"}.

    data_cfg: shard dirs, split, batch size (per rank, each domain), workers, shuffle buffer, augmentation, resume.
    image_size: side of the batches (shards of another size are resampled by the same warp as the augmentation).
    rank / world_size: this process among the data-parallel ranks. seed: the run's seed.
    start_state: `state()` of an earlier run of this rank (from its checkpoint), or None.
    Iterating never ends: take exactly as many batches as steps (every rank can).
    """

    def __init__(self, data_cfg: DataConfig, image_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_state: dict[str, Any] | None = None) -> None:
        mr_urls, mr_manifest = split_shards(data_cfg.mr_shards, data_cfg.split, "mr")
        color_urls, color_manifest = split_shards(data_cfg.color_shards, data_cfg.split, "color")
        domains = [
            _Domain("mr", "mr", tuple(mr_urls), mr_manifest["size"], all_labelled(mr_manifest, data_cfg.split),
                    samples=sample_counts(mr_urls, mr_manifest)),
            _Domain("color", "color", tuple(color_urls), color_manifest["size"], False,
                    samples=sample_counts(color_urls, color_manifest)),
        ]
        self.normalization = mr_manifest.get("normalization")
        super().__init__(domains, data_cfg, image_size, rank, world_size, seed, start_state, data_cfg.batch_size,
                         data_cfg.resume)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._iterate()


class LabelledStream(_Stream):
    """Endless labelled MR batches for segmentation pretraining: {"image", "label", "mask", "keys"}.

    image (B, 1, H, W) float32 in [-1, 1]; label (B, H, W) int64 in [0, classes); mask (B, 1, H, W) float32.
    Only the slices of labelled volumes are used (a partly labelled split is the usual case; `skipped_volumes`
    says how many volumes had no labels); DataError when the split has no labelled volume. Other arguments as
    `UnpairedStream`; `batch_size` defaults to data_cfg.batch_size; `split` to data_cfg.split.
    """

    def __init__(self, data_cfg: DataConfig, image_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_state: dict[str, Any] | None = None, batch_size: int | None = None,
                 split: str | None = None, num_classes: int = 0) -> None:
        split = split or data_cfg.split
        urls, manifest = split_shards(data_cfg.mr_shards, split, "mr")
        labelled, self.skipped_volumes = labelled_volumes(manifest, split)
        urls = shards_with_labels(urls) if self.skipped_volumes else urls
        if not labelled or not urls:
            raise DataError(f"{data_cfg.mr_shards}: no labelled volume in split {split!r} "
                            f"({self.skipped_volumes} unlabelled); segmentation pretraining needs shards built "
                            "with --labels")
        values = manifest.get("label_values") or []
        if num_classes and values and max(values) >= num_classes:
            raise DataError(f"{data_cfg.mr_shards}: label values {values} need more than model.seg_classes="
                            f"{num_classes} classes; set model.seg_classes={max(values) + 1}")
        domains = [_Domain("mr", "mr", tuple(urls), manifest["size"], True, num_classes,
                           sample_counts(urls, manifest))]
        super().__init__(domains, data_cfg, image_size, rank, world_size, seed, start_state,
                         batch_size or data_cfg.batch_size, data_cfg.resume)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return ({"image": b["mr"], "label": b["mr_label"], "mask": b["mr_mask"], "keys": b["mr_keys"]}
                for b in self._iterate())

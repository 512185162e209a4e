"""Streaming loaders over the shards: unpaired MR + color batches for training, labelled MR slices for the
segmentation U-Net, and an ordered rank-split reader for evaluation.

Training stream, per domain, inside each DataLoader worker (a chain of small stages):

    slot shards -> open -> tar members (webdataset) -> samples -> shuffle buffer -> [skip: exact resume]
      -> safe decode + schema check (bad samples skipped, counted, logged with their key) -> batch -> augment

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
import random
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cmgan.config import AugmentConfig, DataConfig
from cmgan.data import schema
from cmgan.data.codec import DecodeError, decode_sample
from cmgan.data.manifest import read_manifest

log = logging.getLogger(__name__)

RESUME_MODES = ("reseed", "exact")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.tar$")


class DataError(ValueError):
    """The shard directory cannot feed this loader (missing split, wrong domain, unsafe shard name...)."""


# ---------------------------------------------------------------------------------------------- shards


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


def _open_files(src: Iterator[dict[str, Any]], handler: Any) -> Iterator[dict[str, Any]]:
    """Open local shard files (never through webdataset's gopen, which runs `pipe:` commands)."""
    for item in src:
        try:
            f = open(item["url"], "rb")
        except OSError as e:
            if handler(e):
                continue
            raise
        with f:
            yield {**item, "stream": f}


class _Skipper:
    """webdataset exception handler: log the problem with its shard/key, count it, continue."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.count = 0

    def __call__(self, exn: BaseException | str) -> bool:
        self.count += 1
        if self.count <= 20 or self.count % 1000 == 0:
            log.warning("%s: skipped a corrupt sample or shard (%d so far): %s", self.where, self.count, exn)
        return True


def _raw_samples(urls: list[str], seed: tuple[int, ...], handler: _Skipper) -> Iterator[dict[str, Any]]:
    """Raw samples ({"__key__", "__url__", member: bytes}) of `urls` forever, each pass in a new seeded order."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    epoch = 0
    while True:
        order = ({"url": urls[i]} for i in np.random.default_rng([*seed, epoch]).permutation(len(urls)))
        files = tar_file_expander(_open_files(order, handler), handler=handler)
        n = 0
        for sample in group_by_keys(files, handler=handler):
            n += 1
            yield sample
        if n == 0:
            raise DataError(f"no readable sample in any of the shards {urls}")
        epoch += 1


def _shuffle(src: Iterator[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle buffer (webdataset's algorithm, with our seeded rng; bufsize <= 1: no shuffling)."""
    if bufsize <= 1:
        yield from src
        return
    from webdataset.filters import _shuffle as wds_shuffle

    yield from wds_shuffle(src, bufsize=bufsize, initial=bufsize, rng=rng)


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


# ---------------------------------------------------------------------------------------------- augment


def _to_tensor(sample: dict[str, Any], domain: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if domain == "mr":
        image = torch.from_numpy(sample[schema.MR_KEY].astype(np.float32))[None]
    else:
        image = torch.from_numpy(sample[schema.RGB_KEY]).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    mask = torch.from_numpy(sample[schema.MASK_KEY]).float()[None]
    label = torch.from_numpy(sample[schema.LABEL_KEY].astype(np.int64)) if schema.LABEL_KEY in sample else None
    return image, mask, label


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor | None,
    rngs: list[np.random.Generator],
    cfg: AugmentConfig,
    size: int,
    intensity: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flips + small affine (one draw per sample, the same warp for image, mask and label) and resize to `size`.

    images (B, C, h, w) float32 in [-1, 1] (background -1); masks (B, 1, h, w) {0, 1}; labels (B, h, w) int64.
    Image: bilinear; mask, label: nearest; outside the source: background. MR (`intensity`): gamma/contrast
    jitter of the foreground. returns the same at (size, size).
    """
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3)
    warp = images.shape[-1] != size or images.shape[-2] != size
    for i, rng in enumerate(rngs):
        fx = -1.0 if rng.random() < cfg.hflip else 1.0
        fy = -1.0 if rng.random() < cfg.vflip else 1.0
        a = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg > 0 else 0.0
        s = 1.0 + (rng.uniform(-cfg.scale, cfg.scale) if cfg.scale > 0 else 0.0)
        tx, ty = (rng.uniform(-cfg.translate, cfg.translate, 2) * 2 if cfg.translate > 0 else (0.0, 0.0))
        c, n = np.cos(a) / s, np.sin(a) / s
        theta[i] = torch.tensor([[c * fx, -n * fy, tx], [n * fx, c * fy, ty]], dtype=torch.float32)
        warp |= fx < 0 or fy < 0 or a != 0.0 or s != 1.0 or tx != 0.0 or ty != 0.0
    if warp:
        grid = _affine_grid(theta, size)
        images = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
        # Mask and label share one nearest-neighbour warp (they stay aligned to each other by construction).
        stacked = masks if labels is None else torch.cat([masks, labels[:, None].float()], 1)
        stacked = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        masks = stacked[:, :1]
        if labels is not None:
            labels = stacked[:, 1].round().long()
    if intensity and cfg.intensity > 0:
        j = cfg.intensity
        params = torch.tensor([[np.exp(r.uniform(-j, j)), 1 + r.uniform(-j, j), r.uniform(-j, j) / 2] for r in rngs],
                              dtype=torch.float32)
        gamma, contrast, shift = (params[:, k].view(b, 1, 1, 1) for k in range(3))
        x01 = ((images + 1) / 2).clamp(0, 1)
        images = ((x01.pow(gamma) - 0.5) * contrast + 0.5 + shift).clamp(0, 1) * 2 - 1
    images = images.masked_fill_(masks == 0, -1.0).clamp_(-1.0, 1.0)
    return images.contiguous(), masks, labels


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """F.affine_grid(theta, (B, C, size, size), align_corners=False), computed elementwise (5-10x faster on the CPU).

    theta (B, 2, 3) maps output to input normalized coordinates; returns (B, size, size, 2) (x, y).
    """
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # pixel centres in (-1, 1)
    x, y = c.view(1, 1, size), c.view(1, size, 1)
    t = theta.view(-1, 6, 1, 1)
    gx = t[:, 0] * x + t[:, 1] * y + t[:, 2]
    gy = t[:, 3] * x + t[:, 4] * y + t[:, 5]
    return torch.stack([gx, gy], dim=-1)


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
            skippers[d.name] = _Skipper(f"{d.name} rank {self.rank} worker {logical}")
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
            yield out

    def _batches(self, d: _Domain, urls: list[str], seed: tuple[int, ...], skip: int, skipper: _Skipper
                 ) -> Iterator[tuple[dict[str, Any], int]]:
        raw = _shuffle(_raw_samples(urls, seed, skipper), self.shuffle_buffer, random.Random(str(seed)))
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
                skipper(f"{sample.get('__url__', '?')}: {e}")  # the shard's path: where to look
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


def _all_labelled(manifest: dict[str, Any], split: str) -> bool:
    vols = [v for v in manifest.get("volumes", {}).values() if v.get("split") == split]
    return bool(vols) and all(v.get("labelled") for v in vols)


def labelled_volumes(manifest: dict[str, Any], split: str) -> tuple[int, int]:
    """(labelled, unlabelled) volume counts of `split` in a shard manifest."""
    vols = [v for v in manifest.get("volumes", {}).values() if v.get("split") == split]
    labelled = sum(1 for v in vols if v.get("labelled"))
    return labelled, len(vols) - labelled


def _shards_with_labels(urls: list[str]) -> list[str]:
    """The shards holding at least one label member (tar headers only; an unreadable shard is kept, so the
    stream's skipper reports it)."""
    import tarfile

    keep = []
    for url in urls:
        try:
            with tarfile.open(url, "r:") as tar:
                if any(name.endswith("." + schema.LABEL_KEY) for name in tar.getnames()):
                    keep.append(url)
        except (tarfile.TarError, OSError, EOFError):
            keep.append(url)
    return keep


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
                kw = {"persistent_workers": True, "prefetch_factor": self.cfg.prefetch_factor}
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.cfg.num_workers,
                                pin_memory=torch.cuda.is_available(), worker_init_fn=_ignore_stop_signals, **kw)
            self._batches = _track(loader, self._progress)
        return self._batches


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers ignore SIGUSR1/SIGUSR2: SLURM sends the job's `--signal` (submitit's USR2, before the time
    limit and at preemption) to every process of the job, and USR2's default action would kill the worker and
    crash the trainer before it saves its stop checkpoint. SIGTERM keeps its default: multiprocessing ends
    workers with it at exit (a worker that ignored it would hang the interpreter's exit)."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


@dataclass
class _Progress:
    """What the main process knows of the stream's position (held apart from the stream object so the batch
    generator does not reference the stream: a reference cycle would leave the DataLoader's workers to the cyclic
    garbage collector, whose late teardown waits seconds per worker)."""

    batches: int
    positions: dict[int, dict[str, int]]
    skipped: dict[int, dict[str, int]] = field(default_factory=dict)


def _track(loader: DataLoader, progress: _Progress) -> Iterator[dict[str, Any]]:
    for batch in loader:
        worker = batch.pop("_worker")
        progress.positions[worker] = batch.pop("_pos")
        progress.skipped[worker] = batch.pop("_skipped")
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
            _Domain("mr", "mr", tuple(mr_urls), mr_manifest["size"], _all_labelled(mr_manifest, data_cfg.split)),
            _Domain("color", "color", tuple(color_urls), color_manifest["size"], False),
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
        urls = _shards_with_labels(urls) if self.skipped_volumes else urls
        if not labelled or not urls:
            raise DataError(f"{data_cfg.mr_shards}: no labelled volume in split {split!r} "
                            f"({self.skipped_volumes} unlabelled); segmentation pretraining needs shards built "
                            "with --labels")
        values = manifest.get("label_values") or []
        if num_classes and values and max(values) >= num_classes:
            raise DataError(f"{data_cfg.mr_shards}: label values {values} need more than model.seg_classes="
                            f"{num_classes} classes; set model.seg_classes={max(values) + 1}")
        domains = [_Domain("mr", "mr", tuple(urls), manifest["size"], True, num_classes)]
        super().__init__(domains, data_cfg, image_size, rank, world_size, seed, start_state,
                         batch_size or data_cfg.batch_size, data_cfg.resume)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return ({"image": b["mr"], "label": b["mr_label"], "mask": b["mr_mask"], "keys": b["mr_keys"]}
                for b in self._iterate())


# ---------------------------------------------------------------------------------------------- evaluation


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
    import tarfile

    urls, manifest = split_shards(shard_dir, split)
    counts = [s["samples"] for s in manifest["shards"] if s["split"] == split]
    n = min(limit, sum(counts)) if limit else sum(counts)
    start, stop = split_range(n, rank, world_size, align)
    offset = 0
    for url, count in zip(urls, counts):
        if offset + count <= start or offset >= stop:
            offset += count
            continue
        try:
            with tarfile.open(url, "r:") as tar:
                for index, (key, members) in enumerate(_tar_samples(tar)):
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
        except (tarfile.TarError, OSError, EOFError) as e:
            if strict:
                raise DataError(f"{url}: unreadable shard ({type(e).__name__}: {e}); "
                                "check it with `python -m shards verify`") from None
            log.warning("%s: unreadable shard, rest of it skipped (%s)", url, e)
        offset += count


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

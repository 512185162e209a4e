"""Segmentation pretraining of S on labelled MR shards (Dice + cross-entropy, `cmgan.losses.segmentation`),
ending in its frozen export.

    summary = pretrain_segmenter(cfg)       # -> <cfg.seg.run_dir>/export/seg.pt (format: `cmgan.seg_export`)

Runs on the same distributed seam as the CycleGAN (DDP; the segmenter is small, DeepSpeed is not used here),
with the same checkpoints, stop signals and resume. Validation computes hard Dice per class on the val split
(summed over ranks in float64: each rank reads a disjoint block of slices). The export holds the weights, the
architecture (width, depth, classes), the MR normalization of the shards S was trained on (S must see the same
normalization later) and the last validation Dice; the trainer loads it with `cmgan.seg_export.load_segmenter`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmgan import checkpoint
from cmgan.config import OptimConfig, RunConfig, replace, to_dict
from cmgan.data import schema
from cmgan.losses.segmentation import dice_ce_loss, dice_counts
from cmgan.models import build_segmenter
from cmgan.models.segmentation import SegUNet
from cmgan.seg_export import SEG_EXPORT, save_seg_export
from cmgan.train import distributed, jobframe, rundir
from cmgan.train.loop import CheckpointState, TrainLoop, Window
from cmgan.train.monitor import Monitor
from cmgan.train.state import (
    capture_rng,
    isolated_start,
    rank_seed,
    restore_rng,
    seed_all,
)
from cmgan.train.stop import StopFlag

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(S: SegUNet, cfg: RunConfig, backend: distributed.Backend, max_batches: int = 0) -> dict[str, float]:
    """Hard Dice per class on the labelled slices of the val split (every rank a disjoint block; counts summed in
    float64). Slices of unlabelled volumes are skipped; with no labelled val volume the result is {}."""
    from cmgan.data.manifest import read_manifest
    from cmgan.data.splits import labelled_volumes, read_split

    if labelled_volumes(read_manifest(cfg.data.mr_shards), "val")[0] == 0:
        return {}  # every rank reads the same manifest: all return here, none waits in the all-reduce
    was_training = S.training
    S.eval()
    size = cfg.model.image_size
    counts = torch.zeros(cfg.model.seg_classes, 2, dtype=torch.float64)
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        image = torch.stack([torch.from_numpy(s[schema.MR_KEY].astype(np.float32)) for s in batch])[:, None]
        label = torch.stack([torch.from_numpy(s[schema.LABEL_KEY].astype(np.int64)) for s in batch])
        if image.shape[-1] != size:  # shards of another size: resample like the training stream does
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
            label = F.interpolate(label[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        with backend.autocast():
            logits = S(backend.to_device(image))
        counts.add_(dice_counts(logits.float().argmax(1).cpu(), label, cfg.model.seg_classes))
        batch.clear()

    n = 0
    for sample in read_split(cfg.data.mr_shards, "val", backend.rank, backend.world_size,
                             keys=(schema.MR_KEY, schema.LABEL_KEY)):
        if schema.LABEL_KEY not in sample:
            continue  # a slice of an unlabelled volume
        batch.append(sample)
        if len(batch) == cfg.seg.batch_size:
            flush()
            n += 1
            if max_batches and n >= max_batches:
                break
    if batch:
        flush()
    if backend.world_size > 1:
        import torch.distributed as dist

        t = counts.to(backend.device)
        dist.all_reduce(t)
        counts = t.cpu()
    S.train(was_training)
    names = schema.LABEL_NAMES if len(schema.LABEL_NAMES) == cfg.model.seg_classes else [
        f"class_{i}" for i in range(cfg.model.seg_classes)]
    return {name: (float(c[0] / c[1]) if c[1] > 0 else float("nan")) for name, c in zip(names, counts)}


# ---------------------------------------------------------------------------------------------- training


def pretrain_segmenter(cfg: RunConfig) -> dict[str, Any]:
    """Train S on `cfg.data.mr_shards` (split train, labelled) for `cfg.seg.steps`; export to
    `<cfg.seg.run_dir>/export/seg.pt`. Resumes from `<cfg.seg.run_dir>/checkpoints` when present.

    Returns {"status": "completed" | "stopped", "steps", "run_dir", "export", "val_dice", "losses"}.
    """
    from cmgan.data.pipeline import LabelledStream

    if cfg.train.backend != "ddp":
        cfg = replace(cfg, ["train.backend=ddp"])  # S is small: plain data parallel
    return jobframe.run_in_job(cfg.train, cfg.seg.batch_size,
                             lambda backend, stop: _pretrain(cfg, backend, LabelledStream, stop))


def _pretrain(cfg: RunConfig, backend: distributed.Backend, stream_cls: Any, stop: StopFlag) -> dict[str, Any]:
    seg, tc = cfg.seg, cfg.train
    paths, resume_from = rundir.prepare(seg.run_dir, cfg, backend)
    seed_all(tc.seed)
    S = backend.place(build_segmenter(cfg.model))
    optim = OptimConfig(lr=seg.lr, betas=(0.9, 0.999), schedule="constant", scale_lr=False)
    net = backend.prepare("segmenter", {"S": S}, seg.lr, optim, seg.steps)
    seed_all(rank_seed(tc.seed, backend.rank))
    step, data_state, val_dice = 0, None, {}
    if resume_from is not None:
        step, data_state, val_dice = _load(resume_from, net, backend)

    stream = stream_cls(cfg.data, cfg.model.image_size, backend.rank, backend.world_size, tc.seed,
                        start_state=data_state, batch_size=seg.batch_size, split="train",
                        num_classes=cfg.model.seg_classes)
    stage = SegStage(cfg, backend, net, stream, val_dice)
    monitor = Monitor(paths.root, seg.steps, step, backend.is_main)
    skipped = _unlabelled_volumes(cfg.data.mr_shards)
    if any(skipped.values()):
        monitor.message("S trains and validates on labelled volumes only; skipped unlabelled volumes: "
                        "%d of train, %d of val", skipped["train"], skipped["val"])
    # A non-finite loss always stops S pretraining (train.nonfinite=skip is for the CycleGAN).
    result = TrainLoop(stage, tc, backend, stop, monitor, paths.checkpoints,
                       steps=seg.steps, start_step=step, resumed_from=resume_from, nonfinite="stop").run()

    export, val_dice = None, stage.val_dice
    if result.status == "completed":
        if not val_dice:
            val_dice = validate(S, cfg, backend)
        if backend.is_main:
            normalization = _mr_normalization(cfg.data.mr_shards)
            export = str(save_seg_export(paths.root / SEG_EXPORT, model=cfg.model, state=S.state_dict(),
                                         normalization=normalization, val_dice=val_dice,
                                         meta={"steps": result.steps, "run_dir": str(paths.root),
                                               "losses": result.losses}))
        backend.barrier()
        export = backend.broadcast_object(export)
    summary = {"status": result.status, "stage": "seg", "steps": result.steps, "run_dir": str(paths.root),
               "export": export, "val_dice": val_dice, "losses": result.losses, "world_size": backend.world_size,
               "unlabelled_volumes_skipped": skipped}
    if backend.is_main:
        checkpoint.write_json(summary, paths.root / "summary.json")
    return summary


def _load(path: Path, net: distributed.Trainable, backend: distributed.Backend) -> tuple[int, dict | None, dict]:
    """Restore S and its optimizer from checkpoint `path`: (step, this rank's data stream state or None,
    the validation Dice saved with it)."""
    replicated, per_rank = checkpoint.load(path, backend.rank)
    backend.load_state_dict(net, replicated["segmenter"], path)
    data_state = None
    if per_rank is not None:
        restore_rng(per_rank["rng"])
        data_state = per_rank["data"]
    log.info("resumed segmentation pretraining from %s (step %d)", path, int(replicated["step"]))
    return int(replicated["step"]), data_state, dict(replicated.get("val_dice", {}))


class SegStage:
    """S pretraining's part of the loop (`cmgan.train.loop.Stage`): Dice + cross-entropy steps of S, their
    metrics (the step's last micro-batch, mean over ranks), validation every `seg.val_every` steps."""

    name = "seg"
    fix = "Lower seg.lr or use train.precision=fp32"

    def __init__(self, cfg: RunConfig, backend: distributed.Backend, net: distributed.Trainable, stream: Any,
                 val_dice: dict[str, float]) -> None:
        self.cfg, self.backend, self.net, self.stream = cfg, backend, net, stream
        self.batches = isolated_start(iter(stream))
        self.replicas = [net.raw["S"]]
        self.val_dice = val_dice  # the latest validation (saved with every checkpoint)
        self.terms: dict[str, torch.Tensor] = {}

    def forward_backward(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        backend, net, accum = self.backend, self.net, self.cfg.train.grad_accum
        nonfinite = torch.zeros((), dtype=torch.bool, device=backend.device)
        for micro in range(accum):
            batch = next(self.batches)
            image, label = backend.to_device(batch["image"]), batch["label"].to(backend.device)
            with backend.accumulate([net], micro == accum - 1):
                with backend.autocast():
                    logits = net.nets["S"](image)
                self.terms = dice_ce_loss(logits, label, self.cfg.seg.dice_weight)
                nonfinite = nonfinite | ~torch.isfinite(self.terms["total"])
                backend.backward(net, self.terms["total"])
        return self.terms, nonfinite

    def update(self) -> None:
        self.backend.step(self.net, True)

    def skip(self) -> None:
        raise AssertionError("S pretraining stops on a non-finite loss; it never skips")

    def scalars(self, window: Window) -> dict[str, float]:
        mean = self.backend.all_reduce_mean(torch.stack([self.terms["ce"].detach(), self.terms["dice"].detach()]))
        return {"ce": float(mean[0]), "dice_loss": float(mean[1]), "lr": self.net.lr,
                "images_per_s": window.images_per_s}

    def observe(self, step: int, monitor: Monitor) -> None:
        seg = self.cfg.seg
        if seg.val_every and (step % seg.val_every == 0 or step == seg.steps):
            self.val_dice = validate(self.net.raw["S"], self.cfg, self.backend)
            monitor.log(step, {f"val_dice/{k}": v for k, v in self.val_dice.items()})

    def checkpoint_state(self, step: int) -> CheckpointState:
        return CheckpointState(
            replicated={"step": step, "segmenter": self.backend.state_dict(self.net), "val_dice": self.val_dice,
                        "config": to_dict(self.cfg)},
            per_rank={"rng": capture_rng(), "data": self.stream.state()},
            meta={"val_dice": self.val_dice},
        )


def _unlabelled_volumes(shard_dir: str) -> dict[str, int]:
    """Unlabelled volumes S leaves out, per split it reads (train, val)."""
    from cmgan.data.manifest import read_manifest
    from cmgan.data.splits import labelled_volumes

    manifest = read_manifest(shard_dir)
    return {split: labelled_volumes(manifest, split)[1] for split in ("train", "val")}


def _mr_normalization(shard_dir: str) -> dict:
    from cmgan.data.manifest import read_manifest

    return dict(read_manifest(shard_dir).get("normalization") or {})


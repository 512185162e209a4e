"""The ColorMedGAN CycleGAN run: `train(cfg)` builds everything in dependency order, resumes, loops, exports.

    summary = train(load_config("configs/demo.toml", ["train.run_dir='runs/x'"]))
    summary["status"]  # "completed" or "stopped" (a stop signal arrived; the checkpoint is saved; run again)

`train` is a plain, picklable function of the config: submitit and `launch/train.py` call it in every process
of the job (torchrun, srun tasks or a single process; see distributed.py). Anything it needs comes from `cfg`.

One optimizer step (per micro-batch, `train.grad_accum` of them):
  1. data: MR x (B, 1, H, W) and color y (B, 3, H, W) from the unpaired stream (its position is checkpointed);
  2. generator forward with Dx, Dy frozen (their unwrapped modules): F, S (no_grad, once), G, F -> named terms;
  3. the fakes go through the history pools; discriminator forward on [real, pooled fake];
  4. backward of both objectives (the engines'/DDP's own); then the shared loop (`cmgan.train.loop`) has the
     ranks agree once and take the same branch: update both optimizers and the EMA (or skip / stop on a
     non-finite loss), metrics, sample grid, checkpoint, stop.
Both optimizer updates happen after both backwards; this equals CycleGAN's "G step, then D step" order because
the D loss uses detached fakes and the G loss was computed with D's pre-update weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cmgan import checkpoint
from cmgan.config import RunConfig, to_dict
from cmgan.losses.perceptual import build_perceptual
from cmgan.models import build_networks
from cmgan.models.edges import edge_map
from cmgan.seg_export import load_segmenter
from cmgan.train import distributed, jobframe, rundir
from cmgan.train.ema import EMA
from cmgan.train.image_pool import ImagePool
from cmgan.train.loop import CheckpointState, TrainLoop, Window
from cmgan.train.monitor import Monitor, sample_grid
from cmgan.train.schedule import report_lr
from cmgan.train.state import (
    capture_rng,
    isolated_start,
    rank_seed,
    restore_rng,
    seed_all,
)
from cmgan.train.step import StepNets, all_finite, discriminator_forward, generator_forward
from cmgan.train.stop import StopFlag

if TYPE_CHECKING:
    from cmgan.data.pipeline import UnpairedStream

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """Everything one run trains with, built once by `build` (no training state lives elsewhere)."""

    gen: distributed.Trainable
    disc: distributed.Trainable
    nets: StepNets
    S: torch.nn.Module | None
    pool_x: ImagePool
    pool_y: ImagePool
    ema: EMA | None
    seg_normalization: dict
    seg_dice: dict
    """S's per-class validation Dice from its export (reported in the summary: a weak S makes the fusion moot)."""
    lr: float
    """The base learning rate both optimizers start from (after scaling with the global batch)."""


def build(cfg: RunConfig, backend: distributed.Backend) -> Parts:
    """Networks (identical initialization on every rank), S, optimizers through the seam, pools, EMA."""
    seed_all(cfg.train.seed)
    G, F, Dx, Dy = (backend.place(n) for n in build_networks(cfg.model))
    S, seg_norm, seg_dice = None, {}, {}
    if cfg.model.fusion != "none":
        if not cfg.train.seg_checkpoint:
            raise ValueError(
                f"model.fusion={cfg.model.fusion!r} needs the frozen segmenter: set train.seg_checkpoint to the "
                "export of `python launch/train.py --stage seg` (<seg.run_dir>/export/seg.pt), or model.fusion=none"
            )
        S, seg_norm, seg_dice = load_segmenter(cfg.train.seg_checkpoint, cfg.model)
        S = backend.place(S)  # never through DDP: it has no trainable parameters
    lr = report_lr(cfg.optim, backend.global_batch, backend.is_main)  # logged; warns when beyond a sane bound
    gen = backend.prepare("generators", {"G": G, "F": F}, lr, cfg.optim, cfg.train.steps)
    disc = backend.prepare("discriminators", {"Dx": Dx, "Dy": Dy}, lr, cfg.optim, cfg.train.steps)
    perceptual = build_perceptual(cfg.loss).to(backend.device)
    nets = StepNets(
        G=gen.nets["G"], F=gen.nets["F"], Dx=disc.nets["Dx"], Dy=disc.nets["Dy"],
        Dx_frozen=backend.frozen_callable(Dx), Dy_frozen=backend.frozen_callable(Dy), S=S, perceptual=perceptual,
    )
    rank = backend.rank
    pools = (ImagePool(cfg.loss.pool_size, rank_seed(cfg.train.seed, rank, 1)),
             ImagePool(cfg.loss.pool_size, rank_seed(cfg.train.seed, rank, 2)))
    ema = EMA(G, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    # From here on each rank draws its own numbers (the networks above are identical on every rank).
    seed_all(rank_seed(cfg.train.seed, rank))
    return Parts(gen, disc, nets, S, pools[0], pools[1], ema, seg_norm, seg_dice, lr)


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) the CycleGAN training of `cfg` in this process; every process of the job calls it.

    Returns {"status": "completed" | "stopped", "steps", "start_step", "run_dir", "export", "checkpoint",
    "losses", "world_size", "signal", "lr" (the base learning rate used), "precision" (the one the networks ran
    in)}; the same dict is written to `<run_dir>/summary.json`.
    Raises cmgan.train.loop.NonFiniteLossError (train.nonfinite=stop), DistributedError, config and data errors.
    """
    return jobframe.run_in_job(cfg.train, cfg.data.batch_size, lambda backend, stop: _train(cfg, backend, stop))


def _load(path: Path, parts: Parts, backend: distributed.Backend) -> tuple[int, dict | None]:
    """Restore everything from checkpoint `path`; returns (step, this rank's data stream state or None)."""
    replicated, per_rank = checkpoint.load(path, backend.rank)
    if int(replicated["world_size"]) != backend.world_size:
        log.warning("checkpoint %s was written by %s ranks, this job runs %d: weights and optimizers continue "
                    "exactly, per-rank data streams, pools and RNG only where the rank existed",
                    path, replicated["world_size"], backend.world_size)
    backend.load_state_dict(parts.gen, replicated["generators"], path)
    backend.load_state_dict(parts.disc, replicated["discriminators"], path)
    if parts.ema is not None and replicated.get("ema"):
        parts.ema.load_state_dict(replicated["ema"])
    if per_rank is None:
        # The job grew: new ranks start fresh streams (seeded by rank), which is correct but not bit-identical.
        log.warning("checkpoint %s has no state for rank %d (written by %d ranks); this rank starts a fresh data "
                    "stream and pools", path, backend.rank, replicated.get("world_size", "?"))
        return int(replicated["step"]), None
    restore_rng(per_rank["rng"])
    parts.pool_x.load_state_dict(per_rank["pools"]["x"], backend.device)
    parts.pool_y.load_state_dict(per_rank["pools"]["y"], backend.device)
    return int(replicated["step"]), per_rank["data"]


def _train(cfg: RunConfig, backend: distributed.Backend, stop: StopFlag) -> dict[str, Any]:
    from cmgan.data.pipeline import UnpairedStream

    tc = cfg.train
    paths, resume_from = rundir.prepare(tc.run_dir, cfg, backend)
    parts = build(cfg, backend)
    step, data_state = 0, None
    if resume_from is not None:
        step, data_state = _load(resume_from, parts, backend)
        if backend.is_main:
            log.info("resuming %s from %s (step %d of %d)", paths.root, resume_from, step, tc.steps)
    start_step = step

    stream = UnpairedStream(cfg.data, cfg.model.image_size, backend.rank, backend.world_size, tc.seed,
                            start_state=data_state)
    normalization = dict(stream.normalization or {})
    if parts.S is not None and parts.seg_normalization and parts.seg_normalization != normalization:
        log.warning("S was trained on MR normalized as %s but these shards use %s; S's features may be off",
                    parts.seg_normalization, normalization)
    stage = CycleGANStage(cfg, backend, parts, stream)
    monitor = Monitor(paths.root, tc.steps, step, backend.is_main)
    result = TrainLoop(stage, tc, backend, stop, monitor, paths.checkpoints,
                       steps=tc.steps, start_step=step, resumed_from=resume_from).run()

    export = None
    if result.status == "completed":
        export = _export(cfg, parts, paths, normalization, result.steps, result.losses, backend)
    summary = {"status": result.status, "stage": "cyclegan", "steps": result.steps, "start_step": start_step,
               "run_dir": str(paths.root), "export": export,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None, "losses": result.losses,
               "world_size": backend.world_size, "signal": result.signal, "lr": parts.lr,
               "precision": backend.precision, "seg_dice": parts.seg_dice}
    if backend.is_main:
        checkpoint.write_json(summary, paths.root / "summary.json")
    return summary


class CycleGANStage:
    """The CycleGAN's part of the loop (`cmgan.train.loop.Stage`): steps of G, F, Dx, Dy and what they log,
    show and save."""

    name = "cyclegan"
    fix = "Lower optim.lr, try train.precision=fp32, or set train.nonfinite=skip"

    def __init__(self, cfg: RunConfig, backend: distributed.Backend, parts: Parts, stream: UnpairedStream) -> None:
        self.cfg, self.backend, self.parts, self.stream = cfg, backend, parts, stream
        self.batches = isolated_start(iter(stream))
        gen, disc = parts.gen, parts.disc
        self.replicas = [gen.raw["G"], gen.raw["F"], disc.raw["Dx"], disc.raw["Dy"]]
        self.images = None  # the last micro-batch's CycleImages (for the sample grid)
        self._sums: dict[str, torch.Tensor] = {}  # loss terms summed over the steps since the last metric line
        self._waited = 0.0  # seconds spent waiting for data since the last metric line

    def forward_backward(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        self.images, terms, nonfinite, waited = _accumulate_step(self.cfg, self.backend, self.parts, self.batches)
        self._waited += waited
        for k, v in terms.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        return terms, nonfinite

    def update(self) -> None:
        self.backend.step(self.parts.gen, True)
        self.backend.step(self.parts.disc, True)
        if self.parts.ema is not None:
            self.parts.ema.update(self.parts.gen.raw["G"])

    def skip(self) -> None:
        self.backend.skip(self.parts.gen)
        self.backend.skip(self.parts.disc)

    def scalars(self, window: Window) -> dict[str, float]:
        names = sorted(self._sums)
        means = self.backend.all_reduce_mean(torch.stack([self._sums[k] / window.steps for k in names]))
        line = {k: float(v) for k, v in zip(names, means)}
        line.update(lr=self.parts.gen.lr, lr_d=self.parts.disc.lr, images_per_s=window.images_per_s,
                    data_wait=self._waited / max(window.seconds, 1e-9), skipped=float(window.skips))
        self._sums, self._waited = {}, 0.0
        return line

    def observe(self, step: int, monitor: Monitor) -> None:
        tc, images = self.cfg.train, self.images
        if self.backend.is_main and tc.sample_every and (step % tc.sample_every == 0 or step == tc.steps):
            k = min(4, images.real_x.shape[0])
            monitor.samples(step, sample_grid(images.real_x[:k], images.fake_y[:k], images.rec_x[:k],
                                              edge_map(images.fake_y[:k].detach().float(), self.cfg.model.laplacian)))

    def checkpoint_state(self, step: int) -> CheckpointState:
        backend, parts = self.backend, self.parts
        replicated = {
            "step": step,
            "world_size": backend.world_size,
            "generators": backend.state_dict(parts.gen),
            "discriminators": backend.state_dict(parts.disc),
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "config": to_dict(self.cfg),
        }
        per_rank = {
            "rank": backend.rank,
            "rng": capture_rng(),
            "pools": {"x": parts.pool_x.state_dict(), "y": parts.pool_y.state_dict()},
            "data": self.stream.state(),
        }
        meta = {"backend": backend.name, "precision": backend.train.precision,
                "run_dir": str(Path(self.cfg.train.run_dir))}
        return CheckpointState(replicated, per_rank, meta, backend.collective_writers([parts.gen, parts.disc]))


def _accumulate_step(cfg: RunConfig, backend: distributed.Backend, parts: Parts, batches: Any
                     ) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor, float]:
    """Forward + backward of the `train.grad_accum` micro-batches of one step; the update is the caller's.

    Returns (the last micro-batch's CycleImages, loss terms averaged over the micro-batches, whether any term
    was non-finite on this rank as a 0-dim bool tensor on the device, seconds spent waiting for data). Nothing
    here reads a device value: the step's one host read is the agreement (`loop.agree`).
    """
    gen, disc, nets, accum = parts.gen, parts.disc, parts.nets, cfg.train.grad_accum
    terms: dict[str, torch.Tensor] = {}
    waited, images = 0.0, None
    nonfinite = torch.zeros((), dtype=torch.bool, device=backend.device)
    for micro in range(accum):
        boundary = micro == accum - 1
        t0 = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t0
        x, y = backend.to_device(batch["mr"]), backend.to_device(batch["color"])
        with backend.accumulate([gen, disc], boundary):
            with backend.frozen(disc):
                images, g_obj = generator_forward(nets, x, y, cfg.loss, cfg.model.laplacian, backend.autocast())
            fake_x = parts.pool_x.query(images.fake_x.detach())
            fake_y = parts.pool_y.query(images.fake_y.detach())
            d_obj = discriminator_forward(nets, x, y, fake_x, fake_y, cfg.loss, backend.autocast())
            # Every rank runs both backwards even on a non-finite loss: a rank skipping a DDP backward would
            # hang the others. The update is what gets skipped, after the ranks agree.
            nonfinite = nonfinite | ~all_finite(g_obj, d_obj)
            backend.backward(gen, g_obj.total)
            backend.backward(disc, d_obj.total)
        if not boundary:
            backend.step(gen, False)  # DeepSpeed counts micro-steps; DDP does nothing here
            backend.step(disc, False)
        named = {**g_obj.terms, **d_obj.terms, "loss_g": g_obj.total.detach(), "loss_d": d_obj.total.detach()}
        for k, v in named.items():
            terms[k] = terms.get(k, 0.0) + v.float() / accum
    return images, terms, nonfinite, waited


def _export(cfg: RunConfig, parts: Parts, paths: rundir.RunPaths, normalization: dict, step: int,
            losses: dict, backend: distributed.Backend) -> str:
    """Rank 0 writes the generator export (G, EMA of G, S, normalization); every rank gets its path."""
    from cmgan.data.manifest import read_manifest
    from cmgan.export import EXPORT_NAME, save_export

    path = paths.export / EXPORT_NAME
    if backend.is_main:
        save_export(
            path,
            model_cfg=cfg.model,
            generator_state=parts.gen.raw["G"].state_dict(),
            ema_state=parts.ema.shadow if parts.ema is not None else None,
            segmenter_state=parts.S.state_dict() if parts.S is not None else None,
            normalization=normalization,
            # The slicing axis of the training shards: the colorizer slices new volumes the same way.
            meta={"steps": step, "run_dir": str(paths.root), "losses": losses, "config": to_dict(cfg),
                  "seg_checkpoint": cfg.train.seg_checkpoint,
                  "axis": read_manifest(cfg.data.mr_shards).get("axis", 2)},
        )
    backend.barrier()
    return str(path)

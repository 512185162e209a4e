"""The training loop both stages run (the CycleGAN and S pretraining): step, agree, update, log, observe, save.

    result = TrainLoop(stage, cfg.train, backend, stop, monitor, paths.checkpoints,
                       steps=cfg.train.steps, start_step=step, resumed_from=resume_from).run()
    result.status  # "completed" or "stopped" (a stop signal arrived; the checkpoint is saved; run again)

A `Stage` holds what belongs to one model (its forward/backward, update, metrics, observations and checkpoint
contents); `TrainLoop` holds what every run does the same way. Per step, on every rank, in this order:

  1. `stage.forward_backward()`: forward and backward of every micro-batch of the step, no update;
  2. one all-reduce (MAX) at the step boundary of [non-finite loss on some rank, stop signal, checkpoint clock
     due] (`agree`), so every rank takes the same branch below;
  3. `stage.update()`; or, after a non-finite loss, raise NonFiniteLossError before updating (nonfinite="stop":
     the last good checkpoint stays intact) or `stage.skip()` (nonfinite="skip", at most
     `train.max_nonfinite_skips` steps in a row);
  4. metrics (`stage.scalars`, a collective) every `train.log_every` steps, at the last step and before a stop;
  5. `stage.observe(step)`: sample grids, validation;
  6. a checkpoint every `train.ckpt_every_steps`, when the clock (`train.ckpt_every_minutes`) is due, at the
     last step and before a stop, written by all ranks together (`cmgan.checkpoint.save`, atomic);
  7. after a stop signal (SIGTERM, SIGUSR1, SIGUSR2; `stop.py`): status "stopped".
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from cmgan import checkpoint
from cmgan.config import TrainConfig
from cmgan.train.distributed import Backend
from cmgan.train.monitor import Monitor
from cmgan.train.state import parameter_digest
from cmgan.train.stop import StopFlag

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf; the message names the step and the terms; the last good checkpoint is intact."""


@dataclass(frozen=True)
class Window:
    """The steps since the previous metric line (what a stage's `scalars` averages over)."""

    steps: int
    seconds: float
    images: int
    """Images of every rank in these steps (steps x global batch)."""
    skips: int
    """Consecutive skipped updates at the end of the window (train.nonfinite=skip)."""

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class CheckpointState:
    """A stage's part of a checkpoint; the loop adds the step, the replica digests, the reason and the losses."""

    replicated: dict
    """Identical on every rank (networks, optimizers, EMA, config); written once."""
    per_rank: dict
    """This rank's own state (RNG, data stream position, pools)."""
    meta: dict = field(default_factory=dict)
    """Human-readable facts for meta.json."""
    collective_writers: tuple = ()
    """Writers every rank must call (DeepSpeed engines save collectively), see `cmgan.checkpoint.save`."""


class Stage(Protocol):
    """The model-specific parts of a training run, called by `TrainLoop` in the order of the module docstring."""

    name: str
    """The stage recorded in checkpoints ("cyclegan", "seg")."""
    fix: str
    """What to change after a non-finite loss (ends the NonFiniteLossError message)."""
    replicas: list[nn.Module]
    """The modules that must stay identical on every rank (their digest is compared at each checkpoint)."""

    def forward_backward(self) -> tuple[dict[str, torch.Tensor], bool | torch.Tensor]:
        """Forward and backward of every micro-batch of one step, no update: (this step's loss terms, whether a
        loss was non-finite on this rank; a 0-dim bool tensor may still be computing on the device)."""
        ...

    def update(self) -> None:
        """Apply the step's gradients (optimizers, schedulers, EMA)."""
        ...

    def skip(self) -> None:
        """Drop the step's gradients (some rank saw a non-finite loss and train.nonfinite=skip)."""
        ...

    def scalars(self, window: Window) -> dict[str, float]:
        """The metric line for the steps of `window` (a collective: every rank calls it at the same steps)."""
        ...

    def observe(self, step: int, monitor: Monitor) -> None:
        """After each step, on every rank: sample grids, validation (collectives allowed)."""
        ...

    def checkpoint_state(self, step: int) -> CheckpointState:
        """Everything a resume needs besides the step."""
        ...


@dataclass
class LoopResult:
    status: str
    """"completed" or "stopped" (a stop signal arrived; the checkpoint is saved)."""
    steps: int
    """The step count reached."""
    losses: dict[str, float]
    """The last metric line (empty when none was logged)."""
    checkpoint: Path | None
    """The newest checkpoint (the one resumed from when none was written)."""
    signal: str
    """The stop signal's name ("" when completed)."""


_TEST_SIGNAL_ENV = "CMGAN_TEST_SIGNAL_AT_STEP"


class SaveClock:
    """Decides (on rank 0) when the time-based checkpoint is due; ranks then agree via `agree`."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


def test_signal_hook(next_step: int, backend: Backend) -> None:
    """Test-only: `CMGAN_TEST_SIGNAL_AT_STEP=k[:SIGNAME]` makes rank 0 send itself SIGNAME (default SIGTERM)
    just before the ranks agree at the end of step k, so tests stop a real run at an exact step through the real
    handler and the real agreement (the other ranks get no signal). Unset in normal runs."""
    spec = os.environ.get(_TEST_SIGNAL_ENV)
    if not spec or not backend.is_main:
        return
    at, _, name = spec.partition(":")
    if int(at) == next_step:
        os.kill(os.getpid(), getattr(signal, name or "SIGTERM"))


def agree(backend: Backend, stop: StopFlag, clock: SaveClock, nonfinite: bool | torch.Tensor = False
          ) -> tuple[bool, bool, bool]:
    """One all-reduce (MAX) and one host read at a step boundary: (any rank saw a non-finite loss, any rank got a
    stop signal, rank 0's checkpoint clock is due). Every rank gets the same answer, so they act together.
    `nonfinite` may be a 0-dim tensor still being computed on the device (it is read only together with the rest).
    """
    host = [int(stop.requested), int(backend.is_main and clock.due())]
    if isinstance(nonfinite, torch.Tensor):
        flags = backend.all_reduce_max(host, device_flag=nonfinite)
    else:
        flags = backend.all_reduce_max([int(nonfinite), *host])
    return bool(flags[0]), bool(flags[1]), bool(flags[2])


class TrainLoop:
    """Runs `stage` from `start_step` to `steps`, checkpointing into `checkpoints` (see the module docstring).

    `nonfinite` overrides `train.nonfinite` (S pretraining always stops). The monitor is closed when it ends.
    """

    def __init__(self, stage: Stage, train: TrainConfig, backend: Backend, stop: StopFlag, monitor: Monitor,
                 checkpoints: Path, *, steps: int, start_step: int, resumed_from: Path | None,
                 nonfinite: str | None = None) -> None:
        self.stage, self.train, self.backend, self.stop, self.monitor = stage, train, backend, stop, monitor
        self.checkpoints = checkpoints
        self.steps, self.step = steps, start_step
        self.nonfinite = nonfinite or train.nonfinite
        self.clock = SaveClock(train.ckpt_every_minutes)
        self.last_checkpoint = resumed_from
        self.losses: dict[str, float] = {}
        self.skips = 0  # consecutive skipped updates
        self._window_start, self._window_steps = time.perf_counter(), 0

    def run(self) -> LoopResult:
        try:
            while self.step < self.steps:
                terms, nonfinite = self.stage.forward_backward()

                # The ranks agree on one branch: update / skip / raise, checkpoint clock, stop signal.
                test_signal_hook(self.step + 1, self.backend)
                any_nonfinite, stopping, time_due = agree(self.backend, self.stop, self.clock, nonfinite)
                if any_nonfinite:
                    self._skip_or_raise(terms)
                else:
                    self.skips = 0
                    self.stage.update()
                self.step += 1
                self._window_steps += 1

                # Observe: metrics (mean over ranks: a collective on the same steps everywhere), bar, samples.
                if self.step % max(1, self.train.log_every) == 0 or self.step == self.steps or stopping:
                    self._log()
                self.monitor.update(self.step, self.losses)
                self.stage.observe(self.step, self.monitor)

                # Persist: on schedule, when the clock is due, at the end, and before stopping (all ranks together).
                every = self.train.ckpt_every_steps
                if stopping or time_due or self.step == self.steps or (every and self.step % every == 0):
                    self.save("signal" if stopping else "end" if self.step == self.steps else "schedule")
                if stopping:
                    self.monitor.message("stopped by %s at step %d; checkpoint %s saved; run again to resume",
                                         self.stop.signal_name, self.step, self.last_checkpoint)
                    return self._result("stopped", self.stop.signal_name)
            return self._result("completed", "")
        finally:
            self.monitor.close()

    def save(self, reason: str) -> Path:
        """Checkpoint the stage at the current step (every rank calls it) and restart the clock."""
        digest = parameter_digest(self.stage.replicas)
        digests = self.backend.all_gather_object(digest)
        if len(set(digests)) > 1 and self.backend.is_main:
            log.error("replicas diverged at step %d: parameter digests differ across ranks %s", self.step, digests)
        state = self.stage.checkpoint_state(self.step)
        meta = {"stage": self.stage.name, "reason": reason, **state.meta, "losses": self.losses,
                "digests": digests, "replicas_identical": len(set(digests)) == 1}
        self.last_checkpoint = checkpoint.save(
            self.checkpoints, self.step, rank=self.backend.rank, world_size=self.backend.world_size,
            barrier=self.backend.barrier, per_rank={**state.per_rank, "digest": digest},
            replicated=state.replicated, collective_writers=state.collective_writers, meta=meta,
            keep_last=self.train.keep_last,
        )
        self.clock.reset()
        return self.last_checkpoint

    def _skip_or_raise(self, terms: dict[str, torch.Tensor]) -> None:
        bad = [k for k, v in terms.items() if not torch.isfinite(v)]
        where = f"{self.stage.name} step {self.step + 1}: non-finite loss on some rank (here: {bad or 'none'})"
        if self.nonfinite == "stop":
            raise NonFiniteLossError(
                f"{where}. Stopped without updating; the last good checkpoint is "
                f"{checkpoint.latest(self.checkpoints) or '(none yet)'}. {self.stage.fix}"
            )
        self.skips += 1
        if self.skips > self.train.max_nonfinite_skips:
            raise NonFiniteLossError(f"{where}; {self.skips} consecutive steps skipped "
                                     f"(train.max_nonfinite_skips={self.train.max_nonfinite_skips})")
        log.warning("%s; update skipped (%d in a row)", where, self.skips)
        self.stage.skip()

    def _log(self) -> None:
        seconds = time.perf_counter() - self._window_start
        window = Window(self._window_steps, seconds, self._window_steps * self.backend.global_batch, self.skips)
        self.losses = self.stage.scalars(window)
        self.monitor.log(self.step, self.losses)
        self._window_start, self._window_steps = time.perf_counter(), 0

    def _result(self, status: str, signal: str) -> LoopResult:
        return LoopResult(status, self.step, self.losses, self.last_checkpoint, signal)

"""The run directory: its layout, the resolved config, resuming from its newest checkpoint, stop agreement.

    <run_dir>/config.toml      the resolved config of the latest start (a changed config on resume is logged)
    <run_dir>/checkpoints/     full-state checkpoints (cmgan.checkpoint)
    <run_dir>/metrics.jsonl    <run_dir>/tensorboard/    <run_dir>/samples/     (cmgan.train.monitor)
    <run_dir>/export/          the generator export (CycleGAN) or seg.pt (segmentation pretraining)
    <run_dir>/summary.json     what `train` returned, written when it returns

Shared by the CycleGAN trainer and segmentation pretraining.
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmgan import checkpoint
from cmgan.config import dumps_toml, save_config
from cmgan.distenv import require_cuda_if_assigned
from cmgan.logs import setup_logging
from cmgan.train import distributed
from cmgan.train.distributed import Backend
from cmgan.train.state import set_deterministic
from cmgan.train.stop import StopFlag

log = logging.getLogger(__name__)

EXIT_RESUMABLE = 75
"""Process exit status of a run stopped by a signal after saving (sysexits EX_TEMPFAIL: run it again to resume)."""

_TEST_SIGNAL_ENV = "CMGAN_TEST_SIGNAL_AT_STEP"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"


def prepare(run_dir: str | Path, cfg: Any, backend: Backend) -> tuple[RunPaths, Path | None]:
    """Create the run directory (rank 0), record the config, and agree on the checkpoint to resume from.

    Returns the paths and the newest complete checkpoint (None for a fresh run); every rank gets rank 0's choice,
    so ranks never resume from different steps even if a file system shows them different listings.
    """
    paths = RunPaths(Path(run_dir))
    choice = None
    if backend.is_main:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint.clean_temp(paths.checkpoints):
            log.info("removed the unfinished checkpoint %s (a write was interrupted)", stale)
        if paths.config.exists():
            old, new = paths.config.read_text(), dumps_toml(cfg)
            if old != new:
                diff = "\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), "before", "now", lineterm=""))
                log.warning("the config of %s changed since its last start:\n%s", paths.root, diff)
        save_config(cfg, paths.config)
        latest = checkpoint.latest(paths.checkpoints)
        choice = str(latest) if latest is not None else None
    choice = backend.broadcast_object(choice)
    return paths, Path(choice) if choice else None


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


def run_in_job(train: Any, batch_size: int, body: Any) -> dict[str, Any]:
    """The frame every training entry point runs in: logging, determinism, the distributed backend, the stop
    flag; `body(backend, stop)` returns the summary dict. The backend is closed whatever happens; a run that
    stopped on a signal hands the signal on afterwards (e.g. to submitit's USR2 handler: requeue and exit)."""
    setup_logging()
    require_cuda_if_assigned()  # first: a job given GPUs it cannot use stops before any slow start-up work
    set_deterministic(train.deterministic)
    backend = distributed.setup(train, batch_size)
    setup_logging(backend.rank)
    if backend.is_main:
        log.info("%s", backend.describe())
    stop = StopFlag()
    try:
        with stop:
            summary = body(backend, stop)
    finally:
        backend.close()
    if summary["status"] == "stopped":
        stop.chain_previous()
    return summary

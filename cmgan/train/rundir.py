"""The run directory: its layout, the resolved config, and the newest checkpoint to resume from.

    <run_dir>/config.toml      the resolved config of the latest start (a changed config on resume is logged)
    <run_dir>/checkpoints/     full-state checkpoints (cmgan.checkpoint)
    <run_dir>/metrics.jsonl    <run_dir>/tensorboard/    <run_dir>/samples/     (cmgan.train.monitor)
    <run_dir>/export/          the generator export (CycleGAN) or seg.pt (segmentation pretraining)
    <run_dir>/summary.json     what `train` returned, written when it returns

Shared by the CycleGAN trainer and segmentation pretraining. The frame their process runs in is
`cmgan.train.jobframe`; the step-boundary agreement and the checkpoint clock belong to the loop
(`cmgan.train.loop`).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmgan import checkpoint
from cmgan.config import dumps_toml, save_config
from cmgan.train.distributed import Backend

log = logging.getLogger(__name__)


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

"""What a person watches during training (rank 0 only): progress bar, metrics JSONL + TensorBoard, sample grids.

    <run_dir>/metrics.jsonl        one JSON object per logged step: step, lr, images/s, data-wait share, terms
    <run_dir>/tensorboard/         the same scalars (`tensorboard --logdir <run_dir>/tensorboard`)
    <run_dir>/samples/step_*.png   rows of MR | colorized G(x) | reconstructed F(G(x)) | edges of G(x)

On a terminal a rich progress bar shows step, images/s and the main loss terms; elsewhere (SLURM logs, CI)
the same line goes to the log every `log_every` steps. Other ranks get a Monitor that does nothing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmgan import files

log = logging.getLogger(__name__)

# Terms shown in the progress line (all terms go to the files).
_SHOWN = ("cycle_x", "cycle_y", "adv_g", "dx_real", "dy_real", "ce", "dice_loss")


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [-1, 1], C in {1, 3} -> (H, W, 3) uint8."""
    img = img.detach().float().cpu().clamp(-1, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return ((img.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)


def sample_grid(
    mr: torch.Tensor, colorized: torch.Tensor, reconstructed: torch.Tensor, edges: torch.Tensor
) -> np.ndarray:
    """Rows of MR | colorized | reconstructed | edges, one row per image; edges in [0, 1] (sigmoid of Laplacian).

    mr, reconstructed: (N, 1, H, W) in [-1, 1]; colorized: (N, 3, H, W) in [-1, 1]; edges: (N, 1, H, W) in
    [0, 1] -> (N*H + gaps, 4*W + gaps, 3) uint8 with 2-pixel white gaps.
    """
    rows = []
    gap = 2
    for i in range(mr.shape[0]):
        tiles = [to_uint8(mr[i]), to_uint8(colorized[i]), to_uint8(reconstructed[i]), to_uint8(edges[i] * 2 - 1)]
        h = tiles[0].shape[0]
        sep = np.full((h, gap, 3), 255, np.uint8)
        row = np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], axis=1)
        rows += [row, np.full((gap, row.shape[1], 3), 255, np.uint8)]
    return np.concatenate(rows[:-1], axis=0)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an (H, W, 3) uint8 array as PNG atomically."""
    from PIL import Image

    with files.atomic_open(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")


class Monitor:
    """Rank 0's view of the run. `active=False` (other ranks) makes every method a no-op."""

    def __init__(
        self, run_dir: Path, total_steps: int, start_step: int, active: bool, tensorboard: bool = True
    ) -> None:
        self.active = active
        self.run_dir = Path(run_dir)
        self.total = total_steps
        self._progress = None
        self._task = None
        self._tb = None
        self._jsonl = None
        if not active:
            return
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a declared dependency; a stripped env just loses the scalars
                log.warning("tensorboard is not installed: scalars go to metrics.jsonl only")
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=console, transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")
            self._progress.start()

    def update(self, step: int, info: dict[str, float]) -> None:
        """Every step: advance the bar (cheap; the line is rebuilt from `info`)."""
        if self._progress is not None:
            shown = " ".join(f"{k}={info[k]:.3f}" for k in _SHOWN if k in info)
            ips = info.get("images_per_s")
            self._progress.update(self._task, completed=step, info=f"{ips:.1f} img/s {shown}" if ips else shown)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Every `log_every` steps: one JSONL line, TensorBoard scalars and (without a terminal) a log line."""
        if not self.active:
            return
        record = {"step": step, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), step)
        if self._progress is None:
            if "images_per_s" in scalars:
                shown = " ".join(f"{k}={scalars[k]:.4f}" for k in _SHOWN if k in scalars)
                log.info("step %d/%d  %.2f img/s  %s", step, self.total, scalars["images_per_s"], shown)
            else:
                log.info("step %d/%d  %s", step, self.total, " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))

    def samples(self, step: int, grid: np.ndarray) -> Path | None:
        if not self.active:
            return None
        path = self.run_dir / "samples" / f"step_{step:08d}.png"
        save_png(grid, path)
        return path

    def message(self, text: str, *args: Any) -> None:
        """A rank-0 log line that does not tear the progress bar."""
        if not self.active:
            return
        if self._progress is not None:
            self._progress.console.log(text % args if args else text)
        else:
            log.info(text, *args)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self._progress = self._tb = self._jsonl = None

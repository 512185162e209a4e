"""Learning rate: scaling with the global batch and the schedule over the run (from `OptimConfig`)."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from cmgan.config import OptimConfig

log = logging.getLogger(__name__)

LR_WARN_ABOVE = 1e-3
"""A base learning rate above this is far beyond what this GAN trains stably with (the paper's code: 1e-4 at
batch 1; CycleGAN's: 2e-4); `report_lr` warns."""


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """The base learning rate at `global_batch` images per optimizer step.

    With `optim.scale_lr`, lr grows linearly with the global batch (per-rank batch x ranks x accumulation)
    over `optim.base_batch` (Goyal et al. 2017), so adding GPUs keeps the per-image step size.
    """
    if global_batch <= 0:
        raise ValueError(f"global batch {global_batch} must be positive")
    return optim.lr * global_batch / optim.base_batch if optim.scale_lr else optim.lr


def report_lr(optim: OptimConfig, global_batch: int, is_main: bool = True) -> float:
    """The base learning rate this run uses (`scaled_lr`), logged with how it was derived; warns above
    `LR_WARN_ABOVE`. Returns it (the trainer also writes it into the run's summary)."""
    lr = scaled_lr(optim, global_batch)
    how = (f"optim.lr {optim.lr:g} x global batch {global_batch} / optim.base_batch {optim.base_batch}"
           if optim.scale_lr else f"optim.lr, not scaled (optim.scale_lr=false; global batch {global_batch})")
    if is_main:
        log.info("learning rate %.4g (%s)", lr, how)
        if lr > LR_WARN_ABOVE:
            log.warning("learning rate %.4g is above %g, beyond what this GAN trains stably with (%s); set "
                        "optim.lr, optim.base_batch or optim.scale_lr=false", lr, LR_WARN_ABOVE, how)
    return lr


def lr_factor(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr after `step` optimizer steps (0-based), for `LambdaLR`.

    step:     gamma ** (milestones passed), milestones as fractions of `total_steps` (public code: x0.1 at
              epochs 16 and 24 of 33).
    linear:   1 until `linear_start * total_steps`, then linear decay towards 0 at the end (CycleGAN).
    constant: 1.
    """
    if optim.schedule == "constant":
        return lambda step: 1.0
    if optim.schedule == "step":
        bounds = sorted(round(m * total_steps) for m in optim.milestones)
        return lambda step: optim.gamma ** bisect.bisect_right(bounds, step)
    if optim.schedule == "linear":
        start = math.floor(optim.linear_start * total_steps)
        span = max(1, total_steps - start)
        # CycleGAN's form: the last step still has a small non-zero lr (it would be wasted at exactly 0).
        return lambda step: 1.0 - max(0, step - start) / (span + 1)
    raise ValueError(f"unknown schedule {optim.schedule!r}; choose step, linear or constant")


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> LambdaLR:
    """A `LambdaLR` following `lr_factor`; its state is only the step count (the rule comes from the config)."""
    return LambdaLR(optimizer, lr_factor(optim, total_steps))

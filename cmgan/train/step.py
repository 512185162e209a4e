"""One CycleGAN training step's forward passes: values in, values out (named loss terms and images).

The trainer owns backward, accumulation and optimizer steps (through the distributed seam); these functions
only compute. Nothing is stored on an object between calls.

    images, gen = generator_forward(nets, x, y, loss, laplacian, autocast)   # D frozen by the caller
    disc = discriminator_forward(nets, x, y, pool_x.query(images.fake_x), pool_y.query(images.fake_y), ...)

Segmenter S: frozen, eval mode, under no_grad, once per image per step. `objective.translate` runs it on the
batch [x, gray(y), F(y)] that G receives, so its two maps feed G for G(x), the identity image G(gray(y)) and the
cycle G(F(y)) without recomputation. For G(F(y)), S sees F(y) under no_grad: the cycle's gradient reaches F
through G's image input only, not through S's features. S is a fixed anatomical prior (docs/method.md), and
differentiating through it would cost a second S forward with a graph and a backward per step.

Precision: networks run under `autocast` (bf16/fp16 or nothing); every loss term is computed in float32
(the loss functions cast their inputs up: reductions over B x H x W values lose digits in bf16), and the
Laplacian and gray conversions run in float32 with autocast off (cmgan.models.edges). Spectral norm's power
iteration runs in float32 (cmgan.models.layers).
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch

from cmgan.config import LossConfig
from cmgan.losses.objective import CycleImages, Objective, discriminator_losses, generator_losses, translate


class StepNets(NamedTuple):
    """The callables of one step. G, F, Dx, Dy may be DDP-wrapped, engine-dispatched or compiled."""

    G: Any
    F: Any
    Dx: Any
    """Trainable Dx (its own step)."""
    Dy: Any
    Dx_frozen: Any
    """The unwrapped Dx, called in the generator step while its parameters are frozen (no DDP reducer)."""
    Dy_frozen: Any
    S: Any
    """The frozen segmenter in eval mode, or None when model.fusion = none."""
    perceptual: Any


def generator_forward(
    nets: StepNets,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: LossConfig,
    laplacian: str,
    autocast: contextlib.AbstractContextManager,
) -> tuple[CycleImages, Objective]:
    """G's and F's objective on reals x (B, 1, H, W) and y (B, 3, H, W), float32 in [-1, 1].

    Returns the cycle's images (attached to the graph; fake_x / fake_y feed the pools) and the objective
    (`total`: scalar float32 to backpropagate; `terms`: detached, unweighted).
    The caller must freeze Dx and Dy (`Backend.frozen`) around this call.
    """
    with autocast:
        images = translate(nets.G, nets.F, x, y, nets.S, identity=loss.identity > 0)
        objective = generator_losses(images, nets.Dx_frozen, nets.Dy_frozen, nets.perceptual, loss, laplacian)
    return images, objective


def discriminator_forward(
    nets: StepNets,
    x: torch.Tensor,
    y: torch.Tensor,
    fake_x: torch.Tensor,
    fake_y: torch.Tensor,
    loss: LossConfig,
    autocast: contextlib.AbstractContextManager,
) -> Objective:
    """Dx's and Dy's objective: reals x (B, 1, H, W), y (B, 3, H, W); fakes (detached, e.g. from the pools)."""
    with autocast:
        return discriminator_losses(nets.Dx, nets.Dy, x, y, fake_x.detach(), fake_y.detach(), loss)


def all_finite(*objectives: Objective) -> torch.Tensor:
    """0-dim bool tensor on the losses' device: True when every total and term is finite (checked before the
    update). Not read here: on a GPU reading it would wait for the whole step; the trainer folds it into the one
    agreement all-reduce per step (`Backend.all_reduce_max`)."""
    values = [o.total.detach() for o in objectives] + [t.detach() for o in objectives for t in o.terms.values()]
    return torch.isfinite(torch.stack([v.float().reshape(()) for v in values])).all()

"""Gradient accumulation: batch 2 x `train.grad_accum=2` gives the update of batch 4.

The trainer's own pieces run here: `trainer.build` (networks, optimizers through the distributed seam, pools) and
`trainer._accumulate_step` (forward + backward of every micro-batch, exactly as `train` calls it); the test then
reads the gradient every parameter of G, F, Dx and Dy holds before the optimizer update.

Why the two can agree: both runs see the same four MR and four color slices with the same augmentation (the
loader draws raw samples in an order that does not depend on the batch size and augments each with a generator
seeded by its position in the stream: checked below); every loss term is a mean over the batch and the backend
divides each micro-batch's loss by grad_accum, so the mean of two half-batch means is the mean over four; the
networks use instance normalization (per sample, no batch statistics). Two things are made equal first:
- the image pools are off (loss.pool_size=0): a history pool returns a random mix of old and new fakes, and the
  mix differs between one batch of 4 and two of 2;
- spectral norm's power iteration is run to convergence before the step: every training forward does one more
  iteration of it, so two micro-batches would otherwise normalize the weights with a different sigma estimate
  than one batch (measured: 5% of the gradient at the first step from torch's random start vector). In a real
  run the estimate has converged after the first few hundred steps and the effect vanishes likewise.

Tolerance: what remains is float32 rounding (two half-batch sums added instead of one sum over four, and the
converged power iteration moving by rounding), measured here at about 1e-6 of the largest gradient of each
tensor; the test allows 1e-4 of it (plus 1e-9 absolute), while a real error is far outside it (a missing
1/grad_accum doubles the gradient; one micro-batch alone gives another gradient: the second test).
"""

from __future__ import annotations

import pytest
import torch

from cmgan.data.pipeline import UnpairedStream
from cmgan.models.layers import SpectralNorm
from cmgan.train import distributed
from cmgan.train.trainer import _accumulate_step, build

from .conftest import tiny_config

pytestmark = pytest.mark.slow  # four real training steps of the tiny model

COMMON = ("loss.pool_size=0", "train.deterministic=true", "data.num_workers=1", "optim.schedule=constant")


@torch.no_grad()
def converge_spectral_norms(modules: list[torch.nn.Module], iterations: int = 500) -> None:
    for module in modules:
        for m in module.modules():
            if hasattr(m, "parametrizations") and "weight" in m.parametrizations:
                for sn in m.parametrizations["weight"]:
                    if isinstance(sn, SpectralNorm):
                        weight = m.parametrizations["weight"].original
                        sn._power_method(sn._reshape_weight_to_matrix(weight.to(sn._u.dtype)), iterations)


def gradients(demo, run_dir, batch: int, accum: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Gradients of one training step of the trainer's own code, and the MR keys it consumed."""
    cfg = tiny_config(demo, run_dir, *COMMON, f"data.batch_size={batch}", f"train.grad_accum={accum}")
    backend = distributed.setup(cfg.train, cfg.data.batch_size)
    stream = None
    try:
        parts = build(cfg, backend)
        nets = {"G": parts.gen.raw["G"], "F": parts.gen.raw["F"], "Dx": parts.disc.raw["Dx"],
                "Dy": parts.disc.raw["Dy"]}
        converge_spectral_norms(list(nets.values()))
        stream = UnpairedStream(cfg.data, cfg.model.image_size, 0, 1, cfg.train.seed)
        seen: list[str] = []

        def batches():
            for b in stream:
                seen.extend(b["mr_keys"] + b["color_keys"])
                yield b

        _accumulate_step(cfg, backend, parts, batches())
        grads = {f"{n}.{k}": p.grad.detach().clone() for n, net in nets.items()
                 for k, p in net.named_parameters() if p.grad is not None}
        return grads, seen
    finally:
        if stream is not None:
            stream.close()
        backend.close()


def test_batch_2_with_grad_accum_2_gives_the_update_of_batch_4(demo_shards, tmp_path):
    whole, keys4 = gradients(demo_shards, tmp_path / "b4", 4, 1)
    accumulated, keys2x2 = gradients(demo_shards, tmp_path / "b2x2", 2, 2)
    assert sorted(keys4) == sorted(keys2x2)  # the same slices in both
    assert whole.keys() == accumulated.keys() and len(whole) > 20
    for name, g in whole.items():
        scale = g.abs().max().item()
        diff = (g - accumulated[name]).abs().max().item()
        assert diff <= 1e-4 * scale + 1e-9, f"{name}: |g4 - g2x2| = {diff:.3g}, |g| up to {scale:.3g}"


def test_one_micro_batch_alone_gives_another_gradient(demo_shards, tmp_path):
    # The comparison above can fail: half of the batch is not the batch.
    whole, _ = gradients(demo_shards, tmp_path / "b4", 4, 1)
    half, _ = gradients(demo_shards, tmp_path / "b2", 2, 1)
    far = [n for n, g in whole.items() if (g - half[n]).abs().max() > 1e-2 * g.abs().max()]
    assert len(far) > len(whole) // 2

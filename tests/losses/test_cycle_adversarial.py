"""cmgan.losses.cycle and .adversarial, by their properties."""

import pytest
import torch

from cmgan.losses.adversarial import lsgan_discriminator, lsgan_generator
from cmgan.losses.cycle import cycle_loss


def test_cycle_loss_is_zero_for_a_perfect_reconstruction_and_the_mean_absolute_error_otherwise():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert cycle_loss(x.clone(), x).item() == 0.0
    noise = torch.randn_like(x) * 0.1
    assert cycle_loss(x + noise, x).item() == pytest.approx(noise.abs().mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="differ"):
        cycle_loss(x[:1], x)


def test_cycle_loss_is_float32_for_bf16_reconstructions():
    x = torch.rand(2, 1, 8, 8)
    assert cycle_loss(x.bfloat16(), x).dtype == torch.float32


def test_discriminator_loss_is_lower_when_real_scores_beat_fake_scores():
    good = lsgan_discriminator(torch.full((2, 1, 4, 4), 0.9), torch.full((2, 1, 4, 4), 0.1))
    bad = lsgan_discriminator(torch.full((2, 1, 4, 4), 0.1), torch.full((2, 1, 4, 4), 0.9))
    assert sum(good.values()) < sum(bad.values())
    perfect = lsgan_discriminator(torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    assert sum(perfect.values()).item() == 0.0


def test_generator_loss_is_lower_when_fakes_are_scored_as_real():
    assert lsgan_generator(torch.full((2, 1, 4, 4), 0.9)) < lsgan_generator(torch.full((2, 1, 4, 4), 0.1))
    assert lsgan_generator(torch.ones(3, 1, 2, 2)).item() == 0.0

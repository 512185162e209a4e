"""VGGFeatures runs its convolutions channels_last under CPU bf16 autocast (oneDNN's kernels), same features."""

import torch
import torch.nn as nn

from cmgan.losses.perceptual import VGGFeatures
from tests.losses.test_perceptual import tiny_torchvision_vgg16


def test_vgg_convs_run_channels_last_under_bf16_autocast_with_the_features_of_fp32(tmp_path):
    vgg = VGGFeatures.from_file(tiny_torchvision_vgg16(tmp_path / "vgg16.pth"), "relu3_3")
    seen: list[bool] = []
    for m in vgg.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(lambda mod, args: seen.append(
                args[0].is_contiguous(memory_format=torch.channels_last)
                and mod.weight.is_contiguous(memory_format=torch.channels_last)))
    gray = torch.rand(2, 1, 32, 32) * 2 - 1  # expanded to 3 channels inside: a stride-0 input
    want = vgg(gray)
    assert not any(seen)  # fp32: the caller's layout (NCHW) is kept
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vgg(gray)
    assert seen and all(seen)
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()

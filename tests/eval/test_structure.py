"""SSIM, PSNR and MI of luminance agree with scikit-image and with their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cmgan.eval import structure


def _pair(b: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(b, 1, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


def test_gaussian_ssim_equals_scikit_image():
    x, y = _pair(3, 32, 40, seed=0)
    ours = structure.ssim(x, y, data_range=1.0)
    ref = [structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("window", [7, 101])  # 7: scikit-image's default; 101: the authors' window
def test_uniform_window_ssim_equals_scikit_image_default(window):
    x, y = _pair(2, 128, 112, seed=1)
    ours = structure.ssim(x, y, 1.0, window=window, kernel="uniform", sample_covariance=True)
    ref = [structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), win_size=window, data_range=1.0)
           for i in range(2)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)


def test_psnr_is_per_image_and_equals_scikit_image():
    x, y = _pair(3, 24, 24, seed=2)
    y[1] = x[1] + 0.01  # very different errors per image: a pooled MSE would differ from the per-image mean
    ours = structure.psnr(x, y)
    ref = [peak_signal_noise_ratio(x[i, 0].numpy(), y[i, 0].numpy(), data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)
    assert structure.psnr(x, x).tolist() == [structure.PSNR_MAX_DB] * 3


def test_mutual_information_equals_the_histogram_definition():
    x, y = _pair(2, 32, 32, seed=3)
    bins = 16
    ours = structure.mutual_information(x, y, bins)
    for i in range(2):
        joint, _, _ = np.histogram2d(x[i, 0].numpy().ravel(), y[i, 0].numpy().ravel(), bins=bins,
                                     range=[[0, 1], [0, 1]])
        p = joint / joint.sum()
        px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
        nz = p > 0
        assert ours[i].item() == pytest.approx((p[nz] * np.log2(p[nz] / (px @ py)[nz])).sum(), rel=1e-12)
    # MI of an image with itself is its entropy; with a constant image it is 0.
    p = np.histogram(x[0, 0].numpy(), bins=bins, range=(0, 1))[0] / x[0].numel()
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    assert structure.mutual_information(x, x, bins)[0].item() == pytest.approx(entropy, rel=1e-12)
    assert structure.mutual_information(x, torch.full_like(x, 0.5), bins).abs().max() < 1e-12


def test_a_gray_output_equal_to_its_input_scores_perfectly():
    gray = torch.rand(2, 1, 16, 16, dtype=torch.float64) * 2 - 1
    m = structure.structure_metrics(gray, gray.expand(-1, 3, -1, -1), bins=32)
    assert torch.allclose(m["ssim"], torch.ones(2, dtype=torch.float64))
    assert m["psnr"].tolist() == [structure.PSNR_MAX_DB] * 2
    assert torch.allclose(m["mi"], structure.mutual_information((gray + 1) / 2, (gray + 1) / 2, 32))


def test_luminance_is_bt601_and_metrics_see_only_luminance():
    rgb = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 2 - 1
    y = structure.luminance(rgb)
    assert torch.allclose(y, 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:])
    # A chroma change that keeps Y leaves SSIM/PSNR/MI unchanged.
    shift = torch.tensor([0.587, -0.299, 0.0], dtype=torch.float64).view(1, 3, 1, 1) * 0.1
    a = structure.structure_metrics(y, rgb, bins=32)
    b = structure.structure_metrics(y, rgb + shift, bins=32)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_bad_shapes_and_windows_are_refused_with_the_reason():
    x, y = _pair(1, 8, 8, seed=4)
    with pytest.raises(ValueError, match="smaller than the SSIM window 11"):
        structure.ssim(x, y)
    with pytest.raises(ValueError, match="shapes differ"):
        structure.psnr(x, y[..., :7])
    with pytest.raises(ValueError, match="does not match input"):
        structure.structure_metrics(torch.zeros(2, 1, 16, 16), torch.zeros(2, 3, 16, 12))
    with pytest.raises(ValueError, match="gaussian"):
        structure.ssim(x, y, window=3, kernel="box")


def _blob_mask(b: int, h: int, w: int) -> torch.Tensor:
    """(b, 1, h, w) bool: an off-centre ellipse per image, a different one each, like a slice's anatomy."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    masks = [((yy - h * (0.4 + 0.1 * i)) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 <= 1 for i in range(b)]
    return torch.stack(masks).unsqueeze(1)


def test_foreground_ssim_equals_scikit_image_map_averaged_over_the_mask():
    x, y = _pair(3, 48, 40, seed=4)
    mask = _blob_mask(3, 48, 40)
    ours = structure.ssim(x, y, 1.0, mask=mask)
    pad = 11 // 2
    for i in range(3):
        _, smap = structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1.0, full=True)
        m = mask[i, 0].numpy()[pad:-pad, pad:-pad]
        assert ours[i].item() == pytest.approx(smap[pad:-pad, pad:-pad][m].mean(), abs=1e-12)


def test_foreground_psnr_equals_scikit_image_on_the_masked_pixels():
    x, y = _pair(2, 32, 32, seed=5)
    mask = _blob_mask(2, 32, 32)
    ours = structure.psnr(x, y, mask=mask)
    for i in range(2):
        m = mask[i, 0].numpy()
        ref = peak_signal_noise_ratio(x[i, 0].numpy()[m], y[i, 0].numpy()[m], data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-12)


def test_background_pads_whole_slice_scores_but_not_foreground_scores():
    # A perfect black background and a poor foreground: the whole-slice scores rise, the foreground ones do not.
    x, y = _pair(1, 64, 64, seed=6)
    mask = _blob_mask(1, 64, 64)
    x, y = torch.where(mask, x, 0.0), torch.where(mask, y, 0.0)
    assert structure.ssim(x, y, mask=mask).item() < structure.ssim(x, y).item() - 0.03
    assert structure.psnr(x, y, mask=mask).item() < structure.psnr(x, y).item() - 3.0


def test_foreground_dilates_the_anatomy_and_empty_masks_give_nan():
    mask = torch.zeros(2, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = True
    fg = structure.foreground(mask, dilate=2)
    assert fg.shape == (2, 1, 9, 9) and fg[0, 0].sum().item() == 25 and fg[0, 0, 2:7, 2:7].all()
    x, y = _pair(2, 9, 9, seed=7)
    assert torch.isnan(structure.psnr(x, y, mask=fg)[1]) and torch.isfinite(structure.psnr(x, y, mask=fg)[0])
    assert torch.isnan(structure.ssim(x, y, 1.0, window=3, mask=fg)[1])

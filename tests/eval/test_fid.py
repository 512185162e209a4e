"""FID statistics and distance agree with pytorch-fid's, and so does the end-to-end value on the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cmgan.eval import fid, inception


def _features(n: int, dims: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dims, dims)) / np.sqrt(dims)
    return (np.abs(rng.standard_normal((n, dims)) @ mix) + 0.3).astype(np.float32)  # non-negative, like pool3


def _frechet_by_eigenvalues(mu1, s1, mu2, s2) -> float:
    """The same distance by another route: Tr sqrt(S1 S2) = sum of sqrt(eig(sqrt(S1) S2 sqrt(S1))), symmetric."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner).sum())


@pytest.mark.parametrize("n", [200, 40])  # 40 < 64 dims: a singular covariance, pytorch-fid's hard case
def test_frechet_distance_equals_pytorch_fid_on_the_same_features(n):
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = _features(n, 64, seed=0).astype(np.float64), _features(n, 64, seed=1).astype(np.float64) * 1.1
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    ours = fid.frechet_distance(*stats[0], *stats[1])
    theirs = calculate_frechet_distance(*stats[0], *stats[1])
    assert ours > 0
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert fid.frechet_distance(*stats[0], *stats[0]) == pytest.approx(0, abs=1e-6 * ours)


@pytest.mark.parametrize("n", [200, 40])
def test_frechet_distance_agrees_with_an_eigenvalue_computation_of_the_same_formula(n):
    a, b = _features(n, 64, seed=0).astype(np.float64), _features(n, 64, seed=1).astype(np.float64) * 1.1
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    ours = fid.frechet_distance(*stats[0], *stats[1])
    assert ours > 0
    assert ours == pytest.approx(_frechet_by_eigenvalues(*stats[0], *stats[1]), rel=1e-6)


def test_frechet_distance_of_one_dimensional_gaussians_is_the_closed_form():
    # N(1, 4) vs N(3, 9): (1 - 3)^2 + 4 + 9 - 2 sqrt(36) = 5
    assert fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == (
        pytest.approx(5.0, rel=1e-12))
    with pytest.raises(ValueError, match="mean vectors differ in length"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_sums_give_numpy_mean_and_covariance():
    feats = _features(150, 64, seed=2)
    stats = fid.FeatureStats(64)
    for chunk in np.array_split(feats, 7):  # uneven batches
        stats.update(torch.from_numpy(chunk))
    mu, sigma = stats.mean_cov()
    as64 = feats.astype(np.float64)  # pytorch-fid keeps float32 features in a float64 array
    np.testing.assert_allclose(mu, as64.mean(0), rtol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(as64, rowvar=False), rtol=1e-9, atol=1e-13)


def test_statistics_refuse_too_few_images_and_nan_features():
    stats = fid.FeatureStats(8)
    stats.update(torch.ones(1, 8))
    with pytest.raises(ValueError, match="at least 2 images"):
        stats.mean_cov()
    with pytest.raises(ValueError, match="NaN"):
        stats.update(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        stats.update(torch.ones(2, 9))


def test_generated_tensors_reach_the_network_as_their_png_files_would(tmp_path, make_images):
    import torchvision.transforms as TF

    images = make_images(3, seed=3)
    images[0, :, :2, :2] = torch.tensor([-1.0, 1.0, 0.0]).view(3, 1, 1)  # the range ends and the middle
    u8 = fid.to_uint8(images)
    for i in range(3):
        Image.fromarray(u8[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    from_files = torch.stack([TF.ToTensor()(Image.open(tmp_path / f"{i}.png").convert("RGB")) for i in range(3)])
    assert torch.equal(fid.fid_input(images), from_files)
    assert torch.equal(fid.to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])), torch.tensor([0, 128, 255, 255]).byte())


def test_cached_statistics_are_a_pytorch_fid_stats_file(tmp_path):
    from pytorch_fid.fid_score import compute_statistics_of_path

    feats = _features(20, 16, seed=4).astype(np.float64)
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    path = tmp_path / "cache" / "real.npz"
    fid.save_stats(path, mu, sigma, 20, {"weights_sha256": "abc"})
    m, s = compute_statistics_of_path(str(path), None, 1, 16, "cpu")
    np.testing.assert_array_equal(m, mu)
    np.testing.assert_array_equal(s, sigma)
    assert fid.load_stats(path)[2:] == (20, {"weights_sha256": "abc"})
    assert [p.name for p in path.parent.iterdir()] == ["real.npz"]


@pytest.mark.slow
def test_end_to_end_fid_equals_pytorch_fid_on_the_same_images(tmp_path, torch_home, fid_weights, monkeypatch,
                                                              make_images):
    """Generated tensors and real uint8 images through our path vs pytorch-fid on the PNG files of them.

    768-d features (pytorch-fid's --dims 768, the whole network up to Mixed_6e): scipy's sqrtm of a 2048 x 2048
    matrix takes 20-40 s on 2 cores, twice. The pool3 (2048) features are checked bitwise against pytorch-fid's
    InceptionV3 in test_inception.py, and the distance itself above.
    """
    from pytorch_fid.fid_score import calculate_fid_given_paths

    fake = make_images(6, seed=10)
    real = fid.to_uint8(make_images(6, seed=11) * 0.7 + 0.2)  # another distribution, as uint8 (a color shard)
    for name, u8 in (("fake", fid.to_uint8(fake)), ("real", real)):
        (tmp_path / name).mkdir()
        for i in range(len(u8)):
            Image.fromarray(u8[i].permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:02d}.png")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    theirs = calculate_fid_given_paths([str(tmp_path / "fake"), str(tmp_path / "real")], 4, "cpu", 768, 0)

    model = inception.load_fid_inception(fid_weights, dims=768)
    stats = []
    for batches in ([fid.fid_input(fake[:4]), fid.fid_input(fake[4:])], [fid.uint8_to_unit(real)]):
        s = fid.FeatureStats(768)
        for x in batches:
            with torch.inference_mode():
                s.update(model(x))
        stats.append(s.mean_cov())
    ours = fid.frechet_distance(*stats[0], *stats[1])
    assert theirs > 0
    assert ours == pytest.approx(theirs, rel=1e-6)

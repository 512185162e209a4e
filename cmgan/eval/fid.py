"""FID as pytorch-fid computes it, from statistics that add up exactly across ranks.

pytorch-fid reads 8-bit RGB files, divides by 255 (torchvision's ToTensor), runs the FID Inception
(`cmgan.eval.inception.FIDInception`), keeps the float32 pool3 features as float64, takes their mean and
`np.cov` (ddof 1) and evaluates `calculate_frechet_distance`. Here the generator's outputs arrive as tensors in
[-1, 1]: `to_uint8` renders them to 8 bits exactly as an image file would hold them (round((x + 1) * 127.5)),
so the network sees the same input as pytorch-fid reading those files; real color slices are uint8 already.

Statistics are float64 sums (count, sum of features, sum of outer products): a rank adds its images, the sums
are all-reduced, and the mean and covariance follow from the totals, so FID does not depend on the number of
ranks (float32 sums drift by ~2e-5 relative; float64 sums match pytorch-fid to ~1e-13).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg

from cmgan import files
from cmgan.distenv import all_reduce_sum

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ inputs


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [-1, 1] -> (B, C, H, W) uint8: the 8-bit image a PNG of the output would hold.

    Values outside [-1, 1] are clipped; halves round to even (torch.round), i.e. round((x + 1) * 127.5).
    """
    return torch.round((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 in [0, 1], exactly as torchvision's ToTensor divides (float32 / 255)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.to(torch.float32).div(255)


def fid_input(images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Generator output (B, 3, H, W) in [-1, 1] -> FIDInception input, float32 in [0, 1].

    quantize=True (default) rounds to 8 bits first: the FID of the images as files, pytorch-fid's definition.
    """
    if quantize:
        return uint8_to_unit(to_uint8(images))
    return ((images.float().clamp(-1.0, 1.0) + 1.0) / 2.0).contiguous()


# ------------------------------------------------------------------------------------------ statistics


@dataclass
class FeatureStats:
    """Running float64 sums of feature vectors: count, sum (D,), sum of outer products (D, D)."""

    dims: int
    count: int = 0
    total: torch.Tensor = field(init=False)
    outer: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.dims, dtype=torch.float64)
        self.outer = torch.zeros(self.dims, self.dims, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        """Add features (B, D) (float32 from the network; summed in float64)."""
        if features.ndim != 2 or features.shape[1] != self.dims:
            raise ValueError(f"features of shape {tuple(features.shape)}, expected (B, {self.dims})")
        f = features.detach().to("cpu", torch.float64)
        if not torch.isfinite(f).all():
            raise ValueError("Inception features contain NaN or infinite values (NaN images?)")
        self.count += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self) -> FeatureStats:
        """Sum count, total and outer over all ranks (in place); every rank then holds the totals."""
        count = all_reduce_sum(torch.tensor([float(self.count)], dtype=torch.float64))
        self.count = int(count.item())
        all_reduce_sum(self.total)
        all_reduce_sum(self.outer)
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D)) float64; sigma with ddof 1, like np.cov(rowvar=False). Needs >= 2 images."""
        if self.count < 2:
            raise ValueError(f"FID needs at least 2 images per set, got {self.count}")
        n = float(self.count)
        total = self.total.numpy()
        mu = total / n
        sigma = (self.outer.numpy() - np.outer(total, mu)) / (n - 1.0)
        return mu, sigma


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """pytorch-fid's `calculate_frechet_distance`, step for step (d^2 = |mu1-mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))).

    Non-finite sqrtm: `eps` is added to both diagonals and sqrtm repeated (logged instead of printed). A
    non-negligible imaginary diagonal (> 1e-3) raises ValueError; otherwise the real part is kept.
    Not a call of pytorch-fid's function: pytorch-fid 0.3.0 passes `disp=False` to scipy's `sqrtm`, deprecated
    since scipy 1.16, and with scipy 1.17 its result no longer unpacks for a 1x1 covariance (ValueError);
    tests/eval/test_fid.py checks that both give the same value where pytorch-fid's works.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances differ in shape: {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # with fewer images than dims the product is singular by construction
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("fid calculation produces singular product; adding %s to diagonal of cov estimates", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# ------------------------------------------------------------------------------------------ cache


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, count: int, meta: dict[str, Any]) -> None:
    """Write statistics as an npz pytorch-fid can read (`mu`, `sigma`), plus `count` and `meta` (JSON); atomic."""
    with files.atomic_path(path, suffix=".npz") as tmp:  # the suffix, or np.savez appends one
        np.savez(tmp, mu=mu, sigma=sigma, count=np.int64(count), meta=np.array(json.dumps(meta, sort_keys=True)))


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """(mu, sigma, count, meta) from `save_stats`'s npz."""
    with np.load(path, allow_pickle=False) as f:
        return f["mu"].copy(), f["sigma"].copy(), int(f["count"]), json.loads(str(f["meta"]))

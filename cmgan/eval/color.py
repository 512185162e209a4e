"""Color truth on demo data: CIEDE2000 against the true rendering, and tissue color consistency across slices.

Demo MR test slices carry `truth.npy` (the phantom's true color rendering, uint8) and `label.npy` (tissue
classes). Colors are compared in CIELAB (`cmgan.colorspace`: sRGB, D65, 2 degree observer, as scikit-image's
`rgb2lab`), float64:
- `slice_delta_e`: mean CIEDE2000 (kL = kC = kH = 1) between output and truth over the foreground mask.
- `label_mean_lab`: per slice, the mean Lab color of each tissue label; `color_spread` then measures, per
  subject and label, how far these per-slice colors scatter: sqrt(mean over slices of |c_s - c_mean|^2)
  (the RMS CIE76 distance to the subject's mean color of that tissue). A colorizer that paints white matter
  the same color on every slice has spread ~0; the paper claims consistency but did not measure it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cmgan.colorspace import srgb_to_lab


def _polar_2pi(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.atan2(b, a)
    return torch.hypot(a, b), torch.where(h < 0, h + 2 * math.pi, h)


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 color difference (Sharma, Wu, Dalal 2005; kL = kC = kH = 1): (..., 3) x (..., 3) -> (...) float64."""
    lab1, lab2 = lab1.to(torch.float64), lab2.to(torch.float64)
    L1, a1, b1 = lab1.unbind(-1)
    L2, a2, b2 = lab2.unbind(-1)
    cbar = 0.5 * (torch.hypot(a1, b1) + torch.hypot(a2, b2))
    c7 = cbar**7
    g = 0.5 * (1 - torch.sqrt(c7 / (c7 + 25.0**7)))
    C1, h1 = _polar_2pi(a1 * (1 + g), b1)
    C2, h2 = _polar_2pi(a2 * (1 + g), b2)

    lbar = 0.5 * (L1 + L2)
    t = (lbar - 50) ** 2
    l_term = (L2 - L1) / (1 + 0.015 * t / torch.sqrt(20 + t))

    cbar = 0.5 * (C1 + C2)
    c_term = (C2 - C1) / (1 + 0.045 * cbar)

    h_diff, h_sum, cc = h2 - h1, h1 + h2, C1 * C2
    dh = torch.where(h_diff > math.pi, h_diff - 2 * math.pi, h_diff)
    dh = torch.where(h_diff < -math.pi, h_diff + 2 * math.pi, dh)
    dh = torch.where(cc == 0, 0.0, dh)
    dh_term = 2 * torch.sqrt(cc) * torch.sin(dh / 2)

    wrap = (cc != 0) & (h_diff.abs() > math.pi)
    hbar = torch.where(wrap & (h_sum < 2 * math.pi), h_sum + 2 * math.pi, h_sum)
    hbar = torch.where(wrap & (h_sum >= 2 * math.pi), h_sum - 2 * math.pi, hbar)
    hbar = torch.where(cc == 0, 2 * hbar, hbar) * 0.5

    tt = (
        1
        - 0.17 * torch.cos(hbar - math.radians(30))
        + 0.24 * torch.cos(2 * hbar)
        + 0.32 * torch.cos(3 * hbar + math.radians(6))
        - 0.20 * torch.cos(4 * hbar - math.radians(63))
    )
    h_term = dh_term / (1 + 0.015 * cbar * tt)

    c7 = cbar**7
    rc = 2 * torch.sqrt(c7 / (c7 + 25.0**7))
    dtheta = math.radians(30) * torch.exp(-(((torch.rad2deg(hbar) - 275) / 25) ** 2))
    r_term = -torch.sin(2 * dtheta) * rc * c_term * h_term
    return torch.sqrt((l_term**2 + c_term**2 + h_term**2 + r_term).clamp_min(0))


def output_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Generator output (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) Lab (clipped to the sRGB gamut [0, 1] first)."""
    return srgb_to_lab(((rgb.to(torch.float64) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))


def truth_lab(truth: torch.Tensor) -> torch.Tensor:
    """True rendering (B, H, W, 3) uint8 -> (B, H, W, 3) Lab."""
    return srgb_to_lab(truth.to(torch.float64) / 255.0)


def slice_delta_e(lab: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CIEDE2000 over each slice's mask: lab, truth (B, H, W, 3) Lab, mask (B, H, W) bool -> (B,) (NaN: empty)."""
    if lab.shape != truth.shape or lab.shape[:3] != mask.shape:
        raise ValueError(f"output {tuple(lab.shape)}, truth {tuple(truth.shape)}, mask {tuple(mask.shape)} differ")
    de = ciede2000(lab, truth)
    m = mask.to(torch.float64)
    n = m.flatten(1).sum(1)
    return torch.where(n > 0, (de * m).flatten(1).sum(1) / n.clamp_min(1), math.nan)


def label_mean_lab(lab: torch.Tensor, label: torch.Tensor, num_labels: int, min_pixels: int = 16) -> torch.Tensor:
    """Mean Lab color per tissue label: lab (B, H, W, 3), label (B, H, W) int -> (B, num_labels, 3) float64.

    Row k is label k (row 0, the background, is NaN); NaN where a slice has fewer than min_pixels of it.
    """
    if lab.shape[:3] != label.shape:
        raise ValueError(f"labels {tuple(label.shape)} do not match the image {tuple(lab.shape[:3])}")
    b = lab.shape[0]
    idx = label.long().clamp(0, num_labels - 1).flatten(1) + torch.arange(b).unsqueeze(1) * num_labels
    flat = lab.reshape(b, -1, 3)
    sums = torch.zeros(b * num_labels, 3, dtype=torch.float64).index_add_(0, idx.flatten(), flat.reshape(-1, 3))
    counts = torch.bincount(idx.flatten(), minlength=b * num_labels).to(torch.float64)
    means = (sums / counts.clamp_min(1).unsqueeze(1)).view(b, num_labels, 3)
    present = (counts.view(b, num_labels) >= min_pixels) & (torch.arange(num_labels) > 0)
    return torch.where(present.unsqueeze(-1), means, math.nan)


def color_spread(means: np.ndarray) -> np.ndarray:
    """Per-label spread across slices: means (S, K, 3) Lab (NaN: absent) -> (K,) float64.

    sqrt(mean_s |c_s - mean_s c_s|^2) over the slices where label k is present; NaN with fewer than 2 slices.
    """
    means = np.asarray(means, dtype=np.float64)
    out = np.full(means.shape[1], np.nan)
    for k in range(means.shape[1]):
        c = means[:, k][~np.isnan(means[:, k]).any(1)]
        if len(c) >= 2:
            out[k] = float(np.sqrt(((c - c.mean(0)) ** 2).sum(1).mean()))
    return out

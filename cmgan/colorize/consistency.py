"""Slice consistency: how much the colour of tissue jumps between neighbouring slices, and an optional fix.

G colorizes each slice alone, so the same tissue can change hue from one slice to the next ("flicker" when a
viewer scrolls through the volume or reslices it). Measured inside the foreground of both slices of every
adjacent pair along the slicing axis, in CIE Lab (`cmgan.colorspace`: sRGB, D65):

    delta_e   mean |Lab(k+1) - Lab(k)| (CIE76 Delta E): total colour change, anatomy included
    delta_ab  mean |ab(k+1) - ab(k)|: the chroma part, where flicker shows (luminance follows the MR anyway)
    delta_l   mean |L(k+1) - L(k)|: the luminance part, set by the anatomy, for reference

Beyond the paper: `smooth_chroma` gives each slice context from its neighbours by averaging the chroma (Cb, Cr of
BT.601 YCbCr) along the slicing axis with a Gaussian weighted by the foreground, and keeps each voxel's own
luminance Y as predicted, so structure and the gray-consistency of G are untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from cmgan.colorspace import srgb8_to_lab
from cmgan.data.slicing import take_slice


def slice_consistency(rgb: np.ndarray, mask: np.ndarray, axis: int) -> dict[str, Any]:
    """Colour change between adjacent slices along `axis` inside tissue (see module doc).

    rgb: (X, Y, Z, 3) uint8; mask: (X, Y, Z) bool. Streams two slices at a time (no volume-sized float copy).
    returns {"delta_e", "delta_ab", "delta_l": float | None, "pairs": int, "voxels": int}
    """
    sums = np.zeros(3, dtype=np.float64)
    voxels = pairs = 0
    prev_lab = prev_mask = None
    for k in range(rgb.shape[axis]):
        m = take_slice(mask, axis, k)
        lab = srgb8_to_lab(take_slice(rgb, axis, k)) if m.any() else None
        if lab is not None and prev_lab is not None:
            both = m & prev_mask
            n = int(both.sum())
            if n:
                d = lab[both] - prev_lab[both]
                sums += [np.linalg.norm(d, axis=1).sum(), np.linalg.norm(d[:, 1:], axis=1).sum(),
                         np.abs(d[:, 0]).sum()]
                voxels += n
                pairs += 1
        prev_lab, prev_mask = lab, m
    if not voxels:
        return {"delta_e": None, "delta_ab": None, "delta_l": None, "pairs": 0, "voxels": 0}
    mean = sums / voxels
    return {"delta_e": round(float(mean[0]), 4), "delta_ab": round(float(mean[1]), 4),
            "delta_l": round(float(mean[2]), 4), "pairs": pairs, "voxels": voxels}


def smooth_chroma(rgb: np.ndarray, mask: np.ndarray, axis: int, sigma: float, block: int = 32) -> np.ndarray:
    """Gaussian-average the chroma along `axis` (sigma in slices) inside `mask`, keeping each voxel's luminance.

    rgb: (X, Y, Z, 3) uint8, mask: (X, Y, Z) bool -> a new (X, Y, Z, 3) uint8, background 0. Only foreground
    voxels contribute (normalized convolution), so background never tints tissue. Works in blocks of `block`
    planes across another axis to bound memory.
    """
    if sigma <= 0:
        return rgb.copy()
    out = np.zeros_like(rgb)
    other = next(a for a in range(3) if a != axis)
    for start in range(0, rgb.shape[other], block):
        sl = [slice(None)] * 3
        sl[other] = slice(start, start + block)
        part = rgb[tuple(sl)].astype(np.float32)
        m = mask[tuple(sl)].astype(np.float32)
        y = part @ np.array([0.299, 0.587, 0.114], np.float32)
        cb = part @ np.array([-0.168736, -0.331264, 0.5], np.float32)
        cr = part @ np.array([0.5, -0.418688, -0.081312], np.float32)
        weight = ndimage.gaussian_filter1d(m, sigma, axis=axis, mode="constant", truncate=3.0)
        safe = np.maximum(weight, 1e-6)
        cb = ndimage.gaussian_filter1d(cb * m, sigma, axis=axis, mode="constant", truncate=3.0) / safe
        cr = ndimage.gaussian_filter1d(cr * m, sigma, axis=axis, mode="constant", truncate=3.0) / safe
        back = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
        back = np.clip(np.rint(back), 0, 255).astype(np.uint8)
        back[m == 0] = 0
        out[tuple(sl)] = back
    return out

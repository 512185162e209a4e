"""MR intensity normalization and intensity foreground masks.

The same functions run when shards are built and when a trained generator colorizes a new volume, so a volume is
normalized exactly as in training: the `Normalization` is stored in the shard manifest and in the model export
(`to_dict` / `from_dict`). The 2D slice geometry that follows (take a slice, fit it to the model's square input,
and back) is `cmgan.data.slicing`.

    norm = Normalization()                               # 0.5 / 99.5 percentiles inside the intensity foreground
    fg = foreground_mask(vol.data)                       # (X, Y, Z) bool, from intensity
    x = normalize_mr(vol.data, norm, mask=fg)            # (X, Y, Z) float32 in [-1, 1], background -1
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage


class NormalizationError(ValueError):
    """The data cannot be normalized (no foreground, flat intensity window)."""


@dataclass(frozen=True)
class Normalization:
    """How MR intensities become [-1, 1]: a percentile window computed inside the intensity foreground.

    Percentiles are taken over the voxels of `foreground_mask(data)` (intensity only, never labels), so the window
    is the same whether or not a label map exists and a colorizer without labels reproduces it exactly.
    """

    method: str = "percentile"
    """Only "percentile" so far: linear map of [p(lower), p(upper)] to [out_min, out_max], clipped."""
    lower: float = 0.5
    """Lower percentile (0-100) of foreground intensities, mapped to out_min."""
    upper: float = 99.5
    """Upper percentile (0-100) of foreground intensities, mapped to out_max."""
    out_min: float = -1.0
    """Output value of the lower percentile and below."""
    out_max: float = 1.0
    """Output value of the upper percentile and above."""
    background: float = -1.0
    """Value written outside the foreground mask."""
    crop_margin: float | None = None
    """Geometry of the model input: None (default) places whole slices; a fraction crops each volume in-plane to
    `slicing.foreground_box(mask, axis, crop_margin)` (its foreground over all slices, grown by that fraction)
    before `slicing.to_size` (pass the box as `crop=`), so the anatomy fills the frame."""

    def __post_init__(self) -> None:
        if self.method != "percentile":
            raise ValueError(f"Normalization.method={self.method!r} is not valid; choose one of ['percentile']")
        if not 0.0 <= self.lower < self.upper <= 100.0:
            raise ValueError(f"Normalization needs 0 <= lower < upper <= 100, got {self.lower}, {self.upper}")
        if not self.out_min < self.out_max:
            raise ValueError(f"Normalization needs out_min < out_max, got {self.out_min}, {self.out_max}")
        if self.crop_margin is not None and not 0.0 <= self.crop_margin <= 1.0:
            raise ValueError(f"Normalization.crop_margin={self.crop_margin} must be in [0, 1] or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Inverse of `to_dict`; unknown keys are an error (a newer format must not be silently misread)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown normalization key(s) {sorted(unknown)}; valid keys: {sorted(known)}")
        def conv(k: str, v: Any) -> Any:
            if k == "method":
                return str(v)
            return None if v is None else float(v)

        return cls(**{k: conv(k, v) for k, v in data.items()})


def intensity_window(data: np.ndarray, norm: Normalization, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(lo, hi) intensities of `norm`'s percentiles inside `mask` (default: `foreground_mask(data)`)."""
    mask = foreground_mask(data) if mask is None else mask
    values = data[mask]
    if values.size == 0:
        raise NormalizationError("no foreground voxels to take the intensity window from")
    lo, hi = np.percentile(values, [norm.lower, norm.upper]).astype(np.float64)
    if not hi > lo:
        raise NormalizationError(f"flat intensity window: percentiles {norm.lower}/{norm.upper} are both {lo}")
    return float(lo), float(hi)


def normalize_mr(
    data: np.ndarray,
    norm: Normalization,
    mask: np.ndarray | None = None,
    window_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Map intensities to [out_min, out_max] and set everything outside `mask` to `norm.background`.

    data:        (...) real intensities, any float/int dtype, finite
    mask:        (...) bool foreground (e.g. from labels); default `foreground_mask(data)`
    window_mask: (...) bool voxels the percentiles are taken over; default `foreground_mask(data)` (see
                 `Normalization`)
    returns      (...) float32 in [out_min, out_max], background = norm.background
    """
    data = np.asarray(data, dtype=np.float32)
    if window_mask is None:
        window_mask = foreground_mask(data)
    mask = window_mask if mask is None else mask.astype(bool)
    lo, hi = intensity_window(data, norm, window_mask)
    out = (data - np.float32(lo)) * np.float32((norm.out_max - norm.out_min) / (hi - lo)) + np.float32(norm.out_min)
    np.clip(out, norm.out_min, norm.out_max, out=out)
    out[~mask] = norm.background
    return out


def foreground_mask(data: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Foreground of a scalar image or volume: `labels > 0` when labels are given, else from intensity.

    Intensity: Otsu threshold, small closing, largest connected component, holes filled (slice-wise along
    every axis, so a ventricle or a sulcus enclosed in one plane counts as foreground).
    data:   (X, Y, Z) or (H, W) real; labels: same shape, integer, 0 = background
    returns same shape, bool
    """
    if labels is not None:
        if labels.shape != data.shape:
            raise ValueError(f"labels shape {labels.shape} differs from the image shape {data.shape}")
        return np.asarray(labels) > 0
    data = np.asarray(data, dtype=np.float32)
    mask = data > otsu_threshold(data)
    structure = ndimage.generate_binary_structure(data.ndim, 1)
    mask = ndimage.binary_closing(mask, structure, iterations=2, border_value=0)
    mask = largest_component(mask)
    for axis in range(data.ndim) if data.ndim == 3 else ():
        mask |= _fill_holes_along(mask, axis)
    if data.ndim == 2:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def otsu_threshold(data: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `data` (maximizes the between-class variance of a 256-bin histogram)."""
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(data, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a bool mask (all False stays all False)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill_holes_along(mask: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(mask, axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in moved])
    return np.moveaxis(filled, 0, axis)


__all__ = [
    "Normalization",
    "NormalizationError",
    "foreground_mask",
    "intensity_window",
    "largest_component",
    "normalize_mr",
    "otsu_threshold",
]

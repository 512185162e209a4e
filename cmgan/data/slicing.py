"""2D slice geometry: cut a volume into display-oriented slices, fit a slice to the model's square input, and back.

Volumes are canonical RAS+ arrays (X, Y, Z[, C]); a slice is (H, W[, C]) in display orientation. Shard building
and colorization use the same functions, so a colorized slice goes back exactly where its gray slice came from.
(Which slices the evaluator reads is `cmgan.eval.slices`; intensities are `cmgan.data.intensity`.)

    box = foreground_box(fg, 2, norm.crop_margin) if norm.crop_margin is not None else None  # one per volume
    img = take_slice(x, axis=2, index=40)                # (H, W), rows = superior/anterior at the top
    img256, place = to_size(img, 256, background=-1.0, spacing=(1.0, 1.0), crop=box)
    back = from_size(img256, place, background=-1.0)     # (H, W) again
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D image of plane `index` along `axis` of a canonical RAS+ volume, in display orientation.

    volume: (X, Y, Z) or (X, Y, Z, C). The two remaining axes (a, b), a < b, become columns (a, increasing to the
    right) and rows (b, increasing upwards), i.e. axial (axis 2): anterior at the top, patient's left on the left
    (neurological view); coronal/sagittal (axis 1/0): superior at the top.
    returns (H, W) or (H, W, C), a copy.
    """
    plane = np.take(volume, index, axis=axis)  # (a, b[, C])
    return np.ascontiguousarray(np.flip(np.swapaxes(plane, 0, 1), axis=0))


def put_slice(volume: np.ndarray, axis: int, index: int, image: np.ndarray) -> None:
    """Inverse of `take_slice`: write a display-oriented (H, W[, C]) image into plane `index` of `volume`."""
    plane = np.swapaxes(np.flip(image, axis=0), 0, 1)
    index_tuple: list[Any] = [slice(None)] * volume.ndim
    index_tuple[axis] = index
    volume[tuple(index_tuple)] = plane


def slice_spacing(spacing: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """(row, column) pixel size in mm of the images `take_slice` returns along `axis`."""
    a, b = [s for i, s in enumerate(spacing) if i != axis]
    return float(b), float(a)


@dataclass(frozen=True)
class Placement:
    """Where an (H, W) image went inside the square output of `to_size`; `from_size` uses it to undo the move.

    in_shape: (H, W) of the original image; crop: (top, left, height, width) of the part that was placed (the whole
    image when no crop was given); scaled: (h, w) of that part after resizing; offset: (top, left) of the scaled part
    in the (size, size) output.
    """

    in_shape: tuple[int, int]
    size: int
    scaled: tuple[int, int]
    offset: tuple[int, int]
    crop: tuple[int, int, int, int] | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The placed part of the input: (top, left, height, width)."""
        return self.crop if self.crop is not None else (0, 0, *self.in_shape)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        crop = data.get("crop")
        return cls(tuple(data["in_shape"]), int(data["size"]), tuple(data["scaled"]), tuple(data["offset"]),
                   tuple(crop) if crop is not None else None)


def placement(
    in_shape: tuple[int, int],
    size: int,
    spacing: tuple[float, float] = (1.0, 1.0),
    crop: tuple[int, int, int, int] | None = None,
) -> Placement:
    """Fit an (H, W) image (or its `crop` box) with pixel size `spacing` (row, col mm) into a square of `size` px.

    The physical aspect ratio is kept (anisotropic pixels become square); the longer physical side fills `size`.
    """
    h, w = int(in_shape[0]), int(in_shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"cannot place an empty image of shape {in_shape}")
    if crop is not None:
        top, left, ch, cw = (int(v) for v in crop)
        if ch <= 0 or cw <= 0 or top < 0 or left < 0 or top + ch > h or left + cw > w:
            raise ValueError(f"crop {crop} does not lie inside an image of shape {in_shape}")
        crop = (top, left, ch, cw)
        h, w = ch, cw
    ext_h, ext_w = h * float(spacing[0]), w * float(spacing[1])
    scale = size / max(ext_h, ext_w)
    sh = min(size, max(1, round(ext_h * scale)))
    sw = min(size, max(1, round(ext_w * scale)))
    return Placement((int(in_shape[0]), int(in_shape[1])), size, (sh, sw), ((size - sh) // 2, (size - sw) // 2), crop)


def foreground_box(mask: np.ndarray, axis: int = 2, margin: float = 0.05) -> tuple[int, int, int, int] | None:
    """In-plane bounding box of a 3D mask over all slices along `axis`, in `take_slice` display coordinates
    (a 2D (H, W) mask: its own bounding box; `axis` is ignored).

    Grown by `margin` x its size on each side and clipped to the plane; (top, left, height, width), or None when
    the mask is empty. One box per volume (not per slice), so every slice of a volume gets the same scale.
    """
    plane = mask.astype(bool) if mask.ndim == 2 else take_slice(mask.any(axis=axis, keepdims=True), axis, 0)
    rows, cols = np.nonzero(plane)
    if rows.size == 0:
        return None
    h, w = plane.shape
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    pr, pc = int(np.ceil(margin * (r1 - r0))), int(np.ceil(margin * (c1 - c0)))
    r0, r1, c0, c1 = max(0, r0 - pr), min(h, r1 + pr), max(0, c0 - pc), min(w, c1 + pc)
    return int(r0), int(c0), int(r1 - r0), int(c1 - c0)


def to_size(
    image: np.ndarray,
    size: int,
    background: float = 0.0,
    spacing: tuple[float, float] = (1.0, 1.0),
    order: int = 1,
    crop: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, Placement]:
    """Crop (optional), resize (keeping the physical aspect ratio) and pad an image to (size, size), centered.

    image: (H, W) or (H, W, C), any real dtype; order 1 = bilinear (images), 0 = nearest (masks, labels);
    crop: (top, left, height, width) to place instead of the whole image (e.g. `foreground_box`).
    returns ((size, size[, C]) in image's dtype (values rounded and clipped for integer dtypes), Placement)
    """
    place = placement(image.shape[:2], size, spacing, crop)
    top, left, h, w = place.box
    scaled = resize(image[top : top + h, left : left + w], place.scaled, order=order)
    out = np.full((size, size) + image.shape[2:], background, dtype=image.dtype)
    top, left = place.offset
    out[top : top + place.scaled[0], left : left + place.scaled[1]] = scaled
    return out, place


def from_size(image: np.ndarray, place: Placement, order: int = 1, background: float = 0.0) -> np.ndarray:
    """Undo `to_size`: crop the placed region of a (size, size[, C]) image, resize it back and put it at its place.

    returns (H, W[, C]) = place.in_shape in image's dtype; outside the crop box (if any): `background`.
    """
    if image.shape[:2] != (place.size, place.size):
        raise ValueError(f"image shape {image.shape[:2]} does not match the placement size {place.size}")
    top, left = place.offset
    part = resize(image[top : top + place.scaled[0], left : left + place.scaled[1]], place.box[2:], order=order)
    if place.crop is None:
        return part
    out = np.full(tuple(place.in_shape) + image.shape[2:], background, dtype=image.dtype)
    top, left, h, w = place.box
    out[top : top + h, left : left + w] = part
    return out


def resize(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resample (H, W[, C]) to `shape` with pixel-center alignment; Gaussian pre-filter when shrinking.

    order 1: bilinear (float math, result cast back to the dtype; integers rounded and clipped);
    order 0: nearest neighbour (labels and masks keep their exact values).
    """
    h, w = image.shape[:2]
    th, tw = int(shape[0]), int(shape[1])
    if (h, w) == (th, tw):
        return image.copy()
    zy, zx = th / h, tw / w
    # Output pixel centre (i + 0.5) / z - 0.5 in input coordinates (half-pixel alignment, like PIL/torch).
    ys = (np.arange(th) + 0.5) / zy - 0.5
    xs = (np.arange(tw) + 0.5) / zx - 0.5
    if order == 0:
        yi = np.clip(np.floor(ys + 0.5).astype(np.int64), 0, h - 1)
        xi = np.clip(np.floor(xs + 0.5).astype(np.int64), 0, w - 1)
        return image[yi][:, xi].copy()
    src = image.astype(np.float32)
    sigma = [max(0.0, (1 / z - 1) / 2) for z in (zy, zx)] + [0.0] * (image.ndim - 2)
    if any(s > 0 for s in sigma):
        src = ndimage.gaussian_filter(src, sigma, mode="nearest")
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, w - 1)
    y1 = np.clip(y0 + 1, 0, h - 1)
    x1 = np.clip(x0 + 1, 0, w - 1)
    fy = np.clip(ys - y0, 0, 1).astype(np.float32)
    fx = np.clip(xs - x0, 0, 1).astype(np.float32)
    extra = (None,) * (image.ndim - 2)
    fy = fy[(slice(None), None, *extra)]
    fx = fx[(None, slice(None), *extra)]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    out = top * (1 - fy) + bottom * fy
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    if image.dtype == bool:
        return out >= 0.5
    return out.astype(image.dtype)


def is_empty_slice(mask: np.ndarray, min_fraction: float = 0.01) -> bool:
    """True when less than `min_fraction` of a slice's pixels are foreground (such slices are not stored)."""
    return float(np.count_nonzero(mask)) < max(1.0, min_fraction * mask.size)


__all__ = [
    "Placement",
    "foreground_box",
    "from_size",
    "is_empty_slice",
    "placement",
    "put_slice",
    "resize",
    "slice_spacing",
    "take_slice",
    "to_size",
]

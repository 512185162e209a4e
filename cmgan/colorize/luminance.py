"""Keep the input's luminance: the colorization's chroma on the MR's own brightness (an option beyond the paper).

G predicts all three RGB channels, so its luminance is its own rendering of the anatomy: on real MRI it blurs
fine structure, and a dark rim at the brain's edge or a slice-to-slice brightness jump is a luminance defect.
A radiologist reads the gray values; colour is the added layer. `keep_luminance` replaces each pixel's BT.601
luma Y by the input's normalized intensity and keeps the predicted chroma (BT.601 Cb, Cr) exactly: adding the same
offset to R, G and B moves Y by that offset and leaves Cb = 0.564 (B - Y) and Cr = 0.713 (R - Y) unchanged.
Near black and near white a saturated colour does not fit in the RGB cube at the input's brightness; there the
chroma is scaled down just enough to fit (hue kept), never clipped per channel, because clipping would change
the luma (a saturated red on black input would stay visibly red, not dark).

    rgb = keep_luminance(rgb, gray)   # (..., 3) and (...) float in [-1, 1] -> (..., 3) float32 in [-1, 1]

The trade-off is measured by `bench/quality.py --finish` (docs/quality.md): structure against the input becomes
near perfect by construction, while the distance to true tissue colours depends on how far the true colours'
brightness is from the MR contrast.
"""

from __future__ import annotations

import numpy as np

from cmgan.models.edges import BT601


def keep_luminance(rgb: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """rgb (..., 3) float in [-1, 1], gray (...) float in [-1, 1] (the normalized MR, background -1)
    -> (..., 3) float32 in [-1, 1] whose BT.601 luma is `gray` (clipped to [-1, 1]) and whose chroma is rgb's,
    scaled down where it would leave the RGB cube (see the module doc)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.shape[-1] != 3 or rgb.shape[:-1] != np.shape(gray):
        raise ValueError(f"keep_luminance: rgb {rgb.shape} must be (..., 3) over gray {np.shape(gray)}")
    target = np.clip(np.asarray(gray, dtype=np.float32), -1.0, 1.0)[..., None]
    chroma = rgb - (rgb @ np.asarray(BT601, dtype=np.float32))[..., None]  # per-channel offset from gray; luma 0
    # The largest s <= 1 with target + s * chroma inside [-1, 1] in every channel.
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(chroma > 0, (1.0 - target) / chroma, np.where(chroma < 0, (-1.0 - target) / chroma, np.inf))
    scale = np.clip(room.min(axis=-1, keepdims=True), 0.0, 1.0)
    return np.clip(target + scale * chroma, -1.0, 1.0)

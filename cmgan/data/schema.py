"""The sample schema: keys, dtypes and value ranges of one 2D slice in a WebDataset shard.

Defined once here and imported by the writer (`shards/`) and the readers (`cmgan.data.pipeline`,
`cmgan.data.splits`), so the two sides cannot drift. Every member is stored as a `.npy` (decoded with
`allow_pickle=False`) or `.json`; nothing in a shard is ever unpickled.

    __key__      "<volume>_<slice:04d>"  (volume = the subject's salted pseudonym, + "v<n>" when a subject has
                 several volumes; never a patient identifier)
    mr.npy       (H, W)    float16 in [-1, 1], background = -1           (MR domain)
    rgb.npy      (H, W, 3) uint8   in [0, 255], background = 0           (color domain)
    mask.npy     (H, W)    uint8   in {0, 1}, 1 = foreground             (both domains)
    label.npy    (H, W)    uint8   in [0, num_classes), 0 = background   (MR, optional)
    truth.npy    (H, W, 3) uint8   true color rendering                 (demo MR test split only)
    meta.json    {"subject", "slice", "axis", "spacing", "source_sha256", "domain", "split"} (required), and
                 "volume", "placement" (slicing.Placement.to_dict(): how the slice was cropped/resized/padded),
                 "pixel_mm" (MR: row, column pixel size of the source slice)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DOMAINS = ("mr", "color")
SPLITS = ("train", "val", "test")

MR_KEY = "mr.npy"
RGB_KEY = "rgb.npy"
MASK_KEY = "mask.npy"
LABEL_KEY = "label.npy"
TRUTH_KEY = "truth.npy"
META_KEY = "meta.json"

IMAGE_KEY = {"mr": MR_KEY, "color": RGB_KEY}
"""The image member of each domain."""

BACKGROUND = {"mr": -1.0, "color": 0}
"""Background value of each domain's stored image (after masking)."""

LABEL_NAMES = ("background", "cortex", "subcortical_gm", "white_matter", "csf")
"""Classes of the segmentation labels (docs/method.md): index = label value."""

META_FIELDS = ("subject", "slice", "axis", "spacing", "source_sha256", "domain", "split")


@dataclass(frozen=True)
class MemberSpec:
    """What one stored member must look like."""

    dtype: np.dtype
    ndim: int
    channels: int | None  # size of the last axis when ndim == 3
    lo: float
    hi: float


MEMBERS: dict[str, MemberSpec] = {
    MR_KEY: MemberSpec(np.dtype(np.float16), 2, None, -1.0, 1.0),
    RGB_KEY: MemberSpec(np.dtype(np.uint8), 3, 3, 0, 255),
    MASK_KEY: MemberSpec(np.dtype(np.uint8), 2, None, 0, 1),
    LABEL_KEY: MemberSpec(np.dtype(np.uint8), 2, None, 0, 255),
    TRUTH_KEY: MemberSpec(np.dtype(np.uint8), 3, 3, 0, 255),
}


class SchemaError(ValueError):
    """A sample does not match the schema; the message names the key, the member and the problem."""


def check_member(key: str, name: str, array: np.ndarray, size: int | None = None) -> None:
    """Raise SchemaError unless `array` matches MEMBERS[name] (and is `size` x `size` when given)."""
    spec = MEMBERS[name]
    where = f"sample {key!r}, member {name!r}"
    if array.dtype != spec.dtype:
        raise SchemaError(f"{where}: dtype {array.dtype}, expected {spec.dtype}")
    if array.ndim != spec.ndim or (spec.channels is not None and array.shape[-1] != spec.channels):
        raise SchemaError(f"{where}: shape {array.shape}, expected {spec.ndim} dims")
    if size is not None and array.shape[:2] != (size, size):
        raise SchemaError(f"{where}: shape {array.shape[:2]}, expected ({size}, {size})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise SchemaError(f"{where}: contains NaN or infinite values")
    if array.dtype.kind in "ui" and np.iinfo(array.dtype).min >= spec.lo and np.iinfo(array.dtype).max <= spec.hi:
        return  # every value of the dtype is in range (uint8 RGB): skip the scan
    if array.size and (array.min() < spec.lo or array.max() > spec.hi):
        raise SchemaError(f"{where}: values in [{array.min()}, {array.max()}], expected [{spec.lo}, {spec.hi}]")


def slice_key(subject: str, index: int) -> str:
    """The `__key__` of slice `index` of `subject` (no dots: WebDataset splits keys at the first dot)."""
    if "." in subject or "/" in subject:
        raise ValueError(f"subject pseudonym {subject!r} must not contain '.' or '/'")
    return f"{subject}_{index:04d}"

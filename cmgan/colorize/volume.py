"""One volume through the generator: normalize exactly as the shards were built, slice, colorize in batches,
reassemble into an RGB volume on the input's own voxel grid.

The preparation repeats `shards/build.py`'s sequence for an MR volume without labels, with the same public
functions of `cmgan.data`: canonical RAS+ volume -> `foreground_mask` (intensity) -> `normalize_mr` (percentile
window inside that mask, background -1) -> `take_slice` along the training axis -> `to_size` (physical aspect
kept, padded with -1) with the resized mask's background set to -1 -> clipped and stored as float16, as the shards
store `mr.npy`. A Zarr subject written by `python -m shards` already holds that normalized `image` and its `mask`,
which are used as they are.

    prep = prepare_volume(read_source(inp), norm, axis=2, size=256)
    rgb = colorize_prepared(export, prep, batch=16)        # (X, Y, Z, 3) uint8, canonical, background 0
    native = to_native(rgb, prep.native)                   # the input file's own voxel order
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from cmgan.colorize.inputs import Input
from cmgan.colorize.luminance import keep_luminance
from cmgan.data.intensity import Normalization, foreground_mask, normalize_mr
from cmgan.data.slicing import Placement, from_size, put_slice, slice_spacing, take_slice, to_size
from cmgan.data.volumes import Volume, VolumeError, read_volume, to_canonical

RAS = nib.orientations.axcodes2ornt("RAS")


@dataclass(frozen=True)
class NativeGeometry:
    """The input's own voxel grid, to write outputs that overlay it exactly.

    shape: (X, Y, Z) of the input as stored; affine: (4, 4) voxel -> RAS mm of that grid;
    ornt: nibabel orientation taking the input's axes to canonical RAS+ (`to_native` inverts it);
    header: the input's NIfTI header (None for DICOM and Zarr inputs).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray
    header: Any = None


@dataclass
class PreparedVolume:
    """A volume ready for the generator (all arrays canonical RAS+).

    image:     (X, Y, Z) float32 in [-1, 1], background -1 (the normalized volume)
    mask:      (X, Y, Z) bool foreground
    slices:    (N, S, S) float16 in [-1, 1]: model inputs of the N slices along `axis` that hold foreground
    indices:   (N,) int64 slice index of each
    placement: where each (H, W) slice sits in the S x S model input (the same for every slice of a volume)
    affine:    (4, 4) canonical voxel -> RAS mm; spacing: (3,) mm
    """

    image: np.ndarray
    mask: np.ndarray
    slices: np.ndarray
    indices: np.ndarray
    placement: Placement
    axis: int
    affine: np.ndarray
    spacing: tuple[float, float, float]
    native: NativeGeometry
    normalized_input: bool = False
    """True for a Zarr subject of `python -m shards` (stored already normalized; not normalized again)."""
    note: str = ""


def read_source(inp: Input) -> tuple[Volume, NativeGeometry]:
    """Read an input once: its canonical volume and the geometry of its own voxel grid. Raises VolumeError."""
    native = read_volume(inp.path, canonical=False)
    header = None
    if inp.kind == "nifti":
        header = nib.load(str(inp.path)).header.copy()
    geometry = NativeGeometry(tuple(native.data.shape), native.affine.copy(),
                              nib.orientations.io_orientation(native.affine), header)
    return to_canonical(native), geometry


def prepare_volume(vol: Volume, geometry: NativeGeometry, norm: Normalization, axis: int, size: int
                   ) -> PreparedVolume:
    """Normalize a canonical volume as `shards/build.py` does and cut the model's input slices (see module doc).

    Raises VolumeError (no foreground) or NormalizationError (flat intensity window).
    """
    note = ""
    stored = _shards_zarr(vol)
    if stored is not None:
        image, mask = stored
        if vol.meta.get("normalization") != norm.to_dict():
            note = (f"stored normalization {vol.meta.get('normalization')} differs from the model's "
                    f"{norm.to_dict()}; the stored image is used as is")
    else:
        window_mask = foreground_mask(vol.data)
        mask = window_mask
        if not mask.any():
            raise VolumeError(vol.source, "no foreground voxels (blank image)")
        image = normalize_mr(vol.data, norm, mask=mask, window_mask=window_mask)
    pixel = slice_spacing(vol.spacing, axis)
    indices, slices = [], []
    place: Placement | None = None
    for k in range(image.shape[axis]):
        m2 = take_slice(mask, axis, k)
        if not m2.any():
            continue  # no tissue: the output slice stays black without a model call
        img, place = to_size(take_slice(image, axis, k), size, -1.0, pixel, order=1)
        m, _ = to_size(m2.astype(np.uint8), size, 0, pixel, order=0)
        img[m == 0] = -1.0  # as the shards: bilinear edges must not leak tissue into the background
        slices.append(np.clip(img, -1.0, 1.0).astype(np.float16))
        indices.append(k)
    if place is None:
        raise VolumeError(vol.source, "no foreground voxels (blank image)")
    return PreparedVolume(
        image=image,
        mask=mask,
        slices=np.stack(slices),
        indices=np.asarray(indices, dtype=np.int64),
        placement=place,
        axis=axis,
        affine=vol.affine,
        spacing=vol.spacing,
        native=geometry,
        normalized_input=stored is not None,
        note=note,
    )


def _shards_zarr(vol: Volume) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, mask) of a Zarr subject written by `python -m shards` (already normalized), else None."""
    if vol.kind != "zarr" or "normalization" not in vol.meta:
        return None
    import zarr

    src = Path(vol.source)
    mask_path = src.parent / "mask" if src.name == "image" else None
    if mask_path is None or not (mask_path / "zarr.json").is_file():
        raise VolumeError(vol.source, "normalized shards volume without its 'mask' array")
    mask = np.asarray(zarr.open_array(str(mask_path), mode="r")[...]) > 0
    if mask.shape != vol.data.shape:
        raise VolumeError(vol.source, f"mask shape {mask.shape} differs from the image {vol.data.shape}")
    image = np.where(mask, np.clip(vol.data, -1.0, 1.0), -1.0).astype(np.float32)
    return image, mask


def rgb_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> [0, 255] uint8 (round half to even), the inverse of the color shards' x / 127.5 - 1."""
    return np.clip(np.rint((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8)


def colorize_batches(export: Any, slices: np.ndarray, batch: int) -> Any:
    """Yield (start, rgb) for consecutive batches: rgb (B, S, S, 3) float32 in [-1, 1], from `export.colorize`.

    On a GPU the copies are asynchronous from and to pinned memory, and batch i is handed out only after batch
    i + 1 has been queued, so the GPU computes while the caller assembles (one wait per batch, on its own copy).
    """
    cuda = export.device.type == "cuda"
    pending: tuple[int, torch.Tensor, Any] | None = None
    for start in range(0, len(slices), batch):
        x = torch.from_numpy(slices[start : start + batch].astype(np.float32))[:, None]
        if cuda:
            x = x.pin_memory().to(export.device, non_blocking=True)
        rgb = export.colorize(x).permute(0, 2, 3, 1)  # (B, S, S, 3)
        done = None
        if cuda:
            host = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True)
            host.copy_(rgb, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            rgb = host
        if pending is not None:
            yield _ready(*pending)
        pending = (start, rgb, done)
    if pending is not None:
        yield _ready(*pending)


def _ready(start: int, rgb: torch.Tensor, done: Any) -> tuple[int, np.ndarray]:
    if done is not None:
        done.synchronize()  # this batch's copy to the host has landed
    return start, rgb.numpy()


def colorize_prepared(
    export: Any,
    prep: PreparedVolume,
    batch: int = 16,
    on_slices: Callable[[int], None] | None = None,
    keep_input_luminance: bool = False,
) -> np.ndarray:
    """Colorize a prepared volume: (X, Y, Z, 3) uint8 in canonical RAS+, black outside the foreground.

    Each output slice: the model's (S, S, 3) prediction cropped and resized back to the slice's (H, W) with
    `from_size` (float; with `keep_input_luminance` its luma replaced by the normalized input's,
    `cmgan.colorize.luminance`; then rounded once), background set to 0, written with `put_slice`. Reassembling batch i
    runs in a helper thread while the generator computes batch i + 1 (on a GPU the CPU work would otherwise
    leave it idle); at most one batch waits, so memory stays bounded.
    """
    out = np.zeros(prep.mask.shape + (3,), dtype=np.uint8)
    with ThreadPoolExecutor(1, thread_name_prefix="colorize-assemble") as pool:
        pending: Future | None = None
        for start, rgb in colorize_batches(export, prep.slices, batch):
            if pending is not None:
                pending.result()
            pending = pool.submit(_assemble, out, prep, start, rgb, keep_input_luminance)
            if on_slices is not None:
                on_slices(rgb.shape[0])
        if pending is not None:
            pending.result()
    return out


def _assemble(out: np.ndarray, prep: PreparedVolume, start: int, rgb: np.ndarray, keep_input_luminance: bool) -> None:
    """Put a batch of (B, S, S, 3) float predictions into `out` at their slices (see `colorize_prepared`)."""
    for j in range(rgb.shape[0]):
        k = int(prep.indices[start + j])
        full = from_size(rgb[j], prep.placement, order=1)
        if keep_input_luminance:
            full = keep_luminance(full, take_slice(prep.image, prep.axis, k))
        full = rgb_to_uint8(full)
        full[~take_slice(prep.mask, prep.axis, k)] = 0
        put_slice(out, prep.axis, k, full)


def to_native(data: np.ndarray, geometry: NativeGeometry) -> np.ndarray:
    """A canonical (X, Y, Z[, C]) array back in the input's own voxel order (inverse of `to_canonical`)."""
    back = nib.orientations.ornt_transform(RAS, geometry.ornt)
    out = np.ascontiguousarray(nib.orientations.apply_orientation(data, back))
    if out.shape[:3] != tuple(geometry.shape):
        raise AssertionError(f"reorientation gave {out.shape[:3]}, expected {geometry.shape}")
    return out

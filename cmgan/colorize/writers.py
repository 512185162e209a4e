"""Output formats of a colorized volume, each written under a temporary name, verified, then renamed.

- RGB NIfTI (`<key>.nii.gz`): datatype RGB24 (code 128; numpy dtype [('R','u1'),('G','u1'),('B','u1')]), on the
  input's own voxel grid: same shape, same qform/sform (with their codes), pixdim and units as the input header,
  so 3D Slicer and ITK-SNAP overlay it on the source. The datatype alone marks it as colour (ITK reads it as an
  RGB pixel); the intent stays NONE, because NIFTI_INTENT_RGB_VECTOR is for float vectors in dim[5].
- OME-Zarr (`<key>.ome.zarr`): OME-NGFF 0.5 (Zarr v3) image, axes c, z, y, x (x = R, y = A, z = S of the
  canonical RAS+ grid), uint8, a multiscale pyramid (2x mean downsampling in z, y, x) with scale (mm) and
  translation per level, and `omero` channel colours red/green/blue so napari shows RGB. The full affine is kept
  under `attributes["cmgan"]["affine"]` (NGFF 0.5 has no rotations).
- PNG montage (`<key>.png`): evenly spaced slices along the slicing axis, gray input above its colorization.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cmgan import files
from cmgan.colorize.volume import NativeGeometry
from cmgan.data.slicing import take_slice

RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
NGFF_VERSION = "0.5"
FORMATS = ("nifti", "omezarr", "png")
SUFFIX = {"nifti": ".nii.gz", "omezarr": ".ome.zarr", "png": ".png"}


class OutputError(RuntimeError):
    """An output failed verification after writing; the message names the file."""


def tmp_name(final: Path) -> Path:
    """The sibling temporary of `final` (cmgan.files' convention), keeping `.nii.gz` so nibabel writes gzip."""
    return files.temp_path(final, SUFFIX["nifti"] if final.name.endswith(".nii.gz") else "")


def remove_stale(final: Path) -> None:
    """Delete temporaries and half-swapped leftovers of `final` from killed runs."""
    for p in files.stale_temps(final) + sorted(final.parent.glob(f".{final.name}.old*")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _commit(tmp: Path, final: Path) -> None:
    """fsync `tmp` and rename it over `final`; an existing output directory is first moved aside (os.replace
    cannot replace a non-empty directory) and deleted after."""
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    if tmp.is_dir() and final.exists():
        os.replace(final, old)
    files.commit(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def output_bytes(path: Path) -> int:
    """Size of a file, or of all files below a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------- NIfTI


def write_rgb_nifti(path: Path, rgb: np.ndarray, geometry: NativeGeometry) -> Path:
    """Write (X, Y, Z, 3) uint8 `rgb` (in the input's own voxel order) as an RGB24 NIfTI on the input's grid."""
    if rgb.shape != tuple(geometry.shape) + (3,) or rgb.dtype != np.uint8:
        raise ValueError(f"{path}: rgb must be {tuple(geometry.shape) + (3,)} uint8, got {rgb.shape} {rgb.dtype}")
    data = np.ascontiguousarray(rgb).view(RGB24).reshape(geometry.shape)
    src = geometry.header
    if isinstance(src, nib.Nifti1Header) and not isinstance(src, nib.Nifti2Header):
        header = src.copy()
        qform, qcode = src.get_qform(coded=True)
        sform, scode = src.get_sform(coded=True)
    else:  # DICOM, Zarr, NIfTI-2: a NIfTI-1 header carrying the input's affine as scanner coordinates
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
        qform, qcode, sform, scode = geometry.affine, 1, geometry.affine, 1
        if src is not None:
            header.set_xyzt_units(*src.get_xyzt_units())
    header.set_data_dtype(RGB24)
    header.set_data_shape(geometry.shape)
    header.set_slope_inter(None, None)  # the input's intensity scaling does not apply to colours
    header["cal_min"] = header["cal_max"] = 0
    header.set_intent("none")
    header["descrip"] = b"cmgan colorized RGB24"
    img = nib.Nifti1Image(data, geometry.affine, header=header)
    # Nifti1Image rewrites qform/sform from `affine`; put back the input's own transforms and codes.
    img.header.set_qform(qform if qcode else None, code=int(qcode))
    img.header.set_sform(sform if scode else None, code=int(scode))
    tmp = tmp_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(tmp))
    try:
        back = nib.load(str(tmp))
        ok = (back.shape == tuple(geometry.shape) and back.get_data_dtype() == RGB24
              and np.allclose(back.affine, geometry.affine, atol=1e-4)
              and np.array_equal(np.asarray(back.dataobj), data))
    except Exception as e:  # noqa: BLE001 - a truncated/corrupt write shows up as any reader error
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: written file does not read back ({type(e).__name__}: {e})") from None
    if not ok:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: written file differs from the data (shape, dtype, affine or voxels)")
    _commit(tmp, path)
    return path


def read_rgb_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An RGB24 NIfTI as ((X, Y, Z, 3) uint8, (4, 4) affine)."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.dtype != RGB24:
        raise OutputError(f"{path}: datatype {data.dtype} is not RGB24")
    return np.ascontiguousarray(data).view(np.uint8).reshape(data.shape + (3,)), img.affine


# ---------------------------------------------------------------------------------------------- OME-Zarr


def pyramid_levels(shape: tuple[int, int, int], min_side: int = 32, max_levels: int = 6) -> int:
    """Levels of the pyramid: halve (z, y, x) while the largest side exceeds `min_side` (and every side >= 2)."""
    levels, s = 1, np.asarray(shape)
    while levels < max_levels and s.max() > min_side and s.min() >= 2:
        s = (s + 1) // 2
        levels += 1
    return levels


def downsample2(czyx: np.ndarray, block: int = 16) -> np.ndarray:
    """(C, Z, Y, X) uint8 -> (C, ceil(Z/2), ceil(Y/2), ceil(X/2)) uint8, mean of 2x2x2 blocks (odd edges repeated).

    Works on `block` output planes at a time, so the float copy stays small for large volumes.
    """
    c, z, y, x = czyx.shape
    out = np.empty((c, (z + 1) // 2, (y + 1) // 2, (x + 1) // 2), np.uint8)
    for o in range(0, out.shape[1], block):
        part = czyx[:, 2 * o : 2 * (o + block)]
        pad = [(0, 0)] + [(0, s % 2) for s in part.shape[1:]]
        a = np.pad(part, pad, mode="edge").astype(np.float32)
        pz, py, px = (s // 2 for s in a.shape[1:])
        a = a.reshape(c, pz, 2, py, 2, px, 2).mean(axis=(2, 4, 6))
        out[:, o : o + pz] = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return out


def write_ome_zarr(path: Path, rgb: np.ndarray, affine: np.ndarray, name: str,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write canonical (X, Y, Z, 3) uint8 `rgb` with voxel->RAS `affine` as an OME-NGFF 0.5 multiscale image."""
    import zarr

    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # mm along X, Y, Z
    origin = affine[:3, 3]
    level = np.ascontiguousarray(rgb.transpose(3, 2, 1, 0))  # (c, z, y, x)
    levels = pyramid_levels(level.shape[1:])
    tmp = tmp_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        datasets = []
        for i in range(levels):
            if i:
                level = downsample2(level)
            factor = 2.0 ** i
            scale = [1.0] + [float(spacing[a] * factor) for a in (2, 1, 0)]
            # A coarse voxel covers `factor` fine ones: its centre sits (factor - 1) / 2 fine voxels further on.
            shift = [0.0] + [float(origin[a] + (factor - 1) / 2 * spacing[a]) for a in (2, 1, 0)]
            chunks = (3, min(level.shape[1], 32), min(level.shape[2], 128), min(level.shape[3], 128))
            arr = root.create_array(str(i), shape=level.shape, dtype="uint8", chunks=chunks, fill_value=0,
                                    dimension_names=["c", "z", "y", "x"])
            arr[...] = level
            datasets.append({"path": str(i), "coordinateTransformations": [
                {"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}]})
        space = {"type": "space", "unit": "millimeter"}
        root.attrs["ome"] = {
            "version": NGFF_VERSION,
            "multiscales": [{
                "name": name,
                "axes": [{"name": "c", "type": "channel"}, {"name": "z", **space}, {"name": "y", **space},
                         {"name": "x", **space}],
                "datasets": datasets,
                "type": "mean of 2x2x2 blocks",
            }],
            "omero": {
                "channels": [{"label": lab, "color": col, "active": True,
                              "window": {"min": 0, "max": 255, "start": 0, "end": 255}}
                             for lab, col in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))],
                "rdefs": {"model": "color"},
            },
        }
        root.attrs["cmgan"] = {"affine": np.asarray(affine).tolist(), "orientation": "RAS+",
                               "axes_from_array": {"x": 0, "y": 1, "z": 2}, **(extra or {})}
        check = zarr.open_group(str(tmp), mode="r")
        if check["0"].shape != rgb.transpose(3, 2, 1, 0).shape or "ome" not in check.attrs:
            raise OutputError(f"{path}: written store does not read back with its shape and metadata")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- PNG


def write_montage(path: Path, image: np.ndarray, rgb: np.ndarray, mask: np.ndarray, axis: int, count: int = 8) -> Path:
    """A PNG of `count` evenly spaced tissue slices: gray input (top row) above the colorization (bottom row).

    image: (X, Y, Z) float in [-1, 1]; rgb: (X, Y, Z, 3) uint8; mask: (X, Y, Z) bool; all canonical.
    """
    from PIL import Image

    with_tissue = [k for k in range(mask.shape[axis]) if take_slice(mask, axis, k).any()]
    if not with_tissue:
        raise ValueError(f"{path}: no slice with foreground for a montage")
    picks = [with_tissue[int(round(i))] for i in np.linspace(0, len(with_tissue) - 1, min(count, len(with_tissue)))]
    tops, bottoms = [], []
    for k in picks:
        gray = np.clip(np.rint((take_slice(image, axis, k) + 1.0) * 127.5), 0, 255).astype(np.uint8)
        gray[~take_slice(mask, axis, k)] = 0
        tops.append(np.repeat(gray[..., None], 3, axis=2))
        bottoms.append(take_slice(rgb, axis, k))
    sheet = np.concatenate([np.concatenate(tops, axis=1), np.concatenate(bottoms, axis=1)], axis=0)
    with files.atomic_open(path, "wb") as f:
        Image.fromarray(sheet, "RGB").save(f, format="PNG")
    return path

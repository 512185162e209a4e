"""Read 3D volumes (NIfTI, DICOM series, Zarr arrays written by `python -m shards`) into one `Volume`.

Every reader returns the volume in the closest canonical orientation, RAS+ (like `nibabel.as_closest_canonical`):
array axis 0 runs towards the patient's Right, axis 1 towards Anterior, axis 2 towards Superior, and `affine`
maps voxel indices (i, j, k) to RAS millimetres. Bad input raises `VolumeError` with the file and the problem.

    vol = read_volume("sub-01_T1w.nii.gz")          # or a DICOM series folder, or "<store>.zarr/<subject>"
    vol.data      # (X, Y, Z) float32, finite
    vol.affine    # (4, 4) float64, voxel -> RAS mm
    vol.spacing   # (3,) voxel size in mm along X, Y, Z
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_KINDS = ("nifti", "dicom", "zarr")


DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


def is_dicom_file(path: Path) -> bool:
    """A `.dcm`/`.ima`/`.dicom` file, or any file with the DICOM preamble `DICM` at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


class VolumeError(ValueError):
    """A volume cannot be read or is unusable; the message starts with the file and says the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True, eq=False)
class Volume:
    """One 3D scalar volume in canonical RAS+ orientation.

    data:     (X, Y, Z) float32, finite (intensities after DICOM rescale / NIfTI scaling; Zarr: as stored)
    affine:   (4, 4) float64, voxel index -> RAS millimetres
    source:   the file or folder it was read from
    kind:     "nifti" | "dicom" | "zarr"
    identity: who/what the volume belongs to in the source (DICOM PatientID, BIDS subject, file stem). It may be
              a patient identifier: use it only to derive a salted pseudonym, never write it anywhere.
    meta:     JSON-able facts about the volume (Zarr: the array's attributes; others: empty)
    """

    data: np.ndarray
    affine: np.ndarray
    source: str
    kind: str
    identity: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes (norms of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def read_volume(path: str | Path, *, canonical: bool = True) -> Volume:
    """Read a NIfTI file, a DICOM series folder or a Zarr array/subject group into a `Volume`.

    The kind is recognized from the path: `*.nii` / `*.nii.gz` -> NIfTI; a directory holding `zarr.json` ->
    Zarr (an array, or a subject group whose `image` array is read); any other directory -> one DICOM series.
    `canonical=False` keeps the source's voxel order (the affine is exact either way).
    Raises VolumeError (unreadable, missing, 4D, NaN/inf, empty, non-numeric dtype, DICOM without pixel data,
    mixed series ...).
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "does not exist")
    if path.is_dir():
        if (path / "zarr.json").exists():
            vol = _read_zarr(path)
        else:
            vol = read_dicom_series(path)
    elif path.name.endswith(NIFTI_SUFFIXES):
        vol = _read_nifti(path)
    else:
        raise VolumeError(path, f"unknown volume format (expected {' or '.join(NIFTI_SUFFIXES)}, a DICOM series "
                                "folder or a Zarr array)")
    _check_geometry(vol)
    _check_values(vol)
    return to_canonical(vol) if canonical else vol


def to_canonical(vol: Volume) -> Volume:
    """The same volume with axes permuted/flipped to the closest RAS+ orientation (no resampling)."""
    ornt = nib.orientations.io_orientation(vol.affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return vol
    data = np.ascontiguousarray(nib.orientations.apply_orientation(vol.data, ornt))
    affine = vol.affine @ nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
    return Volume(data, affine, vol.source, vol.kind, vol.identity, dict(vol.meta))


def identity_from_path(path: str | Path) -> str:
    """Source identity of a NIfTI file: the BIDS `sub-<label>` if the path has one, else the file stem.

    Several files of one subject (e.g. `sub-01_T1w.nii.gz`, `sub-01_ses-2_T1w.nii.gz`) then share a pseudonym and
    land in the same split.
    """
    path = Path(path)
    m = re.search(r"sub-([A-Za-z0-9]+)", str(path))
    if m:
        return f"sub-{m.group(1)}"
    name = path.name
    for suffix in NIFTI_SUFFIXES + (".zarr",):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ---------------------------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path) -> Volume:
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for broken headers / gzip streams
        raise VolumeError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise VolumeError(path, f"voxel type {dtype} is not a scalar intensity (RGB or complex NIfTI?)")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) > 3:
        raise VolumeError(path, f"is {len(shape)}D with shape {img.shape}; expected one 3D volume "
                                "(split 4D series first, e.g. fslsplit)")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as e:
        raise VolumeError(path, f"voxel data unreadable ({type(e).__name__}: {e})") from None
    if data.ndim < 3:
        # A single image, not a volume: its slicing axis and through-plane geometry are undefined.
        raise VolumeError(path, f"is {data.ndim}D with shape {img.shape}; expected one 3D volume (X, Y, Z)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(path, "has a missing or singular affine (no usable qform/sform)")
    _check_stored_voxel_size(path, img, data.shape)
    return Volume(data, affine, str(path), "nifti", identity_from_path(path))


def _check_stored_voxel_size(path: Path, img: Any, shape: tuple[int, ...]) -> None:
    """Reject a zero voxel size stored in the header. nibabel replaces a zero pixdim by 1 mm when it loads the
    header (with only a printed warning), so a degenerate geometry would be sliced as if it were 1 mm; the qform
    and the fallback affine are built from pixdim, so it matters unless a valid sform overrides it."""
    header = img.header
    if int(header.get("sform_code", 0)) > 0 or not hasattr(header, "from_fileobj"):
        return
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            raw = type(header).from_fileobj(f, check=False)
        pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    except Exception:  # noqa: BLE001 - the header loaded above; a second read failing leaves nibabel's view
        return
    for axis, (size, mm) in enumerate(zip(shape, pixdim)):
        if size > 1 and (not np.isfinite(mm) or mm == 0):
            raise VolumeError(path, f"singular affine: voxel size {mm} mm along axis {axis} in the header "
                                    "(pixdim); set the true voxel size in the header (e.g. nibabel header.set_zooms)")


# ---------------------------------------------------------------------------------------------- DICOM


def read_dicom_series(folder: str | Path) -> Volume:
    """Read one DICOM series (the files directly inside `folder`) as a volume in the DICOM patient geometry.

    Slices are ordered by ImagePositionPatient projected on the slice normal (file names and order do not
    matter); RescaleSlope/RescaleIntercept are applied per slice; the affine is built from
    ImageOrientationPatient, PixelSpacing and the slice positions and converted from DICOM's LPS to RAS
    (as nibabel / dcm2niix do). Not canonical yet: `read_volume` reorients.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise VolumeError(folder, "empty folder (no files; expected one DICOM series)")
    slices = []
    for f in files:
        if f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(f, force=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError) as e:
            raise VolumeError(f, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
        if "SOPClassUID" not in ds and "PixelData" not in ds and "ImagePositionPatient" not in ds:
            log.warning("%s: skipped (not a DICOM image)", f)
            continue
        slices.append((f, ds))
    if not slices:
        raise VolumeError(folder, "holds no DICOM image files")

    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise VolumeError(folder, f"holds {len(series)} DICOM series; put each series in its own folder")
    for f, ds in slices:
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise VolumeError(f, "DICOM file has no pixel data")
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise VolumeError(f, f"DICOM file lacks {tag}; cannot place the slice in space")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f, "multi-frame (enhanced) DICOM is not supported; convert it with dcm2niix")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise VolumeError(f, f"DICOM image has {ds.SamplesPerPixel} samples per pixel; expected grayscale")

    f0, ds0 = slices[0]
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]  # row_cos: direction of increasing column index (along a row)
    normal = np.cross(row_cos, col_cos)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise VolumeError(f0, f"ImageOrientationPatient {list(iop)} is not two orthonormal directions")
    shape0 = (int(ds0.Rows), int(ds0.Columns))
    for f, ds in slices[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise VolumeError(f, "ImageOrientationPatient differs from the rest of the series")
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            raise VolumeError(f, f"slice size {(int(ds.Rows), int(ds.Columns))} differs from {shape0}")

    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in slices])
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    positions, dist = positions[order], dist[order]
    if len(dist) > 1:
        gaps = np.diff(dist)
        if (gaps < 1e-4).any():
            i = int(np.argmin(gaps))
            raise VolumeError(slices[i + 1][0], f"has the same slice position as {slices[i][0].name} "
                                                "(duplicate slice or two series in one folder)")
        if np.abs(gaps - gaps.mean()).max() > 0.01 * gaps.mean() + 1e-3:
            raise VolumeError(folder, f"non-uniform slice spacing {np.round(gaps, 3).tolist()} (missing slices?)")
        step = (positions[-1] - positions[0]) / (len(dist) - 1)
    else:
        thick = float(ds0.get("SpacingBetweenSlices", 0) or ds0.get("SliceThickness", 0) or 1.0)
        step = normal * thick

    planes = []
    for f, ds in slices:
        try:
            arr = ds.pixel_array
        except Exception as e:  # compressed syntaxes without a decoder, truncated pixel data ...
            raise VolumeError(f, f"DICOM pixel data cannot be decoded ({type(e).__name__}: {e})") from None
        if arr.shape != shape0:
            raise VolumeError(f, f"pixel array shape {arr.shape}, expected {shape0}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        plane = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
            plane = -plane  # MONOCHROME1 shows low values bright; flip so that bright = high everywhere
        planes.append(plane.T)  # (rows, cols) -> (cols, rows): axis 0 follows row_cos, axis 1 col_cos

    data = np.stack(planes, axis=-1)  # (cols, rows, slices)
    row_sp, col_sp = (float(v) for v in ds0.PixelSpacing)  # PixelSpacing = [between rows, between columns]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_sp
    lps[:3, 1] = col_cos * row_sp
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    identity = str(ds0.get("PatientID", "") or ds0.get("PatientName", "") or ds0.get("StudyInstanceUID", "")
                   or folder.resolve())
    return Volume(data, affine, str(folder), "dicom", identity)


# ---------------------------------------------------------------------------------------------- Zarr


def _read_zarr(path: Path) -> Volume:
    import zarr

    try:
        meta = json.loads((path / "zarr.json").read_text())
        if meta.get("node_type") == "group":
            path = path / "image"
        arr = zarr.open_array(str(path), mode="r")
        data = np.asarray(arr[...], dtype=np.float32)
        attrs = dict(arr.attrs)
    except VolumeError:
        raise
    except Exception as e:
        raise VolumeError(path, f"not a readable Zarr array ({type(e).__name__}: {e})") from None
    if data.ndim != 3:
        raise VolumeError(path, f"Zarr array has shape {data.shape}; expected (X, Y, Z)")
    if "affine" in attrs:
        affine = np.asarray(attrs["affine"], dtype=np.float64)
    elif "spacing" in attrs:
        affine = np.diag([*map(float, attrs["spacing"]), 1.0])
    else:
        raise VolumeError(path, "Zarr array has neither an 'affine' nor a 'spacing' attribute")
    if affine.shape != (4, 4):
        raise VolumeError(path, f"Zarr attribute 'affine' has shape {affine.shape}; expected (4, 4)")
    subject = str(attrs.get("subject", path.parent.name if path.name == "image" else path.name))
    return Volume(data, affine, str(path), "zarr", subject, attrs)


# ---------------------------------------------------------------------------------------------- checks


def _check_geometry(vol: Volume) -> None:
    """Every reader's affine must map voxels to space invertibly (a zero voxel size, e.g. a DICOM PixelSpacing of 0
    or a Zarr spacing of 0, collapses an axis: slicing and resampling would be meaningless)."""
    a = np.asarray(vol.affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise VolumeError(vol.source, "affine is missing or not finite; cannot place the voxels in space")
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if sizes.min() <= 1e-6 or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise VolumeError(vol.source, f"singular affine (voxel sizes {np.round(sizes, 6).tolist()} mm): zero voxel "
                                      "size or collinear axes; fix the geometry in the file's header")


def _check_values(vol: Volume) -> None:
    if vol.data.size == 0 or min(vol.data.shape) == 0:
        raise VolumeError(vol.source, f"empty volume (shape {vol.data.shape})")
    if not np.isfinite(vol.data).all():
        bad = int((~np.isfinite(vol.data)).sum())
        raise VolumeError(vol.source, f"contains {bad} NaN or infinite voxels")
    if vol.data.max() == vol.data.min():
        raise VolumeError(vol.source, f"is constant (every voxel = {vol.data.flat[0]}); no image content")

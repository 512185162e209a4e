"""Find the inputs of a build and read them: NIfTI files, DICOM series folders, image folders; labels matched.

Layout rules (documented in `python -m shards build --help`):
- MR domain: every `*.nii` / `*.nii.gz` below an INPUT is one volume; every folder that directly holds DICOM files
  (`.dcm`/`.ima` or the `DICM` preamble) is one series; every folder of PNG/JPEG/TIFF files is one stack of slices
  (sorted by name, stacked along axis 2 with 1 mm pixels).
- Color domain: every folder holding PNG/JPEG/TIFF files is one subject (e.g. one cryosection body), every image
  one sample. Inputs are expected with the background removed (transparent or black), as in the paper.
- Labels (`--labels`) and true colors (`--truth`) are matched to images by name: `sub-01_T1w.nii.gz` takes
  `sub-01_T1w.nii.gz`, `sub-01_T1w_seg.nii.gz`, `sub-01_dseg.nii.gz` (label stem without `_seg`, `_dseg`, `_label(s)`,
  `_mask`, `_aseg` equals the image stem or is a `_`-prefix of it); a DICOM series or image folder matches by folder
  name. An ambiguous match is an error for that image.
"""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cmgan.data.slicing import put_slice
from cmgan.data.volumes import (
    NIFTI_SUFFIXES,
    Volume,
    VolumeError,
    identity_from_path,
    is_dicom_file,
    read_volume,
    to_canonical,
)
from cmgan.files import sha256_file, sha256_files

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABEL_SUFFIXES = ("_labels", "_label", "_dseg", "_aseg", "_seg", "_mask")
TRUTH_SUFFIXES = ("_truth", "_rgb", "_color")


@dataclass(frozen=True)
class Source:
    """One input volume (MR) or image folder (color) and what belongs to it.

    identity: the source's subject identity (may be a patient identifier: only ever hashed);
    name: the match key (file stem or folder name); files: the image files of an image folder, sorted.
    """

    path: Path
    kind: str  # "nifti" | "dicom" | "images"
    identity: str
    name: str
    label: Path | None = None
    truth: Path | None = None
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Failure:
    path: str
    problem: str

    @property
    def message(self) -> str:
        return f"{self.path}: {self.problem}"


def nifti_stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]




def _dicom_identity(folder: Path, files: list[Path]) -> str:
    import pydicom

    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except Exception:
            continue
        ident = str(ds.get("PatientID", "") or ds.get("PatientName", "") or ds.get("StudyInstanceUID", ""))
        if ident:
            return ident
    return str(folder.resolve())


def discover(inputs: list[str | Path], domain: str) -> tuple[list[Source], list[Failure]]:
    """Sources found under the inputs (files or folders), and inputs that hold nothing usable."""
    sources: list[Source] = []
    failures: list[Failure] = []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            failures.append(Failure(str(root), "does not exist"))
            continue
        if root.is_file():
            found = _discover_file(root, domain)
            if found is None:
                failures.append(Failure(str(root), f"not a recognized {domain} input (expected "
                                        + ("NIfTI .nii/.nii.gz, a DICOM series folder or an image folder)"
                                           if domain == "mr" else "a PNG/JPEG/TIFF image or a folder of them)")))
            else:
                sources.append(found)
            continue
        n_before = len(sources)
        any_file = False
        for folder in sorted([root, *[p for p in root.rglob("*") if p.is_dir()]]):
            files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural)
            any_file |= bool(files)
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if domain == "mr":
                for p in files:
                    if p.name.endswith(NIFTI_SUFFIXES):
                        sources.append(Source(p, "nifti", identity_from_path(p), nifti_stem(p)))
                dicoms = [p for p in files if not p.name.endswith(NIFTI_SUFFIXES) and p.suffix.lower()
                          not in IMAGE_SUFFIXES and is_dicom_file(p)]
                if dicoms:
                    sources.append(Source(folder, "dicom", _dicom_identity(folder, dicoms), folder.name))
            if images:
                ident = _folder_identity(folder)
                sources.append(Source(folder, "images", ident, folder.name, files=tuple(images)))
        if not any_file:
            failures.append(Failure(str(root), "empty folder (no files)"))
        elif len(sources) == n_before:
            failures.append(Failure(str(root), f"holds no {domain} inputs (" + (
                "NIfTI, DICOM or image files)" if domain == "mr" else "PNG/JPEG/TIFF images)")))
    # The same file given twice (e.g. a folder and a file inside it) is read once.
    unique: dict[tuple[str, str], Source] = {}
    for s in sources:
        unique.setdefault((s.kind, str(s.path.resolve())), s)
    return list(unique.values()), failures


def _folder_identity(folder: Path) -> str:
    m = re.search(r"sub-([A-Za-z0-9]+)", str(folder))
    return f"sub-{m.group(1)}" if m else folder.name


def _discover_file(path: Path, domain: str) -> Source | None:
    if domain == "mr" and path.name.endswith(NIFTI_SUFFIXES):
        return Source(path, "nifti", identity_from_path(path), nifti_stem(path))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Source(path.parent, "images", _folder_identity(path.parent), path.parent.name, files=(path,))
    return None


def expand_globs(patterns: list[str]) -> tuple[list[Path], list[Failure]]:
    """Files named by `--labels` / `--truth` arguments (files, folders or globs)."""
    files: list[Path] = []
    failures: list[Failure] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            hits = [q for q in sorted(p.rglob("*")) if q.is_file() and q.name.endswith(NIFTI_SUFFIXES)]
        elif p.exists():
            hits = [p]
        else:
            hits = [Path(h) for h in sorted(glob.glob(pattern, recursive=True))]
        if not hits:
            failures.append(Failure(pattern, "matches no file"))
        files.extend(hits)
    return files, failures


def _strip(stem: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def match_files(sources: list[Source], files: list[Path], suffixes: tuple[str, ...], what: str
                ) -> tuple[dict[Path, Path], list[Failure], list[Path]]:
    """{source path: matched file}, failures (ambiguous), and files that matched nothing."""
    keys = [(f, _strip(nifti_stem(f), suffixes), nifti_stem(f)) for f in files]
    matched: dict[Path, Path] = {}
    failures: list[Failure] = []
    used: set[Path] = set()
    for s in sources:
        exact = [f for f, k, stem in keys if f != s.path and (stem == s.name or k == s.name)]
        prefix = [f for f, k, _ in keys if f != s.path and s.name.startswith(k + "_")]
        cands = exact or prefix
        if len(cands) > 1:
            failures.append(Failure(str(s.path), f"{len(cands)} {what} files match ({', '.join(c.name for c in cands)})"
                                    "; give one per image"))
        elif cands:
            matched[s.path] = cands[0]
            used.add(cands[0])
    unused = [f for f, _, _ in keys if f not in used]
    return matched, failures, unused


# ---------------------------------------------------------------------------------------------- reading


def source_sha256(source: Source) -> str:
    """Checksum of a source's bytes (a DICOM series / image folder: of its files' checksums in name order)."""
    if source.kind == "nifti":
        return sha256_file(source.path)
    files = source.files or tuple(sorted((p for p in source.path.iterdir() if p.is_file()), key=_natural))
    return sha256_files(files)


def read_mr(source: Source) -> Volume:
    """The canonical volume of an MR source (image folders become a stack along axis 2, 1 mm pixels)."""
    if source.kind in ("nifti", "dicom"):
        return read_volume(source.path)
    planes = [read_gray_image(f) for f in source.files]
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        raise VolumeError(source.path, f"images of one stack differ in size {sorted(shapes)}")
    h, w = planes[0].shape
    data = np.zeros((w, h, len(planes)), np.float32)
    for k, plane in enumerate(planes):
        put_slice(data, 2, k, plane)
    vol = Volume(data, np.eye(4), str(source.path), "images", source.identity)
    if data.max() == data.min():
        raise VolumeError(source.path, "image stack is constant; no image content")
    return vol


def read_label(path: Path, like: Volume) -> np.ndarray:
    """Label map matched to `like`: (X, Y, Z) uint8, same canonical grid; VolumeError if it does not fit."""
    lab = read_volume(path)
    _check_same_grid(path, lab, like)
    values = lab.data
    if np.abs(values - np.rint(values)).max() > 1e-3:
        raise VolumeError(path, "label map holds non-integer values (a probability map? threshold it first)")
    if values.min() < 0 or values.max() > 255:
        raise VolumeError(path, f"label values in [{values.min()}, {values.max()}]; expected 0..255")
    return np.rint(values).astype(np.uint8)


def read_truth(path: Path, like: Volume) -> np.ndarray:
    """True color volume (X, Y, Z, 3) uint8 (a 4D NIfTI with 3 channels) on `like`'s canonical grid."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:
        raise VolumeError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if data.ndim != 4 or data.shape[3] != 3 or data.dtype != np.uint8:
        raise VolumeError(path, f"true colors must be (X, Y, Z, 3) uint8, got {data.shape} {data.dtype}")
    canon = to_canonical(Volume(data, np.asarray(img.affine, np.float64), str(path), "nifti"))
    _check_same_grid(path, Volume(canon.data[..., 0], canon.affine, str(path), "nifti"), like)
    return canon.data


def _check_same_grid(path: Path, vol: Volume, like: Volume) -> None:
    if vol.data.shape != like.data.shape:
        raise VolumeError(path, f"shape {vol.data.shape} differs from its image {like.source} {like.data.shape}")
    tol = 1e-3 * max(like.spacing) + 1e-4
    if not np.allclose(vol.affine, like.affine, atol=tol):
        raise VolumeError(path, f"affine differs from its image {like.source} (not on the same voxel grid)")


def read_gray_image(path: Path) -> np.ndarray:
    """(H, W) float32 intensities of a grayscale (or RGB, converted by BT.601 luma) image file."""
    arr = _read_image_array(path)
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return arr.astype(np.float32)


def read_color_image(path: Path, threshold: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """An RGB photograph with its foreground: ((H, W, 3) uint8, (H, W) bool).

    The foreground is the alpha channel where there is one, else the pixels brighter than `threshold` in any
    channel (background removed to black), cleaned: closing, components >= 5% of the largest, holes filled.
    """
    arr = _read_image_array(path)
    if arr.ndim == 2 or arr.shape[2] < 3:
        raise VolumeError(path, "grayscale image; the color domain needs RGB photographs")
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255).round().astype(np.uint8)
    rgb = np.ascontiguousarray(arr[..., :3])
    if arr.shape[2] == 4:
        mask = arr[..., 3] > 127
    else:
        mask = rgb.max(axis=2) > threshold
        mask = ndimage.binary_closing(mask, iterations=2, border_value=0)
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = np.isin(labels, np.flatnonzero(sizes >= 0.05 * sizes.max()))
        mask = ndimage.binary_fill_holes(mask)
    return rgb, mask


def _read_image_array(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA")
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            elif im.mode in ("1", "LA", "I", "F"):
                im = im.convert("F" if im.mode in ("I", "F") else ("L" if im.mode == "1" else "LA"))
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise VolumeError(path, f"not a readable image ({type(e).__name__}: {e})") from None
    if arr.ndim == 3 and arr.shape[2] == 2:  # LA: gray + alpha
        arr = np.stack([arr[..., 0]] * 3 + [arr[..., 1]], axis=-1)
    if arr.size == 0:
        raise VolumeError(path, "empty image")
    return arr

"""Write a volume as a DICOM MR series (one file per axial slice): demo sources and ingest tests.

The geometry is the exact inverse of `cmgan.data.volumes.read_dicom_series`: array axis 0 runs along a row
(ImageOrientationPatient's first triple), axis 1 down the columns, axis 2 across slices; RAS is converted to
DICOM's LPS. Intensities are stored as uint16 with RescaleSlope/RescaleIntercept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom_series(
    data: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    patient: dict[str, str] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    file_names: list[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write (X, Y, Z) intensities with voxel->RAS `affine` as Z single-frame MR DICOM files in `folder`.

    patient: extra top-level DICOM keywords (e.g. PatientName, PatientID, PatientBirthDate, AccessionNumber,
    InstitutionName); file_names: one name per slice (default slice-KKKK.dcm), e.g. shuffled to test sorting.
    returns the written paths in slice order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_cos, col_cos = lps[:3, 0] / col_step, lps[:3, 1] / row_step
    stored = np.rint((np.asarray(data, np.float64) - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"values need slope/intercept that map them into uint16 (got {stored.min()}..{stored.max()})")
    rng = np.random.default_rng(seed)
    study, series, frame = (generate_uid(entropy_srcs=[str(seed), s]) for s in ("study", "series", "frame"))
    names = file_names or [f"slice-{k:04d}.dcm" for k in range(data.shape[2])]
    paths = []
    for k in range(data.shape[2]):
        sop = generate_uid(entropy_srcs=[str(seed), "sop", str(k), str(rng.integers(1 << 30))])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop
        ds.Modality = "MR"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        for keyword, value in (patient or {}).items():
            setattr(ds, keyword, value)
        ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.PixelSpacing = [float(f"{row_step:.6f}"), float(f"{col_step:.6f}")]
        ds.SliceThickness = float(f"{np.linalg.norm(lps[:3, 2]):.6f}")
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype(np.uint16)).tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

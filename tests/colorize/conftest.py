"""Fixtures of the colorization tests: a real (tiny, randomly initialized) generator export, real brain MRI
volumes (the MNI152 T1 template shipped inside nilearn, strided to ~33x39x32) written as NIfTI in several
orientations, and a DICOM series written with pydicom."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cmgan.config import ModelConfig
from cmgan.data.intensity import Normalization
from cmgan.export import save_export
from cmgan.models import build_networks, build_segmenter

TINY = ModelConfig(image_size=32, width=8, seg_width=8, disc_width=8)


def make_export(path: Path, seed: int = 0) -> Path:
    """A real export of tiny randomly initialized networks (fixed seed)."""
    torch.manual_seed(seed)
    nets = build_networks(TINY)
    seg = build_segmenter(TINY)
    return save_export(path, model_cfg=TINY, generator_state=nets.G.state_dict(),
                       segmenter_state=seg.state_dict(), normalization=Normalization().to_dict(),
                       meta={"axis": 2, "seed": seed})


@pytest.fixture(scope="session")
def export_path(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("export") / "generator.pt")


@pytest.fixture(scope="session")
def brain() -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) float32 real T1 brain (MNI152 2009a, every 6th voxel: 6 mm) and its RAS affine."""
    spec = importlib.util.find_spec("nilearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)[::6, ::6, ::6]
    affine = img.affine.copy()
    affine[:3, :3] *= 6
    return np.ascontiguousarray(data), affine


def reoriented(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored in another voxel order (e.g. "LPS", "ASL"): same physical space, new affine."""
    src = nib.orientations.io_orientation(affine)
    dst = nib.orientations.axcodes2ornt(codes)
    t = nib.orientations.ornt_transform(src, dst)
    out = nib.orientations.apply_orientation(data, t)
    new_affine = affine @ nib.orientations.inv_ornt_aff(t, data.shape)
    return np.ascontiguousarray(out), new_affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.int16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def write_dicom_series(folder: Path, volume: np.ndarray, spacing=(1.0, 1.0, 2.0), patient="PAT001") -> Path:
    """Write (cols, rows, slices) `volume` as an axial MR series (one file per slice, shuffled names).

    Row direction +x (patient left), column direction +y (posterior): DICOM's usual axial LPS layout.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    cols, rows, n = volume.shape
    order = np.random.default_rng(0).permutation(n)  # file names do not follow slice order
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "MR", patient, "Test^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-40.0, -50.0, -30.0 + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.uint16)).tobytes()
        ds.save_as(folder / f"IM{order[k]:04d}.dcm", enforce_file_format=True)
    return folder

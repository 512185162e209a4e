"""Offline data tools, run once before training: `python -m shards build | verify | demo`.

build.py (inputs -> WebDataset tars + Zarr + manifest), readers.py (NIfTI / DICOM / image folders, label matching),
writer.py (atomic tar shards, Zarr store), deid.py (salted pseudonyms), verify.py, demo.py + phantoms.py
(synthetic data of both domains), dicom_write.py (volumes as DICOM series, for demos and tests). The sample schema,
manifest format and readers shared with training live in `cmgan.data`.
"""

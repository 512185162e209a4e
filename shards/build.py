"""`python -m shards build`: inputs -> 2D slice samples in WebDataset tars (+ Zarr volumes) + manifest.json.

Steps per MR volume: read (NIfTI / DICOM series / image stack) in canonical RAS+ orientation -> match its label map
-> foreground mask (labels > 0 where given, else intensity) -> percentile window inside the intensity foreground
-> [-1, 1] with background -1 -> slices along `axis` (slices with < `min_foreground` foreground skipped) -> each
resized (physical aspect kept) and padded to `size` x `size`. Color images: RGB + foreground (alpha or non-black)
-> background 0 -> resized/padded.

Subjects are split train/val/test by their salted pseudonym (never by slice). Bad inputs are reported with the
file and the problem and skipped; the build writes every good input and lists the failures (by a salted source
id, never the path) in the manifest. Exit status (see __main__): 0 all inputs built, 1 some inputs failed
(outputs written), 2 nothing built.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmgan.data import schema
from cmgan.data.codec import encode_json, encode_npy
from cmgan.data.intensity import Normalization, NormalizationError, foreground_mask, intensity_window, normalize_mr
from cmgan.data.manifest import FORMAT, NAME, VERSION, read_manifest, write_manifest
from cmgan.data.slicing import foreground_box, is_empty_slice, slice_spacing, take_slice, to_size
from cmgan.data.volumes import VolumeError
from cmgan.files import sha256_file
from shards import readers
from shards.deid import load_or_create_salt, pseudonym
from shards.writer import ShardWriter, ZarrWriter

log = logging.getLogger(__name__)

ZARR_NAME = "volumes.zarr"


class BuildError(RuntimeError):
    """The build cannot run at all (bad options, output directory in use); nothing was written."""


@dataclass(frozen=True)
class BuildOptions:
    """Options of one build (the CLI flags of `python -m shards build`)."""

    domain: str
    out: Path
    size: int = 256
    axis: int = 2
    max_size: int = 256 << 20
    max_count: int = 10_000
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    salt_file: Path | None = None
    labels: tuple[str, ...] = ()
    truth: tuple[str, ...] = ()
    normalization: Normalization = field(default_factory=Normalization)
    """MR intensity window and, for both domains, the foreground crop margin (`Normalization.crop_margin`)."""
    min_foreground: float = 0.01
    workers: int = 1
    overwrite: bool = False
    zarr: bool = True

    def __post_init__(self) -> None:
        if self.domain not in schema.DOMAINS:
            raise BuildError(f"--domain {self.domain!r} is not valid; choose one of {list(schema.DOMAINS)}")
        if self.size < 8:
            raise BuildError(f"--size {self.size} must be >= 8")
        if self.axis not in (0, 1, 2):
            raise BuildError(f"--axis {self.axis} must be 0 (sagittal), 1 (coronal) or 2 (axial)")
        if len(self.split) != 3 or min(self.split) < 0 or not abs(sum(self.split) - 1) < 1e-6 or self.split[0] <= 0:
            raise BuildError(f"--split {','.join(map(str, self.split))} must be 3 fractions train,val,test summing "
                             "to 1 with train > 0")
        if self.max_count < 1 or self.max_size < 1:
            raise BuildError("--max-count and --max-size must be >= 1")
        if (self.labels or self.truth) and self.domain != "mr":
            raise BuildError("--labels and --truth are for --domain mr")


@dataclass
class BuildResult:
    out: Path
    manifest: dict[str, Any] | None
    failures: list[readers.Failure]

    @property
    def exit_code(self) -> int:
        if self.manifest is None or self.manifest["counts"]["samples"] == 0:
            return 2
        return 1 if self.failures else 0


@dataclass(frozen=True)
class _Job:
    source: readers.Source
    subject: str
    volume: str
    split: str
    opts: BuildOptions


@dataclass
class _Done:
    samples: list[tuple[str, dict[str, bytes]]]
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    info: dict[str, Any]
    failures: list[readers.Failure] = field(default_factory=list)


def assign_splits(subjects: list[str], fractions: tuple[float, float, float]) -> dict[str, str]:
    """Split subjects (pseudonyms, so sorting them is a salted random order) by the fractions.

    Counts are rounded; every split with a non-zero fraction gets at least one subject when there are enough
    subjects for all of them (train first), so a small demo still has a test subject.
    """
    subjects = sorted(subjects)
    n = len(subjects)
    want = [f * n for f in fractions]
    counts = [int(np.floor(w)) for w in want]
    for i in np.argsort([-(w - c) for w, c in zip(want, counts)], kind="stable"):
        if sum(counts) < n:
            counts[i] += 1
    nonzero = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(nonzero):
        for i in nonzero:
            while counts[i] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[i] += 1
    out: dict[str, str] = {}
    start = 0
    for split, c in zip(schema.SPLITS, counts):
        for s in subjects[start : start + c]:
            out[s] = split
        start += c
    return out


def build(inputs: list[str | Path], opts: BuildOptions) -> BuildResult:
    """Build the shard directory `opts.out` from `inputs`; see the module docstring."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    cleanup_tmp(out)
    old = _previous_manifest(out, opts.overwrite)
    salt, salt_path = load_or_create_salt(opts.salt_file, out)
    log.info("pseudonym salt: %s (outside the outputs)", salt_path)

    sources, failures = readers.discover(list(inputs), opts.domain)
    label_files, f1 = readers.expand_globs(list(opts.labels))
    truth_files, f2 = readers.expand_globs(list(opts.truth))
    failures += f1 + f2
    side = {p.resolve() for p in label_files + truth_files}
    sources = [s for s in sources if s.path.resolve() not in side]
    if opts.labels:
        matched, f3, unused = readers.match_files(sources, label_files, readers.LABEL_SUFFIXES, "label")
        failures += f3
        bad = {f.path for f in f3}
        sources = [s for s in sources if str(s.path) not in bad]
        sources = [_with(s, label=matched.get(s.path)) for s in sources]
        for f in unused:
            log.warning("%s: label file matches no image; ignored", f)
    if opts.truth:
        matched, f4, _ = readers.match_files(sources, truth_files, readers.TRUTH_SUFFIXES, "truth")
        failures += f4
        sources = [_with(s, truth=matched.get(s.path)) for s in sources]

    # Subject pseudonyms; a subject with several volumes gets volume ids <subject>v<n> (keys stay unique).
    by_subject: dict[str, list[tuple[str, readers.Source]]] = {}
    for s in sources:
        subject = pseudonym(salt, s.identity)
        by_subject.setdefault(subject, []).append((pseudonym(salt, f"{s.identity}\0{s.kind}\0{s.path}", "v"), s))
    splits = assign_splits(list(by_subject), opts.split)
    jobs: list[_Job] = []
    for subject in sorted(by_subject):
        vols = sorted(by_subject[subject], key=lambda t: t[0])
        for n, (_, s) in enumerate(vols):
            volume = subject if len(vols) == 1 else f"{subject}v{n}"
            jobs.append(_Job(s, subject, volume, splits[subject], opts))

    writers = {split: ShardWriter(out, split, opts.max_size, opts.max_count) for split in schema.SPLITS}
    zarr_writer = ZarrWriter(out, ZARR_NAME) if opts.zarr and opts.domain == "mr" else None
    subjects: dict[str, dict[str, Any]] = {}
    label_values: set[int] = set()
    members: set[str] = set()
    try:
        for job, done in _run(jobs, opts.workers):
            # Failures are logged at INFO (shown with -v, as they happen): the command prints each once, in its
            # summary at the end; logging them as errors too would report every bad input twice.
            if isinstance(done, readers.Failure):
                log.info("failed: %s", done.message)
                failures.append(done)
                continue
            for f in done.failures:
                log.info("failed: %s", f.message)
            failures.extend(done.failures)
            if not done.samples:
                if done.failures:
                    continue
                failures.append(readers.Failure(str(job.source.path), "no slice with foreground (all empty)"))
                log.info("failed: %s", failures[-1].message)
                continue
            for key, sample in done.samples:
                writers[job.split].write(key, sample)
                members.update(sample)
            if zarr_writer is not None:
                zarr_writer.write_subject(job.volume, done.arrays, done.attrs)
            label_values.update(done.info.pop("label_values", []))
            subjects[job.volume] = {"subject": job.subject, "split": job.split, **done.info}
        shards = [info.to_dict() for split in schema.SPLITS for info in writers[split].close()]
        zarr_info = None
        if zarr_writer is not None and subjects:
            zarr_writer.close()
            zarr_info = {"path": ZARR_NAME, "arrays": sorted(zarr_writer.arrays)}
        elif zarr_writer is not None:
            zarr_writer.abort()
    except BaseException:
        for w in writers.values():
            w.abort()
        if zarr_writer is not None:
            zarr_writer.abort()
        raise

    if not subjects:
        for s in shards:
            (out / s["name"]).unlink(missing_ok=True)
        return BuildResult(out, None, failures)

    split_subjects = {sp: sorted({v["subject"] for v in subjects.values() if v["split"] == sp}) for sp in schema.SPLITS}
    counts: dict[str, int] = {"subjects": len({v["subject"] for v in subjects.values()}),
                              "volumes": len(subjects), "samples": sum(v["samples"] for v in subjects.values())}
    for sp in schema.SPLITS:
        counts[sp] = sum(v["samples"] for v in subjects.values() if v["split"] == sp)
    labelled = any(v.get("labelled") for v in subjects.values())
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "domain": opts.domain,
        "size": opts.size,
        "axis": opts.axis,
        "min_foreground": opts.min_foreground,
        "crop_margin": opts.normalization.crop_margin,
        "image_key": schema.IMAGE_KEY[opts.domain],
        "background": schema.BACKGROUND[opts.domain],
        "normalization": opts.normalization.to_dict() if opts.domain == "mr" else None,
        "members": sorted(members),
        "label_names": list(schema.LABEL_NAMES) if labelled else None,
        "label_values": sorted(label_values) if labelled else None,
        "split_fractions": list(opts.split),
        "splits": split_subjects,
        "volumes": dict(sorted(subjects.items())),
        "counts": counts,
        "shards": shards,
        "zarr": zarr_info,
        "errors": [{"source_id": pseudonym(salt, f.path, "src"), "problem": _scrub(f)} for f in failures],
    }
    write_manifest(out, manifest)
    if old is not None:
        keep = {s["name"] for s in shards}
        for s in old.get("shards", []):
            if s["name"] not in keep:
                (out / s["name"]).unlink(missing_ok=True)
    return BuildResult(out, manifest, failures)


_ABS_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s:'\"(),]+")


def _scrub(failure: readers.Failure) -> str:
    """The problem text without paths or the file's name (they may hold patient names); the console shows all."""
    path = Path(failure.path)
    text = _ABS_PATH.sub("<path>", failure.problem)
    names = {path.name}
    try:  # messages may name a sibling (e.g. the other file of a duplicate DICOM slice)
        names.update(p.name for p in path.parent.iterdir() if p.is_file())
    except OSError:
        pass
    for name in sorted(names, key=len, reverse=True):
        if len(name) >= 3:
            text = text.replace(name, "<file>")
    return text


def _with(s: readers.Source, **kw: Any) -> readers.Source:
    from dataclasses import replace

    return replace(s, **kw)


def _previous_manifest(out: Path, overwrite: bool) -> dict[str, Any] | None:
    if not (out / NAME).exists():
        stray = [p for p in out.iterdir() if p.suffix == ".tar"]
        if stray:
            raise BuildError(f"{out} holds shards but no manifest; choose an empty --out directory")
        return None
    if not overwrite:
        raise BuildError(f"{out} already holds a shard set ({NAME}); pass --overwrite to replace it")
    try:
        return read_manifest(out)
    except ValueError:
        return None


def _run(jobs: list[_Job], workers: int) -> Iterator[tuple[_Job, _Done | readers.Failure]]:
    """Process jobs in order, in `workers` processes (results stay in job order, so output is deterministic)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job, process(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from zip(jobs, pool.map(process, jobs, chunksize=1))


def process(job: _Job) -> _Done | readers.Failure:
    """One source -> its samples (and Zarr arrays); a Failure instead of raising for bad input."""
    try:
        return _process_mr(job) if job.opts.domain == "mr" else _process_color(job)
    except (VolumeError, NormalizationError) as e:
        path = getattr(e, "path", str(job.source.path))
        return readers.Failure(path, getattr(e, "problem", str(e)))
    except MemoryError:
        raise
    except Exception as e:  # a broken file can make any reader raise anything; never stop the whole build
        log.debug("unexpected error", exc_info=True)
        return readers.Failure(str(job.source.path), f"failed ({type(e).__name__}: {e})")


def _meta(job: _Job, index: int, spacing: list[float], sha: str, **extra: Any) -> bytes:
    meta = {"subject": job.subject, "volume": job.volume, "slice": index, "axis": job.opts.axis,
            "spacing": spacing, "source_sha256": sha, "domain": job.opts.domain, "split": job.split, **extra}
    return encode_json(meta)


def _process_mr(job: _Job) -> _Done:
    opts = job.opts
    vol = readers.read_mr(job.source)
    label = readers.read_label(job.source.label, vol) if job.source.label else None
    truth = readers.read_truth(job.source.truth, vol) if job.source.truth else None
    window_mask = foreground_mask(vol.data)
    mask = foreground_mask(vol.data, label) if label is not None else window_mask
    if not mask.any():
        raise VolumeError(vol.source, "no foreground voxels (blank image or empty label map)")
    window = intensity_window(vol.data, opts.normalization, window_mask)
    image = normalize_mr(vol.data, opts.normalization, mask=mask, window_mask=window_mask)
    if label is not None:
        label = np.where(mask, label, 0).astype(np.uint8)
    keep_truth = truth is not None and job.split == "test"
    if truth is not None:
        truth = np.where(mask[..., None], truth, 0).astype(np.uint8)
    sha = readers.source_sha256(job.source)
    spacing = [round(s, 6) for s in vol.spacing]
    pixel = slice_spacing(vol.spacing, opts.axis)
    # One in-plane crop box per volume (the foreground over all slices): the brain fills the frame and every
    # slice of a volume keeps the same scale.
    margin = opts.normalization.crop_margin
    box = foreground_box(mask, opts.axis, margin) if margin is not None else None
    samples = []
    for k in range(vol.data.shape[opts.axis]):
        m2 = take_slice(mask, opts.axis, k)
        if is_empty_slice(m2, opts.min_foreground):
            continue
        img, place = to_size(take_slice(image, opts.axis, k), opts.size, -1.0, pixel, order=1, crop=box)
        m, _ = to_size(m2.astype(np.uint8), opts.size, 0, pixel, order=0, crop=box)
        img[m == 0] = -1.0  # bilinear edges would leak tissue into the background
        key = schema.slice_key(job.volume, k)
        sample = {
            schema.MR_KEY: encode_npy(np.clip(img, -1.0, 1.0).astype(np.float16)),
            schema.MASK_KEY: encode_npy(m),
        }
        if label is not None:
            lab, _ = to_size(take_slice(label, opts.axis, k), opts.size, 0, pixel, order=0, crop=box)
            sample[schema.LABEL_KEY] = encode_npy(lab)
        if keep_truth:
            tru, _ = to_size(take_slice(truth, opts.axis, k), opts.size, 0, pixel, order=1, crop=box)
            tru[m == 0] = 0
            sample[schema.TRUTH_KEY] = encode_npy(tru)
        sample[schema.META_KEY] = _meta(job, k, spacing, sha, placement=place.to_dict(), pixel_mm=list(pixel))
        samples.append((key, sample))
    arrays = {"image": image.astype(np.float16), "mask": mask.astype(np.uint8)}
    if label is not None:
        arrays["label"] = label
    if keep_truth:
        arrays["truth"] = truth
    attrs = {"subject": job.subject, "volume": job.volume, "split": job.split, "affine": vol.affine.tolist(),
             "spacing": spacing, "axis": opts.axis, "samples": len(samples), "source_sha256": sha,
             "normalization": opts.normalization.to_dict(), "window": list(window),
             "min_foreground": opts.min_foreground, "crop_box": list(box) if box else None, "size": opts.size}
    info = {"samples": len(samples), "labelled": label is not None, "truth": keep_truth,
            "shape": list(vol.data.shape), "spacing": spacing, "source_sha256": sha,
            "label_values": sorted(int(v) for v in np.unique(label)) if label is not None else []}
    return _Done(samples, arrays, attrs, info)


def _stack_box(job: _Job) -> tuple[int, int, int, int] | None:
    """One crop box for a folder of same-size sections (the union of their foregrounds), like an MR volume's;
    None for photos of different sizes (placed whole: a per-image crop would blow small sections up)."""
    union = None
    for path in job.source.files:
        try:
            _, mask = readers.read_color_image(path)
        except VolumeError:
            continue  # reported by the second pass
        if union is not None and union.shape != mask.shape:
            return None
        union = mask if union is None else union | mask
    return foreground_box(union, margin=job.opts.normalization.crop_margin) if union is not None else None


def _process_color(job: _Job) -> _Done:
    opts = job.opts
    box = _stack_box(job) if opts.normalization.crop_margin is not None else None
    samples = []
    bad: list[readers.Failure] = []
    for index, path in enumerate(job.source.files):
        try:
            rgb, mask = readers.read_color_image(path)
        except VolumeError as e:
            bad.append(readers.Failure(e.path, e.problem))  # this photo only; the rest of the folder is kept
            continue
        if is_empty_slice(mask, opts.min_foreground):
            continue
        img, place = to_size(rgb, opts.size, 0, order=1, crop=box)
        m, _ = to_size(mask.astype(np.uint8), opts.size, 0, order=0, crop=box)
        img[m == 0] = 0
        sha = sha256_file(path)
        key = schema.slice_key(job.volume, index)
        samples.append((key, {
            schema.RGB_KEY: encode_npy(img),
            schema.MASK_KEY: encode_npy(m),
            schema.META_KEY: _meta(job, index, [1.0, 1.0], sha, placement=place.to_dict()),
        }))
    info = {"samples": len(samples), "labelled": False, "truth": False, "images": len(job.source.files),
            "source_sha256": readers.source_sha256(job.source), "crop_box": list(box) if box else None}
    return _Done(samples, {}, {}, info, bad)


def cleanup_tmp(out: Path) -> None:
    """Remove temporaries left by an interrupted build."""
    for p in out.glob(".*.tmp"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()

"""Colorize this process's share of an archive: discover, partition, and stream volumes through three stages.

    summary = run_colorize(ColorizeOptions(checkpoint="runs/x", inputs=("archive/",), out="colored"))

Stages overlap, one volume each, so memory stays flat however large the archive: a loader thread checksums the
next input, checks its marker and, unless it is done, reads and normalizes it; the main thread runs the generator
over the current volume's slices in batches; a writer thread writes the previous volume's outputs and marker.
At most three volumes are in memory at once, never the archive.

Every input ends as "done" (colorized now), "skipped" (its marker proves it done for this input checksum, model
and settings) or "failed" (with the reason; the others go on). The summary JSON (atomic) lists them all:
`<out>/summary.json`, or `<out>/summary.shard-<i>-of-<n>.json` for one shard of a partition.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cmgan import files
from cmgan.colorize.consistency import slice_consistency, smooth_chroma
from cmgan.colorize.inputs import (
    Input,
    Shard,
    discover,
    input_sha256,
    parse_shard,
    partition,
    peek_voxels,
    shard_from_env,
)
from cmgan.colorize.markers import FORMAT as MARKER_FORMAT
from cmgan.colorize.markers import VERSION as MARKER_VERSION
from cmgan.colorize.markers import marker_path, read_marker, why_not_done
from cmgan.colorize.volume import PreparedVolume, colorize_prepared, prepare_volume, read_source, to_native
from cmgan.colorize.writers import (
    FORMATS,
    SUFFIX,
    output_bytes,
    remove_stale,
    write_montage,
    write_ome_zarr,
    write_rgb_nifti,
)
from cmgan.data.intensity import Normalization, NormalizationError
from cmgan.data.volumes import VolumeError
from cmgan.distenv import cuda_unavailable_reason, rank_device, require_cuda_if_assigned
from cmgan.export import load_export

log = logging.getLogger(__name__)

SUMMARY_FORMAT = "cmgan-colorize-summary"
PRECISIONS: dict[str, Any] = {"auto": "auto", "bf16": torch.bfloat16, "fp32": None}
SETTINGS_VERSION = 1
"""Bump when the outputs of the same model and input change (a rerun then redoes every volume)."""


@dataclass(frozen=True)
class ColorizeOptions:
    """One colorization run (the flags of `launch/colorize.py`)."""

    checkpoint: str
    """Generator export: an export file, an export folder or a training run folder."""
    inputs: tuple[str, ...]
    """NIfTI files, DICOM series folders, Zarr stores of `python -m shards`, folders of these, or globs."""
    out: str
    """Output folder; outputs mirror each input's relative path (its key) below it."""
    formats: tuple[str, ...] = ("nifti", "omezarr")
    """Any of nifti (RGB24 NIfTI on the input's grid), omezarr (OME-NGFF 0.5 pyramid), png (slice montage)."""
    shard: str | None = None
    """"i/n": colorize only shard i of n of the sorted inputs; None: from SLURM array / rank variables."""
    batch: int = 16
    """Slices per generator call."""
    axis: int | None = None
    """Slicing axis of the canonical volume (0 sagittal, 1 coronal, 2 axial); None: the export's (else 2)."""
    smooth_chroma: float = 0.0
    """Neighbour-slice context: Gaussian sigma (in slices) of chroma averaging along the axis; 0 = off."""
    keep_luminance: bool = False
    """Output luma = the normalized input's, chroma as predicted (`cmgan.colorize.luminance`)."""
    precision: str = "auto"
    """auto (bf16 where the hardware runs it fast), bf16, or fp32."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK if CUDA is available, else cpu), cpu, cuda, cuda:N."""
    threads: int | None = None
    """CPU threads of the generator (torch intra-op); None: torch's default (the cores it sees). On a shared or
    busy CPU fewer threads can be much faster: OpenMP stalls when one of its threads waits for a core."""
    max_voxels: int = 1 << 27
    """Refuse volumes with more voxels than this (512^3 = 134M), before reading their pixels."""
    montage_slices: int = 8
    """Slices shown in the PNG montage."""
    summary_every_s: float = 10.0
    """Rewrite the summary at most this often while running (and always at the end)."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Identifies one (possibly sharded) run; the shard summaries of a submission share it."""

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"--format {','.join(self.formats)!r} is not valid; choose from {list(FORMATS)}")
        if self.batch < 1:
            raise ValueError(f"--batch {self.batch} must be >= 1")
        if self.axis not in (None, 0, 1, 2):
            raise ValueError(f"--axis {self.axis} must be 0, 1 or 2")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r} is not valid; choose one of {list(PRECISIONS)}")
        if self.smooth_chroma < 0:
            raise ValueError(f"--smooth-chroma {self.smooth_chroma} must be >= 0 (0 turns it off)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads} must be >= 1")
        if self.max_voxels < 1 or self.montage_slices < 1:
            raise ValueError("--max-voxels and --montage-slices must be >= 1")
        if not self.inputs:
            raise ValueError("give at least one INPUT (file, folder, Zarr store or glob)")
        if self.shard is not None:
            parse_shard(self.shard)


class Reporter(Protocol):
    """Progress callbacks, all called from the runner's main thread."""

    def start(self, volumes: int) -> None: ...
    def volume(self, key: str, slices: int) -> None: ...
    def slices(self, n: int) -> None: ...
    def finished(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    def start(self, volumes: int) -> None: pass
    def volume(self, key: str, slices: int) -> None: pass
    def slices(self, n: int) -> None: pass
    def finished(self, record: dict[str, Any]) -> None: pass
    def close(self) -> None: pass


def resolve_device(name: str) -> torch.device:
    """"auto" -> this rank's GPU when CUDA is available (`cmgan.distenv.rank_device`: one GPU per local rank, or
    the task's only GPU), else cpu; a job given GPUs that torch cannot use stops with the reason."""
    if name == "auto":
        return rank_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        require_cuda_if_assigned()
        raise ValueError(f"--device {name}: CUDA is unavailable ({cuda_unavailable_reason()})")
    return device


def summary_path(out: Path, shard: Shard) -> Path:
    if shard.count == 1:
        return Path(out) / "summary.json"
    return Path(out) / f"summary.shard-{shard.index:04d}-of-{shard.count:04d}.json"


def exit_code(summary: dict[str, Any]) -> int:
    """0 when every input is done or skipped, 1 when any failed."""
    return 1 if summary["counts"]["failed"] else 0


@dataclass
class _Loaded:
    record: dict[str, Any]
    prep: PreparedVolume | None = None
    sha256: str = ""


class _Run:
    """State of one run_colorize call (kept out of module globals so runs never share anything)."""

    def __init__(self, opts: ColorizeOptions, reporter: Reporter) -> None:
        self.opts = opts
        self.reporter = reporter
        self.out = Path(opts.out)
        self.shard = parse_shard(opts.shard) if opts.shard else shard_from_env()
        if opts.threads is not None:
            torch.set_num_threads(opts.threads)
        self.export = load_export(opts.checkpoint, resolve_device(opts.device), autocast=PRECISIONS[opts.precision])
        self.norm = Normalization.from_dict(self.export.normalization)
        self.axis = opts.axis if opts.axis is not None else int(self.export.meta.get("axis", 2))
        self.size = int(self.export.model_cfg.image_size)
        self.formats = tuple(dict.fromkeys(opts.formats))
        self.settings = {
            "version": SETTINGS_VERSION,
            "axis": self.axis,
            "size": self.size,
            "normalization": self.norm.to_dict(),
            "precision": str(self.export.autocast).replace("torch.", "") if self.export.autocast else "float32",
            "smooth_chroma": float(opts.smooth_chroma),
            "montage_slices": opts.montage_slices,
        }
        if opts.keep_luminance:  # only when on: markers written before the option existed stay valid
            self.settings["keep_luminance"] = True
        self.records: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.t0 = time.perf_counter()
        self.last_summary = 0.0
        self.summary_file = summary_path(self.out, self.shard)

    # ------------------------------------------------------------------ stages

    def load(self, inp: Input) -> _Loaded:
        """Loader thread: checksum, marker check, then read + normalize + slice unless already done."""
        record = _record(inp)
        t = time.perf_counter()
        try:
            sha = input_sha256(inp)
            marker = read_marker(marker_path(self.out, inp.key))
            reason = why_not_done(marker, input_sha256=sha, model_id=self.export.model_id, settings=self.settings,
                                  formats=self.formats, out=self.out)
            if reason is None:
                record.update(status="skipped", slices=marker.get("slices", 0), consistency=marker.get("consistency"),
                              outputs={f: str(self.out / marker["outputs"][f]["path"]) for f in self.formats})
                return _Loaded(record)
            record["redo_reason"] = reason
            n = peek_voxels(inp)
            if n is not None and n > self.opts.max_voxels:
                raise VolumeError(inp.path, f"enormous volume: {n} voxels > --max-voxels {self.opts.max_voxels}")
            vol, geometry = read_source(inp)
            if vol.data.size > self.opts.max_voxels:
                raise VolumeError(inp.path, f"enormous volume: {vol.data.size} voxels > --max-voxels "
                                            f"{self.opts.max_voxels}")
            prep = prepare_volume(vol, geometry, self.norm, self.axis, self.size)
            del vol
            if prep.note:
                record["note"] = prep.note
            record["seconds"]["read"] = round(time.perf_counter() - t, 4)
            return _Loaded(record, prep, sha)
        except (VolumeError, NormalizationError) as e:
            msg = str(e) if str(inp.path) in str(e) else f"{inp.path}: {e}"
            return _Loaded(_failed(record, msg))
        except MemoryError:
            return _Loaded(_failed(record, f"{inp.path}: out of memory while reading (lower --max-voxels?)"))
        except Exception as e:  # noqa: BLE001 - a broken file can make any reader raise anything
            log.debug("unexpected error reading %s", inp.path, exc_info=True)
            return _Loaded(_failed(record, f"{inp.path}: unreadable ({type(e).__name__}: {e})"))

    def colorize(self, loaded: _Loaded) -> np.ndarray | None:
        """Main thread: the generator over the slices; None (record failed) on error."""
        prep, record = loaded.prep, loaded.record
        assert prep is not None
        self.reporter.volume(record["key"], len(prep.slices))
        t = time.perf_counter()
        try:
            rgb = colorize_prepared(self.export, prep, self.opts.batch, self.reporter.slices,
                                    keep_input_luminance=self.opts.keep_luminance)
        except Exception as e:  # noqa: BLE001 - e.g. CUDA out of memory on one huge volume: the rest goes on
            log.debug("colorizing %s failed", record["input"], exc_info=True)
            _failed(record, f"{record['input']}: colorizing failed ({type(e).__name__}: {e})")
            return None
        dt = time.perf_counter() - t
        record["slices"] = int(len(prep.slices))
        record["seconds"]["colorize"] = round(dt, 4)
        record["slices_per_s"] = round(len(prep.slices) / max(dt, 1e-9), 2)
        return rgb

    def write(self, inp: Input, loaded: _Loaded, rgb: np.ndarray) -> dict[str, Any]:
        """Writer thread: consistency, optional chroma smoothing, outputs (each atomic), then the marker."""
        prep, record = loaded.prep, loaded.record
        assert prep is not None
        t = time.perf_counter()
        mpath = marker_path(self.out, inp.key)
        try:
            mpath.unlink(missing_ok=True)  # from here on the old outputs no longer count as done
            remove_stale(mpath)
            if self.opts.smooth_chroma > 0:
                record["consistency_raw"] = slice_consistency(rgb, prep.mask, self.axis)
                rgb = smooth_chroma(rgb, prep.mask, self.axis, self.opts.smooth_chroma)
            record["consistency"] = slice_consistency(rgb, prep.mask, self.axis)
            outputs = {}
            for fmt in self.formats:
                final = self.out / f"{inp.key}{SUFFIX[fmt]}"
                remove_stale(final)
                if fmt == "nifti":
                    write_rgb_nifti(final, to_native(rgb, prep.native), prep.native)
                elif fmt == "omezarr":
                    write_ome_zarr(final, rgb, prep.affine, inp.key,
                                   extra={"model_id": self.export.model_id, "source_sha256": loaded.sha256})
                else:
                    write_montage(final, prep.image, rgb, prep.mask, self.axis, self.opts.montage_slices)
                outputs[fmt] = {"path": final.relative_to(self.out).as_posix(), "bytes": output_bytes(final)}
            record["seconds"]["write"] = round(time.perf_counter() - t, 4)
            marker = {
                "format": MARKER_FORMAT, "version": MARKER_VERSION, "input": record["input"], "key": inp.key,
                "input_sha256": loaded.sha256, "model_id": self.export.model_id, "settings": self.settings,
                "outputs": outputs, "slices": record["slices"], "seconds": record["seconds"],
                "consistency": record["consistency"],
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            files.write_json(mpath, marker)
            record.update(status="done", outputs={f: str(self.out / o["path"]) for f, o in outputs.items()})
        except Exception as e:  # noqa: BLE001 - a full disk or a bad path fails this volume, not the run
            log.debug("writing %s failed", inp.key, exc_info=True)
            _failed(record, f"{record['input']}: writing outputs failed ({type(e).__name__}: {e})")
        return record

    # ------------------------------------------------------------------ bookkeeping

    def finish(self, record: dict[str, Any]) -> None:
        self.records[record["key"] or record["input"]] = record
        if record["status"] == "failed":
            log.error("%s", record["error"])
        else:
            log.info("%s: %s", record["key"], record["status"])
        self.reporter.finished(record)
        if time.perf_counter() - self.last_summary >= self.opts.summary_every_s:
            self.write_summary(final=False)

    def summary(self, final: bool) -> dict[str, Any]:
        records = [self.records[k] for k in self.order if k in self.records]
        counts = {"inputs": len(self.order)}
        for status in ("done", "skipped", "failed"):
            counts[status] = sum(r["status"] == status for r in records)
        wall = time.perf_counter() - self.t0
        colorized = sum(r["slices"] for r in records if r["status"] == "done")
        return {
            "format": SUMMARY_FORMAT,
            "version": 1,
            "run_id": self.opts.run_id,
            "complete": final,
            "shard": str(self.shard),
            "export": str(self.export.path),
            "model_id": self.export.model_id,
            "device": str(self.export.device),
            "threads": torch.get_num_threads(),
            "settings": self.settings,
            "formats": list(self.formats),
            "started": self.started,
            "seconds": round(wall, 3),
            "counts": counts,
            "slices_colorized": colorized,
            "slices_per_s": round(colorized / wall, 2) if colorized else None,
            "inputs": records,
        }

    def write_summary(self, final: bool) -> dict[str, Any]:
        summary = self.summary(final)
        files.write_json(self.summary_file, summary)
        self.last_summary = time.perf_counter()
        return summary

    # ------------------------------------------------------------------ driver

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale(self.summary_file)
        found, failures = discover(list(self.opts.inputs), exclude=[self.out])
        mine = partition(found, self.shard)
        log.info("%d volume(s) found, %d in shard %s; model %s on %s (%s)", len(found), len(mine), self.shard,
                 self.export.model_id[:12], self.export.device, self.settings["precision"])
        if self.shard.index == 0:  # arguments that yield nothing are reported once, by shard 0
            for f in failures:
                rec = _failed({**_record(None), "input": f.path}, f"{f.path}: {f.problem}")
                self.order.append(rec["input"])
                self.finish(rec)
        self.order.extend(inp.key for inp in mine)
        self.reporter.start(len(mine))
        with ThreadPoolExecutor(1, thread_name_prefix="colorize-load") as loader, \
                ThreadPoolExecutor(1, thread_name_prefix="colorize-write") as writer:
            next_load: Future | None = loader.submit(self.load, mine[0]) if mine else None
            pending: Future | None = None
            for i, inp in enumerate(mine):
                loaded: _Loaded = next_load.result()
                next_load = loader.submit(self.load, mine[i + 1]) if i + 1 < len(mine) else None
                if loaded.prep is None:
                    self.finish(loaded.record)
                    continue
                rgb = self.colorize(loaded)
                if rgb is None:
                    loaded.prep = None
                    self.finish(loaded.record)
                    continue
                if pending is not None:
                    self.finish(pending.result())
                pending = writer.submit(self.write, inp, loaded, rgb)
                del rgb, loaded
            if pending is not None:
                self.finish(pending.result())
        self.reporter.close()
        return self.write_summary(final=True)


def _record(inp: Input | None) -> dict[str, Any]:
    return {"input": str(inp.path) if inp else None, "key": inp.key if inp else None,
            "kind": inp.kind if inp else None, "status": None, "outputs": {}, "slices": 0, "slices_per_s": None,
            "seconds": {}, "consistency": None, "error": None}


def _failed(record: dict[str, Any], message: str) -> dict[str, Any]:
    record.update(status="failed", error=message, outputs={})
    return record


def run_colorize(opts: ColorizeOptions, reporter: Reporter | None = None) -> dict[str, Any]:
    """Colorize this process's shard of `opts.inputs` into `opts.out`; returns the summary (also written).

    Raises ExportError when the export cannot be loaded (nothing can run); bad inputs never raise.
    """
    return _Run(opts, reporter or NullReporter()).run()

"""Find the volumes of an archive and split them deterministically across array tasks and ranks.

An INPUT is a NIfTI file, a DICOM series folder, a Zarr store written by `python -m shards` (each subject group
is one volume) or a single Zarr subject group/array, a folder searched recursively for all of these, or a glob.
Every volume gets a `key`: its path relative to the INPUT it was found under, without the suffix
(`archive/sub-01/anat/sub-01_T1w.nii.gz` -> `sub-01/anat/sub-01_T1w`); outputs mirror the keys under `--out`.

    inputs, failures = discover(["archive/", "extra/*.nii.gz"], exclude=[out])
    mine = partition(inputs, Shard(0, 4))      # inputs 0, 4, 8, ... of the sorted list
    shard = shard_from_env()                   # SLURM array task x rank, or torchrun's RANK/WORLD_SIZE

Every process discovers the same sorted list (same file system, same arguments), so the partition needs no
coordination: input i belongs to shard i mod n.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cmgan.data.volumes import NIFTI_SUFFIXES, is_dicom_file
from cmgan.distenv import detect_env
from cmgan.files import sha256_file, sha256_files

GLOB_CHARS = re.compile(r"[*?\[]")
KINDS = ("nifti", "dicom", "zarr")


@dataclass(frozen=True)
class Input:
    """One volume to colorize.

    path: what `cmgan.data.volumes.read_volume` reads (a NIfTI file, a DICOM series folder, a Zarr group/array)
    kind: "nifti" | "dicom" | "zarr"
    key:  relative output name without suffix, unique within one discovery ("sub-01/anat/sub-01_T1w")
    """

    path: Path
    kind: str
    key: str


@dataclass(frozen=True)
class InputFailure:
    """An INPUT argument that yields no volume (missing path, empty folder, unknown file type)."""

    path: str
    problem: str


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count); input i of the sorted list belongs to shard i % count."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count} is not valid; use i/n with 0 <= i < n")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`"i/n"` -> Shard(i, n); the error names the flag."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard {text!r} is not valid; write i/n, e.g. 0/4")
    try:
        return Shard(int(m.group(1)), int(m.group(2)))
    except ValueError as e:
        raise ValueError(f"--shard {text!r}: {e}") from None


def shard_from_env(env: dict[str, str] | None = None) -> Shard:
    """The shard of this process from the environment (Shard(0, 1) when nothing is set).

    SLURM array tasks (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) are split further by
    the ranks inside each task (`cmgan.distenv.detect_env`: torchrun's RANK/WORLD_SIZE, else an srun step's
    SLURM_PROCID/SLURM_STEP_NUM_TASKS; a batch script's own shell is one process):
    task t, rank r of w -> shard t*w + r of count*w.
    """
    env = dict(os.environ if env is None else env)
    task, tasks = 0, 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        tasks = int(env["SLURM_ARRAY_TASK_COUNT"])
    where = detect_env(env)
    return Shard(task * where.world_size + where.rank, tasks * where.world_size)


def partition(inputs: list[Input], shard: Shard) -> list[Input]:
    """The inputs of `shard`: every `count`-th of the key-sorted list, starting at `index` (balanced, disjoint)."""
    ordered = sorted(inputs, key=lambda i: i.key)
    return ordered[shard.index :: shard.count]


# ---------------------------------------------------------------------------------------------- discovery


def discover(
    paths: list[str | Path], exclude: list[str | Path] = ()
) -> tuple[list[Input], list[InputFailure]]:
    """Volumes under `paths` (files, folders, Zarr stores, globs), sorted by key, and arguments that hold none.

    Folders under `exclude` (e.g. the output folder) are not searched. The same volume named twice is kept once.
    Keys that would collide (two INPUTs with the same relative layout) get a short hash of the path appended.
    """
    skip = [Path(p).resolve() for p in exclude]
    found: list[tuple[Path, str, str]] = []  # (path, kind, key)
    failures: list[InputFailure] = []
    for raw in paths:
        text = str(raw)
        root = Path(text)
        if GLOB_CHARS.search(text) and not root.exists():
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            base = _glob_base(text)
            got = [v for m in matches for v in _under(m, base, skip)]
            if not got:  # a glob may sweep up sidecars (.json, .txt): only volumes count, silently
                failures.append(InputFailure(text, "matches no file" if not matches else
                                             "matches no NIfTI, DICOM or Zarr volume"))
            found.extend(got)
            continue
        if not root.exists():
            failures.append(InputFailure(text, "does not exist"))
            continue
        got = _under(root, root if root.is_dir() else root.parent, skip)
        if not got:
            if root.is_file():
                failures.append(InputFailure(text, "not a recognized input (expected .nii/.nii.gz, a DICOM series "
                                                   "folder or a Zarr store/array)"))
            else:
                failures.append(InputFailure(text, "holds no NIfTI, DICOM or Zarr volume"))
        found.extend(got)

    unique: dict[str, tuple[Path, str, str]] = {}
    for path, kind, key in found:
        unique.setdefault(str(path.resolve()), (path, kind, key))
    by_key: dict[str, list[tuple[Path, str, str]]] = {}
    for item in unique.values():
        by_key.setdefault(item[2], []).append(item)
    inputs: list[Input] = []
    for key, items in by_key.items():
        for path, kind, _ in items:
            if len(items) > 1:
                digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
                key_ = f"{key}-{digest}"
            else:
                key_ = key
            inputs.append(Input(path, kind, key_))
    return sorted(inputs, key=lambda i: i.key), failures


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (`a/b/sub-*/x.nii` -> `a/b`): keys are relative to it."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not GLOB_CHARS.search(part), parts))
    return Path(*fixed) if fixed else Path(".")


def _under(path: Path, base: Path, skip: list[Path]) -> list[tuple[Path, str, str]]:
    """Volumes at or below `path`, keyed relative to `base` (the INPUT folder, or a file's parent)."""
    if _excluded(path, skip):
        return []
    if path.is_file():
        if path.name.endswith(NIFTI_SUFFIXES):
            return [(path, "nifti", _key(path, base))]
        return []
    if _is_zarr(path):
        return _zarr_volumes(path, base)
    out: list[tuple[Path, str, str]] = []
    for folder, dirs, files in os.walk(path):
        here = Path(folder)
        if _excluded(here, skip):
            dirs[:] = []
            continue
        dirs.sort()
        keep = []
        for d in dirs:
            sub = here / d
            if d.startswith("."):
                continue
            if _is_zarr(sub):
                if not _excluded(sub, skip):
                    out.extend(_zarr_volumes(sub, base))
            else:
                keep.append(d)
        dirs[:] = keep
        visible = sorted(f for f in files if not f.startswith("."))
        dicoms = []
        for name in visible:
            p = here / name
            if name.endswith(NIFTI_SUFFIXES):
                out.append((p, "nifti", _key(p, base)))
            elif is_dicom_file(p):
                dicoms.append(p)
        if dicoms:
            out.append((here, "dicom", _key(here, base)))
    return out


def _excluded(path: Path, skip: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == s or s in resolved.parents for s in skip)


def _key(path: Path, base: Path) -> str:
    """Relative path of a volume without its suffix, '/'-separated; the folder's own name when path == base."""
    rel = path.resolve().relative_to(base.resolve()) if path.resolve() != base.resolve() else Path(path.name)
    key = rel.as_posix()
    for suffix in NIFTI_SUFFIXES + (".zarr",):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key




def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file()


def _zarr_volumes(path: Path, base: Path) -> list[tuple[Path, str, str]]:
    """A Zarr array or subject group (one volume), or a store whose child groups hold an `image` array."""
    node = _zarr_node(path)
    key = _key(path, base)
    if node == "array" or (node == "group" and _zarr_node(path / "image") == "array"):
        return [(path, "zarr", key)]
    if node != "group":
        return [(path, "zarr", key)]  # unreadable metadata: read_volume reports the problem
    out = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _zarr_node(child) == "array" or _zarr_node(child / "image") == "array":
            out.append((child, "zarr", f"{key}/{child.name}"))
    return out or [(path, "zarr", key)]


def _zarr_node(path: Path) -> str | None:
    try:
        return json.loads((path / "zarr.json").read_text()).get("node_type")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------- identity


def input_sha256(inp: Input) -> str:
    """Checksum of an input's bytes: a NIfTI file's SHA-256; for a DICOM folder or Zarr group, a SHA-256 over its
    files in sorted relative-path order (name and content digest of each), so any added, removed, renamed or
    changed file changes it."""
    if inp.path.is_file():
        return sha256_file(inp.path)
    if inp.kind == "dicom":
        files = sorted(p for p in inp.path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = sorted(p for p in inp.path.rglob("*") if p.is_file())
    return sha256_files(files, names_under=inp.path)


def peek_voxels(inp: Input) -> int | None:
    """Voxels of the first three axes, from the headers only (no pixel data read), or None when the headers cannot
    tell; lets an enormous volume be refused before it is loaded. Bad headers are left to `read_volume`."""
    try:
        if inp.kind == "nifti":
            import nibabel as nib

            shape = nib.load(str(inp.path)).shape
        elif inp.kind == "dicom":
            import pydicom

            files = [p for p in inp.path.iterdir() if p.is_file() and not p.name.startswith(".")]
            ds = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)
            shape = (int(ds.Rows), int(ds.Columns), len(files) * int(ds.get("NumberOfFrames", 1) or 1))
        else:
            path = inp.path / "image" if _zarr_node(inp.path) == "group" else inp.path
            shape = tuple(json.loads((path / "zarr.json").read_text())["shape"])
    except Exception:  # noqa: BLE001 - unreadable headers: read_volume gives the precise error
        return None
    n = 1
    for s in shape[:3]:  # a 4D file is refused by the reader as 4D, which says more than "enormous"
        n *= int(s)
    return n

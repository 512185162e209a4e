"""Files written atomically, file digests, TOML reading: one convention for the whole package.

Atomic write: the data go to a temporary sibling `dir/.<name>.<pid>.tmp[<suffix>]` (same directory, so the same
file system and an atomic rename; hidden; unique per process), which is flushed and fsynced, renamed over the
final name with `os.replace`, and then the directory is fsynced so the rename itself survives a power loss. A
process killed at any instant leaves either the old file or the new one, never half of one; a killed process may
leave its temporary behind (`stale_temps` finds them).

    with atomic_open(path, "wb") as f:       # any writer that takes a file object (torch.save, ...)
        torch.save(state, f)
    with atomic_path(path, suffix=".npz") as tmp:   # writers that want a name (np.savez, nibabel, PIL)
        np.savez(tmp, ...)
    write_json(path, obj, indent=2)          # sorted keys, trailing newline
    sha256_file(path)                        # hex digest, streamed
    sha256_files(paths, names_under=folder)  # of a set of files (a series, a Zarr group)
    read_toml(path, what="config file", error=ConfigError)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def temp_path(path: str | Path, suffix: str = "") -> Path:
    """The temporary sibling of `path` for this process: `dir/.<name>.<pid>.tmp<suffix>`. `suffix` keeps a file
    extension for writers that infer the format from the name (".nii.gz", ".npz")."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def stale_temps(path: str | Path) -> list[Path]:
    """Temporaries of `path` left by killed processes (any pid)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp*"))


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so renames and new entries in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*"), reverse=True):  # files before the directories that list them
            _fsync_tree(p) if p.is_file() else fsync_dir(p)
        fsync_dir(path)
    else:
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def commit(tmp: str | Path, path: str | Path) -> Path:
    """Make a finished temporary (file or directory tree) durable and rename it over `path`: fsync its data, then
    `os.replace`, then fsync the directory. For writers that stream into `temp_path(path)` across several calls
    (a tar shard, a Zarr store); a directory at `path` must be moved away first (os.replace refuses it)."""
    tmp, path = Path(tmp), Path(path)
    _fsync_tree(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary name to write `path` under (a file, or a directory the caller creates); on a normal exit
    fsync it, rename it over `path` and fsync the directory; on an exception remove it and leave `path` as it was.
    An existing directory at `path` cannot be replaced this way (os.replace refuses a non-empty one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)  # after the rename: the new directory entry is what must survive


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", suffix: str = "", **kwargs: Any) -> Iterator[IO[Any]]:
    """`open(path, mode)` written atomically (see the module docstring); mode "w..." (text or binary)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} must start with 'w'")
    with atomic_path(path, suffix) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1, default: Any = None,
               allow_nan: bool = True) -> Path:
    """JSON with sorted keys and a trailing newline, written atomically. `default` converts what JSON cannot hold
    (e.g. `str`); `allow_nan=False` makes NaN/inf an error instead of writing non-standard JSON."""
    text = json.dumps(obj, indent=indent, sort_keys=True, default=default, allow_nan=allow_nan) + "\n"
    return write_text(path, text)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed (hashlib.file_digest)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_files(paths: Iterable[str | Path], names_under: str | Path | None = None) -> str:
    """Hex SHA-256 of a set of files (a DICOM series, a Zarr group, a folder of images): over each file's digest
    in the given order, and, with `names_under`, each file's path relative to it before its digest (then renaming
    a file changes the result too)."""
    h = hashlib.sha256()
    for path in paths:
        if names_under is not None:
            h.update(Path(path).relative_to(names_under).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(path)))
    return h.hexdigest()


def read_toml(path: str | Path, what: str = "file", error: type[Exception] = ValueError) -> dict[str, Any]:
    """The TOML file at `path` as a dict. A missing file or invalid TOML raises `error` with one line naming
    `what` and the path ("config file configs/x.toml is not valid TOML: ...")."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {path} is not valid TOML: {e}") from None

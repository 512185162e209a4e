"""Full-state training checkpoints: atomic (complete or absent), collective, keep the last K, weights_only loading.

Layout of a checkpoint root (`<run_dir>/checkpoints`):

    step_00000120/          one complete checkpoint; the rename into this name is the commit point
        state.pt            replicated state, written by rank 0 (nets, optimizers, schedulers, scalers, EMA, step,
                            resolved config)
        rank_00000.pt ...   per-rank state, one file per rank (RNG of every stream, history pools, data stream
                            position, digest of that rank's parameters)
        ds_*/               DeepSpeed engine folders, written collectively by the engines (when used)
        meta.json           readable summary: step, time, world size, losses, digests, files
        COMPLETE            written last, before the rename (a second, cheap completeness check)
    .tmp-step_00000120/     a checkpoint being written: never loaded, removed on the next start
    .trash-step_00000040/   a checkpoint being deleted (renamed first so a half-deleted one never looks complete)

Every file is written to a temporary name, flushed and fsynced, then renamed; the directory is fsynced after
the renames. A process killed at any instant leaves either the previous complete checkpoint or the new one.
The root must be on a file system shared by all nodes (the usual cluster setup): ranks write into the same
temporary folder.

Loading uses `torch.load(weights_only=True)`: checkpoints hold tensors, lists, dicts, numbers and strings only.

Test hook: `CMGAN_CKPT_PAUSE_S=<seconds>` makes `save_file` sleep after each file it writes, so a test can
SIGKILL a real save in the middle (tests/train/test_checkpoint.py). It changes nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmgan import files

COMPLETE = "COMPLETE"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
_STEP_RE = re.compile(r"^step_(\d{8,})$")
_PAUSE_ENV = "CMGAN_CKPT_PAUSE_S"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read; the message names the file and the problem."""


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def temp_dir(root: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` is assembled (every rank computes the same path without talking)."""
    return Path(root) / f".tmp-{step_name(step)}"


def _pause() -> None:
    seconds = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def save_file(obj: Any, path: str | Path) -> None:
    """`torch.save` to a temporary name, fsync, rename: the file is either absent or complete."""
    with files.atomic_open(path, "wb") as f:
        torch.save(obj, f)
    _pause()


def write_json(obj: Any, path: str | Path) -> None:
    """JSON (indented, sorted keys) written atomically with fsync (cmgan.files), then the test hook's pause."""
    files.write_json(path, obj, indent=2, default=str)
    _pause()


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`; a missing or corrupt file raises CheckpointError naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - pickle/zip errors have many types; the message says which file
        raise CheckpointError(f"checkpoint file {path} cannot be loaded: {type(e).__name__}: {e}") from e


def read_meta(path: str | Path) -> dict:
    """The `meta.json` of a checkpoint directory."""
    return json.loads((Path(path) / META_FILE).read_text())


def list_complete(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and child.is_dir() and (child / COMPLETE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    found = list_complete(root)
    return found[-1][1] if found else None


def clean_temp(root: str | Path) -> list[Path]:
    """Remove leftovers of interrupted writes and deletions (rank 0, before training starts)."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def _discard(path: Path) -> None:
    """Delete a checkpoint directory so that it stops looking complete first (rename), then remove it."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    files.fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; returns the deleted paths."""
    found = list_complete(root)
    old = [p for _, p in found[: max(0, len(found) - keep_last)]]
    for path in old:
        _discard(path)
    return old


def begin(root: str | Path, step: int) -> Path:
    """Rank 0: create an empty temporary folder for the checkpoint of `step` (removing a stale one)."""
    tmp = temp_dir(root, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(root: str | Path, step: int, meta: dict) -> Path:
    """Rank 0, after every rank finished writing: meta.json, COMPLETE, fsync, rename into place."""
    root = Path(root)
    tmp = temp_dir(root, step)
    write_json(meta, tmp / META_FILE)
    files.write_text(tmp / COMPLETE, f"{step}\n")
    files.fsync_dir(tmp)
    final = root / step_name(step)
    if final.exists():  # the same step saved again (e.g. a re-run after the end): the newer write wins
        _discard(final)
    os.replace(tmp, final)
    files.fsync_dir(root)
    return final


def save(
    root: str | Path,
    step: int,
    *,
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    per_rank: dict,
    replicated: dict | None = None,
    collective_writers: tuple[Callable[[Path], None], ...] = (),
    meta: dict | None = None,
    keep_last: int = 3,
) -> Path:
    """Write one checkpoint collectively; every rank must call it with the same `step`.

    per_rank:           this rank's state -> `rank_<rank>.pt`.
    replicated:         state identical on all ranks; written by rank 0 only -> `state.pt`.
    collective_writers: called on every rank with the temporary folder (e.g. DeepSpeed engines' own save).
    meta:               readable summary; rank 0 adds step, time, world size and the file list.
    Returns the committed checkpoint directory.
    """
    root = Path(root)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        begin(root, step)
    barrier()
    tmp = temp_dir(root, step)
    for writer in collective_writers:
        writer(tmp)
    save_file(per_rank, tmp / rank_file(rank))
    if rank == 0 and replicated is not None:
        save_file(replicated, tmp / STATE_FILE)
    barrier()
    final = root / step_name(step)
    if rank == 0:
        info = dict(meta or {})
        info.update(
            step=step,
            world_size=world_size,
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            files=sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()),
        )
        commit(root, step, info)
        prune(root, keep_last)
    barrier()
    return final


def load(path: str | Path, rank: int, map_location: str | torch.device = "cpu") -> tuple[dict, dict | None]:
    """(replicated state, this rank's state or None when the checkpoint was written by fewer ranks)."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"checkpoint {path} is not complete (no {COMPLETE} marker); it cannot be resumed")
    replicated = load_file(path / STATE_FILE, map_location) if (path / STATE_FILE).exists() else {}
    per_rank_path = path / rank_file(rank)
    per_rank = load_file(per_rank_path, map_location) if per_rank_path.exists() else None
    return replicated, per_rank

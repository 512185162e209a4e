"""Writers: size-capped WebDataset tar shards and the Zarr v3 store of volumes, both written atomically.

Tar shards are deterministic (fixed mtime/owner, members in a fixed order), so the same inputs and salt give
byte-identical shards and checksums. Each shard is written under a temporary name (`cmgan.files.temp_path`),
fsynced and renamed when complete.
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmgan import files
from cmgan.files import sha256_file

log = logging.getLogger(__name__)

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile pads archives to a multiple of 20 blocks


def _padded(n: int) -> int:
    return (n + _BLOCK - 1) // _BLOCK * _BLOCK


@dataclass(frozen=True)
class ShardInfo:
    name: str
    split: str
    samples: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256}


class ShardWriter:
    """Write samples ({member name: bytes}) into `<split>-NNNNNN.tar`, starting a new shard at either cap.

    max_size: bytes per shard (a single sample larger than that still gets a shard of its own);
    max_count: samples per shard.
    """

    def __init__(self, out_dir: str | Path, split: str, max_size: int, max_count: int) -> None:
        self.out_dir = Path(out_dir)
        self.split = split
        self.max_size = int(max_size)
        self.max_count = int(max_count)
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._bytes = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        size = sum(_BLOCK + _padded(len(v)) for v in members.values())
        if self._tar is not None and (
            self._count >= self.max_count or self._bytes + size + 2 * _BLOCK > self.max_size
        ):
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; returns every shard written (in order)."""
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()

    def _name(self) -> str:
        return f"{self.split}-{len(self.shards):06d}.tar"

    def _open(self) -> None:
        self._tmp = files.temp_path(self.out_dir / self._name())
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0
        self._bytes = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        name = self._name()
        final = files.commit(self._tmp, self.out_dir / name)
        self.shards.append(ShardInfo(name, self.split, self._count, final.stat().st_size, sha256_file(final)))
        log.info("wrote %s (%d samples)", final, self._count)
        self._tar = None
        self._tmp = None


class ZarrWriter:
    """One Zarr v3 store; one group per subject holding whole arrays (image, mask, label, truth).

    Written under a temporary name and renamed over `<name>` by `close()` after consolidating metadata once; the
    writing process owns whole arrays (never slices of a shared array: zarr-python#3682).
    """

    def __init__(self, out_dir: str | Path, name: str = "volumes.zarr") -> None:
        import zarr

        self.final = Path(out_dir) / name
        self.tmp = files.temp_path(self.final)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.root = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.arrays: set[str] = set()

    def write_subject(self, subject: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        group = self.root.create_group(subject)
        group.attrs.update(attrs)
        for name, array in arrays.items():
            chunks = tuple(min(64, n) for n in array.shape[:3]) + tuple(array.shape[3:])
            z = group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=chunks)
            z[...] = array
            z.attrs.update(attrs)
            self.arrays.add(name)

    def close(self) -> Path:
        import zarr

        with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": we read it ourselves
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.tmp))
        if self.final.exists():
            shutil.rmtree(self.final)
        return files.commit(self.tmp, self.final)

    def abort(self) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)

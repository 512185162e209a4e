"""Nothing in a shard is ever unpickled: not a `.pyd` member, not an object-dtype `.npy`."""

from __future__ import annotations

import io
import pathlib
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cmgan.config import AugmentConfig, DataConfig
from cmgan.data.codec import DecodeError, decode_npy, decode_sample
from cmgan.data.pipeline import UnpairedStream
from cmgan.data.splits import read_split
from shards.verify import verify


class _TouchOnUnpickle:
    """Unpickling this creates `path`: proof that something ran code from the data."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _payloads(marker: Path) -> tuple[bytes, bytes]:
    pyd = pickle.dumps(_TouchOnUnpickle(marker))
    buf = io.BytesIO()
    np.save(buf, np.array([_TouchOnUnpickle(marker)], dtype=object), allow_pickle=True)
    return pyd, buf.getvalue()


def _add_members(shard: Path, extra: dict[str, bytes], replace: dict[str, bytes]) -> str:
    """Rewrite `shard` with `extra` members added to its first sample and members in `replace` swapped."""
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    key = members[0][0].split(".")[0]
    out = []
    for name, data in members:
        member = name.split(".", 1)[1]
        out.append((name, replace.get(member, data) if name.startswith(key + ".") else data))
    out[1:1] = [(f"{key}.{m}", d) for m, d in extra.items()]
    with tarfile.open(shard, "w") as tar:
        for name, data in out:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return key


def test_pickle_payloads_are_live_but_never_unpickled_by_decoders_loaders_or_verify(
    tmp_path: Path, demo_shards: Path
) -> None:
    marker = tmp_path / "pwned"
    pyd, object_npy = _payloads(marker)
    pickle.loads(pyd)  # the payload works when something does unpickle it ...
    assert marker.exists()
    marker.unlink()

    with pytest.raises(DecodeError, match="not a plain .npy"):
        decode_npy(object_npy, "k", "mr.npy")
    assert "x.pyd" not in decode_sample({"__key__": "k", "x.pyd": pyd})
    with pytest.raises(DecodeError, match="unexpected member"):
        decode_sample({"__key__": "k", "x.pyd": pyd}, strict=True)

    root = tmp_path / "shards"
    shutil.copytree(demo_shards / "mr", root / "mr")
    shutil.copytree(demo_shards / "color", root / "color")
    manifest_shards = sorted((root / "mr").glob("train-*.tar"))
    bad_key = _add_members(manifest_shards[0], {"evil.pyd": pyd, "evil.pickle": pyd}, {"mr.npy": object_npy})
    _add_members(manifest_shards[1], {"x.pyd": pyd}, {})

    cfg = DataConfig(mr_shards=str(root / "mr"), color_shards=str(root / "color"), batch_size=2, num_workers=0,
                     shuffle_buffer=1, augment=AugmentConfig(hflip=0, rotate_deg=0, scale=0, translate=0,
                                                             intensity=0))
    stream = UnpairedStream(cfg, 32, seed=0)
    seen = set()
    for _, batch in zip(range(60), stream):  # > 2 passes over the 34 train samples
        seen.update(batch["mr_keys"])
    assert bad_key not in seen and len(seen) > 20
    assert stream.state()["skipped"] >= 1
    assert sum(1 for _ in read_split(root / "mr", "train")) >= 30
    problems = verify(root / "mr")
    assert any("evil.pyd" in p for p in problems) and any(bad_key in p and "mr.npy" in p for p in problems)
    assert not marker.exists()

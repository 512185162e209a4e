"""The streaming loaders: rank/worker splitting, reproducibility, resume, augmentation, corrupt samples, and the
ordered evaluation reader."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cmgan.config import AugmentConfig, DataConfig
from cmgan.data.pipeline import LabelledStream, UnpairedStream
from cmgan.data.splits import DataError, assign_shards, read_split, split_shards, split_size

NO_AUGMENT = AugmentConfig(hflip=0, vflip=0, rotate_deg=0, scale=0, translate=0, intensity=0)


def _cfg(root: Path, **kw) -> DataConfig:
    base = dict(mr_shards=str(root / "mr"), color_shards=str(root / "color"), batch_size=2, num_workers=0,
                shuffle_buffer=8)
    return DataConfig(**{**base, **kw})


def _keys(root: Path, domain: str, split: str) -> set[str]:
    return {s["__key__"] for s in read_split(root / domain, split, keys=())}


def test_two_nodes_with_two_workers_read_disjoint_shards_whose_union_is_the_split(demo_shards: Path) -> None:
    urls, manifest = split_shards(demo_shards / "mr", "train")
    slots = assign_shards(urls, 4, seed=0)
    assert sorted(u for s in slots for u in s) == sorted(urls)
    assert all(s for s in slots)
    total = manifest["counts"]["train"]
    seen = []
    for rank in range(2):
        stream = UnpairedStream(_cfg(demo_shards, batch_size=1, num_workers=2, augment=NO_AUGMENT), 32, rank=rank,
                                world_size=2, seed=0)
        keys = set()
        for _, batch in zip(range(total), stream):  # each worker: total/2 samples >= one pass over its shards
            keys.update(batch["mr_keys"])
        seen.append(keys)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == _keys(demo_shards, "mr", "train")


def test_sample_stream_is_reproducible_for_a_seed_and_differs_for_another(demo_shards: Path) -> None:
    def run(seed: int) -> list[dict]:
        return [b for _, b in zip(range(5), UnpairedStream(_cfg(demo_shards, num_workers=2), 32, seed=seed))]

    a, b, c = run(1), run(1), run(2)
    for x, y in zip(a, b):
        assert x["mr_keys"] == y["mr_keys"] and x["color_keys"] == y["color_keys"]
        assert torch.equal(x["mr"], y["mr"]) and torch.equal(x["color"], y["color"])
    assert [x["mr_keys"] for x in a] != [x["mr_keys"] for x in c]


def test_exact_resume_continues_exactly_where_the_stream_stopped(demo_shards: Path) -> None:
    cfg = _cfg(demo_shards, num_workers=2, resume="exact")
    full = [b for _, b in zip(range(9), UnpairedStream(cfg, 32, seed=5))]
    first = UnpairedStream(cfg, 32, seed=5)
    head = [b for _, b in zip(range(5), first)]
    state = json.loads(json.dumps(first.state()))  # what a checkpoint stores
    tail = [b for _, b in zip(range(4), UnpairedStream(cfg, 32, seed=5, start_state=state))]
    for x, y in zip(full, head + tail):
        assert x["mr_keys"] == y["mr_keys"] and x["color_keys"] == y["color_keys"]
        assert torch.equal(x["mr"], y["mr"]) and torch.equal(x["color"], y["color"])


def test_reseed_resume_is_reproducible_and_does_not_replay_the_stream(demo_shards: Path) -> None:
    cfg = _cfg(demo_shards, num_workers=0, batch_size=4)
    first = UnpairedStream(cfg, 32, seed=5)
    before = [b["mr_keys"] for _, b in zip(range(4), first)]
    state = first.state()
    after = [b["mr_keys"] for _, b in zip(range(4), UnpairedStream(cfg, 32, seed=5, start_state=state))]
    again = [b["mr_keys"] for _, b in zip(range(4), UnpairedStream(cfg, 32, seed=5, start_state=state))]
    assert after == again and after != before
    assert UnpairedStream(cfg, 32, seed=5, start_state=state).state()["restarts"] == 1


def test_batches_have_the_documented_shapes_ranges_and_background(demo_shards: Path) -> None:
    stream = UnpairedStream(_cfg(demo_shards, batch_size=3), 16, seed=0)  # shards are 32: resampled to 16
    batch = next(iter(stream))
    assert batch["mr"].shape == (3, 1, 16, 16) and batch["color"].shape == (3, 3, 16, 16)
    assert batch["mr_label"].shape == (3, 16, 16) and batch["mr_label"].dtype == torch.int64
    for name in ("mr", "color"):
        img, mask = batch[name], batch[f"{name}_mask"]
        assert img.dtype == torch.float32 and img.min() >= -1 and img.max() <= 1
        assert (img.masked_select(mask.expand_as(img) == 0) == -1).all()
    assert ((batch["mr_label"] > 0) <= (batch["mr_mask"][:, 0] > 0)).all()


def test_augmentation_moves_image_mask_and_label_together(demo_shards: Path) -> None:
    strong = AugmentConfig(hflip=0.5, vflip=0.5, rotate_deg=30, scale=0.2, translate=0.1, intensity=0)
    plain = next(iter(UnpairedStream(_cfg(demo_shards, batch_size=8, augment=NO_AUGMENT), 32, seed=3)))
    moved = next(iter(UnpairedStream(_cfg(demo_shards, batch_size=8, augment=strong), 32, seed=3)))
    assert plain["mr_keys"] == moved["mr_keys"] and not torch.equal(plain["mr"], moved["mr"])
    for batch in (plain, moved):
        tissue = batch["mr_label"] > 0
        # White matter (label 3) is the brightest tissue of the phantom T1: a misaligned label would not be.
        wm = batch["mr"][:, 0][batch["mr_label"] == 3].mean()
        other = batch["mr"][:, 0][tissue & (batch["mr_label"] != 3)].mean()
        assert wm > other + 0.3
        assert (tissue <= (batch["mr_mask"][:, 0] > 0)).all()


def test_corrupt_member_and_truncated_tar_are_skipped_counted_and_the_stream_goes_on(
    tmp_path: Path, demo_shards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "s"
    shutil.copytree(demo_shards, root, ignore=shutil.ignore_patterns("sources", "volumes.zarr"))
    shards = sorted((root / "mr").glob("train-*.tar"))
    with tarfile.open(shards[0]) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    bad_key = members[0][0].split(".")[0]
    with tarfile.open(shards[0], "w") as tar:
        for name, data in members:
            data = b"\x93NUMPY garbage" if name == f"{bad_key}.mr.npy" else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    stream = UnpairedStream(_cfg(root, batch_size=1, shuffle_buffer=1, augment=NO_AUGMENT), 32, seed=0)
    keys = [b["mr_keys"][0] for _, b in zip(range(80), stream)]
    assert bad_key not in keys and len(set(keys)) > 15
    assert stream.state()["skipped"] >= 2
    assert bad_key in caplog.text and "train-000" in caplog.text


def _cut_between_samples(shard: Path, keep: int) -> None:
    """Cut `shard` right before the header of its sample number `keep`: tarfile then ends without an error."""
    with tarfile.open(shard) as tar:
        keys = []
        for info in tar:
            key = info.name.split(".")[0]
            if key not in keys:
                keys.append(key)
            if len(keys) == keep + 1:
                cut = info.offset
                break
    shard.write_bytes(shard.read_bytes()[:cut])


def test_a_shard_cut_between_samples_is_named_truncated_by_both_readers(
    tmp_path: Path, demo_shards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "s"
    shutil.copytree(demo_shards, root, ignore=shutil.ignore_patterns("sources", "volumes.zarr"))
    test_shard = sorted((root / "mr").glob("test-*.tar"))[0]
    train_shard = sorted((root / "mr").glob("train-*.tar"))[0]
    for shard in (test_shard, train_shard):
        _cut_between_samples(shard, 2)
        with tarfile.open(shard) as tar:  # what made it silent: tarfile reads the rest as the end of the archive
            assert len({m.name.split(".")[0] for m in tar}) == 2
    # The evaluator's reader (strict) refuses the shorter test split; the lenient one logs it and goes on.
    with pytest.raises(DataError, match=rf"{test_shard}: truncated shard: it ends after 2 of its \d+ samples"):
        list(read_split(root / "mr", "test", strict=True))
    listed = {s["name"]: s["samples"] for s in json.loads((root / "mr" / "manifest.json").read_text())["shards"]}
    assert len(list(read_split(root / "mr", "test"))) == split_size(root / "mr", "test") - (listed[test_shard.name] - 2)
    assert f"{test_shard}: truncated shard" in caplog.text
    # Training goes on and says once which shard ended early, though its loader worker meets it every pass: the
    # worker hands the note to this process (a record logged in a forked worker would never reach caplog).
    caplog.clear()
    stream = UnpairedStream(_cfg(root, batch_size=4, shuffle_buffer=1, num_workers=1, augment=NO_AUGMENT), 32)
    try:
        for _, _ in zip(range(80), stream):  # 320 samples: two passes over the train split at least
            pass
        assert stream.state()["skipped"] >= 2  # met in two passes at least
    finally:
        stream.close()
    lines = [r.getMessage() for r in caplog.records if str(train_shard) in r.getMessage()]
    assert len(lines) == 1 and "truncated shard: it ends after 2 of its" in lines[0], caplog.text


def test_read_split_ranks_cover_every_sample_exactly_once_in_order(demo_shards: Path) -> None:
    all_keys = [s["__key__"] for s in read_split(demo_shards / "mr", "test", keys=())]
    parts = [[s["__key__"] for s in read_split(demo_shards / "mr", "test", rank=r, world_size=3, keys=())]
             for r in range(3)]
    assert parts[0] + parts[1] + parts[2] == all_keys and len(set(all_keys)) == len(all_keys)
    assert [len(p) for p in parts] == [split_size(demo_shards / "mr", "test", r, 3) for r in range(3)]
    sample = next(read_split(demo_shards / "mr", "test", keys=("mr.npy", "truth.npy", "meta.json")))
    assert sample["mr.npy"].dtype == np.float16 and sample["truth.npy"].shape == (32, 32, 3)
    assert set(sample) == {"__key__", "mr.npy", "truth.npy", "meta.json"}


def test_labelled_stream_gives_images_with_their_labels(demo_shards: Path) -> None:
    batch = next(iter(LabelledStream(_cfg(demo_shards), 32, batch_size=4, seed=0)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 32, 32)
    assert int(batch["label"].max()) < 5 and int(batch["label"].max()) > 0


def test_loader_workers_survive_the_preemption_signals_the_trainer_handles(demo_shards: Path) -> None:
    """SLURM sends the job's USR signal to every process of a job; a worker (or the fork server the workers come
    from) killed by it would crash the trainer before it saves. SIGTERM still ends a worker (multiprocessing relies
    on it at exit)."""
    import os
    import signal
    import time

    import psutil

    stream = UnpairedStream(_cfg(demo_shards, num_workers=1), 16, seed=0)
    batches = iter(stream)
    next(batches)
    helpers = psutil.Process().children(recursive=True)
    assert len(helpers) >= 2, "the stream should run a fork server and a worker process"
    for proc in helpers:
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            os.kill(proc.pid, sig)
    time.sleep(0.5)
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in helpers)
    for _ in range(3):
        assert next(batches)["mr"].shape[0] == 2
    stream.close()


def test_loader_workers_come_from_a_fork_server_not_from_the_threaded_trainer(demo_shards: Path) -> None:
    """A worker forked from a process with other threads inherits their locks as they were at that instant (CI saw
    one hang for 10 minutes); workers are forked by a single-threaded fork server instead."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # an earlier test's loader may still have its workers
    stream = UnpairedStream(_cfg(demo_shards, num_workers=2), 16, seed=0)
    assert next(iter(stream))["mr"].shape[0] == 2
    workers = [p for p in me.children(recursive=True) if p.pid not in before and p.ppid() != me.pid]
    assert len(workers) == 2, "two workers, forked by a server that is this process's child"
    assert all(p.parent().num_threads() == 1 for p in workers), "the server that forks them runs one thread"
    stream.close()


def test_a_label_beyond_the_classes_is_caught_on_the_cpu_naming_its_sample(
    tmp_path: Path, demo_shards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a GPU a label >= classes is an opaque device-side assert inside the loss; the loader names it."""
    from cmgan.data.splits import DataError

    root = tmp_path / "s"
    shutil.copytree(demo_shards, root, ignore=shutil.ignore_patterns("sources", "volumes.zarr"))
    shard = sorted((root / "mr").glob("train-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    bad_key = next(n for n, _ in members if n.endswith(".label.npy")).split(".")[0]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            if name == f"{bad_key}.label.npy":
                label = np.load(io.BytesIO(data))
                label[0, 0] = 7
                buf = io.BytesIO()
                np.save(buf, label)
                data = buf.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream = LabelledStream(_cfg(root, batch_size=1, shuffle_buffer=1, augment=NO_AUGMENT), 32, seed=0,
                            num_classes=5)
    keys = [b["keys"][0] for _, b in zip(range(40), stream)]
    assert bad_key not in keys and len(set(keys)) > 15
    assert bad_key in caplog.text and "outside [0, 5)" in caplog.text
    with pytest.raises(DataError, match="set model.seg_classes=5"):
        LabelledStream(_cfg(demo_shards), 32, num_classes=3)

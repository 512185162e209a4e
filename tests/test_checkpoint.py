import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmgan import checkpoint


def save(root: Path, step: int, keep_last: int = 3) -> Path:
    return checkpoint.save(
        root, step, rank=0, world_size=1, barrier=lambda: None,
        per_rank={"rng": torch.get_rng_state(), "pos": [step, "text"]},
        replicated={"step": step, "w": torch.full((3,), float(step))},
        meta={"reason": "test"}, keep_last=keep_last,
    )


def test_save_commits_a_complete_checkpoint_that_loads_with_weights_only(tmp_path):
    path = save(tmp_path, 7)
    assert path == tmp_path / "step_00000007" and (path / checkpoint.COMPLETE).is_file()
    replicated, per_rank = checkpoint.load(path, rank=0)
    assert torch.equal(replicated["w"], torch.full((3,), 7.0)) and per_rank["pos"] == [7, "text"]
    meta = checkpoint.read_meta(path)
    assert meta["step"] == 7 and meta["reason"] == "test" and "state.pt" in meta["files"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_save_and_prune_keeps_the_last_k_checkpoints(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save(tmp_path, step, keep_last=2)
    assert [s for s, _ in checkpoint.list_complete(tmp_path)] == [4, 5]
    assert checkpoint.latest(tmp_path) == tmp_path / "step_00000005"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000005"]


def test_an_unfinished_write_is_never_latest_and_is_cleaned_on_start(tmp_path):
    save(tmp_path, 1)
    tmp = checkpoint.begin(tmp_path, 2)  # a writer that died before commit
    checkpoint.save_file({"w": torch.zeros(1)}, tmp / checkpoint.STATE_FILE)
    assert checkpoint.latest(tmp_path) == tmp_path / "step_00000001"
    assert checkpoint.clean_temp(tmp_path) == [tmp] and not tmp.exists()


def test_a_checkpoint_with_a_pickled_object_is_refused_by_weights_only_loading(tmp_path):
    path = save(tmp_path, 1)
    torch.save({"bad": Path("x")}, path / checkpoint.STATE_FILE)  # a pickled class instance
    with pytest.raises(checkpoint.CheckpointError, match="state.pt"):
        checkpoint.load(path, rank=0)


def test_sigkill_while_writing_leaves_the_previous_checkpoint_as_latest(tmp_path):
    save(tmp_path, 1)
    code = f"""
import torch
from cmgan import checkpoint
checkpoint.save({str(tmp_path)!r}, 2, rank=0, world_size=1, barrier=lambda: None,
                per_rank={{"x": torch.zeros(1)}}, replicated={{"w": torch.ones(1000)}}, meta={{}})
"""
    # The documented test hook pauses 30 s after each file: the kill lands between two real writes.
    env = {**os.environ, "CMGAN_CKPT_PAUSE_S": "30"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    tmp = checkpoint.temp_dir(tmp_path, 2)
    deadline = time.monotonic() + 60
    while not (tmp / checkpoint.rank_file(0)).exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the writer never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(tmp_path) == tmp_path / "step_00000001"
    replicated, _ = checkpoint.load(checkpoint.latest(tmp_path), 0)
    assert replicated["step"] == 1

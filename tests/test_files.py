"""cmgan.files: atomic writes leave the old file or the new one (also when the writer is killed), are fsynced,
digests equal hashlib's, TOML errors name the file."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cmgan import files


def test_an_exception_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    files.write_json(path, {"step": 1})
    with pytest.raises(RuntimeError), files.atomic_open(path, "w") as f:
        f.write('{"step": 2, "half')
        raise RuntimeError("writer failed")
    assert json.loads(path.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_writer_killed_mid_write_leaves_the_old_file_complete(tmp_path):
    path = tmp_path / "big.bin"
    old = os.urandom(1 << 16)
    files.write_bytes(path, old)
    code = textwrap.dedent(f"""
        import os, signal
        from cmgan import files
        with files.atomic_open({str(path)!r}, "wb") as f:
            f.write(b"x" * (1 << 20))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -signal.SIGKILL
    assert path.read_bytes() == old
    stale = files.stale_temps(path)
    assert len(stale) == 1 and stale[0].stat().st_size == 1 << 20  # the killed write, never renamed into place


def test_the_file_and_its_directory_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = files.write_text(tmp_path / "a.txt", "hello\n")
    assert path.read_text() == "hello\n"
    assert synced[0] == str(files.temp_path(path))  # the data, under the temporary name
    assert synced[-1] == str(tmp_path)  # the directory, after the rename


def test_atomic_path_serves_writers_that_want_a_name_and_keeps_their_suffix(tmp_path):
    path = tmp_path / "stats.npz"
    with files.atomic_path(path, suffix=".npz") as tmp:
        assert tmp.name.endswith(".tmp.npz") and tmp.parent == tmp_path
        np.savez(tmp, mu=np.arange(3))
    assert np.load(path)["mu"].tolist() == [0, 1, 2]
    assert files.stale_temps(path) == []


def test_write_json_sorts_keys_ends_with_a_newline_and_refuses_nan_when_asked(tmp_path):
    path = files.write_json(tmp_path / "sub" / "r.json", {"b": 1, "a": [1.5]}, indent=None)
    assert path.read_text() == '{"a": [1.5], "b": 1}\n'
    files.write_json(path, {"when": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"when": str(tmp_path)}
    with pytest.raises(ValueError):
        files.write_json(path, {"x": float("nan")}, allow_nan=False)
    assert json.loads(path.read_text()) == {"when": str(tmp_path)}


def test_sha256_file_equals_hashlib_over_the_bytes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # several read blocks and a partial one
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sha256_files_covers_every_content_and_with_names_every_rename(tmp_path):
    paths = []
    for i, data in enumerate((b"first", b"second" * 1000)):
        paths.append(tmp_path / f"{i}.dcm")
        paths[-1].write_bytes(data)
    plain, named = files.sha256_files(paths), files.sha256_files(paths, names_under=tmp_path)
    expected = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in paths)).hexdigest()
    assert plain == expected and named != plain
    paths[1].write_bytes(b"changed")
    assert files.sha256_files(paths) != plain
    paths[1].write_bytes(b"second" * 1000)
    renamed = paths[1].rename(tmp_path / "9.dcm")
    assert files.sha256_files([paths[0], renamed]) == plain  # contents alone: a rename is invisible
    assert files.sha256_files([paths[0], renamed], names_under=tmp_path) != named


def test_read_toml_names_the_file_and_the_problem(tmp_path):
    good = tmp_path / "a.toml"
    good.write_text('x = 1\n[s]\ny = "z"\n')
    assert files.read_toml(good) == {"x": 1, "s": {"y": "z"}}
    bad = tmp_path / "b.toml"
    bad.write_text("x = = 1\n")
    with pytest.raises(KeyError, match=r"profile .*b\.toml is not valid TOML"):
        files.read_toml(bad, what="profile", error=KeyError)
    with pytest.raises(ValueError, match=r"file .*c\.toml does not exist"):
        files.read_toml(tmp_path / "c.toml")

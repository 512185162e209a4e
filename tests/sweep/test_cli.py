"""`launch/sweep.py`: a dry run shows the plan and submits nothing; errors in the sweep file exit with code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), *args], capture_output=True,
                          text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


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

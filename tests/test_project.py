"""A project's configs/ and slurm/profiles/ are found by environment variable, then below the working directory,
then in the source checkout: an installed cmgan serves the user's own project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cmgan import project
from cmgan.cluster import load_profile
from cmgan.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _profile(directory: Path, name: str, partition: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.toml").write_text(f'cluster = "slurm"\npartition = "{partition}"\n')


def test_profiles_come_from_the_environment_variable_first(tmp_path, monkeypatch):
    _profile(tmp_path / "mine", "big", "gpu-big")
    monkeypatch.setenv(project.PROFILES_ENV, str(tmp_path / "mine"))
    assert project.profiles_dir() == tmp_path / "mine"
    assert load_profile("big").partition == "gpu-big"
    with pytest.raises(ConfigError, match=r"known profiles: \['big'\]"):
        load_profile("local")  # the checkout's profiles are not mixed in


def test_profiles_come_from_the_working_directory_before_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(project.PROFILES_ENV, raising=False)
    _profile(tmp_path / "slurm" / "profiles", "local", "from-my-project")
    monkeypatch.chdir(tmp_path)
    assert load_profile("local").partition == "from-my-project"


def test_the_checkout_directories_are_the_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv(project.CONFIGS_ENV, raising=False)
    monkeypatch.delenv(project.PROFILES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no configs/ or slurm/ here
    assert project.configs_dir().resolve() == REPO / "configs"
    assert project.profiles_dir().resolve() == REPO / "slurm" / "profiles"
    assert (project.configs_dir() / "demo.toml").is_file()  # what the demo reads


def test_without_any_directory_the_error_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(project.CONFIGS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(project, "_CHECKOUT", tmp_path / "site-packages")  # as an installed package sees it
    with pytest.raises(ConfigError, match=project.CONFIGS_ENV):
        project.configs_dir()


def test_an_environment_variable_naming_no_directory_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(project.CONFIGS_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=f"{project.CONFIGS_ENV}=.*missing.* is not a directory"):
        project.configs_dir()


def test_the_library_does_not_import_the_launchers():
    # launch/ parses and hands over (the demo lives there too): the library must work without it.
    for path in sorted((REPO / "cmgan").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "launch" or n.startswith("launch.") for n in names), path

"""Shared fixtures of the sweep tests: the demo shards at 32 x 32."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m shards demo` at 32x32: <dir>/mr (test split with truth and labels) and <dir>/color."""
    from shards.__main__ import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--subjects", "3", "--color-subjects", "2", "--size", "32"]) == 0
    return out

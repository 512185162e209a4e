"""Fixtures for the data tests: a tiny demo shard set (built once per session through the real ingest)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR with DIR/mr and DIR/color: 4 + 4 phantoms, 32x32 slices, shards of <= 8 samples (many shards)."""
    from shards.demo import demo

    out = tmp_path_factory.mktemp("demo")
    results = demo(out, subjects=4, color_subjects=4, size=32, seed=3, max_count=8)
    assert all(r.exit_code == 0 for r in results.values())
    return out

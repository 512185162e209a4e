"""Suite-wide fixtures."""

import os

import pytest


@pytest.fixture(autouse=True)
def _restore_environment():
    """Code under test may export variables (the sweep job exports RANK/WORLD_SIZE/MASTER_* for torchrun-style
    launchers); restore the environment after every test so no test sees another's distributed setup."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)

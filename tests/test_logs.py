"""cmgan.logs.setup_logging: one format on stderr, quieter ranks, CMGAN_LOG wins, a host's own setup is kept.

Each case runs in a fresh interpreter: pytest installs its own root handlers in this one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SCRIPT = """
import logging, sys
from cmgan.logs import setup_logging
{before}
setup_logging(rank={rank}, level={level})
setup_logging(rank={rank}, level={level})  # idempotent: still one handler
log = logging.getLogger("cmgan.x")
log.debug("d-line"); log.info("i-line"); log.warning("w-line")
print(len(logging.getLogger().handlers))
"""


def run(rank: int = 0, level: str = "logging.INFO", before: str = "", env: dict | None = None):
    code = SCRIPT.format(rank=rank, level=level, before=before)
    full_env = {k: v for k, v in os.environ.items() if k != "CMGAN_LOG"} | {"PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env | (env or {}),
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr, int(done.stdout.strip())


def test_rank_zero_logs_info_in_the_one_format_with_one_handler():
    err, handlers = run()
    assert handlers == 1
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO cmgan.x: i-line\n\d\d:\d\d:\d\d WARNING cmgan.x: w-line\n", err)


def test_other_ranks_log_warnings_only():
    err, _ = run(rank=3)
    assert "i-line" not in err and "WARNING cmgan.x: w-line" in err


@pytest.mark.parametrize("value, shown", [("DEBUG", ["d-line", "i-line", "w-line"]), ("error", [])])
def test_cmgan_log_overrides_the_level_the_entry_point_asks_for(value, shown):
    err, _ = run(level="logging.WARNING", env={"CMGAN_LOG": value})
    assert [w for w in ("d-line", "i-line", "w-line") if w in err] == shown


def test_a_host_applications_own_handler_is_left_alone():
    err, handlers = run(before='logging.basicConfig(level=logging.WARNING, format="HOST %(message)s")')
    assert handlers == 1 and err == "HOST w-line\n"


def test_a_bad_cmgan_log_value_is_one_clear_error():
    code = "from cmgan.logs import setup_logging; setup_logging()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=os.environ | {"CMGAN_LOG": "LOUD", "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode != 0 and "log level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR" in done.stderr

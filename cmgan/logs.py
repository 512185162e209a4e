"""The console log of every cmgan entry point: one format, one level rule.

    setup_logging(level=logging.INFO if args.verbose else logging.WARNING)   # a command-line tool
    setup_logging(rank=env.rank)                                             # each process of a distributed job

Lines go to stderr as `12:03:04 INFO cmgan.train.trainer: message`. The environment variable `CMGAN_LOG`
(a level name: DEBUG, INFO, WARNING, ERROR) overrides the level an entry point asks for. Ranks other than 0 log
warnings and errors only, so an N-rank job does not print every line N times. An application that installed
its own root handler before calling keeps it: cmgan then changes nothing (a library must not reconfigure its
host's logging).
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
ENV_LEVEL = "CMGAN_LOG"

_own_handler: logging.Handler | None = None


def setup_logging(rank: int = 0, level: int | str = logging.INFO) -> None:
    """Install cmgan's stderr handler on the root logger (once) and set its level; see the module docstring.
    Idempotent: a second call only changes the level."""
    global _own_handler
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines would drown the training log
    root = logging.getLogger()
    if _own_handler is None or _own_handler not in root.handlers:
        if root.handlers:  # the host application's (or pytest's) own setup
            return
        _own_handler = logging.StreamHandler()  # stderr
        _own_handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
        root.addHandler(_own_handler)
    name = os.environ.get(ENV_LEVEL, "").strip().upper()
    wanted = logging.getLevelName(name) if name else level
    if isinstance(wanted, str):
        wanted = logging.getLevelName(wanted.upper())
    if not isinstance(wanted, int):
        raise ValueError(f"log level {name or level!r} is not one of DEBUG, INFO, WARNING, ERROR ({ENV_LEVEL})")
    root.setLevel(wanted if rank == 0 else max(wanted, logging.WARNING))

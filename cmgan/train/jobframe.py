"""The job frame: what every training entry point runs in, from process start to its exit status.

    summary = run_in_job(cfg.train, batch_size, lambda backend, stop: body(cfg, backend, stop))
    sys.exit(EXIT_RESUMABLE if summary["status"] == "stopped" else 0)      # launch/train.py

`run_in_job` sets up logging, determinism and the distributed backend (`cmgan.train.distributed`), installs the
stop flag (`cmgan.train.stop`), runs the body (the CycleGAN trainer or S pretraining), closes the backend whatever
happens, and hands a stop signal on afterwards. What happens inside a run (steps, agreement, checkpoints) is
`cmgan.train.loop`; where it writes is `cmgan.train.rundir`. (Not to be confused with `cmgan.sweep.job`, the
callable a sweep submits, which calls the trainer and so runs inside this frame.)
"""

from __future__ import annotations

import logging
from typing import Any

from cmgan.distenv import require_cuda_if_assigned
from cmgan.logs import setup_logging
from cmgan.train import distributed
from cmgan.train.state import set_deterministic
from cmgan.train.stop import StopFlag

log = logging.getLogger(__name__)

EXIT_RESUMABLE = 75
"""Process exit status of a run stopped by a signal after saving (sysexits EX_TEMPFAIL: run it again to resume)."""


def run_in_job(train: Any, batch_size: int, body: Any) -> dict[str, Any]:
    """The frame every training entry point runs in: logging, determinism, the distributed backend, the stop
    flag; `body(backend, stop)` returns the summary dict. The backend is closed whatever happens; a run that
    stopped on a signal hands the signal on afterwards (e.g. to submitit's USR2 handler: requeue and exit)."""
    setup_logging()
    require_cuda_if_assigned()  # first: a job given GPUs it cannot use stops before any slow start-up work
    set_deterministic(train.deterministic)
    backend = distributed.setup(train, batch_size)
    setup_logging(backend.rank)
    if backend.is_main:
        log.info("%s", backend.describe())
    stop = StopFlag()
    try:
        with stop:
            summary = body(backend, stop)
    finally:
        backend.close()
    if summary["status"] == "stopped":
        stop.chain_previous()
    return summary

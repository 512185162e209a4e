"""Stop signals: the handler only records the signal; ranks agree at a step boundary, then save together.

SLURM sends SIGTERM (scancel, preemption), and submitit asks for `--signal=USR2@90` before the time limit;
SIGUSR1 is the other common choice. A collective (save, all-reduce) inside a signal handler can hang or
deadlock, and ranks receive signals at different moments, so:

1. the handler sets a flag (nothing else: no logging, no I/O);
2. at each step boundary the trainer all-reduces the flag with MAX, so every rank sees the same decision;
3. all ranks save the checkpoint collectively, and the run ends with status "stopped" (resumable);
4. `chain_previous()` then hands the signal to whatever handler was installed before (e.g. submitit's USR2
   handler, which requeues the job on global rank 0 and exits), so the cluster layer still gets its turn.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopFlag:
    """Context manager that installs flag-setting handlers for `signals` and restores the old ones on exit."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._chain: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Only record: this runs between two bytecodes of the training loop.
        if self.received is None:
            self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def __enter__(self) -> StopFlag:
        for sig in self.signals:
            self._previous[sig] = self._chain[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the handlers back that were installed before `__enter__`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def chain_previous(self) -> None:
        """Call the handler that was installed before ours for the received signal, if it was a Python function.

        Call this after the collective save, outside any collective (also valid after the `with` block ended).
        Default/ignore dispositions are not
        re-raised: the caller returns a "stopped" status instead of dying from the signal.
        """
        previous = self._chain.get(self.received) if self.received is not None else None
        self.restore()
        if callable(previous):
            previous(self.received, None)

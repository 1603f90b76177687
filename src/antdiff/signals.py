"""Stop a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (what a cluster scheduler sends
before it kills a job): the loop finishes its step and saves a checkpoint."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """While active (main thread only), SIGINT and SIGTERM ask the loop to stop after the
    current step (`signum`); a second one stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum = 0
        self.old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

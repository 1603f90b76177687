"""Stop a training loop cleanly on SIGINT (Ctrl-C), SIGTERM (what a cluster scheduler sends
before it kills a job) or SIGHUP (a closed terminal or ssh session): the loop finishes its step
and saves a checkpoint. After training, the same signals stop the final outputs at once, with
one line."""

from __future__ import annotations

import signal
import threading
from typing import Any

from antdiff.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """While active (main thread only), SIGINT, SIGTERM and SIGHUP ask the loop to stop after
    the current step (`signum`); a second one stops at once (KeyboardInterrupt). With `at_once`
    (what is safe, for the message), the first one stops at once: `Interrupted`, exit 128 + N."""

    def __init__(self, at_once: str | None = None) -> None:
        self.signum = 0
        self.at_once = at_once
        self.old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.at_once is not None:
            name = signal.Signals(signum).name
            raise Interrupted(f"stopped by {name}; {self.at_once}", 128 + signum)
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

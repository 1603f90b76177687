"""A one-line progress report of a training run, and its clock of training time."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    """A one-line progress bar with rate and ETA on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, seconds: float = 0.0, enabled: bool = True) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.perf_counter() - seconds
        self.seconds = seconds
        self.tty = sys.stdout.isatty()

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, across resumes (evaluations excluded): the `time` in
        metrics.jsonl."""
        return round(time.perf_counter() - self.t0, 3)

    def exclude(self, seconds: float) -> None:
        self.t0 += seconds

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        rate = (step - self.start) / max(self.elapsed - self.seconds, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        line = f"step {step}/{self.total}  loss {loss:.4f}  {rate:.2f} it/s  ETA {_duration(eta)}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"

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


class ItemProgress:
    """``what done/total, rate/s, ETA`` on stderr (one updating line on a terminal, else a line
    every ~10%), for long non-training loops such as feature extraction."""

    def __init__(self, total: int, what: str, enabled: bool = True) -> None:
        self.total, self.what, self.enabled = total, what, enabled and total > 0
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.next_log = 0.0

    def update(self, done: int) -> None:
        if not self.enabled or (not self.tty and done < self.next_log and done < self.total):
            return
        self.next_log = done + self.total / 10
        elapsed = time.perf_counter() - self.t0
        rate = done / max(elapsed, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        line = f"{self.what} {done}/{self.total}  {rate:.1f}/s  ETA {_duration(eta)}"
        print(("\r" + line) if self.tty else line, end="", file=sys.stderr, flush=True)
        if not self.tty:
            print(file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)

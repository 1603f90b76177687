"""Exceptions for what a user can fix: the CLI prints the message on one line and exits 2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class AntError(ValueError):
    """Invalid input from a user (file, flag, config); never a bug in antdiff itself."""


class NonFiniteError(AntError):
    """A training step produced a non-finite loss, gradient or weights (lower the learning rate)."""


class Interrupted(AntError):
    """Training stopped by a signal after saving a checkpoint; `code` is the exit status
    (128 + signal number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)  # both in args: it pickles (a worker process sends it)
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is torch running out of memory (CUDA has a type; the CPU allocator raises
    a RuntimeError that only its message tells apart)."""
    if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A failed write (read-only place, full disk, a path under a file) as one AntError line."""
    try:
        yield
    except OSError as e:
        raise AntError(f"cannot write {path}: {e.strerror or e}") from None


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only once written whole
    (a full disk or a signal leaves the previous file or none, never a partial one). A failed
    write is one AntError line, as in `writing`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""A run directory, and the only code that knows its layout.

    RUN/config.json       the resolved TrainConfig
    RUN/run.json          the RunInfo: data shape, resolved model, the interval tasks
    RUN/metrics.jsonl     one JSON row per logged step (and per evaluation during training)
    RUN/metrics.json      the last `antdiff evaluate` result
    RUN/checkpoints/      step_N/ folders (checkpoint.py) and the `latest` pointer
    RUN/samples.png       samples of the final EMA model
    RUN/report.html       the run's page (report/)
    RUN/affinity/         `antdiff affinity` results for this run
    RUN/tasks.json, .npz  how an affinity:K:auto run chose its tasks (and the measured matrix)
    RUN/.lock             locked by the process training the run (its pid and host inside)

Every other module asks a `RunDir` for these records or paths. JSON records are written
atomically (a temporary file renamed), so a crash or a full disk never leaves half a config; a
write that fails is one AntError line. Loading falls back from an unreadable checkpoint to the
newest readable one, with a warning line; one that a running training pruned while it was read
is not unreadable: the checkpoints are listed again.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from antdiff import checkpoint
from antdiff.config import TrainConfig, make_config
from antdiff.errors import AntError, writing
from antdiff.metricrows import MetricsRow, row_from_json, row_to_json
from antdiff.runinfo import RunInfo

# Keys renamed since older run directories were written: old name -> new name.
LEGACY_KEYS = {"sampling": "timestep_sampling"}


@dataclass(frozen=True)
class Checkpoint:
    """One saved training state: raw and EMA weights (safetensors) and the rest (`state`)."""

    path: Path
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


class RunDir:
    """A run directory with its config and run record (read once, when opened or created)."""

    def __init__(self, path: str | Path, cfg: TrainConfig, info: RunInfo) -> None:
        self.path, self.cfg, self.info = Path(path), cfg, info
        self._lock: int | None = None  # the open, flock-ed RUN/.lock while this RunDir holds it

    # ------------------------------------------------------------------ open / create
    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory (config.json and run.json must be there)."""
        path = Path(path)
        return cls(path, read_config(path), RunInfo.from_dict(_read_json(path / "run.json")))

    @classmethod
    def create(cls, path: str | Path, cfg: TrainConfig, info: RunInfo) -> RunDir:
        """Start a fresh run in `path` (locked, see `lock`): refuses a folder that holds any
        run file; a failed write leaves no run file behind."""
        path = Path(path)
        make_dir(path)
        run = cls(path, cfg, info)
        run.lock()
        found = [name for name in RUN_FILES if (path / name).exists()]
        if found:
            run.unlock()
            raise AntError(f"{path} already holds a run ({found[0]}): --resume, or another --out")
        try:
            _write_atomic(path / "run.json", json.dumps(info.to_dict(), indent=1))
            _write_atomic(path / "metrics.jsonl", "")
            run.write_config(cfg)  # last: a folder with config.json is a complete fresh run
        except AntError:
            for name in ("run.json", "metrics.jsonl"):
                (path / name).unlink(missing_ok=True)
            run.unlock()
            raise
        return run

    # ------------------------------------------------------------------ the lock
    def lock(self) -> None:
        """Take the run's lock for this process, or refuse (one line) when another process
        holds it. An OS lock (flock) on RUN/.lock, which records the holder's pid and host: the
        kernel releases it when its process dies, so a killed run never blocks the next one."""
        if self._lock is not None:
            return
        file = self.path / ".lock"
        with writing(file):
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 256).decode(errors="replace") or "another process"
            os.close(fd)
            raise AntError(f"{self.path} is in use by {holder}; wait for it to end") from None
        self._lock = fd
        try:
            with writing(file):
                os.ftruncate(fd, 0)
                os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        except AntError:
            self.unlock()
            raise

    def unlock(self) -> None:
        """Release the lock if this RunDir holds it."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def write_info(self, info: RunInfo) -> None:
        """Record the run's data and tasks (an affinity:K:auto run chooses its tasks late)."""
        _write_atomic(self.path / "run.json", json.dumps(info.to_dict(), indent=1))
        self.info = info

    def write_tasks(
        self, record: dict[str, Any], affinity: np.ndarray, snapshots: list, edges: np.ndarray
    ) -> None:
        """How an affinity:K:auto run chose its tasks: tasks.json (when, from what, the
        intervals, the time it took) and tasks.npz (`affinity` [B, B], usable as
        `--clusters affinity:K:RUN/tasks.npz`; the `snapshots` [S, B, B]; the bin `edges`)."""
        arrays = {"affinity": affinity, "snapshots": np.asarray(snapshots), "edges": edges}
        _write_atomic(self.path / "tasks.npz", arrays)
        _write_atomic(self.path / "tasks.json", json.dumps(record, indent=1))

    def tasks(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """(tasks.json, tasks.npz arrays) of an affinity:K:auto run that has chosen, or None."""
        if not (self.path / "tasks.json").is_file():
            return None
        npz = self.path / "tasks.npz"
        try:
            with np.load(npz) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # cut short, not .npz
            raise AntError(f"{npz} is unreadable ({str(e).splitlines()[0]})") from None
        return _read_json(self.path / "tasks.json"), arrays

    def write_config(self, cfg: TrainConfig) -> None:
        """Record `cfg` (a resumed run may change its steps or outputs)."""
        _write_atomic(self.path / "config.json", json.dumps(cfg.to_dict(), indent=1))
        self.cfg = cfg

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: MetricsRow) -> None:
        path = self.path / "metrics.jsonl"
        with writing(path), open(path, "a") as f:
            f.write(json.dumps(row_to_json(row)) + "\n")

    def metrics(self) -> list[MetricsRow]:
        """The typed rows of metrics.jsonl (a line cut short by a kill is skipped)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(row_from_json(json.loads(line)))
            except (ValueError, TypeError):
                continue
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows written after `step` (a resumed run redoes them)."""
        keep = [row_to_json(r) for r in self.metrics() if r.step <= step]
        _write_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in keep))

    def write_evaluation(self, result: dict[str, Any]) -> Path:
        path = self.path / "metrics.json"
        _write_atomic(path, json.dumps(result, indent=1))
        return path

    def evaluation(self) -> dict[str, Any] | None:
        """The result of the last `antdiff evaluate`, or None."""
        path = self.path / "metrics.json"
        return _read_json(path) if path.is_file() else None

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self,
        step: int,
        weights: dict[str, torch.Tensor],
        ema: dict[str, torch.Tensor],
        state: dict[str, Any],
        keep: int,
    ) -> Path:
        return checkpoint.save(self.path, step, weights, ema, state, keep=keep)

    def latest_checkpoint(self) -> Path | None:
        """The folder of the newest complete checkpoint, or None."""
        return checkpoint.latest(self.path, missing_ok=True)

    def has_checkpoint(self) -> bool:
        return self.latest_checkpoint() is not None

    def checkpoints(self) -> list[Path]:
        """Every complete checkpoint, oldest first."""
        found = checkpoint.complete(self.path)
        if not found:
            raise AntError(f"no checkpoint in {checkpoint.folder(self.path)}")
        return found

    def select_checkpoints(self, spec: str = "last") -> list[Path]:
        """`last`, `all` (every kept checkpoint), or a comma list of steps such as `500,1000`."""
        found = self.checkpoints()
        if spec == "last":
            return [checkpoint.latest(self.path)]
        if spec == "all":
            return found
        if not re.fullmatch(r"\d+(,\d+)*", spec):
            raise AntError(f"--checkpoints must be last, all or steps like 500,1000; got {spec!r}")
        steps = {checkpoint.step_of(p): p for p in found}
        chosen = []
        for s in dict.fromkeys(int(v) for v in spec.split(",")):
            if s not in steps:
                have = ", ".join(map(str, steps))
                raise AntError(f"no checkpoint at step {s} in {self.path} (kept steps: {have})")
            chosen.append(steps[s])
        return chosen

    def load_checkpoint(self, path: Path | None = None) -> Checkpoint:
        """A checkpoint of this run: `path`, or the newest readable one (a newer one that cannot
        be read, say truncated when the disk filled, gets a warning line and is skipped)."""
        if path is not None:
            return Checkpoint(path, *checkpoint.load(path))
        for _ in range(10):  # a running training pruned what was listed: list them again
            latest = checkpoint.latest(self.path)
            order = [latest, *(p for p in reversed(self.checkpoints()) if p != latest)]
            try:
                return _first_readable(self.path, order)
            except checkpoint.Vanished:
                continue
        raise AntError(f"the checkpoints of {self.path} keep vanishing while read; try again")

    def set_aside_after(self, step: int) -> None:
        """Move checkpoints newer than `step` (unreadable ones a resume skipped) out of the way,
        to checkpoints/unreadable-step_N, so that pruning never removes the good ones."""
        for p in checkpoint.folders(self.path):
            if checkpoint.step_of(p) > step:
                with writing(p):
                    os.replace(p, p.with_name(f"unreadable-{p.name}"))

    # ------------------------------------------------------------------ other files
    @property
    def samples_png(self) -> Path:
        return self.path / "samples.png"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def affinity_dir(self) -> Path:
        return self.path / "affinity"


RUN_FILES = ("config.json", "run.json", "metrics.jsonl", "checkpoints", "tasks.json")


def _first_readable(run: Path, order: list[Path]) -> Checkpoint:
    """The first of `order` that loads; an unreadable one gets a warning line (the last, an
    error). A vanished one raises `checkpoint.Vanished`: the caller lists them again."""
    for i, candidate in enumerate(order):
        try:
            return Checkpoint(candidate, *checkpoint.load(candidate))
        except checkpoint.Vanished:
            raise
        except AntError as e:
            if i == len(order) - 1:
                raise AntError(f"no readable checkpoint in {run}: {e}") from None
            print(f"antdiff: warning: {e}; using an older one", file=sys.stderr)
    raise AntError(f"no checkpoint in {checkpoint.folder(run)}")


def make_dir(path: Path) -> None:
    """Create the folder `path` (and its parents), or say in one line why it cannot be."""
    if path.exists() and not path.is_dir():
        raise AntError(f"{path} is a file, not a folder")
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise AntError(f"cannot write {path}: permission denied")


def read_config(path: str | Path) -> TrainConfig:
    """The TrainConfig of the run in `path` (config.json)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise AntError(f"{path} is not a run directory (no config.json)")
    values = _read_json(file)
    return make_config({LEGACY_KEYS.get(k, k): v for k, v in values.items()})


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AntError(f"{path.parent} has no {path.name}")
    try:
        value = json.loads(path.read_text())
    except ValueError as e:
        raise AntError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise AntError(f"{path} does not hold a JSON object")
    return value


def _write_atomic(path: Path, content: str | dict[str, np.ndarray]) -> None:
    """Write `content` (text, or arrays for an .npz) to a temporary file, then rename it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with writing(path):
            if isinstance(content, str):
                tmp.write_text(content)
            else:
                with open(tmp, "wb") as f:
                    np.savez(f, **content)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""A run directory, and the only code that knows its layout.

    RUN/config.json       the resolved TrainConfig
    RUN/run.json          the RunInfo: data shape, resolved model, the interval tasks
    RUN/metrics.jsonl     one JSON row per logged step (and per evaluation during training)
    RUN/metrics.json      the last `antdiff evaluate` result
    RUN/checkpoints/      step_N/ folders (checkpoint.py) and the `latest` pointer
    RUN/samples.png       samples of the final EMA model
    RUN/report.html       the run's page (report/)
    RUN/affinity/         `antdiff affinity` results for this run

Every other module asks a `RunDir` for these records or paths; JSON records are written
atomically (a temporary file renamed), so a crash never leaves half a config.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from antdiff import checkpoint
from antdiff.config import RunInfo, TrainConfig, make_config
from antdiff.errors import AntError

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

    # ------------------------------------------------------------------ open / create
    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory (config.json and run.json must be there)."""
        path = Path(path)
        return cls(path, read_config(path), RunInfo.from_dict(_read_json(path / "run.json")))

    @classmethod
    def create(cls, path: str | Path, cfg: TrainConfig, info: RunInfo) -> RunDir:
        """Start a fresh run in `path`: refuses a folder that already holds a run."""
        path = Path(path)
        if (path / "config.json").is_file() or checkpoint.latest(path, missing_ok=True):
            raise AntError(f"{path} already holds a run; pass --resume or another --out")
        run = cls(path, cfg, info)
        path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
        _write_atomic(path / "run.json", json.dumps(info.to_dict(), indent=1))
        _write_atomic(path / "metrics.jsonl", "")
        return run

    def write_config(self, cfg: TrainConfig) -> None:
        """Record `cfg` (a resumed run may change its steps or outputs)."""
        self.cfg = cfg
        _write_atomic(self.path / "config.json", json.dumps(cfg.to_dict(), indent=1))

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (a line cut short by a kill is skipped)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows written after `step` (a resumed run redoes them)."""
        keep = [r for r in self.metrics() if r.get("step", 0) <= step]
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

    def has_checkpoint(self) -> bool:
        return checkpoint.latest(self.path, missing_ok=True) is not None

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
        """A checkpoint of this run (default: the latest)."""
        path = path or checkpoint.latest(self.path)
        weights, ema, state = checkpoint.load(path)
        return Checkpoint(path, weights, ema, state)

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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)

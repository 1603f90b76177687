"""The typed rows of a run's metrics.jsonl: a training-log row every `--log-every` steps, an
evaluation row every `--eval-every` steps, a tasks row when affinity:K:auto chooses its tasks.

`row_to_json` and `row_from_json` are the one translation to and from the JSON layout, which
stays what earlier versions wrote (same keys, same order), so that old run directories read.
The run directory (rundir.py) calls them; everything else sees the dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepRow:
    """The training log at `step`: the mean loss over the samples, each task's loss and method
    weight (None: the task had no sample), whether the step was finite, the model's lr, the
    non-finite steps skipped so far, the training seconds and the histogram of drawn t."""

    step: int
    loss: float
    task_losses: list[float | None]
    task_weights: list[float | None]
    finite: bool = True
    lr: float | None = None
    skipped: int | None = None
    time: float | None = None
    t_hist: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other versions, kept as read


@dataclass
class EvalRow:
    """An evaluation of the EMA model at `step` after `time` training seconds (the keys of
    `eval` are declared in antdiff.metrics.declare)."""

    step: int
    time: float
    eval: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TasksRow:
    """The tasks affinity:K:auto chose at `step` (its record: partition, cost, affinity)."""

    step: int
    time: float
    tasks: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


MetricsRow = StepRow | EvalRow | TasksRow


def row_to_json(row: MetricsRow) -> dict[str, Any]:
    """The JSON object of `row`: its fields in order (optional ones only when set), then the
    keys it was read with that it does not know."""
    out = {
        f.name: getattr(row, f.name)
        for f in dataclasses.fields(row)
        if f.name != "extra" and not (f.default is None and getattr(row, f.name) is None)
    }
    return {**out, **row.extra}


def row_from_json(data: dict[str, Any]) -> MetricsRow:
    """The typed row of a JSON object of metrics.jsonl (an evaluation row holds `eval`, a tasks
    row `tasks`, a training row the rest)."""
    cls: type[MetricsRow] = EvalRow if "eval" in data else TasksRow if "tasks" in data else StepRow
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return cls(**known, extra=extra)

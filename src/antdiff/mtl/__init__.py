"""Multi-task methods over K tasks; knows nothing of diffusion.

    method = build_method("uw", num_tasks=K)  # mean, uw, famo, pcgrad, nash, torchjd:NAME
    # sampled:NAME: the model gets the plain mean, NAME only learns weights (antdiff.mtl.sampled)
    optimizer = AdamW([{"params": model.parameters()}, *method.param_groups()], lr=1e-4)
    info = ant_backward(method, loss_fn, task_ids, task_counts, model, scaler=None)
    if info.finite:
        optimizer.step()
        ant_after_step(method, loss_fn, task_ids, task_counts, model)  # FAMO same_batch only

Absent tasks (no sample in the global batch): weight 0, each method runs on the present subset,
and `info.task_losses` is NaN for them. Non-finite losses: skipped step with a GradScaler
(`info.finite` is False), `NonFiniteError` without one. `mtl_backward` and `mtl_after_step` are
the deprecated former names of `ant_backward` and `ant_after_step`.
"""

from __future__ import annotations

import math
from typing import Any

from antdiff.errors import AntError
from antdiff.mtl.accumulate import Accumulation
from antdiff.mtl.base import GramianMethod, LossMethod, MTLMethod
from antdiff.mtl.engine import ant_after_step, ant_backward, mtl_after_step, mtl_backward
from antdiff.mtl.famo import FAMO
from antdiff.mtl.mean import Mean
from antdiff.mtl.nash import NashMTL, NashSolverError, nash_weights
from antdiff.mtl.pcgrad import PCGrad, pcgrad_weights
from antdiff.mtl.sampled import AnchoredMethod, SampledGramian, SampledMethod, anchored, sampled
from antdiff.mtl.step import StepInfo, task_sums
from antdiff.mtl.torchjd import TorchJDMethod
from antdiff.mtl.uw import UncertaintyWeighting
from antdiff.options import check_options, options_help

METHODS: dict[str, type[MTLMethod]] = {
    "mean": Mean,
    "uw": UncertaintyWeighting,
    "famo": FAMO,
    "pcgrad": PCGrad,
    "nash": NashMTL,
}
TORCHJD_PREFIX = "torchjd:"
SAMPLED_PREFIX = "sampled:"  # the plain-mean wrapper (antdiff.mtl.sampled)
ANCHORED_PREFIX = "anchored:"  # the anchor density's objective, bounded corrections


def build_method(name: str, num_tasks: int, **options: Any) -> MTLMethod:
    """The method called `name` for `num_tasks` tasks, its `options` checked against what it
    declares (`MTLMethod.options`); unknown names, unknown options or values out of their
    range -> AntError."""
    if name.startswith(TORCHJD_PREFIX):
        inner = name[len(TORCHJD_PREFIX) :]
        values = check_options(f"method {name!r}", TorchJDMethod.options, options, extra=True)
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise AntError(f"method {name!r}: {key} must be a finite number, got {value!r}")
        return TorchJDMethod(num_tasks, inner, **values)
    if name.startswith(SAMPLED_PREFIX):
        return sampled(build_method(name[len(SAMPLED_PREFIX) :], num_tasks, **options))
    if name.startswith(ANCHORED_PREFIX):
        return anchored(build_method(name[len(ANCHORED_PREFIX) :], num_tasks, **options))
    cls = METHODS.get(name)
    if cls is None:
        names = ", ".join([*METHODS, TORCHJD_PREFIX + "NAME"])
        raise AntError(f"unknown MTL method {name!r}; choose from {names}")
    return cls(num_tasks, **check_options(f"method {name!r}", cls.options, options))


def method_options_help() -> str:
    """Each method with its declared `--method-options` (for the help text and docs)."""
    return "; ".join(
        f"{name}: {options_help(cls.options)}" for name, cls in METHODS.items() if cls.options
    )


__all__ = [
    "ANCHORED_PREFIX",
    "FAMO",
    "METHODS",
    "SAMPLED_PREFIX",
    "TORCHJD_PREFIX",
    "Accumulation",
    "AnchoredMethod",
    "GramianMethod",
    "LossMethod",
    "MTLMethod",
    "Mean",
    "NashMTL",
    "NashSolverError",
    "PCGrad",
    "SampledGramian",
    "SampledMethod",
    "StepInfo",
    "TorchJDMethod",
    "UncertaintyWeighting",
    "ant_after_step",
    "ant_backward",
    "build_method",
    "method_options_help",
    "mtl_after_step",
    "mtl_backward",
    "nash_weights",
    "pcgrad_weights",
    "task_sums",
]

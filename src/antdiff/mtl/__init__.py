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

import inspect
from typing import Any

from antdiff.errors import AntError
from antdiff.mtl.accumulate import Accumulation
from antdiff.mtl.base import GramianMethod, LossMethod, MTLMethod
from antdiff.mtl.engine import ant_after_step, ant_backward, mtl_after_step, mtl_backward
from antdiff.mtl.famo import FAMO
from antdiff.mtl.mean import Mean
from antdiff.mtl.nash import NashMTL, NashSolverError, nash_weights
from antdiff.mtl.pcgrad import PCGrad, pcgrad_weights
from antdiff.mtl.sampled import SampledGramian, SampledMethod, sampled
from antdiff.mtl.step import StepInfo, task_sums
from antdiff.mtl.torchjd import TorchJDMethod
from antdiff.mtl.uw import UncertaintyWeighting

METHODS: dict[str, type[MTLMethod]] = {
    "mean": Mean,
    "uw": UncertaintyWeighting,
    "famo": FAMO,
    "pcgrad": PCGrad,
    "nash": NashMTL,
}
TORCHJD_PREFIX = "torchjd:"
SAMPLED_PREFIX = "sampled:"  # the plain-mean wrapper (antdiff.mtl.sampled)


def build_method(name: str, num_tasks: int, **options: Any) -> MTLMethod:
    """The method called `name` for `num_tasks` tasks; unknown names or options -> AntError."""
    if name.startswith(TORCHJD_PREFIX):
        return TorchJDMethod(num_tasks, name[len(TORCHJD_PREFIX) :], **options)
    if name.startswith(SAMPLED_PREFIX):
        return sampled(build_method(name[len(SAMPLED_PREFIX) :], num_tasks, **options))
    cls = METHODS.get(name)
    if cls is None:
        names = ", ".join([*METHODS, TORCHJD_PREFIX + "NAME"])
        raise AntError(f"unknown MTL method {name!r}; choose from {names}")
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "num_tasks")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise AntError(
            f"unknown option(s) {', '.join(unknown)} for method {name!r}; "
            f"valid: {', '.join(allowed) or 'none'}"
        )
    try:
        return cls(num_tasks, **options)
    except TypeError as e:  # an option of the wrong type, e.g. {"lr": "fast"}
        raise AntError(f"bad option for method {name!r}: {e}") from None


__all__ = [
    "FAMO",
    "METHODS",
    "SAMPLED_PREFIX",
    "TORCHJD_PREFIX",
    "Accumulation",
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
    "mtl_after_step",
    "mtl_backward",
    "nash_weights",
    "pcgrad_weights",
    "task_sums",
]

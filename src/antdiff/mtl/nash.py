"""Nash-MTL (Navon et al., ICML 2022) with a damped Newton solver instead of cvxpy.

The bargaining weights a > 0 solve (G a)_i = 1 / a_i, G the Gramian of the raw task gradients
g_i = grad L_i. That is the stationarity condition of the strictly convex

    f(a) = 0.5 a'G a - sum_i log a_i,   grad f = G a - 1/a,   hess f = G + diag(1/a^2),

so a damped Newton method (backtracking on f, staying in a > 0) finds it in a few steps. The
paper's code divides G by its Frobenius norm for its solver (sequential convex programs with
cvxpy + ECOS) and multiplies the norm back into the constraint, so its weights are these, for
the raw G. We solve on the normalised G for conditioning and rescale: a = a_hat / sqrt(norm).

The update is sum_i a_i g_i / K (the paper's code, `mtl_library/nash.py`), the weights are
refreshed every 25 steps and the trainer clips the gradient norm to 1.0, as in the paper's code.
If no solution exists (a non-negative combination of the task gradients is zero, e.g. two
opposite gradients or a zero gradient) or Newton does not converge, `NashSolverError` is raised:
unlike the official code, stale weights are never reused silently.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.mtl.base import UPDATE_EVERY, GramianMethod
from antdiff.options import Param


class NashSolverError(AntError):
    """The Nash bargaining weights could not be computed for this Gramian."""


def nash_weights(gramian: Tensor, tol: float = 1e-13, max_iter: int = 100) -> Tensor:
    """The a > 0 with a_i (G a)_i = 1 for all i (float64), or NashSolverError."""
    g = gramian.detach().to(device="cpu", dtype=torch.float64)
    g = 0.5 * (g + g.T)
    k = g.shape[0]
    norm = float(torch.linalg.matrix_norm(g))
    if not math.isfinite(norm) or norm <= 0.0:
        raise NashSolverError(f"nash: the task-gradient Gramian has norm {norm}; cannot solve")
    gn = g / norm
    ones = torch.ones(k, dtype=torch.float64)
    quad = float(ones @ gn @ ones)
    a = ones * math.sqrt(k / quad) if quad > 0 else ones.clone()

    def f(x: Tensor) -> float:
        return float(0.5 * x @ gn @ x - torch.log(x).sum())

    fa = f(a)
    grad = gn @ a - 1.0 / a
    for _ in range(max_iter):
        if float((a * (gn @ a) - 1.0).abs().max()) < tol:
            break
        hess = gn + torch.diag(1.0 / (a * a))
        try:
            step = -torch.linalg.solve(hess, grad)
        except torch.linalg.LinAlgError:  # a has diverged: 1/a^2 -> 0 on G's null space
            raise NashSolverError("nash: no bargaining solution (Newton diverged)") from None
        decrement = float(-(grad @ step))  # Newton decrement squared
        t = 1.0
        for _ in range(60):
            trial = a + t * step
            if bool((trial > 0).all()):
                ft, grad_t = f(trial), gn @ trial - 1.0 / trial
                if ft <= fa - 0.25 * t * decrement:
                    break
                # near the optimum f is flat to rounding: accept steps that shrink the gradient
                if decrement < 1e-8 and grad_t.norm() < grad.norm():
                    break
            t *= 0.5
        else:
            break  # no representable progress: judged by the residual below
        a, fa, grad = trial, ft, grad_t
    residual = float((a * (gn @ a) - 1.0).abs().max())
    if not bool(torch.isfinite(a).all()) or residual > 1e-7:
        raise NashSolverError(
            f"nash: Newton did not converge (residual {residual:.2e}); the task gradients "
            "probably admit no bargaining solution (e.g. opposite or zero gradients)"
        )
    return a / math.sqrt(norm)


class NashMTL(GramianMethod):
    """Nash-MTL weights a / K, refreshed every `update_every` steps (default 25)."""

    options = (
        replace(UPDATE_EVERY, default=25),
        Param("max_grad_norm", float, 1.0, 0, 1e6, open_low=True, optional=True),
    )

    def __init__(
        self, num_tasks: int, update_every: int = 25, max_grad_norm: float | None = 1.0
    ) -> None:
        super().__init__(num_tasks, update_every)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise AntError(f"nash max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
        self.default_max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)

    def solve(self, gramian: Tensor) -> Tensor:
        return nash_weights(gramian) / gramian.shape[0]

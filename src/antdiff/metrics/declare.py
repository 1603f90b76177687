"""Every number an evaluation writes, declared once: its name, which way is better, what it means
and how it is printed. The run report and the benchmark summaries read these declarations
instead of keeping their own lists, so that a new metric is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Better = Literal["lower", "higher"] | None
Data = Literal["image", "points", "any"]


@dataclass(frozen=True)
class Metric:
    """One evaluation number. `better`: lower, higher or None (a reference or a diagnostic);
    `data`: the kind of samples it is measured on; `summary`: shown beside the primary metric
    of its data in benchmark tables; `digits`: decimals when it is the primary metric."""

    name: str
    label: str
    better: Better
    data: Data = "image"
    fmt: str = ".4g"
    summary: bool = False
    digits: int = 3

    def format(self, value: float) -> str:
        return format(value, self.fmt)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "fd",
            "Frechet distance on the project's classifier features (lower is better)",
            "lower",
            digits=2,
        ),
        Metric("fd_halves", "floor: FD between two random halves of the real data", None),
        Metric("fd_noise", "ceiling: FD between the real data and uniform noise", None),
        Metric(
            "precision",
            "improved precision (share of samples on the real manifold, k = 3)",
            "higher",
            summary=True,
        ),
        Metric(
            "recall",
            "improved recall (share of the real manifold covered, k = 3)",
            "higher",
            summary=True,
        ),
        Metric("density", "density (Naeem et al. 2020)", "higher"),
        Metric("coverage", "coverage (Naeem et al. 2020)", "higher"),
        Metric("confidence", "mean classifier confidence on the samples", "higher"),
        Metric(
            "class_kl", "KL of the predicted class histogram from uniform (mode dropping)", "lower"
        ),
        Metric("inception_score", "Inception score on the project's classifier", "higher"),
        Metric(
            "accuracy",
            "classifier accuracy w.r.t. the intended labels (conditional models)",
            "higher",
        ),
        Metric("fid", "standard Inception FID", "lower", digits=2),
        Metric(
            "swd",
            "sliced Wasserstein distance to the true points (lower is better)",
            "lower",
            "points",
        ),
        Metric(
            "mmd2",
            "MMD^2 with RBF kernels (about 0 when equal in law)",
            "lower",
            "points",
            summary=True,
        ),
        Metric(
            "loglik",
            "mean log-likelihood under the true mixture (nats per point)",
            "higher",
            "points",
        ),
        Metric(
            "in_3std",
            "share of samples within 3 std of a mode (true points: 0.989)",
            "higher",
            "points",
            summary=True,
        ),
        Metric(
            "mode_tv",
            "total variation of the mode histogram from the mixture weights",
            "lower",
            "points",
            summary=True,
        ),
        Metric("heldout", "held-out denoising loss (unweighted)", "lower", "any", fmt=".5f"),
    )
}

#: the metric that ranks models of each kind of data (benchmarks' `metric`)
PRIMARY: dict[str, str] = {"image": "fd", "points": "swd"}

#: what an evaluation row records besides its metrics (how the samples were drawn)
SETTINGS = (
    "step",
    "sampler",
    "sample_steps",
    "guidance",
    "guidance_interval",
    "seed",
    "num_samples",
    "num_real",
    "feature_net",
)


def summary_metrics(primary: str) -> tuple[str, ...]:
    """The metrics shown beside `primary` in summaries: those of its data marked `summary`."""
    data = METRICS[primary].data
    return tuple(m.name for m in METRICS.values() if m.summary and m.data == data)

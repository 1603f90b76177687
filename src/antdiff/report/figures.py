"""Matplotlib figures, drawn without pyplot so no display or backend is needed."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from antdiff.errors import replacing
from antdiff.metricrows import StepRow
from antdiff.metrics.declare import METRICS, PRIMARY
from antdiff.tasks import IntervalPartition


def plot_partition(
    partition: IntervalPartition,
    log_snr: np.ndarray,
    path: str | Path | IO[bytes] | None = None,
    title: str = "",
) -> Figure:
    """log-SNR over t, with each interval shaded and its bounds marked."""
    t = np.arange(len(log_snr))
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    ax.plot(t, log_snr, color="black", lw=1.5)
    colors = colormaps["tab10"]
    for i, (l, r) in enumerate(partition.intervals):
        ax.axvspan(l - 0.5, r + 0.5, color=colors(i % 10), alpha=0.25, lw=0)
        mid = ax.get_xaxis_transform()
        ax.text((l + r) / 2, 0.97, str(i), transform=mid, ha="center", va="top", fontsize=8)
        if i:
            ax.axvline(l - 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("log-SNR(t)")
    ax.set_xlim(-0.5, len(log_snr) - 0.5)
    ax.set_title(title or f"{partition.k} intervals over {len(log_snr)} timesteps")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_task_curves(rows: list[StepRow], key: str, ylabel: str, log: bool) -> Figure:
    """One line per task of the per-task values `key` (task_losses, task_weights) of the
    training rows of metrics.jsonl."""
    steps = [r.step for r in rows]
    values = np.array([[np.nan if v is None else v for v in getattr(r, key)] for r in rows])
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    for k in range(values.shape[1]):
        ax.plot(steps, values[:, k], label=f"task {k}", lw=1.2)
    ax.set(xlabel="step", ylabel=ylabel)
    if log and np.nanmin(values) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=min(5, values.shape[1]))
    return fig


def plot_eval_curves(evals: list[tuple[int, dict[str, Any]]]) -> Figure:
    """FD (or SWD for points) and held-out loss per interval over training (--eval-every)."""
    steps = [s for s, _ in evals]
    key = PRIMARY["image"] if PRIMARY["image"] in evals[0][1] else PRIMARY["points"]
    fig = Figure(figsize=(9, 3))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(steps, [e.get(key) for _, e in evals], marker="o")
    ax1.set(xlabel="step", ylabel=f"{key} ({METRICS[key].better} is better)")
    if "heldout" in evals[0][1]:
        per = np.array([[iv["mean"] for iv in e["heldout"]["intervals"]] for _, e in evals])
        for k in range(per.shape[1]):
            ax2.plot(steps, per[:, k], marker=".", label=f"task {k}")
        ax2.set(xlabel="step", ylabel="held-out loss", yscale="log")
        ax2.legend(fontsize=7)
    return fig


def plot_affinity(
    affinity: np.ndarray,
    edges: np.ndarray,
    log_snr: np.ndarray,
    path: str | Path | IO[bytes] | None = None,
) -> Figure:
    """Figure-1-style heat maps on timestep and log-SNR axes (Go et al. 2023), plus the mean
    affinity against the bin gap. `log_snr` [B] is taken at each bin's centre."""
    A = affinity
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax_t, ax_s, ax_g = fig.subplots(1, 3)
    vmin = min(0.0, float(A.min()))
    mesh = ax_t.pcolormesh(edges, edges, A, vmin=vmin, vmax=1, cmap="viridis")
    ax_t.set(xlabel="timestep t", ylabel="timestep t", title="task affinity (timestep)")
    ax_t.invert_yaxis()
    s_edges = _centres_to_edges(log_snr)
    ax_s.pcolormesh(s_edges, s_edges, A, vmin=vmin, vmax=1, cmap="viridis")
    ax_s.set(xlabel="log-SNR", ylabel="log-SNR", title="task affinity (log-SNR)")
    fig.colorbar(mesh, ax=[ax_t, ax_s], shrink=0.85)
    gaps = np.arange(len(A))
    mean = [np.diagonal(A, d).mean() for d in gaps]
    width = float(np.diff(edges).mean())
    ax_g.plot(gaps * width, mean, marker=".")
    ax_g.set(xlabel="|t1 - t2|", ylabel="mean affinity", title="affinity decays with the gap?")
    ax_g.axhline(0, color="grey", lw=0.6)
    _save(fig, path)
    return fig


def plot_transfer(
    result: dict[str, Any], gap_pct: dict[str, Any], path: str | Path | IO[bytes] | None = None
) -> Figure:
    """Bars of NTG_j (mean, +-1 std over seeds, dots per seed) and of the relative held-out gap
    (the loss scale differs by orders of magnitude between intervals)."""
    labels = [f"[{l},{r}]" for l, r in result["intervals"]]
    x = np.arange(len(labels))
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    panels = fig.subplots(1, 2)
    m = result["metric"].upper()
    what = [
        (result["ntg"], f"NTG = {m}(mixture) - {m}(generalist)"),
        (gap_pct, "held-out loss: specialist vs generalist (%)"),
    ]
    for ax, (stats, title) in zip(panels, what, strict=True):
        err = [0.0 if v is None else v for v in stats["std"]]
        mean = np.asarray(stats["mean"])
        ax.bar(x, mean, yerr=err, capsize=3, color=np.where(mean < 0, "tab:red", "tab:blue"))
        for row in stats["per_seed"]:
            ax.plot(x, row, "k.", ms=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set(xlabel="interval (0-based t)", title=title)
    panels[0].set_ylabel("< 0: negative transfer")
    fig.suptitle(
        f"negative transfer, {len(result['seeds'])} seed(s), budget "
        f"{result['settings']['budget']}, generalist {result['settings']['method']}"
    )
    _save(fig, path)
    return fig


def _centres_to_edges(c: np.ndarray) -> np.ndarray:
    """Bin edges from bin centres (midpoints between them, extrapolated at the ends)."""
    if len(c) < 2:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _save(fig: Figure, path: str | Path | IO[bytes] | None) -> None:
    if path is None:
        return
    if not isinstance(path, str | Path):
        fig.savefig(path, dpi=120, format="png", bbox_inches="tight")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")

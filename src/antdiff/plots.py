"""Matplotlib figures, drawn without pyplot so no display or backend is needed."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from antdiff.schedule import NoiseSchedule
from antdiff.tasks import IntervalPartition


def plot_partition(
    partition: IntervalPartition,
    schedule: NoiseSchedule,
    path: str | Path | IO[bytes],
    title: str = "",
) -> None:
    """log-SNR over t, with each interval shaded and its bounds marked."""
    log_snr = schedule.snr_numpy(log=True)
    t = np.arange(schedule.timesteps)
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
    ax.set_xlim(-0.5, schedule.timesteps - 0.5)
    ax.set_title(title or f"{partition.k} intervals on the {schedule.name} schedule")
    fig.tight_layout()
    if isinstance(path, str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")

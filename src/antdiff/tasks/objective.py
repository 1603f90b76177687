"""Named clustering objectives on a noise schedule, and `--clusters` specs such as `log-snr:5`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from antdiff.errors import AntError
from antdiff.schedule import NoiseSchedule
from antdiff.tasks.clustering import (
    COSTS,
    Clustering,
    affinity_cost,
    check_affinity,
    cluster,
    median_cost,
    timestep_cost,
)


def load_affinity(path: str | Path) -> np.ndarray:
    """A square task-affinity matrix from .npy, or .npz with an `affinity` array."""
    p = Path(path)
    if not p.is_file():
        raise AntError(f"affinity file not found: {p}")
    try:
        data = np.load(p, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            if "affinity" not in data:
                raise AntError(f"{p} has no 'affinity' array (found {', '.join(data.files)})")
            data = data["affinity"]
    except (OSError, ValueError) as e:
        raise AntError(f"cannot read affinity file {p}: {e}") from None
    return check_affinity(data)


def cost_matrix(
    objective: str, schedule: NoiseSchedule, affinity: np.ndarray | None = None
) -> np.ndarray:
    """C[l, r] for a named objective: timestep, snr (raw SNR, as the official code), log-snr,
    or affinity."""
    T = schedule.timesteps
    if objective == "timestep":
        return timestep_cost(T)
    if objective == "snr":
        return median_cost(schedule.snr_numpy())
    if objective == "log-snr":
        return median_cost(schedule.snr_numpy(log=True))
    if objective == "affinity":
        if affinity is None:
            raise AntError("the affinity cost needs an affinity matrix (--affinity FILE.npy)")
        return affinity_cost(affinity, T)
    raise AntError(f"unknown clustering cost {objective!r}; choose from {', '.join(COSTS)}")


def cluster_schedule(
    objective: str, k: int, schedule: NoiseSchedule, affinity: np.ndarray | None = None
) -> Clustering:
    if not 1 <= k <= schedule.timesteps:
        raise AntError(f"k must be in 1..{schedule.timesteps} (the number of timesteps), got {k}")
    return cluster(cost_matrix(objective, schedule, affinity), k, objective)


def parse_clusters(spec: str) -> tuple[str, int, str | None]:
    """`timestep:K`, `snr:K`, `log-snr:K` or `affinity:K:FILE` -> (objective, k, file)."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[0] not in COSTS:
        raise AntError(
            f"bad cluster spec {spec!r}; use timestep:K, snr:K, log-snr:K or affinity:K:FILE.npy"
        )
    try:
        k = int(parts[1])
    except ValueError:
        raise AntError(f"bad cluster spec {spec!r}: K must be an integer") from None
    file = parts[2] if len(parts) == 3 else None
    if (parts[0] == "affinity") != (file is not None):
        raise AntError(f"bad cluster spec {spec!r}: only affinity takes a file (affinity:K:FILE)")
    return parts[0], k, file


def partition_from_spec(spec: str, schedule: NoiseSchedule) -> Clustering:
    objective, k, file = parse_clusters(spec)
    affinity = load_affinity(file) if file else None
    return cluster_schedule(objective, k, schedule, affinity)

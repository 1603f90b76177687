"""Named clustering costs on a noise schedule's SNR, and `--clusters` specs such as `log-snr:5`.

The spec `COST:K[:FILE]` names the clustering cost (timestep, snr, log-snr, affinity) and the
number of interval tasks K; the affinity cost reads its matrix from FILE (.npy, or .npz with an
`affinity` array, as `antdiff affinity` writes), or measures it during training (`auto`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from antdiff.errors import AntError
from antdiff.tasks.clustering import (
    COSTS,
    Clustering,
    affinity_cost,
    check_affinity,
    check_size,
    cluster,
    median_cost,
    timestep_cost,
)


class SNRCurve(Protocol):
    """SNR(t) over the timesteps 0..T-1 (a NoiseSchedule is one; tasks/ never imports it)."""

    def snr_numpy(self, log: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed `--clusters` value."""

    cost: str
    k: int
    file: str | None = None

    @property
    def auto(self) -> bool:
        """affinity:K:auto: the matrix is measured during a warm-up of the run itself."""
        return self.file == "auto"

    @classmethod
    def parse(cls, spec: str) -> ClusterSpec:
        """`timestep:K`, `snr:K`, `log-snr:K` or `affinity:K:FILE`."""
        parts = spec.split(":", 2)
        if len(parts) < 2 or parts[0] not in COSTS:
            raise AntError(
                f"bad cluster spec {spec!r}; use timestep:K, snr:K, log-snr:K, affinity:K:FILE "
                "or affinity:K:auto"
            )
        try:
            k = int(parts[1])
        except ValueError:
            raise AntError(f"bad cluster spec {spec!r}: K must be an integer") from None
        if k < 1:
            raise AntError(f"bad cluster spec {spec!r}: K must be >= 1")
        file = parts[2] if len(parts) == 3 else None
        if (parts[0] == "affinity") != (file is not None):
            raise AntError(
                f"bad cluster spec {spec!r}: the affinity cost needs its matrix (affinity:K:FILE) "
                "or affinity:K:auto"
                if file is None
                else f"bad cluster spec {spec!r}: only affinity takes a file (affinity:K:FILE)"
            )
        return cls(parts[0], k, file)


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
    except AntError:
        raise
    except (OSError, ValueError, EOFError):
        raise AntError(f"cannot read affinity file {p}: not a .npy or .npz array file") from None
    return check_affinity(data)


def cost_matrix(cost: str, snr: SNRCurve, affinity: np.ndarray | None = None) -> np.ndarray:
    """C[l, r] of a named cost over the timesteps of `snr`: timestep, snr (raw SNR, as the
    official code), log-snr, or affinity (needs the matrix)."""
    T = len(snr.snr_numpy())
    check_size(T)
    if cost == "timestep":
        return timestep_cost(T)
    if cost == "snr":
        return median_cost(snr.snr_numpy())
    if cost == "log-snr":
        return median_cost(snr.snr_numpy(log=True))
    if cost == "affinity":
        if affinity is None:
            raise AntError("the affinity cost needs an affinity matrix (--affinity FILE.npy)")
        return affinity_cost(affinity, T)
    raise AntError(f"unknown clustering cost {cost!r}; choose from {', '.join(COSTS)}")


def cluster_timesteps(
    cost: str, k: int, snr: SNRCurve, affinity: np.ndarray | None = None
) -> Clustering:
    """The optimal partition of the timesteps of `snr` into k intervals under `cost`."""
    T = len(snr.snr_numpy())
    if not 1 <= k <= T:
        raise AntError(f"k must be in 1..{T} (the number of timesteps), got {k}")
    return cluster(cost_matrix(cost, snr, affinity), k, cost)


def clustering_from_spec(spec: str | ClusterSpec, snr: SNRCurve) -> Clustering:
    """Parse a `--clusters` spec and cluster the timesteps with SNR `snr` accordingly."""
    s = spec if isinstance(spec, ClusterSpec) else ClusterSpec.parse(spec)
    affinity = load_affinity(s.file) if s.file else None
    return cluster_timesteps(s.cost, s.k, snr, affinity)

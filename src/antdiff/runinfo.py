"""The typed run record (`RunInfo`, `run.json`) that a run directory keeps beside its config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from antdiff.errors import AntError
from antdiff.tasks import IntervalPartition

# What older versions recorded as the clustering cost while an affinity:K:auto run warmed up
# (its provisional tasks are the equal intervals of the "timestep" cost).
LEGACY_WARMUP = "warm-up"


@dataclass(frozen=True)
class RunInfo:
    """What a run directory records beside its config (`run.json`): the data's shape and the
    resolved model and tasks, enough to rebuild the model without loading the data."""

    kind: str  # image | latent | points
    shape: tuple[int, ...]  # one sample: (C, H, W) or (2,)
    num_classes: int  # 0: unconditional
    model: str  # the resolved model name (never "auto")
    vae: str | None  # the AutoencoderKL of a latent run
    num_train: int  # training samples
    partition: IntervalPartition  # the K interval tasks
    clustering_cost: str  # the cost the partition minimises
    # affinity:K:auto before its tasks are chosen: vanilla training over provisional intervals
    warming_up: bool = False

    @property
    def size(self) -> int:
        """Side length of images or latents; 0 for points."""
        return 0 if self.kind == "points" else int(self.shape[-1])

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(shape=list(self.shape), partition=self.partition.to_dict())
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunInfo:
        try:
            values = {f.name: d[f.name] for f in fields(cls) if f.name != "warming_up"}
        except KeyError as e:
            raise AntError(f"run.json lacks {e.args[0]!r}") from None
        cost, warming_up = recorded_tasks(values["clustering_cost"], d.get("warming_up", False))
        values.update(
            shape=tuple(d["shape"]),
            partition=IntervalPartition.from_dict(d["partition"]),
            clustering_cost=cost,
            warming_up=warming_up,
        )
        return cls(**values)


def recorded_tasks(cost: str, warming_up: bool) -> tuple[str, bool]:
    """(clustering cost, warming up) of a record, also of one written by an older version."""
    if cost == LEGACY_WARMUP:
        return "timestep", True
    return cost, bool(warming_up)

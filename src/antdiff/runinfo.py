"""The typed run record (`RunInfo`, `run.json`) that a run directory keeps beside its config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from antdiff.errors import AntError
from antdiff.tasks import IntervalPartition


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
            values = {f.name: d[f.name] for f in fields(cls)}
        except KeyError as e:
            raise AntError(f"run.json lacks {e.args[0]!r}") from None
        values.update(
            shape=tuple(d["shape"]), partition=IntervalPartition.from_dict(d["partition"])
        )
        return cls(**values)

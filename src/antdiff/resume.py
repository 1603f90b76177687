"""What a resumed run may change, and the run record it continues from."""

from __future__ import annotations

from dataclasses import replace

from antdiff.config import TrainConfig
from antdiff.errors import AntError
from antdiff.rundir import Checkpoint
from antdiff.runinfo import RunInfo
from antdiff.tasks import IntervalPartition

# Config keys that change only the outputs of a run, never its weights.
OUTPUTS = {
    "out",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_samples",
    "sampler",
    "sample_steps",
    "guidance",
    "device",
    "eval_every",
    "eval_num",
}
# What may change on --resume: outputs, the steps, and the learning rate and clipping (to
# continue a run that diverged with a lower --lr).
RESUMABLE = OUTPUTS | {"steps", "lr", "grad_clip"}


def checkpoint_info(info: RunInfo, ckpt: Checkpoint) -> RunInfo:
    """The run record as of a checkpoint: its tasks (an affinity:K:auto run may have chosen
    them after the checkpoint was written)."""
    partition = IntervalPartition.from_dict(ckpt.state["partition"])
    cost = ckpt.state.get("clustering_cost", info.clustering_cost)
    return replace(info, partition=partition, clustering_cost=cost)


def check_resumable(saved: TrainConfig, wanted: TrainConfig) -> None:
    """Refuse to resume a run with settings that change what it trains."""
    old, new = saved.to_dict(), wanted.to_dict()
    diff = sorted(k for k in old if k not in RESUMABLE and old[k] != new[k])
    if diff:
        detail = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff)
        raise AntError(f"{wanted.out} was trained with another config ({detail})")

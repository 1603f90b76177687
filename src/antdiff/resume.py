"""What a resumed run may change, and the run record it continues from."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from antdiff.config import TrainConfig
from antdiff.errors import AntError
from antdiff.rundir import LEGACY_KEYS, Checkpoint, RunDir
from antdiff.runinfo import RunInfo, recorded_tasks
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
    them after the checkpoint was written). A checkpoint written during the warm-up holds the
    measurement's state ("auto"), also one that does not record `warming_up`."""
    state = ckpt.state
    partition = IntervalPartition.from_dict(state["partition"])
    warming_up = state.get("warming_up", state.get("auto") is not None)
    cost, warming_up = recorded_tasks(
        state.get("clustering_cost", info.clustering_cost), warming_up
    )
    return replace(info, partition=partition, clustering_cost=cost, warming_up=warming_up)


def check_resumable(saved: TrainConfig, wanted: TrainConfig) -> None:
    """Refuse to resume a run with settings that change what it trains."""
    old, new = saved.to_dict(), wanted.to_dict()
    diff = _differing(old, new)
    if diff:
        detail = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff)
        raise AntError(f"{wanted.out} was trained with another config ({detail})")


def check_checkpoint(run: RunDir, ckpt: Checkpoint) -> None:
    """Refuse a run whose config.json no longer says what its checkpoint's weights were
    trained with: the checkpoint records its own config, and every field that changes the math
    (all but `RESUMABLE`) must agree, or a resume, sample, evaluation or export would silently
    treat the weights as another model (DDPM weights sampled as a flow, other intervals)."""
    saved = ckpt.state.get("config")
    if not isinstance(saved, dict):  # a checkpoint that does not record its config
        return
    old = _plain({LEGACY_KEYS.get(k, k): v for k, v in saved.items()})
    new = _plain(run.cfg.to_dict())
    diff = _differing(old, new)
    if diff:
        detail = ", ".join(f"{k} {new[k]!r} there, {old[k]!r} in it" for k in diff[:4])
        config = run.path / "config.json"
        raise AntError(
            f"{config} does not match its checkpoint {ckpt.path.name} ({detail}); "
            "put back the values the checkpoint was trained with"
        )


def _differing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields both configs have, that a resume may not change, and that differ."""
    return sorted(k for k in old if k in new and k not in RESUMABLE and old[k] != new[k])


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """As JSON holds them (tuples as lists), so that config.json and a checkpoint compare."""
    return json.loads(json.dumps(values))

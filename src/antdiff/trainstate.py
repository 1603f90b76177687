"""The state of a training run, saved and restored part by part: every stateful object writes
and reads its own entry of the checkpoint through its `state_dict` / `load_state_dict`, as
accelerate's `save_state` does with the objects registered for checkpointing.

A checkpoint's `state` holds `step`, `config`, `partition` and `clustering_cost` (what the run
trained with), then one entry per part: `auto`, `optimizer`, `method`, `weighting`, `sampler`
(the timestep sampler), `ema` (its counters), `scaler` and `rng`. The raw and the EMA weights go
to their own files (`RunDir.save_checkpoint`). Checkpoints of older versions lack `weighting`
and `sampler`; those parts then start as built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Protocol

import torch
from diffusers.training_utils import EMAModel
from torch import nn

from antdiff.build import Components
from antdiff.config import TrainConfig
from antdiff.diffusion import Weighting
from antdiff.errors import AntError
from antdiff.mtl import MTLMethod
from antdiff.rundir import Checkpoint
from antdiff.runinfo import RunInfo
from antdiff.tasks import TimestepSampler


class Stateful(Protocol):
    """A checkpoint part, by torch's convention."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class TorchRNG:
    """torch's global CPU generator (dropout and the like) as a checkpoint part."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])


class EMACounters:
    """The EMA's counters as a checkpoint part; its shadow weights are saved by parameter name
    in their own file and come back as `shadow_params` on loading."""

    def __init__(self, ema: EMAModel, device: torch.device) -> None:
        self.ema, self.device = ema, device

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.ema.state_dict())
        state.pop("shadow_params")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)
        self.ema.to(self.device)


class TrainState:
    """The model, its EMA, the optimizer and the run's components (method, weighting, timestep
    sampler, auto-cluster measurement), with the step they reached."""

    def __init__(self, cfg: TrainConfig, parts: Components, device: torch.device) -> None:
        self.cfg, self.parts, self.device = cfg, parts, device
        self.model = parts.model.to(device)
        parts.method.to(device)
        parts.weighting.to(device)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(self.model.parameters())},
                *parts.method.param_groups(),
                *parts.weighting.param_groups(),
            ],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        self.ema = EMAModel(self.model.parameters(), decay=cfg.ema_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.step = 0

    def stateful(self) -> dict[str, Stateful | None]:
        """The parts by their checkpoint key, in the checkpoint's order (None: absent)."""
        return {
            "auto": self.parts.auto,
            "optimizer": self.optimizer,
            "method": self.parts.method,
            "weighting": self.parts.weighting,
            "sampler": self.parts.timestep_sampler,
            "ema": EMACounters(self.ema, self.device),
            "scaler": self.scaler,
            "rng": TorchRNG(),
        }

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's `state`: what the run trained with, then every part's own state."""
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "partition": self.parts.partition.to_dict(),
            "clustering_cost": self.parts.info.clustering_cost,
            "warming_up": self.parts.info.warming_up,
            **{key: None if p is None else p.state_dict() for key, p in self.stateful().items()},
        }

    def weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(raw weights, EMA weights), both by parameter name."""
        names = [n for n, _ in self.model.named_parameters()]
        shadow = self.ema.state_dict()["shadow_params"]
        return self.model.state_dict(), dict(zip(names, shadow, strict=True))

    def load(self, ckpt: Checkpoint) -> None:
        """Every part as `ckpt` saved it; the model's learning rate stays the config's (a
        method's own groups, such as UW's log-variances, keep theirs)."""
        names = [n for n, _ in self.model.named_parameters()]
        try:
            self.model.load_state_dict(ckpt.weights)
            ema = {**ckpt.state["ema"], "shadow_params": [ckpt.ema[n] for n in names]}
            state = {**ckpt.state, "ema": ema}
            for key, part in self.stateful().items():
                if part is not None and state.get(key):  # None or {}: nothing saved
                    part.load_state_dict(state[key])
        except (RuntimeError, ValueError, KeyError) as e:
            raise AntError(
                f"checkpoint {ckpt.path} does not fit this model: {e}".splitlines()[0]
            ) from None
        self.optimizer.param_groups[0]["lr"] = self.cfg.lr
        self.step = ckpt.step

    @contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """The model with its EMA weights, in eval mode; the training weights come back after."""
        params = list(self.model.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        self.model.eval()
        try:
            yield self.model
        finally:
            self.ema.restore(params)
            self.model.train()

    def use_tasks(
        self,
        info: RunInfo,
        timestep_sampler: TimestepSampler,
        method: MTLMethod,
        weighting: Weighting,
    ) -> None:
        """Train from now on over the tasks of `info` with these components (the choice of an
        affinity:K:auto run); the parameter groups of new ones join the optimizer."""
        method.to(self.device)
        weighting.to(self.device)
        groups = list(method.param_groups())
        if weighting is not self.parts.weighting:
            groups += weighting.param_groups()
        self.parts = replace(
            self.parts,
            info=info,
            timestep_sampler=timestep_sampler,
            method=method,
            weighting=weighting,
            auto=None,
        )
        for group in groups:
            self.optimizer.add_param_group(group)

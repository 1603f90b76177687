"""A run directory whose checkpoint was written by the trainer before each stateful part saved
itself (one dict built inline, field by field) still resumes exactly: the format only gained
the `warming_up` flag (an affinity:K:auto run's provisional tasks, formerly a sentinel cost)."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from antdiff import checkpoint
from antdiff.config import make_config
from antdiff.train import Trainer

# The keys of a checkpoint's state.pt, in the order the earlier trainer wrote them.
STATE_KEYS = [
    "step",
    "config",
    "partition",
    "clustering_cost",
    "auto",
    "optimizer",
    "method",
    "weighting",
    "sampler",
    "ema",
    "scaler",
    "rng",
]
# Today's keys: the same, and the warm-up flag after the clustering cost.
NEW_KEYS = [*STATE_KEYS[:4], "warming_up", *STATE_KEYS[4:]]
SETTINGS = {
    "dataset": "digits",
    "batch_size": 16,
    "timesteps": 20,
    "sample_steps": 2,
    "steps": 6,
    "log_every": 3,
    "checkpoint_every": 100,
    "method": "uw",  # a method with parameters and its own optimizer group
    "weighting": "edm2",  # a weighting with parameters and its own optimizer group
    "timestep_sampling": "loss-aware:1",  # a timestep sampler with state
}


def write_legacy_checkpoint(trainer: Trainer) -> None:
    """What the trainer's `save()` wrote before the state moved out of it, verbatim in layout."""
    parts, state = trainer.parts, trainer.state
    names = [n for n, _ in state.model.named_parameters()]
    ema_state = dict(state.ema.state_dict())
    shadow = ema_state.pop("shadow_params")
    saved = {
        "step": trainer.step,
        "config": trainer.cfg.to_dict(),
        "partition": parts.partition.to_dict(),
        "clustering_cost": parts.info.clustering_cost,
        "auto": parts.auto.state_dict() if parts.auto is not None else None,
        "optimizer": state.optimizer.state_dict(),
        "method": parts.method.state_dict(),
        "weighting": parts.weighting.state_dict(),
        "sampler": parts.timestep_sampler.state_dict(),
        "ema": ema_state,
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "rng": {"torch": torch.get_rng_state()},
    }
    trainer.run.save_checkpoint(
        trainer.step,
        state.model.state_dict(),
        dict(zip(names, shadow, strict=True)),
        saved,
        keep=2,
    )


def test_a_checkpoint_of_the_earlier_layout_resumes_exactly(tmp_path: Path) -> None:
    whole = make_config({**SETTINGS, "out": str(tmp_path / "whole")})
    with Trainer.start(whole) as trainer:
        assert list(trainer.state.state_dict()) == NEW_KEYS
        trainer.fit()
    cut = make_config({**SETTINGS, "out": str(tmp_path / "cut")})
    with Trainer.start(cut) as trainer:
        for _ in range(3):
            trainer.train_step()
        write_legacy_checkpoint(trainer)
    with Trainer.start(cut, resume=True) as trainer:
        assert trainer.step == 3
        assert int(trainer.parts.timestep_sampler.counts.sum()) > 0  # the sampler's state
        trainer.fit()
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(checkpoint.latest(tmp_path / "whole") / name)
        b = load_file(checkpoint.latest(tmp_path / "cut") / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = torch.load(checkpoint.latest(tmp_path / "whole") / "state.pt", weights_only=False)
    b = torch.load(checkpoint.latest(tmp_path / "cut") / "state.pt", weights_only=False)
    assert list(a) == list(b) == NEW_KEYS
    torch.testing.assert_close(b["method"], a["method"])
    torch.testing.assert_close(b["weighting"], a["weighting"])
    torch.testing.assert_close(b["sampler"], a["sampler"])

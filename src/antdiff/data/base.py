"""The in-memory data set every loader returns, and the on-disk cache folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from antdiff.errors import AntError

Kind = Literal["image", "points", "latent"]


@dataclass
class Dataset:
    """A whole data set in memory; ``labels`` index 0..num_classes-1 (None when unlabelled)."""

    x: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    kind: Kind
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    vae: str | None = None  # the VAE that made the latents (kind == "latent"), for decoding
    # a fixed held-out order (data/curate.py): `split` takes its first entries, whatever the seed
    heldout_order: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images and latents, (2,) for points."""
        return tuple(self.x.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def size(self) -> int:
        """Side length of square images/latents; 0 for points (what build_model expects)."""
        return 0 if self.kind == "points" else int(self.x.shape[-1])

    def subset(self, index: torch.Tensor) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        return replace(self, x=self.x[index], labels=labels, heldout_order=None)

    def split(self, holdout: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Deterministic (train, held-out) split; held-out = the first ``holdout`` samples of the
        data set's fixed order when it has one, else a seeded random ``holdout`` samples."""
        if self.heldout_order is not None:
            train, held = fixed_split_indices(self.heldout_order, holdout)
        else:
            train, held = split_indices(len(self), holdout, seed)
        return self.subset(train), self.subset(held)


def split_indices(n: int, holdout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, held-out) indices; held-out = first ``holdout`` of a seeded permutation."""
    if not 0 < holdout < n:
        raise AntError(f"holdout must be in 1..{n - 1}, got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def fixed_split_indices(order: torch.Tensor, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, held-out) indices; held-out = the first ``holdout`` entries of ``order``."""
    n = len(order)
    if not 0 < holdout < n:
        raise AntError(f"holdout must be in 1..{n - 1}, got {holdout}")
    return order[holdout:].sort().values, order[:holdout].sort().values


def cache_dir() -> Path:
    """``$ANTDIFF_CACHE`` or ``~/.cache/antdiff`` (latents, feature nets)."""
    return Path(os.environ.get("ANTDIFF_CACHE") or Path.home() / ".cache" / "antdiff")

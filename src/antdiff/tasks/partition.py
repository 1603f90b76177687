"""Timesteps as tasks: k contiguous, inclusive intervals [l, r] that cover 0..T-1 exactly.

The paper (Go et al. 2023, Sec. 4) treats denoising at timestep t as task D^t and groups the T
tasks into k interval clusters I_i = [l_i, r_i]; each interval is then one task for an MTL method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from antdiff.errors import AntError


@dataclass(frozen=True)
class IntervalPartition:
    """k inclusive intervals over 0..T-1, validated on construction."""

    intervals: tuple[tuple[int, int], ...]
    timesteps: int

    def __post_init__(self) -> None:
        ivs = tuple((int(l), int(r)) for l, r in self.intervals)
        object.__setattr__(self, "intervals", ivs)
        T = int(self.timesteps)
        if T < 1:
            raise AntError(f"timesteps must be >= 1, got {T}")
        if not ivs:
            raise AntError("a partition needs at least one interval")
        if ivs[0][0] != 0 or ivs[-1][1] != T - 1:
            raise AntError(f"intervals must start at 0 and end at {T - 1}, got {list(ivs)}")
        for i, (l, r) in enumerate(ivs):
            if l > r:
                raise AntError(f"interval {i} is empty: [{l}, {r}]")
            if i and l != ivs[i - 1][1] + 1:
                raise AntError(f"intervals {i - 1} and {i} are not contiguous: {list(ivs)}")

    @classmethod
    def from_bounds(cls, lefts: list[int], timesteps: int) -> IntervalPartition:
        """Partition from the sorted left bounds (the first must be 0)."""
        rights = [l - 1 for l in lefts[1:]] + [timesteps - 1]
        return cls(tuple(zip(lefts, rights, strict=True)), timesteps)

    @classmethod
    def uniform(cls, timesteps: int, k: int) -> IntervalPartition:
        """Equal widths (differing by at most one): the optimum of the `timestep` cost."""
        if not 1 <= k <= timesteps:
            raise AntError(f"k must be in 1..{timesteps}, got {k}")
        return cls.from_bounds([i * timesteps // k for i in range(k)], timesteps)

    @property
    def k(self) -> int:
        return len(self.intervals)

    @property
    def lefts(self) -> torch.Tensor:
        return torch.tensor([l for l, _ in self.intervals], dtype=torch.long)

    @property
    def rights(self) -> torch.Tensor:
        return torch.tensor([r for _, r in self.intervals], dtype=torch.long)

    @property
    def widths(self) -> torch.Tensor:
        return self.rights - self.lefts + 1

    def task_of(self, t: torch.Tensor) -> torch.Tensor:
        """Task id of each timestep (the interval that contains it)."""
        t = torch.as_tensor(t, dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.timesteps):
            raise AntError(f"timesteps must lie in 0..{self.timesteps - 1}")
        return torch.bucketize(t, self.rights.to(t.device), right=False)

    def to_dict(self) -> dict:
        return {"timesteps": self.timesteps, "intervals": [list(iv) for iv in self.intervals]}

    @classmethod
    def from_dict(cls, d: dict) -> IntervalPartition:
        try:
            return cls(tuple(tuple(iv) for iv in d["intervals"]), int(d["timesteps"]))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, AntError):
                raise
            raise AntError(f"not a partition: {d!r}") from None

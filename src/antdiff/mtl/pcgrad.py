"""PCGrad (Yu et al., NeurIPS 2020) as a Gramian weighting, seeded for DDP and exact resume.

For each task i, in a random order over the other tasks j: if g_i^PC . g_j < 0 then
g_i^PC -= (g_i^PC . g_j / |g_j|^2) g_j, always projecting on the *original* g_j (Yu et al.
2020, Algorithm 1). Every g_i^PC stays a linear combination sum_j c_ij g_j, and
all the dot products it needs are entries of the Gramian G, so the weights come from G alone:
g_i^PC . g_j = (G c_i)_j. The update is sum_i g_i^PC of the losses L_i / K, i.e. weights
sum_i c_i / K on the raw gradients (K = number of present tasks).

The orders come from the method's own `torch.Generator` (seed option): every DDP rank draws the
same orders, and the generator state is in `state_dict`, so a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from antdiff.mtl.base import SEED, UPDATE_EVERY, GramianMethod


def pcgrad_weights(gramian: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
    """Weights c with sum_j c_j g_j = sum_i g_i^PC, projecting g_i in `orders[i]`."""
    g = gramian.to(torch.float64)
    k = g.shape[0]
    total = torch.zeros(k, dtype=torch.float64)
    for i in range(k):
        c = torch.zeros(k, dtype=torch.float64)
        c[i] = 1.0
        for j in orders[i]:
            j = int(j)
            if j == i or g[j, j] <= 0:
                continue
            dot = g[j] @ c
            if dot < 0:
                c[j] -= dot / g[j, j]
        total += c
    return total


class PCGrad(GramianMethod):
    """Projecting conflicting gradients; weights from the Gramian only."""

    options = (SEED, UPDATE_EVERY)

    def __init__(self, num_tasks: int, seed: int = 0, update_every: int = 1) -> None:
        super().__init__(num_tasks, update_every)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def draw_orders(self, n: int) -> list[list[int]]:
        """One random projection order per task (n permutations of range(n))."""
        return [torch.randperm(n, generator=self.generator).tolist() for _ in range(n)]

    def solve(self, gramian: Tensor) -> Tensor:
        n = gramian.shape[0]
        return pcgrad_weights(gramian, self.draw_orders(n)) / n

    def get_extra_state(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"

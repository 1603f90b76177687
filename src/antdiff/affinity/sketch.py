"""Seeded random projections of gradients, so that task affinity never holds T full gradients.

A bin's gradient g_b [P] is projected on the fly, s_b = g_b R, by a random R [P, M] that is
generated block by block per parameter and never held whole: count-sketch (feature hashing, a
sparse Rademacher R; O(P) work, the default) or Gaussian (O(P M) work). Cosines of sketches
estimate cosines of gradients with a standard error of about (1 - rho^2) / sqrt(M)
(Johnson-Lindenstrauss; Charikar et al. 2002 for the count-sketch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from antdiff.errors import AntError

BLOCK_ELEMS = 1 << 22  # largest random block (floats) generated at once: 16 MiB
PROJECTIONS = ("countsketch", "gaussian")


def block_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys (numpy's SeedSequence: well mixed, stable)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class GradientSketch:
    """Seeded random projection of flattened gradients [G, P] -> [G, M]; R [P, M] never exists.

    gaussian: s = g R / sqrt(M) with R_ij ~ N(0, 1), rows of each parameter's slice of R drawn
    block by block (at most `block_elems` floats at a time); O(P M) work per gradient.
    countsketch (feature hashing, a sparse Rademacher R with one +-1 per row): s_h(i) += sgn(i)
    g_i; O(P) work, and its inner-product variance never exceeds the Gaussian one.
    Block j of parameter i is drawn from a generator seeded by (seed, i, j).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        dim: int,
        seed: int = 0,
        block_elems: int = BLOCK_ELEMS,
        device: torch.device | str = "cpu",
        kind: str = "countsketch",
    ) -> None:
        if dim < 1:
            raise AntError(f"sketch dimension must be >= 1, got {dim}")
        if kind not in PROJECTIONS:
            raise AntError(f"unknown projection {kind!r}; choose from {', '.join(PROJECTIONS)}")
        self.sizes, self.dim, self.seed, self.kind = [int(n) for n in sizes], int(dim), seed, kind
        per_row = self.dim if kind == "gaussian" else 2
        self.rows = max(1, int(block_elems) // per_row)
        self.device = torch.device(device)
        self.max_block = 0  # most random numbers held at once so far, for tests

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def blocks(self) -> Iterator[tuple[int, int, Tensor, Tensor | None]]:
        """(start, stop) into the flat gradient and the block of R: a dense [rows, M] block
        (gaussian) or bucket indices and signs [rows] (countsketch)."""
        offset = 0
        gen = torch.Generator(self.device)
        for i, n in enumerate(self.sizes):
            for a in range(0, n, self.rows):
                b = min(n, a + self.rows)
                gen.manual_seed(block_seed(self.seed, i, a // self.rows))
                if self.kind == "gaussian":
                    block = torch.randn(b - a, self.dim, generator=gen, device=self.device)
                    sign = None
                else:
                    block = torch.randint(0, self.dim, (b - a,), generator=gen, device=self.device)
                    bits = torch.randint(0, 2, (b - a,), generator=gen, device=self.device)
                    sign = bits * 2.0 - 1.0
                self.max_block = max(self.max_block, block.numel() * (1 if sign is None else 2))
                yield offset + a, offset + b, block, sign
            offset += n

    def project(self, grads: Tensor) -> Tensor:
        """[G, P] flat gradients -> [G, M] sketches (float32)."""
        if grads.ndim != 2 or grads.shape[1] != self.num_params:
            raise AntError(f"expected [G, {self.num_params}] gradients, got {tuple(grads.shape)}")
        out = torch.zeros(grads.shape[0], self.dim, device=self.device)
        for a, b, block, sign in self.blocks():
            g = grads[:, a:b].to(self.device)
            if sign is None:
                out += g @ block
            else:
                out.index_add_(1, block, g * sign)
        return out / math.sqrt(self.dim) if self.kind == "gaussian" else out


def cosine_matrix(rows: Tensor) -> np.ndarray:
    """Pairwise cosines of the rows [B, D] as one product of normalised rows; exact unit diagonal
    and symmetric (float64 result; one float32 copy of the rows, so exact gradients cost 2 B P
    floats at most)."""
    x = rows.detach().float()
    norms = x.norm(dim=1, keepdim=True)  # float32: a float64 norm would copy all rows
    if (norms == 0).any():
        bad = torch.nonzero(norms.squeeze(1) == 0).flatten().tolist()
        raise AntError(f"zero loss gradient for bin(s) {bad}: the cosine is undefined")
    n = x / norms
    c = (n @ n.T).double().cpu().numpy()
    c = np.clip(0.5 * (c + c.T), -1.0, 1.0)
    np.fill_diagonal(c, 1.0)
    return c

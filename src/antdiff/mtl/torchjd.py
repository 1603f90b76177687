"""Any torchjd `Weighting` (MGDA, UPGrad, CAGrad, IMTL-G, Aligned-MTL, ...) on our Gramian.

torchjd (optional extra `ant-diffusion[torchjd]`) maps the Gramian [K, K] of the task gradients
to weights [K] (torchjd's `Weighting`, github.com/TorchJD/torchjd); we use its weights as they
are, on the raw task gradients g_k = grad L_k. Weightings that draw random numbers use the
global torch RNG; we run them inside a forked RNG whose state is the method's own (seeded, in
`state_dict`), so DDP ranks agree and resume is exact.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from antdiff.errors import AntError
from antdiff.mtl.base import SEED, UPDATE_EVERY, GramianMethod

INSTALL_HINT = "pip install 'ant-diffusion[torchjd]'"


def _aggregation() -> ModuleType:
    try:
        return importlib.import_module("torchjd.aggregation")
    except ImportError as exc:
        raise AntError(f"torchjd methods need the optional extra: {INSTALL_HINT} ({exc})") from None


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def torchjd_weightings() -> dict[str, type]:
    """Our names (lower case, no dashes) -> torchjd Weighting classes usable on a Gramian."""
    module = _aggregation()
    base = module.Weighting
    found = {}
    for attr in dir(module):
        cls = getattr(module, attr)
        if attr.endswith("Weighting") and inspect.isclass(cls) and issubclass(cls, base):
            if cls is not base:
                found[_key(attr[: -len("Weighting")])] = cls
    return found


class TorchJDMethod(GramianMethod):
    """`torchjd:NAME`: torchjd's NAMEWeighting applied to the Gramian; options other than the
    declared ones pass on to it (checked by torchjd, after `build_method`'s type checks)."""

    options = (UPDATE_EVERY, SEED)

    def __init__(
        self, num_tasks: int, name: str, update_every: int = 1, seed: int = 0, **options: Any
    ) -> None:
        super().__init__(num_tasks, update_every)
        available = torchjd_weightings()
        cls = available.get(_key(name))
        if cls is None:
            raise AntError(
                f"unknown torchjd weighting {name!r}; choose from {', '.join(sorted(available))}"
            )
        try:
            self.inner = cls(**options)
        except TypeError as exc:
            raise AntError(f"bad options for torchjd:{name}: {exc}") from None
        self.name = name
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.rng_state = gen.get_state()

    def solve(self, gramian: Tensor) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            weights = self.inner(gramian.to(torch.float64))
            self.rng_state = torch.get_rng_state()
        return weights.detach().to(torch.float64)

    def get_extra_state(self) -> dict[str, Any]:
        return {"rng": self.rng_state}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.rng_state = state["rng"]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weighting={self.inner!r}"

"""Gradient accumulation: N micro-batches give the update of one step on their concatenation, for
every method (the model's and the method's own gradients, the method's state after the steps)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from antdiff.errors import AntError
from antdiff.mtl import Accumulation, ant_backward, build_method

K = 3
METHODS = {
    "mean": {},
    "uw": {},
    "famo": {},
    "pcgrad": {"seed": 3},
    "nash": {"update_every": 2},
    "torchjd:upgrad": {},
}
GEN = torch.Generator().manual_seed(0)
X, Y = torch.randn(12, 4, generator=GEN), torch.randn(12, 2, generator=GEN)
IDS = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 1, 0, 1])
COUNTS = torch.bincount(IDS, minlength=K)
SCALE = torch.tensor([1.0, 3.0, 0.3])  # unequal task loss scales


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def loss_fn(net: nn.Module, rows: torch.Tensor):
    """Per-sample losses of the batch rows `rows` (a micro-batch), indexed locally."""

    def fn(index: torch.Tensor) -> torch.Tensor:
        r = rows[index]
        return ((net(X[r]) - Y[r]) ** 2).mean(1) * SCALE[IDS[r]]

    return fn


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("splits", [(6, 6), (5, 3, 4), (12,)])
def test_micro_batches_equal_one_step_on_the_whole_batch(name: str, splits: tuple) -> None:
    if name.startswith("torchjd"):
        pytest.importorskip("torchjd")
    whole, parts = model(), model()
    one = build_method(name, K, **METHODS[name])
    many = copy.deepcopy(one)
    rows = torch.arange(12)
    for _ in range(3):  # nash refreshes at the first and third step, uses cached weights between
        ref = ant_backward(one, loss_fn(whole, rows), IDS, COUNTS, whole)
        acc = Accumulation(many, parts, COUNTS, micro_batches=len(splits))
        for part in torch.split(rows, list(splits)):
            acc.add(loss_fn(parts, part), IDS[part])
        info = acc.step()
        torch.testing.assert_close(info.task_losses, ref.task_losses, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(info.task_weights, ref.task_weights, rtol=1e-5, atol=1e-7)
        for p, q in [
            *zip(whole.parameters(), parts.parameters(), strict=True),
            *zip(one.parameters(), many.parameters(), strict=True),
        ]:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7)
        with torch.no_grad():  # the same SGD step on both
            for p, q in zip(whole.parameters(), parts.parameters(), strict=True):
                p -= 0.1 * p.grad
                q -= 0.1 * q.grad
    for (k, a), b in zip(one.state_dict().items(), many.state_dict().values(), strict=True):
        if torch.is_tensor(a) and a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=k)


def test_bad_use_is_one_clear_error() -> None:
    net = model()
    halves = torch.arange(6), torch.arange(6, 12)
    acc = Accumulation(build_method("uw", K), net, COUNTS, micro_batches=2)
    with pytest.raises(AntError, match="add them all first"):
        acc.step()
    for rows in halves:
        acc.add(loss_fn(net, rows), IDS[rows])
    with pytest.raises(AntError, match="call step"):
        acc.add(loss_fn(net, halves[0]), IDS[halves[0]])
    with pytest.raises(AntError, match="counts of the whole accumulated batch"):
        Accumulation(build_method("uw", K), net, torch.zeros(K), micro_batches=2)
    with pytest.raises(AntError, match="below the local counts"):
        Accumulation(build_method("uw", K), net, torch.ones(K), 1).add(
            loss_fn(net, halves[1]), IDS[halves[1]]
        )

"""ant_backward writes sum_k w_k grad L_k: refreshes, absent tasks, AMP, bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from antdiff.errors import AntError
from antdiff.mtl import (
    GramianMethod,
    LossMethod,
    ant_after_step,
    ant_backward,
    build_method,
    mtl_after_step,
    mtl_backward,
)
from antdiff.mtl.rows import TaskGradients

K = 3
METHODS = ["mean", "uw", "famo", "pcgrad", "nash", "torchjd:upgrad"]


def make_problem(seed: int = 0, batch: int = 10):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(batch, 4, generator=gen)
    y = torch.randn(batch, 2, generator=gen)
    # task ids deliberately not grouped by position
    ids = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 1][:batch])
    per_task_scale = torch.tensor([1.0, 3.0, 0.3])  # unequal task loss scales

    def loss_fn(index: torch.Tensor) -> torch.Tensor:
        err = (model(x[index]) - y[index]) ** 2
        return err.mean(dim=1) * per_task_scale[ids[index]]

    return model, loss_fn, ids


def expected_grads(method, model, loss_fn, ids, counts):
    """sum_k w_k grad L_k computed directly from the definition (a copy of the method)."""
    params = list(model.parameters())
    all_losses = loss_fn(torch.arange(ids.numel()))
    present = counts > 0
    task_losses, task_grads = [], []
    for k in range(K):
        if counts[k] == 0:
            task_losses.append(torch.tensor(0.0))
            task_grads.append([torch.zeros_like(p) for p in params])
            continue
        loss_k = all_losses[ids == k].sum() / counts[k]
        task_losses.append(loss_k.detach())
        task_grads.append(torch.autograd.grad(loss_k, params, retain_graph=True))
    losses = torch.stack(task_losses)
    if isinstance(method, GramianMethod) and method.needs_refresh():
        flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in task_grads])
        weights = method.refresh(flat @ flat.T, present)
    elif isinstance(method, GramianMethod):
        weights = method.cached_weights()
    else:
        assert isinstance(method, LossMethod)
        weights = method.task_weights(losses, present)
    grads = [
        sum(float(weights[k]) * task_grads[k][i] for k in range(K)) for i in range(len(params))
    ]
    return grads, losses, weights


@pytest.mark.parametrize("name", METHODS)
def test_gradient_equals_weighted_sum_of_task_gradients(name: str) -> None:
    model, loss_fn, ids = make_problem()
    method = build_method(name, num_tasks=K, **({"update_every": 2} if name == "nash" else {}))
    counts = torch.bincount(ids, minlength=K)
    for step in range(3):  # nash: refresh, cached, refresh
        reference = copy.deepcopy(method)
        grads, losses, weights = expected_grads(reference, model, loss_fn, ids, counts)
        info = ant_backward(method, loss_fn, ids, counts, model)
        assert info.finite
        gradient_based = name in ("pcgrad", "nash", "torchjd:upgrad")
        assert info.refreshed == (gradient_based and (name != "nash" or step != 1))
        torch.testing.assert_close(info.task_losses, losses.float())
        torch.testing.assert_close(info.task_weights, weights.float(), rtol=1e-5, atol=1e-7)
        for p, g in zip(model.parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad, g.float(), rtol=1e-5, atol=1e-7)
        with torch.no_grad():  # move the model so the next step sees new gradients
            for p in model.parameters():
                p -= 0.1 * p.grad
    assert int(method.step) == 3


def test_uw_parameters_get_their_gradient() -> None:
    model, loss_fn, ids = make_problem()
    method = build_method("uw", num_tasks=K)
    info = ant_backward(method, loss_fn, ids, None, model)
    expected = 0.5 * (1 - info.task_losses / K)  # d/ds of 0.5 (exp(-s) L / K + s) at s = 0
    torch.testing.assert_close(method.log_vars.grad, expected)


@pytest.mark.parametrize("name", METHODS)
def test_absent_task_is_nan_in_log_and_zero_weight(name: str) -> None:
    model, loss_fn, ids = make_problem()
    keep = ids != 1
    index = torch.nonzero(keep).squeeze(1)

    def sub_loss(i: torch.Tensor) -> torch.Tensor:
        return loss_fn(index[i])

    sub_ids = ids[keep]
    counts = torch.bincount(sub_ids, minlength=K)
    method = build_method(name, num_tasks=K)
    reference = copy.deepcopy(method)
    grads, _, _ = expected_grads(reference, model, sub_loss, sub_ids, counts)
    info = ant_backward(method, sub_loss, sub_ids, counts, model)
    assert torch.isnan(info.task_losses[1]) and info.task_weights[1] == 0
    assert torch.isfinite(info.task_losses[[0, 2]]).all()
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["uw", "pcgrad"])
def test_grad_scaler_gives_unscaled_gradient(name: str) -> None:
    model, loss_fn, ids = make_problem()
    plain = build_method(name, num_tasks=K)
    scaled = copy.deepcopy(plain)
    ant_backward(plain, loss_fn, ids, None, model)
    plain_grads = [p.grad.clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    info = ant_backward(scaled, loss_fn, ids, None, model, scaler=scaler)
    assert info.finite
    for p, g in zip(model.parameters(), plain_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-9)
    assert scaler.get_scale() == 2.0**12  # no overflow: unchanged until growth_interval


@pytest.mark.parametrize("name", ["mean", "uw", "pcgrad", "nash"])
def test_overflow_skips_step_and_backs_off_scale(name: str) -> None:
    model, loss_fn, ids = make_problem()
    method = build_method(name, num_tasks=K)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)

    def huge(index: torch.Tensor) -> torch.Tensor:
        return loss_fn(index) * 1e30  # finite in fp32, but scaled gradients overflow

    info = ant_backward(method, huge, ids, None, model, scaler=scaler)
    assert not info.finite
    assert scaler.get_scale() == 2.0**99
    assert int(method.step) == 0
    if isinstance(method, GramianMethod):
        assert not bool(method.has_cached)  # no weights from an overflowed step


@pytest.mark.parametrize("name", ["uw", "pcgrad"])
def test_keep_scaled_leaves_the_scaler_to_the_optimizer(name: str) -> None:
    """keep_scaled: `.grad` (UW's own too) is the plain gradient times the scale and the scaler
    untouched, so the caller's scaler.step/update (accelerate's optimizer) apply it once; an
    overflow is handed over as an inf that makes scaler.step skip and update halve once."""
    model, loss_fn, ids = make_problem()
    plain, scaled = build_method(name, num_tasks=K), build_method(name, num_tasks=K)
    ant_backward(plain, loss_fn, ids, None, model)
    grads = [p.grad.clone() for p in (*model.parameters(), *plain.parameters())]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    info = ant_backward(scaled, loss_fn, ids, None, model, scaler=scaler, keep_scaled=True)
    assert info.finite and scaler.get_scale() == 2.0**10
    for p, g in zip((*model.parameters(), *scaled.parameters()), grads, strict=True):
        torch.testing.assert_close(p.grad, g * 2.0**10, rtol=1e-6, atol=1e-9)
    opt = torch.optim.SGD([*model.parameters(), *scaled.parameters()], lr=0.1)
    ref = [p.detach() - 0.1 * g for p, g in zip(opt.param_groups[0]["params"], grads, strict=True)]
    scaler.step(opt)
    scaler.update()
    for p, r in zip(opt.param_groups[0]["params"], ref, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-8)
    assert scaler.get_scale() == 2.0**11  # one finite step: grown once
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    inf_loss = lambda index: loss_fn(index) * float("inf")  # noqa: E731
    info = ant_backward(scaled, inf_loss, ids, None, model, scaler=scaler, keep_scaled=True)
    assert not info.finite
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**10
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("name", ["mean", "uw", "famo", "pcgrad", "nash"])
def test_non_finite_loss_without_scaler_raises(name: str) -> None:
    model, loss_fn, ids = make_problem()
    method = build_method(name, num_tasks=K)
    before = [p.detach().clone() for p in model.parameters()]

    def nan_loss(index: torch.Tensor) -> torch.Tensor:
        out = loss_fn(index)
        return torch.where(ids[index] == 2, torch.full_like(out, float("nan")), out)

    with pytest.raises(AntError, match="non-finite"):
        ant_backward(method, nan_loss, ids, None, model)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    # with a scaler the same step is a documented skip
    info = ant_backward(method, nan_loss, ids, None, model, torch.amp.GradScaler("cpu"))
    assert not info.finite


def test_bad_inputs_raise_clear_errors() -> None:
    model, loss_fn, ids = make_problem()
    method = build_method("uw", num_tasks=K)
    counts = torch.bincount(ids, minlength=K)
    with pytest.raises(AntError, match="method has 3 tasks"):
        ant_backward(method, loss_fn, ids, torch.tensor([4, 3, 2, 1]), model)
    with pytest.raises(AntError, match=r"lie in 0\.\.2"):
        ant_backward(method, loss_fn, ids + 1, counts, model)
    with pytest.raises(AntError, match="differ from the batch"):
        ant_backward(method, loss_fn, ids, counts + 1, model)
    with pytest.raises(AntError, match="1-D integer"):
        ant_backward(method, loss_fn, ids.float(), counts, model)
    with pytest.raises(AntError, match="per-sample losses"):
        ant_backward(method, lambda i: loss_fn(i).mean(), ids, counts, model)
    with pytest.raises(AntError, match="per-sample losses"):
        ant_backward(build_method("pcgrad", K), lambda i: loss_fn(i)[:1], ids, counts, model)


def test_grad_buffer_is_reused_across_steps() -> None:
    model, loss_fn, ids = make_problem()
    method = build_method("pcgrad", num_tasks=K)
    params = list(model.parameters())
    ant_backward(method, loss_fn, ids, None, model)
    buffer = TaskGradients.reused(method, params).rows
    ant_backward(method, loss_fn, ids, None, model)
    assert TaskGradients.reused(method, params).rows is buffer
    assert buffer.shape == (K, sum(p.numel() for p in params))
    assert not any(isinstance(v, torch.Tensor) for v in vars(method).values())  # not on it


def test_the_former_names_warn_once_per_call_site_and_give_the_same_step() -> None:
    torch.manual_seed(0)
    model, loss_fn, ids = make_problem()
    torch.manual_seed(0)
    twin, twin_loss, _ = make_problem()
    new, old = build_method("pcgrad", num_tasks=K), build_method("pcgrad", num_tasks=K)
    info = ant_backward(new, loss_fn, ids, None, model)
    with pytest.warns(DeprecationWarning, match="call ant_backward"):
        former = mtl_backward(old, twin_loss, ids, None, twin)
    assert torch.equal(info.task_weights, former.task_weights)
    assert all(
        torch.equal(a.grad, b.grad)
        for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # one call site: one warning
            mtl_after_step(old, twin_loss, ids, None, twin)
    assert [type(w.message) for w in caught] == [DeprecationWarning]


def test_after_step_hands_the_same_batch_losses_at_the_new_parameters() -> None:
    model, loss_fn, ids = make_problem()
    counts = torch.bincount(ids, minlength=K)
    calls = []
    counted = lambda index: calls.append(1) or loss_fn(index)  # noqa: E731
    ant_after_step(build_method("uw", num_tasks=K), counted, ids, counts, model)
    assert not calls  # methods that do not observe cost no forward

    method = build_method("famo", num_tasks=K, same_batch=True)
    seen = []
    method.observe = lambda losses, present: seen.append((losses, present))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ant_backward(method, loss_fn, ids, counts, model)
    opt.step()
    ant_after_step(method, loss_fn, ids, counts, model)
    with torch.no_grad():
        per_sample = loss_fn(torch.arange(ids.numel()))
    expected = torch.stack([per_sample[ids == k].mean() for k in range(K)])
    torch.testing.assert_close(seen[0][0], expected)
    assert seen[0][1].tolist() == [True] * K

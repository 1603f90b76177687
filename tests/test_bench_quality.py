"""benchmarks/quality.py: paired summaries, curve reading and the command printed beside a row."""

from __future__ import annotations

import importlib.util
import shlex
import statistics
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).parents[1] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def fake_run(method: str, seed: int, fd: dict[str, float], curve: list[float], secs: float):
    """A result JSON as run_one writes it (only the fields the summary reads)."""
    steps = 100 * (len(curve) - 1)
    final = {g: {"fd": v, "heldout": 0.08 + v / 1000, "heldout_intervals": [v] * 5}
             for g, v in fd.items()}  # fmt: skip
    points = [{"step": 100 * i, "train_seconds": secs * i / (len(curve) - 1), "fd": v,
               "heldout": v / 100} for i, v in enumerate(curve)]  # fmt: skip
    return {"setting": "digits-cond", "method": method, "seed": seed, "steps": steps,
            "train_seconds": secs, "wall_seconds": 2 * secs, "final": final, "curve": points,
            "command": ""}  # fmt: skip


def test_summary_pairs_seeds_and_reads_the_curves(quality, tmp_path) -> None:
    args = quality.parse_args(["--dataset", "digits-cond", "--results", str(tmp_path)])
    van = {0: (20.0, 22.0), 1: (24.0, 25.0), 2: (18.0, 21.0)}  # seed -> FD at g=1.5, g=2.0
    ant = {0: (17.0, 20.0), 1: (23.0, 22.0), 2: (14.0, 20.5)}
    results = []
    for s in range(3):
        results.append(fake_run("vanilla", s, {"1.5": van[s][0], "2.0": van[s][1]},
                                [90, 40, 30, 22], secs=10.0))  # fmt: skip
        results.append(fake_run("ant-uw-affinity", s, {"1.5": ant[s][0], "2.0": ant[s][1]},
                                [80, 30, 20, 18], secs=20.0))  # fmt: skip
    summary = quality.summarize(args, results)
    e = summary["methods"]["ant-uw-affinity"]
    for i, g in enumerate(("1.5", "2.0")):
        diffs = [ant[s][i] - van[s][i] for s in range(3)]
        assert e["guidance"][g]["diff_mean"] == pytest.approx(statistics.fmean(diffs))
        assert e["guidance"][g]["diff_std"] == pytest.approx(statistics.stdev(diffs))
    # the headline numbers are read at the setting's curve guidance (2.0)
    assert e["fd_mean"] == pytest.approx(statistics.fmean(a[1] for a in ant.values()))
    assert e["fd_diff_vs_vanilla"]["mean"] == pytest.approx(-5.5 / 3)
    # vanilla's final curve FD is 22: the method's mean curve (80, 30, 20) gets there at step 200
    assert summary["vanilla_final_curve"] == 22
    assert e["steps_to_vanilla_final"] == 200
    # twice vanilla's time per step: in vanilla's time it affords 150 steps, FD read between
    # the points at 100 (30) and 200 (20)
    assert e["cost_vs_vanilla"] == pytest.approx(2.0)
    assert e["equal_time"]["steps_affordable"] == 150
    assert e["equal_time"]["fd_mean"] == pytest.approx(25.0)
    table = quality.markdown(summary)
    assert "| ant-uw-affinity | -2.67 +/- 1.53 | -1.83 +/- 1.26 |" in table


def test_the_printed_command_reproduces_the_arguments(quality) -> None:
    argv = ["--dataset", "digits", "--methods", "vanilla,ant-uw-affinity", "--seeds", "0,2",
            "--steps", "700", "--curve-num", "300", "--lr", "0.001",
            "--affinity", "aff.npz"]  # fmt: skip
    args = quality.parse_args(argv)
    line = quality.command(args, ["ant-uw-affinity"], [2])
    again = quality.parse_args(shlex.split(line)[2:])
    for key in ("dataset", "steps", "curve_num", "curve_every", "lr", "affinity", "fd_num"):
        assert getattr(again, key) == getattr(args, key), key
    assert again.methods == "ant-uw-affinity" and again.seeds == "2"


def test_unknown_method_is_a_usage_error(quality, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        quality.parse_args(["--methods", "vanilla,nope"])
    assert exc.value.code == 2
    assert "unknown method" in capsys.readouterr().err

"""benchmarks/: paired summaries and curve reading (bench_stats), the tables show the summary's
numbers (bench_tables), every benchmark row is an `antdiff train` command, and the command printed
beside a row reproduces its arguments (quality.py)."""

from __future__ import annotations

import importlib
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from antdiff.cli import train_config

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield {m: importlib.import_module(m) for m in ("bench_stats", "bench_tables", "quality")}
    finally:
        sys.path.remove(str(BENCH))


def fake_run(method: str, seed: int, fd: dict[str, float], curve: list[float], secs: float):
    """A result JSON as quality.run_one writes it (only the fields the summary reads)."""
    steps = 100 * (len(curve) - 1)
    final = {
        g: {"fd": v, "heldout": 0.08 + v / 1000, "heldout_intervals": [v, 2 * v]}
        for g, v in fd.items()
    }
    points = [
        {"step": 100 * i, "train_seconds": secs * i / (len(curve) - 1), "fd": v, "heldout": v / 100}
        for i, v in enumerate(curve)
    ]
    return {
        "setting": "digits-cond",
        "method": method,
        "seed": seed,
        "steps": steps,
        "train_seconds": secs,
        "wall_seconds": 2 * secs,
        "final": final,
        "curve": points,
        "eval": {},
        "config": {"timesteps": 1000},
    }


def test_summary_pairs_seeds_and_reads_the_curves(bench) -> None:
    stats, tables = bench["bench_stats"], bench["bench_tables"]
    van = {0: (20.0, 22.0), 1: (24.0, 25.0), 2: (18.0, 21.0)}  # seed -> FD at g=1.5, g=2.0
    ant = {0: (17.0, 20.0), 1: (23.0, 22.0), 2: (14.0, 20.5)}
    results = []
    for s in range(3):
        results.append(
            fake_run(
                "vanilla", s, {"1.5": van[s][0], "2.0": van[s][1]}, [90, 40, 30, 22], secs=10.0
            )
        )
        results.append(
            fake_run(
                "ant-uw-affinity",
                s,
                {"1.5": ant[s][0], "2.0": ant[s][1]},
                [80, 30, 20, 18],
                secs=20.0,
            )
        )
    summary = stats.summarize(results, guidance="2.0")
    e = summary["methods"]["ant-uw-affinity"]
    for i, g in enumerate(("1.5", "2.0")):
        diffs = [ant[s][i] - van[s][i] for s in range(3)]
        assert e["guidance"][g]["diff_mean"] == pytest.approx(statistics.fmean(diffs))
        assert e["guidance"][g]["diff_std"] == pytest.approx(statistics.stdev(diffs))
    # the headline numbers are read at the setting's curve guidance (2.0)
    assert e["fd_mean"] == pytest.approx(statistics.fmean(a[1] for a in ant.values()))
    assert e["fd_diff_vs_vanilla"]["mean"] == pytest.approx(-5.5 / 3)
    rel = np.mean([ant[s][1] / van[s][1] - 1 for s in range(3)])
    assert e["heldout_intervals_rel_vs_vanilla"] == pytest.approx([rel, rel])
    # vanilla's final curve FD is 22: the method's mean curve (80, 30, 20) gets there at step 200
    assert summary["vanilla_final_curve"] == 22
    assert e["steps_to_vanilla_final"] == 200
    # twice vanilla's time per step: in vanilla's time it affords 150 steps, FD read between
    # the points at 100 (30) and 200 (20)
    assert e["cost_vs_vanilla"] == pytest.approx(2.0)
    assert e["equal_time"]["steps_affordable"] == 150
    assert e["equal_time"]["fd_mean"] == pytest.approx(25.0)
    assert e["equal_time"]["diff_mean"] == pytest.approx(25.0 - 22.0)  # paired at equal time
    # a step cost measured side by side wins over the runs' own clocks
    probed = stats.summarize(
        results, guidance="2.0", costs={"vanilla": 10.0, "ant-uw-affinity": 12}
    )
    assert probed["methods"]["ant-uw-affinity"]["cost_vs_vanilla"] == pytest.approx(1.2)
    summary["heldout_intervals"] = stats.heldout_bounds(results[0])
    assert summary["heldout_intervals"] == [[0, 499], [500, 999]]
    table = tables.markdown(summary)
    for name, m in summary["methods"].items():  # every row shows the summary's own numbers
        assert f"| {name} | 3 | " in table
        assert tables.fmt(m["fd_mean"], m["fd_std"]) in table
        for g in ("1.5", "2.0"):
            assert tables.fmt(m["guidance"][g]["fd_mean"], m["guidance"][g]["fd_std"]) in table


def test_every_row_is_an_antdiff_train_command(bench, tmp_path: Path) -> None:
    quality = bench["quality"]
    np.savez(tmp_path / "a.npz", affinity=np.eye(10))  # the config reads the matrix (K <= bins)
    args = quality.parse_args(["--methods", "all", "--affinity", str(tmp_path / "a.npz")])
    want = {
        "vanilla": ("mean", "uniform", "constant"),
        "min-snr": ("mean", "uniform", "min-snr"),
        "stratified-affinity": ("mean", "stratified", "constant"),
        "ant-uw-p2-timestep": ("uw", "stratified", "p2"),
        "ant-nash-log-snr": ("nash", "stratified", "constant"),
    }
    for method in quality.VARIANTS:
        cfg = train_config(shlex.split(quality.train_flags(args, method, 3)))
        assert cfg.seed == 3 and cfg.steps == args.steps and cfg.dataset == "digits"
        if method in want:
            assert (cfg.method, cfg.timestep_sampling, cfg.weighting) == want[method], method
        auto = "auto" in method or method.endswith("ant")  # --ant: affinity:5:auto inside
        assert ("affinity" in method or auto) == cfg.clusters.startswith("affinity:5:")
        assert auto == cfg.clusters.endswith(":auto")
    cfg = train_config(shlex.split(quality.train_flags(args, "ant-uw-auto-w50", 0)))
    assert cfg.affinity_warmup == 50 and cfg.method == "uw"


def test_the_printed_command_reproduces_the_arguments(bench) -> None:
    quality = bench["quality"]
    argv = [
        "--dataset",
        "digits",
        "--methods",
        "vanilla,ant-uw-affinity",
        "--seeds",
        "0,2",
        "--steps",
        "700",
        "--curve-num",
        "300",
        "--lr",
        "0.001",
        "--affinity",
        "aff.npz",
    ]
    args = quality.parse_args(argv)
    line = quality.reproduce(args, ["ant-uw-affinity"], [2])
    again = quality.parse_args(shlex.split(line)[2:])
    for key in ("dataset", "steps", "curve_num", "curve_every", "lr", "affinity", "fd_num"):
        assert getattr(again, key) == getattr(args, key), key
    assert again.methods == "ant-uw-affinity" and again.seeds == "2"


def test_real_settings_rank_by_fid_and_keep_their_guidances(bench) -> None:
    """28x28 settings: the Inception FID (final and curve) ranks, the classifier FD beside it;
    the printed command carries a guidance sweep and nothing the setting already implies."""
    stats, tables, quality = bench["bench_stats"], bench["bench_tables"], bench["quality"]
    results = []
    for s in range(2):
        for method, fid in (("vanilla", 30.0), ("ant", 26.0 + s)):
            run = fake_run(method, s, {"1.0": fid}, [90, 50, 40, fid], secs=10.0)
            run["final"]["1.0"].update(fid=fid, fd=fid / 10)
            for point in run["curve"]:
                point["fid"] = 2 * point["fd"]
            results.append(run)
    summary = stats.summarize(results)
    ant = summary["methods"]["ant"]
    assert summary["metric"] == "fid" and ant["fid_mean"] == pytest.approx(26.5)
    assert ant["fid_diff_vs_vanilla"]["mean"] == pytest.approx(-3.5)
    assert ant["fd_mean"] == pytest.approx(2.65)  # shown beside it
    assert summary["vanilla_final_curve"] == 60  # the curve's FID
    summary["heldout_intervals"] = stats.heldout_bounds(results[0])
    assert "FID final" in tables.markdown(summary)
    args = quality.parse_args(["--dataset", "animals", "--guidances", "1,3", "--methods", "ant"])
    assert (args.steps, args.curve_every, args.curve_num) == (2500, 1250, 1000)
    assert args.guidances == [1.0, 3.0]
    line = quality.reproduce(args, ["ant"], [0])
    assert line.endswith("--seeds 0 --guidances 1.0,3.0")  # no --curve-num: the setting's
    cfg = train_config(shlex.split(quality.train_flags(args, "ant", 0)))
    assert (cfg.dataset, cfg.conditional, cfg.method, cfg.clusters) == (
        "animals",
        True,
        "uw",
        "affinity:5:auto",
    )


def test_unknown_method_is_a_usage_error(bench, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench["quality"].parse_args(["--methods", "vanilla,nope"])
    assert exc.value.code == 2
    assert "unknown method" in capsys.readouterr().err


def test_flow_rows_pair_with_flow_vanilla_and_fixed_costs_can_exceed_the_budget(bench) -> None:
    stats, tables = bench["bench_stats"], bench["bench_tables"]
    final = [
        ("vanilla", 20.0),
        ("flow-vanilla", 10.0),
        ("flow-ant-uw-auto", 8.0),
        ("ant-uw-affinity", 9.0),
    ]
    results = [
        fake_run(m, s, {"1.0": fd + s}, [90, 40, 30, fd], secs=10.0)
        for s in range(2)
        for m, fd in final
    ]
    summary = stats.summarize(results, overheads={"ant-uw-affinity": 400.0})
    summary["heldout_intervals"] = stats.heldout_bounds(results[0])
    flow = summary["methods"]["flow-ant-uw-auto"]
    assert flow["paired_with"] == "flow-vanilla"
    assert flow["fd_diff_vs_vanilla"]["mean"] == pytest.approx(-2.0)
    assert flow["equal_time"]["diff_mean"] == pytest.approx(-2.0)
    assert "fd_diff_vs_vanilla" not in summary["methods"]["flow-vanilla"]
    manual = summary["methods"]["ant-uw-affinity"]  # a 400-step pre-run in a 300-step budget
    assert manual["fd_diff_vs_vanilla"]["mean"] == pytest.approx(-11.0)
    assert manual["equal_time"] == {"steps_affordable": 0, "step": 0}
    assert "| ant-uw-affinity | 1.00 | 400 | 0 | fixed cost exceeds the budget |" in (
        tables.markdown(summary)
    )

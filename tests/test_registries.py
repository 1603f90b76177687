"""Declarations instead of name checks: every declared option is range-checked the same way in
both spellings, the config checks read what components declare, every number an evaluation
writes is a declared metric, and the typed metrics rows read and write the old JSON unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from antdiff.config import make_config
from antdiff.diffusion.weighting import KINDS, build_weighting
from antdiff.errors import AntError
from antdiff.metricrows import EvalRow, StepRow, TasksRow, row_from_json, row_to_json
from antdiff.metrics import GaussianMixture, evaluate_samples, fd_reference
from antdiff.metrics.declare import METRICS, PRIMARY, SETTINGS, summary_metrics
from antdiff.metrics.features import FeatureNet
from antdiff.mtl import METHODS, build_method
from antdiff.options import Param, check_options, parse_options
from antdiff.tasks import IntervalPartition, build_timestep_sampler
from antdiff.tasks.timesteps import TIMESTEP_SAMPLINGS

PART = IntervalPartition.uniform(1000, 5)
DOCS = Path(__file__).parents[1] / "docs" / "options.md"


def declared() -> list[tuple[str, str, Param]]:
    """(kind, component name, parameter) of every declared option."""
    out = [("sampling", n, p) for n, c in TIMESTEP_SAMPLINGS.items() for p in c.params]
    out += [("weighting", n, p) for n, k in KINDS.items() for p in k.params]
    return out + [("method", n, p) for n, c in METHODS.items() for p in c.options]


def build(kind: str, name: str, param: Param, value: str) -> object:
    """The component with `param` set to `value` (a spec's text; a typed JSON-like value for a
    method's options)."""
    if kind == "sampling":
        return build_timestep_sampler(f"{name}:{param.name}={value}", PART)
    if kind == "weighting":
        return build_weighting(f"{name}:{param.name}={value}")
    typed = value if param.kind is bool else float(value)
    return build_method(name, 3, **{param.name: typed})


def bad_values(p: Param) -> list[str]:
    """Values just outside the range, non-finite ones, and a fraction for an integer."""
    if p.kind is bool:
        return ["2", "maybe"]
    values = ["nan", "inf", "-inf", "1e308" if p.high < 1e308 else "-1e308"]
    if math.isfinite(p.low):
        values.append(repr(p.low) if p.open_low else repr(p.low - max(1e-3, abs(p.low) / 2)))
    if math.isfinite(p.high):
        values.append(repr(p.high) if p.open_high else repr(p.high + max(1e-3, p.high / 2)))
    if p.kind is int:
        values.append(repr(p.low + 1.5))
    return values


@pytest.mark.parametrize(("kind", "name", "param"), declared(), ids=lambda x: getattr(x, "name", x))
def test_every_declared_option_refuses_values_outside_its_range(kind, name, param) -> None:
    if param.size > 1:
        with pytest.raises(AntError, match=f"{param.name} must be a list of {param.size}"):
            build_method(name, 3, **{param.name: [0.5]})
        build_method(name, 3, **{param.name: list(param.default)})
        return
    for value in bad_values(param):
        with pytest.raises(AntError) as err:
            build(kind, name, param, value)
        message = str(err.value)
        assert name in message and param.name in message and param.range_text() in message
        assert "\n" not in message
    default = str(param.default).lower() if kind != "method" else param.default
    if kind == "method":
        build_method(name, 3, **{param.name: default})
    else:
        build(kind, name, param, default)


def test_both_spellings_give_the_same_object_and_repeated_keys_are_refused() -> None:
    a = build_timestep_sampler("logit-normal:0.5,2", PART)
    b = build_timestep_sampler("logit-normal:std=2,mean=0.5", PART)
    c = build_timestep_sampler("logit-normal:0.5,std=2", PART)
    assert (a.mean, a.std) == (b.mean, b.std) == (c.mean, c.std) == (0.5, 2.0)
    assert build_timestep_sampler("loss-aware:1e3", PART).losses.shape == (1000, 1000)
    assert build_weighting("p2:0.5,2") == build_weighting("p2:k=2,gamma=0.5")
    params = METHODS["nash"].options
    assert parse_options("nash", params, "5,none") == check_options(
        "nash", params, {"update_every": 5, "max_grad_norm": None}
    )
    for spec in ("logit-normal:mean=1,mean=1", "logit-normal:0,mean=1", "mode:std=1"):
        with pytest.raises(AntError, match=r"given twice|unknown option"):
            build_timestep_sampler(spec, PART)
    with pytest.raises(AntError, match="positional value"):
        build_weighting("p2:gamma=1,2")
    with pytest.raises(AntError, match="must be an integer"):
        build_method("nash", 3, update_every="5")  # typed mappings take no strings
    with pytest.raises(AntError, match="must be true or false"):
        build_method("famo", 3, same_batch=1)


def test_the_docs_table_lists_every_declared_option() -> None:
    text = DOCS.read_text()
    for _, name, p in declared():
        assert f"| {name} | `{p.name}` | {p.range_text()} |" in text, (name, p.name)


def test_config_checks_read_the_declarations() -> None:
    base = {"dataset": "toy:gaussians8", "model": "mlp", "steps": 2, "out": "unused"}
    for name, cls in TIMESTEP_SAMPLINGS.items():
        cfg = {**base, "method": "mean", "timestep_sampling": name, "clusters": "timestep:3"}
        if cls.shapes_density:
            with pytest.raises(AntError, match="undoes the weight"):
                make_config(cfg)
        else:
            assert make_config(cfg).timestep_sampling == name
    learned = [n for n, k in KINDS.items() if k.learned]
    assert learned == ["edm2"]
    for name, cls in METHODS.items():
        cfg = {**base, "method": name, "weighting": learned[0]}
        if cls.per_task_gradients:
            with pytest.raises(AntError, match="loss-based methods"):
                make_config(cfg)
        else:
            assert make_config(cfg).method == name
    stratified = [n for n, c in TIMESTEP_SAMPLINGS.items() if c.stratified]
    assert stratified == ["stratified", "stratified-loss-aware"]


def test_metric_declarations_cover_every_key_an_evaluation_writes() -> None:
    torch.manual_seed(0)
    net = FeatureNet(8).eval()
    real, fake = torch.rand(300, 1, 8, 8) * 2 - 1, torch.rand(140, 1, 8, 8) * 2 - 1
    image = evaluate_samples(
        fake, real, kind="image", labels=torch.arange(140) % 10, feature_net=net
    )
    image.update(fd_reference(real, feature_net=net))
    mixture = GaussianMixture(torch.tensor([[0.0, 0.0], [2.0, 2.0]]), 0.3)
    points = evaluate_samples(
        torch.randn(50, 2), torch.randn(60, 2), kind="points", mixture=mixture
    )
    for key in [*image, *points, "fid", "heldout"]:
        assert key in METRICS or key in SETTINGS, key
    for data, primary in PRIMARY.items():
        assert METRICS[primary].data == data and METRICS[primary].better == "lower"
        assert all(METRICS[m].data == data for m in summary_metrics(primary))
    assert all(m.better in ("lower", "higher", None) for m in METRICS.values())
    assert METRICS["fd"].format(12.345678) == "12.35"


OLD_ROWS = [
    {
        "step": 10,
        "loss": 0.25,
        "task_losses": [0.1, None, 0.3],
        "task_weights": [0.5, 0.0, 0.5],
        "finite": True,
        "lr": 0.001,
        "skipped": 0,
        "time": 1.5,
        "t_hist": [3, 4, 5],
    },
    {"step": 5, "loss": 0.3, "task_losses": [0.3], "task_weights": [1.0], "finite": True},
    {"step": 20, "time": 3.0, "eval": {"fd": 12.0, "heldout": {"mean": 0.1, "intervals": []}}},
    {"step": 12, "time": 2.0, "tasks": {"intervals": [[0, 499], [500, 999]]}, "note": "kept"},
]


@pytest.mark.parametrize("data", OLD_ROWS)
def test_a_typed_row_round_trips_the_old_json(data: dict) -> None:
    row = row_from_json(data)
    assert isinstance(row, EvalRow if "eval" in data else TasksRow if "tasks" in data else StepRow)
    assert json.dumps(row_to_json(row)) == json.dumps(data)  # same keys in the same order


def test_the_run_directory_writes_and_reads_typed_rows(tmp_path: Path) -> None:
    from antdiff.rundir import RunDir

    run = RunDir.__new__(RunDir)
    run.path = tmp_path
    for data in OLD_ROWS:
        run.append_metrics(row_from_json(data))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == OLD_ROWS
    assert [row_to_json(r) for r in run.metrics()] == OLD_ROWS
    run.truncate_metrics(10)
    assert [r.step for r in run.metrics()] == [10, 5]

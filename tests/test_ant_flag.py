"""`--ant`: one flag for the recommended recipe of each objective, written out in the config."""

import json

import pytest

from antdiff.cli import main, train_config
from antdiff.config import ANT_RECIPES
from antdiff.errors import AntError


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_ant_expands_into_the_objectives_recipe(tmp_path, objective: str) -> None:
    cfg = train_config(["--ant", f"--objective={objective}", f"--out={tmp_path / 'r'}"])
    recipe = ANT_RECIPES[objective]
    assert {key: getattr(cfg, key) for key in recipe} == recipe
    assert recipe["method"] != "mean" and "affinity" in recipe["clusters"]


def test_ant_refuses_a_contradicting_flag(tmp_path) -> None:
    with pytest.raises(AntError, match="--ant means --method uw, not pcgrad"):
        train_config(["--ant", "--method=pcgrad", f"--out={tmp_path / 'r'}"])
    cfg = train_config(["--ant", "--method=uw", "--preset=demo", f"--out={tmp_path / 'r'}"])
    assert cfg.clusters == "affinity:5:auto"  # agreeing values (the demo preset's) are fine


def test_dry_run_shows_the_explicit_options(tmp_path, capsys) -> None:
    assert main(["train", "--ant", "--objective=flow", "--dry-run", f"--out={tmp_path}"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "ant" not in shown
    assert shown["method"] == "anchored:uw"
    assert shown["timestep_sampling"] == "logit-normal:0,1"

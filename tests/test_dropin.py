"""The README's drop-in snippet and examples/dropin.py run as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Use ANT in your own training loop"


@pytest.fixture
def one_thread():
    """A 2-core machine shared by several jobs: more threads make conv layers far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    assert HEADING in text, "README lost its drop-in section"
    section = text.split(HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block after the drop-in heading"
    return match.group(1)


def test_readme_dropin_snippet_runs(one_thread, capsys) -> None:
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    info, unet = namespace["step_info"], namespace["unet"]
    assert info.finite and torch.isfinite(info.task_losses).all()
    assert info.task_weights.shape == (5,) and (info.task_weights > 0).all()
    assert all(torch.isfinite(p).all() for p in unet.parameters())
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_example_script_runs(one_thread) -> None:
    spec = importlib.util.spec_from_file_location("dropin", ROOT / "examples" / "dropin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.main(steps=2, method_name="nash", batch_size=20)
    assert len(history) == 2 and all(v == v for v in history)

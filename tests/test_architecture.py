"""The package's shape: layers import only downwards, no import cycle (function-level imports
included), no library file over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "src" / "antdiff"

# Bottom to top; a module may import its own layer's or lower layers' modules only.
LAYERS = [
    {"errors"},
    {
        "distributed",
        "checkpoint",
        "models",
        "sample_files",
        "data",
        "diffusion",
        "tasks",
        "mtl",
        "progress",
        "signals",
    },
    {"metrics", "analysis.sketch", "analysis.gradients", "integrations", "runinfo"},
    {"validation"},
    {"config"},
    {"rundir", "batch", "autoclusters"},
    {"resume"},
    {"build", "export"},
    {"trainstate", "batchloss"},
    {"train", "evaluate"},
    {"report"},
    {"analysis"},
    {"api"},
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every antdiff module `path` imports anywhere in it (module level or in a function)."""
    found = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join((package or module_name(path)).split(".")[: -node.level + 1] or [])
            for a in node.names:  # `from antdiff import build` imports antdiff.build
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != module_name(path)}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> int:
    """The layer of a module: its own entry (analysis.gradients) or its package's (analysis)."""
    parts = name.split(".")[1:]
    for key in (".".join(parts[:2]), parts[0] if parts else "antdiff"):
        for i, members in enumerate(LAYERS):
            if key in members:
                return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])


def test_layers_import_only_downwards() -> None:
    bad = [
        f"{a} -> {b}"
        for a, deps in graph().items()
        if a != "antdiff"
        for b in deps
        if b != "antdiff" and layer(b) > layer(a)
    ]
    assert not bad, "upward imports: " + ", ".join(sorted(bad))


def test_no_library_file_over_400_lines() -> None:
    long = {p.name: n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long

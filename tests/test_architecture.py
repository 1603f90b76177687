"""The package's shape: folders and top-level modules in layers that import only downwards, no
import cycle (function-level imports included), no module using another module's private names,
and the size limits (library files at most 400 lines as formatted, no `fmt: skip`, classes at
most 250 lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "src" / "antdiff"
MAX_FILE_LINES, MAX_CLASS_LINES = 400, 250
FMT_ESCAPE = r"#\s*fmt:\s*(skip|off)"

# Bottom to top, by folder (a package) or top-level module: a module may import its own layer's
# or lower layers' modules only.
LAYERS = [
    {"errors", "options"},
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
    {"metrics", "affinity", "integrations", "runinfo", "metricrows"},
    {"validation"},
    {"config"},
    {"rundir", "batch"},
    {"resume"},
    {"build", "export"},
    {"trainstate", "batchloss"},
    {"train", "evaluate"},
    {"report"},
    {"analysis"},
    {"api", "cliflags"},
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
    """The layer of a module: its top-level folder's (antdiff.mtl.engine: mtl's) or its own."""
    parts = name.split(".")[1:]
    key = parts[0] if parts else "antdiff"
    for i, members in enumerate(LAYERS):
        if key in members:
            return i
    raise AssertionError(f"{name} is in no layer: add its folder or module to LAYERS")


def test_layers_are_folders_and_top_level_modules() -> None:
    entries = [e for members in LAYERS for e in members]
    assert len(entries) == len(set(entries)), "a name in two layers"
    top = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    top |= {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert set(entries) == top  # every one placed, none split, none stale


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


def test_no_library_file_over_400_lines_and_no_format_escape() -> None:
    """`make lint` enforces ruff format, so counting lines counts them as formatted."""
    files = sorted(ROOT.rglob("*.py"))
    long = {
        str(p.relative_to(ROOT)): n
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long
    escaped = [str(p.relative_to(ROOT)) for p in files if re.search(FMT_ESCAPE, p.read_text())]
    assert not escaped


def test_no_class_over_250_lines() -> None:
    long = {
        f"{module_name(p)}.{node.name}": size
        for p in ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ClassDef)
        and (size := node.end_lineno - node.lineno + 1) > MAX_CLASS_LINES
    }
    assert not long


def test_no_module_uses_another_modules_private_names() -> None:
    known = set(modules())
    bad = [f"{module_name(p)}: {use}" for p in ROOT.rglob("*.py") for use in private_uses(p, known)]
    assert not bad


def private_uses(path: Path, known: set[str]) -> list[str]:
    """`from antdiff.x import _y` and `x._y` (x: another antdiff module bound by an import)."""
    me = module_name(path)
    package = me.rsplit(".", 1)[0] if path.name != "__init__.py" else me
    bound: set[str] = set()  # local names bound to other antdiff modules
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *base.split(".")])
                base = base.rstrip(".")
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in known and full != me:
                    bound.add(a.asname or a.name)
                elif base in known and base != me and _private(a.name):
                    found.append(f"from {base} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known and a.name != me and a.asname:
                    bound.add(a.asname)
                if any(_private(part) for part in a.name.split(".")[1:]):
                    found.append(f"import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and value.id in bound:
                found.append(f"{value.id}.{node.attr}")
            elif ast.unparse(value) in known - {me}:  # antdiff.x._y
                found.append(ast.unparse(node))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")

"""docs/architecture.md's module map is true: the "Imports" column of its table lists exactly
the rows whose modules each row's modules import (at module level or inside a function:
a dependency is a dependency), and app/ has no import cycle between its modules at module
level."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.unit


def _table() -> dict[str, tuple[list[str], set[str]]]:
    """Row name (its first path) -> (its paths, the row names its Imports column lists)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        paths = re.findall(r"`([^`]+)`", cells[0])
        imports = set(re.findall(r"`([^`]+)`", cells[2]))
        rows[paths[0]] = (paths, imports)
    return rows


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Every module of this repository `path` imports (`from app import x` counts as app.x)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for alias in node.names:  # a submodule, or a name defined in `base`
                out.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {m for m in out if m.split(".")[0] in ("app", "workers")}


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _sources() -> list[Path]:
    return [p for p in sorted((ROOT / "app").rglob("*.py")) + sorted((ROOT / "workers").rglob("*.py"))
            if "migrations" not in p.parts]


def _row_of(module: str, rows: dict[str, tuple[list[str], set[str]]]) -> str | None:
    path = module.replace(".", "/") + ("/__init__" if _is_module(module) and "." not in module else "")
    best, length = None, -1
    for name, (paths, _) in rows.items():
        for p in paths:
            prefix = p.rstrip("/")
            if prefix.endswith(".py"):
                prefix = prefix[:-3]
            if (path == prefix or path.startswith(prefix + "/")) and len(prefix) > length:
                best, length = name, len(prefix)
    return best


def test_the_import_column_of_the_module_map_is_what_the_code_imports():
    rows = _table()
    actual: dict[str, set[str]] = {name: set() for name in rows}
    for path in _sources():
        row = _row_of(_module(path), rows)
        assert row is not None, f"{path.relative_to(ROOT)} is in no row of docs/architecture.md's table"
        for imported in _imports(path):
            target = _row_of(imported, rows)
            if target is not None and target != row:
                actual[row].add(target)
    declared = {name: imports for name, (_, imports) in rows.items()}
    assert actual == declared


def test_no_module_of_app_imports_itself_back_at_module_level():
    graph = {_module(p): {m for m in _imports(p, module_level_only=True)} for p in _sources()}
    modules = set(graph)
    graph = {m: {i for i in deps if i in modules and i != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1 and not n.startswith(m + ".") and not m.startswith(n + "."):
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(n):] + [n]))
            if n not in state:
                visit(n, trail + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_domain_reads_no_environment():
    """What the domain needs from the environment (limits, the engines file) is read once at
    a process's edge and installed (app.config.install_for_domain)."""
    readers = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "app" / "domain").rglob("*.py"))
               if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())]
    assert readers == []

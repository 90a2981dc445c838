"""The package's architecture, checked: each stage imports only the stages before it, no module
imports another in a circle, the library never imports Streamlit or the app's helpers, and no
module outgrows a reviewable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "alphalora"

#: Rank of each part of the library: a module may import modules of its own rank or lower.
RANKS = {
    "errors": 0,
    "paths": 0,
    "store": 1,
    "spectral": 2,
    "allocation": 3,
    "finetune": 4,
    "runs": 5,
    "plots": 6,
    "cli": 7,
    "__main__": 8,
    "__init__": 8,
}
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Every ``alphalora…`` module this file imports, at the top or inside a function."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_every_part_has_a_rank() -> None:
    assert {_part(m) for m in _modules()} <= set(RANKS)


def test_stages_import_only_downward() -> None:
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if target == "alphalora":  # the package itself: only __version__ is read from it
                continue
            if RANKS[_part(target)] > RANKS[_part(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = _graph()
    packages = {m for m in graph if (PACKAGE / Path(*m.split(".")[1:]) / "__init__.py").exists()}
    # a package's __init__ naturally "imports" its children when a child is imported; cycles
    # are looked for between plain modules
    edges = {
        m: {t for t in ts if t not in packages} for m, ts in graph.items() if m not in packages
    }
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_library_never_imports_streamlit_or_the_app() -> None:
    bad = []
    for name, path in _modules().items():
        for imported in _imports(path, name):
            if imported.split(".")[0] in ("streamlit", "ui"):
                bad.append(f"{name} imports {imported}")
    assert not bad, bad


@pytest.mark.parametrize("folder", ["alphalora", "ui"])
def test_modules_stay_small(folder: str) -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"

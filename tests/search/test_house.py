"""The house rules of hylo_search, checked on every CI run: no import circles (lazy and TYPE_CHECKING imports
count), each stage folder imports only the stages before it in the data flow, no module over 500 lines, and at
most 8 modules at the package's top level (hylo_search/README.md draws the map)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("hylo_model", "hylo_search")
# The data flow of a study, first to last: a module may import its own stage and the stages before it.
STAGES = ["errors", "paths", "console", "define", "space", "probes", "scoring", "study", "worker", "executors",
          "library", "search", "results", "commands", "cli"]
OUTSIDE_THE_FLOW = {"objectives", "tiny_teacher", "small_teacher"}  # a deprecated re-export; teacher builders


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                prefix = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _circles(_graph()) == []


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "hylo_search" else None


def test_each_stage_imports_only_earlier_stages():
    wrong = []
    for module, targets in _graph().items():
        stage = _stage(module)
        if stage is None or stage in OUTSIDE_THE_FLOW:
            continue
        for target in targets:
            other = _stage(target)
            if other is None or other in OUTSIDE_THE_FLOW:
                assert other not in OUTSIDE_THE_FLOW, f"{module} imports {target}"
                continue
            if STAGES.index(other) > STAGES.index(stage):
                wrong.append(f"{module} ({stage}) imports {target} ({other})")
    assert wrong == []


@pytest.mark.parametrize("path", sorted((REPO / "hylo_search").rglob("*.py")), ids=lambda p: p.name)
def test_no_module_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500


def test_top_level_holds_at_most_8_modules():
    top = sorted(p.name for p in (REPO / "hylo_search").glob("*.py"))
    assert len(top) <= 8, top
    assert {p.name for p in (REPO / "hylo_search").iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {
        "commands", "define", "executors", "library", "probes", "results", "scoring", "search", "small_teacher",
        "space", "worker"}


def test_reading_commands_import_neither_torch_nor_transformers():
    """``pareto``, ``show``, ``list``, ``export``, ``sensitivity`` and the CLI's parser answer quickly: their modules
    must not pull in torch or transformers (about 4 s of imports)."""
    import subprocess
    import sys

    modules = ["hylo_search.cli", "hylo_search.results.front", "hylo_search.results.trial",
               "hylo_search.search.storage", "hylo_search.search.trials", "hylo_search.library.sensitivity"]
    code = (f"import sys; import {', '.join(modules)}; from hylo_search.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""The house's import rules, read from the source (every import, module-level or in a function):
no circle anywhere, and each floor imports only what stands below it."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from tests.source_imports import imported_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "pipelines", "serving", "research", "devstack")
# pipelines may reach serving only to package it (lazily, inside the functions)
PACKAGING = {"pipelines.cli.bento", "pipelines.stages.bento"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def imported(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = imported_names([ast.parse(path.read_text())], package)
    return {m for m in names if m in MODULES and m != name}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def _is_package_edge(a: str, b: str) -> bool:
    """A package's __init__ and its own submodules (re-exports): not a circle between rooms."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets (package-to-own-submodule edges aside)."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = [*stack[stack.index(nxt) :], nxt]
                if not all(_is_package_edge(a, b) for a, b in itertools.pairwise(circle)):
                    found.append(circle)
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def allowed(name: str, target: str) -> bool:
    """Whether module `name` may import `target`, by the floors they stand on."""
    here, there = name.split(".")[0], target.split(".")[0]
    if here == "models":
        return there == "models"  # the ground floor imports nothing of ours
    if here == "serving":
        return there in ("models", "serving")  # the Bento ships models/ and serving/ only
    if here == "pipelines" and there == "serving":
        return name in PACKAGING
    if here == "pipelines" and there in ("research", "devstack"):
        return name.startswith("pipelines.cli.")  # beside the product: only the CLI reaches them
    return True


def test_no_import_circle():
    assert not circles(GRAPH)


def test_each_floor_imports_only_what_stands_below_it():
    wrong = [(name, t) for name, targets in GRAPH.items() for t in targets if not allowed(name, t)]
    assert not wrong, wrong


def test_the_rules_see_a_circle_and_a_wrong_floor():
    graph = {"pipelines.a": {"pipelines.b"}, "pipelines.b": {"pipelines.a"}, "pipelines": set()}
    assert circles(graph) == [["pipelines.a", "pipelines.b", "pipelines.a"]]
    assert circles({"pipelines": {"pipelines.a"}, "pipelines.a": {"pipelines"}}) == []
    assert not allowed("serving.sources", "pipelines.settings")
    assert not allowed("models.io", "serving.bundle")
    assert not allowed("pipelines.stages.register", "serving.build")
    assert not allowed("pipelines.stages.register", "research.baselines")
    assert allowed("pipelines.cli.bento", "serving.build")
    assert "models.spec" in GRAPH["serving.sources"]  # the graph is read from the source

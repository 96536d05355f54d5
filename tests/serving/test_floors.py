"""Two floors: `serving/` never imports `pipelines/` (the Bento ships without Prefect, DVC or
GX), and what serving shares with the pipelines (the registry-to-bundle copier, the
tracking-URI rule) lives on the ground floor, `models/`, which imports nothing above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported(path: Path) -> set[str]:
    """Top-level package of every module `path` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("folder", "above"),
    [("serving", {"pipelines", "research", "devstack"}), ("models", {"serving", "pipelines"})],
)
def test_no_floor_imports_the_one_above(folder, above):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported(path) & above)
        for path in sorted((ROOT / folder).rglob("*.py"))
        if imported(path) & above
    }
    assert not offenders, offenders


def test_serving_and_the_pipelines_share_one_tracking_uri_rule():
    from models import spec
    from pipelines import tracking
    from serving import sources

    assert tracking.tracking_uri is spec.tracking_uri
    assert not hasattr(sources, "default_tracking_uri")

"""Which modules a piece of source imports, read with `ast` (module-level and inside
functions, relative imports resolved): shared by the dvc.yaml deps test and the import rules."""

from __future__ import annotations

import ast


def imported_names(nodes: list[ast.AST], package: str) -> set[str]:
    """Module names imported anywhere inside `nodes`; `from pkg import x` gives `pkg` and
    `pkg.x` (x may be a module). `package`: the package relative imports start from."""
    found: set[str] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import mod`
    return found

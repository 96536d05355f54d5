"""Last pipeline step: champions from the MLflow registry into the BentoML store, then a Bento."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from models.io import atomic_write_json
from pipelines import tracking


def build_bento(root: Path = Path("."), report: Path | None = None) -> dict[str, Any]:
    """Import the registry champions (sha256-verified) and build the Bento; write a report."""
    from serving.build import build_bento as bentoml_build
    from serving.build import import_from_registry

    root = Path(root).resolve()
    started = time.perf_counter()
    tracking.setup(root)
    models_tag = import_from_registry(tracking.tracking_uri(root))
    bento_tag = bentoml_build(root / "serving" / "bentofile.yaml", root)
    info = {
        "models": models_tag,
        "bento": bento_tag,
        "seconds": round(time.perf_counter() - started, 1),
        "serve": f"bentoml serve {bento_tag}",
        "containerize": f"bentoml containerize {bento_tag}",
    }
    atomic_write_json(report or root / "reports" / "bento.json", info)
    return info

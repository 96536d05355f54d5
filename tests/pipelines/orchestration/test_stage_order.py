"""The Prefect runner follows dvc.yaml's file order: that order must be topological.

A stage that depends on another stage's outputs (outs, metrics or plots) comes after it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.orchestration.pipeline_flow import stage_names

ROOT = Path(__file__).resolve().parents[3]


def _paths(entries: list) -> list[str]:
    """Paths of a deps/outs list, whose items are strings or {path: options}."""
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def _substitute(text: str, item: str, variables: dict) -> str:
    text = text.replace("${item}", item)
    for key, value in variables.items():
        if isinstance(value, str | int | float):
            text = text.replace(f"${{{key}}}", str(value))
    return text


def expanded_stages(spec: dict) -> dict[str, dict[str, list[str]]]:
    """stage name (`name@item` for foreach) -> its deps and its outputs, in file order."""
    variables = {k: v for item in spec.get("vars", []) for k, v in item.items()}
    stages: dict[str, dict[str, list[str]]] = {}
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            items = stage["foreach"]
            if isinstance(items, str):
                items = variables[items.strip("${}")]
            bodies = {f"{name}@{item}": (stage["do"], str(item)) for item in items}
        else:
            bodies = {name: (stage, "")}
        for full, (body, item) in bodies.items():
            outputs = [*_paths(body.get("outs")), *_paths(body.get("metrics"))]
            outputs += _paths(body.get("plots"))
            stages[full] = {
                "deps": [_substitute(d, item, variables) for d in _paths(body.get("deps"))],
                "outs": [_substitute(o, item, variables) for o in outputs],
            }
    return stages


def _overlaps(a: str, b: str) -> bool:
    """One path is the other or inside it (a dep on a folder's file, or a file in an out)."""
    pa, pb = Path(a), Path(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


def producers(stages: dict[str, dict[str, list[str]]], dep: str) -> set[str]:
    return {name for name, s in stages.items() if any(_overlaps(dep, o) for o in s["outs"])}


def late_reads(stages: dict[str, dict[str, list[str]]]) -> list[str]:
    """Each dep read from a stage that comes later in file order."""
    order = list(stages)
    return [
        f"{name} reads {dep} from {producer}, which comes after it"
        for i, name in enumerate(order)
        for dep in stages[name]["deps"]
        for producer in producers(stages, dep) - {name}
        if order.index(producer) > i
    ]


def test_every_stage_comes_after_the_stages_whose_outputs_it_reads():
    stages = expanded_stages(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    order = list(stages)
    assert order == stage_names(ROOT), "the flow's stage list is dvc.yaml's"
    assert not late_reads(stages), late_reads(stages)
    readers = [n for n in order if any(producers(stages, d) - {n} for d in stages[n]["deps"])]
    assert readers, "no stage reads another's outputs: the check would check nothing"


def test_the_check_catches_a_stage_moved_before_its_producer():
    spec = {
        "stages": {
            "evaluate": {"cmd": "e", "deps": ["artifacts/models/vae"], "outs": ["metrics"]},
            "train": {"cmd": "t", "deps": ["data"], "outs": ["artifacts/models"]},
        }
    }
    late = late_reads(expanded_stages(spec))
    assert late == ["evaluate reads artifacts/models/vae from train, which comes after it"]
    spec["stages"] = dict(reversed(spec["stages"].items()))
    assert not late_reads(expanded_stages(spec))

"""dvc.yaml's deps cannot drift from the code: every project file a stage's command imports
(transitively, module-level and function-level imports alike) is covered by one of its deps,
and the family list in dvc.yaml is the one in models.spec."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from models.spec import FAMILIES, family_role
from pipelines.cli import COMMANDS
from pipelines.orchestration.pipeline_flow import stage_names
from tests.source_imports import imported_names

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("models", "pipelines", "serving")
SPEC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def module_file(module: str) -> Path | None:
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(modules: set[str]) -> set[Path]:
    """Project files reached from `modules`, with every parent package's __init__.py."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents run first
        path = module_file(module)
        if path is None or path in seen:
            continue
        seen.add(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        todo += sorted(imported_names([ast.parse(path.read_text())], package))
    return seen


def command_files(cmd: str) -> set[Path]:
    """Files a `genops <command> ...` stage imports: the CLI root, the top level of the module
    that holds the command (pipelines.cli.COMMANDS) and that command's own body."""
    assert cmd.startswith("genops "), cmd
    name = cmd.split()[1]
    assert name in COMMANDS, f"no `genops {name}` command in pipelines.cli.COMMANDS"
    module, attribute = COMMANDS[name].split(":")
    path = module_file(module)
    tree = ast.parse(path.read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == attribute]
    assert body, f"{module} has no function {attribute}"
    package = module.rpartition(".")[0]
    # the module's other commands' imports are not this stage's
    return (
        {path}
        | closure({"pipelines.cli"})
        | closure(imported_names(top + body, package) - {module})
    )


def expanded_stages() -> dict[str, dict]:
    out = {}
    for name, stage in SPEC["stages"].items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        for item in FAMILIES:
            text = yaml.safe_dump(stage["do"]).replace("${item}", item)
            out[f"{name}@{item}"] = {**yaml.safe_load(text), "family": item}
    return out


STAGES = expanded_stages()


def test_dvc_yaml_family_list_is_the_one_in_models_spec():
    variables = {k: v for item in SPEC["vars"] for k, v in item.items()}
    assert tuple(variables["families"]) == FAMILIES
    assert stage_names(ROOT) == list(STAGES)
    assert [s for s in STAGES if s.startswith("train@")] == [f"train@{f}" for f in FAMILIES]
    assert family_role("vae") == "families/vae"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_imported_project_file_is_a_dep_of_its_stage(stage):
    spec = STAGES[stage]
    deps = [ROOT / d for d in spec.get("deps", [])]
    files = command_files(spec["cmd"])
    if "family" in spec:  # models.io builds the family class by name (importlib)
        files |= closure({f"models.{spec['family']}.model"})
    missing = sorted(
        str(f.relative_to(ROOT)) for f in files if not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on {missing}"


def test_the_check_catches_a_missing_dep():
    files = command_files("genops register")
    assert ROOT / "pipelines" / "stages" / "register.py" in files
    assert ROOT / "pipelines" / "evaluation" / "leaderboard.py" in files

"""`genops rollback | challenge | canary | history | champions`: the registry's aliases and
decisions by hand, and the canary that decides on live traffic."""

from __future__ import annotations

import json
from pathlib import Path

import click

from models.spec import TASKS


@click.command("rollback")
@click.option("--task", type=click.Choice(list(TASKS)), required=True)
@click.option("--version", required=True, help="Registered model version to make champion.")
def rollback_cmd(task, version) -> None:
    """Move a task's `champion` alias back to an earlier registered version."""
    from pipelines.registry.client import rollback

    previous = rollback(task, version)
    click.echo(f"{task}: champion v{previous} -> v{version}")


@click.command("challenge")
@click.option("--task", type=click.Choice(list(TASKS)), required=True)
@click.option("--version", help="Registered model version to make the task's challenger.")
@click.option("--clear", is_flag=True, help="Remove the task's challenger instead.")
def challenge_cmd(task, version, clear) -> None:
    """Set (or --clear) a task's `challenger` alias: served beside the champion
    (`"model": "challenger"`), on every worker, after the next reload or registry poll."""
    from pipelines.cli.common import fail
    from pipelines.registry.client import set_challenger

    if bool(version) == clear:
        fail("give exactly one of --version N and --clear", 2)
    from mlflow.exceptions import MlflowException

    try:
        previous = set_challenger(task, None if clear else version)
    except (ValueError, MlflowException) as exc:  # the champion itself; no such version
        fail(str(exc), 2)
    click.echo(f"{task}: challenger v{previous} -> {'none' if clear else f'v{version}'}")


@click.command("canary")
@click.option("--task", type=click.Choice(list(TASKS)), required=True)
@click.option(
    "--url",
    default="http://127.0.0.1:3000",
    show_default=True,
    help="The running service whose /metrics judge the canary.",
)
@click.option(
    "--share",
    type=float,
    help="Share of clients sent to the challenger [default: params.yaml canary.share].",
)
@click.option("--window-s", type=float, help="[default: params.yaml canary.window_s]")
@click.option("--min-requests", type=int, help="[default: params.yaml canary.min_requests]")
@click.option(
    "--baseline-s",
    type=float,
    help="Seconds of the champion's traffic read before the canary starts, its latency baseline; "
    "0: none [default: params.yaml canary.baseline_s].",
)
@click.option("--stop", "stop", is_flag=True, help="End a canary left running (by hand).")
@click.option(
    "--params",
    "params_path",
    type=click.Path(path_type=Path),
    default=Path("params.yaml"),
    show_default=True,
)
def canary_cmd(task, url, share, window_s, min_requests, baseline_s, stop, params_path) -> None:
    """Send a share of live traffic to the task's challenger, then promote or roll back.

    Needs a challenger (`genops challenge`). Reads the service's /metrics every poll; rolls
    back at once when the challenger breaches params.yaml's error-rate, p99 or p50-ratio
    budget (the p50 read against the champion's, and against its baseline from the
    `baseline_s` before the canary), and promotes it when the window passes within budget.
    GENOPS_ADMIN_TOKEN makes each change effective on every worker at once (else at the
    service's next registry poll).
    Exit 0: promoted; 3: rolled back, refused (shadow evidence) or undecided (too little
    traffic).
    """
    import dataclasses

    from pipelines.cli.common import fail
    from pipelines.registry.canary import PROMOTED, CanaryBudget, Service, run_canary
    from pipelines.settings import load_params, section

    if stop:
        from pipelines.registry import client as registry

        live = registry.canary(TASKS[task])
        if live is None:
            fail(f"{task} has no canary", 2)
        registry.end_canary(task, live.version, "stopped", "ended by hand", {})
        Service.from_env(url).reload()
        click.echo(f"{task}: canary of v{live.version} ended")
        return
    try:
        budget = CanaryBudget.from_dict(section(load_params(params_path), "canary"))
        overrides = {"share": share, "window_s": window_s, "min_requests": min_requests,
                     "baseline_s": baseline_s}  # fmt: skip
        budget = dataclasses.replace(
            budget, **{k: v for k, v in overrides.items() if v is not None}
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), 2)

    def show(figures: dict) -> None:
        click.echo(
            f"  {figures['window_s']:>6.1f} s  canary {figures['canary_requests']} requests, "
            f"{figures['canary_errors']} errors, p99 {_ms(figures['canary_p99_ms'])}; champion "
            f"{figures.get('champion_requests', 0)}, p99 {_ms(figures.get('champion_p99_ms'))}",
            err=True,
        )

    if budget.baseline_s > 0:
        click.echo(f"  reading the champion's baseline for {budget.baseline_s:g} s", err=True)
    try:
        outcome = run_canary(task, budget, Service.from_env(url), progress=show)
    except ValueError as exc:
        fail(str(exc), 2)
    click.echo(json.dumps(outcome.to_dict(), indent=2))
    if outcome.event != PROMOTED:
        raise SystemExit(3)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


@click.command("history")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the Markdown here.")
def history_cmd(out: Path | None) -> None:
    """Every promotion decision and rollback across data versions (from the registry)."""
    from pipelines.registry.client import history
    from pipelines.registry.reports import history_markdown

    text = history_markdown(history())
    if out:
        out.write_text(text)
    click.echo(text)


@click.command("champions")
@click.option("--url", help="A running service: add each challenger's live shadow and canary "
              "figures from its /metrics (every worker summed).")  # fmt: skip
def champions_cmd(url: str | None) -> None:
    """Show each task's champion, its challenger and canary, where it has them."""
    from pipelines.registry.client import registry_state

    state = registry_state()
    if url:
        from pipelines.monitoring.live import canary_figures, read_metrics, shadow_figures

        samples = read_metrics(url)
        for task, champion in state.items():
            held = (champion or {}).get("challenger")
            if held:
                held["live"] = shadow_figures(samples, task, held["version"]) | canary_figures(
                    samples, task, held["version"], champion["version"]
                )
    click.echo(json.dumps(state, indent=2))

"""`rollout plan`: validate the plan and show where each step stands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rollout.cli.app import (
    FormatOption,
    _parse_time,
    _runtime,
    app,
    reports_errors,
)
from rollout.core.errors import EXIT_BAD_INPUT
from rollout.core.output import Format, emit, labelled, stderr

plan_app = typer.Typer(help="The rollout plan: validate and inspect it.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")


# --- plan --------------------------------------------------------------------------


@plan_app.command("check")
@reports_errors
def plan_check(
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Argument(help="The plan (default: $ROLLOUT_PLAN, plans/npm-2022.yaml).")
    ] = None,
) -> None:
    """Validate a plan file: dates in order, known cohorts, no overlapping brown-outs."""
    from rollout.core.plan import parse_plan, read_plan_text

    path = file or _runtime(ctx).settings.plan_path
    plan, problems = parse_plan(read_plan_text(path), path)
    for problem in problems:
        stderr.print(labelled("error:", "bold red", problem))
    if problems:
        raise typer.Exit(EXIT_BAD_INPUT)
    assert plan is not None
    stderr.print(
        f"{path}: plan {plan.name} is valid: {len(plan.cohorts)} cohorts, "
        f"{len(plan.phases)} phases, {len(plan.brownouts)} brown-outs",
        highlight=False,
    )


@plan_app.command("show")
@reports_errors
def plan_show(
    ctx: typer.Context,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Show states as of this UTC time (default: now)."),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """The plan's timeline and each step's state: pending, previewed, applied, rolled back."""
    from rollout.phases.timeline import step_states

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    moment = _parse_time(at) if at else None
    states = step_states(runtime.registry, plan, moment, settings.reports_dir)
    emit(
        [
            {
                "on": s.step.on,
                "step": s.step.label,
                "state": s.state,
                "when": s.at.replace(microsecond=0) if s.at else None,
                "run": s.run_id[:12] if s.run_id and fmt is Format.table else s.run_id,
                "by": s.actor,
                "detail": s.detail,
            }
            for s in states
        ],
        fmt,
        title=f"plan {plan.name}",
        columns=["on", "step", "state", "when", "run", "by", "detail"],
    )
    interrupted = [s for s in states if s.state == "interrupted"]
    for s in interrupted:
        stderr.print(
            f"{s.step.label}: run {s.run_id} stopped before finishing; re-run it to resume "
            "(done batches are not redone)",
            highlight=False,
        )

"""`rollout plan`: validate the plan and show where each step stands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rollout.cli.app import (
    AsOfOption,
    FormatOption,
    _day_or_latest,
    _given_day,
    _parse_time,
    _runtime,
    app,
    path_given,
    reports_errors,
)
from rollout.core.controls import shell_word, visible
from rollout.core.errors import EXIT_BAD_INPUT
from rollout.core.output import Format, emit, labelled, stderr
from rollout.core.words import counted

if TYPE_CHECKING:
    from rollout.core.plan import Plan

plan_app = typer.Typer(help="The rollout plan: validate and inspect it.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")


# --- plan --------------------------------------------------------------------------


@plan_app.command("check")
@reports_errors
def plan_check(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            parser=path_given, help="The plan (default: $ROLLOUT_PLAN, plans/npm-2022.yaml)."
        ),
    ] = None,
) -> None:
    """Validate a plan file: dates in order, known cohorts, no overlapping brown-outs."""
    from rollout.core.plan import parse_plan, plan_warnings, read_plan_text

    path = file or _runtime(ctx).settings.plan_path
    plan, problems = parse_plan(read_plan_text(path), path)
    for problem in problems:
        stderr.print(labelled("error:", "bold red", problem))
    if problems:
        raise typer.Exit(EXIT_BAD_INPUT)
    assert plan is not None
    # Against what the registry did under this plan's earlier versions, where there is one.
    errors, warnings = _drift(ctx, plan)
    _say_drift(errors, plan_warnings(plan) + warnings)
    if errors:
        raise typer.Exit(EXIT_BAD_INPUT)
    sizes = ", ".join(
        counted(len(parts), what)
        for parts, what in (
            (plan.cohorts, "cohort"),
            (plan.phases, "phase"),
            (plan.brownouts, "brown-out"),
        )
    )
    stderr.print(f"{path}: plan {plan.name} is valid: {sizes}", highlight=False)


def _drift(ctx: typer.Context, plan: Plan) -> tuple[list[str], list[str]]:
    """rollout.phases.drift's errors and warnings. Without a registry to read (a plan
    checked on a machine that has none, or one not set up, or away) one warning says the
    checks against it were not made: they were skipped without a word."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from rollout.core.errors import RolloutError
    from rollout.phases.drift import plan_drift
    from rollout.registry.engine import is_sqlite

    runtime = _runtime(ctx)
    url = runtime.settings.registry_url
    unchecked = (
        "not checked against the registry (what it has done, its orgs, its brown-out windows): {}"
    )
    if is_sqlite(url) and not Path(make_url(url).database or "").is_file():
        return [], [unchecked.format("there is none at ROLLOUT_REGISTRY_URL")]
    try:
        return plan_drift(runtime.registry, plan)
    except (RolloutError, SQLAlchemyError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()
        return [], [unchecked.format(reason[0] if reason else type(error).__name__)]


def _say_drift(errors: list[str], warnings: list[str]) -> None:
    for error in errors:
        stderr.print(labelled("error:", "bold red", error))
    for warning in warnings:
        stderr.print(labelled("warning:", "bold yellow", warning))


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
    from rollout.phases.timeline import interrupted_off_calendar, step_states

    runtime = _runtime(ctx)
    moment = _parse_time(at) if at is not None else None  # before the plan is read
    settings, plan = runtime.settings, runtime.plan
    skipped: list[str] = []
    states = step_states(runtime.registry, plan, moment, settings.reports_dir, skipped)
    elsewhere = interrupted_off_calendar(runtime.registry, plan, moment)
    emit(
        [
            *(
                {
                    "on": s.step.on,
                    "step": s.step.label,
                    "state": s.state,
                    "when": s.at.replace(microsecond=0) if s.at else None,
                    "run": _run_shown(s.run_id, fmt),
                    "by": s.actor,
                    "detail": s.detail,
                }
                for s in states
            ),
            # Runs of no dated step (an org's enforcement, snoozes...) left half done.
            *(
                {
                    "on": run.started_at.date(),
                    "step": run.step,
                    "state": "interrupted",
                    "when": run.started_at.replace(microsecond=0),
                    "run": _run_shown(run.id, fmt),
                    "by": run.actor,
                    "detail": "",
                }
                for run in elsewhere
            ),
        ],
        fmt,
        title=f"plan {plan.name}",
        columns=["on", "step", "state", "when", "run", "by", "detail"],
    )
    for s in states:
        if s.state == "interrupted":
            _hint(f"{s.step.label}: run {s.run_id} stopped before finishing; re-run it to resume")
        elif s.state == "applied, re-run interrupted":
            _hint(
                f"{s.step.label}: applied by run {s.run_id}; a later re-run stopped before "
                "finishing: re-run it to apply whatever that run had left (new accounts since)"
            )
        elif s.state == "rollback interrupted":
            _hint(
                f"{s.step.label}: rollback run {s.run_id} stopped before finishing; finish it "
                f"with `rollout phase rollback {shell_word(s.step.subject)} --apply` (not "
                "`phase enforce`, which would require again whom it released)"
            )
    for run in elsewhere:
        # The step holds registry values (an org's name): kept on its line. Most of
        # these runs are one transaction: nothing of them is done until all is.
        stderr.print(
            f"{visible(run.step)}: run {run.id} stopped before finishing; re-run it",
            highlight=False,
        )
    errors, warnings = _drift(ctx, plan)
    # A preview record it could not read (edited, cut short): its step shown without it.
    _say_drift(errors, skipped + warnings)


def _run_shown(run_id: str | None, fmt: Format) -> str | None:
    return run_id[:12] if run_id and fmt is Format.table else run_id


def _hint(text: str) -> None:
    stderr.print(f"{text} (done batches are not redone)", highlight=False)


@plan_app.command("simulate")
@reports_errors
def plan_simulate(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            parser=path_given,
            help="The plan to try (default: $ROLLOUT_PLAN, plans/npm-2022.yaml).",
        ),
    ] = None,
    as_of: AsOfOption = None,
    allow_gaps: Annotated[
        bool,
        typer.Option(
            help="Count even if download days are missing from a cohort rule's window "
            "(the weekly one, for weekly_downloads_gt)."
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """What-if: what each phase of a plan would touch if it ran on a day (its cohort by
    its rule on that day's metrics: accounts it would require 2FA of, their live web
    sessions). Reads the warehouse only; writes nothing. A rule whose download days
    are missing is refused (exit 2), as `cohorts build` refuses it, unless --allow-gaps."""
    from rollout.core.plan import load_plan
    from rollout.phases.simulate import PhaseWhatIf, simulate_plan, simulate_warnings

    runtime = _runtime(ctx)
    given = _given_day(as_of)
    plan = load_plan(file) if file is not None else runtime.plan
    with runtime.warehouse(read_only=True) as con:
        day = _day_or_latest(con, given, "package_metrics_daily")
        found = simulate_plan(con, plan, day, allow_gaps=allow_gaps)
        warnings = simulate_warnings(con, plan)
    _say_drift([], warnings)
    emit(
        [what_if.row() for what_if in found],
        fmt,
        title=f"plan {plan.name} if run on {day}",
        columns=PhaseWhatIf.columns(),
    )

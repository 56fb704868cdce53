"""`rollout brownout` and `rollout elv`: brown-outs of enhanced login verification."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli.app import (
    ApplyOption,
    FormatOption,
    _runtime,
    app,
    reports_errors,
)
from rollout.core.output import Format, emit, emit_record, progress_for, stderr
from rollout.core.words import by_count, counted, them

if TYPE_CHECKING:
    from rollout.phases.brownouts import WindowState
    from rollout.registry import Registry

# A brown-out window as every command lists it (status, start, end).
WINDOW_COLUMNS = ("name", "state", "starts_at", "ends_at", "ended_early_at")

# --- brown-outs and ELV --------------------------------------------------------------------

brownout_app = typer.Typer(
    help="Brown-outs: 24 h rehearsals of enhanced login verification.", no_args_is_help=True
)
app.add_typer(brownout_app, name="brownout")
elv_app = typer.Typer(help="Enhanced login verification (ELV).", no_args_is_help=True)
app.add_typer(elv_app, name="elv")


@brownout_app.command("status")
@reports_errors
def brownout_status(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Every brown-out window and its state now: scheduled, active, ended, ended early;
    and whether the plan names it (the registry applies a window the plan dropped at its
    times all the same: `brownout schedule --apply` cancels one not started)."""
    from rollout.core.controls import controls_shown
    from rollout.core.errors import RolloutError
    from rollout.phases.brownouts import status

    runtime = _runtime(ctx)
    windows = status(runtime.registry)
    try:
        planned: set[str] | None = {b.name for b in runtime.plan.brownouts}
    except RolloutError as unread:  # the status is what an emergency needs first
        said = f"the plan could not be read ({controls_shown(unread)}): in_plan unknown"
        stderr.print(said, markup=False, highlight=False)
        planned = None
    emit(
        [
            {**_window_record(w), "in_plan": None if planned is None else w.name in planned}
            for w in windows
        ],
        fmt,
        title="brown-out windows",
        columns=[*WINDOW_COLUMNS, "in_plan"],
    )


@brownout_app.command("schedule")
@reports_errors
def brownout_schedule(
    ctx: typer.Context, apply: ApplyOption = False, fmt: FormatOption = Format.table
) -> None:
    """Create the plan's brown-out windows (or move ones that have not started): each
    window and its change (create, move, unchanged, refused), previewed by default."""
    from rollout.phases.brownouts import (
        SCHEDULE_COLUMNS,
        schedule,
        schedule_refusal,
        schedule_rows,
    )

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    rows = schedule_rows(runtime.registry, plan)
    emit(
        rows,
        fmt,
        title="brown-out windows to schedule" + ("" if apply else " (preview)"),
        columns=SCHEDULE_COLUMNS,
    )
    if not apply:
        refused = schedule_refusal([(row["name"], row["detail"]) for row in rows])
        if refused is not None:
            # --apply would refuse the lot (exit 3, nothing scheduled): the preview says
            # so as start's and end's do, rather than suggest it.
            raise refused
        stderr.print("preview only: add --apply to schedule", highlight=False)
        return
    schedule(runtime.registry, plan, actor=settings.actor)
    stderr.print("scheduled", highlight=False)


def _window_record(window: WindowState) -> dict[str, Any]:
    return {column: getattr(window, column) for column in WINDOW_COLUMNS}


def _window_now(registry: Registry, name: str) -> WindowState | None:
    from rollout.phases.brownouts import status

    return next((w for w in status(registry) if w.name == name), None)


@brownout_app.command("start")
@reports_errors
def brownout_start(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The window, as named in the plan.")],
    reason: Annotated[str, typer.Option(help="Why now: recorded in the audit ledger.")],
    apply: ApplyOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Begin a scheduled brown-out now (it keeps its planned length); one begun or
    ended, or one the plan does not name, is refused (exit 3), in the preview too. Lists
    the window: as it is (preview), or as started."""
    from rollout.core.errors import BadInput
    from rollout.phases.brownouts import (
        change_preview,
        no_window_named,
        refuse_unplanned,
        start_now,
        status,
    )

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    windows = status(runtime.registry)
    found = next((w for w in windows if w.name == name), None)
    if found is None:  # named with the windows there are, and the plan's if it names it
        raise BadInput(None, None, no_window_named(name, windows, plan))
    refuse_unplanned(plan, name, found)
    if not apply:
        preview = change_preview(runtime.registry, name, "start")
        _emit_window(found, fmt, f"{name} (preview)")
        stderr.print(f"{preview}; preview only: add --apply", highlight=False)
        return
    window = start_now(runtime.registry, name, actor=settings.actor, reason=reason)
    _emit_window(window, fmt, name)
    stderr.print(
        f"{name} is {window.state} until {window.ends_at:%Y-%m-%d %H:%M} UTC", highlight=False
    )


@brownout_app.command("end")
@reports_errors
def brownout_end(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The window to stop.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit ledger.")],
    apply: ApplyOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """The emergency stop: a brown-out stops applying now, scheduled (cancelled) or
    active; one already ended is refused (exit 3), in the preview too. Lists the window:
    as it is (preview), or as ended."""
    from rollout.phases.brownouts import change_preview, end_now

    runtime = _runtime(ctx)
    settings = runtime.settings
    if not apply:
        preview = change_preview(runtime.registry, name, "end")
        _emit_window(_window_now(runtime.registry, name), fmt, f"{name} (preview)")
        stderr.print(f"{preview}; preview only: add --apply", highlight=False)
        return
    window = end_now(runtime.registry, name, actor=settings.actor, reason=reason)
    _emit_window(window, fmt, name)
    stderr.print(f"{name}: {window.state}", highlight=False)


def _emit_window(window: WindowState | None, fmt: Format, title: str) -> None:
    # change_preview refused a window that is not there: one is, by now.
    assert window is not None
    emit_record(_window_record(window), fmt, title=title)


@elv_app.command("enroll-all")
@reports_errors
def elv_enroll_all(
    ctx: typer.Context,
    apply: ApplyOption = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Accounts per transaction.")] = 50_000,
    early: Annotated[
        bool,
        typer.Option(
            "--early", help="Enrol before the plan's enroll_all_on (its heads-up gave that day)."
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Enrol every account in ELV on the plan's enroll_all_on, in resumable batches with
    a progress bar (previews by default). Counts the accounts not enrolled before it,
    and those it enrolled (none in the preview)."""
    from sqlalchemy import func, select

    from rollout.core.errors import GuardRefused
    from rollout.notify.withdraw import in_flight_note, withdraw_preview
    from rollout.phases.brownouts import WITHDRAWN_BY_ENROLL_ALL, enroll_all, enroll_all_guard
    from rollout.registry.ledger import utc_now
    from rollout.registry.models import Account

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    with runtime.registry.engine.connect() as connection:
        pending = connection.execute(
            select(func.count()).select_from(Account).where(Account.elv_enrolled_at.is_(None))
        ).scalar_one()
        heads_ups = {
            kind: withdraw_preview(connection, selection)
            for kind, selection in WITHDRAWN_BY_ENROLL_ALL.items()
        }
    stderr.print(
        f"{counted(pending, 'account')} {by_count(pending, 'is', 'are')} not enrolled in ELV yet",
        highlight=False,
    )
    for kind, rows in heads_ups.items():
        queued = sum(row["queued"] for row in rows)
        flying = sum(row["in_flight"] for row in rows)
        if queued or flying:
            # Each tells of emailed codes at login as to come: withdrawn before any
            # account is enrolled.
            stderr.print(
                f"{counted(queued, kind)} not sent yet "
                f"{by_count(queued, 'is', 'are')} withdrawn with it{in_flight_note(flying)}",
                highlight=False,
            )
    if not apply:
        try:
            enroll_all_guard(plan, utc_now().date(), early=early, registry=runtime.registry)
        except GuardRefused as refused:
            if plan.elv is None:
                raise  # nothing to preview
            # As `phase preview` says it: not in the command to copy.
            stderr.print(f"Not due yet: {refused}", highlight=False, markup=False)
        emit_record(
            {"not_enrolled_before": pending, "enrolled": 0, "applied": False},
            fmt,
            title="ELV (preview)",
        )
        stderr.print(f"preview only: add --apply to enrol {them(pending)}", highlight=False)
        return
    with progress_for(fmt) as progress:
        task = progress.add_task("enrolling", total=pending)
        enrolled = enroll_all(
            runtime.registry,
            plan,
            actor=settings.actor,
            batch_size=batch_size,
            progress=lambda done, total: progress.update(task, completed=done),
            early=early,
        )
    emit_record(
        {"not_enrolled_before": pending, "enrolled": enrolled, "applied": True},
        fmt,
        title="ELV for all",
    )
    stderr.print(f"enrolled {counted(enrolled, 'account')}", highlight=False)

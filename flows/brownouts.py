"""Brown-out and ELV flows, deployed on the plan's schedule (see prefect.yaml).

``brownout-start`` runs at a window's planned start: the window (scheduled from the
plan) begins to apply by itself at that time, so the flow checks and reports it,
scheduling the plan's windows first if nobody did; for a window the plan dropped since
(its schedule left in prefect.yaml), which the registry would still apply from its time,
it calls the window off instead (cancelled, or ended if it began by itself), as
``brownout schedule --apply`` and ``brownout end`` would. ``brownout-end`` runs at the planned
end: a window ends by itself too; the flow confirms it, or ends it if still active
past the plan's end (a late-running window must never outlive its plan). The emergency
stop stays the CLI's ``rollout brownout end NAME``, which works at any time. ``elv-enroll-all``
turns on ELV for every account on the plan's day.

The schedules are copies of the plan's times in prefect.yaml, which change only with
``prefect deploy --all``: a run that fires while the window is still well ahead (the
plan moved it later since, or a manual run) changes nothing and fails, naming the
window's times. Beginning a brown-out early, or cutting one short, is a release
manager's decision, taken with the CLI's ``start``/``end`` and a reason, never a stale
timer's.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import (
    IO_RETRIES,
    AtLeastOne,
    FlowName,
    cell,
    fail_on_user_error,
    key_for,
    run_actor,
    runtime,
    table,
    with_runtime,
)
from rollout.core.errors import GuardRefused, RolloutError
from rollout.core.plan import Plan
from rollout.phases import brownouts
from rollout.registry.ledger import utc_now

# How far ahead of a planned time a run may still act on it: the worker's clock may
# trail the server's, which started the run at that time, by a little.
CLOCK_SKEW = timedelta(minutes=5)


def _find(name: str) -> brownouts.WindowState | None:
    return {w.name: w for w in brownouts.status(runtime().registry)}.get(name)


def _window(name: str) -> brownouts.WindowState:
    windows = brownouts.status(runtime().registry)
    window = next((w for w in windows if w.name == name), None)
    if window is None:
        raise GuardRefused(brownouts.no_window_named(name, windows, _plan_if_readable()))
    return window


def _plan_if_readable() -> Plan | None:
    """The plan, to say whether it names a window nobody scheduled; None when it does
    not load (the refusal then names the registry's windows alone)."""
    try:
        return runtime().plan
    except RolloutError:
        return None


@task(name="schedule-brownouts", cache_policy=NO_CACHE, **IO_RETRIES)
def schedule_from_plan(actor: str) -> None:
    """Create the plan's windows: the schedule reached a window nobody scheduled."""
    run = runtime()
    brownouts.schedule(run.registry, run.plan, actor=actor)


@task(name="call-off-dropped-brownouts", cache_policy=NO_CACHE, **IO_RETRIES)
def call_off_dropped_brownouts(actor: str) -> list[str]:
    """Cancel the windows the plan dropped that have not started (the daily run's):
    the registry would apply each at login from its time until a `brownout schedule
    --apply`. Returns their names; a change another run made meanwhile is left to the
    next day's run (or `brownout schedule`), with a warning."""
    logger = get_run_logger()
    run = runtime()
    try:
        cancelled = brownouts.call_off_dropped_windows(run.registry, run.plan, actor=actor)
    except GuardRefused as refused:
        logger.warning("brown-out windows the plan dropped were not cancelled: %s", refused)
        return []
    for window in cancelled:
        logger.warning(
            "brown-out %s was cancelled: no longer in plan %s (it was to start at %s UTC)",
            window.name,
            run.plan.name,
            f"{window.starts_at:%Y-%m-%d %H:%M}",
        )
    return [w.name for w in cancelled]


def _refuse_ahead(name: str, what: str, when: datetime) -> None:
    """Refuse to start or end a window on a run that came well before the time it is
    due to (a schedule older than the plan): the window is left as it is."""
    if when - utc_now() <= CLOCK_SKEW:
        return
    raise GuardRefused(
        f"brown-out {name} is planned to {what} at {when:%Y-%m-%d %H:%M} UTC, not now: "
        f"nothing was changed. This run's schedule is out of step with the plan "
        f"(redeploy prefect.yaml with `prefect deploy --all`); to {what} it now, "
        f"`rollout brownout {what} {name} --reason ... --apply`"
    )


def _report(name: str, what: str) -> brownouts.WindowState:
    window = _window(name)
    reach = brownouts.accounts_challenged(runtime().registry)
    rows = [
        ("state", window.state),
        ("starts", f"{window.starts_at:%Y-%m-%d %H:%M} UTC"),
        ("ends", f"{window.ends_at:%Y-%m-%d %H:%M} UTC"),
        ("accounts without 2FA (challenged at login)", reach["without_2fa"]),
        ("of which not ELV-enrolled otherwise", reach["without_2fa_nor_elv"]),
    ]
    create_markdown_artifact(
        markdown=f"# Brown-out {cell(name)}: {what}\n\n{table(rows)}\n",
        key=key_for("brownout", name, what),
        description=f"Brown-out {cell(name)} {what}",
    )
    return window


@flow(name="brownout-start", description="Begin a brown-out window at its planned start.")
@fail_on_user_error
@with_runtime
def brownout_start(name: FlowName) -> str:
    logger = get_run_logger()
    actor = run_actor(runtime().settings)
    plan = runtime().plan
    if name not in {b.name for b in plan.brownouts}:
        # A deployment's schedule left from before the plan dropped the window, which
        # the registry still holds: it would apply at login from its time (or does
        # already) until a `brownout schedule --apply`. The plan dropped it: call it off.
        called_off = brownouts.call_off_dropped(runtime().registry, plan, name, actor=actor)
        if called_off is None:  # not a window this plan scheduled, or one over
            try:
                brownouts.refuse_unplanned(plan, name, _find(name))
            except GuardRefused as refused:
                raise GuardRefused(
                    f"{refused}; redeploy prefect.yaml (`prefect deploy --all`)"
                ) from None
        logger.warning(
            "brown-out %s is not in plan %s: called off (%s) rather than started; "
            "redeploy prefect.yaml (`prefect deploy --all`) to drop this schedule",
            name,
            plan.name,
            called_off.state,
        )
        return _report(name, "called off").state
    if _find(name) is None:
        schedule_from_plan(actor)
    window = _window(name)
    if window.state == "scheduled":
        _refuse_ahead(name, "start", window.starts_at)
        window = brownouts.start_now(
            runtime().registry, name, actor=actor, reason="planned start (Prefect schedule)"
        )
    elif window.state != "active":
        raise GuardRefused(f"brown-out {name} has {window.state}: it cannot start again")
    logger.info("brown-out %s is %s until %s UTC", name, window.state, window.ends_at)
    return _report(name, "started").state


@flow(name="brownout-end", description="Close a brown-out window at its planned end.")
@fail_on_user_error
@with_runtime
def brownout_end(name: FlowName) -> str:
    logger = get_run_logger()
    window = _window(name)
    if window.state == "scheduled":
        raise GuardRefused(f"brown-out {name} has not started: there is nothing to end")
    if window.state == "active":
        planned = {b.name: b for b in runtime().plan.brownouts}.get(name)
        if planned is not None:  # a window the plan dropped ends now
            _refuse_ahead(name, "end", brownouts.planned_window(planned)[1])
        window = brownouts.end_now(
            runtime().registry,
            name,
            actor=run_actor(runtime().settings),
            reason="planned end (Prefect schedule)",
        )
    logger.info("brown-out %s is %s", name, window.state)
    return _report(name, "ended").state


@flow(name="elv-enroll-all", description="Enrol every account in enhanced login verification.")
@fail_on_user_error
@with_runtime
def elv_enroll_all(batch_size: AtLeastOne = 50_000) -> int:
    """On the plan's enroll_all_on or later (refused before it, or under a plan without
    ELV). Resumable: a rerun enrols only accounts still not enrolled."""
    logger = get_run_logger()
    run = runtime()
    before = brownouts.accounts_challenged(run.registry)["not_elv_enrolled"]
    logger.info("%d accounts to enrol in ELV", before)

    def progress(done: int, total: int) -> None:
        logger.info("enrolled %d of %d accounts", done, total)

    enrolled = brownouts.enroll_all(
        run.registry,
        run.plan,
        actor=run_actor(run.settings),
        batch_size=batch_size,
        progress=progress,
    )
    create_markdown_artifact(
        markdown=(
            "# ELV for all accounts\n\n"
            + table([("accounts to enrol", before), ("enrolled by this run", enrolled)])
            + "\n"
        ),
        key="elv-enroll-all",
        description="Enhanced login verification enrollment",
    )
    return enrolled

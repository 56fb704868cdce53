"""Brown-outs and enhanced login verification (ELV).

A brown-out is a window during which every account without 2FA must pass ELV (an
emailed one-time code) at login, as a rehearsal of the real thing. Windows live in
the registry's ``brownout_windows``: scheduled from the plan, started early or ended
at any time (an emergency end needs nothing but the name). ``elv_required`` states
the login rule the registry applies; ``enroll_all`` turns ELV on for every account.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from rollout.core.calendar import BROWNOUTS_SCHEDULE_STEP, ENROLL_ALL_STEP
from rollout.core.clock import naive_utc
from rollout.core.controls import quoted, shell_word
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.plan import Brownout, Plan
from rollout.core.words import counted, listed, them
from rollout.notify.emails import ELV_HEADS_UP_EMAIL, HEADS_UP_EMAIL
from rollout.notify.outbox import NOTIFICATIONS
from rollout.notify.withdraw import Selection, withdraw_queued
from rollout.phases.drift import elv_day_told
from rollout.registry import Registry
from rollout.registry.engine import begin_writing
from rollout.registry.ledger import (
    finish_run,
    record_actions,
    recorded_run,
    start_run,
    utc_now,
)
from rollout.registry.locks import hold_transaction_lock, lock_accounts
from rollout.registry.models import Account, BrownoutWindow, has_active_factor, state_at

WINDOWS = BrownoutWindow.__table__
ACCOUNTS = Account.__table__


# The plan_runs.plan of ELV's enrolment of every account: a plan's step, run for any
# plan with an ELV section (rollout plan show lists it whatever the plan).
ELV_PLAN = "elv"


@dataclass(frozen=True)
class WindowState:
    name: str
    starts_at: datetime
    ends_at: datetime
    ended_early_at: datetime | None
    state: str  # scheduled | active | ended | ended early


def status(registry: Registry, at: datetime | None = None) -> list[WindowState]:
    at = at or utc_now()
    with registry.engine.connect() as connection:
        return _windows(connection, at)


def _windows(connection: Connection, at: datetime) -> list[WindowState]:
    windows = connection.execute(
        select(
            WINDOWS.c.name, WINDOWS.c.starts_at, WINDOWS.c.ends_at, WINDOWS.c.ended_early_at
        ).order_by(WINDOWS.c.starts_at)
    ).all()
    return [
        WindowState(w.name, w.starts_at, w.ends_at, w.ended_early_at, state_at(w, at))
        for w in windows
    ]


# Held by each change of the windows from its check to its write: windows never overlap,
# and two changes at once (two starts of different windows) would each pass the overlap
# check against the other's window as it was.
WINDOWS_LOCK = "brownout-windows"


@contextmanager
def _changing_windows(registry: Registry) -> Iterator[Connection]:
    """A transaction that changes the windows, the only one doing so until it ends."""
    with registry.writing() as connection:
        hold_transaction_lock(connection, WINDOWS_LOCK)
        yield connection


def _active_window(at: datetime) -> object:
    return exists().where(
        and_(
            WINDOWS.c.starts_at <= at,
            WINDOWS.c.ends_at > at,
            or_(WINDOWS.c.ended_early_at.is_(None), WINDOWS.c.ended_early_at > at),
        )
    )


def elv_required(connection: Connection, account_id: int, at: datetime) -> bool:
    """The login rule: no active 2FA factor, and either enrolled in ELV by ``at`` or
    ``at`` falls in a brown-out window that has not been ended."""
    has_factor = connection.execute(select(has_active_factor(account_id))).scalar_one()
    if has_factor:
        return False
    enrolled = connection.execute(
        select(Account.elv_enrolled_at).where(Account.id == account_id)
    ).scalar_one_or_none()
    if enrolled is not None and enrolled <= at:
        return True
    return bool(connection.execute(select(_active_window(at))).scalar_one())


def planned_window(planned: Brownout) -> tuple[datetime, datetime]:
    """A plan's window as the registry stores it: naive UTC, the one form in which two
    windows can be compared (a plan that came from a file is in it already)."""
    return naive_utc(planned.starts_at), naive_utc(planned.ends_at)


def schedule_preview(registry: Registry, plan: Plan) -> list[tuple[str, str]]:
    """(window, what scheduling would do) for each brown-out of the plan, then for each
    window of the plan's it no longer names that still applies or will."""
    changes, dropped = _schedule_changes(registry, plan, status(registry))
    return [(planned.name, what) for planned, _, what in changes] + [
        (window.name, what) for window, what in dropped
    ]


def scheduled_by(plan: Plan) -> str:
    """The reason ``schedule`` stores on the windows it creates: which plan's they are."""
    return f"plan {plan.name}"


def _dropped(
    registry: Registry, plan: Plan, windows: list[WindowState], now: datetime
) -> list[tuple[WindowState, str]]:
    """The windows ``plan`` scheduled that it no longer names (renamed, taken out) and
    that still apply or will, each with what scheduling does with it: one not started is
    cancelled (it would start by itself at its time); one under way is left to its end,
    which only `brownout end` brings forward."""
    names = {b.name for b in plan.brownouts}
    with registry.engine.connect() as connection:
        ours = set(
            connection.execute(
                select(WINDOWS.c.name).where(WINDOWS.c.reason == scheduled_by(plan))
            ).scalars()
        )
    dropped = []
    for window in windows:
        if window.name in names or window.name not in ours:
            continue
        if window.state == "scheduled":
            what = (
                f"cancel: no longer in plan {plan.name} (scheduled "
                f"{window.starts_at:%Y-%m-%d %H:%M} UTC, it would start by itself)"
            )
        elif window.state == "active":
            what = (
                f"left active until {window.ends_at:%Y-%m-%d %H:%M} UTC though no longer in "
                f"plan {plan.name}: stop it now with `rollout brownout end {window.name} "
                "--reason ... --apply`"
            )
        else:
            continue
        dropped.append((window, what))
    return dropped


# `rollout brownout schedule`'s listing: each window of the plan, the change scheduling
# makes (create, move, unchanged or refused; cancel or keep one the plan dropped), its
# times, and the change in words.
SCHEDULE_COLUMNS = ("name", "change", "starts_at", "ends_at", "detail")


def schedule_rows(registry: Registry, plan: Plan) -> list[dict[str, Any]]:
    """:func:`schedule_preview` as rows of :data:`SCHEDULE_COLUMNS`, for the listing:
    the plan's windows, then those it dropped (``cancel``, or ``keep`` one under way)."""
    changes, dropped = _schedule_changes(registry, plan, status(registry))
    rows = []
    for planned, _, what in changes:
        starts_at, ends_at = planned_window(planned)
        change = what.split(maxsplit=1)[0].rstrip(":")
        rows.append(_schedule_row(planned.name, change, starts_at, ends_at, what))
    for window, what in dropped:
        change = "cancel" if what.startswith("cancel") else "keep"
        rows.append(_schedule_row(window.name, change, window.starts_at, window.ends_at, what))
    return rows


def _schedule_row(
    name: str, change: str, starts_at: datetime, ends_at: datetime, detail: str
) -> dict[str, Any]:
    return dict(zip(SCHEDULE_COLUMNS, (name, change, starts_at, ends_at, detail), strict=True))


def schedule_refusal(changes: list[tuple[str, str]]) -> GuardRefused | None:
    """Why scheduling refuses (nothing is scheduled when any window is refused), from
    its preview's changes; None when it would schedule them."""
    refused = [f"{name}: {what}" for name, what in changes if what.startswith("refused")]
    return GuardRefused("; ".join(refused)) if refused else None


def _schedule_changes(
    registry: Registry, plan: Plan, windows: list[WindowState]
) -> tuple[list[tuple[Brownout, WindowState | None, str]], list[tuple[WindowState, str]]]:
    """Each brown-out of the plan, its window as stored (``windows``, read now; None:
    none yet), and what scheduling would do with it; then the windows the plan dropped
    (``_dropped``)."""
    now = utc_now()
    existing = {w.name: w for w in windows}
    planned_names = {b.name for b in plan.brownouts}
    dropped = _dropped(registry, plan, windows, now)
    cancelled = {w.name for w, what in dropped if what.startswith("cancel")}
    # A window cancelled in the same run no longer applies: the plan's may take its hours.
    unplanned = [
        w for name, w in existing.items() if name not in planned_names and name not in cancelled
    ]
    told = _heads_ups_sent(registry, [b.name for b in plan.brownouts])
    changes = []
    for planned in plan.brownouts:
        current = existing.get(planned.name)
        window = planned_window(planned)
        if current is None:
            what = f"create {window[0]:%Y-%m-%d %H:%M} UTC + {planned.hours} h"
        elif (naive_utc(current.starts_at), naive_utc(current.ends_at)) == window:
            what = f"unchanged ({current.state})"
        elif current.state != "scheduled":
            what = f"refused: already {current.state}, cannot move"
        elif told.get(planned.name):
            # Its heads-up told accounts the window as it is (or is queued to, with its
            # times); none goes again (one per account and brown-out), so the move
            # would come unannounced.
            what = (
                f"refused: its heads-up went (or is queued) to "
                f"{counted(told[planned.name], 'account')}, telling "
                f"{them(told[planned.name])} "
                f"{current.starts_at:%Y-%m-%d %H:%M} UTC + "
                f"{round((current.ends_at - current.starts_at).total_seconds() / 3600)} h; "
                f"cancel it (`rollout brownout end {planned.name}`) and plan the new window "
                "under another name, which gets a heads-up of its own"
            )
        else:
            what = f"move to {window[0]:%Y-%m-%d %H:%M} UTC + {planned.hours} h"
        if what.startswith(("create", "move")):
            clash = _overlapping(window, unplanned, now)
            if clash is not None:
                # A window the plan no longer names (renamed, taken out) still applies
                # at its time: both would run.
                what = (
                    f"refused: would overlap {clash.name} ({clash.state}, "
                    f"{clash.starts_at:%Y-%m-%d %H:%M} UTC + "
                    f"{round((clash.ends_at - clash.starts_at).total_seconds() / 3600)} h), "
                    "a window the plan does not name: cancel it first "
                    f"(`rollout brownout end {clash.name}`)"
                )
        changes.append((planned, current, what))
    return changes, dropped


def _overlapping(
    window: tuple[datetime, datetime], others: list[WindowState], now: datetime
) -> WindowState | None:
    """The first of ``others`` that still applies or will (not ended, nor called off)
    and whose hours meet ``window``'s; None when none does."""
    starts_at, ends_at = window
    for other in others:
        other_ends = min(other.ends_at, other.ended_early_at or other.ends_at)
        if other.starts_at < ends_at and starts_at < other_ends and other_ends > now:
            return other
    return None


def _heads_ups_sent(registry: Registry, names: list[str]) -> dict[str, int]:
    """{brown-out: heads-ups sent, being sent or queued} of ``names``: the accounts told
    its window, or to be told it with the times their queued email holds."""
    if not names:
        return {}
    n = NOTIFICATIONS.c
    with registry.engine.connect() as connection:
        return dict(
            connection.execute(
                select(n.occasion, func.count())
                .where(
                    n.email == HEADS_UP_EMAIL,
                    n.state.in_(("queued", "sending", "sent")),
                    n.occasion.in_(names),
                )
                .group_by(n.occasion)
            ).all()
        )


def schedule(registry: Registry, plan: Plan, *, actor: str) -> list[tuple[str, str]]:
    """Create (or move, while not started) the plan's brown-out windows."""
    read = status(registry)
    planned_changes, dropped = _schedule_changes(registry, plan, read)
    changes = [(planned.name, what) for planned, _, what in planned_changes] + [
        (window.name, what) for window, what in dropped
    ]
    refused = schedule_refusal(changes)
    if refused is not None:
        raise refused
    now = utc_now()
    meanwhile = GuardRefused(
        "the brown-out windows were changed by another run meanwhile (one started, ended "
        "or scheduled): see `rollout brownout status`, then schedule again"
    )
    with _changing_windows(registry) as connection:
        # As read for the decisions above, under the lock: a start or a schedule that
        # committed meanwhile would make them stale (an overlap, a move of a window begun).
        if _as_stored(_windows(connection, now)) != _as_stored(read):
            raise meanwhile
        run_id = start_run(
            connection,
            plan=plan.name,
            step=BROWNOUTS_SCHEDULE_STEP,
            mode="apply",
            actor=actor,
            parameters={},
        )
        for planned, current, what in planned_changes:
            if what.startswith("unchanged"):
                continue
            starts_at, ends_at = planned_window(planned)
            if current is None:
                try:
                    with connection.begin_nested():
                        connection.execute(
                            WINDOWS.insert().values(
                                name=planned.name,
                                starts_at=starts_at,
                                ends_at=ends_at,
                                created_at=now,
                                created_by=actor,
                                reason=scheduled_by(plan),
                            )
                        )
                except IntegrityError:  # another schedule created it first
                    raise meanwhile from None
            else:
                # Only the window as previewed, and only while it has not started: a
                # `brownout start` in between must not be moved off its active window.
                moved = connection.execute(
                    update(WINDOWS)
                    .where(and_(_as_read(current), WINDOWS.c.starts_at > utc_now()))
                    .values(starts_at=starts_at, ends_at=ends_at)
                ).rowcount
                if moved != 1:
                    raise meanwhile
            when = f"{starts_at:%Y%m%d%H%M}:{planned.hours}"
            record_actions(
                connection,
                [
                    {
                        "effect_key": f"brownout-schedule:{planned.name}:{when}:{run_id}",
                        "action": "brownout_scheduled",
                        "subject": f"brownout:{planned.name}",
                        "reason": what,
                        "actor": actor,
                        "run_id": run_id,
                        "created_at": now,
                    }
                ],
            )
        for window, what in dropped:
            if not what.startswith("cancel"):
                continue
            # Only the window as previewed, and only while it has not started.
            cancelled = connection.execute(
                update(WINDOWS)
                .where(and_(_as_read(window), WINDOWS.c.starts_at > utc_now()))
                .values(ended_early_at=now)
            ).rowcount
            if cancelled != 1:
                raise meanwhile
            _audit_change(
                connection,
                window.name,
                "brownout_ended",
                f"cancelled: no longer in plan {plan.name}",
                actor,
                now,
            )
        finish_run(connection, run_id, state="succeeded", summary={"changes": len(changes)})
    return changes


def _as_stored(windows: list[WindowState]) -> list[tuple[Any, ...]]:
    """The windows' rows as stored, whatever their state at the time each was read."""
    return sorted((w.name, w.starts_at, w.ends_at, w.ended_early_at) for w in windows)


def _as_read(window: WindowState) -> Any:
    """SQL: the window's row still as ``window`` read it: what a change decided on that
    read may write over (another run's start, end or move meanwhile makes it refused)."""
    c = WINDOWS.c
    return and_(
        c.name == window.name,
        c.starts_at == window.starts_at,
        c.ends_at == window.ends_at,
        c.ended_early_at.is_(None)
        if window.ended_early_at is None
        else c.ended_early_at == window.ended_early_at,
    )


def _change_window(
    registry: Registry,
    name: str,
    actor: str,
    reason: str,
    decide: Callable[[WindowState, datetime], dict[str, datetime]],
    action: str,
) -> WindowState:
    # The ledger's only account of why a window began or stopped off its schedule, as
    # a cohort release or a withdrawal must say why.
    if not reason.strip():
        verb = "start" if action == "brownout_started" else "end"
        raise BadInput(
            None, None, f"say why: rollout brownout {verb} {shell_word(name)} --reason '...'"
        )
    with _changing_windows(registry) as connection:
        # Checked under the lock, on the windows as committed: of two starts at once of
        # windows that would overlap, the second sees the first's and refuses, naming it.
        now = utc_now()
        window, others = _current_of(_windows(connection, now), name)
        values = decide(window, now)
        _refuse_overlap(window, values, others, now)
        # Only the window as it was decided on: two stops at once (a person and the
        # brownout-end deployment) both pass the check, and the second must then find
        # the window changed, not write over the first and audit a second stop.
        changed = connection.execute(
            update(WINDOWS).where(_as_read(window)).values(**values)
        ).rowcount
        if changed != 1:
            raise GuardRefused(
                f"brown-out {name} was changed by another run meanwhile: "
                "see `rollout brownout status`"
            )
        _audit_change(connection, name, action, reason, actor, now)
    return {w.name: w for w in status(registry, now)}[name]


def _audit_change(
    connection: Connection, name: str, action: str, reason: str, actor: str, now: datetime
) -> None:
    """What starting or ending a window writes besides it: its heads-up not sent yet
    withdrawn (it would announce what has begun or will not come), and the audit row."""
    withdraw_queued(
        connection,
        Selection(email=HEADS_UP_EMAIL, occasion=name),
        reason=f"brown-out {name} {'started' if action == 'brownout_started' else 'ended'}",
        actor=actor,
        run_id=None,
    )
    record_actions(
        connection,
        [
            {
                "effect_key": f"{action}:{name}:{now.isoformat()}",
                "action": action,
                "subject": f"brownout:{name}",
                "reason": reason,
                "actor": actor,
                "created_at": now,
            }
        ],
    )


def _start_values(window: WindowState, now: datetime) -> dict[str, datetime]:
    if window.state != "scheduled":
        raise GuardRefused(
            f"brown-out {window.name} is {window.state}: only a scheduled window can be started"
        )
    return {"starts_at": now, "ends_at": now + (window.ends_at - window.starts_at)}


def _refuse_overlap(
    window: WindowState, values: dict[str, datetime], others: list[WindowState], now: datetime
) -> None:
    """Windows never overlap (a plan's are checked so; brownout_impact reads each against
    its own hours, and ending one must end the challenges): one started early must not
    run into another that still applies, or will."""
    if "starts_at" not in values:
        return
    ends_at = values["ends_at"]
    other = _overlapping((values["starts_at"], ends_at), others, now)
    if other is not None:
        other_ends = min(other.ends_at, other.ended_early_at or other.ends_at)
        raise GuardRefused(
            f"brown-out {window.name} started now (until {ends_at:%Y-%m-%d %H:%M} UTC) "
            f"would overlap {other.name} ({other.state}, {other.starts_at:%Y-%m-%d %H:%M}"
            f" to {other_ends:%Y-%m-%d %H:%M} UTC): end that one first "
            f"(`rollout brownout end {other.name}`), or wait"
        )


def _end_values(window: WindowState, now: datetime) -> dict[str, datetime]:
    if window.state in ("ended", "ended early"):
        raise GuardRefused(f"brown-out {window.name} has already {window.state}")
    return {"ended_early_at": now}


def _current(registry: Registry, name: str, now: datetime) -> tuple[WindowState, list[WindowState]]:
    """The window named, and every other."""
    return _current_of(status(registry, now), name)


def _current_of(windows: list[WindowState], name: str) -> tuple[WindowState, list[WindowState]]:
    current = next((w for w in windows if w.name == name), None)
    if current is None:
        raise BadInput(None, None, no_window_named(name, windows))
    return current, [w for w in windows if w.name != name]


def no_window_named(name: str, windows: list[WindowState], plan: Plan | None = None) -> str:
    """Why a window ``name`` cannot be started or ended: the windows there are, each with
    its state (what `brownout start|end` can act on), so whoever mistyped one sees the
    name to type. ``plan``, when known: a window it names that nobody scheduled yet is
    said to be so, with the command that creates it. The plan is not read otherwise:
    the emergency end must not depend on it loading."""
    said = f"no brown-out window named {quoted(name)}"
    if plan is not None and name in {b.name for b in plan.brownouts}:
        return (
            f"{said} in the registry: plan {plan.name} names it, but nobody scheduled "
            "it yet (`rollout brownout schedule --apply` creates the plan's windows)"
        )
    if not windows:
        return (
            f"{said}: the registry has none (`rollout brownout schedule --apply` creates "
            "the plan's windows)"
        )
    there = [f"{quoted(w.name)} ({w.state})" for w in windows]
    return f"{said}: the registry has {listed(there)}"


def change_preview(registry: Registry, name: str, change: str) -> str:
    """What ``start``/``end`` would do now, or GuardRefused saying why it would not."""
    decide = {"start": _start_values, "end": _end_values}[change]
    now = utc_now()
    window, others = _current(registry, name, now)
    values = decide(window, now)
    _refuse_overlap(window, values, others, now)
    if change == "start":
        return (
            f"would start {name} now ({window.state}), until {values['ends_at']:%Y-%m-%d %H:%M} UTC"
        )
    return f"would end {name} now ({window.state})"


def refuse_unplanned(plan: Plan, name: str, found: WindowState | None) -> None:
    """Refuse to start a window ``plan`` does not name (``found``: it as stored, if it
    is): one left from before the plan dropped it is not to begin, by hand or on a
    deployment's schedule; scheduling the plan cancels it if not started."""
    if name in {b.name for b in plan.brownouts}:
        return
    # The name as typed (a run's parameter in Prefect's UI, a command's argument): quoted
    # in the sentence, one shell word in the command it suggests.
    raise GuardRefused(
        f"brown-out {quoted(name)} is not in plan {plan.name}"
        + (f" (it is {found.state} in the registry)" if found else "")
        + ": nothing was started. `rollout brownout schedule --apply` cancels a window "
        f"the plan dropped that has not started, `rollout brownout end {shell_word(name)} "
        "--reason ... --apply` one under way"
    )


def call_off_dropped(
    registry: Registry, plan: Plan, name: str, *, actor: str
) -> WindowState | None:
    """Make a window ``plan`` scheduled and no longer names stop applying: cancelled if
    not started, ended now if under way (it began by itself at its time, nobody having
    scheduled the plan since it dropped the window). The plan is the release manager's
    decision; the registry applies a window at login whatever the plan says. None, and
    nothing changed, for any other window (the plan's own, one it never scheduled, one
    over)."""
    now = utc_now()
    dropped = {w.name: w for w, _ in _dropped(registry, plan, status(registry, now), now)}
    window = dropped.get(name)
    if window is None:
        return None
    what = "cancelled" if window.state == "scheduled" else "ended"
    return _change_window(
        registry,
        name,
        actor,
        f"{what}: no longer in plan {plan.name}",
        _end_values,
        "brownout_ended",
    )


def call_off_dropped_windows(registry: Registry, plan: Plan, *, actor: str) -> list[WindowState]:
    """Cancel every window ``plan`` scheduled and no longer names that has not started
    (``call_off_dropped``): what `brownout schedule --apply` cancels, without creating or
    moving the plan's own windows. For the daily run, so that a window the plan dropped
    does not start by itself because nobody scheduled the plan since. One under way is
    left to its end, as `schedule` leaves it (`brownout end` stops it)."""
    now = utc_now()
    cancelled = []
    for window, _ in _dropped(registry, plan, status(registry, now), now):
        if window.state == "scheduled":
            done = call_off_dropped(registry, plan, window.name, actor=actor)
            if done is not None:
                cancelled.append(done)
    return cancelled


def start_now(registry: Registry, name: str, *, actor: str, reason: str) -> WindowState:
    """Begin a scheduled window now (it keeps its planned length)."""
    return _change_window(registry, name, actor, reason, _start_values, "brownout_started")


def end_now(registry: Registry, name: str, *, actor: str, reason: str) -> WindowState:
    """The emergency stop: the window stops applying now, whatever its state."""
    return _change_window(registry, name, actor, reason, _end_values, "brownout_ended")


# The heads-ups `enroll_all` withdraws (those not gone), and why: ELV for all's, which
# announce the enrolment as to come, and the brown-outs', which go to the same audience
# (accounts without 2FA nor ELV) and tell of emailed codes at login as a rehearsal; by
# what the preview calls them.
ELV_HEADS_UPS = Selection(email=ELV_HEADS_UP_EMAIL)
BROWNOUT_HEADS_UPS = Selection(email=HEADS_UP_EMAIL)
WITHDRAWN_BY_ENROLL_ALL = {"ELV heads-up": ELV_HEADS_UPS, "brown-out heads-up": BROWNOUT_HEADS_UPS}
ENROLLED_ALL = "every account enrolled in ELV"


def enroll_all_guard(
    plan: Plan, today: date, *, early: bool = False, registry: Registry | None = None
) -> None:
    """Refuse ELV for all under a plan without it, or before its ``enroll_all_on``, or
    before a later day its sent heads-ups told (``enroll_all_on`` moved earlier since;
    read from ``registry``), unless ``early``: enrolled ahead of the day, the accounts
    its heads-up was to warn are met by login challenges unannounced, and the heads-up's
    audience (accounts without 2FA nor ELV) is then empty, so it never goes."""
    if plan.elv is None:
        raise GuardRefused(
            f"plan {plan.name} has no elv section: it enrols nobody in enhanced login "
            "verification (check ROLLOUT_PLAN)"
        )
    due = plan.elv.enroll_all_on
    if today < due and not early:
        raise GuardRefused(
            f"plan {plan.name} enrols every account in ELV on {due}, and today is "
            f"{today}: its heads-up tells accounts that date. Wait, move enroll_all_on "
            "in the plan, or pass --early to enrol them anyway"
        )
    told = elv_day_told(registry) if registry is not None else None
    if told is not None and today < told and not early:
        raise GuardRefused(
            f"the ELV heads-ups sent told accounts they would be enrolled on {told}, and "
            f"today is {today} (the plan now says {due}): enrolling now challenges them "
            "before the date they were given. Wait, or pass --early to enrol them anyway"
        )


def enroll_all(
    registry: Registry,
    plan: Plan,
    *,
    actor: str,
    batch_size: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
    early: bool = False,
) -> int:
    """Enrol every account in ELV, in batches of ascending ids, on the plan's
    ``enroll_all_on`` or later (``enroll_all_guard``); resumable: a rerun touches only
    accounts still not enrolled. One audit row per batch (first and last id, count): at
    2M accounts a row each would double the work for no more truth, since
    ``elv_enrolled_at`` itself records each account's change. First the heads-ups not
    sent yet of ELV and of the brown-outs are withdrawn (``WITHDRAWN_BY_ENROLL_ALL``),
    audited: each announces emailed codes at login as to come, which every account then
    meets at every login."""
    if batch_size < 1:
        # 0 would enrol nobody and report success; a negative LIMIT means no limit.
        raise BadInput(None, None, f"batch size {batch_size}: must be at least 1")
    enroll_all_guard(plan, utc_now().date(), early=early, registry=registry)
    with registry.lock("elv") as held:
        engine = registry.engine
        with engine.connect() as connection:
            total = connection.execute(
                select(func.count())
                .select_from(ACCOUNTS)
                .where(ACCOUNTS.c.elv_enrolled_at.is_(None))
            ).scalar_one()
        with recorded_run(
            engine,
            plan=ELV_PLAN,
            step=ENROLL_ALL_STEP,
            mode="apply",
            actor=actor,
            lock="elv",
            parameters={"batch_size": batch_size, "early": early},
        ) as run:
            run_id = run.id
            # Before any account: enrolled (early), they would still be sent the
            # heads-ups queued and not gone, telling them of a day to come what is done
            # (as a brown-out's start withdraws its own): ELV for all's, and a coming
            # brown-out's, whose audience (without 2FA nor ELV) the enrolment empties.
            # A kill between batches leaves none queued; a rerun withdraws again
            # (nothing left) and goes on.
            with begin_writing(engine) as connection:
                for selection in WITHDRAWN_BY_ENROLL_ALL.values():
                    withdraw_queued(
                        connection,
                        selection,
                        reason=ENROLLED_ALL,
                        actor=actor,
                        run_id=run_id,
                    )
            enrolled, last_id = 0, -1
            while True:
                held.check()  # its lock lost (the session ended): no batch more
                now = utc_now()
                with begin_writing(engine) as connection:
                    # Locked first, in order of id, as enforcement locks its batch's
                    # (rollout.registry.locks): the two at once never deadlock.
                    ids = lock_accounts(
                        connection,
                        and_(ACCOUNTS.c.id > last_id, ACCOUNTS.c.elv_enrolled_at.is_(None)),
                        limit=batch_size,
                    )
                    if not ids:
                        break
                    # The rows just locked: nothing clears elv_enrolled_at, so no
                    # other row of the range matches.
                    changed = connection.execute(
                        update(ACCOUNTS)
                        .where(
                            and_(
                                ACCOUNTS.c.id >= ids[0],
                                ACCOUNTS.c.id <= ids[-1],
                                ACCOUNTS.c.elv_enrolled_at.is_(None),
                            )
                        )
                        .values(elv_enrolled_at=now)
                    ).rowcount
                    record_actions(
                        connection,
                        [
                            {
                                "effect_key": f"elv-enroll:{run_id}:{ids[0]}",
                                "action": "elv_enrolled",
                                "subject": f"accounts {ids[0]}..{ids[-1]}",
                                "reason": "enhanced login verification for all accounts",
                                "actor": actor,
                                "run_id": run_id,
                                "created_at": now,
                                "details": {
                                    "first_id": ids[0],
                                    "last_id": ids[-1],
                                    "count": changed,
                                },
                            }
                        ],
                    )
                enrolled += changed
                last_id = ids[-1]
                run.summary = {"enrolled": enrolled}
                if progress:
                    progress(enrolled, total)
        return enrolled


def accounts_challenged(registry: Registry) -> dict[str, int]:
    """Who a brown-out reaches: accounts without 2FA, and those not yet ELV-enrolled
    (the ones for whom the window changes anything)."""
    without = ~has_active_factor(ACCOUNTS.c.id)
    with registry.engine.connect() as connection:
        row = connection.execute(
            select(
                func.count().filter(without),
                func.count().filter(and_(without, ACCOUNTS.c.elv_enrolled_at.is_(None))),
                func.count().filter(ACCOUNTS.c.elv_enrolled_at.is_(None)),
            ).select_from(ACCOUNTS)
        ).one()
    return {"without_2fa": row[0], "without_2fa_nor_elv": row[1], "not_elv_enrolled": row[2]}

"""The plan as a timeline, and where each step stands (``rollout plan show``).

The steps are the plan's calendar (rollout.core.calendar). Each step the pipeline acts on
carries the key its runs are recorded under in ``plan_runs`` (``phase top-100``,
``notices top-100``...), so a step's state is read from its runs: pending, previewed,
applied, rolled back, failed, or interrupted (a run still marked running that no
process is doing any more).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from rollout.core.calendar import (
    REQUESTS_FINGERPRINT,
    Step,
    phase_step,
    plan_calendar,
    too_late,
    unplanned_kind,
)
from rollout.core.plan import Plan
from rollout.notify.emails import HEADS_UP_EMAIL, counts_as_told
from rollout.phases.brownouts import ELV_PLAN
from rollout.phases.previews import saved_previews
from rollout.registry import Registry
from rollout.registry.ledger import utc_now
from rollout.registry.models import BrownoutWindow, PlanRun, state_at


@dataclass(frozen=True)
class StepState:
    step: Step
    state: str
    at: datetime | None = None
    run_id: str | None = None
    actor: str | None = None
    detail: str = ""


def plan_steps(plan: Plan) -> list[Step]:
    """Every dated step of the plan, in calendar order: the whole calendar, since
    ``plan show`` lists even the dates nothing runs for (the ELV trial)."""
    return plan_calendar(plan)


def _lock_free(registry: Registry, name: str) -> bool:
    # Asked, not taken: taking a held PostgreSQL lock waits for it a moment
    # (rollout.registry.locks.LOCK_SETTLE_SECONDS), once for every run at work.
    return not registry.lock_held(name)


def _state_of(
    runs: Sequence[PlanRun], lock_free: Callable[[str], bool]
) -> tuple[str, PlanRun | None]:
    """A step's state from its runs, oldest first (``_recorded``), and the run that
    decided it: for an applied step its first apply since the last rollback (a later
    no-op rerun, or a catch-up that found nothing new, does not hide what the step
    did). Which run came before which is their place in ``runs``, never their start
    alone: an apply and its rollback can start at the same instant."""
    if not runs:
        return "pending", None

    def gone(run: PlanRun) -> bool:
        # A run holds its lock while it works: a free lock means its process is gone.
        return bool(run.lock_name and lock_free(run.lock_name))

    latest = runs[-1]
    if latest.state == "running" and not gone(latest):
        return "running", latest
    # The last apply or rollback decides over any preview since: the runbook's first move
    # after a crash is a preview, which must not make an interrupted or failed apply look
    # merely previewed.
    acting = [r for r in runs if r.mode in ("apply", "rollback")]
    decisive = acting[-1] if acting else latest
    if decisive.state == "running":
        if not gone(decisive):
            return "running", decisive
        # A rollback stopped half way is not an enforcement stopped half way: what
        # finishes it is `phase rollback`, and `phase enforce` would undo it.
        if decisive.mode == "rollback":
            return "rollback interrupted", decisive
        # A re-run stopped after the step was applied: what the step did stands (shown
        # by its apply), and only what the re-run had left (new accounts since, if any)
        # waits for the next run. "interrupted" alone read as an enforcement half done.
        before = _state_of(runs[: runs.index(decisive)], lock_free)
        if before[0] == "applied":
            return "applied, re-run interrupted", before[1]
        return "interrupted", decisive
    if decisive.state == "failed":
        return f"{decisive.mode} failed", decisive
    done = [r for r in runs if r.state == "succeeded" and r.mode in ("apply", "rollback")]
    if not done:
        return "previewed", latest
    if done[-1].mode == "rollback":
        return "rolled back", done[-1]
    last_rollback = max((i for i, r in enumerate(done) if r.mode == "rollback"), default=-1)
    applies = [r for r in done[last_rollback + 1 :] if r.mode == "apply"]
    return "applied", applies[0]


def _detail(run: PlanRun | None, plan: Plan, step: Step) -> str:
    """A run's summary in words: ``accounts_flagged 45, batches 1``, or per part
    (``top-100: packages 100, accounts 140; high-impact: ...``). A phase's enforcement
    run's counts as its summary email shows them (counts_as_told): a banner's phase
    says ``accounts_acted_on``, not ``accounts_required``."""
    if run is None or not run.summary:
        return ""
    summary = run.summary
    if step.kind == "enforce" and not isinstance(run, _PreviewRun):
        phase = next((p for p in plan.phases if p.name == step.subject), None)
        summary = counts_as_told(phase, summary)

    def words(summary: dict[str, Any]) -> str:
        parts = [
            f"{key}: {words(value)}" if isinstance(value, dict) else f"{key} {value}"
            for key, value in summary.items()
            if key != "csv"
        ]
        nested = any(isinstance(value, dict) for value in summary.values())
        return ("; " if nested else ", ").join(parts)

    return words(summary)


@dataclass(frozen=True)
class _PreviewRun:
    """A saved preview (reports/previews/*.json) in the shape of a plan_runs row."""

    id: str
    step: str
    actor: str
    started_at: datetime
    summary: dict[str, Any]
    mode: str = "preview"
    state: str = "succeeded"
    lock_name: str | None = None

    @property
    def finished_at(self) -> datetime:
        return self.started_at


def _recorded(run: PlanRun | _PreviewRun) -> tuple[datetime, int, int]:
    """A run's place among its step's runs: by start, then as the registry recorded
    them (plan_runs.seq: two runs can start at the same instant, under the demo's
    simulated clock or a coarse one). A saved preview, which the registry never saw,
    comes after the registry's runs of its instant."""
    if isinstance(run, _PreviewRun):
        return run.started_at, 1, 0
    return run.started_at, 0, run.seq


def _mailing_not_run(step: Step, window: Any, now: datetime) -> str | None:
    """What became of a mailing never queued, once nothing will queue it: its brown-out
    ended early, started or over before its heads-up went ("not sent: ..."), or its last
    day gone ("missed": `notify queue` holds such a mailing back; `--late` sends it); a
    heads-up goes by its window in the registry, moved or not.
    None while it may still go: "pending" said of such a step read as still to come."""
    assert step.mailing is not None
    if step.mailing.email == HEADS_UP_EMAIL and window is not None:
        # The registry's window, not the plan's day: the queue announces its own times.
        held = state_at(window, now)
        return None if held == "scheduled" else f"not sent: brown-out {held}"
    # By the instant, not the day: a heads-up of a window that begins at 14:00 may
    # still be queued that morning.
    if too_late(step.mailing.too_late_at, now):
        return "missed"
    return None


def step_states(
    registry: Registry,
    plan: Plan,
    at: datetime | None = None,
    reports_dir: Path | None = None,
    skipped: list[str] | None = None,
) -> list[StepState]:
    """Each step of the plan with its state, from plan_runs, brownout_windows and the
    previews saved under ``reports_dir`` (a preview writes nothing to the registry);
    a file there that is not a preview record is said in ``skipped`` (saved_previews)."""
    now = at or utc_now()
    with registry.engine.connect() as connection:
        runs: dict[str, list[Any]] = defaultdict(list)
        # As of ``now``: runs that started later have not happened yet.
        for run in connection.execute(
            select(PlanRun)
            .where(PlanRun.started_at <= now)
            .order_by(PlanRun.started_at, PlanRun.seq)
        ).all():
            runs[run.step].append(run)
        windows = {w.name: w for w in connection.execute(select(BrownoutWindow)).all()}
    for record in saved_previews(reports_dir, skipped) if reports_dir else []:
        # A phase's preview of this plan (an org's, saved beside it, is left out).
        if record.get("plan") == plan.name and record["at"] <= now:
            summary = {k: record[k] for k in ("accounts", "sessions", "compliant", "exempted")}
            step = phase_step(record["phase"])
            runs[step].append(
                _PreviewRun(record["run_id"], step, record["actor"], record["at"], summary)
            )
    for step_runs in runs.values():
        step_runs.sort(key=_recorded)
    free: dict[str, bool] = {}

    def lock_free(name: str) -> bool:
        if name not in free:
            free[name] = _lock_free(registry, name)
        return free[name]

    states = []
    for step in plan_steps(plan):
        if not step.key:
            passed = step.on <= now.date()
            states.append(StepState(step, "passed" if passed else "upcoming"))
        elif step.kind == "brownout":
            # A window's state is the registry's: it can start early or end in an emergency.
            window = windows.get(step.subject)
            if window is None or window.created_at > now:
                states.append(StepState(step, "not scheduled"))
            else:
                states.append(
                    StepState(
                        step,
                        state_at(window, now),
                        window.ended_early_at or window.starts_at,
                        actor=window.created_by,
                    )
                )
        else:
            state, run = _state_of(runs.get(step.key, []), lock_free)
            if run is None and step.mailing is not None:
                state = _mailing_not_run(step, windows.get(step.subject), now) or state
            states.append(
                StepState(
                    step,
                    state,
                    (run.finished_at or run.started_at) if run else None,
                    run.id if run else None,
                    run.actor if run else None,
                    _detail(run, plan, step),
                )
            )
    return states


def interrupted_off_calendar(
    registry: Registry, plan: Plan, at: datetime | None = None
) -> list[Any]:
    """Runs still marked running whose process is gone, of no step of the plan's
    calendar (an org owner's enforcement or invitations, snoozes, a cohort build on a
    day the plan does not date: rollout.core.calendar.UNPLANNED_STEPS), oldest first:
    ``plan show`` lists them below the calendar, as it does the calendar's own. Not one
    a later run finished (:func:`_finished_since`): its hint says to re-run it, and the
    re-run done, it would say so for ever."""
    now = at or utc_now()
    dated = {step.key for step in plan_steps(plan) if step.key}
    with registry.engine.connect() as connection:
        running = connection.execute(
            select(PlanRun)
            .where(PlanRun.state == "running", PlanRun.started_at <= now)
            .order_by(PlanRun.started_at, PlanRun.seq)
        ).all()
        succeeded = connection.execute(
            select(PlanRun).where(
                PlanRun.state == "succeeded",
                PlanRun.finished_at <= now,
                PlanRun.step.in_({run.step for run in running if run.step not in dated}),
            )
        ).all()
    free: dict[str, bool] = {}
    found = []
    for run in running:
        if run.step in dated or not run.lock_name:
            continue
        if run.plan not in (plan.name, ELV_PLAN) and unplanned_kind(run.step) is None:
            continue  # another plan's (an earlier campaign's): its own `plan show`'s
        if _finished_since(run, succeeded):
            continue
        if run.lock_name not in free:
            free[run.lock_name] = _lock_free(registry, run.lock_name)
        if free[run.lock_name]:
            found.append(run)
    return found


def _finished_since(run: PlanRun, succeeded: Sequence[PlanRun]) -> bool:
    """Whether a run of the same step recorded after ``run`` succeeded, which did what
    ``run`` had left: each of these steps' runs acts on all there is to do when it runs
    (an org's members without 2FA, its removed members now with 2FA, the day's cohorts,
    every account not ELV-enrolled), but a snooze, which grants only the requests it is
    given: one finishes it only with the same requests (``requests_fingerprint``)."""
    return any(
        (later.plan, later.step, later.mode) == (run.plan, run.step, run.mode)
        and later.seq > run.seq
        and (
            unplanned_kind(run.step) != "snoozes"
            or (
                run.parameters.get(REQUESTS_FINGERPRINT) is not None
                and later.parameters.get(REQUESTS_FINGERPRINT)
                == run.parameters.get(REQUESTS_FINGERPRINT)
            )
        )
        for later in succeeded
    )

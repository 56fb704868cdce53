"""Queueing a past day, on SQLite and PostgreSQL: a mailing whose last day has passed by
today (the pipeline's clock) is held back, said so, and queued only when asked for
(``late``, ``notify queue --late``); for a reminder of per-account deadlines, each
account whose own deadline has come is held back, the others are queued."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.config import load_settings
from rollout.core.plan import Plan
from rollout.notify.drain import drain
from rollout.notify.outbox import QUEUED_LATE
from rollout.notify.queue import QueueOutcome, last_day_words, queue_due, queue_preview
from rollout.phases import brownouts
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.models import Account, Notification, PlanRun
from tests.factories import AccountFactory, bound_to
from tests.support.outbox import (
    AFTERNOON,
    Recording,
    ids,
    on,
    publishers_noticed,
    rows,
    with_an_afternoon_brownout,
)

ROOT = Path(__file__).resolve().parent.parent
# top-100's deadline is 2022-02-01: its reminders' last day is 2022-01-31.
THREE_DAYS_BEFORE = date(2022, 1, 29)
AFTER_THE_DEADLINE = date(2022, 2, 3)

__all__ = ["ids"]  # a fixture, used by name


def _by_step(outcomes: list[QueueOutcome]) -> dict[str, QueueOutcome]:
    return {o.occasion.step: o for o in outcomes}


def _reminders(registry: Registry, username: str) -> dict[str, tuple[str, str | None]]:
    """{occasion: (state, skip reason)} of top-100's reminders to ``username``: its
    14-day and 3-day ones, caught up the same day, go as one (the repeat window)."""
    with registry.engine.connect() as connection:
        found = connection.execute(
            select(Notification.occasion, Notification.state, Notification.skip_reason)
            .join(Account, Account.id == Notification.account_id)
            .where(Account.username == username, Notification.email == "reminder")
        ).all()
    return {occasion: (state, reason) for occasion, state, reason in found}


ONE_REMINDER = {"14d": ("sent", None), "3d": ("skipped", "inside the repeat window")}


def _runs(registry: Registry, step: str) -> int:
    with registry.engine.connect() as connection:
        return len(connection.execute(select(PlanRun.id).where(PlanRun.step == step)).all())


def test_a_past_day_whose_last_day_has_passed_is_held_back_unless_asked_late(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """On 02-03 a release manager catches up 01-29: top-100's 3-day reminder ("you will
    be signed out in 3 days") would reach ann after the deadline. Previewed and applied,
    it is held back, queues nothing and records no run; with ``late`` it is queued,
    marked to be sent however late, and is."""
    with on(AFTER_THE_DEADLINE):
        previewed = _by_step(queue_preview(registry, plan, THREE_DAYS_BEFORE))
        applied = _by_step(queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm"))
    for outcome in (previewed["reminders top-100 3d"], applied["reminders top-100 3d"]):
        # ann, cat (unverified) and dan (suppressed): ben has 2FA, eve is in no cohort.
        assert (outcome.audience, outcome.added, outcome.held_back, outcome.late) == (4, 0, 4, 0)
    assert rows(registry) == {}
    assert _runs(registry, "reminders top-100 3d") == 0

    with on(AFTER_THE_DEADLINE):
        [late] = [
            o
            for o in queue_preview(registry, plan, THREE_DAYS_BEFORE, late=True)
            if o.occasion.step == "reminders top-100 3d"
        ]
        assert (late.added, late.skipped, late.held_back, late.late) == (4, 3, 0, 4)
        queued = _by_step(queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm", late=True))
        sender = Recording()
        drain(registry, plan, sender)
    outcome = queued["reminders top-100 3d"]
    assert (outcome.added, outcome.skipped, outcome.held_back, outcome.late) == (4, 3, 0, 4)
    assert _reminders(registry, "ann") == ONE_REMINDER
    assert ("ann", "reminder") in {(m.to_name, m.email) for m in sender.sent}
    with registry.engine.connect() as connection:
        contexts = connection.execute(
            select(Notification.context).where(Notification.occasion == "3d")
        ).scalars()
        assert all(context[QUEUED_LATE] is True for context in contexts)
    assert _runs(registry, "reminders top-100 3d") == 1


def test_a_notice_queued_late_and_sent_after_the_deadline_says_the_requirement_applies_since(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """top-100's notices of 01-04, caught up with ``--late`` on 02-03, after its
    deadline of 02-01: ann's said 2FA "will be required from" 1 February and "on that
    day, if it still does not" you will be signed out, of a day gone."""
    with on(AFTER_THE_DEADLINE):
        queue_due(registry, plan, date(2022, 1, 4), actor="rm", late=True)
        sender = Recording()
        drain(registry, plan, sender)
    [notice] = [m for m in sender.sent if (m.to_name, m.email) == ("ann", "phase_notice")]
    assert notice.subject.endswith("required of your account since Tuesday 1 February 2022")
    said = " ".join(notice.text.split())
    assert "since Tuesday 1 February 2022, 00:00 UTC maintainers of these packages have had" in said
    assert "Once the registry enforces it, you will be signed out" in said
    assert "on that day" not in said and "from Tuesday" not in said


def test_a_past_day_before_its_last_day_is_queued_as_ever(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """01-29 caught up on 01-31, the reminders' last day: in time, queued unmarked."""
    with on(date(2022, 1, 31)):
        outcome = _by_step(queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm"))
        drain(registry, plan, Recording())
    reminders = outcome["reminders top-100 3d"]
    assert (reminders.added, reminders.held_back, reminders.late) == (4, 0, 0)
    assert _reminders(registry, "ann") == ONE_REMINDER


@pytest.mark.parametrize("scheduled", [True, False], ids=["window-scheduled", "plan-only"])
@pytest.mark.parametrize("as_of", [date(2022, 2, 15), date(2022, 2, 16)], ids=["eve", "the-day"])
def test_a_heads_up_caught_up_on_the_morning_of_an_afternoon_window_is_queued(
    registry: Registry, plan: Plan, ids: dict[str, int], scheduled: bool, as_of: date
) -> None:
    """brownout-1 starts at 14:00 UTC on 02-16 and the notify deployment was paused
    since 02-12. At 09:00 on the 16th, catching up the 15th, or the day's own run,
    queues its heads-up (to ann, cat, dan and eve, without 2FA): it still tells of a
    rehearsal to come, and is sent. From 14:00 it would tell of one under way: a window
    only in the plan is held back (the registry's, begun, is no longer announced)."""
    afternoon = with_an_afternoon_brownout(plan)
    if scheduled:
        with on(date(2022, 2, 1)):
            brownouts.schedule(registry, afternoon, actor="rm")
    with use_clock(SimulatedClock(AFTERNOON)):
        begun = _by_step(queue_preview(registry, afternoon, as_of))
    assert ("heads-up brownout-1" in begun) == (not scheduled)
    if not scheduled:
        held = begun["heads-up brownout-1"]
        assert (held.added, held.held_back) == (0, 4)
        assert last_day_words(held.occasion, AFTERNOON) == (
            "it had to go before 2022-02-16 14:00 UTC, now 2022-02-16 14:00"
        )
    with on(date(2022, 2, 16)):
        previewed = _by_step(queue_preview(registry, afternoon, as_of))
        applied = _by_step(queue_due(registry, afternoon, as_of, actor="rm"))
        drain(registry, afternoon, Recording())
    for outcome in (previewed["heads-up brownout-1"], applied["heads-up brownout-1"]):
        assert (outcome.audience, outcome.added, outcome.held_back, outcome.late) == (4, 4, 0, 0)
    assert rows(registry, "brownout_heads_up")["ann"] == ("sent", None)


@pytest.fixture
def github(registry: Registry, factories: None) -> Plan:
    """github-2023 (45 days from each account's notice): ann's and eve's notices went on
    2023-03-13 (deadline 04-27), bob's on 03-15 (deadline 04-29)."""
    return publishers_noticed(registry)


def test_a_past_day_holds_back_the_reminders_of_accounts_whose_own_deadline_came(
    registry: Registry, github: Plan
) -> None:
    """04-22 caught up on 04-28: its 7-day reminders are ann's and eve's (deadline 04-27,
    gone) and bob's (04-29, tomorrow). bob's is queued; ann's and eve's are held back,
    and queued (marked) only when asked for."""
    with on(date(2023, 4, 28)):
        previewed = _by_step(queue_preview(registry, github, date(2023, 4, 22)))
        applied = _by_step(queue_due(registry, github, date(2023, 4, 22), actor="rm"))
    for outcome in (previewed["reminders publishers 7d"], applied["reminders publishers 7d"]):
        assert (outcome.audience, outcome.added, outcome.held_back) == (3, 1, 2)
    assert {name: state for name, (state, _) in rows(registry, "reminder").items()} == {
        "bob": "queued"
    }
    with on(date(2023, 4, 28)):
        later = _by_step(queue_due(registry, github, date(2023, 4, 22), actor="rm", late=True))
        drain(registry, github, Recording())
    outcome = later["reminders publishers 7d"]
    assert (outcome.added, outcome.already, outcome.held_back, outcome.late) == (2, 1, 0, 2)
    assert set(rows(registry, "reminder")) == {"ann", "eve", "bob"}
    assert {state for state, _ in rows(registry, "reminder").values()} == {"sent"}


# --- the command line ---------------------------------------------------------------------


def run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_notify_queue_shows_what_it_holds_back_and_why_and_late_queues_it(
    rollout_home: Path,
) -> None:
    assert run("db", "upgrade").exit_code == 0
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        AccountFactory(username="ann", in_cohort="top-100")
    engine.dispose()
    at = datetime.combine(AFTER_THE_DEADLINE, time(9))
    with use_clock(SimulatedClock(at)):
        preview = run("notify", "queue", "--as-of", "2022-01-29", "--format", "json")
        applied = run("notify", "queue", "--as-of", "2022-01-29", "--apply", "--format", "json")
        assert json.loads(run("notify", "status", "--format", "json").stdout) == []
        late = run("notify", "queue", "--as-of", "2022-01-29", "--late", "--apply")
        sent = run("notify", "send", "--apply")
    for result in (preview, applied):
        assert result.exit_code == 0, result.stderr
        reminder = {r["step"]: r for r in json.loads(result.stdout)}["reminders top-100 3d"]
        assert (reminder["new"], reminder["held_back"]) == (0, 1)
        said = " ".join(result.stderr.split())
        assert (
            "held back: reminders top-100 3d: its last day was 2022-01-31, before today "
            "(2022-02-03)" in said
        )
        held = "would not be queued" if result is preview else "not queued"
        assert (
            f"1 email {held}, it would announce a date already gone (--late queues it anyway)"
            in said
        )
    assert late.exit_code == 0, late.stderr
    assert "reminders top-100 3d: its last day was 2022-01-31" in " ".join(late.stderr.split())
    assert "queued late (--late)" in " ".join(late.stderr.split())
    assert sent.exit_code == 0, sent.stderr
    status = json.loads(run("notify", "status", "--format", "json").stdout)
    sent = {r["email"] for r in status if r["state"] == "sent"}
    assert sent == {"phase_notice", "reminder"}
    assert "too late" not in {r["reason"] for r in status}

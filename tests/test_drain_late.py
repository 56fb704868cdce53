"""Sending late, on SQLite and PostgreSQL: an email claimed after its last day (the
sender was down for days, the notify deployment paused, a failure retried long after)
is not sent but recorded as skipped, ``too late``, for good: a reminder after the
deadline it counts to (the phase's, or the account's own), a notice once its deadline
came, a brown-out heads-up once the window started, the ELV heads-up once ELV came. An
email of no date goes however late."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.plan import Plan
from rollout.notify import outbox
from rollout.notify.drain import drain, skips_waiting
from rollout.notify.outbox import TOO_LATE, outbox_status
from rollout.notify.queue import queue_due
from rollout.phases import brownouts
from rollout.phases.snoozes import COMMAND, SnoozeRequest, snooze
from rollout.registry import Registry
from rollout.registry.models import Notification, OrgInvitation
from tests.factories import AccountFactory, NotificationFactory, bound_to
from tests.support.outbox import (
    AFTERNOON,
    Recording,
    enforce_as_previewed,
    ids,
    on,
    publishers_noticed,
    queue_and_send,
    rows,
    with_an_afternoon_brownout,
)

ROOT = Path(__file__).resolve().parent.parent
NOTICE_DAY = date(2022, 1, 4)
THREE_DAYS_BEFORE = date(2022, 1, 29)  # top-100's deadline: 2022-02-01

__all__ = ["ids"]  # a fixture, used by name


@pytest.mark.parametrize(
    ("drained_on", "expected"),
    [(date(2022, 1, 31), ("sent", None)), (date(2022, 2, 1), ("skipped", TOO_LATE))],
    ids=["on-its-last-day", "on-the-deadline"],
)
def test_a_reminder_queued_before_an_outage_is_sent_only_until_its_last_day(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    drained_on: date,
    expected: tuple[str, str | None],
) -> None:
    """top-100's 3-day reminder, queued on 01-29 and not sent that day (SendGrid down):
    sent on 01-31 it is still in time; on 02-01, the deadline, "you will be signed out
    in 3 days" would come after the fact. The skip shows in the drain's counts and in
    the outbox status, and is final."""
    queue_and_send(registry, plan, NOTICE_DAY, date(2022, 1, 18))  # the 14-day reminder
    with on(THREE_DAYS_BEFORE):
        queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm")
    sender = Recording()
    with on(drained_on):
        report = drain(registry, plan, sender)
    assert rows(registry, "reminder", "3d")["ann"] == expected
    reminded = "ann" in {m.to_name for m in sender.sent if m.email == "reminder"}
    assert reminded == (expected[0] == "sent")
    if reminded:  # sent two days after its day: the days left counted from the send
        [sent] = [m for m in sender.sent if m.email == "reminder" and m.to_name == "ann"]
        assert "within 24 hours" in sent.subject and "3 days" not in sent.subject
    if expected[0] == "skipped":
        assert report.skipped[TOO_LATE] == 1 and report.sent == 0
        status = outbox_status(registry)
        assert {"email": "reminder", "state": "skipped", "reason": TOO_LATE, "count": 1} in status
        # For good: nothing left to send, nothing to retry.
        with on(drained_on):
            assert drain(registry, plan, sender, retry_failed=True).done == 0
        assert rows(registry, "reminder", "3d")["ann"] == expected


def test_a_notice_and_a_failure_retried_after_the_deadline_are_too_late(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """The notices of 01-04: ann's refused by SendGrid (failed), ben's never sent (the
    deployment paused). Retried and drained on 02-02, after top-100's deadline, neither
    goes: "2FA will be required on 1 February" would be false news."""
    with on(NOTICE_DAY):
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
        drain(registry, plan, Recording(fail_for="ann"), limit=1)
    assert rows(registry, "phase_notice", "")["ann"][0] == "failed"
    assert rows(registry, "phase_notice", "")["ben"][0] == "queued"
    sender = Recording()
    with on(date(2022, 2, 2)):
        report = drain(registry, plan, sender, retry_failed=True)
    assert (report.requeued, report.sent, report.skipped[TOO_LATE]) == (1, 0, 2)
    assert sender.sent == []
    for name in ("ann", "ben"):
        assert rows(registry, "phase_notice", "")[name] == ("skipped", TOO_LATE)
    assert outbox.failed_count(registry) == 0


@pytest.mark.parametrize("scheduled", [True, False], ids=["window-scheduled", "plan-only"])
@pytest.mark.parametrize(
    ("afternoon", "drained_at", "expected"),
    [
        (False, datetime(2022, 2, 15, 23), ("sent", None)),
        (False, datetime(2022, 2, 16, 9), ("skipped", TOO_LATE)),
        (True, datetime(2022, 2, 16, 9), ("sent", None)),
        (True, datetime(2022, 2, 16, 13, 59), ("sent", None)),
        (True, AFTERNOON, ("skipped", TOO_LATE)),
    ],
    ids=[
        "the-day-before",
        "once-it-began",
        "afternoon-that-morning",
        "afternoon-a-minute-before",
        "afternoon-as-it-begins",
    ],
)
def test_a_brownout_heads_up_goes_until_its_window_begins(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    scheduled: bool,
    afternoon: bool,
    drained_at: datetime,
    expected: tuple[str, str | None],
) -> None:
    """brownout-1's heads-up (queued 02-13, three days before the window) left unsent
    by an outage: nobody started or ended the window, so nothing withdrew it. It goes
    until the window begins by its schedule, to the minute: at 00:00 on 02-16, or, moved
    to 14:00 that day, still on that morning; after that "a rehearsal is coming" would
    reach accounts in the middle of it. By the registry's window when it is scheduled,
    else by the plan's."""
    if afternoon:
        plan = with_an_afternoon_brownout(plan)
    if scheduled:
        with on(date(2022, 2, 1)):
            brownouts.schedule(registry, plan, actor="rm")
    with on(date(2022, 2, 13)):
        queue_due(registry, plan, date(2022, 2, 13), actor="rm")
    with use_clock(SimulatedClock(drained_at)):
        drain(registry, plan, Recording())
    assert rows(registry, "brownout_heads_up", "brownout-1")["ann"] == expected


@pytest.mark.parametrize(
    ("drained_on", "expected"),
    [(date(2022, 2, 28), ("sent", None)), (date(2022, 3, 1), ("skipped", TOO_LATE))],
    ids=["the-day-before", "on-the-day"],
)
def test_the_elv_heads_up_is_too_late_on_the_day_it_tells(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    drained_on: date,
    expected: tuple[str, str | None],
) -> None:
    with on(date(2022, 2, 22)):
        queue_due(registry, plan, date(2022, 2, 22), actor="rm")
    with on(drained_on):
        drain(registry, plan, Recording())
    assert rows(registry, "elv_enrollment", "elv")["ann"] == expected


def test_a_reminder_follows_the_accounts_own_deadline_when_sent_late(
    registry: Registry, factories: None
) -> None:
    """github-2023, 45 days from each account's notice: ann's and eve's went on 03-13
    (deadline 04-27), bob's on 03-15 (04-29). Their 7-day reminders are queued on 04-22;
    the sender is down until 04-28. Meanwhile eve postponed hers by 7 days (05-04). On
    04-28 ann's deadline has gone: hers is skipped; eve's and bob's are still ahead: they
    go, and so does the answer to eve's request (an email of no date)."""
    plan = publishers_noticed(registry)
    with on(date(2023, 4, 22)):
        queue_due(registry, plan, date(2023, 4, 22), actor="rm")
    at = datetime(2023, 4, 23, 8)
    snooze(registry, plan, "publishers", [SnoozeRequest("eve", 7, at, COMMAND)], actor="rm", now=at)
    sender = Recording()
    with on(date(2023, 4, 28)):
        report = drain(registry, plan, sender)
    assert rows(registry, "reminder", "7d")["ann"] == ("skipped", TOO_LATE)
    assert rows(registry, "reminder", "7d")["eve"] == ("sent", None)
    assert rows(registry, "reminder", "7d")["bob"] == ("sent", None)
    assert {(m.to_name, m.email) for m in sender.sent} == {
        ("eve", "reminder"),
        ("bob", "reminder"),
        ("eve", "snooze_reply"),
    }
    assert report.skipped == {TOO_LATE: 1}


def test_emails_of_no_date_go_however_late(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """The enforcement notices of 02-01 and an org's removal notice, sent months later
    (by the real clock, years): they tell what was done, not what is coming."""
    with on(date(2022, 2, 1), hour=12):
        enforce_as_previewed(registry, plan, "top-100")
    with bound_to(registry.engine):
        NotificationFactory(
            account=AccountFactory(username="org-member"),
            email="org_removal_notice",
            phase="org:acme",
            occasion="run-1",
            context={"org": "acme"},
        )
    sender = Recording()
    report = drain(registry, plan, sender)
    assert report.skipped[TOO_LATE] == 0
    assert {m.email for m in sender.sent} == {"enforcement_notice", "org_removal_notice"}
    assert rows(registry, "enforcement_notice", "")["ann"][0] == "sent"


@pytest.mark.parametrize(
    ("drained_at", "expected"),
    [
        (datetime(2022, 3, 8, 9, 59), ("sent", None)),
        (datetime(2022, 3, 8, 10), ("skipped", TOO_LATE)),
        (datetime(2022, 3, 20, 9), ("skipped", TOO_LATE)),
    ],
    ids=["a-minute-before-it-expires", "as-it-expires", "days-after"],
)
def test_an_org_invitation_goes_only_until_it_expires(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    drained_at: datetime,
    expected: tuple[str, str | None],
) -> None:
    """An invitation back into acme, sent by its owner on 03-01 10:00 and open for 7
    days, queued then and left unsent by an outage: until 03-08 10:00 its email still
    says "accept before Tuesday 8 March 2022, 10:00 UTC" of an invitation the registry
    takes; from then on it would invite the member to accept one the registry has
    expired. Skipped as too late, as the send's preview says beforehand."""
    with bound_to(registry.engine):
        NotificationFactory(
            account=AccountFactory(username="invited", with_totp=True),
            email="org_invitation",
            phase="org:acme",
            occasion="invitation:1",
            context={
                "org": "acme",
                "team": "core",
                "invited_by": "owner",
                "expires_at": "2022-03-08T10:00:00",
            },
        )
    sender = Recording()
    with use_clock(SimulatedClock(drained_at)):
        waiting = skips_waiting(registry, plan)
        report = drain(registry, plan, sender)
    assert rows(registry, "org_invitation", "invitation:1")["invited"] == expected
    if expected[0] == "sent":
        [sent] = sender.sent
        assert "Tuesday 8 March 2022, 10:00 UTC" in sent.text
        assert waiting == {}
    else:
        assert sender.sent == [] and report.skipped == {TOO_LATE: 1}
        assert waiting == {(TOO_LATE, "org_invitation"): 1}


@pytest.mark.parametrize(("state", "goes"), [("pending", True), ("accepted", False)])
def test_an_org_invitation_accepted_before_its_email_goes_is_not_sent(
    registry: Registry, plan: Plan, ids: dict[str, int], state: str, goes: bool
) -> None:
    """The member accepted the invitation (on the registry's site, which shows the
    pending ones) while its email waited: "acme invites you back" to one back already
    is skipped as too late, as the send's preview says beforehand; a pending one goes."""
    with bound_to(registry.engine):
        account = AccountFactory(username="invited", with_totp=True)
        NotificationFactory(
            account=account,
            email="org_invitation",
            phase="org:acme",
            occasion="invitation:7",
            context={
                "org": "acme",
                "team": "core",
                "invited_by": "owner",
                "expires_at": "2022-03-08T10:00:00",
            },
        )
    with registry.engine.begin() as connection:
        connection.execute(
            OrgInvitation.__table__.insert().values(
                id=7,
                org_id=1,
                account_id=account.id,
                team_id=1,
                state=state,
                invited_by="owner",
                created_at=datetime(2022, 3, 1, 10),
                expires_at=datetime(2022, 3, 8, 10),
                settled_at=None if state == "pending" else datetime(2022, 3, 2, 8),
            )
        )
    sender = Recording()
    with use_clock(SimulatedClock(datetime(2022, 3, 3, 9))):
        waiting = skips_waiting(registry, plan)
        report = drain(registry, plan, sender)
    if goes:
        assert [m.email for m in sender.sent] == ["org_invitation"] and waiting == {}
    else:
        assert sender.sent == [] and report.skipped == {TOO_LATE: 1}
        assert waiting == {(TOO_LATE, "org_invitation"): 1}
        assert rows(registry, "org_invitation", "invitation:7")["invited"] == (
            "skipped",
            TOO_LATE,
        )


def test_drain_workers_skip_too_late_emails_too(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """Worker processes judge by the real clock, years after 2022: the notices of 01-04,
    queued on the day but never sent, are skipped as too late there as well."""
    with on(NOTICE_DAY):
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
    report = drain(registry, plan, Recording(), processes=2)
    assert (report.sent, report.skipped[TOO_LATE]) == (0, 2)
    assert {state for state, _ in _states(registry)} == {"skipped"}


def test_the_sends_preview_counts_what_the_send_skips_as_too_late(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """The notices of 01-04: ann's refused by SendGrid (failed), ben's never sent, and
    ben's address suppressed since. On 02-02, after top-100's deadline, the preview of
    the send counts one to be skipped as too late only with the failed ones retried
    (ann's: ben's goes out for his address first, as the send judges), and the send
    skips just that."""
    with on(NOTICE_DAY):
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
        drain(registry, plan, Recording(fail_for="ann"), limit=1)
    outbox.suppress(registry, "ben@example.com", reason="hard bounce", actor="ops")
    with on(date(2022, 2, 2)):
        queued_only = skips_waiting(registry, plan)
        with_failed = skips_waiting(registry, plan, include_failed=True)
        report = drain(registry, plan, Recording(), retry_failed=True)
    assert queued_only == {}
    assert with_failed == {(TOO_LATE, "phase_notice"): 1}
    assert report.skipped == {TOO_LATE: 1, "suppressed": 1}


def _states(registry: Registry) -> list[tuple[str, str | None]]:
    with registry.engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(select(Notification.state, Notification.skip_reason))
        ]


def test_notify_send_and_status_say_how_many_were_too_late(rollout_home: Path) -> None:
    """A reminder queued in 2022 and sent now (the real clock): skipped, and said so."""
    from typer.testing import CliRunner

    from rollout.cli import app
    from rollout.core.config import load_settings
    from rollout.registry.engine import make_engine

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    assert run("db", "upgrade").exit_code == 0
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        NotificationFactory(
            email="reminder", occasion="3d", context={"phase": "top-100", "days_before": 3}
        )
    engine.dispose()
    preview = run("notify", "send")
    assert preview.exit_code == 0, preview.stderr
    said = " ".join(preview.stderr.split())
    assert "1 email queued; sender: file" in said
    assert "1 would be skipped as too late (past their last day): reminder 1" in said
    sent = run("notify", "send", "--apply")
    assert sent.exit_code == 0, sent.stderr
    assert "sent 0, failed 0, skipped 1 (1 too late)" in " ".join(sent.stderr.split())
    status = json.loads(run("notify", "status", "--format", "json").stdout)
    assert status == [{"email": "reminder", "state": "skipped", "reason": TOO_LATE, "count": 1}]

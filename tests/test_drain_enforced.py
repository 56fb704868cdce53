"""Warnings of a phase after its enforcement, on SQLite and PostgreSQL: a notice or a
reminder of a phase, queued before the phase's enforcement flagged its account (a
release manager enforcing ``--early`` between the day's queue and its send, a failed
send retried with ``--retry-failed`` afterwards) is not sent but recorded as skipped,
``already enforced``, for good: "in 3 days you will be signed out" must not follow the
enforcement notice of one signed out already. Judged when the send takes it, as the
queue judges it, and counted so by the send's preview; a rolled-back phase requires
nothing of anyone, so its warnings go again."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from rollout.core.plan import Plan
from rollout.notify.drain import drain, skips_waiting
from rollout.notify.emails import ENFORCEMENT_EMAIL
from rollout.notify.outbox import ENFORCED, IN_ELV, QUEUED_LATE, TOO_LATE
from rollout.notify.queue import queue_due
from rollout.phases import enforce
from rollout.phases.previews import reach_verdict
from rollout.registry import Registry
from rollout.registry.models import Account, PhaseRequirement
from tests.factories import NotificationFactory, bound_to
from tests.support.outbox import (
    Recording,
    enforce_as_previewed,
    ids,
    on,
    queue_and_send,
    rows,
)

NOTICE_DAY = date(2022, 1, 4)
FOURTEEN_DAYS_BEFORE = date(2022, 1, 18)
THREE_DAYS_BEFORE = date(2022, 1, 29)  # top-100's deadline: 2022-02-01

__all__ = ["ids"]  # a fixture, used by name


def _enforce_early(registry: Registry, plan: Plan) -> None:
    """top-100 enforced before its day: ann, cat and dan flagged (ben has TOTP)."""
    enforce.enforce_phase(registry, plan, "top-100", expect=3, actor="rm", early=True)


def _reminded(sender: Recording) -> set[str]:
    return {m.to_name for m in sender.sent if m.email == "reminder"}


def test_a_reminder_queued_before_an_early_enforcement_is_skipped_when_sent(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """The 3-day reminder queued on 01-29 at 09:00; the release manager enforces top-100
    early at 09:30, before the send: ann gets the enforcement notice, not a countdown
    to a deadline that has passed for her."""
    queue_and_send(registry, plan, NOTICE_DAY, FOURTEEN_DAYS_BEFORE)
    with on(THREE_DAYS_BEFORE):
        queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm")
    assert rows(registry, "reminder", "3d")["ann"] == ("queued", None)
    with on(THREE_DAYS_BEFORE, hour=10):
        _enforce_early(registry, plan)
        sender = Recording()
        report = drain(registry, plan, sender)
    assert rows(registry, "reminder", "3d")["ann"] == ("skipped", ENFORCED)
    assert "ann" not in _reminded(sender)
    assert "ann" in {m.to_name for m in sender.sent if m.email == ENFORCEMENT_EMAIL}
    assert report.skipped[ENFORCED] == 1
    with on(THREE_DAYS_BEFORE, hour=11):  # for good: nothing left to send
        assert drain(registry, plan, Recording(), retry_failed=True).sent == 0
    assert rows(registry, "reminder", "3d")["ann"] == ("skipped", ENFORCED)


def test_a_failed_reminder_retried_after_the_enforcement_is_skipped(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """SendGrid refused ann's reminder on 01-29; top-100 enforced early on 01-30; the
    failure retried after it (``notify send --retry-failed``) is not sent."""
    queue_and_send(registry, plan, NOTICE_DAY, FOURTEEN_DAYS_BEFORE)
    with on(THREE_DAYS_BEFORE):
        queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm")
        drain(registry, plan, Recording(fail_for="ann"))
    assert rows(registry, "reminder", "3d")["ann"][0] == "failed"
    with on(date(2022, 1, 30)):
        _enforce_early(registry, plan)
        drain(registry, plan, Recording())  # the enforcement notices
        sender = Recording()
        report = drain(registry, plan, sender, retry_failed=True)
    assert rows(registry, "reminder", "3d")["ann"] == ("skipped", ENFORCED)
    assert "ann" not in _reminded(sender)
    assert report.skipped == {ENFORCED: 1}


def test_a_reminder_waiting_through_an_enforcement_and_its_rollback_is_sent(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """Enforced early, then rolled back before the send: the phase requires nothing of
    ann now, her deadline stands, and the reminder of it goes."""
    queue_and_send(registry, plan, NOTICE_DAY, FOURTEEN_DAYS_BEFORE)
    with on(THREE_DAYS_BEFORE):
        queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm")
    with on(THREE_DAYS_BEFORE, hour=10):
        _enforce_early(registry, plan)
        enforce.rollback_phase(registry, plan, "top-100", actor="rm")
        sender = Recording()
        drain(registry, plan, sender)
    assert rows(registry, "reminder", "3d")["ann"][0] == "sent"
    assert _reminded(sender) == {"ann"}


def test_the_sends_preview_counts_the_warnings_it_skips_as_already_enforced(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """ann's reminder refused on 01-29, top-100 enforced early on 01-30: the preview
    counts it as the send skips it, already enforced, only with the failed ones
    retried; one also past its last day (on 02-02) is counted once, as too late, as the
    send records it."""
    queue_and_send(registry, plan, NOTICE_DAY, FOURTEEN_DAYS_BEFORE)
    with on(THREE_DAYS_BEFORE):
        queue_due(registry, plan, THREE_DAYS_BEFORE, actor="rm")
        drain(registry, plan, Recording(fail_for="ann"))
    with on(date(2022, 1, 30)):
        _enforce_early(registry, plan)
        drain(registry, plan, Recording())
        assert skips_waiting(registry, plan) == {}
        assert skips_waiting(registry, plan, include_failed=True) == {(ENFORCED, "reminder"): 1}
    with on(date(2022, 2, 2)):
        assert skips_waiting(registry, plan, include_failed=True) == {(TOO_LATE, "reminder"): 1}
        assert drain(registry, plan, Recording(), retry_failed=True).skipped == {TOO_LATE: 1}


def test_an_early_enforcement_s_preview_says_which_warnings_it_leaves_unsent(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """top-100's notices queued on 01-04 at 09:00 and not sent yet; previewed at 09:30
    for an early enforcement: ann's notice is waiting, and the preview says that once
    enforced it is never sent (the send skips it, already enforced), as the send then
    does. cat's and dan's (an unverified, a suppressed address) never go anyway."""
    with on(NOTICE_DAY):
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
    with on(NOTICE_DAY, hour=10):
        preview = enforce.preview_phase(registry, plan, plan.phase("top-100"))
        assert preview.warnings_left_unsent == {"not sent yet": 1}
        verdict = reach_verdict(preview)
        assert (
            "1 account of them (not sent yet 1) would never get their notice or reminder "
            "once enforced: the send skips it as already enforced"
        ) in verdict
        enforce.enforce_phase(
            registry, plan, "top-100", expect=preview.count, actor="rm", early=True
        )
        report = drain(registry, plan, Recording())
    assert report.skipped[ENFORCED] == sum(preview.warnings_left_unsent.values())
    assert rows(registry, "phase_notice")["ann"] == ("skipped", ENFORCED)
    with on(NOTICE_DAY, hour=11):  # nothing left waiting: said of nobody
        assert (
            enforce.preview_phase(registry, plan, plan.phase("top-100")).warnings_left_unsent == {}
        )


def test_no_notice_of_a_phase_goes_to_an_account_it_enforced_early(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """cat's notice was skipped on 01-04 (her address unverified); top-100 enforced
    early on 01-20 flags her; she verifies her address on 01-21. The next day's queue
    does not send her "from 2022-02-01 you will need 2FA": she was signed out already."""
    queue_and_send(registry, plan, NOTICE_DAY)
    assert rows(registry, "phase_notice")["cat"][0] == "skipped"
    with on(date(2022, 1, 20)):
        _enforce_early(registry, plan)
        drain(registry, plan, Recording())
    with registry.engine.begin() as connection:
        connection.execute(
            update(Account).where(Account.id == ids["cat"]).values(email_verified=True)
        )
    sender = Recording()
    with on(date(2022, 1, 21)):
        outcomes = queue_due(registry, plan, date(2022, 1, 21), actor="rm")
        # Not queued again for her fixed address: the queue judges it as the send would.
        assert [o.added for o in outcomes if o.occasion.email == "phase_notice"] == [0]
        assert rows(registry, "phase_notice")["cat"][0] == "skipped"
        drain(registry, plan, sender)
    assert rows(registry, "phase_notice")["cat"][0] == "skipped"
    assert "cat" not in {m.to_name for m in sender.sent if m.email == "phase_notice"}


def test_notify_send_says_how_many_would_be_skipped_as_already_enforced(
    rollout_home: Path,
) -> None:
    """A reminder queued late on purpose (``--late``: never too late) whose account
    top-100 has required since: the preview counts it in its column and says so, and
    the send skips it as it said."""
    from typer.testing import CliRunner

    from rollout.cli import app
    from rollout.core.config import load_settings
    from rollout.registry.engine import make_engine

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    assert run("db", "upgrade").exit_code == 0
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        reminder = NotificationFactory(
            email="reminder",
            occasion="3d",
            context={"phase": "top-100", "days_before": 3, QUEUED_LATE: True},
        )
    with engine.begin() as connection:
        connection.execute(
            insert(PhaseRequirement).values(
                account_id=reminder.account_id, phase="top-100", required_at=datetime(2022, 1, 29)
            )
        )
    engine.dispose()
    preview = run("notify", "send", "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    assert json.loads(preview.stdout) == [
        {
            "email": "reminder",
            "queued": 1,
            "too_late": 0,
            "already_enforced": 1,
            "already_in_elv": 0,
        }
    ]
    said = " ".join(preview.stderr.split())
    assert "1 would be skipped as already enforced" in said and "reminder 1;" in said
    assert "too late" not in said
    sent = run("notify", "send", "--apply")
    assert sent.exit_code == 0, sent.stderr
    assert "sent 0, failed 0, skipped 1 (1 already enforced)" in " ".join(sent.stderr.split())


HEADS_UP_DAY = date(2022, 2, 13)  # brownout-1 on 02-16; top-100 enforced from 02-01
ELV_HEADS_UP_DAY = date(2022, 2, 22)  # ELV for all on 03-01


def test_heads_ups_are_not_queued_to_accounts_already_required_2fa(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """top-100 enforced on 02-01: ann, without 2FA, was signed out and must set it up
    at her next login, the enforcement notice told her. The brown-out's heads-up ("nothing
    breaks: you will just be asked for the code at login") and ELV's ("every login will
    need an emailed code") are false for her: no code lets her in without setting up
    2FA. Recorded as skipped, already enforced; eve (no 2FA, required of nothing) gets
    both."""
    with on(date(2022, 2, 1)):
        enforce_as_previewed(registry, plan, "top-100")  # ann, cat, dan
    sender = Recording()
    for day in (HEADS_UP_DAY, ELV_HEADS_UP_DAY):
        with on(day):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, sender)
    assert rows(registry, "brownout_heads_up", "brownout-1")["ann"] == ("skipped", ENFORCED)
    assert rows(registry, "elv_enrollment", "elv")["ann"] == ("skipped", ENFORCED)
    heads_ups = {(m.to_name, m.email) for m in sender.sent if m.email != ENFORCEMENT_EMAIL}
    assert heads_ups == {("eve", "brownout_heads_up"), ("eve", "elv_enrollment")}


def test_a_heads_up_queued_before_the_enforcement_is_skipped_when_sent(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """brownout-1's heads-ups queued on 02-13 at 09:00; top-100 enforced, late, at 10:00
    (ann required 2FA, signed out); the send at 11:00 skips ann's, as the queue would
    have, and its preview said so beforehand."""
    with on(HEADS_UP_DAY):
        queue_due(registry, plan, HEADS_UP_DAY, actor="rm")
    assert rows(registry, "brownout_heads_up", "brownout-1")["ann"] == ("queued", None)
    with on(HEADS_UP_DAY, hour=10):
        enforce_as_previewed(registry, plan, "top-100")  # ann, cat, dan
    sender = Recording()
    with on(HEADS_UP_DAY, hour=11):
        waiting = skips_waiting(registry, plan)
        report = drain(registry, plan, sender)
    assert waiting == {(ENFORCED, "brownout_heads_up"): 1}
    assert report.skipped[ENFORCED] == 1
    assert rows(registry, "brownout_heads_up", "brownout-1")["ann"] == ("skipped", ENFORCED)
    assert {m.to_name for m in sender.sent if m.email == "brownout_heads_up"} == {"eve"}


def _opt_in_to_elv(registry: Registry, account_id: int, at: datetime) -> None:
    """The account opts in to the ELV trial on the registry's website."""
    with registry.engine.begin() as connection:
        connection.execute(
            update(Account).where(Account.id == account_id).values(elv_enrolled_at=at)
        )


def test_a_heads_up_to_an_account_enrolled_in_elv_since_it_was_queued_is_skipped(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """brownout-1's heads-up and ELV's are queued to eve (no 2FA, not in ELV); she opts
    in to the ELV trial before the send. "During the brown-out every login will need an
    emailed code" and "from 1 March every login will need one" are false for her now:
    she has needed one at every login since. The queue leaves such an account out;
    the send skips hers, ``already in ELV``, and its preview says so beforehand."""
    sender = Recording()
    for day in (HEADS_UP_DAY, ELV_HEADS_UP_DAY):
        with on(day):
            queue_due(registry, plan, day, actor="rm")
        assert rows(registry, *_HEADS_UP[day])["eve"] == ("queued", None)
        with on(day, hour=10):
            _opt_in_to_elv(registry, ids["eve"], datetime.combine(day, time(10)))
        with on(day, hour=11):
            waiting = skips_waiting(registry, plan)
            report = drain(registry, plan, sender)
        # (On 02-22 brownout-2's heads-up is queued to her too, and skipped alike.)
        assert waiting[(IN_ELV, _HEADS_UP[day][0])] == 1
        assert report.skipped[IN_ELV] == waiting.total()
        assert {why for why, _ in waiting} == {IN_ELV}
        assert rows(registry, *_HEADS_UP[day])["eve"] == ("skipped", IN_ELV)
        _opt_in_to_elv(registry, ids["eve"], None)  # out of the trial again: next one
    assert not [m for m in sender.sent if m.to_name == "eve"]


def test_a_brownout_heads_up_after_an_early_enroll_all_is_skipped(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """`elv enroll-all --early` withdrew the ELV heads-ups not sent yet, not a
    brown-out's: queued the same morning, it told every enrolled account of a
    rehearsal of codes it already meets at every login. The enrolment withdraws both
    (rollout.phases.brownouts.WITHDRAWN_BY_ENROLL_ALL); none is sent."""
    from rollout.phases import brownouts

    with on(HEADS_UP_DAY):
        queue_due(registry, plan, HEADS_UP_DAY, actor="rm")
    with on(HEADS_UP_DAY, hour=10):
        brownouts.enroll_all(registry, plan, actor="rm", early=True)
    sender = Recording()
    with on(HEADS_UP_DAY, hour=11):
        drain(registry, plan, sender)
    state, reason = rows(registry, "brownout_heads_up", "brownout-1")["eve"]
    assert state == "skipped" and brownouts.ENROLLED_ALL in reason, reason
    assert not [m for m in sender.sent if m.email == "brownout_heads_up"]


def test_notify_send_says_how_many_heads_ups_would_be_skipped_as_already_in_elv(
    rollout_home: Path,
) -> None:
    from typer.testing import CliRunner

    from rollout.cli.app import app
    from rollout.core.config import load_settings
    from rollout.registry.engine import make_engine

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    assert run("db", "upgrade").exit_code == 0
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        heads_up = NotificationFactory(
            email="brownout_heads_up", occasion="brownout-1", context={"brownout": "brownout-1"}
        )
    with engine.begin() as connection:
        connection.execute(
            update(Account)
            .where(Account.id == heads_up.account_id)
            .values(elv_enrolled_at=datetime(2022, 2, 13, 10))
        )
    engine.dispose()
    with on(HEADS_UP_DAY, hour=11):
        preview = run("notify", "send", "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    assert json.loads(preview.stdout) == [
        {
            "email": "brownout_heads_up",
            "queued": 1,
            "too_late": 0,
            "already_enforced": 0,
            "already_in_elv": 1,
        }
    ]
    assert "1 would be skipped as already in ELV" in " ".join(preview.stderr.split())
    with on(HEADS_UP_DAY, hour=11):
        sent = run("notify", "send", "--apply")
    assert sent.exit_code == 0, sent.stderr
    assert "sent 0, failed 0, skipped 1 (1 already in ELV)" in " ".join(sent.stderr.split())


_HEADS_UP = {
    HEADS_UP_DAY: ("brownout_heads_up", "brownout-1"),
    ELV_HEADS_UP_DAY: ("elv_enrollment", "elv"),
}

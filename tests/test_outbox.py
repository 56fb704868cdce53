"""The outbox on SQLite and PostgreSQL: the plan's mailings queued once, each skip
recorded with its reason, every message delivered exactly once through the real
SendGrid client and the local SendGrid server, whatever the server does."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from rollout.core.errors import RolloutError
from rollout.core.plan import ExemptAccount, Exemptions, Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.notify import outbox, queue
from rollout.notify.drain import DrainReport, _claim, _shares, drain
from rollout.notify.message import DeliveryFailed, Message
from rollout.notify.queue import due_occasions, plan_occasions, queue_due, queue_preview
from rollout.notify.senders import FileSender, SendGridSender
from rollout.registry import Registry
from rollout.registry.locks import RunLockLost
from rollout.registry.models import Account, Notification
from tests.factories import (
    AccountFactory,
    FactorFactory,
    MembershipFactory,
    bound_to,
    existing_account,
)
from tests.support.outbox import Recording, ids, on, queue_and_send, queue_late, rows
from tests.support.run_locks import lose_run_lock_during

from .conftest import postgres_only

ROOT = Path(__file__).resolve().parent.parent
REPEAT = "inside the repeat window"
KEY = "SG.test-outbox.k3y-that-must-never-leak"

__all__ = ["ids"]  # a fixture, used by name


# --- queueing --------------------------------------------------------------------------


def test_the_plan_calls_for_notices_reminders_heads_ups_and_the_elv_notice(plan: Plan) -> None:
    mailings = [(o.email, o.phase, o.occasion, o.due_on) for o in plan_occasions(plan)]
    assert ("phase_notice", "top-100", "", date(2022, 1, 4)) in mailings
    assert ("reminder", "top-100", "14d", date(2022, 1, 18)) in mailings
    assert ("reminder", "top-100", "3d", date(2022, 1, 29)) in mailings
    assert ("brownout_heads_up", "", "brownout-1", date(2022, 2, 13)) in mailings
    assert ("elv_enrollment", "", "elv", date(2022, 2, 22)) in mailings


def test_a_missed_day_is_caught_up_but_never_after_the_deadline(plan: Plan) -> None:
    assert [o.step for o in due_occasions(plan, date(2022, 1, 6))] == ["notices top-100"]
    late = {o.step for o in due_occasions(plan, date(2022, 2, 1))}
    assert not any("top-100" in step for step in late)


def test_notices_reach_the_cohort_and_record_why_some_get_nothing(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    with on(NOTICE_DAY):
        [preview] = queue_preview(registry, plan, NOTICE_DAY)
        assert (preview.audience, preview.added, preview.skipped) == (4, 4, 2)
        [outcome] = queue_due(registry, plan, NOTICE_DAY, actor="rm")
        assert (outcome.audience, outcome.added, outcome.already, outcome.skipped) == (4, 4, 0, 2)
        assert rows(registry) == {
            "ann": ("queued", None),
            "ben": ("queued", None),  # compliant: a thank-you, not a warning
            "cat": ("skipped", "unverified email"),
            "dan": ("skipped", "suppressed"),
        }
        [again] = queue_due(registry, plan, NOTICE_DAY, actor="rm")
        assert (again.added, again.already, again.skipped) == (0, 4, 0)
        [previewed_again] = queue_preview(registry, plan, NOTICE_DAY)
        assert (previewed_again.added, previewed_again.skipped) == (0, 0)
    assert len(rows(registry)) == 4


@postgres_only
def test_a_queue_run_whose_run_lock_session_ends_queues_nothing(
    registry: Registry, plan: Plan, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the queue lock went with its session (a server restart, a pooler, a
    keepalive timeout) while the notices were being queued, and another queue run may
    be at work: none of this run's rows commit; run again, it queues each once."""
    with (
        on(NOTICE_DAY),
        monkeypatch.context() as patched,
        pytest.raises(RunLockLost, match="the queue run lock was lost"),
    ):
        lose_run_lock_during(patched, queue, "queue_email", registry, "queue")
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
    assert rows(registry) == {}
    with on(NOTICE_DAY):
        [outcome] = queue_due(registry, plan, NOTICE_DAY, actor="rm")
    assert (outcome.added, outcome.already, outcome.skipped) == (4, 0, 2)


def test_an_account_the_plan_exempts_gets_no_warning_of_its_phases(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """ "You will be signed out" of an enforcement that never touches it: the notice and
    the reminders skip it, by name of the reason."""
    exempting_ann = plan.model_copy(
        update={
            "exemptions": Exemptions(
                accounts=[ExemptAccount(username="ann", reason="a service account")]
            )
        }
    )
    with on(date(2022, 1, 18)):
        queue_due(registry, exempting_ann, NOTICE_DAY, actor="rm")
        queue_due(registry, exempting_ann, date(2022, 1, 18), actor="rm")
    assert rows(registry, "phase_notice")["ann"] == ("skipped", "exempt by the plan")
    assert rows(registry, "reminder")["ann"] == ("skipped", "exempt by the plan")
    assert rows(registry, "phase_notice")["ben"] == ("queued", None)


def test_an_enforcement_email_to_an_account_an_earlier_phase_flagged_says_so(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """npm 2022: a top-100 maintainer still without 2FA in May was told by high-impact's
    enforcement "you were signed out": top-100 had done that in February. The email says
    2FA was already required; one flagged by this phase itself is told it was signed out."""
    from rollout.phases import enforce

    AccountFactory(username="old", sessions=1, in_cohort=["top-100", "high-impact"])
    AccountFactory(username="new", sessions=1, in_cohort="high-impact")
    enforce.enforce_phase(registry, plan, "top-100", expect=1, actor="rm", early=True)
    enforce.enforce_phase(registry, plan, "high-impact", expect=2, actor="rm", early=True)
    sender = Recording()
    drain(registry, plan, sender)
    high_impact = plan.cohort("high-impact").description
    told = {m.to_name: m for m in sender.sent if high_impact in " ".join(m.text.split())}
    assert told["old"].subject == "Two-factor authentication is still required of your account"
    assert "signed out" not in told["old"].text and "signed out" not in told["old"].html
    assert "The registry already required 2FA of your account" in " ".join(told["old"].text.split())
    assert told["new"].subject == "Two-factor authentication is now required: you were signed out"


def test_a_day_not_come_yet_is_previewed_but_never_queued(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """Queued a day early, the notices would go now, and reminders would count the
    days from a day not come."""
    from rollout.core.clock import SimulatedClock, use_clock
    from rollout.core.errors import BadInput
    from rollout.registry.models import PlanRun

    with use_clock(SimulatedClock(datetime(2022, 1, 3, 9))):
        [preview] = queue_preview(registry, plan, NOTICE_DAY)  # what tomorrow brings
        assert preview.added == 4
        with pytest.raises(BadInput, match=r"2022-01-04 is after today \(2022-01-03, UTC\)"):
            queue_due(registry, plan, NOTICE_DAY, actor="rm")
    assert rows(registry) == {}
    with registry.engine.connect() as connection:
        assert connection.execute(select(PlanRun.id)).first() is None


def test_reminders_skip_accounts_that_already_use_2fa(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    with on(date(2022, 1, 18)):
        queue_due(registry, plan, date(2022, 1, 18), actor="rm")
    assert rows(registry, "reminder")["ben"] == ("skipped", "already compliant")
    assert rows(registry, "reminder")["ann"] == ("queued", None)


# --- delivery ----------------------------------------------------------------------------


def test_each_email_is_sent_once_with_wording_for_the_recipient(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    with on(NOTICE_DAY):
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
        sender = Recording()
        report = drain(registry, plan, sender)
    assert (report.sent, report.failed) == (2, 0)
    by_name = {m.to_name: m for m in sender.sent}
    assert by_name["ann"].subject.startswith("Action needed")
    assert "ann-lib" in by_name["ann"].text and "zeta-pkg" in by_name["ann"].html
    assert by_name["ben"].subject.startswith("Thank you")
    assert "does not use 2FA" not in by_name["ben"].text
    assert rows(registry)["ann"] == ("sent", None)
    with registry.engine.connect() as connection:
        assert (
            connection.execute(
                select(Notification.message_id).where(Notification.account_id == ids["ann"])
            ).scalar_one()
            == f"id-{by_name['ann'].outbox_id}"
        )
    with on(NOTICE_DAY):
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
        assert drain(registry, plan, sender).sent == 0
    assert len(sender.sent) == 2


def test_an_account_that_enrolled_after_queueing_gets_no_reminder(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    with on(date(2022, 1, 18)):
        queue_due(registry, plan, date(2022, 1, 18), actor="rm")
        with bound_to(registry.engine):
            FactorFactory(account=existing_account(ids["ann"]), kind="webauthn")
        sender = Recording()
        drain(registry, plan, sender)
    assert "reminder" not in {m.email for m in sender.sent}
    assert rows(registry, "reminder")["ann"] == ("skipped", "already compliant")


def _reminder(
    registry: Registry, account_id: int, occasion: str, phase: str = "top-100"
) -> tuple[str, str | None]:
    with registry.engine.connect() as connection:
        row = connection.execute(
            select(Notification.state, Notification.skip_reason).where(
                Notification.account_id == account_id,
                Notification.email == "reminder",
                Notification.phase == phase,
                Notification.occasion == occasion,
            )
        ).one()
    return (row.state, row.skip_reason)


def _repeating(plan: Plan, **days: int) -> Plan:
    notifications = plan.notifications.model_copy(update={"repeat_days": days})
    return plan.model_copy(update={"notifications": notifications})


def _second_campaign(plan: Plan, registry: Registry, ann: int, reminder_on: date) -> Plan:
    """ann in high-impact too, whose one reminder (14 days before) falls on
    ``reminder_on``, near top-100's."""
    with bound_to(registry.engine):
        MembershipFactory(account=existing_account(ann), cohort="high-impact")
    high = plan.phase("high-impact").model_copy(
        update={
            "cohort_as_of": date(2022, 1, 2),
            "notice_on": date(2022, 1, 3),
            "reminders_days_before": [14],
            "enforce_on": reminder_on + timedelta(days=14),
        }
    )
    return plan.model_copy(update={"phases": [plan.phase("top-100"), high]})


def test_a_phases_own_reminders_go_on_their_days_whatever_the_window(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """The reminders 14 and 3 days before the deadline (01-18, 01-29) are 11 days apart,
    inside a fortnight's window: the plan scheduled both, so both go (GitHub's 7- and
    1-day reminders were dropped)."""
    queue_and_send(registry, _repeating(plan, reminder=14), date(2022, 1, 18), date(2022, 1, 29))
    assert _reminder(registry, ids["ann"], "14d") == ("sent", None)
    assert _reminder(registry, ids["ann"], "3d") == ("sent", None)


def test_another_phases_reminder_inside_the_repeat_window_is_skipped(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """top-100's 14-day reminder went on 01-18; high-impact's falls on 01-24, inside the
    week's window: ann gets one reminder that week, not two campaigns' worth."""
    both = _second_campaign(_repeating(plan, reminder=7), registry, ids["ann"], date(2022, 1, 24))
    queue_and_send(registry, both, date(2022, 1, 18), date(2022, 1, 24))
    assert _reminder(registry, ids["ann"], "14d") == ("sent", None)
    assert _reminder(registry, ids["ann"], "14d", "high-impact") == ("skipped", REPEAT)


@pytest.mark.parametrize(
    ("repeat_days", "second"), [(7, ("sent", None)), (14, ("skipped", REPEAT))]
)
def test_a_back_filled_run_judges_the_repeat_window_on_its_own_day(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    repeat_days: int,
    second: tuple[str, str | None],
) -> None:
    """Two past days queued (``notify queue --as-of D``) and sent now (01-26, before
    either deadline), seconds apart: the window between top-100's reminder (01-18) and
    high-impact's (01-25) is judged on the runs' days, 7 days apart; not on the seconds
    between the two drains."""
    repeating = _second_campaign(
        _repeating(plan, reminder=repeat_days), registry, ids["ann"], date(2022, 1, 25)
    )
    with on(date(2022, 1, 26)):
        queue_due(registry, repeating, date(2022, 1, 18), actor="rm")
        drain(registry, repeating, Recording())
        queue_due(registry, repeating, date(2022, 1, 25), actor="rm")
        sender = Recording()
        drain(registry, repeating, sender)
    assert _reminder(registry, ids["ann"], "14d") == ("sent", None)
    assert _reminder(registry, ids["ann"], "14d", "high-impact") == second
    reminded = {m.to_name for m in sender.sent if m.email == "reminder"}
    assert ("ann" in reminded) == (second[0] == "sent")


def test_a_reminder_skips_an_account_the_phase_has_enforced_already(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """top-100 enforced early (--early): its 3-day reminder would tell ann she will be
    signed out in 3 days, when she was already."""
    from rollout.phases import enforce

    with on(date(2022, 1, 29)):
        enforce.enforce_phase(registry, plan, "top-100", expect=3, actor="rm", early=True)
        queue_due(registry, plan, date(2022, 1, 29), actor="rm")
    assert _reminder(registry, ids["ann"], "3d") == ("skipped", "already enforced")


def test_a_rejected_message_fails_with_its_reason_and_the_rest_go_on(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    report = drain(registry, plan, Recording(fail_for="ann"))
    assert (report.sent, report.failed) == (1, 1)
    assert rows(registry)["ann"] == ("failed", "SendGrid answered 400: bad recipient")
    assert outbox.retry_failed(registry) == 1
    assert drain(registry, plan, Recording()).sent == 1
    assert rows(registry)["ann"] == ("sent", None)


def test_a_misconfigured_sender_stops_the_drain_and_loses_nothing(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    with pytest.raises(RolloutError, match="answered 401"):
        drain(registry, plan, Recording(misconfigured=True))
    assert rows(registry)["ann"] == ("queued", None)
    assert drain(registry, plan, Recording()).sent == 2


def test_the_file_outbox_writes_one_eml_per_message(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    drain(registry, plan, FileSender(tmp_path / "outbox"))
    files = sorted(p.name for p in (tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 2 and all(name.endswith("-phase_notice.eml") for name in files)


# --- against the local SendGrid server -----------------------------------------------


def _many(registry: Registry, count: int) -> None:
    """``count`` more accounts without 2FA in the top-100 cohort."""
    with bound_to(registry.engine, batch=True):
        for i in range(count):
            AccountFactory(
                username=f"user{i:04d}", in_cohort="top-100", in_cohort__packages=["zeta-pkg"]
            )


def _delivered(server: DevSendGrid) -> Counter[int]:
    return Counter(int(m["body"]["custom_args"]["outbox_id"]) for m in server.messages)


def _states(registry: Registry) -> Counter[str]:
    with registry.engine.connect() as connection:
        return Counter(connection.scalars(select(Notification.state)).all())


def test_a_sendgrid_outage_stops_the_drain_with_the_rest_still_queued(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """SendGrid down: each email failed after its retries, every one of the outbox, and
    nothing but `--retry-failed` by hand sent them again. Three batches in a row of which
    nothing went stop the drain; the rest stay queued, and the next run sends them."""
    _many(registry, 40)
    queue_late(registry, plan, NOTICE_DAY)
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"status": 503}] * 100)
        sender = SendGridSender(KEY, server.url, timeout=5, max_attempts=2, sleep=lambda _: None)
        with pytest.raises(RolloutError, match=r"sendgrid is unavailable: gave up .* 503.*queued"):
            drain(registry, plan, sender, concurrency=4)
        assert server.requests_seen == 3 * 4 * 2
        assert _states(registry) == {"failed": 12, "queued": 30, "skipped": 2}
        server.script([])
        again = drain(registry, plan, sender, concurrency=4)
    assert again.sent == 30 and _states(registry)["sent"] == 30


def test_a_blip_of_one_batch_does_not_stop_the_drain(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    _many(registry, 40)
    queue_late(registry, plan, NOTICE_DAY)
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"status": 503}] * 8)  # the first batch's four emails, twice each
        sender = SendGridSender(KEY, server.url, timeout=5, max_attempts=2, sleep=lambda _: None)
        report = drain(registry, plan, sender, concurrency=4)
    assert (report.sent, report.failed) == (38, 4)


def test_the_fault_matrix_ends_with_each_message_sent_once_or_failed_with_its_reason(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _many(registry, 4)
    queue_late(registry, plan, NOTICE_DAY)  # ann, ben + 4
    waits: list[float] = []
    with DevSendGrid(api_key=KEY) as server, caplog.at_level(logging.DEBUG):
        # In order, one at a time: the first message meets a 429 and a 500, then a stall
        # past the timeout (its request went: not sent again); the second a dropped
        # connection (the same); the third is refused outright with a 400.
        server.script(
            [
                {"status": 429, "retry_after": 2},
                {"status": 500},
                {"stall": 4.0, "status": 503},
                {"drop": True},
                {"status": 400},
            ]
        )
        sender = SendGridSender(KEY, server.url, timeout=2.0, max_attempts=5, sleep=waits.append)
        report = drain(registry, plan, sender, concurrency=1)
        delivered = _delivered(server)
    assert (report.sent, report.failed) == (3, 3)
    assert waits == [2, waits[1]]  # Retry-After honoured, then the 500's backoff; no more
    with registry.engine.connect() as connection:
        states = connection.execute(
            select(Notification.id, Notification.state, Notification.error, Notification.attempts)
            .where(Notification.state != "skipped")
            .order_by(Notification.id)
        ).all()
    failed = [s for s in states if s.state == "failed"]
    assert [("may have sent it" in s.error, "400" in s.error) for s in failed] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert not {s.id for s in failed} & set(delivered)
    assert {s.id for s in states if s.state == "sent"} == set(delivered)
    assert set(delivered.values()) == {1}  # nothing twice
    # The key never shows: not in the ledger, the logs or the report.
    assert KEY not in caplog.text and KEY not in repr(report)
    assert all(KEY not in (s.error or "") for s in states)


DRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from rollout.notify.drain import drain
    from rollout.notify.senders import SendGridSender
    from rollout.core.plan import load_plan
    from rollout.registry import Registry
    url, server, key, plan = sys.argv[1:5]
    drain(Registry(url), load_plan(plan), SendGridSender(key, server, timeout=5), concurrency=4)
    """
)


def test_a_killed_drain_resends_at_most_what_was_in_flight(
    registry: Registry, registry_url: str, plan: Plan, ids: dict[str, int]
) -> None:
    _many(registry, 60)
    queue_late(registry, plan, NOTICE_DAY)
    with DevSendGrid(api_key=KEY) as server:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                DRAIN_SCRIPT,
                registry_url,
                server.url,
                KEY,
                str(ROOT / "plans" / "npm-2022.yaml"),
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 60
        while len(server.messages) < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        first = _delivered(server)
        assert 20 <= sum(first.values()) < 62, "the kill should land mid-drain"
        report = drain(registry, plan, SendGridSender(KEY, server.url, timeout=5))
        delivered = _delivered(server)
    assert report.resumed <= 4
    with registry.engine.connect() as connection:
        sent = connection.execute(select(Notification.id).where(Notification.state == "sent")).all()
    assert len(sent) == 62 and set(delivered) == {row.id for row in sent}  # none lost
    twice = [i for i, n in delivered.items() if n > 1]
    assert len(twice) <= 4  # at most the in-flight handful, never a batch
    assert max(delivered.values()) <= 2


class _Answering(Recording):
    """A sender whose provider answered with a message id the registry cannot keep."""

    def __init__(self, message_id: str) -> None:
        super().__init__()
        self.message_id = message_id

    def send(self, message: Message) -> str:
        super().send(message)
        return self.message_id


@pytest.mark.parametrize(
    "message_id", ["x" * 201, "abc\x00def", "id with\nline break"], ids=["long", "nul", "newline"]
)
def test_a_message_id_the_outbox_cannot_keep_is_recorded_unknown_and_sent_once(
    registry: Registry, plan: Plan, ids: dict[str, int], message_id: str
) -> None:
    """An X-Message-Id past the column's 200 characters (or with a NUL) failed the record
    on PostgreSQL after the send: the rows stayed in flight and the next drain sent them
    again. Kept as unknown (NULL, as when SendGrid gives none), the email is sent once."""
    queue_late(registry, plan, NOTICE_DAY)
    sender = _Answering(message_id)
    report = drain(registry, plan, sender)
    again = drain(registry, plan, sender)
    assert (report.sent, again.sent, len(sender.sent)) == (2, 0, 2)
    with registry.engine.connect() as connection:
        kept = connection.execute(
            select(Notification.state, Notification.message_id).where(
                Notification.state != "skipped"
            )
        ).all()
    assert sorted(kept) == [("sent", None), ("sent", None)]


class _Refused(Recording):
    def send(self, message: Message) -> str:
        raise DeliveryFailed("SendGrid answered 400: to.email: bad\x00address", permanent=True)


def test_a_failure_whose_reason_holds_a_nul_is_recorded(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """SendGrid's error body is quoted in the reason; a NUL in it failed the record on
    PostgreSQL (the drain ended with the batch in flight, to be sent again)."""
    queue_late(registry, plan, NOTICE_DAY)
    report = drain(registry, plan, _Refused())
    assert report.failed == 2
    assert rows(registry)["ann"] == ("failed", "SendGrid answered 400: to.email: bad\\x00address")


def test_rows_left_in_flight_are_sent_again_by_the_next_drain(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    with registry.engine.begin() as connection:
        connection.execute(
            update(Notification)
            .where(Notification.account_id == ids["ann"])
            .values(state="sending")
        )
    report = drain(registry, plan, Recording())
    assert (report.resumed, report.sent) == (1, 2)


def test_a_drain_in_several_processes_sends_each_message_once(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    _many(registry, 40)
    queue_late(registry, plan, NOTICE_DAY)
    seen: list[tuple[int, int]] = []
    with DevSendGrid(api_key=KEY) as server:
        sender = SendGridSender(KEY, server.url, timeout=5)
        report = drain(
            registry,
            plan,
            sender,
            concurrency=4,
            processes=2,
            progress=lambda done, total: seen.append((done, total)),
        )
        delivered = _delivered(server)
    assert report.sent == 42 and set(delivered.values()) == {1}
    assert rows(registry)["ann"] == ("sent", None)
    # Told last of all it came to, however fast the workers were (the progress is looked
    # at every half second while they run: a drain done within one showed nothing).
    assert seen[-1] == (42, 42)


def test_a_limit_holds_across_processes(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """Each of three processes takes its part of 5 (2, 2, 1), not 5 rounded up each."""
    _many(registry, 20)
    queue_late(registry, plan, NOTICE_DAY)
    with DevSendGrid(api_key=KEY) as server:
        sender = SendGridSender(KEY, server.url, timeout=5)
        report = drain(registry, plan, sender, concurrency=1, processes=3, limit=5)
        delivered = _delivered(server)
    assert report.sent == 5 and len(delivered) == 5
    assert _shares(5, 3) == [2, 2, 1] and _shares(2, 4) == [1, 1] and _shares(None, 2) == [None] * 2


def test_a_drainer_that_loses_the_first_rows_to_another_claims_the_next_ones(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """Two drainers reach for the same first rows: the second gets the rows after them,
    not nothing (which it would take for an empty outbox, and stop)."""
    _many(registry, 10)
    queue_late(registry, plan, NOTICE_DAY)
    with registry.engine.connect() as connection:
        queued = (
            connection.execute(
                select(Notification.id)
                .where(Notification.state == "queued")
                .order_by(Notification.id)
            )
            .scalars()
            .all()
        )
    claimed: list[list[int]] = []
    with registry.engine.begin() as other:  # the other drainer, mid-claim: it holds its rows
        other.execute(
            update(Notification)
            .where(Notification.id.in_(queued[:4]))
            .values(state="sending", sender="sendgrid")
        )
        ours = threading.Thread(
            target=lambda: claimed.append(
                [c.id for c in _claim(registry.engine, 4, datetime(2022, 1, 4, 9), "sendgrid")]
            )
        )
        ours.start()
        time.sleep(0.5)  # ours is under way: waiting for the lock (SQLite) or past the rows
    ours.join(timeout=30)
    assert claimed == [queued[4:8]]


# --- failures that must show -------------------------------------------------------------


def _sender_of(registry: Registry) -> dict[str, str | None]:
    with registry.engine.connect() as connection:
        return dict(
            connection.execute(
                select(Account.username, Notification.sender).join(
                    Account, Account.id == Notification.account_id
                )
            ).all()
        )


def test_each_row_records_the_sender_that_attempted_it(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    assert _sender_of(registry)["ann"] is None  # queued, never attempted
    drain(registry, plan, FileSender(tmp_path / "outbox"))
    senders = _sender_of(registry)
    assert (senders["ann"], senders["ben"], senders["cat"]) == ("file", "file", None)


def test_the_file_outbox_refuses_emails_last_attempted_through_sendgrid(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"status": 400}])
        sender = SendGridSender(KEY, server.url, timeout=5)
        first = drain(registry, plan, sender, concurrency=1)
    assert (first.sent, first.failed) == (1, 1)
    before = rows(registry)
    file_sender = FileSender(tmp_path / "outbox")
    # A retry from a shell without SENDGRID_API_KEY: nothing queued, nothing written.
    with pytest.raises(RolloutError, match="last attempted through SendGrid") as refused:
        drain(registry, plan, file_sender, retry_failed=True)
    assert "SENDGRID_API_KEY" in str(refused.value) and "sendgrid-api-key" in str(refused.value)
    with pytest.raises(RolloutError, match="last attempted through SendGrid"):
        outbox.retry_failed(registry, sender="file")
    assert rows(registry) == before
    assert not list((tmp_path / "outbox").glob("*.eml"))
    # Without retry_failed the failed row is not the file sender's to take: it may drain.
    assert drain(registry, plan, file_sender).done == 0
    # Through SendGrid, the retry goes.
    with DevSendGrid(api_key=KEY) as server:
        sender = SendGridSender(KEY, server.url, timeout=5)
        again = drain(registry, plan, sender, retry_failed=True)
    assert (again.requeued, again.sent, again.failed) == (1, 1, 0)
    assert {state for state, _ in rows(registry).values()} == {"sent", "skipped"}


def test_status_groups_failures_by_reason(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    _many(registry, 3)
    queue_late(registry, plan, NOTICE_DAY)  # ann, ben + 3
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"status": 400}] * 3)
        sender = SendGridSender(KEY, server.url, timeout=5)
        report = drain(registry, plan, sender, concurrency=1)
    assert (report.sent, report.failed) == (2, 3)
    [reason] = {why for _, why in report.failures}
    assert reason.startswith("SendGrid answered 400")
    assert report.failure_message() == f"3 emails failed: {reason} (3)"
    failed = [r for r in outbox.outbox_status(registry) if r["state"] == "failed"]
    assert failed == [{"email": "phase_notice", "state": "failed", "reason": reason, "count": 3}]
    assert outbox.failed_count(registry) == 3


def test_failure_reasons_drop_the_outbox_id_and_keep_the_first_line() -> None:
    assert outbox.failure_reason("outbox 12: invalid recipient\nmore") == "invalid recipient"
    assert outbox.failure_reason(None) == "(no reason recorded)"
    report = DrainReport("sendgrid", failed=4)
    report.failures = [(1, "a"), (2, "a"), (3, "b"), (4, "outbox 4: c"), (5, "d")]
    assert report.failure_message(top=2) == "4 emails failed: a (2); b (1); 2 other reasons"


def test_retries_after_5xx_are_logged_and_counted(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    with DevSendGrid(api_key=KEY) as server, caplog.at_level(logging.WARNING):
        server.script([{"status": 503}, {"status": 429, "retry_after": 0}])
        sender = SendGridSender(KEY, server.url, timeout=5, sleep=lambda _: None)
        report = drain(registry, plan, sender, concurrency=1)
    assert (report.sent, report.failed, report.retried) == (2, 0, 2)
    records = [r for r in caplog.records if r.name == "rollout.notify.senders"]
    assert [r.levelno for r in records] == [logging.WARNING] * 2
    retries = [r.getMessage() for r in records]
    assert "(status 503); retry 1/4" in retries[0] and "(status 429); retry 2/4" in retries[1]
    assert KEY not in caplog.text

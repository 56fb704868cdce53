"""Per-account deadlines and snoozes (GitHub 2023's shape), on SQLite and PostgreSQL:
each account's deadline runs from the day its own notice was sent, reminders follow
each account's own deadline, enforcement acts each day on exactly the accounts whose
deadline has come, nobody never warned is enforced, and a snooze postpones one
account once, audited."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from datetime import date, datetime, time, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from time import monotonic
from typing import Any

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from rollout import warehouse
from rollout.cli import app
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.plan import (
    ExemptAccount,
    Exemptions,
    Plan,
    load_plan,
    parse_plan,
    plan_problems,
)
from rollout.notify.drain import account_recipient, drain
from rollout.notify.message import Message
from rollout.notify.queue import queue_due, queue_preview
from rollout.notify.senders import FileSender
from rollout.phases import enforce, snoozes
from rollout.phases.snoozes import (
    COMMAND,
    SnoozeRequest,
    command_request,
    read_requests,
    snooze,
    snooze_preview,
)
from rollout.registry import Registry, batches
from rollout.registry.locks import RunLockLost
from rollout.registry.models import Account, Action, CohortMembership, Notification
from rollout.report.adoption import build_adoption
from rollout.warehouse.extract import extract_registry
from tests.factories import AccountFactory, FactorFactory, TokenFactory, existing_account
from tests.support.pipes import UNBLOCKED_AFTER_SECONDS, pipe_without_writer
from tests.support.run_locks import lose_run_lock_during

from .conftest import postgres_only

ROOT = Path(__file__).resolve().parent.parent
PHASE = "publishers"


@pytest.fixture
def plan() -> Plan:
    return load_plan(ROOT / "plans" / "github-2023.yaml")


class Campaign:
    """The plan's days, played as the daily flow does: queue, then send."""

    def __init__(self, registry: Registry, plan: Plan, outbox: Path) -> None:
        self.registry, self.plan = registry, plan
        self.sender = FileSender(outbox, plan.notifications.from_address)
        self.outbox = outbox

    def day(self, day: date) -> None:
        with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
            queue_due(self.registry, self.plan, day, actor="rm")
            drain(self.registry, self.plan, self.sender)

    def preview(self, day: date) -> enforce.PhasePreview:
        now = datetime.combine(day, time(12))
        return enforce.preview_phase(self.registry, self.plan, self.plan.phase(PHASE), now=now)

    def enforce(self, day: date) -> set[str]:
        """Enforce as the release manager does on ``day``; the usernames newly required."""
        with use_clock(SimulatedClock(datetime.combine(day, time(12)))):
            preview = self.preview(day)
            before = self.required()
            enforce.enforce_phase(self.registry, self.plan, PHASE, expect=preview.count, actor="rm")
        return self.required() - before

    def required(self) -> set[str]:
        with self.registry.engine.connect() as connection:
            return set(
                connection.execute(
                    select(Account.username).where(Account.tfa_required_at.is_not(None))
                ).scalars()
            )

    def sent(self, email: str) -> set[str]:
        with self.registry.engine.connect() as connection:
            return set(
                connection.execute(
                    select(Account.username)
                    .join(Notification, Notification.account_id == Account.id)
                    .where(Notification.email == email, Notification.state == "sent")
                ).scalars()
            )

    def text_to(self, username: str, email: str) -> str:
        for path in sorted(self.outbox.glob(f"*-{email}.eml")):
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            if message["To"].addresses[0].username == username:
                return message.get_body(("plain",)).get_content()
        raise AssertionError(f"no {email} to {username}")


@pytest.fixture
def campaign(registry: Registry, plan: Plan, factories: None, tmp_path: Path) -> Campaign:
    """ann and eve (no 2FA) and dan (TOTP) are in the cohort from the start; cat too,
    but her address is unverified, so no notice reaches her."""
    for name in ("ann", "eve"):
        AccountFactory(username=name, in_cohort="publishers")
    AccountFactory(username="dan", with_totp=True, in_cohort="publishers")
    AccountFactory(username="cat", email_verified=False, in_cohort="publishers")
    return Campaign(registry, plan, tmp_path / "outbox")


def test_each_account_is_enforced_at_its_own_deadline_and_the_unwarned_never(
    campaign: Campaign,
) -> None:
    campaign.day(date(2023, 3, 13))
    # bob joins a week later: his notice, and so his 45 days, start then.
    AccountFactory(username="bob", in_cohort="publishers")
    campaign.day(date(2023, 3, 20))
    assert campaign.sent("phase_notice") == {"ann", "eve", "dan", "bob"}

    # The day before the first deadline nobody is due: all four short accounts wait.
    early = campaign.preview(date(2023, 4, 26))
    assert (early.count, early.not_due, early.never_noticed) == (0, 4, 1)

    first = campaign.preview(date(2023, 4, 27))
    assert [(t.username, t.deadline) for t in first.targets] == [
        ("ann", date(2023, 4, 27)),
        ("eve", date(2023, 4, 27)),
    ]
    assert (first.not_due, first.never_noticed) == (2, 1)
    assert campaign.enforce(date(2023, 4, 27)) == {"ann", "eve"}
    assert campaign.enforce(date(2023, 5, 3)) == set()
    assert campaign.enforce(date(2023, 5, 4)) == {"bob"}
    # cat was never sent the notice: she has no deadline and is never enforced.
    assert campaign.enforce(date(2024, 1, 7)) == set()
    assert "cat" not in campaign.required()


def test_a_notice_skipped_for_its_address_goes_once_the_address_is_verified(
    campaign: Campaign, registry: Registry
) -> None:
    """cat's notice was skipped on the first day: her address was unverified. She
    verifies it a week later, while notices still go daily to whoever was not sent
    one: hers goes then, starting her 45 days, and she is enforced at her deadline. Her
    skipped row stayed skipped for good: she was never told, so never enforced."""
    campaign.day(date(2023, 3, 13))
    assert "cat" not in campaign.sent("phase_notice")
    with registry.engine.begin() as connection:
        connection.execute(
            update(Account).where(Account.username == "cat").values(email_verified=True)
        )
    with use_clock(SimulatedClock(datetime(2023, 3, 20, 9))):
        previewed = queue_preview(registry, campaign.plan, date(2023, 3, 20))
    [notices] = [o for o in previewed if o.occasion.email == "phase_notice"]
    assert (notices.added, notices.skipped) == (1, 0)
    campaign.day(date(2023, 3, 20))
    assert "cat" in campaign.sent("phase_notice")
    assert "Thursday 4 May 2023, 00:00 UTC is your account's own deadline" in campaign.text_to(
        "cat", "phase_notice"
    )
    campaign.day(date(2023, 3, 21))  # the next day's queue sends her nothing more
    with registry.engine.connect() as connection:
        notices = connection.execute(
            select(func.count())
            .select_from(Notification)
            .join(Account, Account.id == Notification.account_id)
            .where(Account.username == "cat", Notification.email == "phase_notice")
        ).scalar_one()
    assert notices == 1
    assert "cat" not in campaign.enforce(date(2023, 4, 27))
    assert campaign.enforce(date(2023, 5, 4)) == {"cat"}


def test_a_notice_skipped_for_a_suppressed_form_of_its_address_is_not_queued_again(
    campaign: Campaign, registry: Registry
) -> None:
    """SendGrid lists an international address by its IDNA form; the account holds the
    Unicode one. The queue's SQL sees no suppression of that spelling, the drain (which
    checks every form) skips the notice: the next days must not queue it again (it
    was queued and skipped again each day, a notice 'added' daily, none sent)."""
    from rollout.notify import outbox

    AccountFactory(username="jan", email="jan@bücher.example", in_cohort="publishers")
    outbox.suppress(registry, "jan@xn--bcher-kva.example", reason="hard bounce", actor="ops")
    campaign.day(date(2023, 3, 13))
    for day in (date(2023, 3, 14), date(2023, 3, 15)):
        with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
            previewed = queue_preview(registry, campaign.plan, day)
        [notices] = [o for o in previewed if o.occasion.email == "phase_notice"]
        assert notices.added == 0
        campaign.day(day)
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(Notification.state, Notification.skip_reason, Notification.updated_at)
            .join(Account, Account.id == Notification.account_id)
            .where(Account.username == "jan", Notification.email == "phase_notice")
        ).all()
    assert [(state, reason) for state, reason, _ in rows] == [("skipped", "suppressed")]
    assert rows[0].updated_at < datetime(2023, 3, 14)
    assert "jan" not in campaign.sent("phase_notice")


def test_the_report_reads_each_deadline_at_its_start_as_enforcement_meets_it(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    """Enforcement acts on an account from its deadline day on, judging it as it runs:
    eve enrolled on her deadline day before the run and is spared, ann is enforced. The
    report reads a deadline at the start of its day, whom that day's enforcement may
    meet: the survival curve at day 45 and the funnel's still without 2FA at
    enforcement count them both (the curve read the day at its end, eve as complied)."""
    campaign.day(date(2023, 3, 13))
    deadline = date(2023, 4, 27)
    [eve] = campaign_ids(registry, "eve")
    FactorFactory(account=existing_account(eve), created_at=datetime.combine(deadline, time(8)))
    assert campaign.enforce(deadline) == {"ann"}

    with warehouse.open_warehouse(tmp_path / "warehouse.duckdb") as con:
        extract_registry(con, registry)
        build_adoption(con, plan, deadline)
        curve = con.execute(
            "select accounts, still_without from deadline_survival "
            "where phase = $phase and days_since_notice = 45",
            {"phase": PHASE},
        ).fetchall()
        funnel = con.execute(
            "select without_2fa_at_enforcement, enforced from compliance_funnel "
            "where phase = $phase",
            {"phase": PHASE},
        ).fetchall()
    # ann and eve were short at their notice (dan has TOTP; cat was never sent one).
    assert curve == [(2, 2)]
    assert funnel == [(2, 1)]


def test_the_notice_states_the_accounts_own_deadline_and_how_to_snooze(
    campaign: Campaign, plan: Plan
) -> None:
    campaign.day(date(2023, 3, 13))
    AccountFactory(username="bob", in_cohort="publishers")
    campaign.day(date(2023, 3, 20))
    ann, bob = (campaign.text_to(name, "phase_notice") for name in ("ann", "bob"))
    assert (
        "Thursday 27 April 2023, 00:00 UTC is your account's own deadline: 45 days from the" in ann
    )
    assert "Thursday 4 May 2023, 00:00 UTC is your account's own deadline" in bob
    assert "postpone it once, by up to 7 days" in bob
    assert plan.notifications.snooze_url in bob
    # dan already uses 2FA: thanked, no deadline to meet.
    assert "own deadline" not in campaign.text_to("dan", "phase_notice")


def test_reminders_follow_each_accounts_own_deadline(campaign: Campaign) -> None:
    campaign.day(date(2023, 3, 13))
    AccountFactory(username="bob", in_cohort="publishers")
    campaign.day(date(2023, 3, 20))
    campaign.day(date(2023, 4, 20))  # 7 days before ann's and eve's deadline
    assert campaign.sent("reminder") == {"ann", "eve"}
    campaign.day(date(2023, 4, 27))  # 7 days before bob's
    assert campaign.sent("reminder") == {"ann", "eve", "bob"}
    assert "In 7 days, from Thursday 4 May 2023, 00:00 UTC" in campaign.text_to("bob", "reminder")


def test_a_reminder_previewed_for_an_account_gives_its_own_deadline(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    """`notify preview reminder --account bob`: bob's deadline (his notice a week after
    ann's), not one a notice sent today would start."""
    campaign.day(date(2023, 3, 13))
    AccountFactory(username="bob", in_cohort="publishers")
    campaign.day(date(2023, 3, 20))
    with use_clock(SimulatedClock(datetime(2023, 4, 27, 9))):
        bob = account_recipient(registry, plan, "bob", PHASE, "reminder")
        noticed = account_recipient(registry, plan, "bob", PHASE)  # a notice sent now
    assert bob.deadline == date(2023, 5, 4)
    assert noticed.deadline == date(2023, 6, 11)  # 45 days from 2023-04-27


def _ask(
    registry: Registry, plan: Plan, username: str, days: int, on: date
) -> tuple[str, str, date | None]:
    at = datetime.combine(on, time(8))
    [outcome] = snooze(
        registry, plan, PHASE, [SnoozeRequest(username, days, at, COMMAND)], actor="rm", now=at
    )
    return outcome.outcome, outcome.reason, outcome.deadline


def test_a_snooze_postpones_one_deadline_once_within_the_plans_days(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    campaign.day(date(2023, 3, 13))
    on = date(2023, 4, 1)
    assert _ask(registry, plan, "eve", 5, on) == (
        "granted",
        "deadline moved to 2023-05-02",
        date(2023, 5, 2),
    )
    # Asking again, even for less, is refused; the same request again changes nothing.
    assert _ask(registry, plan, "eve", 2, on)[:2] == (
        "refused",
        "already postponed once, by 5 days",
    )
    assert _ask(registry, plan, "eve", 5, on)[0] == "already"
    assert _ask(registry, plan, "ann", 8, on)[:2] == ("refused", "at most 7 days")
    assert _ask(registry, plan, "cat", 3, on)[:2] == (
        "refused",
        "never sent the notice: its deadline has not started",
    )
    assert _ask(registry, plan, "nobody", 3, on)[:2] == ("refused", "no such account")
    assert _ask(registry, plan, "ann", 3, date(2023, 4, 28))[:2] == (
        "refused",
        "asked on or after its deadline (2023-04-27, 00:00 UTC)",
    )
    assert _ask(registry, plan, "ann", 3, date(2023, 1, 1))[:2] == (
        "refused",
        "asked before its notice (2023-03-13)",
    )

    assert campaign.enforce(date(2023, 4, 27)) == {"ann"}
    assert _ask(registry, plan, "ann", 3, date(2023, 4, 27))[:2] == (
        "refused",
        "asked on or after its deadline (2023-04-27, 00:00 UTC)",
    )
    # Asked in time (the site's file says when), read after her deadline was enforced.
    asked = SnoozeRequest("ann", 3, datetime(2023, 4, 26, 23), "late.csv line 2")
    [late] = snooze(registry, plan, PHASE, [asked], actor="rm", now=datetime(2023, 4, 28, 6))
    assert (late.outcome, late.reason) == ("refused", "the phase was enforced on it already")
    assert campaign.enforce(date(2023, 5, 1)) == set()
    assert campaign.enforce(date(2023, 5, 2)) == {"eve"}
    assert _postponements_audited(registry) == 1


def test_a_snooze_of_an_account_that_left_the_cohort_is_refused_as_not_in_it(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    """eve got her notice, then left the cohort (her packages went elsewhere): the
    phase no longer applies to her, so there is no deadline to postpone; ann, still a
    member, is granted hers."""
    campaign.day(date(2023, 3, 13))
    with registry.engine.begin() as connection:
        connection.execute(
            update(CohortMembership)
            .where(
                CohortMembership.account_id
                == select(Account.id).where(Account.username == "eve").scalar_subquery()
            )
            .values(left_on=date(2023, 3, 20))
        )
    on = date(2023, 4, 1)
    assert _ask(registry, plan, "eve", 5, on) == ("refused", "not in cohort publishers", None)
    assert _ask(registry, plan, "ann", 5, on)[0] == "granted"


def _reply_to(campaign: Campaign, username: str) -> tuple[str, str]:
    """The last snooze_reply written to ``username``: its plain text and its HTML's
    words, each read back from the .eml."""
    for path in sorted(campaign.outbox.glob("*-snooze_reply.eml"), reverse=True):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        if message["To"].addresses[0].username == username:
            text = message.get_body(("plain",)).get_content()
            html = message.get_body(("html",)).get_content()
            return " ".join(text.split()), " ".join(re.sub(r"<[^>]+>", "", html).split())
    raise AssertionError(f"no snooze_reply to {username}")


def test_a_snooze_refused_after_the_deadline_says_it_has_passed_and_applies_now(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    """ann asks two days after her deadline, enforced on it: her reply said her deadline
    "stays" 27 April, what the registry asks "by then", and that "nothing changes" for
    an account that meets it, as if the day were still to come."""
    campaign.day(date(2023, 3, 13))
    assert campaign.enforce(date(2023, 4, 27)) == {"ann", "eve"}
    assert _ask(registry, plan, "ann", 3, date(2023, 4, 29))[0] == "refused"
    campaign.day(date(2023, 4, 29))
    for part in _reply_to(campaign, "ann"):
        assert "the request came after your deadline had passed" in part
        passed = "Your account's deadline was Thursday 27 April 2023, 00:00 UTC: it has passed"
        assert passed in part
        assert "What the registry asks of your account since then" in part
        assert "This applies to your account now" in part
        assert "stays" not in part and "by then" not in part
        assert "nothing changes for it" not in part
    # Refused before its deadline, the deadline is still to come: "stays", "by then".
    AccountFactory(username="bob", in_cohort="publishers")
    campaign.day(date(2023, 5, 1))
    assert _ask(registry, plan, "bob", 8, date(2023, 5, 1))[0] == "refused"
    campaign.day(date(2023, 5, 1))
    for part in _reply_to(campaign, "bob"):
        assert "Your account's deadline stays Thursday 15 June 2023, 00:00 UTC" in part
        assert "What the registry asks of your account by then" in part
        assert "has passed" not in part


@pytest.mark.parametrize(
    ("asked_on", "outcome", "reply"),
    [
        (date(2023, 4, 26), "granted", "your account's own deadline is now Sunday 30 April 2023"),
        (date(2023, 4, 27), "refused", "it has passed"),
        (date(2023, 4, 28), "refused", "it has passed"),
    ],
    ids=["the-day-before", "the-day-itself", "the-day-after"],
)
def test_a_snooze_is_granted_until_the_day_before_the_deadline_as_that_day_s_emails_say(
    campaign: Campaign, registry: Registry, plan: Plan, asked_on: date, outcome: str, reply: str
) -> None:
    """ann's deadline is 27 April, 00:00 UTC: enforcement acts on her that day, and that
    day's reminder and reply say it has passed. A request on the day itself was granted
    (only one after the day was refused), so the reply to it moved a deadline its own
    text said had passed, and the enforcement of that day skipped her."""
    campaign.day(date(2023, 3, 13))
    assert _ask(registry, plan, "ann", 3, asked_on)[0] == outcome
    campaign.day(asked_on)
    for part in _reply_to(campaign, "ann"):
        assert reply in part
    expected = {"eve"} if outcome == "granted" else {"ann", "eve"}
    assert campaign.enforce(date(2023, 4, 27)) == expected


def test_requests_judged_a_few_accounts_at_a_time_get_the_same_outcomes(
    campaign: Campaign, registry: Registry, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request file may name more accounts than one statement can bind: they are
    looked up in slices (rollout.registry.batches), here of one account."""
    campaign.day(date(2023, 3, 13))
    at = datetime(2023, 4, 1, 8)
    asked = [("eve", 5), ("ann", 8), ("cat", 3), ("nobody", 3), ("dan", 2), ("ann", 3)]
    requests = [SnoozeRequest(name, days, at, COMMAND) for name, days in asked]
    whole = snooze_preview(registry, plan, PHASE, requests)
    monkeypatch.setattr(batches, "IN_LIST_MAX", 1)
    assert snooze_preview(registry, plan, PHASE, requests) == whole
    assert [o.outcome for o in whole].count("granted") >= 2
    outcomes = snooze(registry, plan, PHASE, requests, actor="rm", now=at)
    assert [(o.username, o.outcome, o.reason) for o in outcomes] == [
        (o.username, o.outcome, o.reason) for o in whole
    ]


def test_a_reminder_waits_for_a_snoozed_deadline(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    campaign.day(date(2023, 3, 13))
    _ask(registry, plan, "eve", 7, date(2023, 4, 1))
    campaign.day(date(2023, 4, 20))
    assert campaign.sent("reminder") == {"ann"}
    campaign.day(date(2023, 4, 27))  # 7 days before eve's snoozed 2023-05-04
    assert campaign.sent("reminder") == {"ann", "eve"}


def test_cutting_snooze_days_below_a_snooze_granted_is_refused_by_plan_check(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    """eve was granted 7 days; a plan with snooze_days 2 would still enforce her on her
    snoozed deadline, but its reminders look only 2 days on: none would reach her."""
    from rollout.phases.drift import plan_drift

    campaign.day(date(2023, 3, 13))
    _ask(registry, plan, "eve", 7, date(2023, 4, 1))
    [phase] = plan.phases
    assert phase.deadline is not None
    cut = plan.model_copy(
        update={
            "phases": [
                phase.model_copy(
                    update={"deadline": phase.deadline.model_copy(update={"snooze_days": 2})}
                )
            ]
        }
    )
    errors, _ = plan_drift(registry, cut)
    assert errors == [
        "phase publishers: snooze_days is 2, but a snooze of 7 days was granted under the "
        "plan before: that account's deadline still counts it, and its reminders would not "
        "(they look as far as snooze_days); keep snooze_days at 7 or more"
    ]
    assert plan_drift(registry, plan) == ([], [])


def _days_after_notice(plan: Plan, days: int) -> Plan:
    [phase] = plan.phases
    assert phase.deadline is not None
    deadline = phase.deadline.model_copy(update={"days_after_notice": days})
    return plan.model_copy(
        update={
            "phases": [
                phase.model_copy(
                    update={
                        "deadline": deadline,
                        "enforce_on": phase.notice_on + timedelta(days=days),
                    }
                )
            ]
        }
    )


def test_cutting_days_after_notice_once_notices_told_them_is_refused_until_put_back(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    """ann's notice (13 March) said "Thursday 27 April is your account's own deadline: 45
    days from ...". With days_after_notice cut to 30, she was enforced on 12 April, 15
    days before the date she was given: plan check says so, and enforcement refuses."""
    from rollout.phases.drift import plan_drift

    campaign.day(date(2023, 3, 13))
    cut = _days_after_notice(plan, 30)
    errors, _ = plan_drift(registry, cut)
    assert errors == [
        "phase publishers: 3 notices sent told accounts their deadline came 45 days after "
        "their notice, the plan now says 30: their deadlines would come before the dates "
        "they were given, and `phase enforce` refuses; keep days_after_notice at 45 or more"
    ]
    with use_clock(SimulatedClock(datetime(2023, 4, 12, 12))):
        preview = enforce.preview_phase(registry, cut, cut.phase(PHASE))
        assert {t.username for t in preview.targets} == {"ann", "eve"}
        with pytest.raises(GuardRefused, match="told accounts their own deadline came 45 days"):
            enforce.enforce_phase(registry, cut, PHASE, expect=preview.count, actor="rm")
        assert campaign.required() == set()
        # The release manager's own decision: --early.
        early = enforce.enforce_phase(
            registry, cut, PHASE, expect=preview.count, actor="rm", early=True
        )
    assert early.accounts_required == 2
    # Lengthened instead, nothing is held back: the accounts get more time than told.
    errors, warnings = plan_drift(registry, _days_after_notice(plan, 60))
    assert errors == []
    assert warnings == [
        "phase publishers: 3 notices sent told accounts their deadline came 45 days after "
        "their notice, the plan now says 60"
    ]
    assert plan_drift(registry, plan) == ([], [])


def test_a_request_file_with_a_bad_line_is_refused_whole(tmp_path: Path) -> None:
    now = datetime(2023, 4, 1, 12)
    good = tmp_path / "good.csv"
    good.write_text("username,days,requested_at\nann,3,2023-04-01T08:00:00Z\neve,7,\n")
    assert [(r.username, r.days, r.requested_at, r.source) for r in read_requests(good, now)] == [
        ("ann", 3, datetime(2023, 4, 1, 8), "good.csv line 2"),
        ("eve", 7, now, "good.csv line 3"),
    ]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("username,days\nann,3\nren\u00e9e,2\n".encode("latin-1"))
    with pytest.raises(BadInput) as refused:
        read_requests(latin1, now)
    assert str(refused.value) == (
        f"{latin1}:3: not UTF-8 text: byte 0xe9 at byte 4 of the line (invalid continuation byte)"
    )
    for body, line, reason in [
        ("user,days\nann,3\n", 1, "the header must name the columns username and days"),
        ("username,days\nann,3\neve,seven\n", 3, "days must be a whole number, not 'seven'"),
        ("username,days\nann,0\n", 2, "days must be at least 1"),
        ("username,days\nann,3\nann,2\n", 3, "'ann' already asked on line 2"),
        ("username,days,days\nann,3,99\n", 1, "column 'days' appears twice"),
        ("username,days,requested_at\nann,3,2023-05-01\n", 2, "is in the future"),
        ("username,days\nann,3,4\n", 2, "expected 2 values, found 3"),
        # Read leniently, the quote took every line below it for one value: "expected 2
        # values, found 1".
        ('username,days\nann,3\n"bob,2\ncid,4\n', 3, "^a quote opened on this line is never"),
        ('username,days\n"bob"by,2\n', 2, "^a quoted value is followed by more text"),
        # A username no account has, nor a plan's usernames may: a broken file, said at
        # its line (exit 2), not looked up and refused as "no such account" (exit 3).
        ("username,days\nnu\x00l,2\n", 2, r"^username 'nu\\x00l' holds a control character"),
        ("username,days\nann,3\nb\x1b[2Ko,2\n", 3, r"U\+001B at character 2"),
        ('username,days\n"two\nlines",2\n', 2, "holds a control character"),
        ("username,days\n\u202eann,2\n", 2, "holds a control character"),
        # A name written twice, not a header missing days.
        ("username,username\nann,ann\n", 1, "^column 'username' appears twice"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        with pytest.raises(BadInput) as refused:
            read_requests(bad, now)
        assert (refused.value.path, refused.value.line) == (bad, line)
        assert re.search(reason, refused.value.reason), refused.value.reason


def test_a_request_file_that_is_no_file_to_read_is_refused_at_once_unread(
    tmp_path: Path,
) -> None:
    # A pipe was waited on for ever (the daily flow never ended), /dev/zero read until
    # the memory ran out, a huge file read whole.
    now = datetime(2023, 4, 1, 12)

    def reason(path: Path) -> str:
        with pytest.raises(BadInput) as refused:
            read_requests(path, now)
        assert (refused.value.path, refused.value.line) == (path, None)
        return refused.value.reason

    with pipe_without_writer(tmp_path / "requests.csv") as pipe:
        started = monotonic()
        said = reason(pipe)
        assert monotonic() - started < UNBLOCKED_AFTER_SECONDS
    not_a_file = "not a regular file (a pipe, a socket or a device), not a file of snooze requests"
    assert said == not_a_file
    assert reason(Path("/dev/null")) == not_a_file
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as file:
        file.truncate(64 * 2**20 + 1)  # sparse: a log named by mistake
    assert reason(huge) == (
        "larger than 64 MiB, more than any file of snooze requests holds: nothing read"
    )
    assert reason(tmp_path) == "a folder, not a file of snooze requests: name the file in it"


def test_snooze_from_the_command_line_previews_then_grants_and_exits_3_on_refusals(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "github-2023.yaml"))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    requests = tmp_path / "requests.csv"
    requests.write_text("username,days\nnobody,3\n")
    previewed = runner.invoke(app, ["phase", "snooze", PHASE, "--file", str(requests)])
    assert previewed.exit_code == 3, previewed.output
    assert "no such account" in previewed.stdout
    requests.write_text("username,days\nnobody,x\n")
    bad = runner.invoke(app, ["phase", "snooze", PHASE, "--file", str(requests)])
    assert bad.exit_code == 2
    assert f"{requests}:2: days must be a whole number" in " ".join(bad.stderr.split())
    both = runner.invoke(app, ["phase", "snooze", PHASE, "ann", "--days", "2", "--file", "x"])
    assert both.exit_code == 2


@pytest.mark.parametrize("username", ["nu\x00l", "b\x1b[2Ko", "two\nlines", ""])
def test_a_username_no_account_can_have_is_bad_input_on_the_command_line(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, username: str
) -> None:
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "github-2023.yaml"))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["phase", "snooze", PHASE, username, "--days", "2"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: USERNAME: username ")
    assert "\x1b" not in result.stderr and "\x00" not in result.stderr


def test_a_per_account_deadline_starts_enforcement_on_the_first_deadline() -> None:
    text = (ROOT / "plans" / "github-2023.yaml").read_text()
    moved = text.replace("enforce_on: 2023-04-27", "enforce_on: 2023-04-20")
    _, errors = parse_plan(moved, "github.yaml")
    line = next(  # the line changed
        n for n, text in enumerate(moved.splitlines(), 1) if "enforce_on: 2023-04-20" in text
    )
    assert [str(e) for e in errors] == [
        f"github.yaml:{line}: phases.0.enforce_on: with per-account deadlines enforcement "
        "starts on the first deadline, notice_on + 45 days = 2023-04-27"
    ]
    plan, _ = parse_plan(text)
    assert plan is not None and plan_problems(plan) == []
    assert plan.phase(PHASE).enforce_until == date(2024, 1, 7)


def test_a_reminder_counts_the_days_to_a_deadline_snoozed_since_it_was_queued(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    campaign.day(date(2023, 3, 13))
    with use_clock(SimulatedClock(datetime.combine(date(2023, 4, 20), time(9)))):
        queue_due(registry, plan, date(2023, 4, 20), actor="rm")  # queued, not yet sent
    _ask(registry, plan, "ann", 7, date(2023, 4, 20))
    with use_clock(SimulatedClock(datetime.combine(date(2023, 4, 20), time(10)))):
        drain(registry, plan, campaign.sender)
    # Queued 7 days before 04-27; sent after her snooze to 05-04: 14 days left.
    text = campaign.text_to("ann", "reminder")
    assert "In 14 days, from Thursday 4 May 2023, 00:00 UTC" in text
    # Not "45 days from the day we first wrote" (it is 52 now), nor a second snooze
    # offered that `phase snooze` would refuse.
    said = " ".join(text.split())
    assert (
        "Thursday 4 May 2023, 00:00 UTC is your account's own deadline, postponed as you asked"
        in said
    )
    assert "45 days" not in said and "postpone it once" not in said


def test_a_notice_sent_across_midnight_gives_the_deadline_the_registry_enforces(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    """Prepared at 23:59:59 UTC, recorded after midnight: the notice gave 27 April, and
    the registry counted the deadline from the recorded time, 28 April."""
    from rollout.registry.deadlines import deadlines

    day = date(2023, 3, 13)
    with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
        queue_due(registry, plan, day, actor="rm")
    sent: list[int] = []

    class SlowFileSender:
        """The file outbox, sending until past midnight."""

        name = campaign.sender.name

        def send(self, message: Message) -> str:
            sent.append(message.outbox_id)
            return campaign.sender.send(message)

    def across_midnight() -> datetime:
        return datetime(2023, 3, 14, 0, 0, 5) if sent else datetime(2023, 3, 13, 23, 59, 59)

    drain(registry, plan, SlowFileSender(), clock=across_midnight)
    said = " ".join(campaign.text_to("ann", "phase_notice").split())
    assert "Thursday 27 April 2023, 00:00 UTC is your account's own deadline" in said
    with registry.engine.connect() as connection:
        own = deadlines(connection, plan.phase(PHASE))
    [ann] = campaign_ids(registry, "ann")
    assert own[ann] == date(2023, 4, 27)


def campaign_ids(registry: Registry, *usernames: str) -> list[int]:
    with registry.engine.connect() as connection:
        found = dict(
            connection.execute(
                select(Account.username, Account.id).where(Account.username.in_(usernames))
            ).all()
        )
    return [found[name] for name in usernames]


def test_landed_request_files_are_granted_once_and_a_bad_file_is_refused_whole(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    landing = tmp_path / "landing"
    (landing / "snoozes" / PHASE).mkdir(parents=True)
    (landing / "snoozes" / "no-such-phase").mkdir()
    (landing / "snoozes" / PHASE / "2023-04-01.csv").write_text(
        "username,days,requested_at\neve,5,2023-04-01T08:00:00\nann,9,2023-04-01T08:00:00\n"
    )
    (landing / "snoozes" / PHASE / "2023-04-02.csv").write_text("username,days\ndan,x\n")
    (landing / "snoozes" / "no-such-phase" / "a.csv").write_text("username,days\nann,1\n")
    now = datetime(2023, 4, 2, 6)
    done = grant_landed(registry, plan, landing, actor="flow", now=now)
    assert (done.granted, done.already) == (1, 0)
    assert done.refused == [("2023-04-01.csv", "ann", "at most 7 days")]
    [unknown_phase, bad_line] = done.rejected  # in path order
    assert unknown_phase.endswith(
        "a.csv: no phase 'no-such-phase' in plan github-2023 (phases: publishers)"
    )
    assert bad_line.endswith("2023-04-02.csv:2: days must be a whole number, not 'x'")
    # The next day's pickup reads the same files: nothing granted twice, no run recorded.
    again = grant_landed(registry, plan, landing, actor="flow", now=now)
    assert (again.granted, again.already) == (0, 1)
    assert campaign.enforce(date(2023, 4, 27)) == {"ann"}
    assert campaign.enforce(date(2023, 5, 2)) == {"eve"}


def test_a_request_file_landed_where_or_as_no_request_file_is_refused_not_passed_over(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    # Passed over, these requests were never answered and the accounts asking were held
    # to their deadlines, with nothing in the day's artifact to say so.
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    snoozes = tmp_path / "landing" / "snoozes"
    (snoozes / PHASE / "2023-04").mkdir(parents=True)
    request = "username,days\neve,5\n"
    (snoozes / "2023-04-01.csv").write_text(request)
    (snoozes / PHASE / "2023-04" / "01.csv").write_text(request)
    (snoozes / PHASE / "2023-04-01.csv.gz").write_bytes(gzip.compress(request.encode()))
    (snoozes / PHASE / "2023-04-02.CSV").write_text("username,days\nann,2\n")
    # Not request files (yet): a writer's hidden file, a download's part, a note.
    (snoozes / PHASE / ".2023-04-03.csv.tmp").write_text("username,days\ndan,1\n")
    (snoozes / PHASE / "2023-04-03.csv.part").write_text("username,days\ndan,1\n")
    (snoozes / "README.txt").write_text("requests land here")
    done = grant_landed(
        registry, plan, tmp_path / "landing", actor="flow", now=datetime(2023, 4, 2, 6)
    )
    assert done.granted == 1  # ann's, read though its name is in capitals
    assert sorted(done.rejected) == [
        f"{snoozes / '2023-04-01.csv'}: directly under {snoozes}: a request file goes in "
        f"the folder of its phase, {snoozes}/<phase>/",
        f"{snoozes / PHASE / '2023-04-01.csv.gz'}: compressed as .gz: a request file is plain CSV",
        f"{snoozes / PHASE / '2023-04' / '01.csv'}: in a folder below a phase's in "
        f"{snoozes}: a request file goes in the folder of its phase, {snoozes}/<phase>/",
    ]


def test_a_pipe_landed_as_a_request_file_is_refused_and_the_others_are_granted(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    # The daily flow waited on it for ever: no request of any file was answered.
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    folder = tmp_path / "landing" / "snoozes" / PHASE
    folder.mkdir(parents=True)
    (folder / "2023-04-02.csv").write_text("username,days\neve,5\n")
    with pipe_without_writer(folder / "2023-04-01.csv") as pipe:
        started = monotonic()
        done = grant_landed(
            registry, plan, tmp_path / "landing", actor="flow", now=datetime(2023, 4, 2, 6)
        )
        assert monotonic() - started < UNBLOCKED_AFTER_SECONDS
    assert done.granted == 1
    assert done.rejected == [
        f"{pipe}: not a regular file (a pipe, a socket or a device), not a file of snooze requests"
    ]


def test_a_request_file_linked_to_a_file_outside_the_landing_folder_is_refused_unread(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    # Read, the refusal quoted its header: a link to /proc/self/environ put the
    # process's secrets (SENDGRID_API_KEY) in the flow's artifact. Ingest reads no such
    # link either (tests/test_ingest_hostile_files.py).
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    snoozes = tmp_path / "landing" / "snoozes"
    (snoozes / PHASE).mkdir(parents=True)
    secret = tmp_path / "secrets.env"
    secret.write_text("SENDGRID_API_KEY=SG.not-for-the-artifact\n")
    (snoozes / PHASE / "2023-04-01.csv").symlink_to(secret)
    (snoozes / PHASE / "2023-04-02.csv").write_text("username,days\neve,5\n")
    # A link to a file inside is the file it links to.
    (snoozes / PHASE / "2023-04-03.csv").symlink_to(snoozes / PHASE / "2023-04-02.csv")

    done = grant_landed(
        registry, plan, tmp_path / "landing", actor="flow", now=datetime(2023, 4, 2, 6)
    )

    assert (done.granted, done.already) == (1, 1)
    assert done.rejected == [
        f"{snoozes / PHASE / '2023-04-01.csv'}: a symbolic link to a file outside {snoozes}: "
        "request files are read only from there; copy the file there instead"
    ]
    assert "not-for-the-artifact" not in repr(done)


def test_a_phase_folder_linked_to_another_folder_is_refused_not_passed_over(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    # os.walk does not follow a link to a folder: its requests went unanswered, unsaid.
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2023-04-01.csv").write_text("username,days\neve,5\n")
    snoozes = tmp_path / "landing" / "snoozes"
    snoozes.mkdir(parents=True)
    (snoozes / PHASE).symlink_to(elsewhere)

    done = grant_landed(
        registry, plan, tmp_path / "landing", actor="flow", now=datetime(2023, 4, 2, 6)
    )

    assert done.granted == 0
    assert done.rejected == [
        f"{snoozes / PHASE}: a symbolic link to a folder: request files are read only from "
        f"the folders in {snoozes} themselves; move the files into {snoozes}/<phase>/"
    ]


def test_a_landed_file_without_request_times_read_again_the_next_day_grants_nothing_new(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    """Without requested_at, a request is dated when it is read: the next day's read
    is the same request again, not a second one to refuse."""
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    landing = tmp_path / "landing"
    (landing / "snoozes" / PHASE).mkdir(parents=True)
    (landing / "snoozes" / PHASE / "2023-04-01.csv").write_text("username,days\neve,5\n")
    first = grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 2, 6))
    assert (first.granted, first.already, first.refused) == (1, 0, [])
    again = grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 3, 6))
    assert (again.granted, again.already, again.refused) == (0, 1, [])
    # Another number of days is another request: refused, as a second snooze is.
    (landing / "snoozes" / PHASE / "2023-04-03.csv").write_text("username,days\neve,6\n")
    third = grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 3, 7))
    assert third.refused == [("2023-04-03.csv", "eve", "already postponed once, by 5 days")]


def test_the_snooze_command_run_again_after_a_kill_says_already(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    campaign.day(date(2023, 3, 13))
    asked = [command_request("eve", 5, datetime(2023, 4, 1, 8))]
    [granted] = snooze(registry, plan, PHASE, asked, actor="rm", now=datetime(2023, 4, 1, 8))
    assert granted.outcome == "granted"
    # The grant committed, then the command was killed before it printed: run again.
    rerun = [command_request("eve", 5, datetime(2023, 4, 1, 9))]
    [again] = snooze(registry, plan, PHASE, rerun, actor="rm", now=datetime(2023, 4, 1, 9))
    assert (again.outcome, again.reason, again.deadline) == (
        "already",
        "granted before",
        date(2023, 5, 2),
    )
    assert _replies(registry) == [("eve", "granted", True, "")]


@postgres_only
def test_a_snooze_whose_run_lock_session_ends_grants_nothing(
    campaign: Campaign, registry: Registry, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the lock a snooze holds (enforcement's) went with its session while
    the grant was being written, and an enforcement may be at work: nothing commits (no postponed
    deadline, no reply, no audit row); the command run again grants it once."""
    campaign.day(date(2023, 3, 13))
    asked = [command_request("eve", 5, datetime(2023, 4, 1, 8))]
    with monkeypatch.context() as patched, pytest.raises(RunLockLost, match="run lock was lost"):
        lose_run_lock_during(patched, snoozes, "_queue_replies", registry, snoozes.LOCK)
        snooze(registry, plan, PHASE, asked, actor="rm", now=datetime(2023, 4, 1, 8))
    assert _replies(registry) == []
    assert _postponements_audited(registry) == 0
    [granted] = snooze(registry, plan, PHASE, asked, actor="rm", now=datetime(2023, 4, 1, 8))
    assert (granted.outcome, granted.deadline) == ("granted", date(2023, 5, 2))
    assert _replies(registry) == [("eve", "granted", True, "")]


def _postponements_audited(registry: Registry) -> int:
    """How many snooze_deadline audit rows the registry holds: one a grant."""
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(Action).where(Action.action == "snooze_deadline")
        ).scalar_one()


def _replies(registry: Registry) -> list[tuple[str, str, bool, str]]:
    """(username, occasion's kind, granted, what the maintainer is told) of each
    snooze_reply queued, in username order."""
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(Account.username, Notification.occasion, Notification.context)
            .join(Notification, Notification.account_id == Account.id)
            .where(Notification.email == "snooze_reply")
            .order_by(Account.username, Notification.id)
        ).all()
    return [(u, o.split()[0], c["granted"], c["reason"]) for u, o, c in rows]


def test_each_request_is_answered_by_email_once_granted_or_why_not(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    """GitHub answered a snooze on the spot; requests the site collects are answered
    by the daily pickup: the new deadline, or why not in the maintainer's own terms
    (not "cohort publishers"). A file read again the next day answers nothing again;
    an unknown username gets nothing, an unverified address is skipped at sending."""
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    landing = tmp_path / "landing"
    (landing / "snoozes" / PHASE).mkdir(parents=True)
    (landing / "snoozes" / PHASE / "2023-04-01.csv").write_text(
        "username,days\neve,5\nann,9\ncat,3\nnobody,2\n"
    )
    grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 2, 6))
    at_most = "a deadline can be postponed by at most 7 days: ask again for 7 days or fewer"
    not_yet = (
        "your deadline has not started yet: it starts with our first email about this, "
        "and you can ask then"
    )
    answered = [
        ("ann", "refused", False, at_most),
        ("cat", "refused", False, not_yet),
        ("eve", "granted", True, ""),
    ]
    assert _replies(registry) == answered
    grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 3, 6))
    assert _replies(registry) == answered

    campaign.day(date(2023, 4, 3))
    assert campaign.sent("snooze_reply") == {"ann", "eve"}  # cat's address is unverified
    eve = " ".join(campaign.text_to("eve", "snooze_reply").split())
    assert "We granted it: your account's own deadline is now Tuesday 2 May 2023, 00:00 UTC." in eve
    ann = " ".join(campaign.text_to("ann", "snooze_reply").split())
    assert f"We could not grant it: {at_most}." in ann
    assert "Your account's deadline stays Thursday 27 April 2023, 00:00 UTC." in ann


def test_a_refused_command_run_again_after_a_kill_answers_once(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    campaign.day(date(2023, 3, 13))
    for hour in (8, 9):  # the same request, the command run again the same day
        at = datetime(2023, 4, 1, hour)
        asked = [command_request("ann", 9, at)]
        [outcome] = snooze(registry, plan, PHASE, asked, actor="rm", now=at)
        assert outcome.outcome == "refused"
    assert [r[:2] for r in _replies(registry)] == [("ann", "refused")]
    # Asked again the next day, for other days: another request, another answer.
    at = datetime(2023, 4, 2, 8)
    asked = [command_request("ann", 8, at)]
    snooze(registry, plan, PHASE, asked, actor="rm", now=at)
    assert [r[:2] for r in _replies(registry)] == [("ann", "refused")] * 2


@pytest.mark.parametrize(
    "at",
    # Their UTC is before year 1 or after 9999: converting them was an OverflowError.
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "1969-12-31T23:59:59"],
)
def test_a_request_time_beyond_the_supported_years_is_bad_input_at_its_line(
    tmp_path: Path, at: str
) -> None:
    path = tmp_path / "requests.csv"
    path.write_text(f"username,days,requested_at\nann,3,2023-04-01T08:00:00\neve,2,{at}\n")
    reason = f"requested_at '{at}' is not between 1970-01-01 and now"
    with pytest.raises(BadInput, match=re.escape(reason)) as refused:
        read_requests(path, datetime(2023, 4, 1, 12))
    assert (refused.value.path, refused.value.line) == (path, 3)


def test_a_landed_file_with_a_time_beyond_the_supported_years_is_rejected_not_a_crash(
    registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    from rollout.phases.snoozes import grant_landed

    landing = tmp_path / "landing"
    (landing / "snoozes" / PHASE).mkdir(parents=True)
    (landing / "snoozes" / PHASE / "a.csv").write_text(
        "username,days,requested_at\nann,3,0001-01-01T00:00:00+05:00\n"
    )
    done = grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 2, 6))
    assert (done.granted, done.already, done.refused) == (0, 0, [])
    [rejected] = done.rejected
    assert rejected.endswith(
        "a.csv:2: requested_at '0001-01-01T00:00:00+05:00' is not between 1970-01-01 and now"
    )


def test_a_request_file_with_a_byte_order_mark_is_read_as_landing_files_are(
    tmp_path: Path,
) -> None:
    # What a spreadsheet's "CSV UTF-8" export starts with.
    path = tmp_path / "requests.csv"
    path.write_bytes("\ufeffusername,days\r\nann,3\r\n".encode())
    [request] = read_requests(path, datetime(2023, 4, 1, 12))
    assert (request.username, request.days, request.source) == ("ann", 3, "requests.csv line 2")


def test_a_request_file_s_header_from_a_spreadsheet_is_read_trimmed_and_in_any_case(
    tmp_path: Path,
) -> None:
    path = tmp_path / "requests.csv"
    path.write_text(" Username , DAYS ,Requested_At\nann,3,2023-04-01T08:00:00Z\n")
    [request] = read_requests(path, datetime(2023, 4, 1, 12))
    assert (request.username, request.days, request.requested_at) == (
        "ann",
        3,
        datetime(2023, 4, 1, 8),
    )
    for header, reason in [
        (
            "user,days",
            "the header must name the columns username and days "
            "(and optionally requested_at); found 'user', 'days'",
        ),
        ("username,Days,days", "column 'days' appears twice (names are not case-sensitive)"),
        ("username,days,Note", "unknown columns: 'Note'"),
    ]:
        path.write_text(f"{header}\nann,3,4\n")
        with pytest.raises(BadInput) as refused:
            read_requests(path, datetime(2023, 4, 1, 12))
        assert str(refused.value) == f"{path}:1: {reason}"


@pytest.mark.parametrize(
    ("compress", "name"),
    [(gzip.compress, "gzip"), (bz2.compress, "bzip2"), (lzma.compress, "xz")],
)
def test_a_compressed_request_file_is_said_to_be_compressed(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: Any, name: str
) -> None:
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "github-2023.yaml"))
    path = tmp_path / "requests.csv.gz"
    path.write_bytes(compress(b"username,days\nann,3\n"))
    snoozed = CliRunner().invoke(app, ["phase", "snooze", PHASE, "--file", str(path)])
    assert snoozed.exit_code == 2, snoozed.output
    assert snoozed.stderr.strip() == (
        f"error: {path}: a {name}-compressed file, not text: decompress it first"
    )


def test_a_quoted_value_over_several_lines_keeps_the_line_numbers_after_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "requests.csv"
    now = datetime(2023, 4, 1, 12)
    # (A time with a line break after it, as a spreadsheet may export a cell: the
    # spaces around a value are not read.)
    path.write_text('username,days,requested_at\nann,3,"2023-04-01T08:00\n"\neve,2,\n')
    assert [(r.username, r.source) for r in read_requests(path, now)] == [
        ("ann", "requests.csv line 2"),
        ("eve", "requests.csv line 4"),
    ]
    # A line separator csv does not break at (U+2028) is no new line either.
    path.write_text(
        'username,days,requested_at\nann,3,"2023-04-01T08:00\n"\n'
        "bob,1,2023-04-01T08:00\u2028\neve,x,\n"
    )
    with pytest.raises(BadInput, match="days must be a whole number, not 'x'") as refused:
        read_requests(path, now)
    assert refused.value.line == 5
    # A username spanning lines is no account's: refused at the line it starts on.
    path.write_text('username,days\n"ann\nsmith",3\neve,2\n')
    with pytest.raises(BadInput, match="holds a control character") as refused:
        read_requests(path, now)
    assert refused.value.line == 2


@pytest.mark.parametrize("days", ["1_000", "+7", "\u0663", "1e3", "7.5", "1" * 5000])
def test_days_not_written_as_plain_digits_are_bad_input(tmp_path: Path, days: str) -> None:
    # int() reads 1_000, +7 and other scripts' digits (U+0663, ARABIC-INDIC THREE): the
    # 1_000 was then refused by the snooze guard (exit 3) instead of as a bad file.
    path = tmp_path / "requests.csv"
    path.write_text(f"username,days\nann,3\neve,{days}\n", encoding="utf-8")
    with pytest.raises(BadInput, match="days must be") as refused:
        read_requests(path, datetime(2023, 4, 1, 12))
    assert (refused.value.path, refused.value.line) == (path, 3)


def test_a_snooze_of_1_000_days_is_bad_input_and_of_1000_days_a_refusal(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "github-2023.yaml"))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    requests = tmp_path / "requests.csv"
    requests.write_text("username,days\nann,1_000\n")
    bad = runner.invoke(app, ["phase", "snooze", PHASE, "--file", str(requests)])
    assert bad.exit_code == 2
    assert f"{requests}:2: days must be a whole number, not '1_000'" in " ".join(bad.stderr.split())
    requests.write_text("username,days\nann,1000\n")
    too_long = runner.invoke(app, ["phase", "snooze", PHASE, "--file", str(requests)])
    assert too_long.exit_code == 3, too_long.stderr


def _land(landing: Path, name: str, text: str) -> None:
    folder = landing / "snoozes" / PHASE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_one_request_is_answered_once_whatever_file_or_line_it_is_read_from(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    """The site's export repeats a pending request (its time says it is the same one);
    a file without times rewritten with a row above moves a request's line."""
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    landing = tmp_path / "landing"
    timed = "username,days,requested_at\nann,9,2023-04-01T10:00:00\n"
    _land(landing, "2023-04-01.csv", timed)
    _land(landing, "requests.csv", "username,days\ndan,8\n")
    grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 2, 6))
    _land(landing, "2023-04-02.csv", timed)
    _land(landing, "requests.csv", "username,days\neve,5\ndan,8\n")
    grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 4, 3, 6))
    assert [r[:2] for r in _replies(registry)] == [
        ("ann", "refused"),
        ("dan", "refused"),
        ("eve", "granted"),
    ]


def test_a_request_refused_stays_refused_when_read_again_after_it_could_pass(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    """bob asks before his notice and is told to ask once it comes; the daily flow reads
    the same file after it came: the request he was told was refused is not granted
    behind his back (no second, contradicting answer); asking again is a new request."""
    from rollout.phases.snoozes import grant_landed

    campaign.day(date(2023, 3, 13))
    AccountFactory(username="bob", in_cohort="publishers")
    landing = tmp_path / "landing"
    _land(landing, "2023-03-15.csv", "username,days\nbob,5\n")
    grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 3, 16, 6))
    campaign.day(date(2023, 3, 20))  # bob's notice: his 45 days start
    again = grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 3, 21, 6))
    # Not listed again in the day's artifact (nothing new: no section at all), only
    # counted as answered before.
    assert (again.granted, again.refused, again.answered_before) == (0, [], 1)
    from flows.notify import snoozes_markdown

    assert snoozes_markdown(again) == ""
    assert [r[:2] for r in _replies(registry)] == [("bob", "refused")]
    _land(landing, "2023-03-21.csv", "username,days\nbob,5\n")
    asked = grant_landed(registry, plan, landing, actor="flow", now=datetime(2023, 3, 22, 6))
    assert asked.granted == 1
    assert [r[:2] for r in _replies(registry)] == [("bob", "refused"), ("bob", "granted")]


def test_a_file_given_to_the_command_again_another_week_is_asked_anew(
    campaign: Campaign, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    """The release manager's weekly `--file requests.csv` without times: week 2's is a
    new request, answered; the same file again the same day (after a kill) is not."""
    from rollout.phases.snoozes import read_requests

    campaign.day(date(2023, 3, 13))
    for day in (datetime(2023, 3, 20, 8), datetime(2023, 3, 20, 9), datetime(2023, 3, 27, 8)):
        path = tmp_path / day.strftime("%d") / "requests.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("username,days\nann,9\n")
        asked = read_requests(path, day, read_each_day=True)
        snooze(registry, plan, PHASE, asked, actor="rm", now=day)
    assert [r[:2] for r in _replies(registry)] == [("ann", "refused")] * 2


TOKEN_AGE_PLAN = """
name: token-age
cohorts:
  c: {every_maintainer: true, description: maintainers of any package}
phases:
  - name: publishers
    cohort: c
    cohort_as_of: 2023-03-01
    notice_on: 2023-03-01
    reminders_days_before: [7]
    enforce_on: 2023-04-15
    deadline: {days_after_notice: 45, snooze_days: 0, last_notice_on: 2023-06-30}
    max_accounts: 100
    requires: {two_factor: none, token_max_age_days: 90}
    effects: [revoke_tokens]
    max_tokens: 100
    notify_compliant: true
"""


def test_tokens_are_judged_at_each_account_s_own_deadline_by_its_warnings_and_enforcement(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """bob's token is 71 days old at his deadline (15 April): his notice thanks him, and
    daily enforcement later revoked it anyway the day it turned 91, unwarned. carl,
    noticed on 20 April (deadline 4 June), holds a token 92 days old by then: his
    reminder was skipped as compliant (judged on the phase's first deadline), then the
    token revoked. Each is judged at the start of his own deadline, as his notice was."""
    plan, problems = parse_plan(TOKEN_AGE_PLAN, "plan.yaml")
    assert problems == [] and plan is not None
    campaign = Campaign(registry, plan, tmp_path / "outbox")
    bob = AccountFactory(username="bob", in_cohort="c")
    TokenFactory(
        account=bob, name="bob-ci", granular=True, expires_at=None, created_at=datetime(2023, 2, 3)
    )
    revoked: dict[date, list[str]] = {}
    day = date(2023, 3, 1)
    while day <= date(2023, 6, 10):
        if day == date(2023, 4, 20):
            carl = AccountFactory(username="carl", in_cohort="c")
            TokenFactory(
                account=carl,
                name="carl-ci",
                granular=True,
                expires_at=None,
                created_at=datetime(2023, 3, 4),
            )
        campaign.day(day)
        if day >= plan.phases[0].enforce_on:
            with use_clock(SimulatedClock(datetime.combine(day, time(12)))):
                preview = campaign.preview(day)
                enforce.enforce_phase(
                    registry,
                    plan,
                    PHASE,
                    expect=preview.count,
                    expect_tokens=preview.token_count,
                    actor="rm",
                )
            if preview.tokens:
                revoked[day] = [t.username for t in preview.tokens]
        day += timedelta(days=1)
    assert "nothing for you to do" in " ".join(campaign.text_to("bob", "phase_notice").split())
    assert revoked == {date(2023, 6, 4): ["carl"]}
    with registry.engine.connect() as connection:
        reminders = dict(
            connection.execute(
                select(Account.username, Notification.state)
                .join(Notification, Notification.account_id == Account.id)
                .where(Notification.email == "reminder")
            ).all()
        )
    # bob's reminder: skipped, his token young enough at his deadline; carl's: sent.
    assert reminders == {"bob": "skipped", "carl": "sent"}
    assert "carl-ci" in campaign.text_to("carl", "reminder")


def test_an_exempt_account_asking_to_snooze_is_told_it_has_no_deadline(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """The plan exempts ann: she is sent no notice, so she has no deadline, and never
    will. Her request is refused as exempt, and her reply says so, not that her deadline
    starts with an email that never comes."""
    exempting = plan.model_copy(
        update={"exemptions": Exemptions(accounts=[ExemptAccount(username="ann", reason="bot")])}
    )
    AccountFactory(username="ann", in_cohort="publishers")
    campaign = Campaign(registry, exempting, tmp_path / "outbox")
    campaign.day(date(2023, 3, 13))
    assert campaign.sent("phase_notice") == set()
    assert _ask(registry, exempting, "ann", 3, date(2023, 3, 20))[:2] == (
        "refused",
        "exempt by the plan",
    )
    [(_, _, granted, told)] = _replies(registry)
    assert not granted and "exempt" in told and "first email" not in told


def test_a_snooze_killed_is_no_longer_listed_interrupted_once_its_requests_ran_again(
    campaign: Campaign, registry: Registry, plan: Plan
) -> None:
    """A killed snooze run's hint says "re-run it": the same requests granted since
    finish it; a run of other requests does not (it granted none of the killed run's)."""
    from rollout.core.calendar import REQUESTS_FINGERPRINT, snooze_step
    from rollout.phases.snoozes import requests_fingerprint
    from rollout.phases.timeline import interrupted_off_calendar
    from rollout.registry.ledger import start_run

    campaign.day(date(2023, 3, 13))
    asked = [command_request("eve", 5, datetime(2023, 4, 1, 8))]
    with registry.engine.begin() as connection:
        killed = start_run(
            connection,
            plan=plan.name,
            step=snooze_step(PHASE),
            mode="apply",
            actor="rm",
            parameters={REQUESTS_FINGERPRINT: requests_fingerprint(asked)},
            lock="enforce",
        )
    at = datetime(2023, 4, 1, 9)
    snooze(registry, plan, PHASE, [command_request("ann", 5, at)], actor="rm", now=at)
    assert [run.id for run in interrupted_off_calendar(registry, plan)] == [killed]
    rerun = [command_request("eve", 5, at)]  # the same command, later the same day
    snooze(registry, plan, PHASE, rerun, actor="rm", now=at)
    assert interrupted_off_calendar(registry, plan) == []

"""The phase emails of campaigns that ask more than any 2FA (a security key, no tokens
of some kinds, a banner first): what each recipient is told follows the phase's
requirements and effects and the recipient's own standing: which of its tokens stop
working (with their dates), whether it needs a security key, or nothing to do.

Golden files under ``tests/golden/campaign-emails/`` (``ROLLOUT_UPDATE_GOLDEN=1``
rewrites them, as for tests/golden/emails)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.plan import CohortRule, Plan, load_plan, parse_plan
from rollout.notify.emails import Recipient, TokenLine
from rollout.notify.render import render
from rollout.registry import Registry
from rollout.registry.models import Account, Notification, TfaFactor
from tests.factories import MembershipFactory, existing_account
from tests.test_email_parts import parts
from tests.test_emails import check_golden, parse_html, words

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "campaign-emails"

CLASSIC_TOKENS = (
    TokenLine("ci-publish", "automation", datetime(2021, 3, 4), datetime(2025, 11, 30)),
    TokenLine(None, "publish", datetime(2019, 8, 1), None),
)
RECIPIENTS = {
    # TOTP and two classic tokens: short of a token phase, and of a security-key phase.
    "holder": Recipient(1, "sam-example", "sam@example.com", True, "totp", ("left-pad",)),
    # A security key and no token the phases forbid: meets every phase.
    "compliant": Recipient(2, "kim-example", "kim@example.com", True, "webauthn", ("left-pad",)),
    # No second factor and a publishing token.
    "no-2fa": Recipient(3, "lee-example", "lee@example.com", True, None, ("left-pad",)),
}
STANDING = {
    # (recipient, phase): (lacks the factor the phase asks for, tokens it forbids)
    ("holder", "classic-tokens"): (False, CLASSIC_TOKENS),
    ("compliant", "classic-tokens"): (False, ()),
    ("no-2fa", "classic-tokens"): (False, CLASSIC_TOKENS[1:]),
    ("holder", "totp-closed"): (True, ()),
    ("compliant", "totp-closed"): (False, ()),
    ("no-2fa", "totp-closed"): (True, ()),
    ("holder", "tokens-without-2fa"): (False, ()),
    ("compliant", "tokens-without-2fa"): (False, ()),
    ("no-2fa", "tokens-without-2fa"): (False, CLASSIC_TOKENS[1:]),
    ("holder", "recommended"): (False, ()),
    ("compliant", "recommended"): (False, ()),
    ("no-2fa", "recommended"): (True, ()),
    ("holder", "publishers"): (False, ()),
    ("compliant", "publishers"): (False, ()),
    ("no-2fa", "publishers"): (True, ()),
}
# Phases with per-account deadlines: each recipient's own (a notice sent 2023-03-20).
OWN_DEADLINES = {"publishers": date(2023, 5, 4)}
PLANS = {
    "classic-tokens": "npm-2025-tokens",
    "totp-closed": "npm-2025-tokens",
    "tokens-without-2fa": "pypi-2023",
    "recommended": "rubygems-2022",
    "publishers": "github-2023",
}
EMAILS = ("phase_notice", "reminder", "enforcement_notice")


def plan_of(phase: str) -> Plan:
    return load_plan(ROOT / "plans" / f"{PLANS[phase]}.yaml")


def recipient(variant: str, phase: str) -> Recipient:
    lacks, tokens = STANDING[(variant, phase)]
    base = RECIPIENTS[variant]
    return Recipient(
        base.account_id,
        base.username,
        base.address,
        base.verified,
        base.method,
        base.packages,
        lacks_factor=lacks,
        tokens=tokens,
        deadline=OWN_DEADLINES.get(phase),
    )


def stored(email: str, phase: str) -> dict[str, object]:
    return {"phase": phase, "days_before": 7} if email == "reminder" else {"phase": phase}


CASES = [
    (email, phase, variant)
    for email in EMAILS
    for phase in PLANS
    for variant in RECIPIENTS
    # A reminder goes only to an account still short of the requirements.
    if not (email == "reminder" and recipient(variant, phase).compliant)
]


@pytest.mark.parametrize(("email", "phase", "variant"), CASES, ids=["-".join(c) for c in CASES])
def test_campaign_emails_match_the_golden_files(email: str, phase: str, variant: str) -> None:
    rendered = render(email, recipient(variant, phase), stored(email, phase), plan_of(phase))
    name = f"{email}-{phase}-{variant}"
    check_golden(GOLDEN / f"{name}.txt", f"{rendered.subject}\n\n{rendered.text}")
    check_golden(GOLDEN / f"{name}.html", rendered.html)


@pytest.mark.parametrize(("email", "phase", "variant"), CASES, ids=["-".join(c) for c in CASES])
def test_no_text_part_has_two_blank_lines_in_a_row_snoozed_or_not(
    email: str, phase: str, variant: str
) -> None:
    for snoozed in (False, True):
        r = replace(recipient(variant, phase), snoozed=snoozed)
        text = render(email, r, stored(email, phase), plan_of(phase)).text
        assert "\n\n\n" not in text, (snoozed, text)


def test_a_token_holder_is_told_which_tokens_stop_working_and_when() -> None:
    rendered = render(
        "phase_notice",
        recipient("holder", "classic-tokens"),
        stored("phase_notice", "classic-tokens"),
        plan_of("classic-tokens"),
    )
    text = words(rendered.text)
    assert (
        "From Tuesday 9 December 2025, 00:00 UTC, the registry requires of these accounts:"
        " - no classic tokens" in text
    )
    assert (
        "ci-publish, automation, created Thursday 4 March 2021, last used Sunday 30 November 2025"
        in text
    )
    assert "(unnamed), publish, created Thursday 1 August 2019, never used" in text
    # A token phase asks nothing of the factors: no 2FA advice, no sign-out.
    assert "enable two-factor" not in text.lower() and "signed out" not in text
    assert "cannot be undone" in text
    assert "<td>ci-publish</td><td>automation</td>" in rendered.html
    assert "<td>(unnamed)</td><td>publish</td>" in rendered.html
    assert parse_html(rendered.html).tags.count("th") == 4


def test_a_security_key_phase_tells_a_totp_user_totp_is_not_enough() -> None:
    rendered = render(
        "phase_notice",
        recipient("holder", "totp-closed"),
        stored("phase_notice", "totp-closed"),
        plan_of("totp-closed"),
    )
    text = words(rendered.text)
    assert (
        "add a security key (WebAuthn) to your account; an authenticator app (TOTP) is not enough"
        in text
    )
    assert "no new authenticator-app (TOTP) set-ups: security keys only" in text


def test_a_per_account_deadline_is_the_recipients_own_with_the_snooze_offer() -> None:
    lee = render(
        "reminder",
        recipient("no-2fa", "publishers"),
        stored("reminder", "publishers"),
        plan_of("publishers"),
    )
    text = words(lee.text)
    assert "In 7 days, from Thursday 4 May 2023, 00:00 UTC, the registry requires" in text
    assert (
        "Thursday 4 May 2023, 00:00 UTC is your account's own deadline: 45 days from the day"
        in text
    )
    assert "postpone it once, by up to 7 days" in text
    assert "postpone it once, by up to 7 days</a>" in lee.html
    # After enforcement the offer is gone: there is nothing left to postpone.
    enforced = render(
        "enforcement_notice",
        recipient("no-2fa", "publishers"),
        stored("enforcement_notice", "publishers"),
        plan_of("publishers"),
    )
    assert "postpone" not in enforced.text and "postpone" not in enforced.html


def test_a_compliant_account_is_thanked_and_a_warning_tier_only_recommends() -> None:
    kim = render(
        "enforcement_notice",
        recipient("compliant", "classic-tokens"),
        stored("enforcement_notice", "classic-tokens"),
        plan_of("classic-tokens"),
    )
    assert "nothing for you to do" in kim.text and "Action needed" not in kim.subject
    lee = render(
        "phase_notice",
        recipient("no-2fa", "recommended"),
        stored("phase_notice", "recommended"),
        plan_of("recommended"),
    )
    assert "the registry recommends of these accounts" in words(lee.text)
    assert "a banner on the website asking you to act" in lee.text


# --- queued and sent from the registry --------------------------------------------------


@pytest.fixture
def token_plan(plan: Plan) -> Plan:
    """The reference plan whose top-100 phase is npm 2025's classic-token revocation."""
    return _top_100_as(plan, {"two_factor": "none", "no_classic_tokens": True}, ["revoke_tokens"])


def test_queued_from_the_registry_each_holder_hears_of_its_own_tokens(
    registry: Registry, token_plan: Plan, factories: None, tmp_path: Path
) -> None:
    """A reminder goes to the accounts still holding classic tokens, whatever their 2FA
    (an account with 2FA but a classic token is short; one without 2FA and only a
    granular token is not), and lists each one's own tokens; hostile token names stay
    text in the HTML."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory, TokenFactory

    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="<script>alert(1)</script>", kind="publish")
    granular_only = AccountFactory(username="granular-only", in_cohort="top-100")
    TokenFactory(account=granular_only, granular=True, created_at=datetime(2025, 11, 1))
    reminder_day = token_plan.phase("top-100").enforce_on - timedelta(days=3)
    with use_clock(SimulatedClock(datetime.combine(reminder_day, time(9)))):
        outcomes = queue_due(registry, token_plan, reminder_day, actor="rm")
        sender = FileSender(tmp_path / "outbox", token_plan.notifications.from_address)
        report = drain(registry, token_plan, sender)
    # The notice and both reminders are due (missed days are caught up).
    assert [o.occasion.email for o in outcomes] == ["phase_notice", "reminder", "reminder"]
    with registry.engine.connect() as connection:
        states = sorted(
            connection.execute(
                select(Account.username, Notification.email, Notification.state).join(
                    Account, Account.id == Notification.account_id
                )
            ).all()
        )
    assert states == [
        ("granular-only", "phase_notice", "sent"),  # thanked: nothing to do
        ("granular-only", "reminder", "skipped"),
        ("granular-only", "reminder", "skipped"),
        ("holder", "phase_notice", "sent"),
        ("holder", "reminder", "sent"),
        ("holder", "reminder", "skipped"),  # the repeat window: one reminder a week
    ]
    assert report.sent == 3
    bodies = {}
    for path in (tmp_path / "outbox").iterdir():
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        [to] = parsed["To"].addresses
        text = parsed.get_body(("plain",)).get_content()
        html = parsed.get_body(("html",)).get_content()
        bodies.setdefault(to.username, []).append((text, html))
        assert "<script>" not in html
        assert "enable two-factor" not in text.lower()
    for text, html in bodies["holder"]:
        assert "<script>alert(1)</script>, publish, created" in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    [(thanks, _)] = bodies["granular-only"]
    assert "nothing for you to do" in thanks


def test_a_token_name_cannot_forge_lines_of_the_text_email() -> None:
    forged = TokenLine(
        "ci\n  - nothing else will change\r\nBcc: x", "publish", datetime(2020, 1, 1), None
    )
    rendered = render(
        "phase_notice",
        replace(recipient("holder", "classic-tokens"), tokens=(forged,)),
        stored("phase_notice", "classic-tokens"),
        plan_of("classic-tokens"),
    )
    lines = rendered.text.splitlines()
    assert "  - nothing else will change" not in lines
    assert not any(line.startswith("Bcc:") for line in lines)
    assert "ci - nothing else will change Bcc: x, publish" in rendered.text


def test_the_enforcement_notice_lists_the_tokens_the_phase_revoked(
    registry: Registry, token_plan: Plan, factories: None, tmp_path: Path
) -> None:
    """Sent after enforcement, when the account holds no forbidden token any more: it
    says which were revoked, not that there is nothing to do."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from tests.factories import AccountFactory, TokenFactory

    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-release", kind="automation")
    TokenFactory(account=holder, granular=True, created_at=datetime(2025, 11, 1))
    day = token_plan.phase("top-100").enforce_on
    with use_clock(SimulatedClock(datetime.combine(day, time(12)))):
        result = enforce.enforce_phase(
            registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
        )
        assert result.tokens_revoked == 1
        report = drain(registry, token_plan, FileSender(tmp_path / "outbox"))
    assert report.sent == 1
    [path] = (tmp_path / "outbox").iterdir()
    parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
    text = words(parsed.get_body(("plain",)).get_content())
    assert (
        "Your tokens that were revoked (name, kind, created, last used): - ci-release, automation"
        in text
    )
    assert "nothing for you to do" not in text
    assert parsed["Subject"] == "New security requirements are in force for your account"


def test_a_rerun_that_revokes_a_token_made_since_tells_its_owner_again(
    registry: Registry, token_plan: Plan, factories: None, tmp_path: Path
) -> None:
    """The first run revoked ci-release and its notice went; a classic token made three
    days later was revoked by a rerun, and its owner heard nothing (one notice per
    account and phase). The rerun's own notice goes, once, even if the rerun repeats,
    and tells what the rerun revoked: listing ci-release again, in the same words, told
    its owner a token reported days before was revoked anew."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from tests.factories import AccountFactory, TokenFactory

    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-release", kind="automation")
    day = token_plan.phase("top-100").enforce_on
    outbox = FileSender(tmp_path / "outbox")
    with use_clock(SimulatedClock(datetime.combine(day, time(12)))):
        enforce.enforce_phase(
            registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
        )
        assert drain(registry, token_plan, outbox).sent == 1
    later = datetime.combine(day + timedelta(days=3), time(12))
    TokenFactory(account=holder, name="ci-again", kind="automation", created_at=later)
    with use_clock(SimulatedClock(later + timedelta(hours=1))):
        again = enforce.enforce_phase(
            registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
        )
        assert (again.tokens_revoked, again.emails_queued) == (1, 1)
        assert drain(registry, token_plan, outbox).sent == 1
        # Nothing left to revoke: a third run changes nothing and tells no one.
        third = enforce.preview_phase(registry, token_plan, token_plan.phase("top-100"))
        assert third.token_count == 0
    messages = [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted((tmp_path / "outbox").iterdir())
    ]
    texts = [words(m.get_body(("plain",)).get_content()) for m in messages]
    assert len(texts) == 2
    first, rerun = sorted(texts, key=lambda text: "ci-again" in text)
    assert "- ci-release, automation" in first
    assert "ci-again" not in first
    assert (
        f"We wrote to you on {day:%A} {day.day} {day:%B %Y} about what this step changed "
        "for your account. It has run again since, and for your account: - the tokens "
        "listed below revoked, which cannot be undone Your tokens revoked since then "
        "(those revoked before were listed in our emails up to then) (name, kind, created, "
        "last used): - ci-again, automation" in rerun
    )
    assert "ci-release" not in rerun
    html = next(m for m in messages if "ci-again" in m.get_body(("plain",)).get_content())
    assert "ci-release" not in html.get_body(("html",)).get_content()
    assert html["Subject"] == (
        "More of your tokens were revoked under the registry's new security requirements"
    )


def test_a_rerun_tells_every_revoked_token_to_an_owner_the_first_email_never_reached(
    registry: Registry, token_plan: Plan, factories: None, tmp_path: Path
) -> None:
    """The first run's email to holder was skipped (its address unverified then): the
    rerun's email is the first holder reads, so it lists ci-release too."""
    from email import message_from_bytes, policy

    from sqlalchemy import update

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from rollout.registry.models import Account
    from tests.factories import AccountFactory, TokenFactory

    holder = AccountFactory(
        username="holder", with_totp=True, in_cohort="top-100", email_verified=False
    )
    TokenFactory(account=holder, name="ci-release", kind="automation")
    day = token_plan.phase("top-100").enforce_on
    outbox = FileSender(tmp_path / "outbox")
    with use_clock(SimulatedClock(datetime.combine(day, time(12)))):
        enforce.enforce_phase(
            registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
        )
        assert drain(registry, token_plan, outbox).sent == 0
    with registry.engine.begin() as connection:
        connection.execute(
            update(Account).where(Account.id == holder.id).values(email_verified=True)
        )
    later = datetime.combine(day + timedelta(days=3), time(12))
    TokenFactory(account=holder, name="ci-again", kind="automation", created_at=later)
    with use_clock(SimulatedClock(later + timedelta(hours=1))):
        enforce.enforce_phase(
            registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
        )
        assert drain(registry, token_plan, outbox).sent == 1
    [path] = (tmp_path / "outbox").iterdir()
    text = words(
        message_from_bytes(path.read_bytes(), policy=policy.default)
        .get_body(("plain",))
        .get_content()
    )
    assert "Your tokens that were revoked" in text
    assert "- ci-release, automation" in text and "- ci-again, automation" in text
    assert "We wrote to you" not in text


def test_a_rerun_tells_the_tokens_an_earlier_rerun_s_email_never_told(
    registry: Registry, token_plan: Plan, factories: None, tmp_path: Path
) -> None:
    """The first run's email told holder of ci-release; a second run revoked ci-again,
    and its email was skipped (holder's address unverified then); a third revoked
    ci-third. Its email is the first holder hears of ci-again: it lists both, since the
    last email that reached holder (it listed only ci-third: ci-again's revocation was
    never told, and holder's CI broke unexplained)."""
    from email import message_from_bytes, policy

    from sqlalchemy import update

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from tests.factories import AccountFactory, TokenFactory

    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-release", kind="automation")
    day = token_plan.phase("top-100").enforce_on
    outbox = FileSender(tmp_path / "outbox")

    def verified(value: bool) -> None:
        with registry.engine.begin() as connection:
            connection.execute(
                update(Account).where(Account.id == holder.id).values(email_verified=value)
            )

    def rerun(name: str, days: int) -> int:
        at = datetime.combine(day + timedelta(days=days), time(12))
        TokenFactory(account=holder, name=name, kind="automation", created_at=at)
        with use_clock(SimulatedClock(at + timedelta(hours=1))):
            enforce.enforce_phase(
                registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
            )
            return drain(registry, token_plan, outbox).sent

    with use_clock(SimulatedClock(datetime.combine(day, time(12)))):
        enforce.enforce_phase(
            registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
        )
        assert drain(registry, token_plan, outbox).sent == 1
    verified(False)
    assert rerun("ci-again", 3) == 0  # skipped: holder's address unverified
    verified(True)
    assert rerun("ci-third", 5) == 1
    texts = [
        words(
            message_from_bytes(p.read_bytes(), policy=policy.default)
            .get_body(("plain",))
            .get_content()
        )
        for p in (tmp_path / "outbox").iterdir()
    ]
    [third] = [text for text in texts if "ci-third" in text]
    assert f"We wrote to you on {day:%A} {day.day} {day:%B %Y}" in third
    assert "- ci-again, automation" in third and "- ci-third, automation" in third
    assert "ci-release" not in third


def test_a_rerun_s_email_counts_from_the_last_email_that_reached_its_owner(
    registry: Registry, token_plan: Plan, factories: None, tmp_path: Path
) -> None:
    """Three runs, each email sent: the third's says it wrote on the second's day (the
    last it told), and lists only ci-third (ci-again was in the second's email)."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from tests.factories import AccountFactory, TokenFactory

    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-release", kind="automation")
    day = token_plan.phase("top-100").enforce_on
    outbox = FileSender(tmp_path / "outbox")
    for days, name in ((0, None), (3, "ci-again"), (5, "ci-third")):
        at = datetime.combine(day + timedelta(days=days), time(12))
        if name is not None:
            TokenFactory(account=holder, name=name, kind="automation", created_at=at)
        with use_clock(SimulatedClock(at + timedelta(hours=1))):
            enforce.enforce_phase(
                registry, token_plan, "top-100", expect=1, expect_tokens=1, actor="rm"
            )
            assert drain(registry, token_plan, outbox).sent == 1
    messages = [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in (tmp_path / "outbox").iterdir()
    ]
    [third] = [m for m in messages if "ci-third" in m.get_body(("plain",)).get_content()]
    text = words(third.get_body(("plain",)).get_content())
    second = day + timedelta(days=3)
    assert f"We wrote to you on {second:%A} {second.day} {second:%B %Y}" in text
    assert "ci-again" not in text and "ci-release" not in text
    assert "ci-again" not in third.get_body(("html",)).get_content()


def test_a_rollback_keeps_the_email_of_an_account_whose_tokens_were_revoked(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """Rolled back before its emails went: holder's token stays revoked (a token cannot
    be restored), and withdrawing its enforcement email left holder's CI broken and
    unexplained. That email goes, saying the step was rolled back since; the email of an
    account the phase revoked nothing of (no-2fa, only required) is withdrawn as before."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from tests.factories import AccountFactory, TokenFactory

    both_plan = _with_tokens_too(plan)
    both = both_plan.phase("top-100")
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-release", kind="automation")
    AccountFactory(username="no-2fa", in_cohort="top-100")
    with use_clock(SimulatedClock(datetime.combine(both.enforce_on, time(12)))):
        result = enforce.enforce_phase(
            registry, both_plan, "top-100", expect=2, expect_tokens=1, actor="rm"
        )
        assert (result.accounts_required, result.tokens_revoked) == (2, 1)
    with use_clock(SimulatedClock(datetime.combine(both.enforce_on, time(13)))):
        back = enforce.rollback_phase(registry, both_plan, "top-100", actor="rm")
        assert back.emails_withdrawn == 1
        assert drain(registry, both_plan, FileSender(tmp_path / "outbox")).sent == 1
    [path] = (tmp_path / "outbox").iterdir()
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"].addresses[0].username == "holder"
    text = words(message.get_body(("plain",)).get_content())
    assert "- ci-release, automation" in text
    assert (
        "The registry has since rolled this step back: what it required no longer applies, "
        "but a revoked token cannot be restored." in text
    )
    html = message.get_body(("html",)).get_content()
    assert "The registry has since rolled this step back" in html


@pytest.mark.parametrize("applied_again", [False, True], ids=["rolled-back", "applied-again"])
def test_an_apply_and_a_rollback_at_one_instant_tell_which_came_last(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path, applied_again: bool
) -> None:
    """Under a clock that stands still (the demo's), a rollback starts at the instant of
    the apply before it, or an apply again at the instant of the rollback before it:
    which came last was arbitrary (the runs' ids are random), so holder's kept
    enforcement email said "rolled back since" of a step applied again, or not of one
    rolled back. The order the runs were recorded in decides."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from tests.factories import AccountFactory, TokenFactory

    both_plan = _with_tokens_too(plan)
    both = both_plan.phase("top-100")
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-release", kind="automation")
    noon = datetime.combine(both.enforce_on, time(12))
    # Applied again: the rollback and the second apply share an instant, not the first.
    with use_clock(SimulatedClock(noon - timedelta(hours=1) if applied_again else noon)):
        enforce.enforce_phase(registry, both_plan, "top-100", expect=1, expect_tokens=1, actor="rm")
    with use_clock(SimulatedClock(noon)):
        enforce.rollback_phase(registry, both_plan, "top-100", actor="rm")
        if applied_again:
            # holder's token is gone: nobody to act on, but the step is applied again.
            enforce.enforce_phase(
                registry, both_plan, "top-100", expect=0, expect_tokens=0, actor="rm"
            )
        assert drain(registry, both_plan, FileSender(tmp_path / "outbox")).sent == 1
    [path] = (tmp_path / "outbox").iterdir()
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"].addresses[0].username == "holder"
    text = words(message.get_body(("plain",)).get_content())
    assert "- ci-release, automation" in text
    said = "The registry has since rolled this step back" in text
    assert said is not applied_again


@pytest.mark.parametrize("ended", [KeyboardInterrupt, RuntimeError], ids=["stopped", "failed"])
def test_an_apply_again_cut_short_after_a_rollback_does_not_call_its_own_step_rolled_back(
    registry: Registry,
    plan: Plan,
    factories: None,
    tmp_path: Path,
    ended: type[BaseException],
) -> None:
    """Applied, rolled back, then applied again by a run stopped (or failed) after its
    first batch: that batch revoked newcomer's token and queued its enforcement email.
    Only a succeeded run counted, so the rollback read as the phase's last word and the
    email said the step had been rolled back since, of a requirement that stands (plan
    show: interrupted)."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce
    from tests.factories import AccountFactory, CohortPackageFactory, TokenFactory

    both_plan = _with_tokens_too(plan)
    both = both_plan.phase("top-100")
    noon = datetime.combine(both.enforce_on, time(12))
    CohortPackageFactory(cohort="top-100")  # built, its maintainers not registered yet
    with use_clock(SimulatedClock(noon)):
        enforce.enforce_phase(registry, both_plan, "top-100", expect=0, expect_tokens=0, actor="rm")
    with use_clock(SimulatedClock(noon + timedelta(hours=1))):
        enforce.rollback_phase(registry, both_plan, "top-100", actor="rm")
    for name in ("newcomer", "next"):
        account = AccountFactory(username=name, with_totp=True, in_cohort="top-100")
        TokenFactory(account=account, name=f"ci-{name}", kind="automation")

    def cut_short(done: int, total: int) -> None:
        raise ended("after the first batch")

    with use_clock(SimulatedClock(noon + timedelta(hours=2))):
        with pytest.raises(ended):
            enforce.enforce_phase(
                registry,
                both_plan,
                "top-100",
                expect=2,
                expect_tokens=2,
                actor="rm",
                batch_size=1,
                progress=cut_short,
            )
        assert drain(registry, both_plan, FileSender(tmp_path / "outbox")).sent == 1
    [path] = (tmp_path / "outbox").iterdir()
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"].addresses[0].username == "newcomer"
    text = words(message.get_body(("plain",)).get_content())
    assert "- ci-newcomer, automation" in text
    assert "rolled this step back" not in text


@pytest.mark.parametrize("phase", ["totp-closed", "recommended"])
def test_a_phase_that_stops_no_one_recommends_and_asks_no_action(phase: str) -> None:
    """npm 2025's totp-closed only closes new TOTP set-ups, RubyGems' recommended only
    shows a banner: neither stops an account signing in or publishing, so no email of
    theirs says "requires" or "action needed"."""
    variant = "holder" if phase == "totp-closed" else "no-2fa"
    for email in EMAILS:
        rendered = render(email, recipient(variant, phase), stored(email, phase), plan_of(phase))
        said = words(f"{rendered.subject} {rendered.text}").lower()
        assert "recommend" in said, email
        assert "requires" not in said and "action needed" not in said, email


@pytest.mark.parametrize("phase", ["totp-closed", "recommended"])
@pytest.mark.parametrize("variant", ["compliant", "no-2fa"])
def test_a_phase_that_only_recommends_speaks_of_recommendations_to_everyone(
    phase: str, variant: str
) -> None:
    """Its notice to an account that meets it said "meets the registry's new security
    requirements", and every email's footer "affected by the registry's new security
    requirements": a recommendation, in both parts, whatever the account's standing."""
    for email in EMAILS:
        if email == "reminder" and recipient(variant, phase).compliant:
            continue  # not sent
        rendered = render(email, recipient(variant, phase), stored(email, phase), plan_of(phase))
        for part in (rendered.subject, rendered.text, rendered.html):
            said = words(part).lower()
            assert "requirement" not in said, (email, part)


def test_a_recommending_phase_summary_counts_accounts_short_of_its_recommendations() -> None:
    summary = render(
        "phase_summary",
        RECIPIENTS["compliant"],
        {"phase": "recommended", "counts": {"accounts_flagged": 3}, "run_id": "r1"},
        plan_of("recommended"),
    )
    assert summary.subject == "Phase recommended enforced: 3 accounts short of its recommendations"


def test_a_token_phase_summary_does_not_say_2fa_is_required() -> None:
    summary = render(
        "phase_summary",
        RECIPIENTS["compliant"],
        {"phase": "classic-tokens", "counts": {"accounts_required": 3}, "run_id": "r1"},
        plan_of("classic-tokens"),
    )
    assert summary.subject == "Phase classic-tokens enforced: 3 accounts short of its requirements"


def test_a_per_account_deadline_phase_summary_does_not_give_one_deadline_for_all() -> None:
    """GitHub's shape enforces each day the accounts whose own deadline came: the summary
    of a day's run names the first deadline as the first, not as everyone's."""
    summary = render(
        "phase_summary",
        RECIPIENTS["compliant"],
        {"phase": "publishers", "counts": {"accounts_required": 3}, "run_id": "r1"},
        plan_of("publishers"),
    )
    said = " ".join(summary.text.split())
    assert "each account by its own deadline, the first Thursday 27 April 2023" in said
    assert "deadline Thursday" not in said


def test_a_phase_forbidding_tokens_that_bypass_2fa_never_advises_such_a_token() -> None:
    """npm 2025's bypass-tokens phase revokes granular tokens too (those set to bypass
    2FA): "publish with a granular token instead" would send its maintainers back to the
    kind of token it revokes."""
    plan = load_plan(ROOT / "plans" / "npm-2025-tokens.yaml")
    bypassing = (TokenLine("ci", "granular", datetime(2025, 3, 4), datetime(2025, 11, 30)),)
    holder = replace(RECIPIENTS["holder"], lacks_factor=False, tokens=bypassing)
    rendered = render("reminder", holder, {"phase": "bypass-tokens", "days_before": 7}, plan)
    advice = "trusted publishing or a granular token that does not bypass 2FA"
    assert advice in " ".join(rendered.text.split())
    assert advice in " ".join(rendered.html.split())
    assert "with a granular token or trusted publishing" not in " ".join(rendered.text.split())


def _the_one_notice(
    registry: Registry, plan: Plan, notice_on: date, outbox: Path
) -> tuple[str, str]:
    """The one email queued and sent on ``notice_on`` at 9:00: its text and HTML, each
    with its whitespace runs made single spaces."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender

    with use_clock(SimulatedClock(datetime.combine(notice_on, time(9)))):
        queue_due(registry, plan, notice_on, actor="rm")
        drain(registry, plan, FileSender(outbox))
    [(_, text, html)] = list(_sent_texts(outbox).values())
    return words(text), words(html)


def test_a_token_lifetime_cap_lists_each_token_with_its_expiry_and_advises_a_short_one(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """npm 2025's cap on how long a token lasts: the warning lists each token that
    breaks it with when it expires ("never expires" for one that does not), which is
    why it stops working, and advises a token within the cap, in text and HTML alike; a
    token within the cap is not listed."""
    from tests.factories import AccountFactory, TokenFactory

    capping = _top_100_as(
        plan, {"two_factor": "none", "token_max_lifetime_days": 90}, ["revoke_tokens"]
    )
    notice_on = capping.phase("top-100").notice_on
    made = datetime.combine(notice_on, time()) - timedelta(days=5)
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-forever", granular=True, created_at=made, expires_at=None)
    TokenFactory(
        account=holder,
        name="ci-year",
        granular=True,
        created_at=made,
        expires_at=datetime(2030, 1, 2, 3),
    )
    TokenFactory(account=holder, name="ci-short", granular=True, created_at=made)
    text, html = _the_one_notice(registry, capping, notice_on, tmp_path / "outbox")
    assert "ci-forever, granular, created" in text and "ci-year, granular" in text
    assert "ci-short" not in text and "ci-short" not in html
    assert re.search(r"- ci-forever, granular, [^-]*never expires", text)
    assert re.search(r"- ci-year, granular, [^-]*expires Wednesday 2 January 2030", text)
    assert re.search(r"ci-forever</td>.*?never expires", html)
    assert re.search(r"ci-year</td>.*?expires Wednesday 2 January 2030", html)
    advice = "a granular token that expires within 90 days of its creation"
    assert advice in text and advice in html
    assert "no tokens valid for more than 90 days" in text


def test_a_lifetime_cap_on_publishing_tokens_lists_them_and_not_read_only_ones(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """write_token_max_lifetime_days (npm's cap of 2025-10-13, on write tokens): the
    warning lists the publishing token that never expires with its expiry, not the
    read-only one that never expires either, says the rule as one on publishing tokens,
    and advises a replacement within the cap, in text and HTML alike."""
    from tests.factories import AccountFactory, TokenFactory

    capping = _top_100_as(
        plan, {"two_factor": "none", "write_token_max_lifetime_days": 30}, ["revoke_tokens"]
    )
    notice_on = capping.phase("top-100").notice_on
    made = datetime.combine(notice_on, time()) - timedelta(days=5)
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=holder, name="ci-forever", granular=True, created_at=made, expires_at=None)
    TokenFactory(
        account=holder, name="mirror-read", kind="read_only", writes=False, created_at=made
    )
    text, html = _the_one_notice(registry, capping, notice_on, tmp_path / "outbox")
    assert re.search(r"- ci-forever, granular, [^-]*never expires", text)
    assert re.search(r"ci-forever</td>.*?never expires", html)
    assert "mirror-read" not in text and "mirror-read" not in html
    advice = "a granular token that expires within 30 days of its creation"
    assert advice in text and advice in html
    assert "no publishing tokens valid for more than 30 days" in text


def test_a_token_only_notice_does_not_thank_an_account_owing_2fa() -> None:
    """pypi 2024: an account another phase required 2FA of, still without it and with no
    token the rule forbids, was told it "meets the registry's new security requirements
    ... nothing for you to do". It holds no affected token; it still owes 2FA."""
    plan = plan_of("tokens-without-2fa")
    owing = replace(RECIPIENTS["no-2fa"], lacks_factor=False, tokens=(), tfa_required=True)
    rendered = render("phase_notice", owing, stored("phase_notice", "tokens-without-2fa"), plan)
    text, html = " ".join(rendered.text.split()), " ".join(rendered.html.split())
    assert "meets the registry's new security requirements" not in rendered.subject
    assert "two-factor authentication is still required of your account" in rendered.subject
    assert "nothing for you to do" not in text and "nothing for you to do" not in html
    assert "requires two-factor authentication of your account, though" in text
    assert "requires two-factor authentication of your account, though" in html
    # One with 2FA, or never required it, is thanked as before.
    for thanked in (replace(owing, tfa_required=False), replace(owing, method="totp")):
        again = render("phase_notice", thanked, stored("phase_notice", "tokens-without-2fa"), plan)
        assert again.subject == "Your account meets the registry's new security requirements"


def _rubygems(banner_asks: str = "any", required_asks: str = "any") -> Plan:
    """RubyGems 2022's plan, its phases asking these factors."""
    text = (ROOT / "plans" / "rubygems-2022.yaml").read_text()
    for effects, asks in (("[warn]", banner_asks), ("[require_2fa]", required_asks)):
        text = text.replace(
            f"    effects: {effects}\n",
            f"    effects: {effects}\n    requires: {{two_factor: {asks}}}\n",
        )
    parsed, problems = parse_plan(text)
    assert parsed is not None and problems == [], problems
    return parsed


def _play_rubygems(
    registry: Registry,
    plan: Plan,
    outbox: Path,
    before_banner: Callable[[], None] = lambda: None,
    *,
    newcomers: Sequence[str] = (),
) -> dict[str, list[str]]:
    """The recommended notice (06-12), the required notice (06-13, 09:00), then the
    recommended phase's banner enforced (06-13, noon, after ``before_banner``): each
    account's texts, in order. ``newcomers`` join the recommended cohort on 06-13,
    after its notice's last day: the banner's email is the only word of that phase
    they get (an account its notice reached is not sent it)."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from rollout.phases import enforce

    sender = FileSender(outbox, plan.notifications.from_address)
    for day in (date(2022, 6, 12), date(2022, 6, 13)):
        with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, sender)
    with use_clock(SimulatedClock(datetime(2022, 6, 13, 12))):
        for username in newcomers:
            with registry.engine.connect() as connection:
                account_id = connection.execute(
                    select(Account.id).where(Account.username == username)
                ).scalar_one()
            MembershipFactory(account=existing_account(account_id), cohort="recommended")
        before_banner()
        preview = enforce.preview_phase(registry, plan, plan.phase("recommended"))
        enforce.enforce_phase(registry, plan, "recommended", expect=preview.count, actor="rm")
        drain(registry, plan, sender)
    told: dict[str, list[str]] = {}
    for path in sorted(outbox.iterdir()):
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        [to] = parsed["To"].addresses
        text = " ".join(parsed.get_body(("plain",)).get_content().split())
        told.setdefault(to.username, []).append(text)
    return told


def test_a_banner_phase_thanking_compliant_accounts_emails_one_that_drops_2fa_before_the_banner(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """A banner phase that asks its notice to go to compliant accounts too
    (notify_compliant): kim, with TOTP, was thanked ("nothing for you to do"), then
    dropped TOTP before the banner's day. The banner is shown to kim, and its email is
    the only word of it kim gets: the thank-you never said a banner comes. sam, without
    2FA, was told the banner comes, and is not told again."""
    from tests.factories import AccountFactory

    text = (ROOT / "plans" / "rubygems-2022.yaml").read_text()
    warn = "    effects: [warn]\n"
    text = text.replace(warn, f"{warn}    notify_compliant: true\n")
    plan, problems = parse_plan(text)
    assert plan is not None and problems == [], problems
    kim = AccountFactory(username="kim", with_totp=True, in_cohort="recommended")
    AccountFactory(username="sam", in_cohort="recommended")

    def kim_drops_totp() -> None:
        with registry.engine.begin() as connection:
            connection.execute(
                update(TfaFactor)
                .where(TfaFactor.account_id == kim.id)
                .values(removed_at=datetime(2022, 6, 12, 18))
            )

    told = _play_rubygems(registry, plan, tmp_path / "outbox", kim_drops_totp)
    thanks, banner = told["kim"]
    assert "nothing for you to do" in thanks
    assert "banner" in banner.lower() and "nothing for you to do" not in banner
    [notice] = told["sam"]  # the banner was in its notice
    assert "nothing for you to do" not in notice


def test_a_recommendation_to_an_account_a_later_phase_requires_says_it_is_required(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """RubyGems 2022: owners above 165M downloads were told MFA is recommended, the
    owners above 180M (among them) the next day that it will be required. The banner's
    email after that does not read as if 2FA stayed optional for those; not before
    their notice told them (it would announce what was not announced yet), nor to the
    others; an account with 2FA gets none of them (the plan's phases do not ask for
    notices to accounts that meet them)."""
    from tests.factories import AccountFactory

    plan = _rubygems()
    AccountFactory(username="big", in_cohort=["recommended", "required"])
    AccountFactory(username="late-big", in_cohort="required")  # a newcomer to the banner
    AccountFactory(username="medium", in_cohort="recommended")
    AccountFactory(username="big-with-2fa", with_totp=True, in_cohort=["recommended", "required"])
    told = _play_rubygems(registry, plan, tmp_path / "outbox", newcomers=["late-big"])
    required = plan.cohort("required").description
    said = (
        f"Your account is also among the {required}: from Monday 15 August 2022, 00:00 UTC the "
        "registry requires of it a second factor (TOTP or a security key), to sign in and "
        "publish (we wrote to you about that separately)."
    )
    recommended_notice, required_notice = told["big"]  # the banner was in its notice
    assert "recommends" in recommended_notice and "also among" not in recommended_notice
    assert "recommends" not in required_notice
    _, banner = told["late-big"]
    assert "recommends" in banner and said in banner
    assert not any("also among" in text for text in told["medium"])
    assert "big-with-2fa" not in told  # meets both phases: neither notice goes to it


@pytest.mark.parametrize(
    ("email", "stored_context"),
    [
        ("phase_notice", {"phase": "recommended", "sent_on": "2022-08-20"}),
        ("reminder", {"phase": "recommended", "days_before": 7, "sent_on": "2022-08-20"}),
        ("enforcement_notice", {"phase": "recommended", "sent_on": "2022-08-20"}),
    ],
)
def test_a_recommendation_sent_after_the_stricter_phase_s_day_says_it_is_required_since(
    email: str, stored_context: dict[str, object]
) -> None:
    """The banner's emails sent late (a notice or reminder queued --late, the banner
    enforced after the required phase's day) go on 2022-08-20: the required phase's
    line says "since" 15 August, as the banner's own line says "since" its day, never
    "from" a day gone. Sent before that day, it still says "from"."""
    from rollout.notify.emails import Stricter

    plan = _rubygems()
    big = Recipient(
        1,
        "big",
        "big@example.com",
        True,
        None,
        ("rails",),
        stricter=Stricter("owners above 180M", date(2022, 8, 15), "a second factor"),
    )
    late = render(email, big, stored_context, plan)
    early = render(email, big, {**stored_context, "sent_on": "2022-06-13"}, plan)
    for message, said in ((late, "since"), (early, "from")):
        text = " ".join(message.text.split())
        html = " ".join(re.sub(r"<[^>]+>", "", message.html).split())
        for body in (text, html):
            assert f"owners above 180M: {said} Monday 15 August 2022" in body
    assert "has required of it a second factor" in " ".join(late.text.split())


# The factor another phase asks, as the sentences about it say it: a noun phrase.
FACTOR_IN_A_SENTENCE = {
    "any": "a second factor (TOTP or a security key)",
    "phishing_resistant": "a security key (WebAuthn, not TOTP alone)",
}


@pytest.mark.parametrize("required_asks", ["any", "phishing_resistant"])
def test_the_stricter_phase_is_told_as_it_asks_in_one_sentence(
    registry: Registry, factories: None, tmp_path: Path, required_asks: str
) -> None:
    """A required phase asking a security key is said as such to an account short of
    both: "2FA" would have it set up TOTP and still be enforced. The factor is said as
    a noun phrase the sentence goes on after: the keys demo's banner email read
    "requires of it a security key (WebAuthn); TOTP alone is not enough, to sign in and
    publish", a list item's clause pasted into the sentence. In the text and the HTML
    alike."""
    from tests.factories import AccountFactory

    AccountFactory(username="big", in_cohort="required")
    plan = _rubygems(required_asks=required_asks)
    _play_rubygems(registry, plan, tmp_path / "a", newcomers=["big"])
    [(_, text, html)] = [
        sent
        for name, sent in _sent_texts(tmp_path / "a").items()
        if "enforcement_notice" in name and "Hi big," in sent[1]
    ]
    said = (
        f"Your account is also among the {plan.cohort('required').in_words()}: from Monday "
        f"15 August 2022, 00:00 UTC the registry requires of it "
        f"{FACTOR_IN_A_SENTENCE[required_asks]}, to sign in and publish (we wrote to you "
        "about that separately)."
    )
    assert said in text
    assert said in words(re.sub(r"<[^>]+>", "", html))


def test_the_stricter_phase_is_not_told_to_an_account_meeting_it(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """A TOTP user that a key-recommending banner finds short, but the required phase
    (any factor) does not, hears nothing of the other. (A registry of its own: played
    after the plan above, the banner's notices would have told any factor, and its
    enforcement is refused for asking more: tests/test_plan_drift.py.)"""
    from tests.factories import AccountFactory

    AccountFactory(username="big-totp", with_totp=True, in_cohort=["recommended", "required"])
    told = _play_rubygems(registry, _rubygems(banner_asks="phishing_resistant"), tmp_path / "b")
    assert told["big-totp"] and not any("also among" in text for text in told["big-totp"])


def test_a_requiring_phase_rolled_back_is_not_announced(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """Withdrawn, it requires nothing of anyone: the banner's email says nothing of it."""
    from rollout.phases import enforce
    from tests.factories import AccountFactory

    plan = _rubygems()
    AccountFactory(username="big", in_cohort="required")

    def enforced_early_then_withdrawn() -> None:
        with use_clock(SimulatedClock(datetime(2022, 6, 13, 10))):
            preview = enforce.preview_phase(registry, plan, plan.phase("required"))
            enforce.enforce_phase(
                registry, plan, "required", expect=preview.count, actor="rm", early=True
            )
        with use_clock(SimulatedClock(datetime(2022, 6, 13, 11))):
            enforce.rollback_phase(registry, plan, "required", actor="rm")

    told = _play_rubygems(
        registry, plan, tmp_path / "outbox", enforced_early_then_withdrawn, newcomers=["big"]
    )
    banner = told["big"][-1]
    assert "recommends" in banner and "also among" not in banner


@pytest.mark.parametrize("email", EMAILS)
def test_a_cohort_the_plan_does_not_describe_is_described_by_its_rule(email: str) -> None:
    """`description` is optional (docs/plans.md's examples leave it out): without one,
    the emails said "your account is among the ." and "among the :". They say who the
    cohort is by its rule instead, in the text and the HTML alike."""
    plan = plan_of("totp-closed")
    cohort = plan.phase("totp-closed").cohort
    undescribed = plan.model_copy(
        update={
            "cohorts": {
                **plan.cohorts,
                cohort: plan.cohorts[cohort].model_copy(update={"description": ""}),
            }
        }
    )
    rendered = render(
        email,
        recipient("holder", "totp-closed"),
        stored(email, "totp-closed"),
        undescribed,
    )
    said = undescribed.cohorts[cohort].in_words()
    assert said == "maintainers of packages on the registry"
    _, visible, _, _ = parts(rendered)
    for part in (words(rendered.text), words(visible)):
        assert "among the :" not in part and "among the ." not in part
        assert "the ," not in part
        assert said in part


@pytest.mark.parametrize("email", EMAILS)
def test_a_cohort_description_written_over_lines_reads_as_one_phrase(email: str) -> None:
    """A description written as the plan's own is (`description: >`, folded over lines)
    ends in a line break, and a person ends it with a full stop: the emails said
    "critical to the ecosystem. :" and "ecosystem. , your account included". The
    sentence around it gives the punctuation."""
    plan = plan_of("totp-closed")
    cohort = plan.phase("totp-closed").cohort
    folded = "maintainers of the projects we consider\ncritical to the ecosystem.\n"
    described = plan.model_copy(
        update={
            "cohorts": {
                **plan.cohorts,
                cohort: plan.cohorts[cohort].model_copy(update={"description": folded}),
            }
        }
    )
    rendered = render(
        email, recipient("holder", "totp-closed"), stored(email, "totp-closed"), described
    )
    said = "maintainers of the projects we consider critical to the ecosystem"
    _, visible, _, _ = parts(rendered)
    for part in (words(rendered.text), words(visible)):
        # One mark of the sentence's own right after the phrase, no space before it.
        assert re.search(re.escape(said) + r"[:.,](?: [^:.,]|$)", part), part


def _with_tokens_too(plan: Plan) -> Plan:
    """The reference plan with its top-100 phase asking 2FA and no classic tokens, and
    revoking them too."""
    return _top_100_as(
        plan, {"two_factor": "any", "no_classic_tokens": True}, ["require_2fa", "revoke_tokens"]
    )


def _top_100_as(plan: Plan, requires: dict[str, Any], effects: list[str]) -> Plan:
    """The reference plan with its top-100 phase asking ``requires`` and doing
    ``effects`` (revoking 100 tokens at most)."""
    from rollout.core.plan import Phase

    phase = plan.phase("top-100")
    changed = Phase.model_validate(
        {**phase.model_dump(), "requires": requires, "effects": effects, "max_tokens": 100}
    )
    return plan.model_copy(update={"phases": [changed, *plan.phases[1:]]})


def test_two_phases_noticed_the_same_day_each_send_their_own_notice(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """npm 2025 announced TOTP's end (2025-10-13) and the classic tokens' revocation
    (2025-12-09) on one day: an account short of both gets both notices that day, each
    telling its own requirement and deadline. Not one merged away: each notice is the
    record that starts its phase's deadline, and one dropped would leave its phase
    enforcing an account never told of it (docs/plans.md, "Notifications")."""
    from email import message_from_bytes, policy

    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory, TokenFactory

    plan = plan_of("classic-tokens")
    day = plan.phase("classic-tokens").notice_on
    assert plan.phase("totp-closed").notice_on == day
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="everyone")
    TokenFactory(account=holder, name="ci", kind="publish", created_at=datetime(2024, 1, 1))
    with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
        queue_due(registry, plan, day, actor="rm")
        drain(registry, plan, FileSender(tmp_path / "outbox", plan.notifications.from_address))
    with registry.engine.connect() as connection:
        sent = sorted(
            connection.execute(
                select(Notification.phase, Notification.email, Notification.state)
            ).all()
        )
    assert sent == [
        ("classic-tokens", "phase_notice", "sent"),
        ("totp-closed", "phase_notice", "sent"),
    ]
    texts = [
        message_from_bytes(path.read_bytes(), policy=policy.default)
        .get_body(("plain",))
        .get_content()
        for path in (tmp_path / "outbox").iterdir()
    ]
    october, december = "13 October 2025", "9 December 2025"
    assert sorted((october in text, december in text) for text in texts) == [
        (False, True),
        (True, False),
    ]


SHIPPED_PHASES = [
    (path.stem, phase.name)
    for path in sorted((ROOT / "plans").glob("*.yaml"))
    for phase in load_plan(path).phases
]


@pytest.mark.parametrize(
    ("plan_name", "phase"), SHIPPED_PHASES, ids=["/".join(p) for p in SHIPPED_PHASES]
)
def test_the_preview_of_every_phase_shows_an_account_short_of_it(
    plan_name: str, phase: str, tmp_path: Path
) -> None:
    """`notify preview --phase classic-tokens` rendered its non-compliant example with
    no token to list and nothing it would lose: "for your account:" and "What to do:"
    followed by nothing. The release manager reviewing the wording never saw the token
    table or the lines an account short of the phase reads."""
    from rollout.notify.examples import preview_examples

    plan = load_plan(ROOT / "plans" / f"{plan_name}.yaml")
    emails = ["phase_notice", "enforcement_notice"]
    if plan.phase(phase).reminders_days_before:
        emails.append("reminder")
    preview_examples(plan, emails, tmp_path, phase)
    for email in emails:
        text = (tmp_path / f"{email}-non-compliant.txt").read_text()
        assert not re.search(r":\n\n", text.split("\n--\n")[0].replace("Hi sam-example,", "")), (
            f"{email}: a heading with nothing under it:\n{text}"
        )
        if not (plan.phase(phase).requires.token_rules):
            continue
        html = (tmp_path / f"{email}-non-compliant.html").read_text()
        assert '<table role="presentation" cellpadding="4"' in html, email


def test_a_snooze_reply_names_the_campaign_it_answers_for() -> None:
    """A per-account deadline is never npm 2022's "2FA by one date" (asks_only_2fa): the
    reply's footer said the account was affected by "the registry's move to two-factor
    authentication" under a phase that asks a security key or no tokens."""
    plan = plan_of("publishers")
    stored = {"phase": "publishers", "granted": True, "days": 7, "deadline": "2023-05-04"}
    stored["reason"] = ""
    reply = render("snooze_reply", RECIPIENTS["no-2fa"], stored, plan)
    for part in (reply.text, reply.html):
        said = words(part)
        assert "new security requirements" in said
        assert "move to two-factor authentication" not in said


def _sent_texts(outbox: Path) -> dict[str, tuple[str, str, str]]:
    """Each sent email by its file's name: its subject, plain text (as words) and HTML."""
    from email import message_from_bytes, policy

    found = {}
    for path in sorted(outbox.iterdir()):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        text = words(message.get_body(("plain",)).get_content())
        html = message.get_body(("html",)).get_content()
        found[path.name] = (str(message["Subject"]), text, html)
    return found


def test_a_token_an_earlier_phase_revokes_first_is_said_to_stop_on_that_phase_s_day(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """npm 2025: the bypass-2FA notice of 2025-11-05 (enforced 2026-05-19) listed a
    classic automation token (it bypasses 2FA) as stopping on 2026-05-19, while the
    classic-token phase revokes it on 2025-12-09: a maintainer who read the latest
    email kept CI on it five months too long. The line says the earlier day and why;
    a token only this phase revokes keeps the phase's day. Why in words that say it:
    "(the registry requires no classic tokens from then)" read as "needs none", as if
    classic tokens were no longer needed; the registry allows none from then."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory, TokenFactory

    plan = load_plan(ROOT / "plans" / "npm-2025-tokens.yaml")
    bypass = plan.phase("bypass-tokens")
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="everyone")
    TokenFactory(account=holder, name="ci-classic", kind="automation")
    TokenFactory(
        account=holder,
        name="ci-granular",
        granular=True,
        bypass_2fa=True,
        created_at=datetime(2025, 10, 1),
        expires_at=datetime(2026, 9, 1),
    )
    with use_clock(SimulatedClock(datetime.combine(bypass.notice_on, time(9)))):
        queue_due(registry, plan, bypass.notice_on, actor="rm")
        drain(registry, plan, FileSender(tmp_path / "outbox"))
    [(subject, text, html)] = [
        sent for sent in _sent_texts(tmp_path / "outbox").values() if "bypass 2FA" in sent[1]
    ]
    assert subject.startswith("Action needed by Tuesday 19 May 2026")
    classic_line = re.search(r"- ci-classic, automation, [^-]*", text)
    granular_line = re.search(r"- ci-granular, granular, [^-]*", text)
    assert classic_line and granular_line, text
    assert (
        "stops working sooner, from Tuesday 9 December 2025, 00:00 UTC "
        "(the registry allows no classic tokens from then)" in classic_line.group()
    )
    assert "sooner" not in granular_line.group()
    assert "stops working sooner, from <strong>Tuesday 9 December 2025, 00:00 UTC" in html


def test_a_later_phase_s_warning_tells_the_sooner_day_an_earlier_phase_requires_2fa(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """A hand-written plan may announce a later phase before an earlier one is
    enforced (docs/plans.md): high-impact's notice (for 2022-05-03) went on 2022-01-10
    to an account top-100 requires 2FA of from 2022-02-01, saying "from 3 May": its
    owner planned on three months it did not have. Its notice and its reminder say the
    sooner day; an account only in high-impact keeps the phase's own day alone."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory

    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    text = text.replace(
        "cohort_as_of: 2022-03-14\n    notice_on: 2022-03-15\n"
        "    reminders_days_before: [30, 14, 3]",
        "cohort_as_of: 2022-01-09\n    notice_on: 2022-01-10\n"
        "    reminders_days_before: [110, 14, 3]",
    )
    plan, problems = parse_plan(text, "overlap.yaml")
    assert plan is not None and not problems, problems
    AccountFactory(username="in-both", in_cohort=["top-100", "high-impact"])
    AccountFactory(username="later-only", in_cohort="high-impact")
    outbox = tmp_path / "outbox"
    for day in (date(2022, 1, 10), date(2022, 1, 13)):  # the notice; 110 days before
        with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, FileSender(outbox))
    sent = {
        (email, username): (text, html)
        for email in ("phase_notice", "reminder")
        for username in ("in-both", "later-only")
        for _, text, html in [
            found
            for name, found in _sent_texts(outbox).items()
            if email in name and f"Hi {username}," in found[1] and "3 May 2022" in found[1]
        ]
    }
    assert set(sent) == {
        (email, username)
        for email in ("phase_notice", "reminder")
        for username in ("in-both", "later-only")
    }
    sooner = (
        "registry requires of your account a second factor (TOTP or a security key) "
        "sooner, from Tuesday 1 February 2022, 00:00 UTC"
    )
    for email in ("phase_notice", "reminder"):
        text, html = sent[(email, "in-both")]
        assert "also among the maintainers of the 100 packages" in text
        assert sooner in text, text
        assert "sooner, from <strong>" not in html
        assert "<strong>sooner, from Tuesday 1 February 2022, 00:00 UTC</strong>" in html
        text, html = sent[(email, "later-only")]
        assert "sooner" not in text and "sooner" not in html


def test_a_token_stopping_sooner_is_said_to_break_only_the_rules_it_breaks(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """The earlier phase with three token rules: the line named all three for each
    token ("the registry requires no classic tokens; no unnamed tokens; no tokens older
    than 365 days"), telling the owner of a named, new classic token to rename a token
    that has a name. Each line names the rules that token breaks, in text and HTML."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory, TokenFactory

    classic = "requires: {two_factor: none, no_classic_tokens: true}"
    text = (ROOT / "plans" / "npm-2025-tokens.yaml").read_text()
    assert classic in text
    path = tmp_path / "plan.yaml"
    path.write_text(
        text.replace(
            classic,
            "requires: {two_factor: none, no_classic_tokens: true, no_unnamed_tokens: true,"
            " token_max_age_days: 365}",
        )
    )
    plan = load_plan(path)
    bypass = plan.phase("bypass-tokens")
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="everyone")
    young = datetime(2025, 10, 1)
    TokenFactory(account=holder, name="ci-classic", kind="automation", created_at=young)
    TokenFactory(account=holder, name=None, kind="automation", created_at=datetime(2022, 1, 1))
    TokenFactory(
        account=holder,
        name=None,
        granular=True,
        bypass_2fa=True,
        created_at=young,
        expires_at=datetime(2026, 9, 1),
    )
    with use_clock(SimulatedClock(datetime.combine(bypass.notice_on, time(9)))):
        queue_due(registry, plan, bypass.notice_on, actor="rm")
        drain(registry, plan, FileSender(tmp_path / "outbox"))
    [(_, text, html)] = [
        sent for sent in _sent_texts(tmp_path / "outbox").values() if "bypass 2FA" in sent[1]
    ]
    sooner = "stops working sooner, from Tuesday 9 December 2025, 00:00 UTC (the registry allows "
    expected = {
        "ci-classic, automation": "no classic tokens from then)",
        "(unnamed), automation": (
            "no classic tokens, no unnamed tokens and no tokens older than 365 days from then)"
        ),
        "(unnamed), granular": "no unnamed tokens from then)",
    }
    for token, rules in expected.items():
        line = re.search(rf"- {re.escape(token)}, [^-]*", text)
        assert line and sooner + rules in line.group(), (token, text)
    said = words(re.sub(r"<[^>]+>", "", html))
    for rules in expected.values():
        assert f"(the registry allows {rules}" in said
    assert "no classic tokens; no unnamed tokens" not in said + text


# An earlier phase with per-account deadlines (github-2023's publishers: 45 days from
# each account's notice, one snooze of up to 7), and a later phase of another cohort,
# announced while the first one's deadlines run: fixed-day, either npm 2022's wording
# (classic) or asking a security key (the campaign wording).
_PER_ACCOUNT_THEN_LATER = """
  - name: everyone
    cohort: everyone
    cohort_as_of: 2023-03-19
    notice_on: 2023-03-20
    enforce_on: 2023-09-01
    max_accounts: 1000
"""


@pytest.mark.parametrize("later_asks", ["any", "phishing_resistant"])
def test_a_later_phase_s_notice_tells_the_own_deadline_an_earlier_phase_set_sooner(
    registry: Registry, factories: None, tmp_path: Path, later_asks: str
) -> None:
    """github-2023's publishers each have their own deadline, 45 days from their notice
    (2023-03-13: 2023-04-27, a week later for one who snoozed). A later phase for
    everyone, enforced 2023-09-01 and announced on 2023-03-20, told a publisher in
    both cohorts "from 1 September": the earlier phase's per-account deadline was
    never looked at. Its notice says the account's own deadline there, sooner (snoozed
    or not), in npm 2022's wording and in the campaign's; an account whose own
    deadline there is not sooner, or that is only in the later cohort, is told no
    sooner day."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory, SnoozeFactory

    text = (ROOT / "plans" / "github-2023.yaml").read_text()
    text = text.replace(
        "\nphases:\n",
        "\n  everyone:\n    description: maintainers of any package\n    every_maintainer: true\n"
        "\nphases:\n",
    ).replace("\nnotifications:", _PER_ACCOUNT_THEN_LATER + "\nnotifications:")
    if later_asks != "any":
        text = text.replace(
            "    max_accounts: 1000\n",
            f"    max_accounts: 1000\n    requires: {{two_factor: {later_asks}}}\n"
            "    effects: [require_2fa]\n",
        )
    plan, problems = parse_plan(text, "per-account-then-later.yaml")
    assert plan is not None and not problems, problems
    both = ["publishers", "everyone"]
    AccountFactory(username="in-both", in_cohort=both)
    snoozer = AccountFactory(username="snoozer", in_cohort=both)
    AccountFactory(username="later-only", in_cohort="everyone")
    outbox = tmp_path / "outbox"
    for day in (date(2023, 3, 13), date(2023, 3, 20)):  # publishers' notice; everyone's
        if day == date(2023, 3, 20):
            SnoozeFactory(account=snoozer, phase="publishers", days=7)
        with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, FileSender(outbox))
    notices = {
        username: (text, html)
        for username in ("in-both", "snoozer", "later-only")
        for _, text, html in [
            found
            for name, found in _sent_texts(outbox).items()
            if "phase_notice" in name
            and f"Hi {username}," in found[1]
            and "1 September 2023" in found[1]
        ]
    }
    assert set(notices) == {"in-both", "snoozer", "later-only"}
    for username, own in (
        ("in-both", "Thursday 27 April 2023"),
        ("snoozer", "Thursday 4 May 2023"),
    ):
        text, html = notices[username]
        assert "also among the maintainers who published a package in the past year" in text
        assert (
            "registry requires of your account a second factor (TOTP or a security key) "
            f"sooner, from {own}, 00:00 UTC, by another step of its campaign (your "
            "account's own deadline in that step)" in text
        ), text
        assert f"<strong>sooner, from {own}, 00:00 UTC</strong>" in html, html
    text, html = notices["later-only"]
    assert "sooner" not in text and "sooner" not in html


@pytest.mark.parametrize("earlier_asks", ["any", "phishing_resistant"])
def test_the_sooner_phase_is_told_as_it_asks_in_one_sentence(
    registry: Registry, factories: None, tmp_path: Path, earlier_asks: str
) -> None:
    """The line about another phase requiring a factor sooner says that factor as a
    noun phrase too: "requires of your account a security key (WebAuthn); TOTP alone
    is not enough sooner, from ..." read "not enough sooner". In the text and the HTML
    alike."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory

    text = (ROOT / "plans" / "github-2023.yaml").read_text()
    text = text.replace(
        "\nphases:\n",
        "\n  everyone:\n    description: maintainers of any package\n    every_maintainer: true\n"
        "\nphases:\n",
    ).replace("\nnotifications:", _PER_ACCOUNT_THEN_LATER + "\nnotifications:")
    text = text.replace(
        "    effects: [require_2fa]\n",
        f"    effects: [require_2fa]\n    requires: {{two_factor: {earlier_asks}}}\n",
    )
    plan, problems = parse_plan(text, "per-account-then-later.yaml")
    assert plan is not None and not problems, problems
    assert plan.phase("publishers").requires.two_factor == earlier_asks
    AccountFactory(username="in-both", in_cohort=["publishers", "everyone"])
    outbox = tmp_path / "outbox"
    for day in (date(2023, 3, 13), date(2023, 3, 20)):  # publishers' notice; everyone's
        with use_clock(SimulatedClock(datetime.combine(day, time(9)))):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, FileSender(outbox))
    [(_, text, html)] = [
        sent
        for name, sent in _sent_texts(outbox).items()
        if "phase_notice" in name and "1 September 2023" in sent[1]
    ]
    said = (
        "Your account is also among the maintainers who published a package in the past "
        f"year: the registry requires of your account {FACTOR_IN_A_SENTENCE[earlier_asks]} "
        "sooner, from Thursday 27 April 2023, 00:00 UTC, by another step of its campaign "
        "(your account's own deadline in that step): that earlier day is the one that "
        "counts for you."
    )
    assert said in text
    assert said in words(re.sub(r"<[^>]+>", "", html))


def test_a_token_an_earlier_phase_revokes_on_the_account_s_own_deadline_is_said_to_stop_then(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """npm 2025's classic-token phase with per-account deadlines (45 days from each
    account's notice of 2025-09-22: 2025-11-06, a week later for one who snoozed, and no
    tokens older than 365 days): the bypass-2FA notice of 2025-11-05 (enforced
    2026-05-19) listed its tokens as stopping in May, since every phase with per-account
    deadlines was passed over. Each token that phase revokes sooner, judged as its
    enforcement judges it on the account's own day, is said to stop then, the day said
    to be the account's own; a token only old enough by a snoozed day stops on that day
    for the one who snoozed and not sooner for the other; an account never sent that
    phase's notice has no deadline there (nothing is revoked of it) and keeps May."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.notify.senders import FileSender
    from tests.factories import AccountFactory, SnoozeFactory, TokenFactory

    classic = "requires: {two_factor: none, no_classic_tokens: true}"
    text = (ROOT / "plans" / "npm-2025-tokens.yaml").read_text()
    assert classic in text and "    enforce_on: 2025-12-09\n" in text
    text = text.replace(
        classic, "requires: {two_factor: none, no_classic_tokens: true, token_max_age_days: 365}"
    ).replace(
        "    enforce_on: 2025-12-09\n",
        "    enforce_on: 2025-11-06\n    deadline:\n      days_after_notice: 45\n"
        "      snooze_days: 7\n      last_notice_on: 2025-10-31\n    notify_compliant: true\n",
    )
    plan, problems = parse_plan(text, "per-account-classic.yaml")
    assert plan is not None and not problems, problems
    holders = {
        name: AccountFactory(username=name, with_totp=True, in_cohort="everyone")
        for name in ("holder", "snoozer")
    }

    def tokens_of(account: object) -> None:
        TokenFactory(
            account=account, name="ci-classic", kind="automation", created_at=datetime(2025, 6, 1)
        )
        # A bypass token 361 days old on 2025-11-06, 368 on 2025-11-13.
        TokenFactory(
            account=account,
            name="ci-aging",
            granular=True,
            bypass_2fa=True,
            created_at=datetime(2024, 11, 10),
            expires_at=datetime(2026, 9, 1),
        )

    for account in holders.values():
        tokens_of(account)
    outbox = tmp_path / "outbox"
    with use_clock(SimulatedClock(datetime(2025, 9, 22, 9))):
        queue_due(registry, plan, date(2025, 9, 22), actor="rm")
        drain(registry, plan, FileSender(outbox))
    SnoozeFactory(account=holders["snoozer"], phase="classic-tokens", days=7)
    # In the cohort after the last classic-token notice: never sent it.
    tokens_of(AccountFactory(username="late", with_totp=True, in_cohort="everyone"))
    for path in outbox.iterdir():
        path.unlink()
    with use_clock(SimulatedClock(datetime(2025, 11, 5, 9))):
        queue_due(registry, plan, date(2025, 11, 5), actor="rm")
        drain(registry, plan, FileSender(outbox))
    notices = {
        username: (text, html)
        for _, text, html in _sent_texts(outbox).values()
        for username in ("holder", "snoozer", "late")
        if f"Hi {username}," in text and "bypass 2FA" in text
    }
    assert set(notices) == {"holder", "snoozer", "late"}

    def lines(text: str) -> dict[str, str]:
        found = {
            token: re.search(rf"- {token}, [^-]*", text) for token in ("ci-classic", "ci-aging")
        }
        assert all(found.values()), text
        return {token: line.group() for token, line in found.items() if line}

    own = ", your account's own deadline in another step of the campaign (the registry allows "
    expected = {
        "holder": {
            "ci-classic": "from Thursday 6 November 2025, 00:00 UTC" + own + "no classic tokens",
            "ci-aging": None,
        },
        "snoozer": {
            "ci-classic": "from Thursday 13 November 2025, 00:00 UTC" + own + "no classic tokens",
            "ci-aging": "from Thursday 13 November 2025, 00:00 UTC"
            + own
            + "no tokens older than 365 days",
        },
        "late": {"ci-classic": None, "ci-aging": None},
    }
    for username, said in expected.items():
        text, html = notices[username]
        html_said = words(re.sub(r"<[^>]+>", "", html))
        for token, line in lines(text).items():
            if said[token] is None:
                assert "sooner" not in line, (username, token, line)
            else:
                assert "stops working sooner, " + said[token] + " from then)" in line, (
                    username,
                    token,
                    line,
                )
                assert said[token] in html_said, (username, token, html_said)
        if username == "late":
            assert "sooner" not in text and "sooner" not in html
    html = notices["snoozer"][1]
    assert "sooner, from <strong>Thursday 13 November 2025, 00:00 UTC</strong>, your" in html


@pytest.mark.parametrize("email", ["phase_notice", "reminder", "enforcement_notice"])
@pytest.mark.parametrize("sent_on", ["2022-06-13", "2022-08-20"])
def test_the_stricter_phase_s_line_is_one_sentence_on_one_line(email: str, sent_on: str) -> None:
    """The banner's line about the later required phase held the other cohort's
    description, of any length, then broke the line after "the registry" and again
    mid-clause: with RubyGems' own description the text part read "... 00:00 UTC the
    registry" / "requires of it a second factor (TOTP or a security key), to sign in
    and publish (we wrote to you" / "about that separately).". The sentence is one
    line, whatever the description and the factor asked, and says what the HTML says."""
    from rollout.notify.emails import Stricter

    plan = _rubygems(required_asks="phishing_resistant")
    asks = plan.phase("required").requires.describe()[0]
    big = Recipient(
        1,
        "big",
        "big@example.com",
        True,
        None,
        ("rails",),
        stricter=Stricter(plan.cohort("required").in_words(), date(2022, 8, 15), asks),
    )
    stored = {"phase": "recommended", "sent_on": sent_on}
    if email == "reminder":
        stored["days_before"] = 7
    rendered = render(email, big, stored, plan)
    [line] = [x for x in rendered.text.splitlines() if "also among" in x]
    assert line.startswith("Your account is also among the owners of gems with more than 180M")
    assert line.endswith("to sign in and publish (we wrote to you about that separately).")
    assert asks in line
    html = " ".join(re.sub(r"<[^>]+>", "", rendered.html).split())
    assert line in html


@pytest.mark.parametrize("email", ["phase_notice", "reminder"])
@pytest.mark.parametrize("phase", ["publishers", "totp-closed"])
def test_the_sooner_phase_s_line_is_one_sentence_on_one_line(email: str, phase: str) -> None:
    """The line about another phase requiring a factor sooner broke the same way: after
    "the registry" (its cohort's description before it) and after "by another"."""
    from rollout.notify.emails import Stricter

    plan = plan_of(phase)
    other = "maintainers of the 100 packages with the most dependents, the most depended upon"
    sooner = Stricter(
        other, date(2022, 1, 3), "a security key (WebAuthn); TOTP alone is not enough"
    )
    r = replace(recipient("no-2fa", phase), sooner=sooner)
    stored_context = stored(email, phase)
    stored_context["sent_on"] = "2021-12-01"
    rendered = render(email, r, stored_context, plan)
    [line] = [x for x in rendered.text.splitlines() if "also among" in x]
    assert line.startswith(f"Your account is also among the {other}: the registry requires")
    assert line.endswith("that earlier day is the one that counts for you.")
    html = " ".join(re.sub(r"<[^>]+>", "", rendered.html).split())
    assert line in html


@pytest.mark.parametrize("email", EMAILS)
@pytest.mark.parametrize("description", ["", "maintainers of any package"])
def test_a_cohort_of_every_maintainer_is_not_said_to_be_reached_by_its_packages(
    email: str, description: str
) -> None:
    """A cohort of every maintainer (npm's token campaign) picks accounts, not packages:
    "Your account maintains packages that put it among the maintainers of any package"
    said its packages had put it there. The emails say it is among them, and which
    packages it maintains, in the text and the HTML alike; a cohort by reach keeps
    its sentence."""
    plan = plan_of("totp-closed")
    cohort = plan.phase("totp-closed").cohort
    assert plan.cohorts[cohort].every_maintainer
    plan = plan.model_copy(
        update={
            "cohorts": {
                **plan.cohorts,
                cohort: plan.cohorts[cohort].model_copy(update={"description": description}),
            }
        }
    )
    said = plan.cohorts[cohort].in_words()
    rendered = render(email, recipient("no-2fa", "totp-closed"), stored(email, "totp-closed"), plan)
    _, visible, _, _ = parts(rendered)
    for part in (words(rendered.text), words(visible)):
        assert "put it among" not in part
        assert "any package among" not in part
        assert f"Your account is among the {said}" in part
        if email != "enforcement_notice":
            assert f"among the {said}, as a maintainer of: left-pad" in part.replace("- ", "")
    by_reach = render(
        email,
        recipient("no-2fa", "recommended"),
        stored(email, "recommended"),
        plan_of("recommended"),
    )
    if email != "enforcement_notice":
        assert "put it among the owners of gems" in words(by_reach.text)


_NARROWED = {
    "active_within": {"active_within": {"days": 90, "by": ["published"]}},
    "orgs": {"orgs": ["wix", "qavajs"]},
}
_CLASSIC_CASES = [
    (email, standing, sent_on)
    for email in EMAILS
    for standing in ("lacking", "owing", "compliant")
    for sent_on in ("2022-09-01", "2022-12-01")
    if not (email == "reminder" and standing == "compliant")
]


@pytest.mark.parametrize("narrowing", _NARROWED)
@pytest.mark.parametrize(("email", "standing", "sent_on"), _CLASSIC_CASES)
def test_a_classic_email_of_a_narrowed_cohort_does_not_say_every_maintainer_is_asked(
    narrowing: str, email: str, standing: str, sent_on: str
) -> None:
    """npm 2022's wording ("From D, maintainers of these packages must use 2FA", the
    reminder's "2FA becomes required for maintainers of these packages") was said of
    a cohort its ``active_within`` or ``orgs`` narrow: left-pad's maintainers who did
    not publish lately, or are in no org named, are not asked, yet a maintainer read
    that all of them were. The notice and reminder say who is asked as the enforcement
    email does (the cohort in words, which says the narrowing), that sentence one line
    of the text part, in the text and the HTML alike; sent before the deadline or after."""
    plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
    phase = plan.phases[0]
    rule = plan.cohorts[phase.cohort].model_copy(update={"description": ""})
    rule = CohortRule.model_validate({**rule.model_dump(), **_NARROWED[narrowing]})
    plan = plan.model_copy(update={"cohorts": {**plan.cohorts, phase.cohort: rule}})
    said = rule.in_words()
    assert ("published in the last 90 days" if narrowing == "active_within" else "wix") in said
    r = Recipient(
        3,
        "lee-example",
        "lee@example.com",
        True,
        "totp" if standing == "compliant" else None,
        ("left-pad",),
        tfa_required=standing == "owing",
        required_earlier=standing == "owing",
    )
    stored = {"phase": phase.name, "sent_on": sent_on}
    if email == "reminder":
        stored["days_before"] = 7
    rendered = render(email, r, stored, plan)
    _, visible, _, _ = parts(rendered)
    for part in (words(rendered.text), words(visible)):
        assert "maintainers of these packages" not in part
        assert f"required of the {said}" in part
    [line] = [x for x in rendered.text.splitlines() if f"required of the {said}" in x]
    ends = (f"{said}.", f"{said} to sign in and publish.", f"{said}, your account included.")
    assert line.endswith(ends), line
    assert words(line) in words(visible)


def test_a_classic_notice_to_every_maintainer_does_not_say_it_is_for_the_reach() -> None:
    """The npm 2022 wording, for a plan asking any 2FA of every maintainer by one date:
    "Because so many people depend on them" was said of any package at all."""
    plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
    phase = plan.phases[0]
    plan = plan.model_copy(
        update={"cohorts": {**plan.cohorts, phase.cohort: CohortRule(every_maintainer=True)}}
    )
    r = Recipient(3, "lee-example", "lee@example.com", True, None, ("left-pad",))
    rendered = render("phase_notice", r, {"phase": phase.name}, plan)
    _, visible, _, _ = parts(rendered)
    for part in (words(rendered.text), words(visible)):
        assert "depend on them" not in part
        assert "Your account is among the maintainers of packages on the registry" in part
        assert "maintainers of these packages must use two-factor authentication" in part


@pytest.mark.parametrize("two_factor", ["none", "any"])
@pytest.mark.parametrize("email", EMAILS)
def test_an_account_with_2fa_is_not_told_to_enable_it_for_its_classic_or_old_tokens(
    email: str, two_factor: str
) -> None:
    """A phase hardening tokens that also forbids publishing tokens without 2FA (npm
    2025's classic tokens revoked, PyPI 2024's rule, and 2FA for publishing): an account
    with TOTP, whose classic token is revoked whatever its factors, was told to "enable
    two-factor authentication" in its notice and its enforcement email. It has 2FA;
    enrolling saves none of its tokens. Enrolling is the advice only to an account
    without any factor holding a token that publishes; one whose only listed token is
    read-only is not spared by it either."""
    text = (ROOT / "plans" / "pypi-2023.yaml").read_text()
    text = text.replace(
        "requires: {two_factor: none, no_write_tokens_without_2fa: true}",
        f"requires: {{two_factor: {two_factor}, no_classic_tokens: true,"
        " no_write_tokens_without_2fa: true}",
    )
    if two_factor == "any":
        text = text.replace("effects: [revoke_tokens]", "effects: [require_2fa, revoke_tokens]")
    plan, problems = parse_plan(text)
    assert plan is not None and problems == [], problems
    context = stored(email, "tokens-without-2fa")

    def advice(r: Recipient) -> tuple[bool, bool]:
        rendered = render(email, r, context, plan)
        said = "enable two-factor authentication"
        return said in words(rendered.text).lower(), said in words(rendered.html).lower()

    holder = replace(RECIPIENTS["holder"], lacks_factor=False, tokens=CLASSIC_TOKENS)
    assert advice(holder) == (False, False)
    # Read-only: a classic token its owner keeps for installs, which 2FA does not spare.
    reader = TokenLine("install", "read_only", datetime(2021, 3, 4), None, writes=False)
    no_2fa = replace(RECIPIENTS["no-2fa"], lacks_factor=two_factor == "any", tokens=(reader,))
    assert advice(no_2fa) == ((True, True) if two_factor == "any" else (False, False))
    publishing = replace(no_2fa, tokens=CLASSIC_TOKENS[1:])
    assert advice(publishing) == (True, True)


@pytest.mark.parametrize("email", EMAILS)
def test_a_requirement_an_earlier_phase_enforced_is_said_to_be_required_already(
    email: str,
) -> None:
    """Thresholds that fall (1M weekly downloads required first, then 100k): an account
    in both, required 2FA by the first phase's enforcement and still without it, was
    told by the second phase's notice and reminder that 2FA "will be" required from its
    later day ("If it still does not on that day ... 2FA required to sign in and
    publish"), and by its enforcement email that this step required it. The registry
    required it weeks before: the emails say so, as npm 2022's own wording does."""
    plan = plan_of("recommended")  # rubygems-2022: its `required` phase, [require_2fa]
    context = {**stored(email, "recommended"), "phase": "required"}
    owing = replace(RECIPIENTS["no-2fa"], lacks_factor=True, tfa_required=True)
    if email == ENFORCEMENT:
        owing = replace(owing, required_earlier=True)
    rendered = render(email, owing, context, plan)
    text, html = words(rendered.text), words(rendered.html)
    already = "already requires two-factor authentication (2FA) of your account"
    assert already in text and already in html.replace("<strong>", "").replace("</strong>", "")
    assert "2FA) required to sign in and publish" not in text
    assert "for your account:" not in text
    assert "already required" in rendered.subject or "still required" in rendered.subject
    # This phase's own enforcement of an account it flagged, and a warning to one no
    # phase has flagged yet, say what the phase does, as before.
    first = replace(owing, required_earlier=False, tfa_required=email == ENFORCEMENT)
    again = render(email, first, context, plan)
    assert "2FA) required to sign in and publish" in words(again.text)
    assert already not in words(again.text)


ENFORCEMENT = "enforcement_notice"

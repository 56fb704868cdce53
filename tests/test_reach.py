"""Reach before enforcement: the preview names the accounts no notice or reminder of
the phase reached, each with why; enforcement refuses above the plan's share unless
their count is typed back, and counts the unwarned it acted on."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import GuardRefused
from rollout.core.links import REPORT_HTML
from rollout.core.plan import Plan
from rollout.notify.examples import EXAMPLE_RECIPIENTS
from rollout.notify.queue import SUMMARY_UNREACHED
from rollout.notify.render import render
from rollout.phases.enforce import enforce_phase, preview_phase
from rollout.registry import Registry
from rollout.registry.models import Notification, PhaseRequirement
from rollout.report.reporting import report_dir
from tests.factories import (
    AccountFactory,
    FactorFactory,
    NotificationFactory,
    bound_to,
    existing_account,
)

AT = datetime(2022, 1, 5, 9, 0)


def warned(account: Any, email: str = "phase_notice", **fields: Any) -> None:
    """A warning of the top-100 phase to ``account``, sent unless told otherwise."""
    occasion = "" if email == "phase_notice" else "14d"
    defaults = {"state": "sent", "sent_at": AT, "occasion": occasion}
    NotificationFactory(account=account, email=email, **{**defaults, **fields})


@pytest.fixture
def cohort(registry: Registry) -> dict[str, int]:
    """Top-100 accounts without 2FA, each warned (or not) in its own way."""
    with bound_to(registry.engine):
        people = {
            name: AccountFactory(username=name, in_cohort="top-100", sessions=1)
            for name in (
                "delivered",
                "spam",
                "bounced-then-reached",
                "bounced",
                "dropped",
                "suppressed",
                "unverified",
                "failed",
                "deferred",
                "no-event",
                "queued",
                "never",
            )
        }
        AccountFactory(username="compliant", in_cohort="top-100", with_totp=True)
        warned(people["delivered"], delivery="delivered")
        warned(people["spam"], delivery="spam_report")
        warned(people["bounced-then-reached"], delivery="bounced", delivery_reason="550 full")
        warned(people["bounced-then-reached"], "reminder", delivery="delivered")
        warned(people["bounced"], delivery="bounced", delivery_reason="bounce: 550 no such user")
        # A reminder to a bounced address is skipped; the bounce is the more telling.
        warned(people["bounced"], "reminder", state="skipped", skip_reason="suppressed: bounce")
        warned(people["dropped"], delivery="dropped", delivery_reason="Bounced Address")
        warned(people["suppressed"], state="skipped", skip_reason="suppressed: spam report")
        warned(people["unverified"], state="skipped", skip_reason="unverified email")
        warned(people["failed"], state="failed", error="SendGrid answered 400")
        warned(people["deferred"], delivery="deferred")
        warned(people["no-event"])
        warned(people["queued"], state="queued", sent_at=None)
        # The enforcement notice comes after, and warns nobody.
        warned(people["never"], "enforcement_notice", delivery="delivered")
    return {name: account.id for name, account in people.items()}


WHY = {
    "bounced": "bounced: bounce: 550 no such user",
    "dropped": "dropped: Bounced Address",
    "suppressed": "suppressed: spam report",
    "unverified": "unverified email",
    "failed": "send failed",
    "deferred": "not delivered yet: deferred",
    "no-event": "not delivered yet: no delivery event",
    "queued": "not sent yet",
    "never": "never sent a notice",
}


def test_the_preview_names_who_no_warning_reached_and_why(
    registry: Registry, plan: Plan, cohort: dict[str, int]
) -> None:
    preview = preview_phase(registry, plan, plan.phase("top-100"))
    assert preview.count == len(cohort)
    assert preview.unreached == {cohort[name]: why for name, why in WHY.items()}
    assert preview.unreached_by_category() == {
        "bounced": 1,
        "dropped": 1,
        "suppressed": 1,
        "unverified email": 1,
        "send failed": 1,
        "not delivered yet": 2,
        "not sent yet": 1,
        "never sent a notice": 1,
    }
    # Enforcement's own preview, under its lock, finds the same.
    assert preview_phase(registry, plan, plan.phase("top-100"), details=False).unreached == (
        preview.unreached
    )


def test_a_warning_skipped_as_too_late_is_told_apart_from_none_sent(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """The send came after the deadline (SendGrid down for days): tia's notice was
    skipped as too late. It was tried and never went, which "never sent a notice" (ned:
    nothing was ever queued for him) did not say; an address skip still tells more."""
    people = {
        name: AccountFactory(username=name, in_cohort="top-100", sessions=1)
        for name in ("tia", "ned", "una")
    }
    warned(people["tia"], state="skipped", skip_reason="too late", sent_at=None)
    warned(people["una"], state="skipped", skip_reason="unverified email", sent_at=None)
    warned(people["una"], "reminder", state="skipped", skip_reason="too late", sent_at=None)
    preview = preview_phase(registry, plan, plan.phase("top-100"))
    assert preview.unreached == {
        people["tia"].id: "too late",
        people["ned"].id: "never sent a notice",
        people["una"].id: "unverified email",
    }
    assert preview.unreached_by_category() == {
        "unverified email": 1,
        "too late": 1,
        "never sent a notice": 1,
    }


@pytest.fixture
def managed(registry: Registry, plan: Plan) -> Plan:
    """The reference plan with a release manager, rita (with 2FA: never a target), who
    gets each enforcement's summary."""
    with bound_to(registry.engine):
        AccountFactory(username="rita", with_totp=True)
    return plan.model_copy(
        update={
            "notifications": plan.notifications.model_copy(update={"release_managers": ["rita"]})
        }
    )


def with_reach_limit(plan: Plan, share: float) -> Plan:
    phases = [
        p.model_copy(update={"max_unreached_share": share}) if p.name == "top-100" else p
        for p in plan.phases
    ]
    return plan.model_copy(update={"phases": phases})


def test_enforcement_refuses_above_the_plans_share_unless_the_count_is_typed_back(
    registry: Registry, plan: Plan, cohort: dict[str, int]
) -> None:
    strict = with_reach_limit(plan, 0.5)  # 9 of 12 were never reached: 75%
    count = len(cohort)
    with pytest.raises(GuardRefused, match=r"9 of 12 accounts \(75.0%\) were never reached"):
        enforce_phase(registry, strict, "top-100", expect=count, actor="rm")
    with pytest.raises(GuardRefused, match="not the 8 accepted"):
        enforce_phase(registry, strict, "top-100", expect=count, actor="rm", accept_unreached=8)
    assert preview_phase(registry, strict, strict.phase("top-100")).required_by_phase == 0
    result = enforce_phase(
        registry, strict, "top-100", expect=count, actor="rm", accept_unreached=9
    )
    assert (result.accounts_required, result.accounts_unreached) == (count, 9)


def test_within_the_share_or_without_one_enforcement_goes_on_and_counts_the_unwarned(
    registry: Registry, plan: Plan, cohort: dict[str, int]
) -> None:
    lenient = with_reach_limit(plan, 0.8)
    result = enforce_phase(registry, lenient, "top-100", expect=len(cohort), actor="rm")
    assert result.accounts_unreached == 9


def test_the_release_managers_summary_names_the_unwarned_it_enforced(
    registry: Registry, managed: Plan, cohort: dict[str, int]
) -> None:
    enforce_phase(registry, managed, "top-100", expect=len(cohort), actor="rm")
    with registry.engine.connect() as connection:
        [context] = connection.execute(
            select(Notification.context).where(Notification.email == "phase_summary")
        ).scalars()
    assert context["counts"]["accounts_unreached"] == len(WHY)
    assert context["unreached"] == [{"username": name, "why": WHY[name]} for name in sorted(WHY)]
    assert context["unreached_more"] == 0


def test_the_summary_links_to_the_report_of_the_day_its_enforcement_ran(
    registry: Registry, managed: Plan, cohort: dict[str, int], tmp_path: Path
) -> None:
    """Not the reports folder: the release manager lands on the report of that day, at
    the address the report is written under (reports/<day>/adoption.html)."""
    with use_clock(SimulatedClock(datetime(2022, 2, 3, 14, 30))):
        enforce_phase(registry, managed, "top-100", expect=len(cohort), actor="rm")
    with registry.engine.connect() as connection:
        [context] = connection.execute(
            select(Notification.context).where(Notification.email == "phase_summary")
        ).scalars()
    rita = EXAMPLE_RECIPIENTS["compliant"]

    rendered = render("phase_summary", rita, context, managed)

    written = report_dir(tmp_path, date(2022, 2, 3)) / REPORT_HTML
    link = f"{managed.notifications.report_url}/{written.relative_to(tmp_path).as_posix()}"
    assert link == "https://rollout.registry.example/reports/2022-02-03/adoption.html"
    assert f"The adoption report of Thursday 3 February 2022: {link}" in rendered.text
    assert f'<a href="{link}">The adoption report of Thursday 3 February 2022</a>' in rendered.html


def test_a_summary_names_the_first_unwarned_by_name_and_counts_the_rest(
    registry: Registry, managed: Plan
) -> None:
    names = [f"user-{n:03d}" for n in range(SUMMARY_UNREACHED + 7)]
    with bound_to(registry.engine):
        for name in reversed(names):
            AccountFactory(username=name, in_cohort="top-100")
    enforce_phase(registry, managed, "top-100", expect=len(names), actor="rm")
    with registry.engine.connect() as connection:
        [context] = connection.execute(
            select(Notification.context).where(Notification.email == "phase_summary")
        ).scalars()
    assert context["unreached"] == [
        {"username": name, "why": "never sent a notice"} for name in names[:SUMMARY_UNREACHED]
    ]
    assert context["unreached_more"] == 7


def test_an_unwarned_account_that_enrols_mid_run_is_neither_counted_nor_listed(
    registry: Registry, managed: Plan, cohort: dict[str, int]
) -> None:
    late = max(cohort.values())  # the last batch's account: "never", never warned

    def enrol_late(done: int, total: int) -> None:
        if done == 1:
            with bound_to(registry.engine):
                FactorFactory(account=existing_account(late))

    result = enforce_phase(
        registry, managed, "top-100", expect=len(cohort), actor="rm", batch_size=1,
        progress=enrol_late,
    )  # fmt: skip
    assert (result.skipped_now_compliant, result.accounts_unreached) == (1, len(WHY) - 1)
    with registry.engine.connect() as connection:
        [context] = connection.execute(
            select(Notification.context).where(Notification.email == "phase_summary")
        ).scalars()
    assert "never" not in {a["username"] for a in context["unreached"]}
    assert len(context["unreached"]) == len(WHY) - 1


def test_a_run_stopped_right_after_its_last_batch_has_queued_its_summary(
    registry: Registry, managed: Plan, cohort: dict[str, int]
) -> None:
    def stop_when_done(done: int, total: int) -> None:
        if done == total:
            raise KeyboardInterrupt  # Ctrl-C, or a kill, between the last batch and the end

    with pytest.raises(KeyboardInterrupt):
        enforce_phase(
            registry, managed, "top-100", expect=len(cohort), actor="rm", batch_size=5,
            progress=stop_when_done,
        )  # fmt: skip
    # Its rerun finds nothing left to change, and so would never summarise the phase.
    rerun = enforce_phase(registry, managed, "top-100", expect=len(cohort), actor="rm")
    assert (rerun.accounts_required, rerun.sessions_revoked) == (0, 0)
    with registry.engine.connect() as connection:
        [context] = connection.execute(
            select(Notification.context).where(Notification.email == "phase_summary")
        ).scalars()
    assert context["counts"]["accounts_required"] == len(cohort)
    assert context["counts"]["batches"] == 3
    assert len(context["unreached"]) == len(WHY)


def test_a_rerun_after_a_crash_counts_and_names_only_the_accounts_it_required(
    registry: Registry, managed: Plan, cohort: dict[str, int]
) -> None:
    """The first run required a batch and died; the rerun passes over that batch again
    (finding it done) and must not count or list it as its own."""

    def die_after_the_first_batch(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enforce_phase(
            registry, managed, "top-100", expect=len(cohort), actor="rm", batch_size=5,
            progress=die_after_the_first_batch,
        )  # fmt: skip
    with registry.engine.connect() as connection:
        first = set(connection.execute(select(PhaseRequirement.account_id)).scalars())
    names = {account_id: name for name, account_id in cohort.items()}
    unwarned_first = {names[a] for a in first} & set(WHY)
    rerun = enforce_phase(registry, managed, "top-100", expect=len(cohort), actor="rm")
    assert rerun.accounts_required == len(cohort) - len(first)
    assert rerun.accounts_unreached == len(WHY) - len(unwarned_first)
    with registry.engine.connect() as connection:
        [context] = connection.execute(
            select(Notification.context).where(Notification.email == "phase_summary")
        ).scalars()
    assert {a["username"] for a in context["unreached"]} == set(WHY) - unwarned_first


def test_a_skip_that_says_nothing_of_the_address_tells_least(
    registry: Registry, plan: Plan
) -> None:
    with bound_to(registry.engine):
        sent_later = AccountFactory(username="sent-later", in_cohort="top-100")
        withdrawn = AccountFactory(username="withdrawn", in_cohort="top-100")
        processed = AccountFactory(username="processed", in_cohort="top-100")
        warned(sent_later, state="skipped", skip_reason="already compliant")
        warned(sent_later, "reminder")
        warned(withdrawn, state="skipped", skip_reason="withdrawn: deadline moved")
        warned(processed, delivery="processed")
    preview = preview_phase(registry, plan, plan.phase("top-100"))
    assert preview.unreached == {
        sent_later.id: "not delivered yet: no delivery event",
        withdrawn.id: "never sent a notice",
        processed.id: "not delivered yet: processed",
    }

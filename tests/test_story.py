"""The demo story on the tiny sample, on SQLite and PostgreSQL: the whole reference
plan over its calendar, with maintainers responding, ends with adoption up, both
phases enforced, every mailing sent once, and the logins in the warehouse."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from rollout.core.calendar import plan_calendar, unplanned_kind
from rollout.core.config import load_settings
from rollout.core.plan import Phase, Plan
from rollout.demo.story import Story, StoryReport, story_token, story_token_days
from rollout.notify.outbox import outbox_status
from rollout.phases.timeline import step_states
from rollout.registry import Registry
from rollout.registry.models import Account, Notification, PlanRun, Token
from rollout.registry.requirements import offending_token
from rollout.runtime import Runtime
from rollout.warehouse import open_warehouse

from .conftest import STORY_START, tiny_story


@pytest.fixture
def story(
    empty_registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Story]:
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", empty_registry_url)
    story = tiny_story(load_settings())
    with story.runtime:
        yield story


def test_the_reference_plan_runs_start_to_end(story: Story) -> None:
    report = story.run()
    settings, plan = story.settings, story.plan
    assert set(report.enforced) == {"top-100", "high-impact"}
    assert report.enforced["top-100"] > 0 and report.sessions_revoked > 0
    assert report.elv_challenges > 0 and report.enrolled["brown-out"] + report.enrolled["ELV"] > 0
    assert report.enrolled["notice"] + report.enrolled["reminder"] > 0
    assert report.enrolled["enforcement"] > 0
    # Some mailboxes are dead: their notices bounced, and the warehouse and registry
    # know it; some of those maintainers were enforced unwarned.
    assert report.bounced > 0 and sum(report.unreached_enforced.values()) > 0
    with Registry(settings.registry_url) as registry:
        with registry.engine.connect() as connection:
            not_elv = connection.execute(
                select(func.count()).where(Account.elv_enrolled_at.is_(None))
            ).scalar_one()
            sent_twice = connection.execute(
                select(func.count()).select_from(
                    select(Notification.account_id)
                    .group_by(
                        Notification.account_id,
                        Notification.email,
                        Notification.phase,
                        Notification.occasion,
                    )
                    .having(func.count() > 1)
                    .subquery()
                )
            ).scalar_one()
            recorded = set(connection.execute(select(PlanRun.step).distinct()).scalars())
            deliveries = dict(
                connection.execute(
                    select(Notification.delivery, func.count()).group_by(Notification.delivery)
                ).all()
            )
        sent = {row["email"] for row in outbox_status(registry) if row["state"] == "sent"}
        states = {s.step.label: s.state for s in step_states(registry, plan)}
    assert not_elv == 0 and sent_twice == 0
    # Each dead mailbox bounced once; SendGrid dropped what was sent to it after.
    assert deliveries["bounced"] == report.bounced and deliveries["dropped"] > 0
    assert deliveries["delivered"] > 0.9 * report.emails["sent"]
    assert sent >= {
        "phase_notice",
        "reminder",
        "enforcement_notice",
        "brownout_heads_up",
        "elv_enrollment",
    }
    assert len(list(settings.outbox_dir.glob("*.eml"))) == report.emails["sent"]
    assert states["phase top-100 enforced"] == "applied"
    assert states["phase high-impact enforced"] == "applied"
    assert states["every account enrolled in ELV"] == "applied"
    assert states["brownout-2: 24 h of ELV for all"] == "ended"
    # Every run the jobs recorded is of a calendar step, or of a kind the calendar says
    # it leaves out (the fortnightly cohort rebuilds, scheduling the brown-outs); and
    # every keyed step has its runs but the brown-outs, whose state is their window's.
    keys = {s.key for s in plan_calendar(plan) if s.key}
    assert [step for step in recorded - keys if unplanned_kind(step) is None] == []
    assert {s.key for s in plan_calendar(plan) if s.key and s.kind != "brownout"} <= recorded
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        [(logins, elv)] = con.execute(
            "select count(*), count(*) filter (second_factor = 'elv') from stg_logins "
            "where occurred_at >= $start",
            {"start": STORY_START},
        ).fetchall()
    assert logins == report.logins and elv == report.elv_challenges
    # Its publishes through tokens too, the sample's ending where the story begins.
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        [(published,)] = con.execute(
            "select count(*) from stg_publishes where occurred_at >= $start",
            {"start": STORY_START},
        ).fetchall()
    assert published == report.publishes > 0
    # Maintainers kept publishing through the plan, so the report can say who would
    # be stopped by a token that 2FA does not cover.
    assert report.token_uses > 0 and report.files is not None
    with Registry(settings.registry_url) as registry, registry.engine.connect() as connection:
        # The sample's last day is 2022-03-13: a token used in May was used by the story.
        used_in_the_last_week = connection.execute(
            select(func.count()).where(Token.last_used_at >= datetime(2022, 5, 4))
        ).scalar_one()
    assert used_in_the_last_week > 0
    with report.files.csvs["token_readiness"].open() as handle:
        readiness = list(csv.DictReader(handle))
    publishing = sum(
        int(row["publishing_legacy"]) + int(row["publishing_personal"]) for row in readiness
    )
    assert {row["cohort"] for row in readiness} == {"top-100", "high-impact"} and publishing > 0
    # The report's reach section shows the dead mailboxes: bounced, never reached, and
    # some of them enforced all the same (the story accepts the preview's count).
    with report.files.csvs["notice_reach"].open() as handle:
        reach = {row["phase"]: row for row in csv.DictReader(handle)}
    assert set(reach) == {"top-100", "high-impact"}
    assert sum(int(row["bounced"]) for row in reach.values()) > 0
    # Acted on unwarned: required, or skipped as compliant since the preview.
    unwarned_required = sum(int(row["never_reached_enforced"]) for row in reach.values())
    assert 0 < unwarned_required <= sum(report.unreached_enforced.values())
    # The world the story writes is one the jobs could have seen: no account required
    # by a phase held a factor dated before its enforcement, and no email skipped for
    # the compliant (reminders, heads-ups) went to one holding a factor dated before
    # its send. The maintainers act after the day's jobs, and the sample's own history
    # reaches the registry before each job it precedes.
    held_by_then = (
        "exists (select 1 from tfa_factors f where f.account_id = {who} "
        "and f.created_at < {when} and (f.removed_at is null or f.removed_at > {when}))"
    )
    with Registry(settings.registry_url) as registry, registry.engine.connect() as connection:
        required_with_2fa = connection.execute(
            text(
                "select count(*) from phase_requirements r where "
                + held_by_then.format(who="r.account_id", when="r.required_at")
            )
        ).scalar_one()
        told_with_2fa = connection.execute(
            text(
                "select count(*) from notifications n where n.state = 'sent' and n.email in "
                "('reminder', 'brownout_heads_up', 'elv_enrollment') and "
                + held_by_then.format(who="n.account_id", when="n.sent_at")
            )
        ).scalar_one()
    assert (required_with_2fa, told_with_2fa) == (0, 0)


def test_the_demo_s_record_keys_counts_by_phase_under_one_snake_case_key() -> None:
    """`rollout demo --format json` gave "enforced top-100" and "never reached, enforced
    top-100": keys with spaces and a phase's name in them. Now one key each, an object
    by phase (cause, job)."""
    from collections import Counter
    from datetime import date

    report = StoryReport(
        date(2022, 1, 1),
        date(2022, 1, 10),
        enforced={"top-100": 48},
        unreached_enforced={"top-100": 6},
        tokens_revoked={"top-100": 0, "classic-tokens": 70},
        enrolled=Counter({"notice": 3, "brown-out": 2}),
        job_seconds=Counter({"metrics": 1.234}),
    )
    summary = report.summary()
    assert summary["days"] == 10
    assert summary["enforced"] == {"top-100": 48}
    assert summary["never_reached_enforced"] == {"top-100": 6}
    assert summary["tokens_revoked"] == {"classic-tokens": 70}
    assert summary["enrolled_after"] == {"brown-out": 2, "notice": 3}
    assert summary["job_seconds"] == {"metrics": 1.2}
    assert all(key.replace("_", "").isalpha() and key.islower() for key in summary)


@pytest.mark.parametrize(
    "requires",
    [
        {"two_factor": "none", "token_max_lifetime_days": 30},
        {"two_factor": "none", "write_token_max_lifetime_days": 7},
        {"two_factor": "none", "token_max_age_days": 14},
        {"two_factor": "none", "no_classic_tokens": True, "no_bypass_2fa_tokens": True},
    ],
)
def test_the_demo_s_replacement_token_breaks_none_of_the_plan_s_token_rules(
    registry: Registry,
    plan: Plan,
    factories: None,
    requires: dict[str, object],
    registry_url: str,
    tmp_path: Path,
) -> None:
    """The demo's maintainers move their CI to a granular token when told theirs will
    stop working. It lasted 90 days whatever the plan said, so under a 30-day cap the
    replacement broke the rule it replaced a token for (revoked in turn at enforcement).
    It lasts what the plan allows (90 days when nothing is shorter), and no phase of
    the plan forbids it, at any moment of its life."""
    from tests.factories import AccountFactory

    top = plan.phase("top-100")
    phase = Phase.model_validate(
        {**top.model_dump(), "requires": requires, "effects": ["revoke_tokens"], "max_tokens": 9}
    )
    strict = plan.model_copy(update={"phases": [phase, *plan.phases[1:]]})
    days = story_token_days(strict)
    expected = min([90, *(d for k, d in requires.items() if k.endswith("_days"))])
    assert days == expected
    assert story_token_days(plan) == 90
    # The story `rollout demo` tells under the plan makes its tokens for that long.
    settings = load_settings(
        {"ROLLOUT_HOME": str(tmp_path / "home"), "ROLLOUT_REGISTRY_URL": registry_url}
    )
    with Runtime(settings, plan=strict) as runtime:
        assert Story(runtime, STORY_START, STORY_START).token_days == expected
    holder = AccountFactory(username="holder", with_totp=True)
    made = datetime(2025, 10, 14, 9)
    with registry.engine.begin() as connection:
        connection.execute(insert(Token), [story_token(holder.id, made, days)])
    for moment in (made, made + timedelta(days=days) - timedelta(microseconds=1)):
        with registry.engine.connect() as connection:
            forbidden = connection.execute(
                select(Token.id).where(offending_token(phase.requires, Token.__table__, moment))
            ).all()
        assert forbidden == [], (moment, requires)

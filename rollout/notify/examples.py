"""Example recipients and stored contexts: what `rollout notify preview` renders and
what the golden files pin down, for every email, compliant and not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from rollout.core.errors import EXIT_BAD_INPUT, RolloutError
from rollout.core.files import remove_stale_temporaries, write_atomically
from rollout.core.names import file_stem_for
from rollout.core.plan import Phase, Plan
from rollout.notify.emails import EMAILS, Recipient, TokenLine, asks_only_2fa, skips_compliant
from rollout.notify.outbox import SENT_ON
from rollout.notify.render import Rendered, render

PACKAGES = ("left-pad", "@example/parser", "tiny-colors")
EXAMPLE_RECIPIENTS = {
    "non-compliant": Recipient(1, "sam-example", "sam@example.com", True, None, PACKAGES),
    "compliant": Recipient(2, "kim-example", "kim@example.com", True, "webauthn", PACKAGES),
}


PHASE_EMAILS = ("phase_notice", "reminder", "enforcement_notice", "phase_summary")


def example_recipient(variant: str, email: str, phase: Phase | None) -> Recipient:
    """The example recipient as the drain would see it in ``phase`` (rendering a phase's
    notice, reminder or enforcement email). A phase that asks more than any 2FA judges
    an account by its standing, not its 2FA method alone: the account short of it lacks
    the factor the phase asks for and holds a token each of its token rules forbids;
    the one that meets it neither. Without this the preview of a token phase showed an
    account "short" of it with nothing to list and nothing to do."""
    base = EXAMPLE_RECIPIENTS[variant]
    if phase is None or email not in PHASE_EMAILS[:3] or asks_only_2fa(phase):
        return base
    if base.compliant:
        return replace(base, lacks_factor=False, deadline=phase.enforce_on)
    requires = phase.requires
    tokens: tuple[TokenLine, ...] = ()
    if requires.token_rules:
        # A token every token rule the phase has would forbid: classic, unnamed, bypassing
        # 2FA, older than any age limit, publishing (from an account without 2FA).
        created = datetime.combine(phase.enforce_on - timedelta(days=3 * 365), time(9, 30))
        used = datetime.combine(phase.notice_on - timedelta(days=3), time(14, 5))
        tokens = (TokenLine(None, "automation", created, used),)
    return replace(
        base,
        lacks_factor=requires.two_factor != "none",
        tokens=tokens,
        deadline=phase.enforce_on,
    )


def _lacks(email: str, plan: Plan) -> str | None:
    """What the plan lacks to send this email, or None when it has an occasion for it."""
    if email in PHASE_EMAILS and not plan.phases:
        return "phases"
    if email == "reminder" and not any(p.reminders_days_before for p in plan.phases):
        return "phase with reminders"
    if email == "brownout_heads_up" and not plan.brownouts:
        return "brown-outs"
    if email == "elv_enrollment" and plan.elv is None:
        return "ELV section"
    if email == "snooze_reply" and _snoozing_phase(plan) is None:
        return "phase that lets an account postpone its deadline"
    return None


def _snoozing_phase(plan: Plan) -> Phase | None:
    """The first phase whose accounts may postpone their deadlines (snooze_days)."""
    return next((p for p in plan.phases if p.deadline and p.deadline.snooze_days), None)


def plan_sends(email: str, plan: Plan) -> bool:
    """Whether the plan has an occasion for this email: no phase email without phases,
    no brown-out heads-up without brown-outs, no ELV notice without an ELV section."""
    return _lacks(email, plan) is None


def example_stored(email: str, plan: Plan, phase_name: str | None = None) -> dict[str, Any]:
    """What queueing would have stored for this email, from the plan's first occasion
    (of ``phase_name``, for a phase's email: each phase words its emails by what it asks
    and does). An email the plan, or that phase, never sends is refused, exit 2."""
    lacking = _lacks(email, plan)
    if lacking is not None:
        raise RolloutError(f"plan {plan.name} never sends {email}: it has no {lacking}").with_exit(
            EXIT_BAD_INPUT
        )
    if phase_name is not None:
        phase = plan.phase(phase_name)
    elif email == "reminder":  # the first phase that sends one (_lacks: there is one)
        phase = next(p for p in plan.phases if p.reminders_days_before)
    else:
        phase = plan.phases[0] if plan.phases else None
    if email in ("phase_notice", "enforcement_notice"):
        assert phase is not None  # _lacks
        return {"phase": phase.name, "cohort": phase.cohort}
    if email == "reminder":
        assert phase is not None
        if not phase.reminders_days_before:
            raise RolloutError(f"phase {phase.name} sends no reminder").with_exit(EXIT_BAD_INPUT)
        return {"phase": phase.name, "days_before": min(phase.reminders_days_before)}
    if email == "brownout_heads_up":
        b = plan.brownouts[0]
        return {
            "brownout": b.name,
            "starts_at": b.starts_at.isoformat(),
            "ends_at": b.ends_at.isoformat(),
            "hours": b.hours,
        }
    if email == "elv_enrollment":
        assert plan.elv is not None  # plan_sends
        return {"enrolled_on": plan.elv.enroll_all_on.isoformat()}
    if email == "org_removal_notice":
        return {"org": "example-org"}
    if email == "org_invitation":
        return {
            "org": "example-org",
            "team": "release-team",
            "invited_by": "lee-example",
            "expires_at": "2022-03-08T10:00:00",
        }
    if email == "org_enforcement_summary":
        return {"org": "example-org", "removed": ["sam-example", "lee-example"]}
    if email == "snooze_reply":
        snoozing = _snoozing_phase(plan)
        assert snoozing is not None and snoozing.deadline is not None  # _lacks
        days = snoozing.deadline.snooze_days
        return {
            "phase": snoozing.name,
            "granted": True,
            "days": days,
            "deadline": (snoozing.enforce_on + timedelta(days=days)).isoformat(),
            "reason": "",
        }
    if email == "phase_summary":
        assert phase is not None
        return {
            "phase": phase.name,
            "run_id": "0123456789abcdef",
            "counts": {
                "accounts_required": 412,
                "accounts_flagged": 412,
                "sessions_revoked": 1380,
                "emails_queued": 412,
                "accounts_unreached": 2,
            },
            "unreached": [
                {"username": "lee-example", "why": "bounced: bounce: 550 5.1.1 no such user"},
                {"username": "sam-example", "why": "unverified email"},
            ],
            "unreached_more": 0,
            "enforced_on": phase.enforce_on.isoformat(),
        }
    raise KeyError(email)


def write_previews(directory: Path, previews: Sequence[tuple[str, Rendered]]) -> list[Path]:
    """``<name>.subject.txt``, ``<name>.txt`` and ``<name>.html`` under ``directory`` for
    each (name, rendered email), once all are rendered: a template error leaves the
    folder as it was, and each file is whole (written beside it, then moved in).

    A ``name`` may carry a username from the registry: it is made a safe file name (a
    hash stands in for what is not), so the files stay in ``directory``."""
    remove_stale_temporaries(directory)  # a killed preview's half-written files
    files: dict[Path, str] = {}
    for name, rendered in previews:
        stem = file_stem_for(name)
        files[directory / f"{stem}.subject.txt"] = rendered.subject + "\n"
        files[directory / f"{stem}.txt"] = rendered.text
        files[directory / f"{stem}.html"] = rendered.html
    for path, content in files.items():
        write_atomically(path, content)
    return list(files)


def preview_examples(
    plan: Plan,
    emails: list[str],
    directory: Path,
    phase_name: str | None = None,
    sent_on: date | None = None,
) -> list[Path]:
    """Render each email for each example recipient it would reach (a phase's emails
    as ``phase_name`` words them, when given), as sent on ``sent_on`` (default: each on
    the day the plan sends it)."""
    previews = []
    for email in emails:
        definition = EMAILS[email]
        stored = sent_that_day(
            example_stored(email, plan, phase_name if email in PHASE_EMAILS else None), sent_on
        )
        phase = plan.phase(stored["phase"]) if email in PHASE_EMAILS else None
        for variant in EXAMPLE_RECIPIENTS:
            recipient = example_recipient(variant, email, phase)
            if recipient.compliant and skips_compliant(email, phase):
                continue  # a compliant account gets nothing: there is nothing to show
            rendered = render(definition, recipient, stored, plan)
            previews.append((f"{email}-{variant}", rendered))
    return write_previews(directory, previews)


def sent_that_day(stored: dict[str, Any], sent_on: date | None) -> dict[str, Any]:
    """``stored`` as the drain renders it on ``sent_on`` (its SENT_ON: "since" a deadline
    gone, the days a reminder has left then); as it is without a day."""
    return stored if sent_on is None else {**stored, SENT_ON: sent_on.isoformat()}

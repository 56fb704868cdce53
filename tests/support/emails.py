"""The example emails every email test renders: shared by tests/test_emails.py and
tests/test_email_parts.py."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from rollout.core.plan import Plan, load_plan
from rollout.notify.emails import EMAILS
from rollout.notify.examples import EXAMPLE_RECIPIENTS, example_stored, plan_sends
from rollout.notify.render import Rendered, render

PLANS = Path(__file__).resolve().parents[2] / "plans"

# (email, variant) for every example recipient each email reaches: a compliant account
# gets nothing at all from a "skip" email, so there is nothing to pin down.
CASES = [
    (name, variant)
    for name, definition in EMAILS.items()
    for variant, recipient in EXAMPLE_RECIPIENTS.items()
    if not (recipient.compliant and definition.when_compliant == "skip")
]
CASE_IDS = [f"{name}-{variant}" for name, variant in CASES]


@cache
def _snoozing_plan() -> Plan:
    return load_plan(PLANS / "github-2023.yaml")


def plan_sending(name: str, plan: Plan) -> Plan:
    """The reference plan, or for the one email it never sends (snooze_reply: no phase
    of npm's lets an account postpone its deadline) the shipped plan that does,
    GitHub's 2023 campaign."""
    return plan if plan_sends(name, plan) else _snoozing_plan().model_copy(deep=True)


def render_example(name: str, variant: str, plan: Plan) -> Rendered:
    plan = plan_sending(name, plan)
    return render(name, EXAMPLE_RECIPIENTS[variant], example_stored(name, plan), plan)

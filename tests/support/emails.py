"""The example emails every email test renders: shared by tests/test_emails.py and
tests/test_email_parts.py."""

from __future__ import annotations

from rollout.core.plan import Plan
from rollout.notify.emails import EMAILS
from rollout.notify.examples import EXAMPLE_RECIPIENTS, example_stored
from rollout.notify.render import Rendered, render

# (email, variant) for every example recipient each email reaches: a compliant account
# gets nothing at all from a "skip" email, so there is nothing to pin down.
CASES = [
    (name, variant)
    for name, definition in EMAILS.items()
    for variant, recipient in EXAMPLE_RECIPIENTS.items()
    if not (recipient.compliant and definition.when_compliant == "skip")
]
CASE_IDS = [f"{name}-{variant}" for name, variant in CASES]


def render_example(name: str, variant: str, plan: Plan) -> Rendered:
    return render(name, EXAMPLE_RECIPIENTS[variant], example_stored(name, plan), plan)

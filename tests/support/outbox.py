"""The outbox tests' cohort and helpers: shared by tests/test_outbox.py,
tests/test_file_outbox_eml.py and tests/test_render_failures.py (which import the
``ids`` fixture by name)."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.plan import Plan, load_plan
from rollout.notify import outbox
from rollout.notify.drain import drain
from rollout.notify.message import DeliveryFailed, Message
from rollout.notify.queue import QueueOutcome, queue_due
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.models import Account, Notification
from tests.factories import AccountFactory, bound_to


@pytest.fixture
def ids(registry: Registry) -> dict[str, int]:
    """In the top-100 cohort: ann (no 2FA), ben (TOTP), cat (unverified email), dan
    (suppressed address). eve has no 2FA and is in no cohort."""
    with bound_to(registry.engine):
        found = {
            name: AccountFactory(
                username=name,
                email_verified=name != "cat",
                with_totp=name == "ben",
                in_cohort=None if name == "eve" else "top-100",
                in_cohort__packages=["zeta-pkg", f"{name}-lib"],
            ).id
            for name in ("ann", "ben", "cat", "dan", "eve")
        }
    outbox.suppress(registry, "DAN@example.com", reason="hard bounce", actor="ops")
    return found


def rows(
    registry: Registry, email: str | None = None, occasion: str | None = None
) -> dict[str, tuple[str, str | None]]:
    """{username: (state, skip reason or error)} of the notifications, one email kind
    (and one occasion of it)."""
    with registry.engine.connect() as connection:
        query = select(
            Account.username, Notification.state, Notification.skip_reason, Notification.error
        ).join(Account, Account.id == Notification.account_id)
        if email:
            query = query.where(Notification.email == email)
        if occasion is not None:
            query = query.where(Notification.occasion == occasion)
        return {u: (s, r or e) for u, s, r, e in connection.execute(query)}


class Recording:
    """A sender that keeps what it was given."""

    name = "recording"

    def __init__(self, fail_for: str = "", misconfigured: bool = False) -> None:
        self.sent: list[Message] = []
        self.fail_for = fail_for
        self.misconfigured = misconfigured

    def send(self, message: Message) -> str:
        if self.misconfigured:
            from rollout.notify.senders import SenderMisconfigured

            raise SenderMisconfigured("SendGrid answered 401: check the API key")
        if message.to_name == self.fail_for:
            raise DeliveryFailed("SendGrid answered 400: bad recipient", permanent=True)
        self.sent.append(message)
        return f"id-{message.outbox_id}"


def on(day: date, hour: int = 9) -> Any:
    """The pipeline's clock at ``hour`` (UTC) of ``day``, as the daily flow runs then:
    ``with on(day): ...``."""
    return use_clock(SimulatedClock(datetime.combine(day, time(hour))))


def publishers_noticed(registry: Registry) -> Plan:
    """github-2023 (45 days from each account's notice) with ann's and eve's notices
    sent on 2023-03-13 (deadline 04-27) and bob's on 03-15 (deadline 04-29), each in
    the cohort publishers. The factories must be bound to ``registry``."""
    plan = load_plan(Path(__file__).resolve().parents[2] / "plans" / "github-2023.yaml")
    for day, names in ((date(2023, 3, 13), ("ann", "eve")), (date(2023, 3, 15), ("bob",))):
        for name in names:
            AccountFactory(username=name, in_cohort="publishers")
        with on(day):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, Recording())
    return plan


# brownout-1 moved from midnight to the afternoon of its day (tests of its heads-up's
# last moment: the window's start, not its day).
AFTERNOON = datetime(2022, 2, 16, 14)


def with_an_afternoon_brownout(plan: Plan) -> Plan:
    """The reference plan with brownout-1 starting at 14:00 UTC on 2022-02-16 (not at
    00:00): its heads-up, due from 02-13, still comes in time on the 16th's morning."""
    first, *others = plan.brownouts
    moved = first.model_copy(update={"starts_at": AFTERNOON})
    return plan.model_copy(update={"brownouts": [moved, *others]})


def queue_late(registry: Registry, plan: Plan, day: date) -> list[QueueOutcome]:
    """``day``'s emails (of 2022) queued now, by the real clock, years after their last
    day, as ``notify queue --as-of DAY --late --apply`` does: marked to be sent however
    late. For the tests of sending (a drain by the real clock, in worker processes and
    shards too, sends them), not of the calendar."""
    return queue_due(registry, plan, day, actor="rm", late=True)


def queue_and_send(registry: Registry, plan: Plan, *days: date) -> None:
    """Each day's emails queued and sent at 09:00 of that day, as the daily flow does."""
    for day in days:
        with on(day):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, Recording())


def enforce_as_previewed(registry: Registry, plan: Plan, phase: str) -> None:
    """``phase`` enforced as a release manager does it: the preview's counts typed back,
    its never-reached accounts accepted."""
    preview = enforce.preview_phase(registry, plan, plan.phase(phase))
    enforce.enforce_phase(
        registry,
        plan,
        phase,
        expect=preview.count,
        accept_unreached=len(preview.unreached),
        actor="rm",
    )

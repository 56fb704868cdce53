"""A template that fails to render fails its own emails, recorded with the reason, and
the drain goes on with the others (rollout/notify/outbox.py ``_prepare``)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import jinja2
import pytest

from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.notify import outbox, render
from rollout.notify.drain import drain
from rollout.registry import Registry

# The fixtures and helpers of the outbox tests: ann (no 2FA) and ben (TOTP) get mail,
# cat (unverified) and dan (suppressed) are skipped.
from tests.support.outbox import Recording, ids, queue_late, rows

__all__ = ["ids"]  # a fixture, used by name

REMINDER_DAY = date(2022, 1, 18)  # the reference plan's first top-100 reminder


@pytest.fixture
def broken_reminder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped templates, but the reminder's text part names a variable no context
    has: every reminder fails to render, every other email renders as shipped."""
    shipped = render.environment()
    env = shipped.overlay(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.DictLoader({"reminder.txt": "Hi {{ username }}, {{ no_such_value }}\n"}),
                shipped.loader,
            ]
        )
    )
    monkeypatch.setattr(render, "environment", lambda: env)


def test_a_template_error_fails_that_email_and_the_others_are_sent(
    registry: Registry, plan: Plan, ids: dict[str, int], broken_reminder: None
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    queue_late(registry, plan, REMINDER_DAY)
    assert outbox.pending(registry) == {"phase_notice": 2, "reminder": 1}  # ann, ben; ann

    sender = Recording()
    report = drain(registry, plan, sender)

    assert sorted((m.email, m.to_name) for m in sender.sent) == [
        ("phase_notice", "ann"),
        ("phase_notice", "ben"),
    ]
    assert (report.sent, report.failed) == (2, 1)
    [(_, reason)] = report.failures
    assert reason == "render: UndefinedError: 'no_such_value' is undefined"
    reminders = rows(registry, "reminder")
    assert reminders["ann"] == ("failed", reason)
    assert reminders["ben"] == ("skipped", "already compliant")  # never rendered
    assert rows(registry, "phase_notice")["ann"] == ("sent", None)
    assert outbox.pending(registry) == {}
    status = {(r["email"], r["state"]): r for r in outbox.outbox_status(registry)}
    assert status[("reminder", "failed")]["count"] == 1
    assert status[("reminder", "failed")]["reason"] == reason


def test_once_the_template_is_fixed_a_retry_sends_it(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    broken_reminder: None,
) -> None:
    queue_late(registry, plan, REMINDER_DAY)
    assert drain(registry, plan, Recording()).failed == 1
    monkeypatch.undo()  # the shipped templates again
    assert outbox.retry_failed(registry) == 1
    sender = Recording()
    assert drain(registry, plan, sender).sent == 1
    [message] = sender.sent
    assert (message.email, message.to_name) == ("reminder", "ann")
    assert "no_such_value" not in message.text
    assert rows(registry, "reminder")["ann"] == ("sent", None)


def test_a_template_error_in_the_email_previews_leaves_the_earlier_previews_as_they_were(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rollout notify preview` renders every email before it writes one: a broken
    reminder must not leave new notices beside old reminders."""
    from rollout.notify.emails import EMAILS
    from rollout.notify.examples import preview_examples

    folder = tmp_path / "preview"
    names = [name for name in ("phase_notice", "reminder", "enforcement_notice") if name in EMAILS]
    written = preview_examples(plan, names, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {p.name for p in written} == set(before)

    shipped = render.environment()
    changed = shipped.overlay(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.DictLoader(
                    {
                        "phase_notice.subject.txt": "A new subject",
                        "reminder.txt": "Hi {{ username }}, {{ no_such_value }}\n",
                    }
                ),
                shipped.loader,
            ]
        )
    )
    monkeypatch.setattr(render, "environment", lambda: changed)
    with pytest.raises(jinja2.UndefinedError):
        preview_examples(plan, names, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

"""Withdrawing queued emails: previewed, only what is still queued, kept as skipped
with the reason, audited once; from the library and the command line."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from rollout.cli import app
from rollout.notify.withdraw import Selection, withdraw, withdraw_preview
from rollout.registry import Registry
from rollout.registry.models import Action, Notification
from tests.factories import AccountFactory, NotificationFactory, bound_to


def states(registry: Registry) -> dict[tuple[str, str, str], int]:
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(
                Notification.phase, Notification.email, Notification.state, func.count()
            ).group_by(Notification.phase, Notification.email, Notification.state)
        ).all()
    return {(p, e, s): n for p, e, s, n in rows}


def outbox() -> None:
    """Two reminders and a notice queued for top-100, one notice already sent, and a
    notice queued for high-impact."""
    for _ in range(2):
        NotificationFactory(email="reminder", occasion="3d")
    NotificationFactory(email="phase_notice")
    NotificationFactory(email="phase_notice", state="sent", account=AccountFactory())
    NotificationFactory(email="phase_notice", phase="high-impact")


def test_withdrawing_by_phase_and_kind_takes_back_only_what_is_queued(
    registry: Registry, factories: None
) -> None:
    outbox()
    selection = Selection(phase="top-100", email="phase_notice")
    with registry.engine.connect() as connection:
        assert withdraw_preview(connection, selection) == [
            {"phase": "top-100", "email": "phase_notice", "queued": 1}
        ]
    assert withdraw(registry, selection, reason="wrong date in the text", actor="rm") == 1
    assert states(registry) == {
        ("top-100", "phase_notice", "skipped"): 1,
        ("top-100", "phase_notice", "sent"): 1,
        ("top-100", "reminder", "queued"): 2,
        ("high-impact", "phase_notice", "queued"): 1,
    }
    with registry.engine.connect() as connection:
        reason = connection.scalars(
            select(Notification.skip_reason).where(Notification.state == "skipped")
        ).one()
        [audit] = connection.execute(
            select(Action.action, Action.actor, Action.details).where(
                Action.action == "emails_withdrawn"
            )
        ).all()
    assert reason == "withdrawn: wrong date in the text"
    assert audit == (
        "emails_withdrawn",
        "rm",
        {"count": 1, "phase": "top-100", "email": "phase_notice"},
    )


def test_withdraw_from_the_command_line_previews_then_applies(rollout_home: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    registry = Registry(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(registry.engine):
        outbox()

    preview = runner.invoke(app, ["notify", "withdraw", "--phase", "top-100", "--format", "json"])
    assert preview.exit_code == 0, preview.stderr
    assert {(r["email"], r["queued"]) for r in json.loads(preview.stdout)} == {
        ("phase_notice", 1),
        ("reminder", 2),
    }
    assert "3 queued emails would be withdrawn" in preview.stderr
    assert states(registry)[("top-100", "reminder", "queued")] == 2

    applied = runner.invoke(
        app, ["notify", "withdraw", "--phase", "top-100", "--apply", "--reason", "paused"]
    )
    assert applied.exit_code == 0, applied.stderr
    assert "withdrew 3 queued emails" in applied.stderr
    assert states(registry)[("top-100", "reminder", "skipped")] == 2

    assert runner.invoke(app, ["notify", "withdraw"]).exit_code == 2
    assert runner.invoke(app, ["notify", "withdraw", "--email", "nope"]).exit_code == 2
    no_reason = runner.invoke(app, ["notify", "withdraw", "--email", "reminder", "--apply"])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.stderr
    registry.close()


def test_a_phase_neither_in_the_plan_nor_in_the_outbox_is_refused(rollout_home: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    registry = Registry(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(registry.engine):
        # Queued under a phase an earlier plan had: still found, and taken back.
        NotificationFactory(email="phase_notice", phase="retired")

    typo = runner.invoke(
        app, ["notify", "withdraw", "--phase", "top-10", "--apply", "--reason", "x"]
    )
    assert typo.exit_code == 2
    assert "no phase 'top-10' in plan npm-2022 (phases: top-100, high-impact)" in typo.stderr

    retired = runner.invoke(
        app, ["notify", "withdraw", "--phase", "retired", "--apply", "--reason", "renamed"]
    )
    assert retired.exit_code == 0, retired.stderr
    assert states(registry) == {("retired", "phase_notice", "skipped"): 1}
    # Run again (after a kill, say): nothing left to take back, and no error.
    again = runner.invoke(
        app, ["notify", "withdraw", "--phase", "retired", "--apply", "--reason", "renamed"]
    )
    assert again.exit_code == 0, again.stderr
    assert "withdrew 0 queued emails" in again.stderr
    # The plan's own phase with nothing queued is a preview of nothing, not an error.
    assert runner.invoke(app, ["notify", "withdraw", "--phase", "high-impact"]).exit_code == 0
    registry.close()

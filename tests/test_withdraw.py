"""Withdrawing emails: previewed, only what has not gone (queued or failed; one being
sent goes only if that send goes), kept as skipped with the reason, audited once; from
the library and the command line."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from rollout.cli import app
from rollout.notify import drain
from rollout.notify.withdraw import Selection, Withdrawn, withdraw, withdraw_preview
from rollout.registry import Registry
from rollout.registry.models import Action, Notification
from tests.factories import T0, AccountFactory, NotificationFactory, bound_to


def states(registry: Registry) -> dict[tuple[str, str, str], int]:
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(
                Notification.phase, Notification.email, Notification.state, func.count()
            ).group_by(Notification.phase, Notification.email, Notification.state)
        ).all()
    return {(p, e, s): n for p, e, s, n in rows}


def _hint(preview_stderr: str) -> list[str]:
    """The `--expect N --expect-list F` a withdrawal's preview prints for its apply."""
    told = " ".join(preview_stderr.split()).split()
    at = told.index("--expect")
    assert told[at + 2] == "--expect-list", preview_stderr
    return told[at : at + 4]


# The fingerprint of no emails at all: a rerun's, once everything was withdrawn.
NOTHING = "e3b0c44298fc"


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
            {"phase": "top-100", "email": "phase_notice", "queued": 1, "in_flight": 0}
        ]
    assert withdraw(registry, selection, reason="wrong date in the text", actor="rm") == Withdrawn(
        taken=1, in_flight=0
    )
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
        {"count": 1, "in_flight": 0, "phase": "top-100", "email": "phase_notice", "occasion": None},
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
    told = " ".join(preview.stderr.split())
    assert "3 queued or failed emails would be withdrawn for good" in told
    typed_back = _hint(preview.stderr)
    assert (
        "to withdraw them run rollout notify withdraw --phase top-100 --apply "
        f"{' '.join(typed_back)} --reason '...'" in told
    )
    assert typed_back[:2] == ["--expect", "3"]
    assert states(registry)[("top-100", "reminder", "queued")] == 2

    applied = runner.invoke(
        app,
        ["notify", "withdraw", "--phase", "top-100", "--apply", *typed_back, "--reason", "paused"],
    )
    assert applied.exit_code == 0, applied.stderr
    assert "withdrew 3 queued or failed emails" in applied.stderr
    assert states(registry)[("top-100", "reminder", "skipped")] == 2

    assert runner.invoke(app, ["notify", "withdraw"]).exit_code == 2
    assert runner.invoke(app, ["notify", "withdraw", "--email", "nope"]).exit_code == 2
    no_reason = runner.invoke(
        app,
        [
            *("notify", "withdraw", "--email", "reminder", "--apply"),
            *("--expect", "0", "--expect-list", NOTHING),
        ],
    )
    assert no_reason.exit_code == 2 and "--reason" in no_reason.stderr
    registry.close()


def test_withdrawing_for_good_needs_the_previewed_count_typed_back(
    rollout_home: Path,
) -> None:
    """A withdrawn email is never queued again: --apply takes the count the preview
    showed, so an email queued since (the day's notices) is not silenced unseen.
    Without it: exit 2 naming it and the preview; another count: exit 3, nothing
    withdrawn."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    registry = Registry(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(registry.engine):
        outbox()
    withdraw_top_100 = ["notify", "withdraw", "--phase", "top-100", "--apply"]

    unchecked = runner.invoke(app, [*withdraw_top_100, "--reason", "paused"])
    assert unchecked.exit_code == 2
    said = " ".join(unchecked.stderr.split())
    assert (
        "--apply needs --expect N (the count the preview showed), --expect-list F (the "
        "fingerprint the preview showed)"
    ) in said
    assert "run `rollout notify withdraw --phase top-100`" in said
    preview = runner.invoke(app, ["notify", "withdraw", "--phase", "top-100"])
    typed_back = _hint(preview.stderr)
    # A fingerprint no preview prints (the count pasted in its place): a usage error.
    mistyped = runner.invoke(
        app, [*withdraw_top_100, "--expect", "3", "--expect-list", "3", "--reason", "paused"]
    )
    assert mistyped.exit_code == 2
    assert "--expect-list: '3' is not a list's fingerprint" in mistyped.stderr

    # The preview showed 3; a queue run adds a reminder before the withdrawal.
    with bound_to(registry.engine):
        NotificationFactory(email="reminder", occasion="1d")
    stale = runner.invoke(app, [*withdraw_top_100, *typed_back, "--reason", "paused"])
    assert stale.exit_code == 3
    assert (
        "4 queued or failed emails would be withdrawn now, not the 3 expected: the outbox "
        "changed since the preview; nothing was withdrawn"
    ) in " ".join(stale.stderr.split())
    assert states(registry)[("top-100", "reminder", "queued")] == 3
    with registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Action)) == 0

    again = runner.invoke(app, ["notify", "withdraw", "--phase", "top-100"])
    assert _hint(again.stderr)[:2] == ["--expect", "4"]
    applied = runner.invoke(app, [*withdraw_top_100, *_hint(again.stderr), "--reason", "paused"])
    assert applied.exit_code == 0, applied.stderr
    assert states(registry)[("top-100", "reminder", "skipped")] == 3
    registry.close()


def test_a_phase_neither_in_the_plan_nor_in_the_outbox_is_refused(rollout_home: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    registry = Registry(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(registry.engine):
        # Queued under a phase an earlier plan had: still found, and taken back.
        NotificationFactory(email="phase_notice", phase="retired")

    typo = runner.invoke(
        app,
        [
            *("notify", "withdraw", "--phase", "top-10", "--apply"),
            *("--expect", "0", "--expect-list", NOTHING, "--reason", "x"),
        ],
    )
    assert typo.exit_code == 2
    assert "no phase 'top-10' in plan npm-2022 (phases: top-100, high-impact)" in typo.stderr

    withdraw_retired = ["notify", "withdraw", "--phase", "retired", "--apply"]
    preview = runner.invoke(app, ["notify", "withdraw", "--phase", "retired"])
    retired = runner.invoke(app, [*withdraw_retired, *_hint(preview.stderr), "--reason", "renamed"])
    assert retired.exit_code == 0, retired.stderr
    assert states(registry) == {("retired", "phase_notice", "skipped"): 1}
    # Run again (after a kill, say): nothing left to take back, and no error.
    again = runner.invoke(
        app, [*withdraw_retired, "--expect", "0", "--expect-list", NOTHING, "--reason", "renamed"]
    )
    assert again.exit_code == 0, again.stderr
    assert "withdrew 0 queued or failed emails" in again.stderr
    # The plan's own phase with nothing queued is a preview of nothing, not an error.
    assert runner.invoke(app, ["notify", "withdraw", "--phase", "high-impact"]).exit_code == 0
    registry.close()


def _state_of(registry: Registry, row: Notification) -> tuple[str, str | None]:
    with registry.engine.connect() as connection:
        found = connection.execute(
            select(Notification.state, Notification.skip_reason).where(Notification.id == row.id)
        ).one()
    return found.state, found.skip_reason


def test_a_failed_email_is_withdrawn_too_so_a_retry_does_not_send_it(
    registry: Registry, factories: None
) -> None:
    failed = NotificationFactory(state="failed", error="HTTP 400")
    assert withdraw(registry, Selection(phase="top-100"), reason="rolled back", actor="rm") == (
        Withdrawn(taken=1, in_flight=0)
    )
    assert drain.requeue_failed(registry.engine, T0) == 0
    assert _state_of(registry, failed) == ("skipped", "withdrawn: rolled back")


def test_an_email_withdrawn_while_being_sent_is_never_queued_again(
    registry: Registry, factories: None
) -> None:
    """A stop puts it back, a crashed drain's rows are requeued, its lease lapses, its
    send fails: each time it ends skipped as withdrawn. Only a send that went stands."""
    held = {
        name: NotificationFactory(state="sending", lease_expires_at=T0 + timedelta(minutes=5))
        for name in ("stopped", "crashed", "lapsed", "failed", "sent")
    }
    selection = Selection(phase="top-100")
    with registry.engine.connect() as connection:
        assert withdraw_preview(connection, selection) == [
            {"phase": "top-100", "email": "phase_notice", "queued": 0, "in_flight": 5}
        ]
    assert withdraw(registry, selection, reason="rolled back", actor="rm") == Withdrawn(0, 5)
    with registry.engine.connect() as connection:  # not counted twice
        assert withdraw_preview(connection, selection) == []
    assert _state_of(registry, held["sent"]) == ("sending", "withdrawn: rolled back")

    drain._record(
        registry.engine,
        [
            drain._Outcome(held["failed"].id, "failed", "HTTP 503"),
            drain._Outcome(held["sent"].id, "sent", message_id="m-1"),
        ],
        T0,
    )
    drain._put_back(registry.engine, [held["stopped"].id], T0)
    assert drain._claim(registry.engine, 10, T0 + timedelta(minutes=6), "file") == []
    assert drain._requeue_in_flight(registry.engine, T0) == 0  # (none left in flight)

    assert _state_of(registry, held["sent"]) == ("sent", None)
    for name in ("stopped", "lapsed", "failed"):
        assert _state_of(registry, held[name]) == ("skipped", "withdrawn: rolled back"), name
    # The crashed drain's row lapsed with the others; requeued, it would be skipped too.
    assert _state_of(registry, held["crashed"]) == ("skipped", "withdrawn: rolled back")


def test_a_crashed_drains_withdrawn_rows_are_skipped_when_requeued(
    registry: Registry, factories: None
) -> None:
    crashed = NotificationFactory(state="sending", lease_expires_at=T0 + timedelta(hours=1))
    other = NotificationFactory(state="sending", phase="high-impact", account=AccountFactory())
    withdraw(registry, Selection(phase="top-100"), reason="rolled back", actor="rm")
    assert drain._requeue_in_flight(registry.engine, T0) == 2
    assert _state_of(registry, crashed) == ("skipped", "withdrawn: rolled back")
    assert _state_of(registry, other) == ("queued", None)


def test_other_emails_at_the_previewed_count_are_not_withdrawn_unseen(
    rollout_home: Path,
) -> None:
    """Between the preview and the apply the daily notify run sends one of the previewed
    reminders and queues a new one: the count is the same, the emails are not. The new
    one would be silenced for good unseen, so the apply refuses (exit 3, nothing
    withdrawn, nothing audited) on the previewed list's fingerprint, as `phase enforce`
    and `orgs enforce` refuse another list of the same size."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    registry = Registry(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(registry.engine):
        outbox()
    preview = runner.invoke(app, ["notify", "withdraw", "--phase", "top-100"])
    assert preview.exit_code == 0, preview.stderr
    typed_back = _hint(preview.stderr)
    assert typed_back[:2] == ["--expect", "3"]

    with registry.engine.begin() as connection:
        gone = connection.scalars(
            select(Notification.id).where(Notification.email == "reminder").limit(1)
        ).one()
        connection.execute(
            Notification.__table__.update()
            .where(Notification.id == gone)
            .values(state="sent", sent_at=T0)
        )
    with bound_to(registry.engine):
        NotificationFactory(email="reminder", occasion="1d")

    withdraw_top_100 = ["notify", "withdraw", "--phase", "top-100", "--apply"]
    stale = runner.invoke(app, [*withdraw_top_100, *typed_back, "--reason", "paused"])
    assert stale.exit_code == 3, stale.stderr
    assert (
        "the queued or failed emails it would withdraw now are not the ones previewed"
        in " ".join(stale.stderr.split())
    )
    assert states(registry)[("top-100", "reminder", "queued")] == 2
    with registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Action)) == 0

    # Previewed again, the new list is the one withdrawn.
    again = runner.invoke(app, ["notify", "withdraw", "--phase", "top-100"])
    applied = runner.invoke(app, [*withdraw_top_100, *_hint(again.stderr), "--reason", "paused"])
    assert applied.exit_code == 0, applied.stderr
    assert states(registry)[("top-100", "reminder", "skipped")] == 2
    registry.close()

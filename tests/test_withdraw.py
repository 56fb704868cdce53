"""Withdrawing emails: previewed, only what has not gone (queued or failed; one being
sent goes only if that send goes), kept as skipped with the reason, audited once; from
the library and the command line."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from rollout.cli import app
from rollout.notify import drain
from rollout.notify.withdraw import Selection, Withdrawn, withdraw, withdraw_preview
from rollout.phases.withdrawals import save_withdraw_preview
from rollout.registry import Registry
from rollout.registry.models import Action, Notification
from tests.factories import T0, AccountFactory, NotificationFactory, bound_to
from tests.hostile import PROSE
from tests.support.env import without_rollout_settings


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


@pytest.fixture
def cli(
    registry_url: str, factories: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """`rollout ARGS...` against this test's registry (each backend), a home of its own."""
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_a_withdrawal_preview_saves_the_emails_it_lists(
    registry: Registry, cli: Callable[..., Any], tmp_path: Path
) -> None:
    """The preview keeps the list it showed under reports/previews/ (one row per email:
    id, account, kind, phase, occasion, state; a hostile name a cell that stays data),
    with its record beside it, and says where."""
    outbox()
    hostile = NotificationFactory(
        email="reminder", occasion="1d", account=AccountFactory(username="=HYPERLINK(1)\nx")
    )
    flying = NotificationFactory(state="sending", account=AccountFactory())
    preview = cli("notify", "withdraw", "--phase", "top-100")
    assert preview.exit_code == 0, preview.stderr
    [path] = (tmp_path / "reports" / "previews").glob("*.csv")
    assert re.fullmatch(r"withdraw-top-100-\d{8}T\d{6}-[0-9a-f]{8}\.csv", path.name)
    assert f"the list: {path}" in preview.stderr.replace("\n", "")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "notification_id",
        *("account_id", "username", "email", "phase", "occasion", "state"),
    ]
    assert {(r["email"], r["occasion"], r["state"]) for r in rows} == {
        ("reminder", "3d", "queued"),
        ("phase_notice", "", "queued"),
        ("reminder", "1d", "queued"),
        ("phase_notice", "", "sending"),
    }
    assert len(rows) == 5
    [cell] = [r for r in rows if r["notification_id"] == str(hostile.id)]
    assert cell["username"] == "'=HYPERLINK(1)\nx"
    record = json.loads(path.with_suffix(".json").read_text())
    assert (record["kind"], record["phase"], record["email"]) == ("withdraw", "top-100", None)
    assert (record["emails"], record["in_flight"], record["csv"]) == (4, 1, path.name)
    assert ["--expect", "4", "--expect-list", record["fingerprint"]] == _hint(preview.stderr)
    assert str(flying.id) in {r["notification_id"] for r in rows}
    # No plan step reads them: plan show reads the phases' previews beside them, unwarned.
    shown = cli("plan", "show")
    assert shown.exit_code == 0, shown.stderr
    assert "warning" not in shown.stderr


def test_a_withdrawal_refused_as_not_previewed_names_the_emails_changed_since(
    registry: Registry, cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Previewed: alice's two reminders and a notice. Then the daily run sends one of
    alice's reminders and queues one for a hostile name: the same count, other emails.
    The refusal (exit 3, nothing withdrawn) says which: the one sent (now sent), the one
    queued, as data, with the preview's time and file. Then another is queued: another
    count, named the same way; a fingerprint no preview here showed, the refusal alone."""
    alice = AccountFactory(username="alice")
    first = NotificationFactory(email="reminder", occasion="3d", account=alice)
    NotificationFactory(email="reminder", occasion="7d", account=alice)
    NotificationFactory(email="phase_notice", account=alice)
    preview = cli("notify", "withdraw", "--phase", "top-100")
    assert preview.exit_code == 0, preview.stderr
    typed_back = _hint(preview.stderr)
    [csv_name] = [p.name for p in (tmp_path / "reports" / "previews").glob("*.csv")]
    with registry.engine.begin() as connection:
        connection.execute(
            Notification.__table__.update()
            .where(Notification.id == first.id)
            .values(state="sent", sent_at=T0)
        )
    queued = NotificationFactory(
        email="reminder", occasion="1d", account=AccountFactory(username="\x1b[2Kmallory")
    )
    apply = ("notify", "withdraw", "--phase", "top-100", "--apply", "--reason", "paused")

    refused = cli(*apply, *typed_back)
    assert refused.exit_code == 3, refused.stderr
    said = " ".join(refused.stderr.split())
    assert said.startswith(
        "error: the queued or failed emails it would withdraw now are not the ones"
    )
    assert (
        f"({csv_name}): 1 email no longer listed (#{first.id} reminder 3d to 'alice': now sent); "
        f"1 email newly listed (#{queued.id} reminder 1d to '\\x1b[2Kmallory')"
    ) in said
    assert "\x1b" not in refused.stderr
    assert states(registry)[("top-100", "reminder", "queued")] == 2
    with registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Action)) == 0

    more = [
        NotificationFactory(
            email="reminder", occasion="1d", account=AccountFactory(username=f"m{n}")
        )
        for n in range(6)
    ]
    fewer = cli(*apply, *typed_back)
    assert fewer.exit_code == 3
    said = " ".join(fewer.stderr.split())
    assert said.startswith(
        "error: 9 queued or failed emails would be withdrawn now, not the 3 expected"
    )
    assert "1 email no longer listed" in said
    assert f"7 emails newly listed (#{queued.id} reminder 1d to " in said
    assert f"#{more[3].id} reminder 1d to 'm3' and 2 more)" in said
    elsewhere = cli(*apply, "--expect", "3", "--expect-list", "0123456789ab")
    assert elsewhere.exit_code == 3 and "no longer listed" not in elsewhere.stderr
    assert states(registry)[("top-100", "reminder", "queued")] == 8


def test_a_withdrawal_preview_of_a_hostile_phase_stays_in_its_folder(tmp_path: Path) -> None:
    """An org's emails are withdrawn by `--phase org:NAME`, the name the registry's (any
    character): its file name is made safe, its record keeps the selection as it is."""
    phase = "org:../../x\n=evil"
    path = save_withdraw_preview(tmp_path, Selection(phase=phase, email="reminder"), [], actor="rm")
    assert path.parent == tmp_path / "previews"
    assert re.fullmatch(
        r"withdraw-org_[._]*x_evil-[0-9a-f]{12}-reminder-\d{8}T\d{6}-[0-9a-f]{8}\.csv", path.name
    )
    record = json.loads(path.with_suffix(".json").read_text())
    assert (record["phase"], record["email"], record["emails"]) == (phase, "reminder", 0)


def test_a_withdrawal_preview_of_nothing_says_so_and_saves_nothing(
    registry: Registry, cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Only a sent notice is left for top-100: the preview says there is nothing to
    withdraw (exit 0, an empty list on stdout) and neither saves a list under
    reports/previews/ nor prints an --apply that would take nothing. A preview of
    something still saves its list."""
    NotificationFactory(email="phase_notice", state="sent")
    previews = tmp_path / "reports" / "previews"
    for fmt in ("table", "json"):
        preview = cli("notify", "withdraw", "--phase", "top-100", "--format", fmt)
        assert preview.exit_code == 0, preview.stderr
        said = " ".join(preview.stderr.split())
        assert (
            "nothing to withdraw: no queued, failed or in-flight emails of phase 'top-100'" in said
        )
        assert "--apply" not in said and "the list:" not in said
        assert not previews.exists() or not list(previews.iterdir())
    assert json.loads(preview.stdout) == []
    NotificationFactory(email="reminder", occasion="3d")
    preview = cli("notify", "withdraw", "--phase", "top-100", "--email", "reminder")
    assert preview.exit_code == 0 and "--apply" in preview.stderr
    assert len(list(previews.glob("*.csv"))) == 1


@pytest.mark.parametrize("org", PROSE)
def test_a_withdrawal_preview_of_nothing_quotes_the_phase_it_names(
    registry: Registry, cli: Callable[..., Any], org: str
) -> None:
    """An org's phase is named by the org (``org:NAME``), which can hold anything: the
    'nothing to withdraw' of a selection showed it as it was, so an org named
    ``acme and kind reminder`` read as a selection of another kind, ``bo, di`` as two.
    Quoted, as a refusal quotes every name: the selection reads back exactly."""
    from rollout.core.controls import quoted

    phase = f"org:{org}"
    preview = cli("notify", "withdraw", "--phase", phase, "--email", "org_removal_notice")
    assert preview.exit_code == 0, preview.stderr
    said = " ".join(preview.stderr.split())
    assert (
        f"nothing to withdraw: no queued, failed or in-flight emails of phase {quoted(phase)} "
        "and kind org_removal_notice"
    ) in said

"""Suppressing an address by hand, and lifting it, on SQLite and PostgreSQL: a
suppression silences a maintainer (no deadline notice, then enforced unwarned), so
`rollout notify suppress` previews who it would silence before it acts, and `rollout
notify unsuppress` lifts one set by mistake, both audited. Addresses are matched as the
send matches them: in any case, the domain in IDNA or Unicode."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text, update
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.notify import outbox
from rollout.notify.drain import drain
from rollout.notify.queue import queue_preview
from rollout.notify.suppressions import unsuppress
from rollout.registry import Registry
from rollout.registry.models import Account, Action, EmailSuppression
from tests.support.env import without_rollout_settings
from tests.support.outbox import Recording, ids, queue_late, rows

from .conftest import postgres_only

__all__ = ["ids"]  # a fixture, used by name

ANN = "ann@xn--bcher-kva.example"


@pytest.fixture
def rollout(registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI on this test's registry (each backend in turn): run(*args) -> result."""
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_ACTOR", "rm")

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    return run


def suppressions(registry: Registry) -> set[tuple[str, str]]:
    table = EmailSuppression.__table__
    with registry.engine.connect() as connection:
        return {tuple(row) for row in connection.execute(select(table.c.address, table.c.source))}


def audited(registry: Registry, action: str, subject: str) -> list[Any]:
    """The audit rows of ``action`` on an address."""
    with registry.engine.connect() as connection:
        return list(
            connection.execute(
                select(Action).where(Action.action == action, Action.subject == subject)
            ).all()
        )


def move(registry: Registry, account_id: int, email: str) -> None:
    with registry.engine.begin() as connection:
        connection.execute(update(Account).where(Account.id == account_id).values(email=email))


def on_sendgrid_list(registry: Registry, address: str, source: str) -> None:
    """A row as `notify sync-suppressions` copies it from SendGrid's lists."""
    with registry.engine.begin() as connection:
        connection.execute(
            EmailSuppression.__table__.insert().values(
                address=address,
                source=source,
                reason="550 5.1.1 no such user",
                created_at=datetime(2022, 1, 1),
                created_by="rm",
            )
        )


def test_suppress_previews_whom_it_would_silence_and_changes_nothing_without_apply(
    registry: Registry, plan: Plan, ids: dict[str, int], rollout: Any
) -> None:
    """ann holds her address in Unicode; the release manager types its IDNA form, in
    capitals: the send would match it, so the preview names her, with her notice not
    sent yet. Only --apply suppresses it, audited; the send then skips her notice."""
    move(registry, ids["ann"], "ann@bücher.example")
    queue_late(registry, plan, NOTICE_DAY)
    before = suppressions(registry)
    preview = rollout(
        "notify", "suppress", "ANN@XN--BCHER-KVA.example", "--reason", "bounced", "--format", "json"
    )
    assert preview.exit_code == 0, preview.stderr
    record = json.loads(preview.stdout)
    assert record["usernames"] == ["ann"]
    assert (record["emails_not_sent"], record["emails_not_sent_by_kind"]) == (1, ["phase_notice 1"])
    assert (record["applied"], record["suppressed_now"]) == (False, False)
    assert "preview only: add --apply" in preview.stderr
    assert suppressions(registry) == before
    assert audited(registry, "email_suppressed", ANN) == []

    applied = rollout(
        "notify", "suppress", "ANN@XN--BCHER-KVA.example", "--reason", "bounced", "--apply"
    )
    assert applied.exit_code == 0, applied.stderr
    assert "suppressed" in applied.stderr
    assert suppressions(registry) == before | {("ann@xn--bcher-kva.example", "manual")}
    [audit] = audited(registry, "email_suppressed", ANN)
    assert (audit.account_id, audit.reason, audit.actor) == (ids["ann"], "bounced", "rm")
    assert audit.details["usernames"] == ["ann"]
    drain(registry, plan, Recording())
    assert rows(registry, "phase_notice")["ann"] == ("skipped", "suppressed")


def test_the_preview_says_who_already_suppressed_the_address(
    registry: Registry, ids: dict[str, int], rollout: Any
) -> None:
    """dan was suppressed by hand by ops (the ids fixture), and SendGrid lists a bounce
    of his address: suppressing it again adds nothing, and the preview says so."""
    on_sendgrid_list(registry, "dan@example.com", "bounce")
    preview = rollout("notify", "suppress", "dan@example.com", "--reason", "x", "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    held = json.loads(preview.stdout)["already_suppressed"]
    assert any(h.startswith("by hand, by 'ops'") and "hard bounce" in h for h in held)
    assert any(h.startswith("on SendGrid's bounces list") for h in held)
    again = rollout("notify", "suppress", "Dan@Example.com", "--reason", "x", "--apply")
    assert again.exit_code == 0 and "was already suppressed" in again.stderr
    assert len(audited(registry, "email_suppressed", "dan@example.com")) == 1  # the fixture's


def test_a_suppression_in_another_form_of_the_address_is_not_set_twice(
    registry: Registry, ids: dict[str, int]
) -> None:
    assert outbox.suppress(registry, "ann@bücher.example", reason="bounced", actor="rm")
    assert not outbox.suppress(registry, "ann@xn--bcher-kva.example", reason="x", actor="rm")
    assert ("ann@xn--bcher-kva.example", "manual") not in suppressions(registry)
    assert len(audited(registry, "email_suppressed", "ann@bücher.example")) == 1
    assert audited(registry, "email_suppressed", ANN) == []


def test_two_suppressions_at_once_in_two_forms_of_the_address_set_it_once(
    registry: Registry, ids: dict[str, int]
) -> None:
    """Two operators suppress ann at once, one typing her domain in Unicode, the other
    in IDNA: the second waits for the first to commit and finds it suppressed (on
    PostgreSQL both passed the check against the rows as they were: two rows, two
    audit rows)."""
    first_wrote = threading.Event()
    added: dict[str, bool] = {}
    errors: list[BaseException] = []

    def suppress(own: Registry, address: str) -> None:
        try:
            if address == ANN:
                assert first_wrote.wait(timeout=30)
            added[address] = outbox.suppress(own, address, reason="bounced", actor="rm")
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    with Registry(registry.url) as first, Registry(registry.url) as second:

        @event.listens_for(first.engine, "after_cursor_execute")
        def hold_the_write_open(*args: Any) -> None:
            if args[2].lstrip().upper().startswith("INSERT INTO EMAIL_SUPPRESSIONS"):
                first_wrote.set()
                time.sleep(1.0)  # uncommitted, while the second comes to its check

        threads = [
            threading.Thread(target=suppress, args=(first, "ann@bücher.example")),
            threading.Thread(target=suppress, args=(second, ANN)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert added == {"ann@bücher.example": True, ANN: False}
    assert ("ann@xn--bcher-kva.example", "manual") not in suppressions(registry)
    assert len(audited(registry, "email_suppressed", "ann@bücher.example")) == 1
    assert audited(registry, "email_suppressed", ANN) == []


def test_unsuppress_lifts_a_suppression_by_hand_and_the_next_queue_sends_the_notice(
    registry: Registry, plan: Plan, ids: dict[str, int], rollout: Any
) -> None:
    """dan's address was suppressed by mistake: his notice was skipped. The preview says
    so and changes nothing; once lifted (audited), the next queue sends the notice."""
    queue_late(registry, plan, NOTICE_DAY)
    assert rows(registry, "phase_notice")["dan"] == ("skipped", "suppressed")
    preview = rollout(
        "notify", "unsuppress", "dan@example.com", "--reason", "by mistake", "--format", "json"
    )
    assert preview.exit_code == 0, preview.stderr
    record = json.loads(preview.stdout)
    assert record["usernames"] == ["dan"]
    assert record["skipped_as_suppressed_by_kind"] == ["phase_notice 1"]
    assert (record["notices_queued_again"], record["applied"], record["lifted"]) == (1, False, [])
    assert ("dan@example.com", "manual") in suppressions(registry)

    lifted = rollout("notify", "unsuppress", "DAN@example.com", "--reason", "by mistake", "--apply")
    assert lifted.exit_code == 0, lifted.stderr
    assert "lifted" in lifted.stderr
    assert ("dan@example.com", "manual") not in suppressions(registry)
    [audit] = audited(registry, "email_unsuppressed", "dan@example.com")
    assert (audit.account_id, audit.reason, audit.actor) == (ids["dan"], "by mistake", "rm")
    assert (audit.details["suppressed_by"], audit.details["suppressed_for"]) == (
        "ops",
        "hard bounce",
    )
    queue_late(registry, plan, NOTICE_DAY)
    assert rows(registry, "phase_notice")["dan"] == ("queued", None)
    again = rollout("notify", "unsuppress", "dan@example.com", "--reason", "again", "--apply")
    assert again.exit_code == 0 and "nothing to lift" in again.stderr
    assert len(audited(registry, "email_unsuppressed", "dan@example.com")) == 1


def test_unsuppress_lifts_every_form_of_the_address(
    registry: Registry, ids: dict[str, int], rollout: Any
) -> None:
    move(registry, ids["ann"], "ann@bücher.example")
    outbox.suppress(registry, "ann@xn--bcher-kva.example", reason="bounced", actor="rm")
    lifted = rollout("notify", "unsuppress", "Ann@Bücher.example", "--reason", "ok", "--apply")
    assert lifted.exit_code == 0, lifted.stderr
    assert not {a for a, _ in suppressions(registry)} & {
        "ann@xn--bcher-kva.example",
        "ann@bücher.example",
    }


@pytest.mark.parametrize("source", ["bounce", "spam_report", "invalid_email"])
def test_unsuppress_is_refused_while_sendgrid_lists_the_address(
    registry: Registry, ids: dict[str, int], rollout: Any, source: str
) -> None:
    """Lifted here, dan's email would stay stopped by SendGrid's list (and the next sync
    copies it again): refused, naming the list, nothing changed."""
    on_sendgrid_list(registry, "dan@example.com", source)
    before = suppressions(registry)
    preview = rollout("notify", "unsuppress", "dan@example.com", "--reason", "ok")
    assert preview.exit_code == 0 and "would be refused" in preview.stderr
    refused = rollout("notify", "unsuppress", "dan@example.com", "--reason", "ok", "--apply")
    assert refused.exit_code == 3, refused.stderr
    list_name = {"bounce": "bounces", "spam_report": "spam_reports"}.get(source, "invalid_emails")
    assert f"SendGrid's {list_name} list" in refused.stderr
    assert "sync-suppressions" in refused.stderr
    assert suppressions(registry) == before
    assert audited(registry, "email_unsuppressed", "dan@example.com") == []


@pytest.mark.parametrize("source", ["block", "unsubscribe"])
def test_a_list_that_does_not_stop_email_does_not_refuse_the_lifting(
    registry: Registry, ids: dict[str, int], rollout: Any, source: str
) -> None:
    on_sendgrid_list(registry, "dan@example.com", source)
    lifted = rollout("notify", "unsuppress", "dan@example.com", "--reason", "ok", "--apply")
    assert lifted.exit_code == 0, lifted.stderr
    assert suppressions(registry) == {("dan@example.com", source)}


@pytest.mark.parametrize("command", ["suppress", "unsuppress"])
@pytest.mark.parametrize(
    ("address", "reason"),
    [("not an email", "bounced"), ("a@b.c\nBcc: x@evil.example", "bounced"), ("a@b.example", " ")],
)
def test_bad_addresses_and_blank_reasons_are_refused_in_the_preview_too(
    registry: Registry, rollout: Any, command: str, address: str, reason: str
) -> None:
    for apply in ([], ["--apply"]):
        refused = rollout("notify", command, address, "--reason", reason, *apply)
        assert refused.exit_code == 2, refused.stderr
        assert "\nBcc" not in refused.stderr
    assert suppressions(registry) == set()


def test_the_longest_address_is_suppressed_lifted_and_audited_whole(registry: Registry) -> None:
    """An address may have 320 characters (accounts.email holds as many); the audit's
    subject has 300 (cut there, its details keep it whole): on PostgreSQL a longer value
    failed the insert with a traceback."""
    address = "a" * 64 + "@" + "b" * (320 - 64 - 1 - len(".example")) + ".example"
    assert len(address) == 320
    assert outbox.suppress(registry, address, reason="bounced", actor="rm")
    assert unsuppress(registry, address, reason="ok", actor="rm")
    with registry.engine.connect() as connection:
        details = (
            connection.execute(
                select(Action.details).where(
                    Action.action.in_(["email_suppressed", "email_unsuppressed"])
                )
            )
            .scalars()
            .all()
        )
    assert [d["address"] for d in details] == [address, address]


def test_the_preview_finds_the_accounts_as_the_send_matches_them(
    registry: Registry, ids: dict[str, int], rollout: Any
) -> None:
    """ann holds her domain in capitals beyond ASCII (SQLite's lower() folds only
    ASCII; the send stops her emails all the same); eve's local part has LIKE's
    wildcards, which match only themselves; ben's differs from eve's only where a
    wildcard would have matched."""
    move(registry, ids["ann"], "  Ann@BÜCHER.example ")
    move(registry, ids["eve"], "e_v%e@example.com")
    move(registry, ids["ben"], "exvxe@example.com")
    for typed, expected in [
        ("ann@xn--bcher-kva.example", ["ann"]),
        ("ann@bücher.example", ["ann"]),
        ("E_V%E@example.com", ["eve"]),
        ("e%@example.com", []),
    ]:
        preview = rollout("notify", "suppress", typed, "--reason", "x", "--format", "json")
        assert preview.exit_code == 0, preview.stderr
        assert json.loads(preview.stdout)["usernames"] == expected, typed


def test_the_queue_its_preview_and_the_send_agree_on_addresses_beyond_ascii(
    registry: Registry, plan: Plan, ids: dict[str, int], rollout: Any
) -> None:
    """ann's address has capitals beyond ASCII (SQLite's lower() leaves Å as it is),
    ben's its domain in IDNA where the suppression has it in Unicode: the queue and its
    preview skip them as the send does, and `notify suppress` finds ann (and eve, whose
    Kelvin sign Python lower-cases to k) as the send matches them. Before, the preview
    counted them as queued, and the send skipped them."""
    move(registry, ids["ann"], "ÅNN@X.EXAMPLE")
    move(registry, ids["ben"], "ben@xn--bcher-kva.example")
    # A Kelvin sign, which Python lower-cases to an ASCII k (eve is in no cohort).
    move(registry, ids["eve"], "\u212aIM@example.com")
    for typed, expected in [("Ånn@x.example", ["ann"]), ("kim@example.com", ["eve"])]:
        preview = rollout("notify", "suppress", typed, "--reason", "x", "--format", "json")
        assert preview.exit_code == 0, preview.stderr
        assert json.loads(preview.stdout)["usernames"] == expected, typed
    outbox.suppress(registry, "ånn@x.example", reason="hard bounce", actor="ops")
    outbox.suppress(registry, "ben@bücher.example", reason="hard bounce", actor="ops")

    [previewed] = [
        o
        for o in queue_preview(registry, plan, NOTICE_DAY, late=True)
        if o.occasion.email == "phase_notice"
    ]
    # cat: unverified; dan, ann and ben: suppressed.
    assert (previewed.added, previewed.skipped) == (4, 4)
    queue_late(registry, plan, NOTICE_DAY)
    notices = rows(registry, "phase_notice")
    assert {name: notices[name] for name in ("ann", "ben")} == {
        "ann": ("skipped", "suppressed"),
        "ben": ("skipped", "suppressed"),
    }
    assert sum(state == "skipped" for state, _ in notices.values()) == previewed.skipped
    sender = Recording()
    drain(registry, plan, sender)
    assert sender.sent == []


@postgres_only
def test_the_queue_skips_a_suppressed_address_whatever_the_databases_locale(
    registry: Registry, plan: Plan, ids: dict[str, int], rollout: Any
) -> None:
    """A PostgreSQL database whose locale lower-cases as Turkish does (its lower() makes
    the I of ANNI@X.EXAMPLE a dotless i, U+0131): `notify suppress` finds ann, and the
    queue and its preview skip her notice, suppressed as anni@x.example, as the send
    does. Before, no suppression matched what SQL's lower() made of her address: the
    preview counted her notice as queued, and the send skipped it."""
    with registry.engine.begin() as connection:
        connection.execute(
            text('ALTER TABLE accounts ALTER COLUMN email TYPE varchar(320) COLLATE "tr-x-icu"')
        )
    move(registry, ids["ann"], "ANNI@X.EXAMPLE")
    preview = rollout("notify", "suppress", "anni@x.example", "--reason", "x", "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    assert json.loads(preview.stdout)["usernames"] == ["ann"]
    outbox.suppress(registry, "anni@x.example", reason="hard bounce", actor="ops")

    [previewed] = [
        o
        for o in queue_preview(registry, plan, NOTICE_DAY, late=True)
        if o.occasion.email == "phase_notice"
    ]
    # cat: unverified; dan and ann: suppressed.
    assert (previewed.added, previewed.skipped) == (4, 3)
    queue_late(registry, plan, NOTICE_DAY)
    assert rows(registry, "phase_notice")["ann"] == ("skipped", "suppressed")

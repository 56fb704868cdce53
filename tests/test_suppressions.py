"""SendGrid's suppression lists, on SQLite and PostgreSQL: read whole through the real
client from the local SendGrid server, page by page; copied into the registry so the
emails to bounced, blocked, invalid or complaining addresses are skipped with the
reason, at queueing and at sending; a global unsubscribe recorded but not stopping the
security notices; a list that cannot be read changing nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.dev.sendgrid_api import DEFAULT_API_KEY, DevSendGrid
from rollout.notify import outbox
from rollout.notify.drain import drain
from rollout.notify.message import address_forms
from rollout.notify.senders import SendGridSender
from rollout.notify.suppressions import (
    LISTS,
    SuppressionsUnreadable,
    SyncReport,
    sync_suppressions,
)
from rollout.registry import Registry
from rollout.registry.models import Account, EmailSuppression
from tests.support.outbox import ids, queue_late, rows

__all__ = ["ids"]  # a fixture, used by name

CREATED = 1_640_995_200  # 2022-01-01 00:00 UTC


@pytest.fixture
def sendgrid() -> Iterator[DevSendGrid]:
    with DevSendGrid() as server:
        yield server


def sender_for(server: DevSendGrid) -> SendGridSender:
    return SendGridSender(DEFAULT_API_KEY, server.url, timeout=5, sleep=lambda _: None)


def suppressions(registry: Registry) -> dict[tuple[str, str], str]:
    """{(address, source): reason} of every row."""
    table = EmailSuppression.__table__
    with registry.engine.connect() as connection:
        return {
            (address, source): reason
            for address, source, reason in connection.execute(
                select(table.c.address, table.c.source, table.c.reason)
            )
        }


def bounce(address: str) -> dict[str, object]:
    return {
        "email": address,
        "created": CREATED,
        "reason": "550 5.1.1 no such user",
        "status": "5.1.1",
    }


def test_every_list_is_read_whole_through_its_pages(
    registry: Registry, sendgrid: DevSendGrid
) -> None:
    many = [bounce(f"gone{i}@example.com") for i in range(1_234)]
    sendgrid.suppress(
        {
            "bounces": many,
            "blocks": [
                {"email": "Blocked@Example.com", "created": CREATED, "reason": "IP blocked"}
            ],
            "spam_reports": [{"email": "angry@example.com", "created": CREATED, "ip": "10.0.0.1"}],
            "invalid_emails": [{"email": "nope@", "created": CREATED, "reason": "malformed"}],
            "unsubscribes": [{"email": "quiet@example.com", "created": CREATED}],
        }
    )
    report = sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    # 1,234 bounces: pages of 500, 500 and 234; one short page for each other list.
    assert report.pages == 3 + 4
    assert report.by_source == {
        "bounce": 1_234,
        "block": 1,
        "spam_report": 1,
        "invalid_email": 1,
        "unsubscribe": 1,
    }
    assert (report.added, report.removed) == (1_238, 0)
    found = suppressions(registry)
    assert len(found) == 1_238
    assert found[("gone1233@example.com", "bounce")] == "5.1.1 550 5.1.1 no such user"
    assert found[("blocked@example.com", "block")] == "IP blocked"  # lower-cased
    assert found[("angry@example.com", "spam_report")] == "spam report from 10.0.0.1"
    assert found[("quiet@example.com", "unsubscribe")] == "global unsubscribe"


def test_a_second_sync_replaces_sendgrid_s_rows_and_keeps_those_set_by_hand(
    registry: Registry, sendgrid: DevSendGrid
) -> None:
    outbox.suppress(registry, "hand@example.com", reason="asked by phone", actor="ops")
    sendgrid.suppress({"bounces": [bounce("a@example.com"), bounce("b@example.com")]})
    sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    # Support removed a's bounce; c bounced since.
    sendgrid.suppress({"bounces": [bounce("b@example.com"), bounce("c@example.com")]})
    report = sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    assert (report.added, report.removed) == (1, 1)
    assert set(suppressions(registry)) == {
        ("hand@example.com", "manual"),
        ("b@example.com", "bounce"),
        ("c@example.com", "bounce"),
    }


def test_listed_addresses_longer_than_any_stored_are_left_out_not_cut_into_one(
    registry: Registry, sendgrid: DevSendGrid
) -> None:
    """Two addresses of 330 characters sharing their first 320 were cut to the same
    key, and the sync failed on it (a traceback on PostgreSQL already at one). No
    account's address is that long: they stop no email of ours."""
    long = "x" * 320
    sendgrid.suppress(
        {
            "bounces": [
                bounce(f"{long}a@example.com"),
                bounce(f"{long}b@example.com"),
                bounce("ok@example.com"),
            ]
        }
    )
    report = sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    assert report.by_source["bounce"] == 1
    assert set(suppressions(registry)) == {("ok@example.com", "bounce")}


def test_a_list_that_cannot_be_read_changes_nothing(
    registry: Registry, sendgrid: DevSendGrid
) -> None:
    sendgrid.suppress({"bounces": [bounce("a@example.com")]})
    sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    before = suppressions(registry)
    sendgrid.suppress(
        {"bounces": [], "unsubscribes": [{"email": "new@example.com", "created": CREATED}]}
    )
    # bounces and blocks read; the spam reports refused (a 400 is not retried).
    sendgrid.script_suppression_faults([{"stall": 0.01}, {"stall": 0.01}, {"status": 400}])
    with pytest.raises(SuppressionsUnreadable, match=r"spam_reports list .* nothing was changed"):
        sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    assert suppressions(registry) == before


def test_a_struggling_server_is_retried_and_a_refused_key_says_so(
    registry: Registry, sendgrid: DevSendGrid
) -> None:
    sendgrid.suppress({"bounces": [bounce("a@example.com")]})
    sendgrid.script_suppression_faults([{"status": 503}, {"status": 429, "retry_after": 0}])
    report = sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    assert report.by_source["bounce"] == 1
    wrong = SendGridSender("SG.wrong", sendgrid.url, timeout=5, sleep=lambda _: None)
    with pytest.raises(SuppressionsUnreadable, match=r"bounces list .*401"):
        sync_suppressions(registry, wrong, actor="ops")


def test_emails_to_listed_addresses_are_skipped_with_the_source(
    registry: Registry, plan: Plan, ids: dict[str, int], sendgrid: DevSendGrid
) -> None:
    # ann bounced; ben unsubscribed globally (the notice still goes); dan was suppressed
    # by hand and also reported spam (the reason names one, the same every time).
    sendgrid.suppress(
        {
            "bounces": [bounce("ANN@example.com")],
            "unsubscribes": [{"email": "ben@example.com", "created": CREATED}],
            "spam_reports": [{"email": "dan@example.com", "created": CREATED}],
        }
    )
    sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    queue_late(registry, plan, NOTICE_DAY)
    assert rows(registry) == {
        "ann": ("skipped", "suppressed: bounce"),
        "ben": ("queued", None),
        "cat": ("skipped", "unverified email"),
        "dan": ("skipped", "suppressed"),
    }
    report = drain(registry, plan, sender_for(sendgrid))
    assert report.sent == 1
    [message] = sendgrid.messages
    assert message["body"]["personalizations"][0]["to"][0]["email"] == "ben@example.com"
    # The notice is mandatory: SendGrid is told to deliver it despite the unsubscribe.
    assert message["body"]["mail_settings"] == {"bypass_unsubscribe_management": {"enable": True}}


def test_a_blocked_address_still_gets_its_emails(
    registry: Registry, plan: Plan, ids: dict[str, int], sendgrid: DevSendGrid
) -> None:
    """SendGrid lists a block when a message was refused for its content or the sending
    IP, and sends to the address as usual: one refused message must not stop every
    later notice, the enforcement notice too."""
    sendgrid.suppress(
        {"blocks": [{"email": "ann@example.com", "created": CREATED, "reason": "IP blocked"}]}
    )
    sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    assert ("ann@example.com", "block") in suppressions(registry)  # recorded all the same
    queue_late(registry, plan, NOTICE_DAY)
    assert rows(registry)["ann"] == ("queued", None)
    drain(registry, plan, sender_for(sendgrid))
    assert rows(registry)["ann"] == ("sent", None)


def test_an_address_listed_after_queueing_is_skipped_when_sent(
    registry: Registry, plan: Plan, ids: dict[str, int], sendgrid: DevSendGrid
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    assert rows(registry)["ann"] == ("queued", None)
    sendgrid.suppress(
        {"invalid_emails": [{"email": "ann@example.com", "created": CREATED, "reason": "bad"}]}
    )
    sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    report = drain(registry, plan, sender_for(sendgrid))
    assert report.skipped == {"suppressed: invalid email": 1}
    assert rows(registry)["ann"] == ("skipped", "suppressed: invalid email")
    assert [m["body"]["personalizations"][0]["to"][0]["email"] for m in sendgrid.messages] == [
        "ben@example.com"
    ]


def test_a_bounce_of_an_international_address_stops_its_emails_in_either_form(
    registry: Registry, plan: Plan, ids: dict[str, int], sendgrid: DevSendGrid
) -> None:
    """SendGrid is sent, and lists, the domain in IDNA; the account holds it in
    Unicode. A bounce of ann@xn--bcher-kva.example went on to ann@bücher.example."""
    with registry.engine.begin() as connection:
        connection.execute(
            update(Account).where(Account.id == ids["ann"]).values(email="ann@bücher.example")
        )
    queue_late(registry, plan, NOTICE_DAY)
    sendgrid.suppress({"bounces": [bounce("ann@xn--bcher-kva.example")]})
    sync_suppressions(registry, sender_for(sendgrid), actor="ops")
    drain(registry, plan, sender_for(sendgrid))
    assert rows(registry)["ann"] == ("skipped", "suppressed: bounce")
    assert [m["body"]["personalizations"][0]["to"][0]["email"] for m in sendgrid.messages] == [
        "ben@example.com"
    ]


def test_an_address_s_forms_are_its_idna_and_unicode_domains() -> None:
    assert address_forms("Ann@Bücher.example") == {
        "ann@bücher.example",
        "ann@xn--bcher-kva.example",
    }
    assert address_forms("ann@xn--bcher-kva.example") == {
        "ann@xn--bcher-kva.example",
        "ann@bücher.example",
    }
    assert address_forms("ann@example.com") == {"ann@example.com"}


def test_the_command_syncs_and_needs_a_sendgrid_key(
    rollout_home: Path, sendgrid: DevSendGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    without = runner.invoke(app, ["notify", "sync-suppressions"])
    assert without.exit_code == 2  # a setting missing: bad usage
    assert "no SendGrid key" in without.stderr
    monkeypatch.setenv("SENDGRID_API_KEY", DEFAULT_API_KEY)
    monkeypatch.setenv("ROLLOUT_SENDGRID_URL", sendgrid.url)
    sendgrid.suppress({"bounces": [bounce("a@example.com")]})
    done = runner.invoke(app, ["notify", "sync-suppressions", "--format", "json"])
    assert done.exit_code == 0, done.stderr
    # snake_case keys, as every --format json record: a script reads summary["pages_read"].
    assert json.loads(done.stdout) == {
        "bounces": 1,
        "blocks": 0,
        "spam_reports": 0,
        "invalid_emails": 0,
        "unsubscribes": 0,
        "added": 1,
        "removed": 0,
        "pages_read": 5,
    }


def test_the_lists_are_sendgrid_s_five() -> None:
    from rollout.dev.sendgrid_api import SUPPRESSION_LISTS

    assert set(LISTS) == set(SUPPRESSION_LISTS)
    assert set(LISTS.values()) == set(outbox.SENDGRID_SOURCES)


class _Unpaged:
    """A list server that pages as asked not: the whole list whatever the limit, or the
    first page whatever the offset. Gives up after 50 pages (the reader looped forever)."""

    def __init__(self, entries: list[dict[str, object]], *, honours_limit: bool) -> None:
        self.entries = entries
        self.honours_limit = honours_limit
        self.asked = 0

    def suppression_page(self, list_name: str, limit: int, offset: int) -> list[object]:
        self.asked += 1
        assert self.asked < 50, "the reader kept asking for pages"
        if list_name != "bounces":
            return []
        return self.entries[:limit] if self.honours_limit else list(self.entries)


@pytest.mark.parametrize("honours_limit", [False, True], ids=["whole-list", "offset-ignored"])
def test_a_list_not_paged_as_asked_is_refused_not_read_forever(
    registry: Registry, honours_limit: bool
) -> None:
    server = _Unpaged(
        [bounce(f"gone{i}@example.com") for i in range(3)], honours_limit=honours_limit
    )
    with pytest.raises(SuppressionsUnreadable, match=r"bounces list .* nothing was changed"):
        sync_suppressions(registry, server, actor="ops", page_size=2)  # type: ignore[arg-type]
    assert server.asked <= 2 and suppressions(registry) == {}


def test_two_syncs_at_once_take_turns_and_the_second_finds_the_first_s_copy(
    registry: Registry, sendgrid: DevSendGrid
) -> None:
    """The notify flow's sync and one by hand, at once: the second waits for the first
    to commit, then replaces its rows (on PostgreSQL it inserted the same addresses
    beside the first's, and failed on a duplicate key)."""
    sendgrid.suppress({"bounces": [bounce(f"gone{i}@example.com") for i in range(50)]})
    first_wrote = threading.Event()
    reports: dict[str, SyncReport] = {}
    errors: list[BaseException] = []

    def sync(name: str, own: Registry, **options: Any) -> None:
        try:
            reports[name] = sync_suppressions(own, sender_for(sendgrid), actor=name, **options)
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    def second_writes_once_the_first_has(list_name: str, entries: int) -> None:
        if list_name == "unsubscribes":  # the last list read: its write comes next
            assert first_wrote.wait(timeout=30)

    with Registry(registry.url) as first, Registry(registry.url) as second:

        @event.listens_for(first.engine, "after_cursor_execute")
        def hold_the_write_open(*args: Any) -> None:
            if args[2].lstrip().upper().startswith("INSERT INTO EMAIL_SUPPRESSIONS"):
                first_wrote.set()
                time.sleep(1.0)  # uncommitted, while the second comes to its write

        threads = [
            threading.Thread(target=sync, args=("flow", first)),
            threading.Thread(
                target=sync,
                args=("ops", second),
                kwargs={"progress": second_writes_once_the_first_has},
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert (reports["flow"].added, reports["ops"].added, reports["ops"].removed) == (50, 0, 0)
    found = suppressions(registry)
    assert len(found) == 50 and ("gone49@example.com", "bounce") in found

"""The file outbox writes its .eml bytes directly (senders._eml), not through
EmailMessage: every file must read back with the ``email`` package exactly as the
email package's own writer would have it (headers, recipients, both parts, charset),
hostile values included, and a drain must leave one file per email sent."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

import rollout.notify.drain
from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.notify.drain import drain
from rollout.notify.message import Message, header_address
from rollout.notify.senders import _UNFOLDED, FileSender
from rollout.registry import Registry
from rollout.registry.models import Account, Notification
from tests.factories import AccountFactory, bound_to
from tests.support.outbox import ids, queue_late

from .hostile import EVERYTHING, HEADERS

__all__ = ["ids"]  # a fixture, used by name

BASE = Message(
    outbox_id=7,
    email="phase_notice",
    to_address="ann@example.com",
    to_name="Ann Example",
    subject="Action needed: two-factor authentication will be required",
    text="Hi Ann,\n\nplease enrol.\n",
    html="<!DOCTYPE html>\n<p>Hi Ann,</p>\n",
)

NAMES = [
    *EVERYTHING,
    "Jürgen Müller",
    "李小龍",
    "emoji 🔐 user",
    "=?utf-8?b?ZXZpbA==?=",  # an encoded word must stay text, not be decoded
    '"quoted" \\ back',
    "  spaced  out  ",
    "a" * 300,
    "Ann Example",
    "o'neil",
    "",
]
SUBJECTS = [
    "Plain subject",
    'Re: <b>urgent</b> "quoted" — ünïcödé, Bcc: evil@attacker.example',
    "=?utf-8?q?evil?= looks encoded",
    "tab\tinside",
    "x" * 990,  # past a line in the file: folded by the email package
    "ü" * 400,
    "🔐 " * 50,
]
BODIES = [
    ("plain text\n", "<p>html</p>\n"),
    ("no final newline", "<p>none either</p>"),
    ("ünïcödé and =3D and trailing space   \nnext", "<p>€ 5</p>"),
    ("a" * 2000 + "\nlong line", "<p>" + "b" * 1500 + "</p>"),
    ("cr\rlf\r\nmixed\n", "<p>cr\r</p>"),
    ("--=_rollout_ a boundary-like line\n", "<p>\n--=_rollout_0000\n</p>"),
    ("only text\n", ""),
    ("", "<p>only html</p>\n"),
    ("\u2028line separator\x0bvt\x0cff\n", "<p>\x1b[2K</p>"),
]
ADDRESSES = [
    "ann@example.com",
    "o'neil+2fa@bücher.example",
    "first.last@sub.domain.example",
    "weird!#$%&*/=?^_`{|}~-@example.com",
    '"quoted,local"@example.com',  # not a dot-atom: the email package writes it
    "ann@[127.0.0.1]",
]


def parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)  # type: ignore[return-value]


def lines(text: str) -> list[str]:
    """Content as lines: a CR is a line break in MIME, and a final newline is added."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")


def squeeze(text: str) -> str:
    return " ".join(text.split())


def check_eml(data: bytes, message: Message, sender: FileSender) -> EmailMessage:
    """``data`` parses back, without defects, into exactly ``message``."""
    assert data.isascii(), "an .eml must be 7-bit: non-ASCII goes encoded"
    assert all(len(line) <= 998 for line in data.split(b"\n")), "a line past RFC 5322's 998"
    parsed = parse(data)
    assert not parsed.defects
    assert len(parsed.get_all("To")) == 1 and len(parsed.get_all("From")) == 1
    for header in ("Bcc", "Cc", "Reply-To", "X-Injected"):
        assert parsed.get_all(header) is None
    [to] = parsed["To"].addresses
    assert to.addr_spec == header_address(message.to_address)
    # Whitespace runs in a name may read back as one space (the email package's own
    # writer does that too); everything else is kept.
    assert squeeze(to.display_name) == squeeze(message.header_name or "")
    [sent_by] = parsed["From"].addresses
    assert (sent_by.display_name, sent_by.addr_spec) == (sender.from_name, sender.from_address)
    assert parsed.get_all("Subject") == [message.subject]
    assert parsed["Date"].datetime is not None
    assert parsed["X-Rollout-Outbox-Id"] == str(message.outbox_id)
    assert parsed["X-Rollout-Email"] == message.email
    assert re.fullmatch(r"<[^<>\s]+@[^<>\s]+>", parsed["Message-ID"])
    parts = [p for p in parsed.walk() if p.get_content_maintype() == "text"]
    wanted = [(s, t) for s, t in (("plain", message.text), ("html", message.html)) if t]
    assert [p.get_content_subtype() for p in parts] == [s for s, _ in wanted]
    if len(wanted) == 2:
        assert parsed.get_content_type() == "multipart/alternative"
        assert parsed.get_boundary() and all(not p.defects for p in parts)
    for part, (_, text) in zip(parts, wanted, strict=True):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in ("7bit", "quoted-printable", "base64")
        assert lines(part.get_content()) == lines(text)
    return parsed


def send_and_check(sender: FileSender, message: Message) -> EmailMessage:
    message_id = sender.send(message)
    [path] = [p for p in sender.outbox_dir.iterdir() if p.name.endswith(".eml")]
    assert sorted(p.name for p in sender.outbox_dir.iterdir()) == [path.name]  # no temp file
    parsed = check_eml(path.read_bytes(), message, sender)
    assert parsed["Message-ID"] == message_id
    path.unlink()
    return parsed


def test_an_eml_is_dated_by_the_pipelines_clock(tmp_path: Path) -> None:
    """The demo's 2022 story wrote today's date on every email of 2022."""
    from datetime import UTC, datetime

    from rollout.core.clock import SimulatedClock, use_clock

    with use_clock(SimulatedClock(datetime(2022, 2, 1, 10, 30))):
        parsed = send_and_check(FileSender(tmp_path), BASE)
    assert parsed["Date"].datetime == datetime(2022, 2, 1, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize("name", NAMES)
def test_every_name_reads_back_as_it_was_or_is_left_out(tmp_path: Path, name: str) -> None:
    sender = FileSender(tmp_path, "security@registry.example", "Registry security")
    send_and_check(sender, Message(**{**BASE.__dict__, "to_name": name}))


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_subject_reads_back_as_it_was(tmp_path: Path, subject: str) -> None:
    send_and_check(FileSender(tmp_path), Message(**{**BASE.__dict__, "subject": subject}))


@pytest.mark.parametrize(("text", "html"), BODIES)
def test_both_parts_read_back_with_their_charset_and_encoding(
    tmp_path: Path, text: str, html: str
) -> None:
    send_and_check(FileSender(tmp_path), Message(**{**BASE.__dict__, "text": text, "html": html}))


@pytest.mark.parametrize("address", ADDRESSES)
@pytest.mark.parametrize("name", ["Jürgen", 'Mallory "Admin", <x@y>', ""])
def test_addresses_keep_their_idna_form_and_names(tmp_path: Path, address: str, name: str) -> None:
    message = Message(**{**BASE.__dict__, "to_address": address, "to_name": name})
    send_and_check(FileSender(tmp_path), message)


@pytest.mark.parametrize(
    ("from_address", "from_name"),
    [("noreply@registry.example", "Registry security"), ("sec@bücher.example", "Sécurité")],
)
def test_the_from_header_reads_back(tmp_path: Path, from_address: str, from_name: str) -> None:
    sender = FileSender(tmp_path, header_address(from_address), from_name)
    send_and_check(sender, BASE)


def test_the_direct_writer_agrees_with_the_email_package(tmp_path: Path) -> None:
    """For every hostile name and subject, the bytes written directly and those of
    EmailMessage (the fallback) read back the same. Not for a value that looks like an
    encoded word: EmailMessage writes it as it is and reads it back decoded (the
    direct writer encodes it, so it reads back as it was: see the tests above)."""
    sender = FileSender(tmp_path)
    for name in [n for n in [*NAMES, *HEADERS] if "=?" not in n]:
        for subject in [s for s in SUBJECTS[:4] if "=?" not in s]:
            message = Message(**{**BASE.__dict__, "to_name": name, "subject": subject})
            _, direct = sender.eml(message)
            package = sender.build(message).as_bytes(policy=_UNFOLDED)
            ours, theirs = parse(direct), parse(package)
            for header in ("From", "To", "Subject", "X-Rollout-Email", "X-Rollout-Outbox-Id"):
                assert squeeze(ours[header]) == squeeze(theirs[header]), (header, name, subject)
            assert [squeeze(a.display_name) for a in ours["To"].addresses] == [
                squeeze(a.display_name) for a in theirs["To"].addresses
            ]
            for kind in ("plain", "html"):
                assert (
                    ours.get_body((kind,)).get_content() == theirs.get_body((kind,)).get_content()
                )


# --- through a drain --------------------------------------------------------------------

HOSTILE_USERS = [*EVERYTHING, "Jürgen", "=?utf-8?b?ZXZpbA==?="]


def _hostile_accounts(registry: Registry) -> int:
    """Accounts named with every hostile value the backend can store (PostgreSQL text
    cannot hold NUL, so no registry there can have such a name); returns how many."""
    storable = [
        name
        for name in HOSTILE_USERS
        if registry.engine.dialect.name != "postgresql" or "\x00" not in name
    ]
    with bound_to(registry.engine):
        for i, name in enumerate(storable):
            AccountFactory(
                username=name,
                email=f"user{i}@bücher.example" if i % 2 else f"user.{i}@example.com",
                in_cohort="top-100",
                in_cohort__packages=["<script>alert(1)</script>", "@evil/\"quoted\"'pkg'", "ünï"],
            )
    return len(storable)


def _sent(registry: Registry) -> dict[int, tuple[str, str, str, str]]:
    with registry.engine.connect() as connection:
        return {
            row.id: (row.email, row.address, row.username, row.message_id)
            for row in connection.execute(
                select(
                    Notification.id,
                    Notification.email,
                    Notification.message_id,
                    Account.email.label("address"),
                    Account.username,
                )
                .join(Account, Account.id == Notification.account_id)
                .where(Notification.state == "sent")
            )
        }


def test_a_drain_writes_one_parseable_eml_per_email_sent(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    hostile = _hostile_accounts(registry)
    queue_late(registry, plan, NOTICE_DAY)
    sender = FileSender(tmp_path / "outbox", plan.notifications.from_address)
    calls: list[int] = []
    send = sender.send

    def counted(message: Message) -> str:
        calls.append(message.outbox_id)
        return send(message)

    sender.send = counted  # type: ignore[method-assign]
    report = drain(registry, plan, sender)

    sent = _sent(registry)
    assert report.sent == len(sent) == hostile + 2 and report.failed == 0
    assert sorted(calls) == sorted(sent)  # each sent once
    files = sorted((tmp_path / "outbox").iterdir())
    assert len(files) == len(sent) and all(p.suffix == ".eml" for p in files)  # no temp files
    for outbox_id, (email, address, username, message_id) in sent.items():
        path = sender.path_for(Message(outbox_id, email, address, None, "s", "t", "h"))
        parsed = parse(path.read_bytes())
        assert not parsed.defects
        assert parsed["Message-ID"] == message_id
        [to] = parsed["To"].addresses
        assert to.addr_spec == header_address(address)
        expected = Message(outbox_id, email, address, username, "s", "t", "h").header_name
        assert to.display_name == (expected or "")
        assert parsed["Subject"] and "\n" not in parsed["Subject"]
        assert parsed.get_content_type() == "multipart/alternative"
        assert [p.get_content_charset() for p in parsed.iter_parts()] == ["utf-8", "utf-8"]
        html = parsed.get_body(("html",)).get_content()
        assert "<script>alert(1)</script>" not in html
        if username in HOSTILE_USERS:  # its packages: one is "<script>alert(1)</script>"
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert parsed.get_body(("plain",)).get_content().startswith("Hi ")


def test_rows_left_in_flight_are_written_again_over_their_own_files(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """A crash leaves at most the claimed batch in flight; the next drain writes those
    again, each replacing its own file: still one .eml per email."""
    queue_late(registry, plan, NOTICE_DAY)
    sender = FileSender(tmp_path / "outbox")
    assert drain(registry, plan, sender).sent == 2
    first = {p.name: parse(p.read_bytes())["Message-ID"] for p in sender.outbox_dir.iterdir()}
    with registry.engine.begin() as connection:  # as a drain that died after writing them
        connection.execute(
            update(Notification).where(Notification.state == "sent").values(state="sending")
        )
    report = drain(registry, plan, sender)
    assert (report.resumed, report.sent) == (2, 2)
    again = {p.name: parse(p.read_bytes())["Message-ID"] for p in sender.outbox_dir.iterdir()}
    assert again.keys() == first.keys()  # the same two files, written anew
    assert set(again.values()).isdisjoint(first.values())
    assert set(again.values()) == {m for *_, m in _sent(registry).values()}


def test_a_drain_killed_mid_write_leaves_no_temporary_file_after_the_next(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """Killed between writing a message's temporary file and moving it into place (no
    clean-up runs on SIGKILL), a drain left half a message, hidden, beside the outbox's
    files for good: the rerun writes that email again under its own process's name."""
    queue_late(registry, plan, NOTICE_DAY)
    sender = FileSender(tmp_path / "outbox")
    assert drain(registry, plan, sender, limit=1).sent == 1
    [written] = sender.outbox_dir.iterdir()
    with registry.engine.begin() as connection:  # the other row, claimed when it died
        connection.execute(
            update(Notification).where(Notification.state == "queued").values(state="sending")
        )
    [(outbox_id, email)] = _rows_in(registry, "sending")
    name = sender.path_for(Message(outbox_id, email, "x@example.com", None, "s", "t", "h")).name
    half = sender.outbox_dir / f".{name}.4194303.140000000000000.tmp"  # its pid and thread
    half.write_bytes(b"From: Registry security <security@registry.example>\nSubj")
    report = drain(registry, plan, sender)
    assert (report.resumed, report.sent) == (1, 1)
    assert sorted(p.name for p in sender.outbox_dir.iterdir()) == sorted([written.name, name])


def _rows_in(registry: Registry, state: str) -> list[tuple[int, str]]:
    with registry.engine.connect() as connection:
        return [
            (row.id, row.email)
            for row in connection.execute(
                select(Notification.id, Notification.email).where(Notification.state == state)
            )
        ]


def test_the_file_outbox_claims_a_bigger_batch_than_the_concurrency(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file outbox claims FILE_BATCH rows at once (no network: threads only cost);
    while it writes, no more than that are in flight."""
    with bound_to(registry.engine):
        for i in range(30):
            AccountFactory(username=f"u{i}", in_cohort="top-100", in_cohort__packages=["p"])
    queue_late(registry, plan, NOTICE_DAY)
    monkeypatch.setattr(rollout.notify.drain, "FILE_BATCH", 12)
    in_flight: list[int] = []
    sender = FileSender(tmp_path / "outbox")
    send = sender.send

    def watched(message: Message) -> Any:
        with registry.engine.connect() as connection:
            in_flight.append(
                len(
                    connection.execute(
                        select(Notification.id).where(Notification.state == "sending")
                    ).all()
                )
            )
        return send(message)

    sender.send = watched  # type: ignore[method-assign]
    report = drain(registry, plan, sender, concurrency=2)
    assert report.sent == 32
    assert max(in_flight) == 12 and min(in_flight) >= 8  # 12, 12, then the last 8

"""Senders: SendGrid through the official client against the dev server, and the file outbox."""

from __future__ import annotations

import http.server
import logging
import os
import random
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from rollout.core.config import load_settings
from rollout.core.controls import quoted
from rollout.dev.sendgrid_api import DevSendGrid, parse_fault
from rollout.notify.drain import lease_for
from rollout.notify.message import MAY_HAVE_GONE, DeliveryFailed, Message, address_forms
from rollout.notify.senders import (
    REDACTED,
    FileSender,
    SenderMisconfigured,
    SendGridSender,
    _http_error_outcome,
    header_problem,
    make_sender,
)

from .hostile import HEADERS

MESSAGE = Message(
    outbox_id=42,
    email="phase-notice",
    to_address="ann@example.com",
    to_name="Ann Example",
    subject="Two-factor authentication is coming",
    text="Hello Ann,\nplease enrol.",
    html="<p>Hello Ann,</p><p>please enrol.</p>",
)


def message(**changes: Any) -> Message:
    return Message(**{**MESSAGE.__dict__, **changes})


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib would send even 127.0.0.1 through a proxy configured in the environment.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def dev() -> Iterator[DevSendGrid]:
    with DevSendGrid() as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(dev: DevSendGrid, sleeps: list[float]) -> Callable[..., SendGridSender]:
    """A sender pointed at the dev server, whose sleeps are recorded instead of slept."""

    def build(**kwargs: Any) -> SendGridSender:
        kwargs.setdefault("api_key", dev.api_key)
        kwargs.setdefault("base_url", dev.url)
        kwargs.setdefault("timeout", 2.0)
        return SendGridSender(sleep=sleeps.append, rng=random.Random(7), **kwargs)

    return build


# --- SendGrid: the happy path -------------------------------------------------------------


def test_sends_and_returns_the_message_id(dev: DevSendGrid, make: Callable[..., Any]) -> None:
    message_id = make().send(MESSAGE)

    [record] = dev.messages
    assert message_id == record["message_id"]
    body = record["body"]
    assert body["personalizations"] == [
        {"to": [{"email": "ann@example.com", "name": "Ann Example"}]}
    ]
    assert body["from"] == {"email": "noreply@registry.example", "name": "Registry security"}
    assert body["subject"] == MESSAGE.subject
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert [c["value"] for c in body["content"]] == [MESSAGE.text, MESSAGE.html]
    assert body["custom_args"] == {"outbox_id": "42", "email_name": "phase-notice"}
    assert body["categories"] == ["phase-notice"]


def test_recipient_without_name_and_custom_from(dev: DevSendGrid, make: Callable) -> None:
    sender = make(from_address="security@registry.example", from_name="Security team")
    sender.send(message(to_name=None, to_address="bob@example.com"))

    body = dev.messages[0]["body"]
    assert body["personalizations"][0]["to"] == [{"email": "bob@example.com"}]
    assert body["from"] == {"email": "security@registry.example", "name": "Security team"}


def test_html_only_message(dev: DevSendGrid, make: Callable) -> None:
    make().send(message(text=""))
    assert [c["type"] for c in dev.messages[0]["body"]["content"]] == ["text/html"]


def test_repr_does_not_show_the_key(dev: DevSendGrid, make: Callable) -> None:
    assert dev.api_key not in repr(make())


def test_an_empty_key_is_refused() -> None:
    # The official client would quietly fall back to $SENDGRID_API_KEY.
    with pytest.raises(ValueError):
        SendGridSender("", "http://127.0.0.1:9")


# --- SendGrid: faults -----------------------------------------------------------------------


def test_429_waits_for_retry_after(dev: DevSendGrid, make: Callable, sleeps: list) -> None:
    dev.script([{"status": 429, "retry_after": 1}])
    message_id = make().send(MESSAGE)

    assert sleeps == [1.0]
    assert dev.requests_seen == 2
    assert [m["message_id"] for m in dev.messages] == [message_id]


def test_retry_after_is_capped(dev: DevSendGrid, make: Callable, sleeps: list) -> None:
    dev.script([{"status": 429, "retry_after": 600}])
    make(backoff_cap=5.0).send(MESSAGE)
    assert sleeps == [5.0]


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "nan"}, {"Retry-After": "NaN"}, {"X-RateLimit-Reset": "nan"}],
    ids=["retry-after", "retry-after-case", "rate-limit-reset"],
)
def test_a_429_whose_wait_is_not_a_number_waits_the_backoff(
    make: Callable, sleeps: list, headers: dict[str, str]
) -> None:
    """float() reads 'nan', and max(nan, 0) is nan: the sleep raised ValueError in the
    send thread, which stopped the whole drain with a traceback."""
    outcome = _http_error_outcome(429, b"", headers)
    assert outcome.retryable and outcome.retry_after is None
    sender = make(backoff_base=0.5)
    assert 0 <= sender._delay(1, outcome.retry_after) <= 0.5


def test_the_dev_server_refuses_a_wait_that_is_not_a_finite_number() -> None:
    for wait in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="retry_after"):
            parse_fault({"status": 429, "retry_after": wait})


def test_500_then_success(dev: DevSendGrid, make: Callable, sleeps: list) -> None:
    dev.script([{"status": 500}])
    message_id = make(backoff_base=0.5).send(MESSAGE)

    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= 0.5  # full jitter within the first backoff step
    assert [m["message_id"] for m in dev.messages] == [message_id]


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_that_got_no_answer_from_sendgrid_is_not_sent_again(
    dev: DevSendGrid, make: Callable, sleeps: list, status: int
) -> None:
    """A 504 (or 502) comes from the gateway in front of Mail Send: the request reached
    it, and its answer did not come back, as with a read timeout. SendGrid may have
    taken the message; retrying it sent the email twice."""
    dev.script([{"status": status}])
    with pytest.raises(DeliveryFailed) as caught:
        make().send(MESSAGE)
    assert not caught.value.permanent
    assert f"SendGrid answered {status}" in caught.value.reason
    assert MAY_HAVE_GONE in caught.value.reason
    assert dev.requests_seen == 1 and sleeps == []


def test_a_suppression_page_a_gateway_failed_is_read_again(
    dev: DevSendGrid, make: Callable, sleeps: list
) -> None:
    dev.script_suppression_faults([{"status": 504}])
    assert make().suppression_page("bounces", 500, 0) == []
    assert len(sleeps) == 1


def test_backoff_grows_exponentially_with_full_jitter(
    dev: DevSendGrid, make: Callable, sleeps: list
) -> None:
    dev.script([{"status": 503}] * 4)
    make(backoff_base=1.0, backoff_cap=6.0).send(MESSAGE)

    ceilings = [1.0, 2.0, 4.0, 6.0]
    assert len(sleeps) == 4
    assert all(0 <= slept <= ceiling for slept, ceiling in zip(sleeps, ceilings, strict=True))


def test_no_answer_after_the_request_went_is_not_sent_again(
    dev: DevSendGrid, make: Callable, sleeps: list
) -> None:
    """The stalled request is answered 202 after the client gave up: SendGrid took it.
    Sending again sent it twice (Mail Send has no idempotency key), so the email fails,
    saying it may have gone and how to send it if it did not."""
    dev.script([{"stall": 1.5}])
    with pytest.raises(DeliveryFailed) as caught:
        make(timeout=0.5).send(MESSAGE)

    assert not caught.value.permanent and sleeps == []
    assert caught.value.reason.startswith(
        "no answer from SendGrid within 0.5s after the request went: SendGrid may have sent it"
    )
    assert "--retry-failed" in caught.value.reason
    records = dev.wait_for_messages(1, timeout=3)
    assert dev.requests_seen == 1 and len(records) == 1
    assert records[0]["body"]["custom_args"]["outbox_id"] == "42"


def test_a_connection_dropped_before_the_answer_is_not_sent_again(
    dev: DevSendGrid, make: Callable, sleeps: list
) -> None:
    dev.script([{"drop": True}])
    with pytest.raises(DeliveryFailed, match="closed the connection without answering after"):
        make().send(MESSAGE)
    assert sleeps == [] and dev.requests_seen == 1


def test_a_connection_refused_is_retried_then_sent() -> None:
    """Refused before the request went: nothing for SendGrid to act on, so retrying is
    safe; the server comes up during the backoff and the email goes once."""
    port = _closed_port()
    dev = DevSendGrid(port=port)
    waits: list[float] = []

    def come_up(seconds: float) -> None:
        waits.append(seconds)
        dev.start()

    sender = SendGridSender(dev.api_key, f"http://127.0.0.1:{port}", timeout=2.0, sleep=come_up)
    try:
        message_id = sender.send(MESSAGE)
        assert len(waits) == 1 and [m["message_id"] for m in dev.messages] == [message_id]
    finally:
        dev.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://[::1"])
def test_a_url_no_request_can_go_to_stops_the_send_as_misconfigured(url: str, sleeps: list) -> None:
    """Not 'after the request went: SendGrid may have sent it' (nothing went), nor a
    ValueError out of the send thread: the settings are wrong for every email."""
    with pytest.raises(SenderMisconfigured) as caught:
        SendGridSender("SG.test-key-not-real.abcdefgh", url, sleep=sleeps.append).send(MESSAGE)
    assert "may have sent" not in caught.value.reason and "URL" in caught.value.reason
    assert sleeps == []


class _Stub:
    """A server answering every request with one status and headers (a 200 with ``[]``
    for a body: a front page, an empty list): what it was asked, with the Authorization
    header it got."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def do_GET(self) -> None:
                stub.seen.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Callable[..., _Stub]]:
    made: list[_Stub] = []

    def start(status: int, **headers: str) -> _Stub:
        made.append(_Stub(status, headers))
        return made[-1]

    yield start
    for server in made:
        server.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_stops_the_send_as_misconfigured_and_is_not_followed(
    stub: Callable[..., _Stub], status: int, sleeps: list
) -> None:
    """urllib followed a 301/302/303 with a GET of the new place, without the email, and
    its 200 was taken for SendGrid's: the email recorded sent, none sent; and the key went
    along to wherever the redirect pointed."""
    elsewhere = stub(200)
    server = stub(status, Location=f"{elsewhere.url}/front")
    sender = SendGridSender("SG.test-key-not-real.abcdefgh", server.url, sleep=sleeps.append)
    with pytest.raises(SenderMisconfigured) as caught:
        sender.send(MESSAGE)
    assert f"answered {status}" in caught.value.reason and not caught.value.permanent
    assert [method for method, _, _ in server.seen] == ["POST"] and elsewhere.seen == []
    assert sleeps == []


@pytest.mark.parametrize("status", [406, 407, 410, 415, 426])
def test_a_refusal_that_says_nothing_of_the_email_stops_the_send_as_misconfigured(
    dev: DevSendGrid, make: Callable, sleeps: list, status: int
) -> None:
    """Every email would be refused alike (a proxy wanting its own credentials, an API
    answering another content type): not a failure of this email for good."""
    dev.script([{"status": status}])
    with pytest.raises(SenderMisconfigured) as caught:
        make().send(MESSAGE)
    assert not caught.value.permanent and f"answered {status}" in caught.value.reason
    assert sleeps == [] and dev.requests_seen == 1


def test_a_suppression_page_behind_a_redirect_is_not_read_there(
    stub: Callable[..., _Stub], sleeps: list
) -> None:
    elsewhere = stub(200)
    server = stub(307, Location=f"{elsewhere.url}/v3/suppression/bounces")
    sender = SendGridSender("SG.test-key-not-real.abcdefgh", server.url, sleep=sleeps.append)
    with pytest.raises(SenderMisconfigured):
        sender.suppression_page("bounces", 500, 0)
    assert elsewhere.seen == []  # the key never went to the other host


def test_400_is_permanent_with_the_reason(dev: DevSendGrid, make: Callable, sleeps: list) -> None:
    dev.script([{"status": 400}])
    with pytest.raises(DeliveryFailed) as caught:
        make().send(MESSAGE)

    assert caught.value.permanent
    assert "400" in caught.value.reason
    assert "bad request" in caught.value.reason
    assert sleeps == []
    assert dev.requests_seen == 1


def test_validation_error_reason_names_the_field(dev: DevSendGrid, make: Callable) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        make(from_address="not-an-address").send(MESSAGE)

    assert caught.value.permanent
    assert caught.value.reason == (
        "SendGrid answered 400: from.email: The from email does not contain a valid address."
    )


def test_retries_exhausted_is_not_permanent(dev: DevSendGrid, make: Callable, sleeps: list) -> None:
    dev.script([{"status": 500}] * 3)
    with pytest.raises(DeliveryFailed) as caught:
        make(max_attempts=3).send(MESSAGE)

    assert not caught.value.permanent
    assert caught.value.reason.startswith("gave up after 3 attempts: SendGrid answered 500")
    assert len(sleeps) == 2
    assert dev.requests_seen == 3
    assert dev.messages == []


def test_wrong_key_fails_fast_as_misconfiguration(
    dev: DevSendGrid, make: Callable, sleeps: list
) -> None:
    with pytest.raises(SenderMisconfigured) as caught:
        make(api_key="SG.not-the-right.key").send(MESSAGE)

    # Not the message's fault: it must stay sendable once the key is fixed.
    assert not caught.value.permanent
    assert "401" in caught.value.reason
    assert sleeps == []


def test_unreachable_server_is_retried_then_not_permanent(make: Callable, sleeps: list) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        make(base_url=f"http://127.0.0.1:{_closed_port()}", max_attempts=2).send(MESSAGE)

    assert not caught.value.permanent
    assert "could not reach SendGrid" in caught.value.reason
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"subject": "Hi\r\nBcc: evil@example.com"}, "subject"),
        ({"to_address": "ann@example.com\r\nBcc: evil@example.com"}, "invalid recipient"),
        ({"text": "", "html": ""}, "neither text nor HTML"),
        ({"text": "SG.abcdefgh.ijklmnop is a key"}, "API Key"),
    ],
)
def test_unsendable_messages_fail_permanently_without_a_request(
    dev: DevSendGrid, make: Callable, changes: dict[str, str], words: str
) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        make().send(message(**changes))

    assert caught.value.permanent
    assert words in caught.value.reason
    assert dev.requests_seen == 0


# --- SendGrid: the key never leaks ----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


FAILURES = {
    "unauthorized": [],  # the server expects another key
    "bad-request": [{"status": 400}],
    "rate-limited": [{"status": 429, "retry_after": 0}] * 2,
    "server-error": [{"status": 500}] * 2,
    "timeout": [{"stall": 2}] * 2,
    "dropped": [{"drop": True}] * 2,
    "refused": None,  # nothing listening
}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_the_api_key_never_leaks(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    key = f"SG.Distinctive-{uuid.uuid4().hex}.Secret-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    server_key = "SG.some-other.key" if kind == "unauthorized" else key
    with DevSendGrid(server_key) as dev:
        faults = FAILURES[kind]
        url = f"http://127.0.0.1:{_closed_port()}" if faults is None else dev.url
        dev.script(faults or [])
        sender = SendGridSender(key, url, timeout=0.3, max_attempts=2, sleep=lambda _: None)
        with pytest.raises(DeliveryFailed) as caught:
            sender.send(MESSAGE)

    failure = caught.value
    shown = [
        str(failure),
        repr(failure),
        failure.reason,
        "".join(traceback.format_exception(failure)),
        caplog.text,
        *(record.getMessage() for record in caplog.records),
    ]
    assert not any(key in text for text in shown)
    # Nothing from the client is chained on (its frames hold the request and its headers).
    assert failure.__cause__ is None and failure.__context__ is None
    # The client did log its headers, with the key redacted.
    assert any("HEADERS" in r.getMessage() and REDACTED in r.getMessage() for r in caplog.records)


def test_a_key_echoed_by_the_server_is_redacted() -> None:
    key = f"SG.Echoed-{uuid.uuid4().hex}.Key"
    SendGridSender(key, "http://127.0.0.1:9")  # registers the key with the redactor
    body = f'{{"errors": [{{"message": "bad header Authorization: Bearer {key}"}}]}}'
    outcome = _http_error_outcome(400, body.encode(), {})
    assert key not in outcome.reason
    assert REDACTED in outcome.reason


# --- the file outbox ---------------------------------------------------------------------


def parse(path: Path) -> Any:
    return BytesParser(policy=policy.default).parse(path.open("rb"))


def test_file_sender_writes_a_parseable_multipart_email(tmp_path: Path) -> None:
    sender = FileSender(tmp_path / "outbox")
    message_id = sender.send(MESSAGE)

    path = tmp_path / "outbox" / "00000042-phase-notice.eml"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files
    parsed = parse(path)
    assert parsed["Message-ID"] == message_id
    assert parsed["From"].addresses[0].addr_spec == "noreply@registry.example"
    assert parsed["From"].addresses[0].display_name == "Registry security"
    assert parsed["To"].addresses[0].addr_spec == "ann@example.com"
    assert parsed["To"].addresses[0].display_name == "Ann Example"
    assert parsed["Subject"] == MESSAGE.subject
    assert parsed["Date"].datetime is not None
    assert parsed["X-Rollout-Outbox-Id"] == "42"
    assert parsed.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in parsed.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert parsed.get_body(("plain",)).get_content().rstrip("\n") == MESSAGE.text
    assert parsed.get_body(("html",)).get_content().rstrip("\n") == MESSAGE.html


def test_file_sender_html_only(tmp_path: Path) -> None:
    sender = FileSender(tmp_path)
    sender.send(message(text=""))
    parsed = parse(sender.path_for(MESSAGE))
    assert parsed.get_content_type() == "text/html"


def test_hostile_but_printable_values_stay_inside_their_headers(tmp_path: Path) -> None:
    sender = FileSender(tmp_path)
    hostile = message(
        to_name='Mallory "Admin" <script>alert(1)</script> evil@attacker.example',
        subject='Re: <b>urgent</b> "quoted" — ünïcödé, Bcc: evil@attacker.example',
        email="../../etc/passwd",
    )
    sender.send(hostile)

    [path] = tmp_path.iterdir()
    assert path.name == "00000042-etc_passwd.eml"
    parsed = parse(path)
    [recipient] = parsed["To"].addresses
    assert recipient.addr_spec == "ann@example.com"
    assert recipient.display_name == hostile.to_name
    assert parsed["Subject"] == hostile.subject
    assert parsed["Bcc"] is None
    assert parsed["Cc"] is None


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hello\r\nBcc: evil@attacker.example"},
        {"subject": "Hello\nX-Injected: yes"},
        {"to_address": "ann@example.com\nBcc: evil@attacker.example"},
        # A dot-atom a reader would decode into another address ("victim@evil.example"@…):
        # refused, as the email package refuses it, never written as it is.
        {"to_address": "=?utf-8?q?victim=40evil.example?=@x.example"},
    ],
)
def test_header_injection_fails_the_message_permanently(
    tmp_path: Path, changes: dict[str, str]
) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        FileSender(tmp_path).send(message(**changes))
    assert caught.value.permanent
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [*HEADERS, "Ann\tExample", "Ann\u2028Example"])
def test_a_name_with_control_characters_is_left_out_not_refused(tmp_path: Path, name: str) -> None:
    sender = FileSender(tmp_path)
    sender.send(message(to_name=name))

    parsed = parse(sender.path_for(MESSAGE))
    [recipient] = parsed["To"].addresses
    assert (recipient.addr_spec, recipient.display_name) == ("ann@example.com", "")
    assert parsed["Bcc"] is None and parsed["X-Injected"] is None
    body = SendGridSender("SG.test-key-not-real.abcdefgh").request_body(message(to_name=name))
    assert body["personalizations"][0]["to"] == [{"email": "ann@example.com"}]


@pytest.mark.parametrize(
    "name", ["Doe, Jane", "evil@attacker.example; Ann", '"q" <x@y.example>, z']
)
def test_a_name_sendgrid_refuses_is_left_out_in_both_senders(
    tmp_path: Path, dev: DevSendGrid, make: Callable, name: str
) -> None:
    """SendGrid's limits forbid ``,`` and ``;`` in a recipient's name: the address alone
    goes, to SendGrid and into the .eml that stands for it."""
    sender = FileSender(tmp_path)
    sender.send(message(to_name=name))
    [recipient] = parse(sender.path_for(MESSAGE))["To"].addresses
    assert (recipient.addr_spec, recipient.display_name) == ("ann@example.com", "")
    make().send(message(to_name=name))
    [request] = dev.messages
    assert request["body"]["personalizations"][0]["to"] == [{"email": "ann@example.com"}]


def test_the_dev_server_refuses_a_recipient_name_with_a_comma_as_sendgrid_does(
    dev: DevSendGrid, make: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Message, "header_name", property(lambda self: self.to_name))
    with pytest.raises(DeliveryFailed) as caught:
        make().send(message(to_name="Doe, Jane"))
    assert caught.value.permanent
    assert caught.value.reason == (
        "SendGrid answered 400: personalizations.0.to.0.name: "
        "The to.name cannot include either the ; or , characters."
    )


def test_an_internationalised_domain_is_written_in_its_idna_form(tmp_path: Path) -> None:
    sender = FileSender(tmp_path)
    sender.send(message(to_address="o'neil+2fa@bücher.example", to_name="Jürgen"))

    raw = sender.path_for(MESSAGE).read_bytes()
    assert b"=?utf-8?" not in raw.split(b"\nTo: ")[1].split(b"\n")[0].split(b"<")[1]
    [recipient] = parse(sender.path_for(MESSAGE))["To"].addresses
    assert recipient.addr_spec == "o'neil+2fa@xn--bcher-kva.example"
    assert recipient.display_name == "Jürgen"
    body = SendGridSender("SG.test-key-not-real.abcdefgh").request_body(
        message(to_address="ann@bücher.example")
    )
    assert body["personalizations"][0]["to"][0]["email"] == "ann@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("domain", "sent_to", "not_to"),
    [
        ("faß.example", "xn--fa-hia.example", "fass.example"),
        ("Faß.Example", "xn--fa-hia.example", "fass.example"),
        ("ςκύλος.example", "xn--vxacmjd7d.example", "xn--vxacmnd1d.example"),
    ],
)
def test_a_domain_is_encoded_as_registries_do_not_mapped_to_another(
    tmp_path: Path, domain: str, sent_to: str, not_to: str
) -> None:
    """Python's "idna" codec is IDNA 2003, which maps ß to ss and a final sigma to
    sigma: the notice for ann@faß.example went to ann@fass.example, someone else's
    domain. Registries and mail servers use IDNA 2008, which keeps them (xn--fa-hia)."""
    to = f"ann@{domain}"
    body = SendGridSender("SG.test-key-not-real.abcdefgh").request_body(message(to_address=to))
    assert body["personalizations"][0]["to"][0]["email"] == f"ann@{sent_to}"
    sender = FileSender(tmp_path)
    sender.send(message(to_address=to))
    [recipient] = parse(sender.path_for(MESSAGE))["To"].addresses
    assert recipient.addr_spec == f"ann@{sent_to}"
    # A suppression of either form of the address stops it; of the other domain, not.
    forms = address_forms(to)
    assert f"ann@{sent_to}" in forms and f"ann@{domain.lower()}" in forms
    assert f"ann@{not_to}" not in forms
    assert address_forms(f"ann@{sent_to}") >= {f"ann@{domain.lower()}"}


def test_an_emoji_domain_idna_2008_refuses_is_still_sent_in_its_idna_2003_form() -> None:
    body = SendGridSender("SG.test-key-not-real.abcdefgh").request_body(
        message(to_address="ann@i❤.example")
    )
    assert body["personalizations"][0]["to"][0]["email"] == "ann@xn--i-7iq.example"


def test_a_domain_idna_cannot_encode_fails_permanently(tmp_path: Path) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        FileSender(tmp_path).send(message(to_address="ann@" + "ü" * 70 + ".example"))
    assert caught.value.permanent and "IDNA" in caught.value.reason


@pytest.mark.parametrize("address", ["amir@example.com\n", "amir@example.com\r", "a\n@b.example"])
def test_an_address_with_a_line_break_anywhere_fails_before_any_sender(address: str) -> None:
    """A trailing line feed passed a check ending in `$` and went to SendGrid."""
    assert header_problem(message(to_address=address)) == (
        f"invalid recipient address {quoted(address)}"
    )


def test_an_address_whose_domain_idna_cannot_encode_is_named_quoted() -> None:
    """The failure reason a send's row keeps names the recipient as every message names a
    value: quoted (Python's ``repr`` put one holding a quote in double quotes)."""
    address = "o'neil@" + "ü" * 70 + ".example"
    assert header_problem(message(to_address=address)) == (
        f"invalid recipient address {quoted(address)} (its domain is not IDNA)"
    )


def test_a_subject_holding_a_line_break_is_named_quoted() -> None:
    """The failure reason names the subject as every message names a value (quoted):
    Python's repr put one holding a quote in double quotes and showed CR as ``\\r``."""
    subject = "Ann's 2FA\r\nBcc: victim@example.com"
    assert header_problem(message(subject=subject)) == (
        f"subject contains control characters (CR/LF?): {quoted(subject)}"
    )


def test_an_address_the_parser_refuses_fails_permanently(tmp_path: Path) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        FileSender(tmp_path).send(message(to_address="ann@[unclosed"))
    assert caught.value.permanent
    assert "cannot build the email" in caught.value.reason


def test_a_failed_write_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(DeliveryFailed) as caught:
        FileSender(tmp_path).send(MESSAGE)

    assert not caught.value.permanent  # the message is fine; the disk may not be
    assert list(tmp_path.iterdir()) == []


def test_emails_the_outbox_cannot_take_fail_with_one_reason(tmp_path: Path) -> None:
    """Each named its own temporary file: a hundred failures, a hundred reasons."""
    from rollout.notify.outbox import failure_reason

    blocked = tmp_path / "outbox"
    blocked.write_text("a file where the folder should be")
    reasons = set()
    for outbox_id in (1, 2):
        with pytest.raises(DeliveryFailed) as caught:
            FileSender(blocked).send(message(outbox_id=outbox_id))
        reasons.add(failure_reason(caught.value.reason))
    assert reasons == {f"cannot write to {blocked}: Not a directory"}


def test_sending_again_replaces_the_file(tmp_path: Path) -> None:
    sender = FileSender(tmp_path)
    sender.send(MESSAGE)
    second = sender.send(message(subject="Updated"))
    [path] = tmp_path.iterdir()
    assert parse(path)["Message-ID"] == second
    assert parse(path)["Subject"] == "Updated"


# --- choosing a sender -----------------------------------------------------------------


def test_make_sender_defaults_to_the_file_outbox(tmp_path: Path) -> None:
    settings = load_settings({"ROLLOUT_HOME": str(tmp_path), "SENDGRID_API_KEY": ""})
    sender = make_sender(settings)
    assert isinstance(sender, FileSender)
    assert sender.name == "file"
    assert sender.outbox_dir == tmp_path / "outbox"


def test_make_sender_uses_sendgrid_when_a_key_is_set(tmp_path: Path, dev: DevSendGrid) -> None:
    settings = load_settings(
        {
            "ROLLOUT_HOME": str(tmp_path),
            "SENDGRID_API_KEY": dev.api_key,
            "ROLLOUT_SENDGRID_URL": dev.url,
        }
    )
    sender = make_sender(settings)
    assert isinstance(sender, SendGridSender)
    assert sender.name == "sendgrid"
    assert sender.send(MESSAGE) == dev.messages[0]["message_id"]
    assert (sender.timeout, sender.backoff_cap) == (10, 30)  # the documented defaults


def test_the_sendgrid_waits_set_bound_an_attempt_and_so_the_drain_s_lease(
    tmp_path: Path, dev: DevSendGrid
) -> None:
    """An operator shortens the client's timeout and its longest wait before a retry:
    an attempt is bounded by them, and a dead drainer's rows are taken over sooner."""
    settings = load_settings(
        {
            "ROLLOUT_HOME": str(tmp_path),
            "SENDGRID_API_KEY": dev.api_key,
            "ROLLOUT_SENDGRID_URL": dev.url,
            "ROLLOUT_SENDGRID_TIMEOUT_SECONDS": "2.5",
            "ROLLOUT_SENDGRID_RETRY_WAIT_SECONDS": "4",
        }
    )
    sender = make_sender(settings)
    assert isinstance(sender, SendGridSender)
    assert (sender.timeout, sender.backoff_cap) == (2.5, 4)
    assert sender.longest_attempt == 2 * 2.5 + 4
    assert lease_for(sender, timedelta(seconds=5)) == timedelta(seconds=27)  # (9 + 15) / 0.9
    # A Retry-After asking for longer is capped to the wait set.
    dev.script([{"status": 429, "retry_after": 120}])
    waits: list[float] = []
    sender._sleep = waits.append
    assert sender.send(MESSAGE)
    assert waits == [4]

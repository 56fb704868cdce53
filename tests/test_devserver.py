"""The local SendGrid stand-in: auth, Mail Send validation, recording and fault injection.

These talk plain HTTP to the server (http.client), independently of the SendGrid client,
which tests/test_senders.py exercises against it.
"""

from __future__ import annotations

import copy
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from rollout.dev.sendgrid_api import DEFAULT_SCOPES, DevSendGrid, parse_fault, validate_mail

KEY = "SG.test-devserver.key"


def valid_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "ann@example.com", "name": "Ann"}]}],
        "from": {"email": "noreply@registry.example", "name": "Registry security"},
        "subject": "Two-factor authentication is coming",
        "content": [
            {"type": "text/plain", "value": "Hello"},
            {"type": "text/html", "value": "<p>Hello</p>"},
        ],
        "custom_args": {"outbox_id": "42", "email": "phase-notice"},
        "categories": ["phase-notice"],
    }
    body.update(overrides)
    return body


def request(
    dev: DevSendGrid,
    method: str,
    path: str,
    body: object = None,
    *,
    key: str | None = KEY,
    content_type: str = "application/json",
    raw: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, http.client.HTTPMessage, Any]:
    """(status, headers, parsed JSON body or None)."""
    parts = urlsplit(dev.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        return response.status, response.headers, json.loads(payload) if payload else None
    finally:
        connection.close()


def send(dev: DevSendGrid, body: object = None, **kwargs: Any) -> tuple[int, Any, Any]:
    return request(dev, "POST", "/v3/mail/send", valid_body() if body is None else body, **kwargs)


def fields(payload: dict[str, Any]) -> list[str | None]:
    return [item["field"] for item in payload["errors"]]


@pytest.fixture
def dev() -> Iterator[DevSendGrid]:
    with DevSendGrid(KEY) as server:
        yield server


# --- the happy path ---------------------------------------------------------------------


def test_accepts_valid_mail_with_202_and_a_message_id(dev: DevSendGrid) -> None:
    status, headers, payload = send(dev)

    assert status == 202
    assert payload is None
    message_id = headers["X-Message-Id"]
    assert message_id
    [record] = dev.messages
    assert record["message_id"] == message_id
    assert record["body"] == valid_body()
    assert record["received_at"].endswith("+00:00")
    assert dev.requests_seen == 1


def test_message_ids_are_unique(dev: DevSendGrid) -> None:
    ids = {send(dev)[1]["X-Message-Id"] for _ in range(5)}
    assert len(ids) == 5


def test_appends_one_json_line_per_accepted_request(tmp_path: Path) -> None:
    record_path = tmp_path / "sent" / "messages.jsonl"
    with DevSendGrid(KEY, record_path=record_path) as dev:
        send(dev)
        send(dev, valid_body(subject="Second"))
        send(dev, valid_body(subject=""))  # rejected: not recorded

    lines = [json.loads(line) for line in record_path.read_text().splitlines()]
    assert [line["body"]["subject"] for line in lines] == [
        "Two-factor authentication is coming",
        "Second",
    ]


def test_dev_messages_lists_and_clears(dev: DevSendGrid) -> None:
    send(dev)
    status, _, listing = request(dev, "GET", "/dev/messages")
    assert status == 200
    assert [m["body"]["custom_args"]["outbox_id"] for m in listing] == ["42"]

    status, _, _ = request(dev, "DELETE", "/dev/messages")
    assert status == 204
    assert dev.messages == []
    assert request(dev, "GET", "/dev/messages")[2] == []


# --- authentication and transport --------------------------------------------------------


def test_missing_key_is_401(dev: DevSendGrid) -> None:
    status, _, payload = send(dev, key=None)
    assert status == 401
    assert payload == {
        "errors": [{"message": "authorization required", "field": None, "help": None}]
    }
    assert dev.messages == []


def test_wrong_key_is_401(dev: DevSendGrid) -> None:
    status, _, payload = send(dev, key="SG.wrong.key")
    assert status == 401
    assert "invalid, expired, or revoked" in payload["errors"][0]["message"]
    assert dev.messages == []
    assert dev.requests_seen == 1


def test_malformed_json_is_400(dev: DevSendGrid) -> None:
    status, _, payload = send(dev, raw=b'{"personalizations": [')
    assert status == 400
    assert payload["errors"][0]["message"] == "Bad Request"


def test_non_json_content_type_is_415(dev: DevSendGrid) -> None:
    status, _, _ = send(dev, content_type="text/plain")
    assert status == 415


def test_unknown_path_is_404(dev: DevSendGrid) -> None:
    assert request(dev, "GET", "/v3/nope")[0] == 404


def test_invalid_body_is_400_naming_the_field(dev: DevSendGrid) -> None:
    body = valid_body(personalizations=[{"to": [{"email": "not an address"}]}])
    status, _, payload = send(dev, body)
    assert status == 400
    assert fields(payload) == ["personalizations.0.to.0.email"]
    assert payload["errors"][0]["help"].startswith("http")
    assert dev.messages == []


# --- validation rules ----------------------------------------------------------------------


def test_a_valid_body_has_no_errors() -> None:
    assert validate_mail(valid_body()) == []


def _without(key: str) -> dict[str, Any]:
    body = valid_body()
    del body[key]
    return body


def _many_recipients(count: int) -> list[dict[str, Any]]:
    return [{"to": [{"email": f"user{i}@example.com"}]} for i in range(count)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(_without("personalizations"), "personalizations", id="no-personalizations"),
        pytest.param(valid_body(personalizations=[]), "personalizations", id="empty"),
        pytest.param(
            valid_body(personalizations=_many_recipients(1001)),
            "personalizations",
            id="too-many-personalizations",
        ),
        pytest.param(
            valid_body(personalizations=[{"to": [], "subject": "x"}]),
            "personalizations.0.to",
            id="empty-to",
        ),
        pytest.param(
            valid_body(personalizations=[{"cc": [{"email": "a@example.com"}]}]),
            "personalizations.0.to",
            id="no-to",
        ),
        pytest.param(
            valid_body(personalizations=[{"to": [{"name": "No address"}]}]),
            "personalizations.0.to.0.email",
            id="to-without-email",
        ),
        pytest.param(
            valid_body(
                personalizations=[
                    {
                        "to": [{"email": f"a{i}@example.com"} for i in range(600)],
                        "bcc": [{"email": f"b{i}@example.com"} for i in range(401)],
                    }
                ]
            ),
            "personalizations",
            id="over-1000-recipients",
        ),
        pytest.param(
            valid_body(
                personalizations=[
                    {"to": [{"email": "a@example.com"}], "cc": [{"email": "A@example.com"}]}
                ]
            ),
            "personalizations.0",
            id="duplicate-address",
        ),
        pytest.param(_without("from"), "from", id="no-from"),
        pytest.param(valid_body(**{"from": {"email": "nobody"}}), "from.email", id="bad-from"),
        pytest.param(_without("subject"), "subject", id="no-subject"),
        pytest.param(valid_body(subject=""), "subject", id="empty-subject"),
        pytest.param(_without("content"), "content", id="no-content"),
        pytest.param(
            valid_body(content=[{"type": "text/plain", "value": ""}]),
            "content.0.value",
            id="empty-content",
        ),
        pytest.param(
            valid_body(
                content=[
                    {"type": "text/html", "value": "<p>x</p>"},
                    {"type": "text/plain", "value": "x"},
                ]
            ),
            "content",
            id="html-before-text",
        ),
        pytest.param(
            valid_body(custom_args={"outbox_id": 42}),
            "custom_args.outbox_id",
            id="custom-arg-not-string",
        ),
        pytest.param(
            valid_body(custom_args={"big": "x" * 10_000}),
            "personalizations.0.custom_args",
            id="custom-args-too-big",
        ),
        pytest.param(
            valid_body(headers={"X-Campaign": "a\r\nBcc: evil@example.com"}),
            "headers.X-Campaign",
            id="header-crlf",
        ),
        pytest.param(valid_body(headers={"Subject": "x"}), "headers", id="reserved-header"),
        pytest.param(
            valid_body(categories=[f"c{i}" for i in range(11)]), "categories", id="categories"
        ),
    ],
)
def test_validation_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    assert field in [error["field"] for error in validate_mail(body)]


def test_subject_may_come_from_every_personalization() -> None:
    body = _without("subject")
    body["personalizations"][0]["subject"] = "Per recipient"
    assert validate_mail(body) == []


def test_content_may_be_left_to_a_template() -> None:
    body = _without("content")
    body["template_id"] = "d-0123456789abcdef"
    assert validate_mail(body) == []


def test_validation_does_not_change_the_body() -> None:
    body = valid_body()
    before = copy.deepcopy(body)
    validate_mail(body)
    assert body == before


# --- fault injection -----------------------------------------------------------------------


def test_faults_apply_in_order_then_requests_succeed(dev: DevSendGrid) -> None:
    dev.script([{"status": 429, "retry_after": 2}, {"status": 503}, {"status": 400}])

    status, headers, payload = send(dev)
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert payload["errors"][0]["message"] == "too many requests"

    assert send(dev)[0] == 503
    status, _, payload = send(dev)
    assert status == 400
    assert payload["errors"]
    assert send(dev)[0] == 202
    assert dev.requests_seen == 4
    assert len(dev.messages) == 1


def test_faults_come_before_authentication(dev: DevSendGrid) -> None:
    dev.script([{"status": 500}])
    assert send(dev, key="SG.wrong.key")[0] == 500


def test_drop_closes_without_a_response(dev: DevSendGrid) -> None:
    dev.script([{"drop": True}])
    with pytest.raises(http.client.RemoteDisconnected):
        send(dev)
    assert dev.messages == []
    assert send(dev)[0] == 202


def test_stall_answers_late_and_is_recorded(dev: DevSendGrid) -> None:
    dev.script([{"stall": 0.3}])
    started = time.monotonic()
    status, _, _ = send(dev)
    assert status == 202
    assert time.monotonic() - started >= 0.3
    assert len(dev.messages) == 1


def test_a_stall_the_client_gave_up_on_is_still_recorded(dev: DevSendGrid) -> None:
    # The server cannot know the client left: it records the message, as SendGrid might.
    dev.script([{"stall": 0.4}])
    with pytest.raises(TimeoutError):
        send(dev, timeout=0.1)
    assert len(dev.wait_for_messages(1, timeout=3)) == 1


def test_a_trickled_answer_outlasts_a_per_read_timeout_and_is_recorded_first(
    dev: DevSendGrid,
) -> None:
    # A byte every 0.1 s: no read waits 0.5 s, so the whole answer takes 1.5 s.
    dev.script([{"trickle": 1.5}, {"trickle": 0.5, "status": 503}])
    started = time.monotonic()
    status, headers, _ = send(dev, timeout=0.5)
    assert status == 202 and headers["X-Message-Id"]
    assert time.monotonic() - started >= 1.4
    assert len(dev.messages) == 1
    assert send(dev, timeout=0.5)[0] == 503  # with a status: that answer, slowly
    assert len(dev.messages) == 1


def test_stop_does_not_wait_for_stalled_requests() -> None:
    dev = DevSendGrid(KEY).start()
    dev.script([{"stall": 30}])
    with pytest.raises(TimeoutError):
        send(dev, timeout=0.1)
    started = time.monotonic()
    dev.stop()
    assert time.monotonic() - started < 2
    assert dev.messages == []


def test_faults_can_be_set_over_http(dev: DevSendGrid) -> None:
    status, _, _ = request(dev, "POST", "/dev/faults", [{"status": 502}])
    assert status == 204
    assert dev.pending_faults == 1
    assert send(dev)[0] == 502

    status, _, payload = request(dev, "POST", "/dev/faults", [{"status": 200}])
    assert status == 400
    assert payload["errors"][0]["field"] == "faults"


@pytest.mark.parametrize(
    "fault",
    [
        {},
        {"status": 200},
        {"stall": -1},
        {"drop": True, "status": 500},
        {"drop": True, "trickle": 1},
        {"trickle": -1},
        {"explode": True},
    ],
)
def test_bad_faults_are_refused(fault: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_fault(fault)


def test_clear_forgets_everything(dev: DevSendGrid) -> None:
    send(dev)
    dev.script([{"status": 500}])
    dev.clear()
    assert (dev.messages, dev.requests_seen, dev.pending_faults) == ([], 0, 0)


def test_get_faults_shows_what_is_still_pending_in_the_posted_format(dev: DevSendGrid) -> None:
    script = [{"status": 429, "retry_after": 1.0}, {"stall": 0.1, "status": 503}, {"drop": True}]
    assert request(dev, "POST", "/dev/faults", script)[0] == 204
    status, _, pending = request(dev, "GET", "/dev/faults")
    assert (status, pending) == (200, script)

    assert send(dev)[0] == 429
    assert request(dev, "GET", "/dev/faults")[2] == script[1:]
    # What GET shows can be posted back as it is.
    assert request(dev, "POST", "/dev/faults", script[1:])[0] == 204
    assert dev.pending_faults == 2


def test_delete_faults_clears_the_script_and_keeps_the_messages(dev: DevSendGrid) -> None:
    assert send(dev)[0] == 202
    dev.script([{"status": 500}, {"status": 500}])
    status, _, payload = request(dev, "DELETE", "/dev/faults")
    assert (status, payload) == (204, None)
    assert request(dev, "GET", "/dev/faults")[2] == []
    assert send(dev)[0] == 202
    assert len(dev.messages) == 2


def test_a_refused_script_leaves_the_pending_one(dev: DevSendGrid) -> None:
    dev.script([{"status": 502}])
    assert request(dev, "POST", "/dev/faults", [{"status": 500}, {"bogus": 1}])[0] == 400
    assert request(dev, "GET", "/dev/faults")[2] == [{"status": 502}]


def test_scopes_answer_a_valid_key_and_refuse_another(dev: DevSendGrid) -> None:
    status, _, payload = request(dev, "GET", "/v3/scopes")
    assert (status, payload) == (200, {"scopes": list(DEFAULT_SCOPES)})
    assert "mail.send" in payload["scopes"]
    assert request(dev, "GET", "/v3/scopes", key="SG.wrong.key")[0] == 401
    assert request(dev, "GET", "/v3/scopes", key=None)[0] == 401


def test_scopes_never_use_up_a_fault(dev: DevSendGrid) -> None:
    dev.script([{"status": 500}])
    assert request(dev, "GET", "/v3/scopes")[0] == 200
    assert dev.pending_faults == 1
    assert dev.requests_seen == 0


# --- suppression lists and delivery events -------------------------------------------------


def test_suppression_lists_are_paged_and_need_the_key(dev: DevSendGrid) -> None:
    entries = [{"email": f"b{i}@example.com", "created": 1} for i in range(7)]
    assert request(dev, "POST", "/dev/suppressions", {"bounces": entries})[0] == 204
    status, _, page = request(dev, "GET", "/v3/suppression/bounces?limit=5&offset=0")
    assert status == 200 and [e["email"] for e in page] == [f"b{i}@example.com" for i in range(5)]
    assert len(request(dev, "GET", "/v3/suppression/bounces?limit=5&offset=5")[2]) == 2
    assert request(dev, "GET", "/v3/suppression/blocks")[2] == []
    assert request(dev, "GET", "/v3/suppression/bounces", key=None)[0] == 401
    assert request(dev, "GET", "/v3/suppression/bounces?limit=501")[0] == 400
    assert request(dev, "GET", "/v3/suppression/bounces?offset=x")[0] == 400
    assert request(dev, "GET", "/v3/suppression/nothing")[0] == 404
    assert request(dev, "GET", "/dev/suppressions")[2]["bounces"] == entries


@pytest.mark.parametrize(
    "lists",
    [
        {"bounce": []},
        {"bounces": [{"created": 1}]},
        {"bounces": [{"email": "a@example.com"}]},
        {"bounces": [{"email": "a@example.com", "created": 1, "ip": "1.2.3.4"}]},
        [],
    ],
)
def test_a_bad_suppression_script_is_refused(dev: DevSendGrid, lists: object) -> None:
    assert request(dev, "POST", "/dev/suppressions", lists)[0] == 400
    assert request(dev, "GET", "/dev/suppressions")[2]["bounces"] == []


def test_mail_settings_bypasses_are_checked_as_sendgrid_does(dev: DevSendGrid) -> None:
    alone = {"bypass_unsubscribe_management": {"enable": True}}
    assert send(dev, valid_body(mail_settings=alone))[0] == 202
    both = {**alone, "bypass_list_management": {"enable": True}}
    status, _, payload = send(dev, valid_body(mail_settings=both))
    assert status == 400 and fields(payload) == ["mail_settings"]
    bad = {"bypass_unsubscribe_management": {"enable": "yes"}}
    assert send(dev, valid_body(mail_settings=bad))[0] == 400


class _Catcher:
    """A webhook endpoint that keeps the posts it gets, signature checked."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from rollout.dev.webhook_signing import WebhookSigner

        self.signer = WebhookSigner()
        self.posts: list[tuple[dict[str, str], bytes]] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                catcher.posts.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def events(self) -> list[dict[str, Any]]:
        from sendgrid.helpers.eventwebhook import EventWebhook

        found = []
        verifier = EventWebhook(self.signer.public_key)
        for headers, body in self.posts:
            assert verifier.verify_signature(
                body.decode(),
                headers["X-Twilio-Email-Event-Webhook-Signature"],
                headers["X-Twilio-Email-Event-Webhook-Timestamp"],
            )
            found += json.loads(body)
        return found


def test_events_say_what_happened_to_each_message_signed() -> None:
    catcher = _Catcher()
    to = lambda address: [{"to": [{"email": address}]}]  # noqa: E731
    with DevSendGrid(KEY, webhook_url=catcher.url, webhook_signer=catcher.signer) as server:
        server.suppress(
            {
                "blocks": [{"email": "blocked@example.com", "created": 1}],
                "unsubscribes": [{"email": "quiet@example.com", "created": 1}],
            }
        )
        server.script_events({"gone@example.com": "bounce", "later@example.com": "deferred"})
        bypass = {"bypass_unsubscribe_management": {"enable": True}}
        for address, extra in [
            ("ok@example.com", {}),
            ("gone@example.com", {}),
            ("later@example.com", {}),
            ("blocked@example.com", {}),
            ("quiet@example.com", {}),
            ("quiet@example.com", {"mail_settings": bypass}),
        ]:
            assert send(server, valid_body(personalizations=to(address), **extra))[0] == 202
        assert server.wait_for_events(12) == 12
        bounced = request(server, "GET", "/dev/suppressions")[2]["bounces"]
    events = catcher.events()
    kinds: dict[str, list[str]] = {}
    for event in events:
        kinds.setdefault(event["email"], []).append(event["event"])
        assert event["outbox_id"] == "42"  # the custom args ride along
    assert kinds == {
        "ok@example.com": ["processed", "delivered"],
        "gone@example.com": ["processed", "bounce"],
        "later@example.com": ["processed", "deferred", "delivered"],
        # A block is no suppression: SendGrid sends to the address as usual.
        "blocked@example.com": ["processed", "delivered"],
        # Unsubscribed: dropped, unless the message bypasses the unsubscribes.
        "quiet@example.com": ["dropped", "processed", "delivered"],
    }
    assert [e["email"] for e in bounced] == ["gone@example.com"]  # as SendGrid lists it

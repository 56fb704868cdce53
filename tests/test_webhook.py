"""The Event Webhook receiver takes only signed, fresh, first-seen posts of SendGrid's
shape and writes each whole as a landing file; everything else is refused with
nothing written. Driven over HTTP: the app served by uvicorn in a thread, and the real
`rollout notify events serve` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import httpx
import pytest
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette

from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.dev.sendgrid_api import DEFAULT_API_KEY, DevSendGrid
from rollout.dev.webhook_signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSigner
from rollout.notify.drain import drain
from rollout.notify.senders import SendGridSender
from rollout.notify.suppressions import sync_suppressions
from rollout.notify.webhook import EVENTS_PATH, create_app
from rollout.registry import Registry
from rollout.registry.models import Notification
from rollout.warehouse import ingest
from tests.support.outbox import ids, queue_late, rows
from tests.support.serving import free_port, wait_until_answering

__all__ = ["ids"]  # a fixture, used by name

NOW = 1_700_000_000
EVENTS = [
    {
        "sg_event_id": "ev-ann",
        "email": "ann@example.com",
        "event": "delivered",
        "outbox_id": "7",
        "timestamp": NOW,
    },
    {
        "sg_event_id": "ev-bob",
        "email": "bob@example.com",
        "event": "bounce",
        "outbox_id": "8",
        "timestamp": NOW,
    },
]


@pytest.fixture
def signer() -> WebhookSigner:
    return WebhookSigner()


# uvicorn's default logging config stops its loggers at their own stderr handler; this one
# has them propagate to the root logger, where pytest's caplog sees them.
_PROPAGATED = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        name: {"handlers": [], "propagate": True}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    },
}


@contextlib.contextmanager
def served(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn on a free port, in a thread of this process: its URL.
    Uvicorn's own lines (its 'Exception in ASGI application' and traceback) reach the
    test's log capture, as the operator's log would have them, beside the receiver's."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=_PROPAGATED)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def client(signer: WebhookSigner, tmp_path: Path) -> Iterator[httpx.Client]:
    app = create_app(signer.public_key, tmp_path, max_bytes=4096, clock=lambda: NOW)
    with served(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def written(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "events"
    return sorted(folder.iterdir()) if folder.exists() else []


def body_of(events: object = EVENTS) -> bytes:
    return json.dumps(events).encode()


def test_a_signed_post_is_written_whole_as_signed(
    client: httpx.Client, signer: WebhookSigner, tmp_path: Path
) -> None:
    body = body_of()
    answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    assert (answer.status_code, answer.json()) == (200, {"received": 2})
    [landed] = written(tmp_path)
    assert landed.name.startswith(f"events-{NOW}-") and landed.suffix == ".json"
    assert landed.read_bytes() == body  # byte for byte: still verifiable
    # Another batch is another file; no temporary file is left behind.
    other = body_of(EVENTS[:1])
    assert client.post(EVENTS_PATH, content=other, headers=signer.headers(other, NOW)).is_success
    assert len(written(tmp_path)) == 2
    assert not [p for p in (tmp_path / "events").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "forge",
    [
        "unsigned",
        "signed by another key",
        "body changed after signing",
        "timestamp changed after signing",
        "signature not base64",
    ],
)
def test_a_forged_post_is_refused_with_nothing_written(
    client: httpx.Client, signer: WebhookSigner, tmp_path: Path, forge: str
) -> None:
    body = body_of()
    headers = signer.headers(body, NOW)
    if forge == "unsigned":
        del headers[SIGNATURE_HEADER]
    elif forge == "signed by another key":
        headers = WebhookSigner().headers(body, NOW)
    elif forge == "body changed after signing":
        body = body.replace(b"bounce", b"delivered")
    elif forge == "timestamp changed after signing":
        headers[TIMESTAMP_HEADER] = str(NOW - 1)
    else:
        headers[SIGNATURE_HEADER] = "%%%not-base64%%%"
    answer = client.post(EVENTS_PATH, content=body, headers=headers)
    assert answer.status_code == 401
    assert written(tmp_path) == []


@pytest.mark.parametrize("offset", [-301, 301, -86_400])
def test_a_stale_or_future_post_is_refused(
    client: httpx.Client, signer: WebhookSigner, tmp_path: Path, offset: int
) -> None:
    body = body_of()
    answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW + offset))
    assert answer.status_code == 401 and "tolerance" in answer.json()["error"]
    assert written(tmp_path) == []


@pytest.mark.parametrize("timestamp", ["9" * 5000, "\u00b2", "\u0661\u0662", "-5"])
def test_a_timestamp_that_is_no_unix_time_is_refused_not_a_server_error(
    client: httpx.Client, signer: WebhookSigner, tmp_path: Path, timestamp: str
) -> None:
    """isdigit() took "²" and 5,000 nines, which int() then refused: a 500."""
    body = body_of()
    headers = {**signer.headers(body, NOW), TIMESTAMP_HEADER: timestamp}
    answer = client.post(
        EVENTS_PATH,
        content=body,
        headers={k: v.encode() for k, v in headers.items()},
    )
    assert answer.status_code == 401 and "tolerance" in answer.json()["error"]
    assert written(tmp_path) == []


def test_a_post_received_again_is_acknowledged_and_written_once(
    client: httpx.Client, signer: WebhookSigner, tmp_path: Path
) -> None:
    """SendGrid posts again, byte for byte, a post whose answer did not reach it, and
    keeps posting for 24 hours what it got no 2xx for: a 409 had it retry a post kept
    already all day."""
    body = body_of()
    headers = signer.headers(body, NOW)
    assert client.post(EVENTS_PATH, content=body, headers=headers).status_code == 200
    first = written(tmp_path)
    again = client.post(EVENTS_PATH, content=body, headers=headers)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert written(tmp_path) == first and first[0].read_bytes() == body


def test_a_post_the_receiver_cannot_keep_is_answered_503_in_one_line(
    signer: WebhookSigner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The landing folder cannot take the file (a full disk, a folder made read-only, a
    file where the folder should be): the post was answered with Starlette's bare 500,
    the operator's log a traceback, and nothing said which folder or why. SendGrid
    posts it again (any 5xx): the answer says so, and the log says what to fix."""
    (tmp_path / "events").write_text("not a folder")
    app = create_app(signer.public_key, tmp_path, clock=lambda: NOW)
    body = body_of()
    with (
        served(app) as url,
        httpx.Client(base_url=url, timeout=10) as client,
        caplog.at_level("WARNING"),
    ):
        answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    assert answer.status_code == 503
    assert answer.json() == {"error": "the post cannot be kept now"}  # no path to the poster
    [line] = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert line.exc_info is None
    assert f"cannot write {tmp_path / 'events'}: " in line.getMessage()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_post_whose_poster_hangs_up_midway_is_dropped_in_one_line(
    signer: WebhookSigner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection closes (reset, a proxy's timeout) before the whole body arrived:
    Starlette's ClientDisconnect went up as 'Exception in ASGI application' and a
    traceback in the operator's log. Nothing of the post is written; SendGrid got no
    2xx, so it posts it again."""
    app = create_app(signer.public_key, tmp_path, clock=lambda: NOW)
    body = body_of()
    with caplog.at_level("WARNING"), served(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as connection:
            head = "".join(f"{k}: {v}\r\n" for k, v in signer.headers(body, NOW).items())
            connection.sendall(
                f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: {host}\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
        deadline = time.monotonic() + 30
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
    # served() has stopped uvicorn, which waits for the post's handling to end: all it
    # and the receiver would log of it is in.
    [line] = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert line.exc_info is None
    assert "before the whole post arrived" in line.getMessage()
    assert written(tmp_path) == []


def _post_head(host: str, headers: dict[str, str], length: int) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {length}\r\n\r\n"
    ).encode()


def _status_of(connection: socket.socket) -> int:
    """The status of the answer on ``connection`` (waiting up to its timeout)."""
    answer = connection.recv(4096)
    return int(answer.split(b" ", 2)[1])


def test_a_post_whose_body_trickles_in_is_cut_off_at_the_deadline(
    signer: WebhookSigner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow-loris post (a byte now and then, never the whole body) held its connection
    and its memory for as long as the poster liked: answered 408 once the body has not
    all arrived within the deadline, in one line, nothing written."""
    app = create_app(signer.public_key, tmp_path, clock=lambda: NOW, body_timeout=1.0)
    body = body_of()
    with served(app) as url, caplog.at_level("WARNING"):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(_post_head(host, signer.headers(body, NOW), len(body)))
            connection.settimeout(0.2)
            started = time.monotonic()
            status = None
            for byte in body[:-1]:
                connection.sendall(bytes([byte]))
                with contextlib.suppress(TimeoutError):
                    status = _status_of(connection)
                    break
                # A byte each 0.2 s: the whole trickle would take some 45 s.
                assert time.monotonic() - started < 15, "the trickle was never cut off"
        assert status == 408
    [line] = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert line.exc_info is None and "did not arrive within 1 s" in line.getMessage()
    assert written(tmp_path) == []


def test_an_unsigned_or_stale_post_is_refused_before_its_body_arrives(
    signer: WebhookSigner, tmp_path: Path
) -> None:
    """Anyone can post: a post no signature header could verify is refused on its
    headers, not after the receiver waited for and held up to --max-bytes of its body."""
    app = create_app(signer.public_key, tmp_path, clock=lambda: NOW)
    stale = signer.headers(body_of(), NOW - 3600)
    with served(app) as url:
        host, port = url.removeprefix("http://").split(":")
        for headers in ({}, stale):
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(_post_head(host, headers, 4_000_000))
                connection.settimeout(5)
                assert _status_of(connection) == 401
    assert written(tmp_path) == []


def test_a_post_refused_before_its_body_arrived_has_its_connection_closed(
    signer: WebhookSigner, tmp_path: Path
) -> None:
    """Answered on its headers (401) or over --max-bytes (413), a post's body is never
    read: its poster trickling the rest kept the connection open as long as it liked
    (each byte put off uvicorn's keep-alive deadline, the body thrown away). The answer
    says `Connection: close`, and the connection is closed after it."""
    app = create_app(signer.public_key, tmp_path, clock=lambda: NOW, max_bytes=1024)
    body = body_of()
    with served(app) as url:
        host, port = url.removeprefix("http://").split(":")
        for headers, length, status in (
            ({}, 4_000_000, 401),
            (signer.headers(body, NOW), 2048, 413),
        ):
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(_post_head(host, headers, length))
                connection.settimeout(5)
                answer = connection.recv(4096)
                assert int(answer.split(b" ", 2)[1]) == status
                assert b"connection: close" in answer.lower()
                connection.settimeout(0.2)
                started, closed = time.monotonic(), False
                while not closed and time.monotonic() - started < 8:
                    try:
                        connection.sendall(b"[")
                        closed = connection.recv(4096) == b""
                    except TimeoutError:
                        continue
                    except OSError:  # reset: closed
                        closed = True
                assert closed, "the refused post's connection was held open"
    assert written(tmp_path) == []


def test_posts_past_the_limit_in_progress_are_answered_503_at_once(
    signer: WebhookSigner, tmp_path: Path
) -> None:
    """Each post in progress holds up to --max-bytes: many at once (a flood of signed-
    looking posts, whose signatures are checked only once whole) held them all. Past
    --max-posts, a post is answered 503 at once (SendGrid posts it again later)."""
    app = create_app(signer.public_key, tmp_path, clock=lambda: NOW, max_posts=2)
    body = body_of()
    with served(app) as url, httpx.Client(base_url=url, timeout=10) as poster:
        host, port = url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(2)]
        try:
            for connection in held:
                connection.sendall(_post_head(host, signer.headers(body, NOW), len(body)))
            # Both being read, awaited: a whole post whose signature cannot verify is
            # answered 401 while there is room, 503 once both are in progress, and
            # neither writes anything.
            unverifiable = signer.headers(b"another body", NOW)
            deadline = time.monotonic() + 30
            while poster.post(EVENTS_PATH, content=body, headers=unverifiable).status_code != 503:
                assert time.monotonic() < deadline, "never 503 with both held posts in progress"
                time.sleep(0.05)
            answer = poster.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
            assert answer.status_code == 503, answer.text
            assert written(tmp_path) == []
        finally:
            for connection in held:
                connection.close()
        deadline = time.monotonic() + 10
        while True:  # the held posts dropped: room again
            answer = poster.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
            if answer.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.status_code == 200, answer.text
    assert len(written(tmp_path)) == 1


def test_a_post_with_an_account_event_lands_and_loads_whole(
    client: httpx.Client,
    signer: WebhookSigner,
    tmp_path: Path,
    con: duckdb.DuckDBPyConnection,
) -> None:
    """SendGrid's account status change events (enabled in the webhook's settings) name
    no recipient: no email, as its Event Webhook reference shows them. The receiver
    refused a post holding one with 400 ('an event has no email'), delivery events
    beside it included, and SendGrid gives up on a post after retrying it."""
    suspended = {
        "event": "account_status_change",
        "sg_event_id": "ev-account",
        "timestamp": NOW,
        "type": "compliance_suspend",
    }
    body = body_of([*EVENTS, suspended])
    answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    assert (answer.status_code, answer.json()) == (200, {"received": 3})
    report = ingest.ingest(
        con,
        [tmp_path],
        quarantine_limit=0.0,
        landing_root=tmp_path,
        now=datetime.fromtimestamp(NOW + 60, UTC).replace(tzinfo=None),
    )
    assert [(f.status, f.rows_loaded, f.rows_quarantined) for f in report.files] == [
        ("loaded", 3, 0)
    ]
    assert con.execute(
        "select sg_event_id, email from raw_events order by sg_event_id"
    ).fetchall() == [
        ("ev-account", None),
        ("ev-ann", "ann@example.com"),
        ("ev-bob", "bob@example.com"),
    ]


def test_an_event_ingest_quarantines_costs_its_post_only_that_event_once(
    client: httpx.Client,
    signer: WebhookSigner,
    tmp_path: Path,
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Another sender on the same SendGrid account tags its mail with an outbox_id of
    its own. The receiver answered 200 (SendGrid will not post it again), then ingest
    refused the whole small post (1 bad event of 3 is over the 1% limit) on every run,
    losing the delivery events beside it: the bad event is quarantined once, the others
    load, and the next run passes the file over."""
    other = {
        "sg_event_id": "ev-other",
        "email": "cy@example.com",
        "event": "delivered",
        "outbox_id": "newsletter-7",
        "timestamp": NOW,
    }
    body = body_of([*EVENTS, other])
    answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    assert (answer.status_code, answer.json()) == (200, {"received": 3})
    later = datetime.fromtimestamp(NOW + 60, UTC).replace(tzinfo=None)

    def run() -> ingest.IngestReport:
        return ingest.ingest(
            con, [tmp_path], quarantine_limit=0.01, landing_root=tmp_path, now=later
        )

    first = run()
    assert [(f.status, f.rows_loaded, f.rows_quarantined) for f in first.files] == [
        ("loaded", 2, 1)
    ]
    assert con.execute("select sg_event_id from raw_events order by 1").fetchall() == [
        ("ev-ann",),
        ("ev-bob",),
    ]
    [(line, reason)] = con.execute("select line, reason from quarantine").fetchall()
    assert (line, reason) == (3, "outbox_id 'newsletter-7' is not a positive whole number")
    assert [f.status for f in run().files] == ["skipped"]
    assert con.execute("select count(*) from quarantine").fetchone() == (1,)


def test_an_event_without_its_id_type_or_time_costs_its_post_only_that_event_once(
    client: httpx.Client,
    signer: WebhookSigner,
    tmp_path: Path,
    con: duckdb.DuckDBPyConnection,
) -> None:
    """The receiver answered 400 to a post where one event lacked sg_event_id, event or
    timestamp: the delivery events beside it were lost, SendGrid posted it again, was
    refused again, for 24 hours, and gave up. Ingest quarantines such an event alone,
    so the post is kept: the good events load once (sg_event_id still the dedupe key:
    the same post under a new signature adds nothing), the bad ones are quarantined
    once, each named, and `rollout quarantine` keeps what they said. A post whose only
    event lacks its id is kept and quarantined the same way, not refused for a day."""
    bad = [
        {"email": "cy@example.com", "event": "delivered", "timestamp": NOW},
        {"sg_event_id": "ev-dee", "email": "dee@example.com", "timestamp": NOW},
        {"sg_event_id": "ev-eve", "email": "eve@example.com", "event": "open", "timestamp": ""},
    ]
    body = body_of([*EVENTS, *bad])
    answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    assert (answer.status_code, answer.json()) == (200, {"received": 5})
    # SendGrid posting the same events again, signed anew a minute later: another file.
    again = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW + 60))
    assert again.status_code == 200
    alone = body_of([bad[0]])
    answer = client.post(EVENTS_PATH, content=alone, headers=signer.headers(alone, NOW))
    assert (answer.status_code, answer.json()) == (200, {"received": 1})
    assert len(written(tmp_path)) == 3
    later = datetime.fromtimestamp(NOW + 120, UTC).replace(tzinfo=None)

    def run() -> ingest.IngestReport:
        return ingest.ingest(
            con, [tmp_path], quarantine_limit=0.01, landing_root=tmp_path, now=later
        )

    first = run()
    assert sorted((f.status, f.rows_loaded, f.rows_quarantined) for f in first.files) == [
        ("loaded", 0, 1),
        ("loaded", 2, 3),
        ("skipped", 0, 0),  # the same bytes as the first post: the same file
    ]
    assert con.execute("select sg_event_id from raw_events order by 1").fetchall() == [
        ("ev-ann",),
        ("ev-bob",),
    ]
    assert sorted(r for (r,) in con.execute("select reason from quarantine").fetchall()) == [
        "event is missing",
        "sg_event_id is missing",
        "sg_event_id is missing",
        "timestamp is missing",
    ]
    assert [f.status for f in run().files] == ["skipped"] * 3
    assert con.execute("select count(*) from quarantine").fetchone() == (4,)


def test_an_oversized_post_is_refused_before_it_is_read(
    client: httpx.Client, signer: WebhookSigner, tmp_path: Path
) -> None:
    body = body_of([{"email": "x@example.com", "event": "delivered", "pad": "x" * 5000}])
    answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    assert answer.status_code == 413
    # Without a Content-Length (chunked), the cap holds all the same.
    chunks = iter([body[:2000], body[2000:]])
    answer = client.post(EVENTS_PATH, content=chunks, headers=signer.headers(body, NOW))
    assert answer.status_code == 413
    assert written(tmp_path) == []


# An empty array too: ingest would refuse that file every day. So would a key twice in
# an event; nesting past the parser was a 500. (An event without its id is quarantined
# alone by ingest: its post is kept, above.)
EVENT = '"sg_event_id": "e1", "event": "delivered", "timestamp": 1, "email": "x@example.com"'
REFUSED_SHAPES = {
    b'{"event": "delivered"}': "the body is not a JSON array of events",
    b"[1, 2]": "the body is not a JSON array of events",
    b"[]": "the post has no events",
    b"not json": "the body is not a JSON array of events",
    b"\xff\xfe": None,  # not UTF-8: its signature cannot verify (401)
    f'[{{{EVENT}, "event": "bounce"}}]'.encode(): (
        "the body is not JSON ingest reads: key 'event' appears twice in one object"
    ),
    # Deeper than Python's parser recurses, within the client's 4 KB.
    b"[" * 2_000 + b"]" * 2_000: "the body is not a JSON array of events",
}


@pytest.mark.parametrize("body", list(REFUSED_SHAPES), ids=range(len(REFUSED_SHAPES)))
def test_a_signed_post_of_another_shape_is_refused(
    client: httpx.Client, signer: WebhookSigner, tmp_path: Path, body: bytes
) -> None:
    answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    reason = REFUSED_SHAPES[body]
    if reason is None:
        assert answer.status_code == 401
    else:
        assert answer.status_code == 400
        assert reason in answer.text
    assert written(tmp_path) == []


def test_a_bad_verification_key_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="verification key"):
        create_app("bm90LWEta2V5", tmp_path)


def test_the_serve_command_receives_posts_and_stops_on_sigterm(
    rollout_home: Path, signer: WebhookSigner
) -> None:
    rollout_home.mkdir()  # a deployment's home is there; the receiver makes no home
    port = free_port()
    env = {**os.environ, "ROLLOUT_SENDGRID_WEBHOOK_KEY": signer.public_key}
    server = subprocess.Popen(
        [sys.executable, "-m", "rollout", "notify", "events", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{url}/healthz", server, "the receiver")
        body = body_of()
        answer = httpx.post(f"{url}{EVENTS_PATH}", content=body, headers=signer.headers(body))
        assert answer.status_code == 200
        forged = httpx.post(
            f"{url}{EVENTS_PATH}", content=body, headers=WebhookSigner().headers(body)
        )
        assert forged.status_code == 401
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    # uvicorn finishes the posts in progress, then ends by the signal it was sent.
    assert code in (0, -signal.SIGTERM)
    [landed] = (rollout_home / "landing" / "events").iterdir()
    assert landed.read_bytes() == body


def test_a_post_still_arriving_when_the_grace_ends_is_dropped_in_one_line(
    rollout_home: Path, signer: WebhookSigner
) -> None:
    """A client that holds a post open cannot keep the receiver running, and its half
    of a post is not written: one line says so, not uvicorn's traceback of the cancel."""
    rollout_home.mkdir()
    port = free_port()
    serve = [sys.executable, "-m", "rollout", "notify", "events", "serve"]
    server = subprocess.Popen(
        [*serve, "--port", str(port), "--grace", "1"],
        env={**os.environ, "ROLLOUT_SENDGRID_WEBHOOK_KEY": signer.public_key},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/healthz", server, "the receiver")
        body = body_of()
        head = "".join(f"{k}: {v}\r\n" for k, v in signer.headers(body).items())
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: x\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
            time.sleep(0.5)  # the half is in: the receiver waits for the rest
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=30)
    finally:
        server.kill()
    _, errors = server.communicate()
    assert code in (0, -signal.SIGTERM)
    assert "the receiver stopped before the whole post arrived" in errors
    assert "Traceback" not in errors
    assert written(rollout_home / "landing") == []


def test_the_serve_command_needs_the_verification_key(rollout_home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rollout", "notify", "events", "serve"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "ROLLOUT_SENDGRID_WEBHOOK_KEY"},
        timeout=60,
    )
    assert done.returncode == 2
    assert "ROLLOUT_SENDGRID_WEBHOOK_KEY" in done.stderr


def _serve_until_it_ends(signer: WebhookSigner, port: int) -> subprocess.CompletedProcess[str]:
    """`rollout notify events serve` run where it cannot start: it ends by itself."""
    return subprocess.run(
        [sys.executable, "-m", "rollout", "notify", "events", "serve", "--port", str(port)],
        capture_output=True,
        text=True,
        env={**os.environ, "ROLLOUT_SENDGRID_WEBHOOK_KEY": signer.public_key},
        timeout=60,
    )


def test_the_serve_command_refuses_a_home_that_is_not_there(
    rollout_home: Path, signer: WebhookSigner
) -> None:
    """Posts landing under a mistyped home would be answered 200 and never ingested."""
    done = _serve_until_it_ends(signer, free_port())
    assert done.returncode == 2
    assert f"{rollout_home}: no such folder: check ROLLOUT_HOME" in done.stderr
    assert not rollout_home.exists()


def test_the_serve_command_on_a_port_in_use_fails_with_exit_1_not_a_refusal(
    rollout_home: Path, signer: WebhookSigner
) -> None:
    """uvicorn exits 3 when it cannot listen: here 3 means a safety guard refused."""
    rollout_home.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve_until_it_ends(signer, port)
    assert done.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}" in done.stderr


def test_the_local_sendgrid_server_posts_what_happened_and_the_receiver_lands_it(
    registry: Registry, plan: Plan, ids: dict[str, int], signer: WebhookSigner, tmp_path: Path
) -> None:
    """The loop on one machine: queue, send through the real client to the local
    SendGrid server, its signed events to the receiver, landed; the bounce it reports
    is on its list at the next sync, and the next email to that address is skipped."""
    queue_late(registry, plan, NOTICE_DAY)
    receiver = create_app(signer.public_key, tmp_path)
    with (
        served(receiver) as url,
        DevSendGrid(webhook_url=f"{url}{EVENTS_PATH}", webhook_signer=signer) as sendgrid,
    ):
        sendgrid.script_events({"ANN@example.com": "bounce"})
        sender = SendGridSender(DEFAULT_API_KEY, sendgrid.url, timeout=5)
        assert drain(registry, plan, sender).sent == 2  # ann and ben
        assert sendgrid.wait_for_events(4) == 4  # processed and one more, each
        sync_suppressions(registry, sender, actor="ops")
    events = [e for path in written(tmp_path) for e in json.loads(path.read_bytes())]
    with registry.engine.connect() as connection:
        outbox_ids = dict(
            connection.execute(
                select(Notification.account_id, Notification.id).where(
                    Notification.email == "phase_notice"
                )
            ).all()
        )
    by_outbox = {(e["outbox_id"], e["event"]) for e in events}
    assert by_outbox == {
        (str(outbox_ids[ids["ann"]]), "processed"),
        (str(outbox_ids[ids["ann"]]), "bounce"),
        (str(outbox_ids[ids["ben"]]), "processed"),
        (str(outbox_ids[ids["ben"]]), "delivered"),
    }
    assert all(e["email_name"] == "phase_notice" for e in events)
    # SendGrid lists the bounced address; the sync brought it; the reminder skips ann.
    queue_late(registry, plan, date(2022, 1, 18))
    assert rows(registry, "reminder")["ann"] == ("skipped", "suppressed: bounce")

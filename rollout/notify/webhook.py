"""SendGrid's Event Webhook receiver: signed delivery events into ``landing/events/``.

SendGrid posts batches of events (processed, delivered, deferred, bounce, dropped,
spamreport, ...) as a JSON array, signed with ECDSA over the timestamp header followed
by the body. The receiver is a Starlette app (served by uvicorn: ``rollout notify
events serve``) that, for each post:

1. refuses, on its headers and before any of its body is read, a post without both
   signature headers or with a timestamp further than ``tolerance`` seconds from now
   (stale, or from the future): 401;
2. answers 503 at once (SendGrid posts it again) when ``max_posts`` posts are in
   progress already: each holds up to ``max_bytes``, so the receiver's memory is
   bounded whatever the number of posters;
3. refuses a body over ``max_bytes`` (413), read in chunks so a lying or missing
   Content-Length cannot make it hold more; answers 408 to a post whose body has not
   all arrived within ``body_timeout`` seconds (a slow-loris poster cannot hold a post
   open); drops, in one line, a post whose poster hangs up before the whole body
   arrived; and refuses a post whose signature does not verify against the configured
   key with the official helper (``sendgrid.helpers.eventwebhook``): 401;
4. refuses a verified post that is not a JSON array of objects, or is an empty one
   (400): ingest would refuse that file on every run. An event of the array without
   its sg_event_id, event or timestamp is kept with the post: ingest quarantines it
   alone, once, and loads the others;
5. writes the body, byte for byte as signed, as one landing file
   ``events/events-<timestamp>-<digest>.json``: written to a temporary name, flushed
   and linked into place, so ingest never sees half a file. The digest is of the
   timestamp and body: the same signed post again (SendGrid posting it again when our
   answer did not reach it, or a replay) finds its file there and is answered 200 with
   nothing written. Not 409: SendGrid posts again what it got no 2xx for, for 24 hours,
   and every retry of a post already kept was refused again, a warning each time.

A post answered before its whole body arrived (steps 1 to 3 but the signature) is
answered ``Connection: close``, and its connection closed after the answer.

A post that cannot be written (a full disk, a folder made read-only) is answered 503,
which SendGrid posts again, with one warning naming the folder and why.

Nothing is written for a refused post. Ingest loads the files like every landing file.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rollout.core.config import webhook_public_key
from rollout.core.files import make_folder, open_temporary, remove_stale_temporaries
from rollout.core.words import counted
from rollout.warehouse.landing import RefusedPost, events_in_post

log = logging.getLogger(__name__)

EVENTS_PATH = "/sendgrid/events"
# SendGrid batches events by time and size; its posts stay well under this.
MAX_BYTES = 5 * 1024 * 1024
# How far a post's timestamp may be from the receiver's clock, either way.
TOLERANCE_SECONDS = 300
# How long a post's whole body may take to arrive: SendGrid's posts (5 MB at most) take
# well under a second; a poster trickling a byte now and then is cut off.
BODY_TIMEOUT_SECONDS = 30.0
# Posts received at once, each holding up to max_bytes: more are answered 503.
MAX_POSTS = 16
EVENTS_FOLDER = "events"


_UNIX_TIME = re.compile(r"[0-9]{1,12}")


def event_file_name(timestamp: str, body: bytes) -> str:
    digest = hashlib.sha256(timestamp.encode() + b"\n" + body).hexdigest()[:32]
    return f"events-{timestamp}-{digest}.json"


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isascii()
        and declared.isdigit()
        and (len(declared) > 18 or int(declared) > limit)
    ):
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse(status: int, reason: str, *, body_unread: bool = False) -> JSONResponse:
    """The refusal, logged in one line. ``body_unread``: answered before the whole body
    arrived (on the headers, over max_bytes, past the deadline, when stopping): the
    connection is closed after the answer, or a poster trickling the rest of a body
    nobody reads held it open as long as it liked (each byte put off uvicorn's
    keep-alive deadline)."""
    log.warning("event post refused (%d): %s", status, reason)
    headers = {"Connection": "close"} if body_unread else None
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _write_atomically(folder: Path, name: str, body: bytes) -> bool:
    """The body as ``folder/name``, whole or not at all; False when it was there."""
    make_folder(folder)
    final = folder / name
    if final.exists():
        return False
    # Made exclusively, closed to others but open to the group the umask gives it (the
    # ingest reading it may be another user): rollout.core.files.
    fd, temporary = open_temporary(final)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, final)  # fails if a concurrent post made it first
        except FileExistsError:
            return False
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def create_app(
    public_key: str,
    landing_dir: Path,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    max_bytes: int = MAX_BYTES,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
    max_posts: int = MAX_POSTS,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The receiver: ``POST /sendgrid/events`` and ``GET /healthz``."""
    try:
        key = webhook_public_key(public_key)
    except ValueError as error:
        raise ValueError(f"the verification key {error}") from None
    verifier = EventWebhook()
    folder = landing_dir / EVENTS_FOLDER
    # What a receiver killed mid-write (SIGKILL, the OOM killer) left: half a post each,
    # which SendGrid, never answered, posts again. Never a live receiver's (by age).
    remove_stale_temporaries(folder)

    in_progress = 0

    async def receive(request: Request) -> JSONResponse:
        # On the headers alone, before a byte of the body is read or held.
        signature = request.headers.get(EventWebhookHeader.SIGNATURE)
        timestamp = request.headers.get(EventWebhookHeader.TIMESTAMP)
        if not signature or not timestamp:
            return _refuse(401, "the post is not signed", body_unread=True)
        # ASCII digits, and not more than a Unix time has: isdigit() also takes "²",
        # and int() refuses past 4300 digits; either was a 500 with a traceback.
        if not _UNIX_TIME.fullmatch(timestamp) or abs(clock() - int(timestamp)) > tolerance:
            return _refuse(
                401, "the post's timestamp is not within the tolerance", body_unread=True
            )
        nonlocal in_progress
        if in_progress >= max_posts:
            return _refuse(
                503, f"{counted(max_posts, 'post')} in progress already", body_unread=True
            )
        in_progress += 1
        try:
            return await _received(request, signature, timestamp)
        finally:
            in_progress -= 1

    async def _received(request: Request, signature: str, timestamp: str) -> JSONResponse:
        try:
            async with asyncio.timeout(body_timeout):
                body = await _read_capped(request, max_bytes)
        except _TooLarge:
            return _refuse(413, f"the post is over {counted(max_bytes, 'byte')}", body_unread=True)
        except TimeoutError:
            # A slow-loris poster, or a link too slow for SendGrid's posts: nothing of it
            # is written, and SendGrid, with no 2xx, posts it again.
            return _refuse(
                408, f"the whole post did not arrive within {body_timeout:g} s", body_unread=True
            )
        except asyncio.CancelledError:
            # The receiver is stopping and this post's body is still arriving after the
            # grace: nothing of it is written, and a 503 (if the client still listens)
            # has SendGrid post it again. One line, not a traceback of uvicorn's cancel.
            return _refuse(
                503, "the receiver stopped before the whole post arrived", body_unread=True
            )
        except ClientDisconnect:
            # The poster hung up (a reset, a proxy's timeout) mid-body: nothing of it is
            # written, and SendGrid, with no 2xx, posts it again. One line, not
            # Starlette's "Exception in ASGI application" and a traceback.
            return _refuse(400, "the connection closed before the whole post arrived")
        try:
            payload = body.decode("utf-8")
            verified = verifier.verify_signature(payload, signature, timestamp, key)
        except (UnicodeDecodeError, binascii.Error, ValueError):
            verified = False
        if not verified:
            return _refuse(401, "the signature does not verify")
        # What ingest would refuse, landed, it would refuse every day: an empty post, a
        # key twice in an event (a nested post was a 500). A bad event is no reason:
        # ingest quarantines it alone, the events beside it load.
        try:
            received = events_in_post(payload)
        except RefusedPost as refused:
            return _refuse(400, str(refused))
        try:
            kept = _write_atomically(folder, event_file_name(timestamp, body), body)
        except OSError as error:
            # A full disk, a folder made read-only, a file where the folder should be:
            # nothing of the post is kept, and a 503 has SendGrid post it again. One line
            # naming the folder and why, not Starlette's bare 500 and a traceback.
            # The folder is the operator's to know, not the poster's.
            log.warning(
                "event post not kept (503): cannot write %s: %s", folder, error.strerror or error
            )
            return JSONResponse({"error": "the post cannot be kept now"}, status_code=503)
        if not kept:
            # Kept already, whole: acknowledged, so SendGrid stops posting it.
            log.info("event post received before: acknowledged, not written again")
            return JSONResponse({"received": received, "duplicate": True})
        return JSONResponse({"received": received})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route(EVENTS_PATH, receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )

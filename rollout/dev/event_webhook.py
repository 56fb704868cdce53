"""The local SendGrid server's Event Webhook: what happened to each accepted message,
posted in signed batches to a configured URL, as SendGrid does.

For each recipient of an accepted message (:meth:`EventPoster.accepted`):

- an address on one of the server's suppression lists is ``dropped`` (SendGrid drops
  mail to bounced, spam-reporting and invalid addresses, and to globally
  unsubscribed ones unless the message sets ``bypass_unsubscribe_management``);
- else by the outcome scripted for the address (:meth:`EventPoster.script`):
  ``bounce`` (processed, then bounce; the address joins the bounces list, as at
  SendGrid), ``dropped``, ``deferred`` (processed, deferred, then delivered);
- else ``processed`` then ``delivered``.

Each event carries the message's custom args at its top level (``outbox_id``,
``email_name``), as SendGrid's events do. A thread posts them in batches (up to
``batch_size`` events, or what ``linger`` seconds gathered), each signed with
:class:`~rollout.dev.webhook_signing.WebhookSigner`, retrying a refused or failed post a
few times; posts the receiver refuses with 4xx are counted, not retried.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from rollout.dev.webhook_signing import WebhookSigner

log = logging.getLogger(__name__)

OUTCOMES = ("delivered", "bounce", "dropped", "deferred")
# SendGrid's reasons for dropping mail to an address on one of its lists.
DROP_REASONS = {
    "bounces": "Bounced Address",
    "spam_reports": "Spam Reporting Address",
    "invalid_emails": "Invalid",
    "unsubscribes": "Unsubscribed Address",
}
BOUNCE_REASON = "550 5.1.1 The email account that you tried to reach does not exist"


def _bypasses_unsubscribes(body: Mapping[str, Any]) -> bool:
    settings = body.get("mail_settings") or {}
    bypass = settings.get("bypass_unsubscribe_management") if isinstance(settings, dict) else None
    return isinstance(bypass, dict) and bypass.get("enable") is True


class EventPoster:
    """Events of accepted messages, posted signed to ``url`` from a thread of its own."""

    def __init__(
        self,
        url: str,
        signer: WebhookSigner,
        *,
        listed: Callable[[str], str | None],
        add_bounce: Callable[[str], None],
        batch_size: int = 100,
        linger: float = 0.1,
        attempts: int = 5,
    ) -> None:
        self.url, self.signer = url, signer
        self._listed, self._add_bounce = listed, add_bounce
        self.batch_size, self.linger, self.attempts = batch_size, linger, attempts
        self._outcomes: dict[str, str] = {}
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Condition()
        self.posted = 0  # events the receiver took
        self.refused = 0  # events in posts it refused or that never got through
        self._thread = threading.Thread(target=self._run, name="dev-sendgrid-events", daemon=True)
        self._thread.start()

    def script(self, outcomes: Mapping[str, str]) -> None:
        """Outcomes by address (any case): ``bounce``, ``dropped``, ``deferred``,
        ``delivered``; added to those scripted before."""
        for address, outcome in outcomes.items():
            if outcome not in OUTCOMES:
                raise ValueError(f"unknown outcome {outcome!r} for {address}; known: {OUTCOMES}")
        with self._lock:
            self._outcomes.update({a.lower(): o for a, o in outcomes.items()})

    def accepted(self, message_id: str, body: Mapping[str, Any]) -> None:
        """Queue the events of an accepted Mail Send ``body``."""
        bypass = _bypasses_unsubscribes(body)
        shared = {
            **(body.get("custom_args") or {}),
            "category": body.get("categories") or [],
        }
        for personalization in body.get("personalizations") or []:
            extra = {**shared, **(personalization.get("custom_args") or {})}
            for recipient in personalization.get("to") or []:
                for event in self._events(message_id, recipient["email"], extra, bypass):
                    self._queue.put(event)

    def _events(
        self, message_id: str, address: str, extra: dict[str, Any], bypass: bool
    ) -> list[dict[str, Any]]:
        now = int(time.time())

        def event(kind: str, **fields: Any) -> dict[str, Any]:
            # The custom args first: an arg named like an event field does not hide it.
            return {
                **extra,
                "email": address,
                "timestamp": now,
                "event": kind,
                "sg_event_id": uuid.uuid4().hex,
                "sg_message_id": f"{message_id}.filter0001.1.0",
                **fields,
            }

        listed = self._listed(address)
        # A block is not a suppression: SendGrid sends to the address as usual.
        if listed == "blocks":
            listed = None
        if listed is not None and not (listed == "unsubscribes" and bypass):
            return [event("dropped", reason=DROP_REASONS[listed])]
        with self._lock:
            outcome = self._outcomes.get(address.lower(), "delivered")
        if outcome == "dropped":
            return [event("dropped", reason="Invalid SMTPAPI header")]
        if outcome == "bounce":
            self._add_bounce(address)
            return [
                event("processed"),
                event("bounce", type="bounce", status="5.1.1", reason=BOUNCE_REASON),
            ]
        if outcome == "deferred":
            return [
                event("processed"),
                event("deferred", attempt="1", response="421 try again later"),
                event("delivered", response="250 OK"),
            ]
        return [event("processed"), event("delivered", response="250 OK")]

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[dict[str, Any]] = []
            item = self._queue.get()
            if item is None:
                stopping = True
            else:
                batch.append(item)
            deadline = time.monotonic() + self.linger
            while not stopping and len(batch) < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            if batch:
                taken = self._post(batch)
                with self._lock:
                    if taken:
                        self.posted += len(batch)
                    else:
                        self.refused += len(batch)
                    self._lock.notify_all()

    def _post(self, batch: list[dict[str, Any]]) -> bool:
        body = json.dumps(batch).encode()
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.url, data=body, headers=self.signer.headers(body), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return 200 <= response.status < 300
            except urllib.error.HTTPError as error:
                if 400 <= error.code < 500 and error.code != 429:
                    log.warning("the event receiver refused a batch: %s", error.code)
                    return False
            except OSError as error:
                log.info("posting events failed (attempt %d): %s", attempt, error)
            time.sleep(min(0.2 * 2**attempt, 2.0))
        return False

    def wait(self, events: int, timeout: float = 10.0) -> int:
        """Block until ``events`` were posted (taken or refused); returns those taken."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.posted + self.refused < events:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return self.posted

    def close(self, timeout: float = 10.0) -> None:
        """Post what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

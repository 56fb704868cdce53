"""Senders: SendGrid's v3 API through its official client, and a file outbox for development.

:func:`make_sender` picks one from the settings: SendGrid when ``SENDGRID_API_KEY`` is
set (at ``ROLLOUT_SENDGRID_URL``, which may be the local dev server), else ``.eml`` files
under the outbox directory.

The API key must never show up in an exception, a reason or a log record. The official
client logs every request's headers, ``Authorization: Bearer <key>`` included, at DEBUG
(``python_http_client.client``); a filter on that logger redacts them. Failures are turned
into :class:`DeliveryFailed` outside any ``except`` block, so no client exception (nor the
request it holds in its traceback frames) is chained onto what callers see.
"""

from __future__ import annotations

import binascii
import email.errors
import email.policy
import email.utils
import http.client
import json
import logging
import math
import random
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import python_http_client.exceptions
from pydantic import SecretStr
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    BypassUnsubscribeManagement,
    Category,
    Content,
    CustomArg,
    From,
    Mail,
    MailSettings,
    Personalization,
    SendGridException,
    Subject,
    To,
)

from rollout.core import clock as pipeline_clock
from rollout.core.config import url_shown
from rollout.core.controls import quoted
from rollout.core.files import TEMP_SUFFIX, write_atomically
from rollout.core.words import counted
from rollout.notify.message import (
    MAY_HAVE_GONE,
    DeliveryFailed,
    Message,
    SendAbandoned,
    Sender,
    SenderUnavailable,
    header_address,
    still_held,
)

if TYPE_CHECKING:
    from rollout.core.config import Settings

log = logging.getLogger(__name__)

DEFAULT_FROM_ADDRESS = "noreply@registry.example"
DEFAULT_FROM_NAME = "Registry security"
# The notify flows take the SendGrid key from this Prefect Secret block (named by
# SECRET_BLOCK_SETTING) when SENDGRID_API_KEY is unset (flows/notify.py), and `rollout
# doctor` checks that key (rollout.ops.doctor): one name for both.
SECRET_BLOCK = "sendgrid-api-key"
SECRET_BLOCK_SETTING = "ROLLOUT_SENDGRID_SECRET_BLOCK"
REDACTED = "[REDACTED]"
MAX_REASON = 500

# Statuses that say something is wrong with the message itself (SendGrid's 400 names the
# field, 413: too large): it fails for good. Every other status that is not retried (a
# redirect, 401/403/404/405, 406, 407, 410, 415, ...) says our configuration is wrong
# (key, scopes, URL, a proxy in the way), not the message: every other message would fail
# the same way, so none is given up on for good, and the drain stops with them queued.
_MESSAGE_STATUSES = frozenset({400, 413})
# Bad gateway, gateway timeout: a proxy's answer for a request it passed on and got no
# (good) answer to. The request went; like a read timeout, it may have been acted on.
_GATEWAY_STATUSES = frozenset({502, 504})
# Loose on purpose: what matters is one @ and no whitespace/control characters.
# \Z, not $: $ also matches before a final line feed, which let "a@b.example\n" through.
_ADDRESS_RE = re.compile(r"\A[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\Z")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed, CR/LF are not


class SenderMisconfigured(DeliveryFailed):
    """The provider refused our credentials or endpoint, whatever the message.

    Not permanent: the message is fine and should be sent once the configuration is fixed.
    Callers should stop sending rather than fail every remaining message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, permanent=False)


# --- keeping the key out of logs and reasons -------------------------------------------


class _Redactor(logging.Filter):
    """Removes bearer tokens and known API keys from log records and strings."""

    _BEARER = re.compile(r"(Bearer\s+)[^\s'\",}]+", re.IGNORECASE)
    _SENDGRID_KEY = re.compile(r"SG\.[\w-]+\.[\w-]+")
    # A very short "key" would redact random words; the bearer pattern still covers it.
    _MIN_SECRET = 8

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        if len(secret) >= self._MIN_SECRET:
            with self._lock:
                self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        text = self._BEARER.sub(rf"\g<1>{REDACTED}", text)
        return self._SENDGRID_KEY.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the logging machinery
            return True
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_redactor = _Redactor()
# python_http_client logs "HEADERS: {... 'Authorization': 'Bearer <key>' ...}" at DEBUG.
# Logger filters run where a record is made, before any handler (caplog's included).
_LEAKY_LOGGERS = ("python_http_client.client", "python_http_client", "sendgrid")


def _install_redactor() -> None:
    for name in _LEAKY_LOGGERS:
        logger = logging.getLogger(name)
        if _redactor not in logger.filters:
            logger.addFilter(_redactor)


def _truncate(text: str, limit: int = MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- checks shared by both senders ----------------------------------------------------


def header_problem(message: Message) -> str | None:
    """Why the message's header values are unsafe to send, or None.

    CR/LF in a subject could inject headers; the stdlib refuses them and SendGrid may fold
    or reject them. Rendering makes every subject one line, so one with a newline is a
    bug: fail the message permanently with a clear reason instead of sending something
    mangled. (A name with control characters is left out instead: ``header_name``.)
    """
    if not _ADDRESS_RE.match(message.to_address):
        return f"invalid recipient address {quoted(message.to_address)}"
    try:
        header_address(message.to_address)
    except UnicodeError:
        return f"invalid recipient address {quoted(message.to_address)} (its domain is not IDNA)"
    if _CONTROL_RE.search(message.subject):
        shown = _truncate(quoted(message.subject), 120)
        return f"subject contains control characters (CR/LF?): {shown}"
    if not message.subject.strip():
        return "empty subject"
    if not message.text and not message.html:
        return "message has neither text nor HTML content"
    return None


def _check_sendable(message: Message) -> None:
    problem = header_problem(message)
    if problem is not None:
        raise DeliveryFailed(f"outbox {message.outbox_id}: {problem}", permanent=True)


# --- SendGrid --------------------------------------------------------------------------


class _Tally:
    """A counter the send threads share. Pickles without its lock (a drain's worker
    processes get a copy of the sender, and each counts its own retries)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1

    def __getstate__(self) -> dict[str, int]:
        return {"value": self.value}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.value = state["value"]
        self._lock = threading.Lock()


@dataclass(frozen=True)
class _Outcome:
    """What one attempt came to; exceptions are turned into this inside ``except``."""

    # SendGrid's answer when it took the request (2xx), and what was made of it (the
    # message id of a send, a suppression list's page); both None when it did not.
    response: Any = None
    value: Any = None
    reason: str = ""
    retryable: bool = False
    misconfigured: bool = False
    retry_after: float | None = None
    status: int | None = None  # the HTTP status SendGrid answered, if it answered
    # The request went whole and no answer came (a read timeout, a dropped connection):
    # SendGrid may have acted on it.
    after_sending: bool = False


class SendGridSender:
    """Sends through SendGrid's Mail Send API, retrying what is worth retrying.

    Retried, with exponential backoff and full jitter (or ``Retry-After`` when given):
    429, 5xx but a gateway's 502 and 504, and a connection that failed before the
    request went (refused, DNS, a connect timeout). Other answers fail at once: 400/413
    permanently, any other (a redirect, 401/403/404/405/406/407/415 ...) as
    :class:`SenderMisconfigured`. Running out of
    attempts is not permanent: the outbox can try again later (``--retry-failed``).

    A send whose request went whole but got no answer (a read timeout, a dropped
    connection, a gateway's 502 or 504) is not retried: Mail Send has no idempotency
    key, SendGrid may have taken it, and a retry sent the email twice. It fails with a
    reason that says so (MAY_HAVE_GONE); SendGrid's events name its ``outbox_id`` if
    it went, and ingest then records it sent (rollout.notify.delivery), so
    ``--retry-failed`` sends it again only when no event shows it went. (A read of a
    suppression list is retried: it changes nothing.)

    Each retry is logged as a warning (the outbox id, SendGrid's status or the network
    error, the attempt; never the key), and :attr:`retried_after_status` counts those
    after a 5xx or 429, for the drain's report: a flaky provider should show, not hide
    behind an eventual success.
    """

    name = "sendgrid"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str = "https://api.sendgrid.com",
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        *,
        from_address: str = DEFAULT_FROM_ADDRESS,
        from_name: str = DEFAULT_FROM_NAME,
        rng: random.Random | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not key:
            # The client would silently fall back to $SENDGRID_API_KEY.
            raise ValueError("SendGridSender needs a non-empty API key")
        if max_attempts < 1 or timeout <= 0:
            raise ValueError("max_attempts must be >= 1 and timeout > 0")
        _redactor.add(key)
        _install_redactor()
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.from_address = from_address
        self.from_name = from_name
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._retries = _Tally()
        self._client = SendGridAPIClient(api_key=key, host=self.base_url)
        # A client that follows no redirect (see _NoRedirectClient).
        self._client.client = _NoRedirectClient(
            host=self.base_url, request_headers=self._client.client.request_headers, version=3
        )
        # The client has no timeout by default (urllib would wait forever). It is applied
        # per socket operation (connect, each read), not to the request as a whole.
        self._client.client.timeout = timeout

    def __repr__(self) -> str:
        return f"SendGridSender(base_url={url_shown(self.base_url)!r}, timeout={self.timeout})"

    @property
    def longest_attempt(self) -> float:
        """How long one attempt of a send takes at most when SendGrid answers in time,
        in seconds: its request (a connection and an answer of up to ``timeout`` each)
        and the wait before the next (at most ``backoff_cap``, a ``Retry-After`` capped
        so too); 50 s by default. Not a bound on the request: the client's timeout is
        per socket operation, so a server answering a byte at a time, each address of a
        host tried in turn, a slow TLS handshake or DNS (no limit) make it longer; the
        drain's heartbeat keeps its lease while a request is under way, however long
        (rollout.notify.drain._Heartbeat). The drain starts no attempt with less of its
        lease ahead than this and a margin (rollout.notify.drain.lease_for), so the rows
        of its batch stay its own through the wait too should a renewal fail, and before
        each attempt after the first this sender looks whether the drain still holds the
        row (still_held: a pause may have outlasted the lease)."""
        return 2 * self.timeout + self.backoff_cap

    @property
    def retried_after_status(self) -> int:
        """Retries after SendGrid answered 5xx or 429, since this sender was made."""
        return self._retries.value

    def scopes(self) -> Any:
        """``GET /v3/scopes`` through this sender's client (its host, key, timeout and
        log redaction): the permissions the key has. Raises the client's errors."""
        return self._client.client.scopes.get()

    def suppression_page(self, list_name: str, limit: int, offset: int) -> list[Any]:
        """One page of a SendGrid suppression list (``bounces``, ``blocks``,
        ``spam_reports``, ``invalid_emails``, ``unsubscribes``), retried as a send is
        (429, 5xx, no answer). Raises :class:`SenderMisconfigured` for a refused key,
        :class:`DeliveryFailed` for anything else."""
        endpoint = self._client.client.suppression._(list_name)
        query = {"limit": limit, "offset": offset}

        def attempt() -> _Outcome:
            outcome = self._request(lambda: endpoint.get(query_params=query))
            if outcome.response is None:
                return outcome
            try:
                page = json.loads(outcome.response.body or b"null")
            except ValueError:
                page = None
            if not isinstance(page, list):
                raise DeliveryFailed(
                    f"SendGrid's {list_name} page is not a JSON list", permanent=True
                )
            return _Outcome(response=outcome.response, value=page)

        return self._retrying(
            attempt, f"SendGrid {list_name} at offset {offset}", idempotent=True
        ).value

    def send(self, message: Message) -> str:
        body = self.request_body(message)
        outcome = self._retrying(
            lambda: self._attempt(body), f"outbox {message.outbox_id}", idempotent=False
        )
        return outcome.value

    def _retrying(
        self, attempt: Callable[[], _Outcome], label: str, *, idempotent: bool
    ) -> _Outcome:
        """``attempt`` until it answers (an outcome with a response), retrying what is
        worth retrying with backoff; raises for the rest, or when attempts run out. A
        request that is not ``idempotent`` is not sent again once it went unanswered."""
        outcome = _Outcome()
        for number in range(1, self.max_attempts + 1):
            if number > 1 and not still_held():
                raise SendAbandoned(
                    f"{label}: not tried again: another sender took it over during the wait"
                )
            outcome = attempt()
            if outcome.response is not None:
                return outcome
            if outcome.misconfigured:
                raise SenderMisconfigured(outcome.reason)
            if outcome.after_sending and not idempotent:
                raise DeliveryFailed(
                    f"{outcome.reason} after the request went: {MAY_HAVE_GONE}, "
                    "so it is not sent again (that sent it twice); once ingest loads "
                    "SendGrid's events, it is recorded as sent if they show it went, and "
                    "`rollout notify send --apply --retry-failed` sends it when they do not",
                    permanent=False,
                )
            if not outcome.retryable:
                raise DeliveryFailed(outcome.reason, permanent=True)
            if number < self.max_attempts:
                delay = self._delay(number, outcome.retry_after)
                if outcome.status is not None:
                    self._retries.add()
                # A warning: retries that end well still say the provider is struggling.
                log.warning(
                    "%s: %s (status %s); retry %d/%d in %.2fs",
                    label,
                    outcome.reason,
                    outcome.status if outcome.status is not None else "none: no answer",
                    number,
                    self.max_attempts - 1,
                    delay,
                )
                self._sleep(delay)
        reason = f"gave up after {counted(self.max_attempts, 'attempt')}: {outcome.reason}"
        raise SenderUnavailable(reason)

    def request_body(self, message: Message) -> dict[str, Any]:
        """The Mail Send JSON for one message, built with the official helpers."""
        _check_sendable(message)
        try:
            return self._mail(message).get()
        except SendGridException as exc:
            # ApiKeyIncludedException: the content starts with something like "SG.x.y".
            problem = getattr(exc, "message", None) or type(exc).__name__
        # Raised outside the except block, so nothing is chained onto it.
        raise DeliveryFailed(f"outbox {message.outbox_id}: {problem}", permanent=True)

    def _mail(self, message: Message) -> Mail:
        mail = Mail()
        mail.from_email = From(self.from_address, self.from_name or None)
        # Set fields directly: To(address) alone would parse "Name <addr>" strings.
        recipient = To()
        recipient.email = header_address(message.to_address)
        if message.header_name:
            recipient.name = message.header_name
        personalization = Personalization()
        personalization.add_to(recipient)
        mail.add_personalization(personalization)
        mail.subject = Subject(message.subject)
        # add_content puts text/plain first whatever the call order; SendGrid requires it.
        if message.text:
            mail.add_content(Content("text/plain", message.text))
        if message.html:
            mail.add_content(Content("text/html", message.html))
        mail.add_custom_arg(CustomArg("outbox_id", str(message.outbox_id)))
        mail.add_custom_arg(CustomArg("email_name", message.email))
        mail.add_category(Category(message.email))
        # Every email rollout sends is a mandatory account-security notice: a global
        # unsubscribe does not stop it (rollout.notify.suppressions says why); bounces,
        # blocks, spam reports and invalid addresses still do, here and at SendGrid.
        settings = MailSettings()
        settings.bypass_unsubscribe_management = BypassUnsubscribeManagement(True)
        mail.mail_settings = settings
        return mail

    def _request(self, call: Callable[[], Any]) -> _Outcome:
        """One call of the client: its response when SendGrid answered 2xx, else why not
        (exceptions are turned into the outcome here)."""
        try:
            response = call()
        except python_http_client.exceptions.HTTPError as exc:
            return _http_error_outcome(exc.status_code, exc.body, exc.headers)
        except (http.client.InvalidURL, ValueError) as exc:
            # The request could not even be made ("host:abc", a broken IPv6 host): the
            # URL is wrong for every message, and nothing went.
            reason = (
                f"cannot send to {quoted(url_shown(self.base_url))}: the URL is unusable ({exc})"
            )
            return _Outcome(reason=_redactor.scrub(reason), misconfigured=True)
        except urllib.error.URLError as exc:
            # urllib wraps in URLError what fails before the request is whole (refused,
            # DNS, a connect timeout, a write cut short): SendGrid has nothing to act on.
            return _Outcome(reason=_redactor.scrub(self._network_reason(exc)), retryable=True)
        except (OSError, http.client.HTTPException) as exc:
            # Waiting for the answer: TimeoutError (read timeout), RemoteDisconnected /
            # ConnectionResetError (dropped), IncompleteRead...
            return _Outcome(
                reason=_redactor.scrub(self._network_reason(exc)),
                retryable=True,
                after_sending=True,
            )
        if not 200 <= response.status_code < 300:
            return _http_error_outcome(response.status_code, response.body, response.headers)
        return _Outcome(response=response)

    def _attempt(self, body: dict[str, Any]) -> _Outcome:
        outcome = self._request(lambda: self._client.send(body))
        if outcome.response is None:
            return outcome
        message_id = outcome.response.headers.get("X-Message-Id")
        if not message_id:
            # Accepted all the same: retrying would send it twice.
            log.warning("SendGrid accepted a message without an X-Message-Id header")
        return _Outcome(response=outcome.response, value=message_id or "")

    def _network_reason(self, exc: BaseException) -> str:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(cause, TimeoutError):
            return f"no answer from SendGrid within {self.timeout:g}s"
        if isinstance(exc, http.client.RemoteDisconnected):
            return "SendGrid closed the connection without answering"
        return f"could not reach SendGrid: {type(cause).__name__}: {cause}"

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_cap)
        # Full jitter: spreads out retries from many workers hitting the same limit.
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0, ceiling)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: urllib then raises the 3xx as an HTTPError."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _refuse_unheld(connection: http.client.HTTPConnection) -> None:
    """Once a send's connection is made, just before its request is written: whether the
    drain still holds the row (still_held: looked up in the registry when the drainer's
    clock says a pause may have outlasted the lease). The connection (DNS, TCP, TLS) is
    where a send spends its time before anything went: a process paused there past its
    lease, its row taken over and sent by another drainer meanwhile, sent it a second
    time once resumed, though the drain had looked at its hold just before connecting."""
    if not still_held():
        connection.close()
        raise SendAbandoned(
            "not sent: another sender took it over while this one connected to SendGrid"
        )


class _HeldHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _refuse_unheld(self)


class _HeldHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()  # the TLS handshake too
        _refuse_unheld(self)


class _HeldHTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_HeldHTTPConnection, req, **kwargs)


class _HeldHTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_HeldHTTPSConnection, req, **kwargs)


class _NoRedirectClient(python_http_client.Client):
    """The official client, but answering a redirect with its status, not following it.

    urllib followed a 301/302/303 to a POST with a GET of the new location, without the
    email: whatever answered that GET 200 (an https front page, for an http URL) was
    taken for SendGrid accepting the email, recorded as sent though none went. It also
    sent the ``Authorization`` header (the key) on to wherever the redirect pointed. A
    redirect says the URL is wrong (``ROLLOUT_SENDGRID_URL``): the sender stops as
    misconfigured, the emails kept queued.

    Each connection, once made, looks whether the drain still holds the row before the
    request is written (_refuse_unheld)."""

    def _build_client(self, name: str | None = None) -> _NoRedirectClient:
        url_path = [*self._url_path, name] if name else self._url_path
        return _NoRedirectClient(
            host=self.host,
            version=self._version,
            request_headers=self.request_headers,
            url_path=url_path,
            append_slash=self.append_slash,
            timeout=self.timeout,
        )

    def _make_request(self, opener: Any, request: Any, timeout: Any = None) -> Any:
        del opener  # urllib's default one, which follows redirects
        return super()._make_request(
            urllib.request.build_opener(_RefuseRedirects, _HeldHTTPHandler, _HeldHTTPSHandler),
            request,
            timeout=timeout,
        )


def _http_error_outcome(status: int, body: bytes | None, headers: Any) -> _Outcome:
    reason = _redactor.scrub(f"SendGrid answered {status}: {_error_messages(body)}")
    if status == 429:
        return _Outcome(
            reason=reason, retryable=True, retry_after=_retry_after(headers), status=status
        )
    if status in _GATEWAY_STATUSES:
        # The gateway in front of the API got no (good) answer from behind it: as a read
        # timeout, the request went and SendGrid may have acted on it.
        return _Outcome(reason=reason, retryable=True, status=status, after_sending=True)
    if status >= 500:
        return _Outcome(reason=reason, retryable=True, status=status)
    if status in _MESSAGE_STATUSES:
        return _Outcome(reason=reason, status=status)
    return _Outcome(reason=reason, misconfigured=True, status=status)


def _error_messages(body: bytes | str | None) -> str:
    """SendGrid's ``errors[].message`` (with their fields), or the start of the body."""
    if not body:
        return "(no body)"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        errors = json.loads(text)["errors"]
        parts = [
            f"{item['field']}: {item['message']}" if item.get("field") else str(item["message"])
            for item in errors
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        return _truncate(text.strip(), 200)
    return _truncate("; ".join(parts))


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait: ``Retry-After`` (seconds or a date), else ``X-RateLimit-Reset``."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value:
        with suppress(ValueError):
            return _seconds(float(value))
        with suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value)
            return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    reset = headers.get("X-RateLimit-Reset")  # what SendGrid itself sends: epoch seconds
    if reset:
        with suppress(ValueError):
            return _seconds(float(reset) - time.time())
    return None


def _seconds(value: float) -> float | None:
    """A wait in seconds, at least 0; None for what is no number (float() reads "nan"
    and "inf", and sleeping NaN seconds raised in the send thread, ending the drain)."""
    return max(value, 0.0) if math.isfinite(value) else None


# --- file outbox -----------------------------------------------------------------------


def _aware_now() -> datetime:
    """The pipeline's clock, as the ``Date`` header wants it: the demo's simulated day
    (a 2022 story wrote 2026 dates on every .eml). A module function, not a lambda: a
    FileSender must pickle (a drain's worker processes)."""
    return pipeline_clock.utc_now().replace(tzinfo=UTC)


class FileSender:
    """Writes each message as an ``.eml`` file, for development and demos.

    Files are named ``{outbox_id:08d}-{email}.eml`` and written atomically (a temp file
    renamed into place), so a reader (or a crash) never sees half a message. Sending the
    same outbox id again replaces its file, so a row a crashed drain sends again leaves
    one file, not two.

    The bytes are written directly (:func:`_eml`), not through ``EmailMessage``: its
    header policy machinery cost about 5 ms an email. Anything the direct writer does
    not handle (an address that is not a plain dot-atom, a header longer than a line may
    be) goes through ``EmailMessage`` as before (:meth:`build`). Files are not fsynced one
    by one (that was most of the rest): they survive the drain's process crashing, and an
    operating system crash may lose the last seconds of files, as SQLite at
    ``synchronous=NORMAL`` may lose the last commits. This is the development outbox.
    """

    name = "file"

    def __init__(
        self,
        outbox_dir: Path,
        from_address: str = DEFAULT_FROM_ADDRESS,
        from_name: str = DEFAULT_FROM_NAME,
        *,
        clock: Callable[[], datetime] = _aware_now,
    ) -> None:
        self.outbox_dir = Path(outbox_dir)
        self.from_address = from_address
        self.from_name = from_name
        self._clock = clock

    def __repr__(self) -> str:
        return f"FileSender(outbox_dir={str(self.outbox_dir)!r})"

    def path_for(self, message: Message) -> Path:
        return self.outbox_dir / f"{message.outbox_id:08d}-{_file_label(message.email)}.eml"

    def remove_leftovers(self) -> int:
        """Remove the temporary files of writes a drain killed in the middle left behind
        (a SIGKILL runs no clean-up; the rerun writes each such email again under a new
        name): half a message each, never to be moved into place. Only
        while no drain writes here: under the ``notify`` lock, before any send. Returns
        how many."""
        removed = 0
        for leftover in self.outbox_dir.glob(f".*.eml.*{TEMP_SUFFIX}"):
            with suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed

    def send(self, message: Message) -> str:
        _check_sendable(message)
        try:
            message_id, data = self.eml(message)
        except (
            ValueError,
            TypeError,
            IndexError,
            AttributeError,
            email.errors.MessageError,
        ) as exc:
            # What slipped past header_problem: an address the parser refuses. (AttributeError:
            # CPython 3.11's address parser trips over some malformed ones, e.g. "a@[x".)
            reason = f"outbox {message.outbox_id}: cannot build the email: {exc}"
            raise DeliveryFailed(_truncate(reason), permanent=True) from None
        try:
            # Whole or not at all, at a temp name made exclusively (concurrent sends never
            # share one, a link planted in the outbox is never written through); no fsync
            # (see FileSender).
            write_atomically(self.path_for(message), data, sync=False)
        except OSError as exc:
            # The system's words without the file they name (each email's own temporary
            # name): every email the outbox refused alike then reads as one reason.
            why = exc.strerror or str(exc)
            reason = f"outbox {message.outbox_id}: cannot write to {self.outbox_dir}: {why}"
            raise SenderUnavailable(reason) from None
        return message_id

    def eml(self, message: Message) -> tuple[str, bytes]:
        """The Message-ID and the bytes of the ``.eml`` file; raises ValueError (and the
        other errors :meth:`send` turns into a permanent failure) for what cannot be sent."""
        message_id = email.utils.make_msgid(domain=self._msgid_domain())
        date = email.utils.format_datetime(self._clock())
        data = _eml(message, self.from_name, self.from_address, date, message_id)
        if data is None:  # something the direct writer leaves to the email package
            mime = self.build(message)
            return str(mime["Message-ID"]), mime.as_bytes(policy=_UNFOLDED)
        return message_id, data

    def build(self, message: Message) -> EmailMessage:
        """The message as MIME: multipart/alternative, text then HTML."""
        mime = EmailMessage()  # policy=default: refuses CR/LF in headers, encodes non-ASCII
        mime["From"] = Address(display_name=self.from_name, addr_spec=self.from_address)
        mime["To"] = Address(
            display_name=message.header_name or "", addr_spec=header_address(message.to_address)
        )
        mime["Subject"] = message.subject
        mime["Date"] = email.utils.format_datetime(self._clock())
        mime["Message-ID"] = email.utils.make_msgid(domain=self._msgid_domain())
        mime["X-Rollout-Outbox-Id"] = str(message.outbox_id)
        mime["X-Rollout-Email"] = message.email
        if message.text:
            mime.set_content(message.text)
            if message.html:
                mime.add_alternative(message.html, subtype="html")
        else:
            mime.set_content(message.html, subtype="html")
        return mime

    def _msgid_domain(self) -> str:
        # Passing the domain also avoids make_msgid's slow getfqdn() lookup.
        return self.from_address.rpartition("@")[2] or "localhost"


# Headers are written unfolded (RFC 5322 allows 998 characters): the 3.11 parser reads a
# folded Message-ID back with a leading space.
_UNFOLDED = email.policy.default.clone(max_line_length=998)

# --- the .eml bytes, written directly ---

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
_ATOMS = re.compile(rf"{_ATEXT}(?: {_ATEXT})*\Z")  # a phrase that needs no quotes
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
_MAX_LINE = 998  # RFC 5322, without the CRLF
_WORD_BYTES = 45  # UTF-8 bytes per encoded word: "=?utf-8?b?" + 60 base64 + "?=" is 72


@lru_cache(maxsize=256)
def _file_label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:80] or "email"


def _encoded_words(text: str) -> str:
    """``text`` as RFC 2047 encoded words (UTF-8, base64), each within 75 characters,
    split between characters; a decoder drops the whitespace between them, so a value
    too long for one line is folded between words."""
    words, chunk, size = [], [], 0
    for char in text:
        width = len(char.encode())  # UnicodeEncodeError (a ValueError) for a lone surrogate
        if size + width > _WORD_BYTES and chunk:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(char)
        size += width
    words.append("".join(chunk))
    encoded = [
        f"=?utf-8?b?{binascii.b2a_base64(w.encode(), newline=False).decode()}?=" for w in words
    ]
    return (" " if len(encoded) * 73 < _MAX_LINE - 100 else "\n ").join(encoded)


def _plain_ok(value: str) -> bool:
    """Printable ASCII that a parser reads back as it is: no encoded-word lookalike,
    no whitespace at either end."""
    return bool(_PRINTABLE.match(value)) and "=?" not in value and value == value.strip()


def _unstructured(value: str) -> str:
    """A Subject-like header value: as it is, or encoded words (non-ASCII, or too long
    for a line: folded between words, where a reader loses nothing)."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"a header value contains a line break: {value[:80]!r}")
    if _plain_ok(value) and len(value) < _MAX_LINE - 100:
        return value
    return _encoded_words(value)


def _mailbox(name: str | None, address: str) -> str | None:
    """``name <address>``, or None when the address is not a plain dot-atom one, or
    holds an encoded-word lookalike (``=?utf-8?q?...?=``, which a reader would decode
    into another address): the email package judges those."""
    local, at, domain = address.rpartition("@")
    if not at or not _DOT_ATOM.match(local) or not _DOT_ATOM.match(domain) or "=?" in address:
        return None
    if not name:
        return address
    if _ATOMS.match(name) and "=?" not in name:
        phrase = name
    elif _PRINTABLE.match(name) and "=?" not in name:  # quoted: its spaces kept as they are
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        phrase = _encoded_words(name)
    return f"{phrase} <{address}>"


def _body(text: str) -> tuple[str, bytes]:
    """A part's content transfer encoding and its bytes, ending with a line break: 7bit
    for ASCII within the line limit, else quoted-printable. A CR is a line break."""
    data = text.encode()
    if b"\r" in data:
        data = b"\n".join(data.splitlines())
    if not data.endswith(b"\n"):
        data += b"\n"
    if data.isascii() and max(map(len, data.split(b"\n"))) <= _MAX_LINE:
        return "7bit", data
    return "quoted-printable", binascii.b2a_qp(data, istext=True)


def _part(subtype: str, text: str) -> tuple[bytes, bytes]:
    encoding, data = _body(text)
    head = f'Content-Type: text/{subtype}; charset="utf-8"\nContent-Transfer-Encoding: {encoding}\n'
    return head.encode(), data


def _eml(
    message: Message, from_name: str, from_address: str, date: str, message_id: str
) -> bytes | None:
    """The ``.eml`` bytes of ``message``, or None for what is left to the email package
    (an address that is not a plain dot-atom, a header longer than a line may be)."""
    sender = _mailbox(from_name, from_address)
    recipient = _mailbox(message.header_name, header_address(message.to_address))
    if sender is None or recipient is None:
        return None
    head = (
        f"From: {sender}\n"
        f"To: {recipient}\n"
        f"Subject: {_unstructured(message.subject)}\n"
        f"Date: {date}\n"
        f"Message-ID: {message_id}\n"
        f"X-Rollout-Outbox-Id: {message.outbox_id}\n"
        f"X-Rollout-Email: {_unstructured(message.email)}\n"
        "MIME-Version: 1.0\n"
    )
    if max(map(len, head.split("\n"))) > _MAX_LINE:
        return None
    parts = [
        _part(subtype, text)
        for subtype, text in (("plain", message.text), ("html", message.html))
        if text
    ]
    if len(parts) == 1:
        [(part_head, data)] = parts
        return head.encode() + part_head + b"\n" + data
    while True:  # a boundary no part contains (a random one, so all but certainly)
        # From secrets, not the random module: send threads drawing from its global
        # state changed it under whatever else the process was drawing (a property
        # test's strategies, which Hypothesis then warned of).
        boundary = f"=_rollout_{secrets.token_hex(12)}"
        if not any(boundary.encode() in data for _, data in parts):
            break
    out = [
        head.encode(),
        f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'.encode(),
    ]
    for part_head, data in parts:
        # The line break before a boundary is the boundary's, not the part's: one more.
        out += [f"--{boundary}\n".encode(), part_head, b"\n", data, b"\n"]
    out.append(f"--{boundary}--\n".encode())
    return b"".join(out)


# --- choosing ---------------------------------------------------------------------------


def make_sender(
    settings: Settings,
    *,
    from_address: str = DEFAULT_FROM_ADDRESS,
    from_name: str = DEFAULT_FROM_NAME,
) -> Sender:
    """SendGrid when an API key is configured, else the file outbox: the one place
    the choice is made. The plan says who the emails come from."""
    if settings.sendgrid_api_key is not None:
        return SendGridSender(
            settings.sendgrid_api_key,
            settings.sendgrid_url,
            timeout=settings.sendgrid_timeout_seconds,
            backoff_cap=settings.sendgrid_retry_wait_seconds,
            from_address=from_address,
            from_name=from_name,
        )
    return FileSender(settings.outbox_dir, from_address=from_address, from_name=from_name)

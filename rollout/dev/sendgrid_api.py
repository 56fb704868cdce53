"""A local stand-in for SendGrid's ``POST /v3/mail/send``, for development and tests.

It checks the bearer key and validates the request body against the rules SendGrid
documents for Mail Send (answering 400 with SendGrid's ``{"errors": [...]}`` shape),
answers 202 with an ``X-Message-Id`` for accepted mail and remembers what it accepted.
It never delivers anything.

Beyond the SendGrid API it has a few development endpoints (no authentication: bind it
to localhost only):

- ``GET /dev/messages``: every accepted message, as a JSON list of
  ``{"message_id", "received_at", "body"}``; ``DELETE /dev/messages`` forgets them.
- ``POST /dev/faults``: a JSON list of faults that replaces the pending fault script
  (204; 400 naming the problem, with the script unchanged, for a bad one).
  ``GET /dev/faults`` answers the faults still pending, in the same format;
  ``DELETE /dev/faults`` clears them (204).

It serves SendGrid's suppression lists too (``GET /v3/suppression/bounces``, ``blocks``,
``spam_reports``, ``invalid_emails`` and ``unsubscribes``, the global unsubscribes),
paged as SendGrid pages them (``limit`` up to 500, the default; ``offset``), from lists
set with ``POST /dev/suppressions`` (a JSON object of list name to entries, each as
SendGrid answers it: ``{"email", "created", ...}``; the lists named are replaced) and
read back with ``GET /dev/suppressions``. Tests script faults for those pages apart
(:meth:`DevSendGrid.script_suppression_faults`).

Given a webhook URL, it posts what happens to each accepted message there as SendGrid's
Event Webhook does, in signed batches (rollout.dev.event_webhook): delivered, or
dropped for an address on its lists, or the outcome scripted for the address with
``POST /dev/events`` (``{"ADDRESS": "bounce" | "dropped" | "deferred"}``).

It also answers ``GET /v3/scopes`` (SendGrid's list of the key's permissions, here
``mail.send`` and the five suppression lists' read scopes) for a valid key and 401 for
another: ``rollout doctor`` checks a key with it. Faults never apply to it.

The fault script is a JSON list of objects, applied in order, one per
``/v3/mail/send`` request, before authentication (they stand for trouble in front of
the API: rate limiter, load balancer, network). Each object has one or more of:

- ``status``: an integer 400..599; 429 also sends ``Retry-After`` (when ``retry_after``
  is given, in seconds) and SendGrid's ``X-RateLimit-*`` headers; any other status
  comes with a SendGrid-like error body: ``{"status": 429, "retry_after": 1}``,
  ``{"status": 500}``.
- ``stall``: seconds to wait, then answer normally: ``{"stall": 1.5}``. A stalled request
  that ends in 202 IS recorded, even when the client gave up waiting: the server cannot
  know. That is also what real SendGrid may do, so tests should count deliveries by
  outbox id. ``stall`` can be combined with ``status`` (wait, then fail).
- ``drop``: ``{"drop": true}`` reads the request, then closes the connection without any
  response (not combinable with ``status``).
- ``trickle``: seconds over which the answer is written, a byte every TRICKLE_STEP
  (0.1 s, several bytes a step for a long answer), its headers padded to last that long:
  ``{"trickle": 6}``. No read waits longer
  than a step, so a client's per-read timeout never fires: a server that answers this
  slowly holds a request as long as it likes (only a limit on the whole request would
  end it). It applies to the answer a request would get (a 202, recorded before its
  first byte, or a scripted ``status``); not combinable with ``drop``.

For example, two rate-limited requests, then a dropped one, then normal service::

    curl -X POST localhost:3030/dev/faults \\
      -d '[{"status": 429, "retry_after": 1}, {"status": 429}, {"drop": true}]'

Tests use :class:`DevSendGrid` (a context manager running the server on a free port in a
background thread); ``rollout dev sendgrid`` runs :func:`serve` in the foreground.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rollout.dev.event_webhook import BOUNCE_REASON, EventPoster
from rollout.dev.webhook_signing import WebhookSigner

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "SG.dev.local-development-key"
MAIL_SEND_PATH = "/v3/mail/send"
SCOPES_PATH = "/v3/scopes"
FAULTS_PATH = "/dev/faults"
SUPPRESSIONS_PATH = "/dev/suppressions"
EVENTS_PATH = "/dev/events"
SUPPRESSION_PREFIX = "/v3/suppression/"
# SendGrid's suppression lists, and the fields each entry has besides email and created.
SUPPRESSION_LISTS: dict[str, tuple[str, ...]] = {
    "bounces": ("reason", "status"),
    "blocks": ("reason", "status"),
    "spam_reports": ("ip",),
    "invalid_emails": ("reason",),
    "unsubscribes": (),
}
# SendGrid answers at most 500 entries a page.
SUPPRESSION_PAGE_MAX = 500
# What a key made with "Mail Send" and read access to "Suppressions" is granted
# (SendGrid's scope names): what rollout needs.
DEFAULT_SCOPES = (
    "mail.send",
    "suppression.blocks.read",
    "suppression.bounces.read",
    "suppression.invalid_emails.read",
    "suppression.spam_reports.read",
    "suppression.unsubscribes.read",
)
HELP_URL = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"

# Documented Mail Send limits.
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_BODY_BYTES = 30 * 1024 * 1024
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
# Deliberately loose (one @, a dotted domain, no spaces or brackets): the point is to
# catch obviously broken addresses the way SendGrid does, not to implement RFC 5322.
_EMAIL_RE = re.compile(r"\A[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+\.[^@\s<>()\[\],;:\"]+\Z")
_FAULT_KEYS = frozenset({"status", "retry_after", "stall", "drop", "trickle"})
# The pause between the bytes of a trickled answer (the ``trickle`` fault), in seconds.
TRICKLE_STEP = 0.1


# --- validation ------------------------------------------------------------------------

Errors = list[dict[str, Any]]

# SendGrid's wording, where its error reference gives one.
_EXAMPLE_RECIPIENT = (
    '{"email": "example@example.com"} or '
    '{"email": "example@example.com", "name": "Example Recipient"}'
)
MSG_NO_PERSONALIZATION = "You must have at least one personalization."
MSG_TOO_MANY_PERSONALIZATIONS = (
    "The personalization block is limited to 1000 personalizations per API request. "
    "You have provided {n} personalizations. Please consider splitting this into multiple "
    "requests and resending your request."
)
MSG_TOO_MANY_RECIPIENTS = "There is a limit of 1000 total recipients (to + cc + bcc) per request."
MSG_TO_REQUIRED = "The to parameter is required for all personalization objects."
MSG_RECIPIENT = (
    "Each {kind} object must at least have an email address and may also contain a name. "
    "e.g. {example}"
)
MSG_DUPLICATE = (
    "Each unique email address in the personalizations array should only be included once. "
    "You have included {address} more than once."
)
MSG_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires "
    "the email parameter, but may also contain a name parameter."
)
MSG_FROM_INVALID = "The from email does not contain a valid address."
MSG_REPLY_TO_INVALID = "The reply_to email does not contain a valid address."
MSG_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
MSG_SUBJECT_EMPTY = "The subject of your email must be a string at least one character in length."
MSG_CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. "
    "There must be at least one defined content block."
)
MSG_CONTENT_TYPE = (
    "The content type cannot contain ';', or CRLF characters. "
    "The content type must also be at least one character in length."
)
MSG_CONTENT_VALUE = "The content value must be a string at least one character in length."
MSG_CONTENT_ORDER = "If present, text/plain and text/html may only be provided in this order."
MSG_CUSTOM_ARGS_SIZE = "The total size of custom arguments may not exceed 10,000 bytes."
MSG_CRLF = "Header names and values may not contain CR or LF characters."
# SendGrid's documented limits of v3 Mail Send: "The to.name, cc.name, and bcc.name
# personalizations cannot include either the ; or , characters."
MSG_RECIPIENT_NAME = "The {kind}.name cannot include either the ; or , characters."
MSG_RESERVED_HEADER = "The following header is reserved and cannot be set: {name}."
MSG_TOO_MANY_CATEGORIES = "Too many categories on this message. The maximum is 10."
MSG_CATEGORY_LENGTH = "A category cannot have more than 255 characters."


def error(message: str, field_name: str | None = None) -> dict[str, Any]:
    """One entry of SendGrid's ``errors`` list."""
    anchor = field_name.split(".")[0] if field_name else None
    help_url = f"{HELP_URL}#message.{anchor}" if anchor else None
    return {"message": message, "field": field_name, "help": help_url}


# bool before int: True is an int too.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
)


def _type_name(value: object) -> str:
    # The names SendGrid's JSON-schema errors use ("Expected: string, given: integer").
    if value is None:
        return "null"
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return "object"


def _type_error(expected: str, value: object, field_name: str) -> dict[str, Any]:
    return error(f"Invalid type. Expected: {expected}, given: {_type_name(value)}.", field_name)


def is_valid_email(value: object) -> bool:
    return isinstance(value, str) and bool(_EMAIL_RE.match(value))


def _has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value


def _check_address(value: object, where: str, message: str, *, kind: str | None = None) -> Errors:
    """An ``{"email": ..., "name": ...}`` object (from, reply_to, each recipient: ``kind``
    to, cc or bcc)."""
    if not isinstance(value, dict):
        return [error(message, where)]
    if not is_valid_email(value.get("email")):
        return [error(message, f"{where}.email")]
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        return [_type_error("string", name, f"{where}.name")]
    if name and _has_crlf(name):
        return [error(MSG_CRLF, f"{where}.name")]
    if kind and name and (";" in name or "," in name):
        return [error(MSG_RECIPIENT_NAME.format(kind=kind), f"{where}.name")]
    return []


def _check_recipients(value: object, where: str, kind: str) -> Errors:
    if value is None:
        return [error(MSG_TO_REQUIRED, where)] if kind == "to" else []
    if not isinstance(value, list):
        return [_type_error("array", value, where)]
    if kind == "to" and not value:
        return [error(MSG_TO_REQUIRED, where)]
    message = MSG_RECIPIENT.format(kind=kind, example=_EXAMPLE_RECIPIENT)
    errors: Errors = []
    for index, recipient in enumerate(value):
        errors += _check_address(recipient, f"{where}.{index}", message, kind=kind)
    return errors


def _addresses(personalization: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for kind in ("to", "cc", "bcc"):
        recipients = personalization.get(kind)
        if isinstance(recipients, list):
            found += [r["email"] for r in recipients if isinstance(r, dict) and "email" in r]
    return found


def _check_duplicates(personalization: Mapping[str, Any], where: str) -> Errors:
    seen: set[str] = set()
    errors: Errors = []
    for address in _addresses(personalization):
        key = str(address).lower()
        if key in seen:
            errors.append(error(MSG_DUPLICATE.format(address=address), where))
        seen.add(key)
    return errors


def _check_string_map(value: object, where: str, *, headers: bool = False) -> Errors:
    """``headers`` / ``custom_args``: an object whose values are all strings."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [_type_error("object", value, where)]
    errors: Errors = []
    for key, item in value.items():
        if not isinstance(item, str):
            errors.append(_type_error("string", item, f"{where}.{key}"))
        elif headers and (_has_crlf(item) or _has_crlf(key)):
            errors.append(error(MSG_CRLF, f"{where}.{key}"))
        if headers and key.lower() in RESERVED_HEADERS:
            errors.append(error(MSG_RESERVED_HEADER.format(name=key), where))
    return errors


def _custom_args_size(*maps: object) -> int:
    # Message-level custom_args are merged into each personalization's, so they count too.
    merged: dict[str, Any] = {}
    for item in maps:
        if isinstance(item, dict):
            merged.update(item)
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in merged.items())


def _check_subject(value: object, where: str) -> Errors:
    if not isinstance(value, str) or not value:
        return [error(MSG_SUBJECT_EMPTY, where)]
    if _has_crlf(value):
        return [error(MSG_CRLF, where)]
    return []


def _check_personalization(body: Mapping[str, Any], item: object, where: str) -> Errors:
    if not isinstance(item, dict):
        return [_type_error("object", item, where)]
    errors: Errors = []
    for kind in ("to", "cc", "bcc"):
        errors += _check_recipients(item.get(kind), f"{where}.{kind}", kind)
    errors += _check_duplicates(item, where)
    if "subject" in item:
        errors += _check_subject(item["subject"], f"{where}.subject")
    errors += _check_string_map(item.get("headers"), f"{where}.headers", headers=True)
    errors += _check_string_map(item.get("custom_args"), f"{where}.custom_args")
    if _custom_args_size(body.get("custom_args"), item.get("custom_args")) > MAX_CUSTOM_ARGS_BYTES:
        errors.append(error(MSG_CUSTOM_ARGS_SIZE, f"{where}.custom_args"))
    return errors


def _check_personalizations(body: Mapping[str, Any]) -> Errors:
    items = body.get("personalizations")
    if not isinstance(items, list) or not items:
        return [error(MSG_NO_PERSONALIZATION, "personalizations")]
    if len(items) > MAX_PERSONALIZATIONS:
        return [error(MSG_TOO_MANY_PERSONALIZATIONS.format(n=len(items)), "personalizations")]
    errors: Errors = []
    for index, item in enumerate(items):
        errors += _check_personalization(body, item, f"personalizations.{index}")
    total = sum(len(_addresses(item)) for item in items if isinstance(item, dict))
    if total > MAX_RECIPIENTS:
        errors.append(error(MSG_TOO_MANY_RECIPIENTS, "personalizations"))
    return errors


def _check_from(body: Mapping[str, Any]) -> Errors:
    if "from" not in body:
        return [error(MSG_FROM_REQUIRED, "from")]
    errors = _check_address(body["from"], "from", MSG_FROM_INVALID)
    if "reply_to" in body:
        errors += _check_address(body["reply_to"], "reply_to", MSG_REPLY_TO_INVALID)
    return errors


def _check_subject_required(body: Mapping[str, Any]) -> Errors:
    if "subject" in body:
        return _check_subject(body["subject"], "subject")
    items = body.get("personalizations")
    every_has_one = isinstance(items, list) and all(
        isinstance(p, dict) and "subject" in p for p in items
    )
    if every_has_one or body.get("template_id"):
        return []
    return [error(MSG_SUBJECT_REQUIRED, "subject")]


def _check_content(body: Mapping[str, Any]) -> Errors:
    content = body.get("content")
    if content is None and body.get("template_id"):
        return []
    if not isinstance(content, list) or not content:
        return [error(MSG_CONTENT_REQUIRED, "content")]
    errors: Errors = []
    types: list[str] = []
    for index, block in enumerate(content):
        where = f"content.{index}"
        if not isinstance(block, dict):
            errors.append(_type_error("object", block, where))
            continue
        kind, value = block.get("type"), block.get("value")
        if not isinstance(kind, str) or not kind or ";" in kind or _has_crlf(kind):
            errors.append(error(MSG_CONTENT_TYPE, f"{where}.type"))
        else:
            types.append(kind)
        if not isinstance(value, str) or not value:
            errors.append(error(MSG_CONTENT_VALUE, f"{where}.value"))
    return errors + _check_content_order(types)


def _check_content_order(types: list[str]) -> Errors:
    # text/plain must come first when present, and text/html after it.
    if "text/plain" in types and types[0] != "text/plain":
        return [error(MSG_CONTENT_ORDER, "content")]
    return []


def _check_categories(value: object) -> Errors:
    if value is None:
        return []
    if not isinstance(value, list):
        return [_type_error("array", value, "categories")]
    if len(value) > MAX_CATEGORIES:
        return [error(MSG_TOO_MANY_CATEGORIES, "categories")]
    errors: Errors = []
    for index, name in enumerate(value):
        if not isinstance(name, str):
            errors.append(_type_error("string", name, f"categories.{index}"))
        elif len(name) > MAX_CATEGORY_LENGTH:
            errors.append(error(MSG_CATEGORY_LENGTH, f"categories.{index}"))
    return errors


def _check_template_id(body: Mapping[str, Any]) -> Errors:
    template_id = body.get("template_id")
    if template_id is None or (isinstance(template_id, str) and template_id):
        return []
    return [_type_error("string", template_id, "template_id")]


BYPASS_SETTINGS = (
    "bypass_list_management",
    "bypass_spam_management",
    "bypass_bounce_management",
    "bypass_unsubscribe_management",
)
MSG_BYPASS_CONFLICT = (
    "bypass_list_management cannot be combined with bypass_spam_management, "
    "bypass_bounce_management or bypass_unsubscribe_management."
)


def _check_mail_settings(value: object) -> Errors:
    """The bypass settings: each ``{"enable": bool}``; bypass_list_management alone."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [_type_error("object", value, "mail_settings")]
    errors: Errors = []
    for name in BYPASS_SETTINGS:
        setting = value.get(name)
        if setting is None:
            continue
        if not isinstance(setting, dict) or not isinstance(setting.get("enable"), bool):
            errors.append(error("enable must be a boolean", f"mail_settings.{name}.enable"))
    enabled = {
        name
        for name in BYPASS_SETTINGS
        if isinstance(value.get(name), dict) and value[name].get("enable") is True
    }
    if "bypass_list_management" in enabled and len(enabled) > 1:
        errors.append(error(MSG_BYPASS_CONFLICT, "mail_settings"))
    return errors


def validate_mail(body: object) -> Errors:
    """SendGrid-style errors for a Mail Send body; empty when SendGrid would accept it."""
    if not isinstance(body, dict):
        return [_type_error("object", body, "")]
    return (
        _check_personalizations(body)
        + _check_from(body)
        + _check_subject_required(body)
        + _check_content(body)
        + _check_template_id(body)
        + _check_string_map(body.get("headers"), "headers", headers=True)
        + _check_string_map(body.get("custom_args"), "custom_args")
        + _check_categories(body.get("categories"))
        + _check_mail_settings(body.get("mail_settings"))
    )


# --- faults ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    status: int | None = None
    retry_after: float | None = None
    stall: float = 0.0
    drop: bool = False
    trickle: float = 0.0


def parse_fault(raw: Mapping[str, Any]) -> Fault:
    """A fault from its JSON form; ValueError says what is wrong with it."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"a fault must be an object, not {_type_name(raw)}")
    unknown = set(raw) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault keys: {sorted(unknown)}")
    status = raw.get("status")
    if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
        raise ValueError("fault status must be an integer 400..599")
    fault = Fault(
        status=status,
        retry_after=_non_negative(raw.get("retry_after"), "retry_after"),
        stall=_non_negative(raw.get("stall"), "stall") or 0.0,
        drop=bool(raw.get("drop", False)),
        trickle=_non_negative(raw.get("trickle"), "trickle") or 0.0,
    )
    if fault.status is None and not fault.drop and not fault.stall and not fault.trickle:
        raise ValueError("a fault needs status, stall, drop or trickle")
    if fault.drop and fault.status is not None:
        raise ValueError("a dropped connection has no status")
    if fault.drop and fault.trickle:
        raise ValueError("a dropped connection has no answer to trickle")
    return fault


def parse_suppressions(raw: object) -> dict[str, list[dict[str, Any]]]:
    """Suppression lists from their ``POST /dev/suppressions`` form; ValueError says
    what is wrong. Each entry needs an email and a Unix ``created`` time."""
    if not isinstance(raw, Mapping):
        raise ValueError("expected a JSON object of suppression list name to entries")
    lists: dict[str, list[dict[str, Any]]] = {}
    for name, entries in raw.items():
        if name not in SUPPRESSION_LISTS:
            raise ValueError(
                f"unknown suppression list {name!r}; known: {sorted(SUPPRESSION_LISTS)}"
            )
        if not isinstance(entries, list):
            raise ValueError(f"{name}: expected a list of entries")
        allowed = {"email", "created", *SUPPRESSION_LISTS[name]}
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("email"), str):
                raise ValueError(f"{name}: each entry needs an email")
            created = entry.get("created")
            if isinstance(created, bool) or not isinstance(created, int):
                raise ValueError(f"{name}: each entry needs created, a Unix time")
            if set(entry) - allowed:
                raise ValueError(f"{name}: unknown fields {sorted(set(entry) - allowed)}")
        lists[name] = [dict(entry) for entry in entries]
    return lists


def fault_json(fault: Fault) -> dict[str, Any]:
    """A fault in the form ``POST /dev/faults`` takes (what ``GET /dev/faults`` shows)."""
    shown: dict[str, Any] = {}
    if fault.status is not None:
        shown["status"] = fault.status
    if fault.retry_after is not None:
        shown["retry_after"] = fault.retry_after
    if fault.stall:
        shown["stall"] = fault.stall
    if fault.drop:
        shown["drop"] = True
    if fault.trickle:
        shown["trickle"] = fault.trickle
    return shown


def _non_negative(value: object, name: str) -> float | None:
    if value is None:
        return None
    # NaN passed "< 0" (and a NaN or infinite wait was a 500 on the 429's headers).
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"fault {name} must be a non-negative number")
    return float(value)


# --- state shared by the handler threads ----------------------------------------------


@dataclass
class _State:
    api_key: str
    record_path: Path | None
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    messages: list[dict[str, Any]] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    suppressions: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in SUPPRESSION_LISTS}
    )
    suppression_faults: deque[Fault] = field(default_factory=deque)
    events: EventPoster | None = None
    requests_seen: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def next_fault(self) -> Fault | None:
        with self.changed:
            self.requests_seen += 1
            return self.faults.popleft() if self.faults else None

    def record(self, body: Any) -> str:
        entry = {
            "message_id": new_message_id(),
            "received_at": datetime.now(UTC).isoformat(),
            "body": body,
        }
        with self.changed:
            if self.record_path is not None:
                self.record_path.parent.mkdir(parents=True, exist_ok=True)
                with self.record_path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self.messages.append(entry)
            self.changed.notify_all()
        return entry["message_id"]

    def listed(self, address: str) -> str | None:
        """The first suppression list holding ``address`` (any case), if any."""
        wanted = address.lower()
        with self.changed:
            for name in SUPPRESSION_LISTS:
                if any(entry["email"].lower() == wanted for entry in self.suppressions[name]):
                    return name
        return None

    def add_bounce(self, address: str) -> None:
        """What SendGrid does after a hard bounce: the address joins the bounces list."""
        entry = {
            "email": address,
            "created": int(time.time()),
            "reason": BOUNCE_REASON,
            "status": "5.1.1",
        }
        with self.changed:
            if not any(e["email"].lower() == address.lower() for e in self.suppressions["bounces"]):
                self.suppressions["bounces"].append(entry)


def new_message_id() -> str:
    # SendGrid's ids are opaque ~22-character strings; a url-safe uuid is alike enough.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# --- HTTP ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "DevSendGrid/1"
    server: _Server
    _trickle = 0.0  # seconds the next answer takes (the ``trickle`` fault)

    @property
    def state(self) -> _State:
        return self.server.state

    def log_message(self, format: str, *args: Any) -> None:
        # Only the request line and status: never headers (they carry the key).
        log.info("%s - %s", self.address_string(), format % args)

    # --- routing

    def do_POST(self) -> None:
        if self.path == MAIL_SEND_PATH:
            self._guarded(self._mail_send)
        elif self.path == FAULTS_PATH:
            self._set_faults()
        elif self.path == SUPPRESSIONS_PATH:
            self._set_suppressions()
        elif self.path == EVENTS_PATH:
            self._set_event_outcomes()
        else:
            self._not_found()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(SUPPRESSION_PREFIX):
            self._guarded(self._suppression_page)
        elif self.path == SUPPRESSIONS_PATH:
            with self.state.changed:
                lists = {name: list(entries) for name, entries in self.state.suppressions.items()}
            self._send_json(HTTPStatus.OK, lists)
        elif self.path == "/dev/messages":
            with self.state.changed:
                listing = list(self.state.messages)
            self._send_json(HTTPStatus.OK, listing)
        elif self.path == FAULTS_PATH:
            with self.state.changed:
                pending = [fault_json(fault) for fault in self.state.faults]
            self._send_json(HTTPStatus.OK, pending)
        elif self.path == SCOPES_PATH:
            self._scopes()
        elif self.path == MAIL_SEND_PATH:
            self._method_not_allowed()
        else:
            self._not_found()

    def do_DELETE(self) -> None:
        if self.path == "/dev/messages":
            with self.state.changed:
                self.state.messages.clear()
            self._send_empty(HTTPStatus.NO_CONTENT)
        elif self.path == FAULTS_PATH:
            with self.state.changed:
                self.state.faults.clear()
            self._send_empty(HTTPStatus.NO_CONTENT)
        else:
            self._not_found()

    def do_PUT(self) -> None:
        if self.path == MAIL_SEND_PATH:
            self._method_not_allowed()
        else:
            self._not_found()

    def _guarded(self, handler: Callable[[], None]) -> None:
        # A bug here should look like SendGrid's 500, not like a dropped connection
        # (which the sender would retry as a network fault).
        try:
            handler()
        except Exception:
            log.exception("dev SendGrid failed on %s %s", self.command, self.path)
            self._send_errors(HTTPStatus.INTERNAL_SERVER_ERROR, [error("internal error")])

    # --- /v3/mail/send

    def _mail_send(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        fault = self.state.next_fault()
        if fault is not None and self._apply_fault(fault):
            return
        if not self._authorised():
            return
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            self._send_errors(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                [error("Content-Type should be application/json.")],
            )
            return
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._send_errors(HTTPStatus.BAD_REQUEST, [error("Bad Request")])
            return
        errors = validate_mail(body)
        if errors:
            self._send_errors(HTTPStatus.BAD_REQUEST, errors)
            return
        message_id = self.state.record(body)
        if self.state.events is not None:
            self.state.events.accepted(message_id, body)
        self._send_empty(HTTPStatus.ACCEPTED, {"X-Message-Id": message_id})

    # --- /v3/suppression/<list>

    def _suppression_page(self) -> None:
        url = urlsplit(self.path)
        name = url.path.removeprefix(SUPPRESSION_PREFIX)
        if name not in SUPPRESSION_LISTS:
            self._not_found()
            return
        with self.state.changed:
            fault = (
                self.state.suppression_faults.popleft() if self.state.suppression_faults else None
            )
        if fault is not None and self._apply_fault(fault):
            return
        if not self._authorised():
            return
        query = parse_qs(url.query)
        try:
            limit = int(query.get("limit", [str(SUPPRESSION_PAGE_MAX)])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            self._send_errors(HTTPStatus.BAD_REQUEST, [error("limit and offset must be integers")])
            return
        if not 1 <= limit <= SUPPRESSION_PAGE_MAX or offset < 0:
            self._send_errors(
                HTTPStatus.BAD_REQUEST,
                [error(f"limit must be 1..{SUPPRESSION_PAGE_MAX} and offset at least 0")],
            )
            return
        with self.state.changed:
            page = self.state.suppressions[name][offset : offset + limit]
        self._send_json(HTTPStatus.OK, page)

    def _set_suppressions(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        try:
            lists = parse_suppressions(json.loads(raw))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            self._send_errors(HTTPStatus.BAD_REQUEST, [error(str(exc), "suppressions")])
            return
        with self.state.changed:
            self.state.suppressions.update(lists)
        self._send_empty(HTTPStatus.NO_CONTENT)

    def _set_event_outcomes(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        events = self.state.events
        if events is None:
            self._send_errors(HTTPStatus.CONFLICT, [error("no webhook URL is configured")])
            return
        try:
            outcomes = json.loads(raw)
            if not isinstance(outcomes, dict):
                raise ValueError("expected a JSON object of address to outcome")
            events.script(outcomes)
        except ValueError as exc:
            self._send_errors(HTTPStatus.BAD_REQUEST, [error(str(exc), "events")])
            return
        self._send_empty(HTTPStatus.NO_CONTENT)

    # --- /v3/scopes

    def _scopes(self) -> None:
        # No fault script here: it stands for mail sends, and a health check reading
        # the key must not use up a fault a test scripted for them.
        if self._authorised():
            self._send_json(HTTPStatus.OK, {"scopes": list(self.state.scopes)})

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._send_errors(HTTPStatus.BAD_REQUEST, [error("Bad Request")])
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_errors(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                [error("The JSON payload you have included in your request is too large.")],
            )
            return None
        return self.rfile.read(length)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization")
        if not header:
            self._send_errors(HTTPStatus.UNAUTHORIZED, [error("authorization required")])
            return False
        scheme, _, key = header.partition(" ")
        expected = self.state.api_key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected):
            self._send_errors(
                HTTPStatus.UNAUTHORIZED,
                [error("The provided authorization grant is invalid, expired, or revoked")],
            )
            return False
        return True

    def _apply_fault(self, fault: Fault) -> bool:
        """Carry out a fault; True when it answered (or dropped) the request."""
        if fault.stall and self.state.stopping.wait(fault.stall):
            self._drop()  # shutting down: don't hold the test run hostage
            return True
        if fault.drop:
            self._drop()
            return True
        self._trickle = fault.trickle  # the answer, whichever it is, goes slowly
        if fault.status is None:
            return False  # a pure stall or trickle: go on and answer normally
        if fault.status == HTTPStatus.TOO_MANY_REQUESTS:
            self._send_rate_limited(fault.retry_after)
        else:
            self._send_errors(fault.status, [error(_fault_message(fault.status))])
        return True

    def _send_rate_limited(self, retry_after: float | None) -> None:
        wait = retry_after if retry_after is not None else 1.0
        headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time() + wait)),
        }
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        self._send_errors(HTTPStatus.TOO_MANY_REQUESTS, [error("too many requests")], headers)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may be gone already
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- /dev/faults

    def _set_faults(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        try:
            faults = json.loads(raw)
            if not isinstance(faults, list):
                raise ValueError("expected a JSON list of faults")
            parsed = [parse_fault(item) for item in faults]
        except ValueError as exc:  # JSONDecodeError is a ValueError
            self._send_errors(HTTPStatus.BAD_REQUEST, [error(str(exc), "faults")])
            return
        with self.state.changed:
            self.state.faults = deque(parsed)
        self._send_empty(HTTPStatus.NO_CONTENT)

    # --- responses

    def _not_found(self) -> None:
        self._send_errors(HTTPStatus.NOT_FOUND, [error("resource not found")])

    def _method_not_allowed(self) -> None:
        self._send_errors(HTTPStatus.METHOD_NOT_ALLOWED, [error("method not allowed")])

    def _send_errors(
        self, status: int, errors: list[dict[str, Any]], headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_json(status, {"errors": errors}, headers)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self._respond(status, data, {"Content-Type": "application/json", **(headers or {})})

    def _send_empty(self, status: int, headers: Mapping[str, str] | None = None) -> None:
        self._respond(status, b"", headers or {})

    def _respond(self, status: int, data: bytes, headers: Mapping[str, str]) -> None:
        trickle, self._trickle = self._trickle, 0.0
        try:
            if trickle:
                self._respond_slowly(status, data, headers, trickle)
                return
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            # The client gave up (e.g. timed out during a stall); nothing left to tell it.
            self.close_connection = True

    def _respond_slowly(
        self, status: int, data: bytes, headers: Mapping[str, str], seconds: float
    ) -> None:
        """The answer a byte every TRICKLE_STEP, padded to last ``seconds`` (the
        ``trickle`` fault); a stop of the server drops it."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        steps = math.ceil(seconds / TRICKLE_STEP)
        padding = steps - len(head) - len(data) - 19  # what the padding's own line adds
        if padding > 0:
            head += b"X-Dev-Trickle: " + b"." * padding + b"\r\n"
        head += b"\r\n"
        answer = head + data
        # In ``steps`` pieces (padded, it has at least as many bytes): an answer longer
        # than that, a byte a step, took its length in tenths of a second, not ``seconds``.
        pieces = max(1, min(steps, len(answer)))
        for piece in range(pieces):
            start, end = piece * len(answer) // pieces, (piece + 1) * len(answer) // pieces
            self.wfile.write(answer[start:end])
            if self.state.stopping.wait(TRICKLE_STEP):
                self._drop()  # shutting down: don't hold the test run hostage
                return


def _fault_message(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "injected fault"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must never keep the process alive
    # The default backlog of 5 drops the SYNs of a burst of concurrent senders, which
    # then wait a second to retry: a sender at concurrency 16 slowed to 56 messages/s.
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        if ":" in address[0]:  # an IPv6 address (`--host ::1`): an IPv4 socket refused it
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets from clients that gave up are routine here; keep them off stderr.
        log.debug("connection from %s ended abruptly", client_address, exc_info=True)


# --- public API ------------------------------------------------------------------------


class DevSendGrid:
    """The dev server on a background thread. Use as a context manager.

    ``port=0`` picks a free port; ``url`` is then e.g. ``http://127.0.0.1:54321``, to be
    used as the SendGrid client's host (``ROLLOUT_SENDGRID_URL``).
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record_path: Path | None = None,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        webhook_url: str | None = None,
        webhook_signer: WebhookSigner | None = None,
    ) -> None:
        self.api_key = api_key
        self._state = _State(api_key=api_key, record_path=record_path, scopes=tuple(scopes))
        self._address = (host, port)
        self.webhook_url = webhook_url
        # Posts are signed with this key pair; its public key is what the receiver
        # verifies with (ROLLOUT_SENDGRID_WEBHOOK_KEY).
        self.webhook_signer = webhook_signer or WebhookSigner()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> DevSendGrid:
        if self._server is not None:
            return self
        self._state.stopping.clear()
        if self.webhook_url is not None:
            self._state.events = EventPoster(
                self.webhook_url,
                self.webhook_signer,
                listed=self._state.listed,
                add_bounce=self._state.add_bounce,
            )
        self._server = _Server(self._address, self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="dev-sendgrid",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._state.stopping.set()  # wakes stalled handlers
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._state.events is not None:
            self._state.events.close()  # what was accepted is still posted
            self._state.events = None
        self._server = None
        self._thread = None

    def __enter__(self) -> DevSendGrid:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("DevSendGrid is not running")
        host, port = self._server.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Accepted messages, oldest first: ``{"message_id", "received_at", "body"}``."""
        with self._state.changed:
            return list(self._state.messages)

    @property
    def requests_seen(self) -> int:
        """``/v3/mail/send`` requests received, including rejected and faulted ones."""
        with self._state.changed:
            return self._state.requests_seen

    def script(self, faults: Iterable[Mapping[str, Any]]) -> None:
        """Replace the pending fault script; each fault applies to one upcoming request."""
        parsed = [parse_fault(item) for item in faults]
        with self._state.changed:
            self._state.faults = deque(parsed)

    def suppress(self, lists: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        """Replace the named suppression lists (``POST /dev/suppressions``' form)."""
        parsed = parse_suppressions({name: list(entries) for name, entries in lists.items()})
        with self._state.changed:
            self._state.suppressions.update(parsed)

    def script_suppression_faults(self, faults: Iterable[Mapping[str, Any]]) -> None:
        """Replace the faults pending for suppression list pages, one per page asked."""
        parsed = [parse_fault(item) for item in faults]
        with self._state.changed:
            self._state.suppression_faults = deque(parsed)

    def script_events(self, outcomes: Mapping[str, str]) -> None:
        """Outcomes by address for the events posted to the webhook (``bounce``,
        ``dropped``, ``deferred``, ``delivered``); needs ``webhook_url`` and a start."""
        if self._state.events is None:
            raise RuntimeError("no webhook URL, or the server is not running")
        self._state.events.script(outcomes)

    def wait_for_events(self, count: int, timeout: float = 10.0) -> int:
        """Block until ``count`` events were posted; returns how many the receiver took."""
        if self._state.events is None:
            raise RuntimeError("no webhook URL, or the server is not running")
        return self._state.events.wait(count, timeout)

    @property
    def pending_faults(self) -> int:
        with self._state.changed:
            return len(self._state.faults)

    def clear(self) -> None:
        """Forget accepted messages, pending faults and the request count."""
        with self._state.changed:
            self._state.messages.clear()
            self._state.faults.clear()
            self._state.suppression_faults.clear()
            self._state.requests_seen = 0

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` messages were accepted (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        with self._state.changed:
            while len(self._state.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.changed.wait(remaining)
            return list(self._state.messages)


def serve(
    host: str = "127.0.0.1",
    port: int = 3030,
    api_key: str = DEFAULT_API_KEY,
    record_path: Path | None = None,
    webhook_url: str | None = None,
) -> None:
    """Run the dev server in the foreground until Ctrl-C."""
    server = DevSendGrid(
        api_key, host=host, port=port, record_path=record_path, webhook_url=webhook_url
    ).start()
    if webhook_url is not None:
        print(
            f"posting signed events to {webhook_url}; its verification key "
            f"(ROLLOUT_SENDGRID_WEBHOOK_KEY): {server.webhook_signer.public_key}"
        )
    # The key is not printed: someone may have started this with a real one.
    print(
        f"SendGrid dev server on {server.url} (POST /v3/mail/send, GET /v3/scopes, "
        "GET /v3/suppression/LIST, GET|DELETE /dev/messages, GET|POST|DELETE /dev/faults, "
        "GET|POST /dev/suppressions, POST /dev/events)"
    )
    if record_path is not None:
        print(f"recording accepted messages to {record_path}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()

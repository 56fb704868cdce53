"""What a sender is handed: one rendered email to one recipient, and how sending fails."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import idna

from rollout.core import controls

# C0 and C1 controls and DEL, the line and paragraph separators and the bidirectional
# controls: none belongs in a header (CR/LF could start a new one) or a line of an email
# (U+202E reversed the rest of it: an org's name could make a security email read
# as its owner chose).
CONTROL_CHARACTERS = controls.CONTROL_CHARACTERS


def header_text(text: str) -> str:
    """``text`` as one line of a header (the subject): every control character and run of
    whitespace made one space, so nothing in a value can start a header of its own."""
    return " ".join(CONTROL_CHARACTERS.sub(" ", text).split())


def header_address(address: str) -> str:
    """The address as it goes into the To header: an internationalised domain in its
    IDNA form (``xn--``), the local part as it is. Raises UnicodeError for a domain
    IDNA cannot encode."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    return f"{local}@{_to_idna(domain)}"


def normal_address(address: str) -> str:
    """An address as suppressions store and compare it: stripped, lower-cased by
    Python's Unicode rules (ÅSA@X.EXAMPLE is åsa@x.example). The one home of the rule:
    SQL's lower() folds only ASCII on SQLite (and on PostgreSQL follows the database's
    locale), so no address is compared lower-cased in SQL."""
    return address.strip().lower()


def address_forms(address: str) -> set[str]:
    """The forms one address takes, lower-cased (:func:`normal_address`): as given,
    with its domain in IDNA (as SendGrid lists a bounce: it is sent that form) and in
    Unicode (as a person types it). A suppression of any form stops email to all:
    compared as given, a bounce from ann@xn--bcher-kva.example never stopped the emails
    to ann@bücher.example."""
    text = normal_address(address)
    forms = {text}
    local, at, domain = text.rpartition("@")
    # An ASCII domain without an xn-- label is the same in both forms.
    if at and not (domain.isascii() and "xn--" not in domain):
        for convert in (_to_idna, _from_idna):
            with contextlib.suppress(UnicodeError):
                forms.add(f"{local}@{convert(domain)}")
    return forms


# The characters IDNA 2003 (Python's "idna" codec) maps to others where IDNA 2008, which
# registries and mail servers use, keeps them: ß to ss, a final sigma to sigma, the
# joiners to nothing. Encoded the 2003 way, ann@faß.example was written to
# ann@fass.example: another domain.
_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")


def _to_idna(domain: str) -> str:
    """``domain`` in IDNA 2008 (UTS 46 mapping: case folded, ß kept); a domain IDNA
    2008 refuses (an emoji) in IDNA 2003 unless that would make it another domain.
    UnicodeError (idna.IDNAError is one) when neither takes it."""
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        if _DEVIATIONS & set(domain):
            raise
        return domain.encode("idna").decode("ascii")


def _from_idna(domain: str) -> str:
    try:
        return idna.decode(domain, uts46=True)
    except idna.IDNAError:
        return domain.encode("ascii").decode("idna")


@dataclass(frozen=True)
class Message:
    """A rendered email. ``outbox_id`` ties the delivery back to its notifications row."""

    outbox_id: int
    email: str  # the email's name, e.g. "phase-notice"; a category for the provider
    to_address: str
    to_name: str | None
    subject: str
    text: str
    html: str

    @property
    def header_name(self) -> str | None:
        """The display name beside the address in To: the username, or none at all when
        it holds a control character, or a comma or semicolon, which SendGrid refuses in
        a recipient's name (its documented limits; a name quoted in an .eml would do,
        but the file outbox writes what SendGrid would be sent). The address alone
        delivers; refusing the message would keep an account from every email, the
        enforcement notice included."""
        name = self.to_name
        if not name or CONTROL_CHARACTERS.search(name) or "," in name or ";" in name:
            return None
        return name


# What the reason of a send that may have gone out says (its request went whole and no
# answer came: rollout.notify.senders): SendGrid's events then tell whether it went
# (rollout.notify.delivery records it sent when they do).
MAY_HAVE_GONE = "SendGrid may have sent it"


class DeliveryFailed(Exception):
    """A message could not be delivered. ``permanent`` failures are not worth retrying later."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class SenderUnavailable(DeliveryFailed):
    """The provider took nothing while this message was tried (SendGrid answered 5xx or
    429, or could not be reached, through every attempt; the file outbox could not be
    written): nothing about the message. Not permanent. A drain that sees only these for
    a while stops (rollout.notify.drain), the rest kept queued for the next run."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, permanent=False)


class Sender(Protocol):
    """Delivers one message and returns the provider's message id, or raises DeliveryFailed.

    A sender that talks to a provider says how long one attempt may take at most (its
    request and the wait before the next), in seconds, as ``longest_attempt``, and
    looks before each attempt after the first
    whether the drain still holds the row (:func:`still_held`; else it raises
    :class:`SendAbandoned`): the drain starts no attempt with less of its lease ahead
    than that and a margin (rollout.notify.drain.lease_for), and renews the lease while
    requests are under way (its heartbeat), so no request is under way once the row may
    be taken over. One that says nothing (the file outbox: a write again replaces its
    file) is held for the drain's margin, with no heartbeat."""

    name: str

    def send(self, message: Message) -> str: ...


class SendAbandoned(Exception):
    """A send given up before its next attempt, or before an attempt's request is
    written once its connection is made: the drain no longer holds its row (its lease
    ran out during a wait or a pause, and another drainer took it over). Nothing of this
    attempt went; the row is the other drainer's to send and record."""


_HOLD = threading.local()


@contextlib.contextmanager
def attempts_held_by(keeps: Callable[[], bool]) -> Iterator[None]:
    """While inside, in this thread, :func:`still_held` asks ``keeps`` (the drain's hold
    on the row being sent: renewed if due, False once another drainer took it over)."""
    previous = getattr(_HOLD, "keeps", None)
    _HOLD.keeps = keeps
    try:
        yield
    finally:
        _HOLD.keeps = previous


def still_held() -> bool:
    """Whether the send under way in this thread may make another attempt: its row is
    still the drain's (True outside a drain's send)."""
    keeps = getattr(_HOLD, "keeps", None)
    return keeps is None or bool(keeps())

"""Counts in prose: a number and the words that agree with it ("1 account", "2
accounts ... send them"). Below every other core module (the plan's and the calendar's
messages count too), so any layer may say a count through here."""

from __future__ import annotations

from decimal import Decimal


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 account``, ``2 accounts``, ``12,000 accounts``: a count and its noun, as
    people read them. The plural takes an s unless given (``counted(n, "reply",
    "replies")``); every message that puts a number before a noun says it through here,
    so a count of one never reads ``1 accounts``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def percent(share: float) -> str:
    """A share (0.01) as a percentage people write: ``1``, ``0.5``, ``34``, ``0.00001``,
    from the share as written (its shortest repr), so without a float's tail
    (``7.000000000000001``), an exponent (``1e-05``) or zeros that say nothing
    (``34.0``). The caller adds the ``%``."""
    return format((Decimal(repr(share)) * 100).normalize(), "f")


def by_count(n: int, one: str, many: str) -> str:
    """``one`` when ``n`` is 1, else ``many``: the words after a count that agree with
    it ("1 email queued; add --apply to send it", "2 ... send them")."""
    return one if n == 1 else many


def them(n: int) -> str:
    """``it`` or ``them``: the pronoun for ``n`` things a message has just counted."""
    return by_count(n, "it", "them")


def listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: things named in a sentence."""
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"

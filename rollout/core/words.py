"""Counts in prose: a number and the words that agree with it ("1 account", "2
accounts ... send them"). Below every other core module (the plan's and the calendar's
messages count too), so any layer may say a count through here."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 account``, ``2 accounts``, ``12,000 accounts``: a count and its noun, as
    people read them. The plural takes an s unless given (``counted(n, "reply",
    "replies")``); every message that puts a number before a noun says it through here,
    so a count of one never reads ``1 accounts``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def by_count(n: int, one: str, many: str) -> str:
    """``one`` when ``n`` is 1, else ``many``: the words after a count that agree with
    it ("1 email queued; add --apply to send it", "2 ... send them")."""
    return one if n == 1 else many


def them(n: int) -> str:
    """``it`` or ``them``: the pronoun for ``n`` things a message has just counted."""
    return by_count(n, "it", "them")

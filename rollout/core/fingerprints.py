"""A short fingerprint of a list a person approved: typed back with its count, it lets a
destructive command refuse another list of the same size (one account in, another out)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

# What list_fingerprint gives, and so all a fingerprint typed back can be.
FINGERPRINT = re.compile(r"[0-9a-f]{12}")


def list_fingerprint(*groups: Iterable[object]) -> str:
    """12 hex digits of ``groups``, each taken as a set (order does not matter). An
    item holding a separator (``,`` ``;``) has it escaped: {'x,y', 'z'} and {'x', 'y,z'}
    are two lists (an id's digits have none, so those fingerprints are as they were)."""
    text = ";".join(",".join(sorted(_item(item) for item in group)) for group in groups)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_fingerprint(typed: str) -> bool:
    """Whether ``typed`` (as :func:`same_list` reads it) could be a fingerprint at all: a
    mistyped one would otherwise read as a list that changed since its preview."""
    return FINGERPRINT.fullmatch(typed.strip().lower()) is not None


def same_list(fingerprint: str, typed: str) -> bool:
    """Whether ``typed`` (as a person typed it back: any case, spaces around) names it."""
    return fingerprint == typed.strip().lower()


def _item(item: object) -> str:
    return re.sub(r"[\\,;]", lambda m: "\\" + m.group(), str(item))

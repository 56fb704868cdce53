"""A short fingerprint of a list a person approved: typed back with its count, it lets a
destructive command refuse another list of the same size (one account in, another out)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def list_fingerprint(*groups: Iterable[object]) -> str:
    """12 hex digits of ``groups``, each taken as a set (order does not matter)."""
    text = ";".join(",".join(sorted(str(item) for item in group)) for group in groups)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def same_list(fingerprint: str, typed: str) -> bool:
    """Whether ``typed`` (as a person typed it back: any case, spaces around) names it."""
    return fingerprint == typed.strip().lower()

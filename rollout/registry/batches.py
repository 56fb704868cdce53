"""Lists of values cut to a size one SQL statement can bind.

SQLAlchemy binds each value of an ``IN`` list as a parameter of its own, and a
statement takes at most 65,535 on PostgreSQL (psycopg) and 32,766 on a default
SQLite build. Lists whose length the data decides (a cohort's members, the usernames
of a snooze file) go through ``in_chunks``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Well under both limits, and a statement's parse stays cheap.
IN_LIST_MAX = 5_000


def in_chunks(values: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of at most ``size`` (``IN_LIST_MAX``)."""
    size = size or IN_LIST_MAX
    for start in range(0, len(values), size):
        yield values[start : start + size]

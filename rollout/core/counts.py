"""Whole counts as landing files may write them (docs/data-contracts.md, "Counts").

One rule for every count a landing file carries (a day's downloads, a snooze's days),
whatever its format: a count is a whole number, and its value decides, not its type.
Written as text (a CSV cell, a JSON string or number, a Parquet string column) it is
ASCII digits, with a sign and a fraction of zeros allowed: ``5``, ``5.0`` (what a
writer of a floating-point column, pandas or Spark, writes for a whole count), ``-5``
(then refused as negative). Stored as a number (a Parquet integer, floating-point or
decimal column) any value without a fraction is one. Refused: a fraction (``5.5``),
exponent notation (``1e3``, ``1.5E+11``: a spreadsheet's display of a long number,
rounded to its shown digits), anything else. The same patterns run inside DuckDB
(passed into its SQL), so Python and SQL cannot disagree.
"""

from __future__ import annotations

import re

# Digits, an optional sign, and a fraction that is only zeros.
WHOLE_COUNT_PATTERN = r"-?\d+(\.0+)?"
# A number in exponent notation: whole or not, its digits may have been rounded away.
EXPONENT_PATTERN = r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+"

_WHOLE = re.compile(WHOLE_COUNT_PATTERN, re.ASCII)
_EXPONENT = re.compile(EXPONENT_PATTERN, re.ASCII)


def whole_count(text: str) -> int | None:
    """The count ``text`` writes (spaces around it ignored), or None when it writes no
    whole number; its size is the caller's to bound."""
    stripped = text.strip()
    if not _WHOLE.fullmatch(stripped):
        return None
    return int(stripped.split(".", 1)[0])


def in_exponent_notation(text: str) -> bool:
    """Whether ``text`` writes a number in exponent notation (``1e3``), which a count
    may not: a message says so, since the value may well be whole."""
    return _EXPONENT.fullmatch(text.strip()) is not None

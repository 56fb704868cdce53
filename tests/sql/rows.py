"""Comparing result rows with a readable diff, for the golden and property tests."""

from __future__ import annotations

import difflib
from typing import Any

import pytest

# The columns of package_metrics_daily the tests compare, in the mart's order.
METRIC_COLUMNS = (
    "package",
    "weekly_downloads",
    "monthly_downloads",
    "dependents",
    "dev_dependents",
    "peer_dependents",
    "rank_by_dependents",
    "rank_by_downloads",
)


def _as_csv_lines(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = [",".join(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            text = str(value).lower() if isinstance(value, bool) else str(value)
            cells.append(f'"{text}"' if "," in text else text)
        lines.append(",".join(cells))
    return lines


def assert_same_rows(
    what: str, expected: list[dict[str, Any]], actual: list[dict[str, Any]]
) -> None:
    """Fail with a unified diff of the rows as CSV lines, expected (-) against actual (+)."""
    if expected == actual:
        return
    columns = list(dict.fromkeys([*(expected or actual or [{}])[0], *(actual or [{}])[0]]))
    diff = list(
        difflib.unified_diff(
            _as_csv_lines(expected, columns),
            _as_csv_lines(actual, columns),
            fromfile=f"expected {what}",
            tofile=f"actual {what}",
            lineterm="",
        )
    )
    if not diff:  # same text, other types (say '1' and 1): show the values themselves
        diff = [f"expected: {expected!r}", f"actual:   {actual!r}"]
    pytest.fail(f"{what} differ:\n" + "\n".join(diff), pytrace=False)

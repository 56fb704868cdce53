"""Lists on stdout as a table, CSV or JSON; everything else goes to stderr.

``--format json`` prints nothing but JSON on stdout so it can be piped.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# soft_wrap: messages name files and lines; never wrap or cut them.
stderr = Console(stderr=True, soft_wrap=True)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def emit(
    rows: Sequence[Mapping[str, Any]],
    fmt: Format,
    *,
    title: str | None = None,
    columns: Sequence[str] | None = None,
) -> None:
    names = list(columns or (rows[0].keys() if rows else []))
    if fmt is Format.json:
        json.dump(
            [{k: _plain(row.get(k)) for k in names} for row in rows],
            sys.stdout,
            indent=2,
            default=str,
        )
        sys.stdout.write("\n")
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row.get(k) is None else _plain(row.get(k)) for k in names])
    else:
        table = Table(title=title, show_lines=False)
        for name in names:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*("" if row.get(k) is None else str(_plain(row.get(k))) for k in names))
        console = Console()
        if not console.is_terminal:
            # Piped or captured output has no width to respect: print rows whole
            # rather than folding every cell to fit 80 columns.
            needed = Console(width=100_000).measure(table).maximum
            console = Console(width=max(console.width, needed))
        console.print(table)


def emit_record(record: Mapping[str, Any], fmt: Format, *, title: str | None = None) -> None:
    """One record: a two-column table for people, a single object for machines."""
    if fmt is Format.json:
        json.dump({k: _plain(v) for k, v in record.items()}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif fmt is Format.csv:
        emit([record], fmt)
    else:
        emit([{"what": k, "value": v} for k, v in record.items()], fmt, title=title)


def markdown_cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, no line breaks."""
    return str(value).replace("|", "\\|").replace("\n", " ")

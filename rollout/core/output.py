"""Lists on stdout as a table, CSV or JSON; everything else goes to stderr.

``--format json`` prints nothing but JSON on stdout so it can be piped.

Every value shown here may be hostile (DESIGN.md rule 7), so this module is the one home
of the rules that keep it data, whatever the output:

- a CSV cell that a spreadsheet would run as a formula, or that starts with ``'``
  itself, gets a leading ``'`` (:func:`csv_cell`, and :func:`csv_cells` for a column
  of an Arrow table), taken off again when a saved list is read back (:func:`csv_value`);
- text for a terminal shows its control characters as escapes, and a value its own
  backslashes doubled (:func:`visible`; a console escapes controls only) and
  is never read as Rich markup (:data:`stderr` and every console made here);
- text for Markdown shows as the text it is, never as markup, HTML or a link
  (:func:`markdown_text`);
- text for an HTML page (the adoption report, its SVG charts) shows its control
  characters as escapes, as a terminal and Markdown show them (:func:`html_text`),
  before the page escapes it.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rollout.core.controls import controls_shown, quoted, visible

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.progress import Progress, ProgressColumn


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _plain(value: Any) -> Any:
    """A value as JSON gives it: ISO for dates and times, text for a path, and a list
    of such values for a list (a program reads a list, not prose)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# A list in one cell. In CSV, a JSON array (``["bo, di", "carol"]``): a script reads it
# back with one json.loads, whatever its items hold; a table and Markdown quote each text
# item (rollout.core.controls.quoted: ``'bo, di', 'carol'``), as every message lists
# names, so a name holding ", " reads as one; dates and numbers stand bare. JSON keeps
# the list.
LIST_SEPARATOR = ", "


def _joined(value: Any) -> Any:
    """A list as one CSV cell: a JSON array of its items (``[]`` for none); any other
    value as it is."""
    if isinstance(value, list | tuple):
        return json.dumps(_plain(value), ensure_ascii=False, default=str)
    return value


class Shown(str):
    """A cell's text the command has already shown (:func:`in_words`: its names quoted,
    its control characters escaped): a table prints it as it is, never shown twice."""


def in_words(value: Any, limit: int | None = None) -> str:
    """A value as people read it in a table or Markdown, its control characters and
    backslashes shown (:func:`visible`): a list's text items each quoted
    (:func:`rollout.core.controls.quoted`), its dates and numbers bare, joined by
    :data:`LIST_SEPARATOR`, or ``none`` for an empty list (with ``limit``, its first
    items and how many more); any other value as text."""
    if isinstance(value, Shown):
        return str(value)
    if isinstance(value, list | tuple):
        shown = value if limit is None else value[:limit]
        items = [quoted(item) if isinstance(item, str) else visible(_plain(item)) for item in shown]
        more = f" (+{len(value) - len(shown)} more)" if len(value) > len(shown) else ""
        return (LIST_SEPARATOR.join(items) or "none") + more
    return visible(_plain(value))


# --- CSV: no formulas -------------------------------------------------------------------

# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection"): these
# first characters. Such a string cell gets a leading ' and shows as the text it is.
# Line feed too: some spreadsheets skip a leading line break before reading the rest.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


# What gets the leading ' too: a cell starting with one already, so a reader taking the
# guard off can tell "'=x" from "=x". (A spreadsheet opening the CSV shows the guard as
# text, "'=x"; it hides a leading quote only when one is typed into a cell.)
GUARDED_PREFIXES = (*FORMULA_PREFIXES, "'")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: empty for None, ISO for dates, a list a JSON array of its
    items (:func:`_joined`), and a string that a spreadsheet would run as a formula,
    or that starts with ``'`` itself, prefixed with ``'`` (:func:`csv_value` takes it
    off again). Numbers stay numbers (-5 in a count column is a number, not a
    formula)."""
    value = _plain(_joined(value))
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(GUARDED_PREFIXES):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The text a CSV cell that :func:`csv_cell` wrote was: its guard (the ``'`` put
    before a formula or a leading quote) taken off."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(GUARDED_PREFIXES) else cell


def csv_cells(column: pa.ChunkedArray, name: str = "a column") -> pa.ChunkedArray:
    """:func:`csv_cell`'s rule over a whole Arrow column at once (vectorised: the report's
    CSVs are npm-sized): a text column's cells guarded; numbers, booleans, dates and times
    as they are. A column of any other type (bytes, a list, a struct, a map, an interval)
    is refused, naming it (``name``): DuckDB would write its cells unguarded (a BLOB's
    bytes as ``=x``, a list's items as they are), so a mart given one fails loudly
    rather than write a cell a spreadsheet runs."""
    import pyarrow as pa  # here: only the report needs it, the CLI starts faster without
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type):
        column = pc.cast(column, pa.string())  # a DuckDB ENUM
    if not _is_text(column.type):
        if _written_as_it_is(column.type):
            return column
        raise TypeError(
            f"{name} is of type {column.type}, which has no CSV cell rule (text is guarded, "
            "numbers, booleans, dates and times are written as they are): cast it to "
            "text in the mart's SQL, or add its rule to rollout.core.output.csv_cells"
        )
    formula = functools.reduce(pc.or_, (pc.starts_with(column, p) for p in GUARDED_PREFIXES))
    return pc.if_else(formula, pc.binary_join_element_wise("'", column, ""), column)


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _written_as_it_is(kind: pa.DataType) -> bool:
    """A type whose cells no spreadsheet runs: a number (a negative one is a number, not
    a formula), a boolean, a date or a time, or a column of nulls only."""
    import pyarrow as pa

    t = pa.types
    return any(
        is_type(kind)
        for is_type in (
            t.is_null, t.is_boolean, t.is_integer, t.is_floating, t.is_decimal,
            t.is_date, t.is_timestamp, t.is_time,
        )
    )  # fmt: skip


def write_csv(out: TextIO, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Every CSV written in Python: a header, then each row's ``columns`` as cells."""
    buffer = io.StringIO()
    # With "\r\n" as its line end the writer quotes a field holding a lone CR (with "\n"
    # it would not, and a reader would split the row there); rows still end with "\n".
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(cells: list[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()[:-2] + "\n"

    out.write(line([csv_cell(c) for c in columns]))
    for row in rows:
        out.write(line([csv_cell(row.get(c)) for c in columns]))


# --- HTML: control characters visible, as on a terminal and in Markdown ---------------


def html_text(value: Any) -> Any:
    """A string for an HTML page, before it is escaped: its control characters shown as
    escapes (:func:`visible`; a right-to-left override ``\\u202e`` in an org's name would
    show the name, and whatever follows it in its cell, reversed; ESC and NUL are not
    text). Line breaks and tabs are shown too (``\\x0a``, ``\\x09``), as the terminal
    and the Markdown show them: HTML would show them as spaces, and an org ``a\\nb``
    read as another, ``a b``. Anything else (a number, ``Markup`` the page's own code
    wrote) as it is."""
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return visible(value)
    return value


# --- terminals: control characters visible (rollout.core.controls), no markup -----------


class DataConsole(Console):
    """A Rich console on which every string is data: never markup or an emoji code, and
    one line with its control characters visible, line breaks included (a package or
    file name holding one would otherwise print a line of its own, faking a summary).
    A message of several lines gives each as a string of its own:
    ``console.print(*lines, sep="\n")``. Style comes only from :class:`rich.text.Text`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("highlight", False)
        super().__init__(**{**kwargs, "markup": False, "emoji": False})

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # Every string printed, in a table cell or a title goes through here.
        kwargs.update(markup=False, emoji=False)
        return super().render_str(controls_shown(text), **kwargs)


# soft_wrap: messages name files and lines; never wrap or cut them.
stderr = DataConsole(stderr=True, soft_wrap=True)


# --- progress: on a terminal only ------------------------------------------------------

# Set to 1 to draw progress bars even when stderr is not a terminal (tests, recordings).
FORCE_PROGRESS = "ROLLOUT_FORCE_PROGRESS"


def shows_progress(fmt: Format | None = None) -> bool:
    """Whether a long command draws progress: on a terminal (stderr), never with
    ``--format json`` (machines read that), and always with ``ROLLOUT_FORCE_PROGRESS=1``
    unless JSON."""
    if fmt is Format.json:
        return False
    return os.environ.get(FORCE_PROGRESS) == "1" or stderr.is_terminal


def progress_for(fmt: Format | None = None, *columns: str | ProgressColumn) -> Progress:
    """A transient Rich progress display on stderr where :func:`shows_progress` says so,
    else a disabled one (its tasks are counted, nothing is drawn). Print messages through
    its ``console`` while it runs, so they go above the bar rather than through it."""
    from rich.progress import (  # here: most commands draw no progress
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    shown = shows_progress(fmt)
    console = stderr
    if shown and not stderr.is_terminal:  # forced: draw as on a terminal
        console = DataConsole(stderr=True, soft_wrap=True, force_terminal=True)
    return Progress(
        *(
            columns
            or (
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
        ),
        console=console,
        transient=True,
        disable=not shown,
    )


def labelled(label: str, style: str, message: object) -> Text:
    """``label`` in ``style`` then ``message`` as plain text on one line: an error or
    warning. A line break a message holds is shown escaped (``\x0a``), whether it came
    from a value (a package name in a landing file, a username in a snooze file, which
    could otherwise print a line of its own, faking a summary) or from a library's
    message."""
    return Text.assemble((label, style), " ", controls_shown(message))


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
        if sys.stdout.isatty():
            # CSV read by a person, not a program: a value's ESC or line break would
            # move the cursor or fake a row on the screen. Piped, the cells are exact.
            rows = [{k: _on_screen(row.get(k)) for k in names} for row in rows]
        write_csv(sys.stdout, names, rows)
    else:
        table = Table(title=None if title is None else controls_shown(title), show_lines=False)
        for name in names:
            # Every time the pipeline keeps is UTC, without an offset (rollout.core.clock):
            # a person reading the table is told so in the heading. CSV and JSON keep the
            # column's name, which programs read.
            timed = any(isinstance(row.get(name), datetime) for row in rows)
            table.add_column(f"{name} (UTC)" if timed else name, overflow="fold")
        for row in rows:
            # One line a cell: a line break in a value would look like another row.
            table.add_row(*("" if row.get(k) is None else in_words(row.get(k)) for k in names))
        console = DataConsole()
        if not console.is_terminal:
            # Piped or captured output has no width to respect: print rows whole
            # rather than folding every cell to fit 80 columns.
            needed = DataConsole(width=100_000).measure(table).maximum
            console = DataConsole(width=max(console.width, needed))
        console.print(table)


def emit_lines(values: Iterable[object]) -> None:
    """One value a line on stdout, as scripts read a list of files (``xargs``, ``for f
    in $(...)``): piped, exactly the value (``click.echo`` would take out what looks like
    a terminal escape, naming another file); on a terminal, its control characters shown
    (:func:`visible`), as CSV's cells are."""
    shown = visible if sys.stdout.isatty() else str
    for value in values:
        sys.stdout.write(shown(value) + "\n")


def _on_screen(value: Any) -> Any:
    plain = _plain(_joined(value))  # a list a JSON array: its items shown as well
    return visible(plain) if isinstance(plain, str) else plain


def emit_record(record: Mapping[str, Any], fmt: Format, *, title: str | None = None) -> None:
    """One record: a two-column table for people, a single object for machines.

    Its keys are snake_case (a script reads ``record["pages_read"]``); counts keyed by
    a value (a phase's name, a job's) are a mapping under one such key, an object in
    JSON, and a row or column each (``enforced top-100``) in a table or CSV."""
    if fmt is Format.json:
        json.dump(
            {k: _plain_mapping(v) for k, v in record.items()}, sys.stdout, indent=2, default=str
        )
        sys.stdout.write("\n")
        return
    flat = _flattened(record)
    if fmt is Format.csv:
        emit([flat], fmt)
    else:
        # One column holds every value: a time says it is UTC in its own cell.
        emit([{"what": k, "value": _utc_time(v)} for k, v in flat.items()], fmt, title=title)


def _plain_mapping(value: Any) -> Any:
    """A value as JSON gives it (:func:`_plain`), a mapping's values too."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return _plain(value)


def _flattened(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record with each mapping in it spread out: ``{"enforced": {"top-100": 3}}`` is
    ``{"enforced top-100": 3}``, a row of its own in a table, a column in CSV."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update({f"{key} {inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _utc_time(value: Any) -> Any:
    """A time as a table cell of its own: ISO, and UTC said (the pipeline's times are
    naive UTC); any other value as it is."""
    if isinstance(value, datetime):
        return f"{_plain(value)} UTC"
    return value


# --- Markdown: text, never markup ------------------------------------------------------


class Markdown(str):
    """Markdown written by this tool (``**no**``), passed through :func:`markdown_text`
    as is. Never wrap a value from the registry, a file or a person in it."""


# Backslash-escaped wherever they are: emphasis, code, links and images, tables, HTML
# is done by entities below, strikethrough, headings' closing #s, math ($), and the @
# of mentions and email autolinks.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#|~!$@])")
# Escaped only where they would start a block (at the value's start, as it has no line
# breaks): list items "- x" and "1. x", thematic breaks and setext underlines "---" and
# "===" (block quotes are &gt; already). "-5" or "19.9%" stay as they are.
_BLOCK_START = re.compile(r"^(\s*)([-+=](?=[-+=\s]|$)|\d{1,9}\.(?=\s|$))")
# GitHub, Prefect (marked) and markdown-it's linkify turn these into links by themselves;
# an escaped ":" or "." is shown the same but breaks the pattern.
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|xmpp)(:)|(www)(\.)")


def markdown_text(value: Any) -> str:
    """``value`` as Markdown that shows exactly its text, wherever it is put: a table
    cell, a heading, a list item or a sentence (GitHub's and Prefect's renderers). No
    HTML, emphasis, code, link, image, table cell break, autolink, list or heading
    comes out of it, and it is one line: a line break or tab it holds shows as its
    escape (``\\x0a``, ``\\x09``), as on a terminal (:func:`visible`), so ``a\\nb``
    and ``a b`` never read the same."""
    if isinstance(value, Markdown):
        return str(value)
    return _markdown_shown("" if value is None else in_words(value))


def markdown_quoted(name: object) -> str:
    """``name`` as one quoted name in a Markdown sentence or list (``'bo, di'``, as
    :func:`rollout.core.controls.quoted` writes it on a terminal), shown as exactly
    that text: a name holding ``, `` reads as one name, not two."""
    return _markdown_shown(quoted(name))


def _markdown_shown(text: str) -> str:
    """``text``, already one line with its controls shown, as Markdown showing it as
    text (markdown_text)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    text = _AUTOLINK.sub(lambda m: f"{m[1] or m[3]}\\{m[2] or m[4]}", text)
    return _BLOCK_START.sub(lambda m: m[1] + m[2][:-1] + "\\" + m[2][-1], text)


class Presentable(Protocol):
    """A result that presents itself: ``summary()`` is its record, keyed as the CLI's
    JSON and CSV give it; ``LABELS`` names some keys in words for people (Markdown
    artifacts). Every view of a result comes from these two, never a copy of its fields."""

    LABELS: ClassVar[Mapping[str, str]]

    def summary(self) -> dict[str, Any]: ...


def labelled_rows(result: Presentable) -> list[tuple[str, Any]]:
    """``result``'s summary as (label, value) rows: its LABELS, else the key in words;
    each value as it is, a list a list (:func:`markdown_text` shows it in words)."""
    return [
        (result.LABELS.get(key, key.replace("_", " ")), value)
        for key, value in result.summary().items()
    ]

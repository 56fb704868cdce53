"""What the tool prints and writes keeps hostile values data (DESIGN.md rule 7): CSV
cells, terminal tables and messages, Markdown. The report's CSVs: test_reporting.py;
emails: test_senders.py and test_emails.py."""

from __future__ import annotations

import ast
import csv
import html
import io
import json
import re
import tempfile
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from rollout.core.controls import controls_shown, quoted, shell_word
from rollout.core.output import (
    FORMULA_PREFIXES,
    Format,
    Markdown,
    csv_cell,
    csv_cells,
    csv_value,
    emit,
    emit_lines,
    emit_record,
    labelled,
    markdown_text,
    stderr,
    visible,
    write_csv,
)

from .hostile import EVERYTHING, FORMULAS, MARKUP, PROSE, RICH_MARKUP, TERMINAL
from .support.previews import names_read_back

# CommonMark plus GitHub's tables and strikethrough, as Prefect and GitHub render them.
MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])
ROWS = [
    {"username": name, "email": f"u{i}@example.com", "count": -i}
    for i, name in enumerate(EVERYTHING)
]


# --- CSV ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", FORMULAS)
def test_a_formula_cell_is_neutralised(value: str) -> None:
    assert csv_cell(value) == "'" + value


@pytest.mark.parametrize("value", [-5, -2.5, 0, True, "plain", "it's", "a=b", "", None])
def test_numbers_and_plain_text_stay_as_they_are(value: object) -> None:
    assert csv_cell(value) == ("" if value is None else value)


@given(st.text())
def test_no_csv_cell_starts_a_formula(value: str) -> None:
    cell = csv_cell(value)
    assert not cell.startswith(FORMULA_PREFIXES)
    assert cell in (value, "'" + value)


@given(st.lists(st.none() | st.text()))
def test_the_arrow_rule_is_the_python_rule(values: list[str | None]) -> None:
    column = pa.chunked_array([values], pa.string())
    expected = [None if v is None else csv_cell(v) for v in values]
    assert csv_cells(column).to_pylist() == expected


def test_numbers_in_an_arrow_column_stay_numbers() -> None:
    column = pa.chunked_array([[-5, 3]])
    assert csv_cells(column).to_pylist() == [-5, 3]


@pytest.mark.parametrize(
    "column",
    [
        pa.chunked_array([[b"=HYPERLINK(1)"]], pa.binary()),
        pa.chunked_array([[b"=HYPERLINK(1)"]], pa.large_binary()),
        pa.chunked_array([[["=HYPERLINK(1)"]]], pa.list_(pa.string())),
        pa.chunked_array([[{"org": "=HYPERLINK(1)"}]], pa.struct([("org", pa.string())])),
    ],
    ids=["blob", "large blob", "list", "struct"],
)
def test_an_arrow_column_without_a_cell_rule_is_refused_by_name(column: pa.ChunkedArray) -> None:
    """A mart given a BLOB or a list would be written by DuckDB unguarded: refused."""
    with pytest.raises(TypeError, match=r"adoption_by_org\.org is of type .*no CSV cell rule"):
        csv_cells(column, "adoption_by_org.org")


def test_dates_times_and_booleans_in_an_arrow_column_stay_as_they_are() -> None:
    column = pa.chunked_array([[date(2022, 3, 1), None]])
    assert csv_cells(column).to_pylist() == [date(2022, 3, 1), None]
    when = pa.chunked_array([[datetime(2022, 3, 1, 9, 30)]])
    assert csv_cells(when).to_pylist() == [datetime(2022, 3, 1, 9, 30)]
    assert csv_cells(pa.chunked_array([[True, False]])).to_pylist() == [True, False]


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_write_csv_neutralises_every_text_cell() -> None:
    out = io.StringIO(newline="")
    write_csv(out, ["username", "email", "count"], ROWS)
    rows = read_csv(out.getvalue())
    assert [r["username"] for r in rows] == [csv_cell(name) for name in EVERYTHING]
    assert rows[1]["count"] == "-1"  # a number, not text: no quote


def test_emit_csv_neutralises_formulas(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, Format.csv)
    rows = read_csv(capsys.readouterr().out)
    assert [r["username"] for r in rows][: len(FORMULAS)] == ["'" + f for f in FORMULAS]
    assert all(not r["username"].startswith(FORMULA_PREFIXES) for r in rows)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_csv_on_a_terminal_shows_control_characters_and_piped_keeps_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [
        {"username": name, "packages": [name, "react"], "count": 1}
        for name in (*TERMINAL, "two\nlines")
    ]
    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    emit(rows, Format.csv)
    shown = screen.getvalue()
    assert not any(c in shown for c in "\x1b\x07\x9b\u202e\r")
    assert shown.count("\n") == len(rows) + 1  # one line a row
    assert "\\x1b[2K\\x1b[1Amallory" in shown

    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)
    emit(rows, Format.csv)
    assert [r["username"] for r in read_csv(piped.getvalue())] == [
        csv_cell(r["username"]) for r in rows
    ]


def test_a_list_of_files_on_a_terminal_shows_control_characters_and_piped_keeps_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = [Path("/home/h\x1b[2K\x1b[1Amallory/outbox/x.txt"), Path("/srv/right\u202eto-left")]
    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    emit_lines(files)
    assert screen.getvalue() == (
        "/home/h\\x1b[2K\\x1b[1Amallory/outbox/x.txt\n/srv/right\\u202eto-left\n"
    )
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)
    emit_lines(files)
    assert piped.getvalue().splitlines() == [str(f) for f in files]


# --- terminals ----------------------------------------------------------------------------


def test_visible_shows_every_control_character() -> None:
    assert visible("\x1b[2K\x1b[1Amallory") == "\\x1b[2K\\x1b[1Amallory"
    assert visible("a\x7fb\x9bc\u202ed") == "a\\x7fb\\x9bc\\u202ed"
    assert visible("two\nlines") == "two\\x0alines"
    assert visible("two\nlines", lines=True) == "two\nlines"
    # A name that is not UTF-8 keeps its bytes as lone surrogates: shown, never written raw.
    assert visible("downloads-\udc9b2J.csv") == "downloads-\\udc9b2J.csv"
    assert shell_word("downloads-\udc9b2J.csv") == "$'downloads-\\x9b2J.csv'"


@given(st.text())
def test_visible_text_has_no_control_character(value: str) -> None:
    shown = visible(value)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown)


def test_a_name_typed_as_an_escape_shows_apart_from_the_control_character() -> None:
    """A username of the four characters \\x1b is not one holding ESC: its backslash is
    shown doubled, so what a person reads tells the two apart."""
    assert visible("\\x1b[2Kmallory") == "\\\\x1b[2Kmallory"
    assert visible("\x1b[2Kmallory") == "\\x1b[2Kmallory"
    assert visible("C:\\dir\\x0a", lines=True) == "C:\\\\dir\\\\x0a"


@given(st.text(), st.text(), st.booleans())
@example("\\x1b", "\x1b", False)
@example("\\x0a", "\n", False)
@example("\\u202e", "\u202e", True)
@example("\\\\x1b", "\\\x1b", False)
def test_distinct_values_show_distinctly(one: str, other: str, lines: bool) -> None:
    if one != other:
        assert visible(one, lines=lines) != visible(other, lines=lines)


@given(st.text())
def test_a_console_shows_a_shown_value_as_it_is(value: str) -> None:
    """The console's net (controls_shown) never shows a value twice over: what visible
    or quoted wrote prints as written."""
    assert controls_shown(visible(value)) == visible(value)
    assert controls_shown(quoted(value)) == quoted(value)


def test_a_table_tells_a_typed_escape_from_a_control_character(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emit([{"username": "\\x1b[2K"}, {"username": "\x1b[2K"}], Format.table)
    out = capsys.readouterr().out
    assert "\\\\x1b[2K" in out  # typed: its backslash doubled
    assert out.count("\\x1b[2K") == 2  # and once more within the typed one: ESC's escape


def test_a_table_shows_escapes_and_markup_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, Format.table, title="members of [bold]\x1b[2Korg")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x00" not in out
    assert "\\x1b[2K\\x1b[1Amallory" in out
    assert "members of [bold]\\x1b[2Korg" in out
    for markup in RICH_MARKUP:
        assert markup in out
    # One row, one line: a line break in a value cannot fake another row.
    assert "two\\x0alines" in out


@pytest.mark.parametrize("value", TERMINAL + RICH_MARKUP)
def test_messages_on_stderr_show_values_as_text(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stderr.print(f"released {value} from top-100")
    stderr.print(labelled("error:", "bold red", f"no org named {value}"))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    # A message is one line whatever it holds: a line break is shown, not obeyed (a
    # package named "x\n3 loaded, 0 refused" would fake a summary line).
    assert f"released {controls_shown(value)} from top-100\n" in err
    assert f"error: no org named {controls_shown(value)}\n" in err


def test_a_message_of_several_lines_gives_each_line_and_its_values_stay_on_theirs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stderr.print("The list: reports/x.csv", "To apply: rollout phase enforce", sep="\n")
    stderr.print("released two\nlines from top-100", "\tindented")
    assert capsys.readouterr().err == (
        "The list: reports/x.csv\nTo apply: rollout phase enforce\n"
        "released two\\x0alines from top-100 \\x09indented\n"
    )


# --- Markdown -----------------------------------------------------------------------------


def rendered_text(value: object) -> str:
    """What a Markdown renderer shows for ``markdown_text(value)`` in a paragraph."""
    return MARKDOWN.render(markdown_text(value))


def shown(value: str) -> str:
    """What the reader should see: the value on one line, controls (line breaks and
    tabs too) visible."""
    return visible(value).strip(" ")


@pytest.mark.parametrize("value", EVERYTHING)
def test_markdown_text_renders_as_exactly_its_text(value: str) -> None:
    expected = html.escape(shown(value), quote=False).replace('"', "&quot;")
    assert rendered_text(value) == (f"<p>{expected}</p>\n" if expected else "")


@pytest.mark.parametrize("value", MARKUP)
def test_markdown_text_in_a_table_cell_is_one_cell_of_text(value: str) -> None:
    table = f"| name | n |\n| --- | --- |\n| {markdown_text(value)} | 1 |\n"
    rendered = MARKDOWN.render(table)
    expected = html.escape(shown(value), quote=False).replace('"', "&quot;")
    assert f"<td>{expected}</td>\n<td>1</td>" in rendered


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\n\t")))
def test_any_text_renders_as_itself_in_markdown(value: str) -> None:
    expected = html.escape(shown(value), quote=False).replace('"', "&quot;")
    assert rendered_text(value) == (f"<p>{expected}</p>\n" if expected else "")


@given(st.text())
def test_markdown_text_has_no_raw_html_link_or_line_break(value: str) -> None:
    text = markdown_text(value)
    assert "<" not in text and ">" not in text and "\n" not in text
    assert "](" not in text.replace("\\]\\(", "")
    assert "://" not in text.replace("\\://", "")


@pytest.mark.parametrize(
    ("one", "other"), [("a\nb", "a b"), ("a\tb", "a b"), ("a\r\nb", "a\nb"), ("a\\x0ab", "a\nb")]
)
def test_values_that_differ_only_in_line_breaks_show_apart_in_markdown(
    one: str, other: str
) -> None:
    """A line break or tab in a value shows as its escape, as on a terminal: a username
    ``a\\nb`` showed as ``a b``, two accounts read as one."""
    assert rendered_text(one) != rendered_text(other)
    assert rendered_text("a\nb") == "<p>a\\x0ab</p>\n"


def test_the_tools_own_markdown_passes_through() -> None:
    assert markdown_text(Markdown("**no**")) == "**no**"
    assert markdown_text("**no**") == "\\*\\*no\\*\\*"


def test_a_result_presents_its_summary_with_its_labels() -> None:
    from datetime import date

    from rollout.core.output import labelled_rows
    from rollout.metrics import MetricsReport

    report = MetricsReport(date(2022, 1, 3), 12, [date(2022, 1, 1)], False, 1, 2, 3, 0.5)
    # A list for programs (JSON); in words for people (the artifacts' Markdown).
    assert report.summary()["missing_days"] == [date(2022, 1, 1)]
    assert labelled_rows(report) == [
        ("as of", date(2022, 1, 3)),
        ("packages", 12),
        ("weekly window complete", False),
        ("missing download days", [date(2022, 1, 1)]),
        ("self-dependencies ignored", 1),
        ("dependencies on unknown packages ignored", 2),
        ("unknown packages depended on", 3),
        ("seconds", 0.5),
    ]


def test_a_table_says_its_times_are_utc(capsys: pytest.CaptureFixture[str]) -> None:
    """The pipeline's times are naive UTC: a table heads their column "(UTC)" and a
    record's table says it in the cell; CSV and JSON keep the names and values as they
    are, for programs."""
    rows = [{"name": "a", "at": datetime(2022, 2, 16, 0, 0), "on": date(2022, 2, 16)}]
    emit(rows, Format.table)
    table = capsys.readouterr().out
    assert "at (UTC)" in table and "on (UTC)" not in table and "name (UTC)" not in table
    emit_record({"at": datetime(2022, 2, 16, 0, 0), "n": 3}, Format.table)
    record = capsys.readouterr().out
    assert "2022-02-16T00:00:00 UTC" in record and "3 UTC" not in record
    emit(rows, Format.json)
    assert json.loads(capsys.readouterr().out) == [
        {"name": "a", "at": "2022-02-16T00:00:00", "on": "2022-02-16"}
    ]
    emit_record({"at": datetime(2022, 2, 16, 0, 0)}, Format.csv)
    assert capsys.readouterr().out == "at\n2022-02-16T00:00:00\n"


def test_a_list_is_a_list_in_json_a_json_array_in_csv_and_quoted_names_in_a_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Scripts read a list from JSON, never prose; CSV puts it in one cell as a JSON
    array (``[]`` for none), which reads back whatever its items hold; a table quotes
    each name, leaves dates bare, and says "none"."""
    record = {"days": [date(2022, 1, 1), date(2022, 1, 2)], "none": [], "hostile": ["=cmd", "b"]}
    emit_record(record, Format.json)
    assert json.loads(capsys.readouterr().out) == {
        "days": ["2022-01-01", "2022-01-02"],
        "none": [],
        "hostile": ["=cmd", "b"],
    }
    emit_record(record, Format.csv)
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == [
        ["days", "none", "hostile"],
        ['["2022-01-01", "2022-01-02"]', "[]", '["=cmd", "b"]'],
    ]
    emit_record(record, Format.table)
    table = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines()]
    assert ["days", "2022-01-01, 2022-01-02"] in cells and ["none", "none"] in cells
    assert ["hostile", "'=cmd', 'b'"] in cells
    assert markdown_text([]) == "none" and markdown_text(["a", "b"]) == "'a', 'b'"


@pytest.mark.parametrize("name", PROSE)
def test_a_list_of_names_in_one_cell_reads_back_as_those_names(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A member named 'bo, di' among others in `orgs enforce`'s removed_members: the
    cell read 'bo, di, carol', three people, in a table, in Markdown and in CSV. A
    table's cell quotes each, as every message does; CSV's is a JSON array."""
    names = [name, "carol"]
    emit_record({"removed_members": names}, Format.table)
    table = capsys.readouterr().out
    [cell] = [line.split("│")[2].strip() for line in table.splitlines() if "removed" in line]
    assert names_read_back(cell) == names
    emit_record({"removed_members": names}, Format.csv)
    [header, row] = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert header == ["removed_members"] and json.loads(csv_value(row[0])) == names
    rendered = MarkdownIt().render(markdown_text(names))
    assert (
        names_read_back(html.unescape(rendered.strip().removeprefix("<p>").removesuffix("</p>")))
        == names
    )


# --- JSON keys: snake_case -------------------------------------------------------------

SNAKE_CASE = re.compile(r"[a-z][a-z0-9_]*")


def test_counts_by_a_phase_are_an_object_in_json_and_a_row_each_in_a_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A script reads `record["enforced"]["top-100"]`: no key with a space or a phase's
    name in it. People read one row (a CSV column) per phase, named as before."""
    record = {"emails_sent": 3, "enforced": {"top-100": 2, "high-impact": 5}}
    emit_record(record, Format.json)
    assert json.loads(capsys.readouterr().out) == record
    emit_record(record, Format.table)
    table = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines()]
    assert ["enforced top-100", "2"] in cells and ["enforced high-impact", "5"] in cells
    emit_record(record, Format.csv)
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == [
        ["emails_sent", "enforced top-100", "enforced high-impact"],
        ["3", "2", "5"],
    ]


def _json_keys_of_records(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """The keys a record printed as JSON is built with, as written: of each dict in a
    ``summary()`` or ``row()`` (what commands print) or in an ``emit``/``emit_record``
    call; a key made from a value (an f-string in a comprehension) shown as ``f"..."``."""
    for node in ast.walk(tree):
        builds_record = (
            isinstance(node, ast.FunctionDef) and node.name in ("summary", "row", "record")
        ) or (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None))
            in ("emit", "emit_record")
        )
        if not builds_record:
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Dict):
                for key in inner.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        yield key.lineno, key.value
            elif isinstance(inner, ast.DictComp) and isinstance(inner.key, ast.JoinedStr):
                yield inner.lineno, 'f"..."'


def test_every_record_a_command_prints_has_snake_case_keys() -> None:
    """`notify sync-suppressions` printed "pages read" and "spam reports", `demo`
    "enforced top-100" and "seconds metrics": keys a script cannot spell beforehand
    (jq needs them quoted, a phase's name changes them). Counts keyed by a value go
    under one snake_case key as an object."""
    root = Path(__file__).resolve().parents[1] / "rollout"
    found = [
        f"{path.relative_to(root.parent)}:{line}: {key!r}"
        for path in sorted(root.rglob("*.py"))
        for line, key in _json_keys_of_records(ast.parse(path.read_text(encoding="utf-8")))
        if not SNAKE_CASE.fullmatch(key)
    ]
    assert found == []


@given(st.text())
@example("'=x")
@example("''-2+3")
@example("'plain")
@example("=x")
def test_a_csv_cell_reads_back_as_the_value_it_was(value: str) -> None:
    """A saved preview's CSV is read back to name who changed since it (read_rows): a
    username "'=x" (a quote, then a formula) was written as it was and read back as
    "=x", one quote taken off that csv_cell had never put on. A value starting with a
    quote gets one more, so the guard comes off exactly (a spreadsheet opening the CSV
    shows it as text: docs/warehouse.md)."""
    from rollout.phases.previews import read_rows, save_list

    with tempfile.TemporaryDirectory() as folder:
        path, _, _ = save_list(
            Path(folder),
            "p",
            ("account_id", "username"),
            [{"account_id": 1, "username": value}],
            {},
        )
        [(account_id, row)] = read_rows(path, "account_id").items()
    assert (account_id, row["username"]) == (1, value.replace("\r\n", "\n"))


@given(st.lists(st.text(), min_size=1, max_size=4))
@example(["bo, di", "o'neil', 'x"])
@example(["back\\slash\\'", "\x1b[2Kmallory\nx", "right\u202eto-left"])
def test_quoted_names_read_back_as_exactly_those_names(names: list[str]) -> None:
    """However a name reads (another name, a quote, a backslash, a control character), a
    list of quoted names on one line reads back as exactly those names."""
    listed = ", ".join(quoted(name) for name in names)
    assert controls_shown(listed) == listed  # a console prints it as it is
    assert names_read_back(listed) == names

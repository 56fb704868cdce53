"""Publish events (landing/publishes/): who published which package, through what (a
token and its kind, a logged-in session, trusted publishing) and with which second
factor. Checked row by row like every landing file, loaded into raw_publishes, read
through stg_publishes."""

from __future__ import annotations

import gzip
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollout.core.errors import BadInput, FileRejected
from rollout.warehouse import ingest, landing

HEADER = "occurred_at,package,username,via,token_kind,second_factor"
GOOD = [
    "2025-11-20T10:00:00Z,left-pad,alice,token,automation,none",
    "2025-11-20T11:00:00+01:00,@scope/pkg,bob,session,,webauthn",
    "2025-11-20 12:00,react,carol,trusted,,none",
    "2025-11-20T13:00:00Z,react,dave,token,granular,totp",
    "2025-11-20T14:00:00Z,vue,erin,token,granular,none",
]
NOW = datetime(2025, 11, 21)


def write_csv(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "landing" / "publishes" / "publishes-2025-11-20.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def load(con: duckdb.DuckDBPyConnection, path: Path) -> ingest.FileResult:
    return ingest.ingest_file(con, landing.classify(path), quarantine_limit=0.01, now=NOW)


def test_events_load_with_times_in_utc_and_no_token_kind_as_null(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    result = load(con, write_csv(tmp_path, GOOD))
    assert (result.status, result.rows_loaded) == ("loaded", 5)
    rows = con.execute(
        "select occurred_at, day, package, username, via, token_kind, second_factor, "
        "without_2fa from stg_publishes order by occurred_at"
    ).fetchall()
    day = date(2025, 11, 20)
    assert rows == [
        (datetime(2025, 11, 20, 10), day, "left-pad", "alice", "token", "automation", "none", True),
        (datetime(2025, 11, 20, 10), day, "@scope/pkg", "bob", "session", None, "webauthn", False),
        (datetime(2025, 11, 20, 12), day, "react", "carol", "trusted", None, "none", False),
        (datetime(2025, 11, 20, 13), day, "react", "dave", "token", "granular", "totp", False),
        (datetime(2025, 11, 20, 14), day, "vue", "erin", "token", "granular", "none", True),
    ]


def test_a_parquet_file_with_typed_times_loads_the_same(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "landing" / "publishes" / "publishes.parquet"
    path.parent.mkdir(parents=True)
    table = pa.table(
        {
            "occurred_at": pa.array([datetime(2025, 11, 20, 9, 30)], pa.timestamp("us", "UTC")),
            "package": ["left-pad"],
            "username": ["alice"],
            "via": ["session"],
            "token_kind": pa.array([None], pa.string()),
            "second_factor": ["totp"],
        }
    )
    pq.write_table(table, path)
    assert load(con, path).rows_loaded == 1
    assert con.execute("select occurred_at, via, token_kind from stg_publishes").fetchall() == [
        (datetime(2025, 11, 20, 9, 30), "session", None)
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2025-11-22T10:00:00Z,react,ann,session,,totp", "is in the future"),
        ("yesterday,react,ann,session,,totp", "'yesterday' is not an ISO 8601 timestamp"),
        # Offsets no clock uses: DuckDB alone would move the time by hours, or days.
        ("2025-11-20T10:00:00+25:00,react,ann,session,,totp", "+25:00' is not an ISO 8601"),
        ("2025-11-20T10:00:00+99:99,react,ann,session,,totp", "+99:99' is not an ISO 8601"),
        ("2025-11-20T10:00:00-12:60,react,ann,session,,totp", "-12:60' is not an ISO 8601"),
        ("2025-11-20T10:00:00Z,Bad Name,ann,session,,totp", "is not a valid npm package name"),
        ("2025-11-20T10:00:00Z,react,,session,,totp", "username is missing"),
        ("2025-11-20T10:00:00Z,react,ann,pigeon,,totp", "via 'pigeon' is not one of"),
        ("2025-11-20T10:00:00Z,react,ann,token,,totp", "token_kind is missing (via is token)"),
        ("2025-11-20T10:00:00Z,react,ann,token,read_only,none", "token_kind 'read_only'"),
        ("2025-11-20T10:00:00Z,react,ann,session,publish,totp", "given, but via is session"),
        ("2025-11-20T10:00:00Z,react,ann,session,,sms", "second_factor 'sms' is not one of"),
        ("2025-11-20T10:00:00Z,react,ann,token,automation,totp", "with an automation token"),
        ("2025-11-20T10:00:00Z,react,ann,trusted,,webauthn", "with trusted publishing"),
    ],
)
def test_a_bad_row_refuses_the_file_naming_its_line_and_reason(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, row: str, reason: str
) -> None:
    path = write_csv(tmp_path, [GOOD[0], row])
    with pytest.raises(FileRejected) as refused:
        load(con, path)
    assert "line 3: " in str(refused.value) and reason in str(refused.value)
    assert con.execute("select count(*) from raw_publishes").fetchone() == (0,)


# --- the same events sent again in another file ------------------------------------------


def test_events_sent_again_in_another_file_are_duplicates_not_loaded_twice(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Another file holding events already loaded (the file re-sent compressed, with a
    byte-order mark or CRLF: another checksum; an export overlapping the last one) adds
    only the events not loaded yet. Repeats within one file are still each a publish."""
    twice = "2025-11-20T15:00:00Z,vue,erin,token,granular,none"
    first = load(con, write_csv(tmp_path, [*GOOD, twice, twice]))
    assert (first.rows_loaded, first.rows_duplicate) == (7, 0)
    again = tmp_path / "landing" / "publishes" / "publishes-2025-11-20-again.csv.gz"
    text = "\r\n".join([HEADER, *GOOD, twice, twice]) + "\r\n"
    again.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode()))
    second = load(con, again)
    assert (second.status, second.rows_loaded, second.rows_duplicate) == ("loaded", 0, 7)
    # The same instant written another way is the same event; a third copy is new.
    overlapping = tmp_path / "landing" / "publishes" / "publishes-2025-11-20-late.csv"
    overlapping.write_text(
        "\n".join(
            [
                HEADER,
                "2025-11-20T12:00:00+02:00,left-pad,alice,token,automation,none",
                twice,
                twice,
                twice,
                "2025-11-20T16:00:00Z,vue,erin,token,granular,none",
            ]
        )
        + "\n"
    )
    third = load(con, overlapping)
    assert (third.rows_loaded, third.rows_duplicate) == (2, 3)
    assert con.execute("select count(*) from stg_publishes").fetchone() == (9,)


# --- a span with no events -----------------------------------------------------------------


def test_a_file_with_its_columns_and_no_rows_is_a_span_with_none_loaded_as_zero_rows(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A day nobody logged in or published is a real day: its export (the header alone,
    or a Parquet file with the columns, as the demo leaves the sample's files when every
    event is after its first day) loads as 0 rows, not refused as an empty file."""
    folder = tmp_path / "landing"
    logins = folder / "logins" / "logins.parquet"
    logins.parent.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "occurred_at": pa.array([], pa.timestamp("us", tz="UTC")),
                "username": pa.array([], pa.string()),
                "second_factor": pa.array([], pa.string()),
                "outcome": pa.array([], pa.string()),
            }
        ),
        logins,
    )
    publishes = write_csv(tmp_path, [])
    for path, table in ((logins, "raw_logins"), (publishes, "raw_publishes")):
        result = load(con, path)
        assert (result.status, result.rows_read, result.rows_loaded) == ("loaded", 0, 0)
        assert con.execute(f"select count(*) from {table}").fetchone() == (0,)
    assert con.execute("select count(*) from ingested_files").fetchone() == (2,)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        # No header: not the export of a span, a file cut short.
        ("publishes/publishes-1.csv", b"", ":1: empty file: expected a CSV header"),
        ("logins/logins-1.csv", b"", ":1: empty file: expected a CSV header"),
        # The columns of another kind: no rows does not pass them.
        ("logins/logins-2.csv", b"occurred_at,username\n", "second_factor"),
        # Downloads and manifests with no rows are an export gone wrong.
        ("downloads/downloads-2025-11-20.csv", b"package,day,downloads\n", "the file is empty"),
    ],
)
def test_a_file_with_no_rows_and_no_header_or_of_another_kind_is_still_refused(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / "landing" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(BadInput, match=reason):
        load(con, path)
    assert con.execute("select count(*) from ingested_files").fetchone() == (0,)

"""Ingestion: bad input is refused with file, line and reason; good input loads once."""

from __future__ import annotations

import decimal
import gzip
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollout import warehouse
from rollout.core.controls import controls_shown, quoted
from rollout.core.errors import BadInput
from rollout.warehouse import ingest, landing
from tests.support.ingest import LIMIT, NOTHING, NOW, load, row_counts

from .conftest import DATA, typed_parquet_downloads

BAD = DATA / "bad"
GOOD = DATA / "good"


# One file per failure class: (file, line named, reason named).
BAD_CASES = [
    ("downloads-malformed.csv", 3, "malformed CSV: expected 3 columns, found 4"),
    ("downloads-missing-column.csv", 1, "missing column downloads"),
    ("downloads-negative-count.csv", 3, "downloads -5 is negative"),
    ("downloads-non-integer-count.csv", 3, "downloads '12.5' is not a whole number"),
    ("downloads-impossible-date.csv", 3, "day '2022-02-30' is not a real date"),
    ("downloads-future-date.csv", 3, "day 2099-01-01 is in the future"),
    (
        "downloads-conflicting-duplicate.csv",
        2,
        "conflicting counts for react on 2022-01-10 within this file",
    ),
    (
        "downloads-invalid-package-name.csv",
        3,
        "package name '.hidden-pkg' is not a valid npm package name",
    ),
    ("downloads-api-malformed.json", 3, "malformed JSON: Expecting ',' delimiter"),
    ("manifests-malformed.jsonl", 2, "malformed JSON"),
    ("manifests-missing-maintainers.jsonl", 2, "maintainers must be a non-empty list"),
    (
        "manifests-invalid-dependency-name.jsonl",
        2,
        "dependency name 'Not Valid!' is not a valid npm package name",
    ),
    ("manifests-repeated-package.jsonl", 1, "package react appears 2 times in this file"),
    ("logins-unknown-outcome.csv", 3, "outcome 'lost' is not one of success, failed, abandoned"),
    ("logins-bad-timestamp.csv", 3, "occurred_at 'yesterday' is not an ISO 8601 timestamp"),
]


def test_every_failure_class_has_a_sample_file() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(name for name, _, _ in BAD_CASES)


@pytest.mark.parametrize(("name", "line", "reason"), BAD_CASES)
def test_bad_file_is_refused_naming_file_line_and_reason(
    con: duckdb.DuckDBPyConnection, name: str, line: int, reason: str
) -> None:
    with pytest.raises(BadInput) as refused:
        load(con, BAD / name)
    message = str(refused.value)
    assert message.startswith(f"{BAD / name}:{line}: ")
    assert reason in message
    assert refused.value.line == line
    assert row_counts(con) == NOTHING


def test_row_level_refusal_says_how_much_was_bad_and_that_nothing_loaded(
    con: duckdb.DuckDBPyConnection,
) -> None:
    with pytest.raises(
        BadInput,
        match=r"1 of 3 lines is bad \(33\.3%, over the 1\.0% limit\); "
        r"nothing was loaded: line 3: downloads -5 is negative",
    ):
        load(con, BAD / "downloads-negative-count.csv")


def test_bad_rows_within_the_limit_are_quarantined_and_the_rest_loads(
    con: duckdb.DuckDBPyConnection,
) -> None:
    result = load(con, BAD / "downloads-negative-count.csv", limit=0.5)
    assert (result.status, result.rows_read, result.rows_loaded, result.rows_quarantined) == (
        "loaded",
        3,
        2,
        1,
    )
    assert con.execute(
        "select package, downloads from raw_downloads order by package"
    ).fetchall() == [("lodash", 300), ("react", 120)]
    assert con.execute("select path, line, reason, record from quarantine").fetchall() == [
        (
            str(BAD / "downloads-negative-count.csv"),
            3,
            "downloads -5 is negative",
            '{"package":"vue","day":"2022-01-10","downloads":"-5"}',
        )
    ]


@pytest.mark.parametrize(
    ("relative", "text", "reason"),
    [
        (
            "downloads/d.csv",
            "package,day,downloads\nreact,2022-01-10,1\nvue,0000-01-01,2\n",
            "day 0001-01-01 (BC) is before 2000",
        ),
        (
            "downloads/d.csv",
            "package,day,downloads\nreact,2022-01-10,1\nvue,1970-01-01,2\n",
            "day 1970-01-01 is before 2000",
        ),
        (
            "logins/l.csv",
            "occurred_at,username,second_factor,outcome\n"
            "2022-01-10T10:00:00Z,ann,none,success\n0000-01-01T00:00:00Z,bob,none,success\n",
            "occurred_at 0001-01-01 (BC) 00:00:00 is before 2000",
        ),
        (
            "publishes/p.csv",
            "occurred_at,package,username,via,token_kind,second_factor\n"
            "2022-01-10T10:00:00Z,react,ann,session,,none\n"
            "1999-12-31T23:59:59Z,react,bob,session,,none\n",
            "occurred_at 1999-12-31 23:59:59 is before 2000",
        ),
    ],
)
def test_a_time_before_any_registry_kept_data_is_a_bad_row(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, relative: str, text: str, reason: str
) -> None:
    """A typo or an epoch's default; year 0 Python cannot even hold (plan check refuses
    it): quarantined, named by line."""
    path = tmp_path / relative
    path.parent.mkdir()
    path.write_text(text)
    result = load(con, path, limit=0.5)
    assert (result.rows_loaded, result.rows_quarantined) == (1, 1)
    assert con.execute("select line, reason from quarantine").fetchall() == [(3, reason)]


def test_a_typed_parquet_day_before_2000_is_a_bad_row_too(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The in-place load checks the typed day as the staged path does."""
    path = typed_parquet_downloads(
        tmp_path / "downloads" / "d.parquet",
        [("react", date(2022, 1, 10), 1), ("vue", date(1, 1, 1), 2)],
    )
    result = load(con, path, limit=0.5)
    assert (result.rows_loaded, result.rows_quarantined) == (1, 1)
    assert con.execute("select line, reason from quarantine").fetchall() == [
        (2, "day 0001-01-01 is before 2000")
    ]


def test_line_numbers_count_blank_lines(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    path = tmp_path / "downloads" / "d.csv"
    path.parent.mkdir()
    path.write_text("package,day,downloads\n\nreact,2022-01-10,1\n\n\nvue,2022-01-10,x\n")
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert refused.value.line == 6


@pytest.mark.parametrize("kind", ["downloads", "logins"])
def test_blank_lines_above_the_header_are_read_past_not_taken_for_it(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, kind: str
) -> None:
    """The header is the first line that is not blank: DuckDB took the blank line above
    it for the header, then the header for a row (quarantined as a bad day or time),
    and each bad row was named a line early."""
    header, good, bad, other = {
        "downloads": (
            "package,day,downloads",
            "react,2022-01-10,1",
            "vue,2022-01-10,x",
            "lodash,2022-01-10,2",
        ),
        "logins": (
            "occurred_at,username,second_factor,outcome",
            "2022-01-10T10:00:00Z,alice,totp,success",
            "2022-01-10T10:00:00Z,bob,totp,lost",
            "2022-01-10T11:00:00Z,carol,none,failed",
        ),
    }[kind]
    path = tmp_path / kind / "d.csv"
    path.parent.mkdir()
    path.write_text(f"\n\n{header}\n{good}\n\n{bad}\n{other}\n")
    result = load(con, path, limit=0.5)
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (3, 2, 1)
    [(line, reason)] = con.execute("select line, reason from quarantine").fetchall()
    assert line == 6
    assert ("'x'" if kind == "downloads" else "'lost'") in reason


def test_a_row_over_several_lines_is_named_by_the_line_it_starts_on(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A quoted value running over lines 3 and 4 was named line 4, where the row ended
    (the snooze reader names the line a row starts on); the rows after it keep theirs."""
    path = tmp_path / "downloads" / "d.csv"
    path.parent.mkdir()
    path.write_text(
        'package,day,downloads\nreact,2022-01-10,1\n"bad\nname",2022-01-10,1\n'
        "vue,2022-01-10,x\nlodash,2022-01-10,2\n"
    )
    result = load(con, path, limit=0.5)
    assert (result.rows_loaded, result.rows_quarantined) == (2, 2)
    lines = con.execute("select line from quarantine order by line").fetchall()
    assert lines == [(3,), (5,)]


def test_good_files_load_with_legacy_and_scoped_names(con: duckdb.DuckDBPyConnection) -> None:
    report = ingest.ingest(con, [GOOD], quarantine_limit=LIMIT, now=NOW)
    assert [f.status for f in report.files] == ["loaded"] * 4
    assert con.execute(
        "select package, day, downloads from stg_downloads order by package, day"
    ).fetchall() == [
        ("@babel/core", date(2022, 1, 10), 700),
        ("JSONStream", date(2022, 1, 10), 33),
        ("react", date(2022, 1, 10), 120),
        ("react", date(2022, 1, 11), 125),
        ("react", date(2022, 1, 12), 90),
    ]
    assert con.execute(
        "select package, dependency, kind from stg_dependencies order by all"
    ).fetchall() == [
        ("@babel/core", "@babel/parser", "prod"),
        ("@babel/core", "react", "dev"),
        ("JSONStream", "react", "peer"),
        ("react", "loose-envify", "prod"),
        ("react", "object-assign", "prod"),
    ]
    # Registries list maintainers as {"name", "email"} objects too: the name is kept.
    assert warehouse.scalar(
        con, "select maintainers from stg_manifests where package = '@babel/core'"
    ) == ["hzoo"]
    # Times are UTC whatever zone the event carried.
    assert con.execute("select username, occurred_at from stg_logins order by 1").fetchall() == [
        ("acdlite", datetime(2022, 1, 10, 9, 0)),
        ("gaearon", datetime(2022, 1, 10, 10, 0)),
        ("hzoo", datetime(2022, 1, 10, 12, 0)),
    ]


def test_repeats_with_the_same_count_are_skipped_not_doubled(
    con: duckdb.DuckDBPyConnection,
) -> None:
    load(con, GOOD / "downloads-2022-01-10.csv")
    result = load(con, GOOD / "downloads-api-react.json")
    # react on the 10th and 11th were loaded from the CSV: only the 12th is new.
    assert (result.rows_read, result.rows_loaded, result.rows_duplicate) == (3, 1, 2)
    assert warehouse.scalar(con, "select count(*) from raw_downloads where package = 'react'") == 3


def test_a_count_that_contradicts_loaded_data_is_bad(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    load(con, GOOD / "downloads-2022-01-10.csv")
    changed = tmp_path / "downloads-again.csv"
    changed.write_text("package,day,downloads\nreact,2022-01-10,999\n")
    with pytest.raises(
        BadInput,
        match=r"conflicts with 120 downloads for react on 2022-01-10 "
        r"already loaded from .*downloads-2022-01-10\.csv",
    ):
        load(con, changed)


def test_loading_the_same_file_twice_changes_nothing(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    first = ingest.ingest(con, [GOOD], quarantine_limit=LIMIT, now=NOW)
    before = row_counts(con)
    # Same content under another name is the same file.
    copy = tmp_path / "downloads" / "renamed.csv"
    copy.parent.mkdir()
    shutil.copy(GOOD / "downloads-2022-01-10.csv", copy)
    second = ingest.ingest(con, [GOOD, copy], quarantine_limit=LIMIT, now=NOW)
    assert first.loaded == 4
    assert (second.loaded, second.skipped) == (0, 5)
    assert row_counts(con) == before


def test_parquet_downloads_keep_their_types_and_name_rows(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "downloads" / "downloads-2022-01-10.parquet"
    path.parent.mkdir()
    pq.write_table(
        pa.table(
            {
                "package": ["react", "vue", "left-pad"],
                "day": pa.array([date(2022, 1, 10)] * 3, pa.date32()),
                "downloads": pa.array([5, -1, 7], pa.int64()),
            }
        ),
        path,
    )
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert refused.value.line == 2
    assert "row" in str(refused.value) and "downloads -1 is negative" in str(refused.value)


def test_parquet_manifests_load(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    path = tmp_path / "manifests" / "manifests.parquet"
    path.parent.mkdir()
    deps = pa.map_(pa.string(), pa.string())
    pq.write_table(
        pa.table(
            {
                "name": ["a", "b"],
                "version": ["1.0.0", "2.0.0"],
                "dependencies": pa.array([[("b", "^2")], None], deps),
                "devDependencies": pa.array([None, [("a", "*")]], deps),
                "maintainers": [["u1"], ["u1", "u2"]],
            }
        ),
        path,
    )
    result = load(con, path)
    assert (result.status, result.rows_loaded) == ("loaded", 2)
    assert con.execute(
        "select package, dependency, kind from stg_dependencies order by 1"
    ).fetchall() == [("a", "b", "prod"), ("b", "a", "dev")]


def manifest(name: str, **fields: object) -> dict[str, object]:
    return {"name": name, "version": "1.0.0", "maintainers": ["u"], **fields}


def test_a_dependency_range_that_is_no_string_is_a_bad_manifest_not_a_dependent(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A range is a string (npm's semver range, a tag, a URL): a number, a null or an
    object is no range, and the manifest is bad, not counted as a dependent of "b"."""
    path = tmp_path / "manifests" / "m.jsonl"
    path.parent.mkdir()
    rows = [
        manifest("good", dependencies={"b": "^1.0.0"}),
        manifest("number", dependencies={"b": 1}),
        manifest("null", devDependencies={"b": None}),
        manifest("object", peerDependencies={"b": {"version": "1"}}),
        manifest("boolean", dependencies={"b": "^1", "c": True}),
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = load(con, path, limit=0.9)
    assert (result.rows_loaded, result.rows_quarantined) == (1, 4)
    assert con.execute("select line, reason from quarantine order by line").fetchall() == [
        (2, "dependencies must be an object of package name to version range"),
        (3, "devDependencies must be an object of package name to version range"),
        (4, "peerDependencies must be an object of package name to version range"),
        (5, "dependencies must be an object of package name to version range"),
    ]
    assert con.execute("select package, dependency, range from stg_dependencies").fetchall() == [
        ("good", "b", "^1.0.0")
    ]


def test_a_parquet_dependency_range_that_is_null_is_a_bad_manifest(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "manifests" / "m.parquet"
    path.parent.mkdir()
    deps = pa.map_(pa.string(), pa.string())
    pq.write_table(
        pa.table(
            {
                "name": ["a", "b"],
                "version": ["1.0.0", "2.0.0"],
                "dependencies": pa.array([[("b", "^2")], [("a", None)]], deps),
                "maintainers": [["u1"], ["u1"]],
            }
        ),
        path,
    )
    load(con, path, limit=0.9)
    assert con.execute("select line, reason from quarantine").fetchall() == [
        (2, "dependencies must be an object of package name to version range")
    ]


def test_a_maintainer_listed_twice_is_one_maintainer(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A username repeated (or repeated but for spaces, or once as {"name"}) is one
    maintainer: listed twice, an account with none was counted twice as unresolved."""
    path = tmp_path / "manifests" / "m.jsonl"
    path.parent.mkdir()
    rows = [manifest("a", maintainers=["ghost", "u", " ghost", {"name": "u"}, "v"])]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load(con, path).rows_loaded == 1
    assert con.execute("select maintainers from stg_manifests").fetchall() == [
        (["ghost", "u", "v"],)
    ]


def test_missing_parquet_column_is_named(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    path = tmp_path / "downloads" / "d.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"package": ["a"], "downloads": [1]}), path)
    with pytest.raises(BadInput, match="missing column day"):
        load(con, path)


def test_a_refused_file_does_not_stop_the_others(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    folder = tmp_path / "landing"
    shutil.copytree(
        GOOD, folder / "downloads", ignore=shutil.ignore_patterns("manifests*", "logins*")
    )
    shutil.copy(BAD / "downloads-negative-count.csv", folder / "downloads")
    report = ingest.ingest(con, [folder], quarantine_limit=LIMIT, landing_root=folder, now=NOW)
    assert sorted((f.path.name, f.status) for f in report.files) == [
        ("downloads-2022-01-10.csv", "loaded"),
        ("downloads-api-react.json", "loaded"),
        ("downloads-negative-count.csv", "rejected"),
    ]


def test_a_file_of_unknown_kind_is_bad_input(tmp_path: Path) -> None:
    stray = tmp_path / "notes.csv"
    stray.write_text("a,b\n")
    with pytest.raises(BadInput, match="cannot tell what this file holds"):
        landing.discover([stray])


def test_folders_other_readers_own_are_passed_over_when_the_landing_area_is_read(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Snooze requests land beside the data files; reading the landing folder leaves
    them to their reader instead of refusing the whole run. SendGrid's events there
    are landing files like the others."""
    root = tmp_path / "landing"
    (root / "snoozes" / "top-100").mkdir(parents=True)
    (root / "snoozes" / "top-100" / "requests.csv").write_text("username,days\nann,7\n")
    (root / "events").mkdir()
    event = {"sg_event_id": "e1", "event": "delivered", "timestamp": 1_700_000_000}
    (root / "events" / "events-1700000000-ab.json").write_text(
        json.dumps([{**event, "email": "ann@example.com", "outbox_id": "7"}])
    )
    typed_parquet(root, "downloads-2022-01-10.parquet", [("a", DAY, 1)])
    found = landing.discover([root], root)
    assert [(f.kind, f.path.name) for f in found] == [
        ("downloads", "downloads-2022-01-10.parquet"),
        ("events", "events-1700000000-ab.json"),
    ]
    report = ingest.ingest(con, [root], quarantine_limit=0.0, landing_root=root)
    assert (report.loaded, report.rejected) == (2, [])


# Typed Parquet downloads load in place (straight into raw_downloads, checked there);
# anything wrong sends the file through staging, which names the rows.


def typed_parquet(directory: Path, name: str, rows: list[tuple[str | None, date, int]]) -> Path:
    return typed_parquet_downloads(directory / "downloads" / name, rows)


def loaded_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[str, date, int]]:
    return con.execute("select package, day, downloads from raw_downloads order by all").fetchall()


DAY = date(2022, 1, 10)


def test_a_clean_typed_parquet_file_loads_without_being_staged(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def staged(*_: object) -> None:
        raise AssertionError("a clean typed file was staged")

    monkeypatch.setitem(landing.STAGERS, "downloads", staged)
    path = typed_parquet(tmp_path, "clean.parquet", [("vue", DAY, 7), ("@babel/core", DAY, 5)])
    result = load(con, path)
    assert (result.status, result.rows_read, result.rows_loaded) == ("loaded", 2, 2)
    assert loaded_rows(con) == [("@babel/core", DAY, 5), ("vue", DAY, 7)]
    assert warehouse.scalar(con, "select rows_loaded from ingested_files") == 2


def test_a_backfill_of_small_clean_files_loads_in_one_transaction_file_by_file_recorded(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[str] = []
    real_transaction = warehouse.transaction

    @contextmanager
    def counted(connection: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
        with real_transaction(connection) as inside:
            yield inside
        commits.append("commit")

    monkeypatch.setattr(warehouse, "transaction", counted)
    # Daily files as a registry's exports come: typed Parquet, CSV, gzipped CSV.
    days = [date(2022, 1, d) for d in range(1, 10)]
    folder = tmp_path / "downloads"
    folder.mkdir()
    for day in days:
        rows = [("react", day, day.day), ("vue", day, 1)]
        if day.day % 3 == 0:
            typed_parquet(tmp_path, f"downloads-{day}.parquet", rows)
            continue
        text = "package,day,downloads\n" + "".join(f"{n},{d},{c}\n" for n, d, c in rows)
        if day.day % 3 == 1:
            (folder / f"downloads-{day}.csv").write_text(text)
        else:
            (folder / f"downloads-{day}.csv.gz").write_bytes(gzip.compress(text.encode()))
    report = ingest.ingest(con, [tmp_path / "downloads"], quarantine_limit=LIMIT, now=NOW)
    assert commits == ["commit"]
    assert [(f.path.name[10:20], f.status, f.rows_loaded) for f in report.files] == [
        (str(day), "loaded", 2) for day in days
    ]
    assert con.execute(
        "select path, rows_read, rows_loaded from ingested_files order by file_id"
    ).fetchall() == [(str(f.path), 2, 2) for f in report.files]
    assert len(loaded_rows(con)) == 18
    assert warehouse.scalar(con, "select sum(downloads) from raw_downloads") == 45 + 9
    # Read again, each is a file already loaded.
    again = ingest.ingest(con, [folder], quarantine_limit=LIMIT, now=NOW)
    assert again.skipped == 9 and len(loaded_rows(con)) == 18


def test_one_bad_file_in_a_backfill_is_named_and_the_others_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    days = [date(2022, 1, d) for d in range(1, 9)]
    for day in days:
        rows = [("react", day, 1), ("vue", day, 2)]
        if day.day == 5:
            rows.append(("Not Valid!", day, 3))
        typed_parquet(tmp_path, f"downloads-{day}.parquet", rows)
    report = ingest.ingest(con, [tmp_path / "downloads"], quarantine_limit=0.5, now=NOW)
    assert [(f.path.name[10:20], f.rows_loaded, f.rows_quarantined) for f in report.files] == [
        (str(day), 2, 1 if day.day == 5 else 0) for day in days
    ]
    assert con.execute("select path, line, reason from quarantine").fetchall() == [
        (
            str(tmp_path / "downloads" / "downloads-2022-01-05.parquet"),
            3,
            "package name 'Not Valid!' is not a valid npm package name",
        )
    ]
    assert len(loaded_rows(con)) == 16


# Every value a raw check names quoted (sql/raw/check_*.sql): (kind, file name, its
# lines with {v} where the bad value goes, what the reason names before the value).
QUOTED_IN_REASONS = [
    ("downloads", "d.csv", ["package,day,downloads", "{v},2022-01-10,1"], "package name"),
    ("downloads", "d.csv", ["package,day,downloads", "react,{v},1"], "day"),
    ("downloads", "d.csv", ["package,day,downloads", "react,2022-01-10,{v}"], "downloads"),
    (
        "logins",
        "l.csv",
        ["occurred_at,username,second_factor,outcome", "{v},ann,none,success"],
        "occurred_at",
    ),
    (
        "logins",
        "l.csv",
        ["occurred_at,username,second_factor,outcome", "2022-01-10T10:00:00Z,ann,{v},success"],
        "second_factor",
    ),
    (
        "logins",
        "l.csv",
        ["occurred_at,username,second_factor,outcome", "2022-01-10T10:00:00Z,ann,none,{v}"],
        "outcome",
    ),
    (
        "publishes",
        "p.csv",
        [
            "occurred_at,package,username,via,token_kind,second_factor",
            "{v},react,ann,session,,totp",
        ],
        "occurred_at",
    ),
    (
        "publishes",
        "p.csv",
        [
            "occurred_at,package,username,via,token_kind,second_factor",
            "2022-01-10T10:00:00Z,{v},ann,session,,totp",
        ],
        "package name",
    ),
    (
        "publishes",
        "p.csv",
        [
            "occurred_at,package,username,via,token_kind,second_factor",
            "2022-01-10T10:00:00Z,react,ann,{v},,totp",
        ],
        "via",
    ),
    (
        "publishes",
        "p.csv",
        [
            "occurred_at,package,username,via,token_kind,second_factor",
            "2022-01-10T10:00:00Z,react,ann,token,{v},none",
        ],
        "token_kind",
    ),
    (
        "publishes",
        "p.csv",
        [
            "occurred_at,package,username,via,token_kind,second_factor",
            "2022-01-10T10:00:00Z,react,ann,session,,{v}",
        ],
        "second_factor",
    ),
    (
        "manifests",
        "m.jsonl",
        ['{"name": {j}, "version": "1.0.0", "maintainers": ["ann"]}'],
        "package name",
    ),
    (
        "manifests",
        "m.jsonl",
        [
            '{"name": "react", "version": "1.0.0", "maintainers": ["ann"],'
            ' "dependencies": {{j}: "^1.0.0"}}'
        ],
        "dependency name",
    ),
    (
        "events",
        "e.jsonl",
        [
            '{"sg_event_id": "e1", "event": {j}, "timestamp": 1641808800,'
            ' "email": "ann@example.com", "outbox_id": "7"}'
        ],
        "event",
    ),
    (
        "events",
        "e.jsonl",
        [
            '{"sg_event_id": "e1", "event": "open", "timestamp": {j},'
            ' "email": "ann@example.com", "outbox_id": "7"}'
        ],
        "timestamp",
    ),
    (
        "events",
        "e.jsonl",
        [
            '{"sg_event_id": "e1", "event": "open", "timestamp": 1641808800,'
            ' "email": "ann@example.com", "outbox_id": {j}}'
        ],
        "outbox_id",
    ),
]


@pytest.mark.parametrize(
    ("kind", "name", "lines", "named"),
    QUOTED_IN_REASONS,
    ids=[f"{kind}-{named.replace(' ', '_')}" for kind, _, _, named in QUOTED_IN_REASONS],
)
def test_every_raw_check_names_the_row_s_value_quoted(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    kind: str,
    name: str,
    lines: list[str],
    named: str,
) -> None:
    """Each check of every kind (sql/raw/check_*.sql) names a bad value as
    rollout.core.controls.quoted does, its quote and backslash escaped: one value read
    as one, whichever field holds it (the test below tries the downloads' package
    alone)."""
    value = "o'neil\\x"
    text = "\n".join(lines).replace("{v}", value).replace("{j}", json.dumps(value))
    path = tmp_path / "landing" / kind / f"{kind}-2022-01-10-{name}"
    path.parent.mkdir(parents=True)
    path.write_text(text + "\n")
    load(con, path, limit=1.0)
    reasons = [reason for (reason,) in con.execute("select reason from quarantine").fetchall()]
    assert reasons and all(r.startswith(f"{named} {quoted(value)} ") for r in reasons), reasons


@pytest.mark.parametrize(
    "name", ["it's bad", "o'neil', 'x bad", "back\\slash' bad", "esc\x1b[2K bad"]
)
def test_a_quarantined_row_s_value_is_named_quoted(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, name: str
) -> None:
    """A reason names the row's value as every message names one
    (rollout.core.controls.quoted): its own quote and backslash escaped, so a package
    name holding a ``'`` (npm allows it) reads as one name; a control character it holds
    is shown as its escape on a terminal (the net under every console)."""
    rows = [("react", DAY, 1), (name, DAY, 3), ("zod", DAY, 2)]
    load(con, typed_parquet(tmp_path, "one-bad.parquet", rows), limit=0.5)
    [(reason,)] = con.execute("select reason from quarantine").fetchall()
    assert controls_shown(reason) == f"package name {quoted(name)} is not a valid npm package name"


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ((None, DAY, 3), "package name is missing"),
        (("Not Valid!", DAY, 3), "package name 'Not Valid!' is not a valid npm package name"),
        (("vue", date(2099, 1, 1), 3), "day 2099-01-01 is in the future"),
    ],
)
def test_a_typed_parquet_file_with_a_bad_row_is_staged_and_the_row_named(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    bad_row: tuple[str | None, date, int],
    reason: str,
) -> None:
    rows = [("react", DAY, 1), bad_row, ("zod", DAY, 2)]
    result = load(con, typed_parquet(tmp_path, "one-bad.parquet", rows), limit=0.5)
    assert (result.rows_loaded, result.rows_quarantined) == (2, 1)
    # Nothing of the rolled-back in-place attempt is left: the good rows are in once.
    assert loaded_rows(con) == [("react", DAY, 1), ("zod", DAY, 2)]
    assert con.execute("select line, reason from quarantine").fetchall() == [(2, reason)]
    assert warehouse.scalar(con, "select count(*) from ingested_files") == 1


def test_a_refused_typed_parquet_file_leaves_nothing_behind(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    load(con, typed_parquet(tmp_path, "first.parquet", [("react", DAY, 1)]))
    before = row_counts(con)
    rows = [("vue", DAY, 1), ("vue", DAY, 2), ("zod", DAY, 3)]
    with pytest.raises(BadInput, match="conflicting counts for vue on 2022-01-10"):
        load(con, typed_parquet(tmp_path, "conflict.parquet", rows))
    assert row_counts(con) == before


def test_a_typed_parquet_file_is_checked_against_what_is_loaded_not_against_itself(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    load(con, typed_parquet(tmp_path, "first.parquet", [("react", DAY, 1), ("vue", DAY, 2)]))
    # Overlapping days: the same count again is a duplicate, skipped.
    again = [("vue", DAY, 2), ("zod", DAY, 3)]
    result = load(con, typed_parquet(tmp_path, "again.parquet", again))
    assert (result.rows_loaded, result.rows_duplicate) == (1, 1)
    assert loaded_rows(con) == [("react", DAY, 1), ("vue", DAY, 2), ("zod", DAY, 3)]
    # A new file of a day already loaded, with nothing in common, loads whole.
    other = [("a-new-one", DAY, 4)]
    assert load(con, typed_parquet(tmp_path, "other.parquet", other)).rows_loaded == 1


def test_a_file_in_key_order_with_a_repeated_key_is_still_caught(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # Sorted input skips the grouping only when no key repeats: adjacent equal keys
    # are not "strictly increasing", so the grouping runs and finds them.
    rows = [("a-pkg", DAY, 1), ("b-pkg", DAY, 2), ("b-pkg", DAY, 2), ("c-pkg", DAY, 3)]
    result = load(con, typed_parquet(tmp_path, "sorted.parquet", rows), limit=0.5)
    assert (result.rows_loaded, result.rows_duplicate) == (3, 1)
    assert [r[0] for r in loaded_rows(con)] == ["a-pkg", "b-pkg", "c-pkg"]


def test_a_repeated_column_nobody_reads_does_not_stop_a_parquet_file(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "downloads" / "with-notes.parquet"
    path.parent.mkdir()
    columns = [
        pa.array(["react", "vue"]),
        pa.array([DAY, DAY], pa.date32()),
        pa.array([1, 2], pa.int64()),
        pa.array(["a", "b"]),
        pa.array(["c", "d"]),
    ]
    names = ["package", "day", "downloads", "note", "note"]
    pq.write_table(pa.Table.from_arrays(columns, names=names), path)
    assert load(con, path).rows_loaded == 2
    assert loaded_rows(con) == [("react", DAY, 1), ("vue", DAY, 2)]


def test_a_path_duckdb_would_read_as_a_pattern_is_refused_and_the_others_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # `d[12].parquet` is a glob to DuckDB: it would load d1.parquet's rows.
    typed_parquet(tmp_path, "d1.parquet", [("react", DAY, 1)])
    typed_parquet(tmp_path, "d[12].parquet", [("vue", DAY, 2)])
    report = ingest.ingest(con, [tmp_path / "downloads"], quarantine_limit=LIMIT, now=NOW)
    assert report.loaded == 1
    [refused] = report.rejected
    assert refused.path.name == "d[12].parquet"
    assert "a character DuckDB reads as a pattern" in refused.message
    assert loaded_rows(con) == [("react", DAY, 1)]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_path_starting_with_a_tilde_loads_that_file_not_one_in_the_home_folder(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    """DuckDB reads a leading ~ as the home folder; Python, which checked and fingerprinted
    the file, does not: the rows of another file were loaded under this one's checksum."""
    work, home = tmp_path / "work", tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work.mkdir() or work)
    for root, package in ((work / "~", "react"), (home, "vue")):
        if fmt == "parquet":
            typed_parquet(root, "d.parquet", [(package, DAY, 1)])
        elif fmt == "csv":
            (root / "downloads").mkdir(parents=True)
            (root / "downloads" / "d.csv").write_text(f"package,day,downloads\n{package},{DAY},1\n")
        else:
            (root / "manifests").mkdir(parents=True)
            manifest = {"name": package, "version": "1.0.0", "maintainers": ["kim"]}
            (root / "manifests" / "m.jsonl").write_text(json.dumps(manifest) + "\n")
    name = {
        "csv": "downloads/d.csv",
        "parquet": "downloads/d.parquet",
        "jsonl": "manifests/m.jsonl",
    }
    report = ingest.ingest(con, [Path("~") / name[fmt]], quarantine_limit=LIMIT, now=NOW)
    assert report.loaded == 1, report.rejected
    if fmt == "jsonl":
        assert con.execute("select name from raw_manifests").fetchall() == [("react",)]
    else:
        assert loaded_rows(con) == [("react", DAY, 1)]


def test_a_refused_file_is_named_on_one_line_whatever_its_name_holds(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    name = "d\n\x1b[32mOK: 0 refused\x1b[0m [1].parquet"
    typed_parquet(tmp_path, name, [("vue", DAY, 2)])
    [refused] = ingest.ingest(
        con, [tmp_path / "downloads"], quarantine_limit=LIMIT, now=NOW
    ).rejected
    assert refused.path.name == name
    assert "\n" not in refused.message and "\x1b" not in refused.message
    assert "d\\x0a\\x1b[32mOK: 0 refused\\x1b[0m [1].parquet: " in refused.message


def test_a_count_beyond_bigint_is_out_of_range_not_missing(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "downloads" / "huge.parquet"
    path.parent.mkdir()
    too_many = 2**64 - 1
    pq.write_table(
        pa.table(
            {
                "package": ["react", "vue"],
                "day": pa.array([DAY, DAY], pa.date32()),
                "downloads": pa.array([5, too_many], pa.uint64()),
            }
        ),
        path,
    )
    result = load(con, path, limit=0.5)
    assert (result.rows_loaded, result.rows_quarantined) == (1, 1)
    assert con.execute("select line, reason from quarantine").fetchall() == [
        (2, f"downloads {too_many} is out of range (at most 9223372036854775807)")
    ]
    text = tmp_path / "downloads" / "huge.csv"
    text.write_text("package,day,downloads\nreact,2022-01-11,99999999999999999999\n")
    with pytest.raises(BadInput, match="downloads 99999999999999999999 is out of range"):
        load(con, text)


@pytest.mark.parametrize(
    ("counts", "whole", "not_whole"),
    [
        (
            pa.array([5, 10**20, decimal.Decimal("2.50")], pa.decimal128(38, 2)),
            "100000000000000000000",
            "2.50",
        ),
        (pa.array([5.0, 1e20, 2.5], pa.float64()), "100000000000000000000", "2.5"),
    ],
    ids=["decimal", "double"],
)
def test_a_whole_parquet_count_beyond_bigint_is_out_of_range_not_a_fraction(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, counts: pa.Array, whole: str, not_whole: str
) -> None:
    path = tmp_path / "downloads" / "huge.parquet"
    path.parent.mkdir()
    pq.write_table(
        pa.table({"package": ["react", "vue", "zod"], "day": [DAY] * 3, "downloads": counts}),
        path,
    )
    result = load(con, path, limit=0.9)
    assert (result.rows_loaded, result.rows_quarantined) == (1, 2)
    assert con.execute("select line, reason from quarantine order by line").fetchall() == [
        (2, f"downloads {whole} is out of range (at most 9223372036854775807)"),
        (3, f"downloads '{not_whole}' is not a whole number"),
    ]


def test_a_whole_json_count_beyond_bigint_is_out_of_range_not_a_fraction(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "downloads" / "huge.jsonl"
    path.parent.mkdir()
    days = [{"day": "2022-01-10", "downloads": n} for n in (5, 10**20, 1e20, 2.5)]
    path.write_text(
        "".join(
            json.dumps({"package": package, "downloads": [day]}) + "\n"
            for package, day in zip(["react", "vue", "zod", "ky"], days, strict=True)
        )
    )
    load(con, path, limit=0.9)
    assert con.execute("select line, reason from quarantine order by line").fetchall() == [
        (2, "downloads 100000000000000000000 is out of range (at most 9223372036854775807)"),
        # Python writes the float 1e20 as 1e+20: a count in exponent notation.
        (3, "downloads '1e+20' is in exponent notation: write the count in digits"),
        (4, "downloads '2.5' is not a whole number"),
    ]


def test_a_repeat_after_the_first_rows_in_order_is_caught(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # The first thousand rows are in key order (so the whole file is checked for it);
    # the repeat comes later, and the file is then not in order after all.
    rows = [(f"pkg-{n:05d}", DAY, n) for n in range(1500)]
    rows.append(("pkg-00007", DAY, 7))
    result = load(con, typed_parquet(tmp_path, "late-repeat.parquet", rows), limit=0.5)
    assert (result.rows_loaded, result.rows_duplicate) == (1500, 1)


# --- the byte-order mark spreadsheet programs write -------------------------------------

BOM = b"\xef\xbb\xbf"
TEXT_KINDS = [
    "downloads-2022-01-10.csv",
    "logins-2022-01-10.csv",
    "downloads-api-react.json",
    "manifests.jsonl",
]


def with_bom(source: Path, target: Path, compressed: bool) -> Path:
    data = BOM + source.read_bytes()
    target = target.with_name(target.name + (".gz" if compressed else ""))
    target.write_bytes(gzip.compress(data) if compressed else data)
    return target


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("name", TEXT_KINDS)
def test_a_byte_order_mark_is_read_past(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, name: str, compressed: bool
) -> None:
    path = with_bom(GOOD / name, tmp_path / name, compressed)
    result = load(con, path)
    with warehouse.connect(tmp_path / "without.duckdb") as plain:
        expected = load(plain, GOOD / name)
    assert (result.status, result.rows_read, result.rows_loaded) == (
        "loaded",
        expected.rows_read,
        expected.rows_loaded,
    )


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
def test_a_bad_row_after_a_byte_order_mark_keeps_its_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, compressed: bool
) -> None:
    path = with_bom(BAD / "downloads-negative-count.csv", tmp_path / "downloads.csv", compressed)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert refused.value.line == 3 and "downloads -5 is negative" in str(refused.value)
    assert row_counts(con) == NOTHING


# --- logins sent again ------------------------------------------------------------------


def test_logins_sent_again_in_another_file_are_duplicates_not_counted_twice(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A corrected logins file (its bad row fixed) or the same one re-sent as .gz has
    another checksum: its rows already loaded are duplicates, only the new ones load."""
    header = "occurred_at,username,second_factor,outcome\n"
    rows = [
        "2022-01-10T10:00:00Z,gaearon,none,success\n",
        "2022-01-10T11:00:00Z,acdlite,elv,abandoned\n",
        "2022-01-10T12:00:00Z,hzoo,totp,success\n",
    ]
    folder = tmp_path / "logins"
    folder.mkdir()
    first = folder / "logins-2022-01-10.csv"
    first.write_text(header + "".join(rows) + "2022-01-10T13:00:00Z,sebmck,sms,success\n")
    assert load(con, first, limit=0.5).rows_loaded == 3
    corrected = folder / "logins-2022-01-10-corrected.csv"
    corrected.write_text(header + "".join(rows) + "2022-01-10T13:00:00Z,sebmck,totp,success\n")
    fixed = load(con, corrected)
    assert (fixed.rows_read, fixed.rows_loaded, fixed.rows_duplicate) == (4, 1, 3)
    resent = folder / "logins-2022-01-10-corrected.csv.gz"
    resent.write_bytes(gzip.compress(corrected.read_bytes().replace(b"\n", b"\r\n")))
    again = load(con, resent)
    assert (again.status, again.rows_loaded, again.rows_duplicate) == ("loaded", 0, 4)
    assert con.execute("select count(*) from stg_logins").fetchone() == (4,)


# Registries export manifests by day, named the old way (manifests-2022-01-05.jsonl) or
# in Hive's layout, Spark's random part names in each day's folder, or both mixed: the
# newest day's manifest is each package's latest, whatever the names sort as.
MANIFESTS_BY_DAY = [
    [
        "manifests/day=2022-01-05/part-00000-f1c2.jsonl",
        "manifests/day=2022-01-06/part-00000-a7b9.jsonl",
    ],
    ["manifests/day=2022-01-05/part-00000-0000.jsonl", "manifests/manifests-2022-01-06.jsonl"],
    ["manifests/manifests-2022-01-05.jsonl", "manifests/day=2022-01-06/part-0.jsonl"],
    [
        "manifests/year=2022/month=1/day=9/part-1.jsonl",
        "manifests/year=2022/month=1/day=10/part-0.jsonl",
    ],
    ["manifests/manifests-2022-01-05.jsonl", "manifests/2022-01-06/manifests.jsonl"],
]


@pytest.mark.parametrize("older_newer", MANIFESTS_BY_DAY, ids=lambda p: f"{p[0]} then {p[1]}")
def test_the_newest_days_manifest_is_the_latest_however_the_files_are_named(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, older_newer: list[str]
) -> None:
    root = tmp_path / "landing"
    for name, owner in zip(older_newer, ("old-owner", "new-owner"), strict=True):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest = {"name": "react", "version": "1.0.0", "maintainers": [owner]}
        path.write_text(json.dumps(manifest) + "\n")
    report = ingest.ingest(con, [root], quarantine_limit=0.0, landing_root=root)
    assert (report.loaded, report.rejected) == (2, [])
    latest = con.execute("select maintainers from stg_manifests where package = 'react'")
    assert latest.fetchall() == [(["new-owner"],)]


def test_a_file_named_for_no_day_loads_after_those_named_for_one(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    for name in ("manifests/manifests.jsonl", "manifests/day=2022-01-06/part-9.jsonl"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text('{"name": "a", "version": "1", "maintainers": ["x"]}\n')
    found = landing.discover([root], root)
    assert [f.path.relative_to(root).as_posix() for f in found] == [
        "manifests/day=2022-01-06/part-9.jsonl",
        "manifests/manifests.jsonl",
    ]

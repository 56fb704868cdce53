"""Property: the fast ways a downloads file loads give what the general way gives.

A typed Parquet file loads in place (straight into raw_downloads, checked there) and,
when its keys come in order, skips grouping them; any finding sends it through
staging. Whatever the rows, the outcome must be the one staging alone gives.
"""

from __future__ import annotations

import json
import tempfile
from datetime import date, datetime
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout import warehouse
from rollout.warehouse import ingest, landing

from .conftest import typed_parquet_downloads

NOW = datetime(2022, 2, 1, 12, 0)
DAYS = [date(2022, 1, 10), date(2022, 1, 11), date(2099, 1, 1)]
NAMES = ["react", "vue", "@babel/core", "JSONStream", ".bad", "node_modules", "", None]

Row = tuple[str | None, date, int]
rows_strategy = st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(DAYS), st.integers(-1, 3)),
    min_size=1,
    max_size=12,
)


def outcome(rows: list[Row], *, in_place: bool) -> tuple[object, ...]:
    with tempfile.TemporaryDirectory() as scratch:
        path = typed_parquet_downloads(Path(scratch) / "downloads" / "downloads.parquet", rows)
        with (
            mock.patch.object(landing, "loads_in_place", return_value=in_place),
            warehouse.open_warehouse(Path(scratch) / "warehouse.duckdb") as con,
        ):
            result = ingest.ingest_file(con, landing.classify(path), quarantine_limit=1.0, now=NOW)
            loaded = con.execute(
                "select package, day, downloads from raw_downloads order by all"
            ).fetchall()
            quarantined = con.execute("select line, reason from quarantine order by all").fetchall()
        counts = (result.rows_read, result.rows_loaded, result.rows_duplicate)
        return result.status, counts, result.rows_quarantined, loaded, quarantined


@settings(max_examples=40, deadline=None)
@given(rows=rows_strategy, in_key_order=st.booleans())
def test_in_place_loading_gives_what_staging_gives(rows: list[Row], in_key_order: bool) -> None:
    if in_key_order:
        rows = sorted(rows, key=lambda r: (r[0] or "", r[1]))
    assert outcome(rows, in_place=True) == outcome(rows, in_place=False)


VALID_NAMES = ["react", "vue", "@babel/core", "JSONStream"]
PAST_DAYS = [d for d in DAYS if d <= NOW.date()]
# Valid rows with distinct (package, day) keys, in any order: generated as such, so
# every draw is a case (none is thrown away).
distinct_valid_rows = st.dictionaries(
    st.tuples(st.sampled_from(VALID_NAMES), st.sampled_from(PAST_DAYS)),
    st.integers(0, 3),
    min_size=1,
).flatmap(lambda keyed: st.permutations([(n, d, c) for (n, d), c in keyed.items()]))


@settings(max_examples=40, deadline=None)
@given(rows=distinct_valid_rows, in_key_order=st.booleans())
def test_valid_rows_with_distinct_keys_all_load(rows: list[Row], in_key_order: bool) -> None:
    if in_key_order:
        rows = sorted(rows, key=lambda r: (r[0] or "", r[1]))
    status, counts, quarantined, loaded, _ = outcome(rows, in_place=True)
    assert (status, counts, quarantined) == ("loaded", (len(rows),) * 2 + (0,), 0)
    assert loaded == sorted(rows)


# Several files, mostly clean, some with bad rows, repeats across files, or a copy of
# an earlier file: the drawn files hold rows of the same few keys, so they collide.
# Each is typed Parquet (loads in place) or CSV (staged, then its typed rows go in).
files_strategy = st.lists(
    st.tuples(
        st.one_of(distinct_valid_rows, distinct_valid_rows, rows_strategy),
        st.sampled_from(["parquet", "csv"]),
    ),
    min_size=2,
    max_size=6,
).flatmap(
    lambda files: st.lists(st.integers(0, len(files) - 1), max_size=2).map(
        lambda copies: files + [files[i] for i in copies]
    )
)


def write_csv_downloads(path: Path, rows: list[Row]) -> None:
    lines = ["package,day,downloads"]
    lines += [f"{name or ''},{day.isoformat()},{count}" for name, day, count in rows]
    path.write_text("\n".join(lines) + "\n")


def ingested(files: list[tuple[list[Row], str]], *, batch_bytes: int) -> tuple[object, ...]:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "downloads"
        folder.mkdir()
        for number, (rows, form) in enumerate(files):
            path = folder / f"downloads-{number:02}.{form}"
            if form == "parquet":
                typed_parquet_downloads(path, rows)
            else:
                write_csv_downloads(path, rows)
        with (
            mock.patch.object(ingest, "BATCH_BYTES", batch_bytes),
            warehouse.open_warehouse(Path(scratch) / "warehouse.duckdb") as con,
        ):
            report = ingest.ingest(con, [folder], quarantine_limit=0.5, now=NOW)
            loaded = con.execute(
                "select files.path, package, day, downloads from raw_downloads "
                "join ingested_files as files using (file_id) order by all"
            ).fetchall()
            quarantined = con.execute(
                "select path, line, reason from quarantine order by all"
            ).fetchall()
        per_file = [
            (
                f.path.name,
                f.status,
                f.rows_read,
                f.rows_loaded,
                f.rows_duplicate,
                f.rows_quarantined,
                # Each run has its own folder, and a skip names the earlier file's id.
                f.message.replace(scratch, "").split(" as file ")[0],
            )
            for f in report.files
        ]
        rows = [(Path(path).name, *rest) for path, *rest in loaded]
        bad = [(Path(path).name, line, why.replace(scratch, "")) for path, line, why in quarantined]
        return per_file, rows, bad


@settings(max_examples=25, deadline=None)
@given(files=files_strategy)
def test_files_loaded_in_a_batch_give_what_loading_them_one_by_one_gives(
    files: list[tuple[list[Row], str]],
) -> None:
    """A backfill's small files share one in-place load and one check; any finding
    splits the batch until each file is loaded apart. The outcome, file by file, is
    the one-by-one outcome: statuses, counts, rows, quarantine."""
    batched = ingested(files, batch_bytes=1 << 20)
    one_by_one = ingested(files, batch_bytes=0)
    assert batched == one_by_one


# A downloads .json array is read object by object, to name each object's line: what it
# reads must be what json.loads reads, and text json.loads refuses must be refused at
# the place json.loads names.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
spacing = st.sampled_from(["", " ", "\n", " \n\t", "\r\n", "\n\n  "])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(json_values, max_size=5), gaps=st.lists(spacing, min_size=12, max_size=12))
def test_a_json_array_read_object_by_object_is_what_json_reads_with_each_line(
    values: list[object], gaps: list[str]
) -> None:
    parts = [json.dumps(v) for v in values]
    text = gaps[0] + "[" + gaps[1]
    starts = []
    for number, part in enumerate(parts):
        if number:
            text += gaps[2 + number] + "," + gaps[7 + number % 5]
        starts.append(text.count("\n") + 1)
        text += part
    text += gaps[-1] + "]" + gaps[2]
    assert landing._json_documents(text) == list(zip(starts, values, strict=True))


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(["[", "]", "{", "}", ",", ":", '"a"', "1", "null", " ", "\n", "x"]),
        max_size=12,
    ).map("".join)
)
def test_text_json_refuses_is_refused_at_the_same_place(text: str) -> None:
    try:
        expected: object = json.loads(text)
    except json.JSONDecodeError as error:
        expected = ("refused", error.msg, error.lineno, error.colno)
    try:
        documents = landing._json_documents(text)
    except json.JSONDecodeError as error:
        assert expected == ("refused", error.msg, error.lineno, error.colno)
    else:
        read = [d for _, d in documents]
        assert read == (expected if isinstance(expected, list) else [expected])

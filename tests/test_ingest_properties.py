"""Property: the fast ways a downloads file loads give what the general way gives.

A typed Parquet file loads in place (straight into raw_downloads, checked there) and,
when its keys come in order, skips grouping them; any finding sends it through
staging. Whatever the rows, the outcome must be the one staging alone gives.
"""

from __future__ import annotations

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

"""One rule for whole counts, whatever the landing file's format (docs/data-contracts.md,
"Counts"): a count's value decides, so 5, "5" and 5.0 are five downloads (or days) in a
CSV cell, a JSON number or string and a Parquet integer, double or string alike; a
fraction, exponent notation, a negative or too large a count is a bad row named by its
file, line (a Parquet row's number) and reason."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollout.core.errors import BadInput
from rollout.phases.snoozes import read_requests
from tests.support.ingest import load

DAY = "2022-01-10"
HUGE = "99999999999999999999"

# (how the count is written in text formats, as a JSON value, in a Parquet double or
# None when a double cannot hold it, what loads or the reason its row is refused).
CASES: list[tuple[str, Any, float | None, int | str]] = [
    ("5", 5, None, 5),
    ("5.0", 5.0, 5.0, 5),
    ("5.00", "5.00", None, 5),
    ("5.5", 5.5, 5.5, "downloads '5.5' is not a whole number"),
    ("1e3", "1e3", None, "downloads '1e3' is in exponent notation: write the count in digits"),
    ("-5", -5, -5.0, "downloads -5 is negative"),
    ("-5.0", -5.0, None, "downloads -5 is negative"),
    (HUGE, int(HUGE), None, f"downloads {HUGE} is out of range (at most 9223372036854775807)"),
    ("five", "five", None, "downloads 'five' is not a whole number"),
]


def _json_value(written: str, value: Any) -> str:
    """The count as a JSON document writes it: a number as written (5.00 and 1e3 as
    numbers, not strings, where the case says so)."""
    if isinstance(value, str) and value == written and written in ("5.00", "1e3"):
        return written  # json.dumps would write 1000.0 for 1e3
    return json.dumps(value)


def _write(path: Path, fmt: str, written: str, value: Any, double: float | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        path.write_text(f"package,day,downloads\nvue,{DAY},1\nreact,{DAY},{written}\n")
    elif fmt == "jsonl":
        count = _json_value(written, value)
        path.write_text(
            f'{{"package": "vue", "downloads": [{{"day": "{DAY}", "downloads": 1}}]}}\n'
            f'{{"package": "react", "downloads": [{{"day": "{DAY}", "downloads": {count}}}]}}\n'
        )
    elif fmt == "json":
        count = _json_value(written, value)
        path.write_text(
            f'[{{"package": "vue", "downloads": [{{"day": "{DAY}", "downloads": 1}}]}},\n'
            f'{{"package": "react", "downloads": [{{"day": "{DAY}", "downloads": {count}}}]}}]\n'
        )
    elif fmt == "parquet-string":
        pq.write_table(
            pa.table({"package": ["vue", "react"], "day": [DAY, DAY], "downloads": ["1", written]}),
            path,
        )
    else:  # parquet-double
        pq.write_table(
            pa.table(
                {
                    "package": ["vue", "react"],
                    "day": [DAY, DAY],
                    "downloads": pa.array([1.0, double], pa.float64()),
                }
            ),
            path,
        )
    return path


FORMATS = {
    "csv": "downloads-2022-01-10.csv",
    "json": "downloads-2022-01-10.json",
    "jsonl": "downloads-2022-01-10.jsonl",
    "parquet-string": "downloads-2022-01-10.parquet",
    "parquet-double": "downloads-2022-01-10.parquet",
}


# Every case in every format, but a Parquet double only where one holds the case (5.00,
# 1e3 and "five" are text; the double 5.0 covers their values).
EVERY_FORMAT = [
    pytest.param(fmt, *case, id=f"{case[0]}-{fmt}")
    for case in CASES
    for fmt in FORMATS
    if fmt != "parquet-double" or case[2] is not None
]


@pytest.mark.parametrize(("fmt", "written", "value", "double", "outcome"), EVERY_FORMAT)
def test_a_downloads_count_follows_one_rule_in_every_format(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    fmt: str,
    written: str,
    value: Any,
    double: float | None,
    outcome: int | str,
) -> None:
    path = _write(tmp_path / "downloads" / FORMATS[fmt], fmt, written, value, double)
    load(con, path, limit=0.9)
    loaded = con.execute("select package, downloads from raw_downloads order by package").fetchall()
    quarantined = con.execute("select path, line, reason from quarantine").fetchall()
    if isinstance(outcome, int):
        assert loaded == [("react", outcome), ("vue", 1)]
        assert quarantined == []
    else:
        assert loaded == [("vue", 1)]
        # Line 2 of a JSON array is the second object's; of a Parquet file, its row.
        line = 3 if fmt == "csv" else 2
        assert quarantined == [(str(path), line, outcome)]


@pytest.mark.parametrize(
    ("written", "outcome"),
    [
        ("7", 7),
        ("7.0", 7),
        (" 7.00 ", 7),
        ("7.5", "days must be a whole number, not '7.5'"),
        ("1e3", "days must be a whole number, not '1e3' (exponent notation"),
        ("-7", "days must be at least 1"),
        ("0.0", "days must be at least 1"),
        ("1" * 12, "days must be at most 9 digits, not 12"),
    ],
)
def test_a_snooze_request_counts_its_days_by_the_same_rule(
    tmp_path: Path, written: str, outcome: int | str
) -> None:
    path = tmp_path / "requests.csv"
    path.write_text(f"username,days\nann,3\neve,{written}\n")
    now = datetime(2023, 4, 1, 12)
    if isinstance(outcome, int):
        assert [request.days for request in read_requests(path, now)] == [3, outcome]
        return
    with pytest.raises(BadInput) as refused:
        read_requests(path, now)
    assert (refused.value.path, refused.value.line) == (path, 3)
    assert outcome in str(refused.value)

"""A dependency map that repeats a key, from landing file to dependents count.

Dependents of P are the *distinct* packages whose latest manifest lists P. A map that
names P twice (JSON allows it, JSON.parse keeps the last; a Parquet map can hold it)
is ambiguous (which range holds?), so ingest refuses that manifest: quarantined with
the reason, never loaded without its dependencies nor counted twice.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from rollout.core.plan import MetricsWindows
from rollout.metrics import compute_metrics
from rollout.warehouse.ingest import IngestReport, ingest

AS_OF = date(2022, 3, 14)
NOW = datetime(2022, 3, 15, 6, 0)


def dependents(con: duckdb.DuckDBPyConnection, report: IngestReport) -> dict[str, int]:
    assert report.rejected == [], [f.message for f in report.files]
    compute_metrics(con, AS_OF, MetricsWindows())
    return dict(
        con.execute(
            "select package, dependents from package_metrics_daily where as_of = $as_of",
            {"as_of": AS_OF},
        ).fetchall()
    )


def refused_with_reason(con: duckdb.DuckDBPyConnection, report: IngestReport) -> None:
    counts = dependents(con, report)
    assert report.rows_quarantined == 1
    assert "dup" not in counts, "a quarantined manifest must not load"
    assert counts == {"a": 0, "z": 0}
    assert con.execute("select line, reason from quarantine").fetchall() == [
        (3, "dependencies lists a package more than once")
    ]


def test_a_repeated_key_in_a_json_map_is_refused(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "manifests.jsonl"
    lines = [
        json.dumps({"name": "a", "version": "1.0.0", "maintainers": ["x"]}),
        json.dumps({"name": "z", "version": "1.0.0", "maintainers": ["x"]}),
        # json.dumps cannot repeat a key: the line is written as text.
        '{"name": "dup", "version": "1.0.0", '
        '"dependencies": {"a": "^1.0.0", "z": "^1.0.0", "a": "^2.0.0"}, "maintainers": ["x"]}',
    ]
    path.write_text("\n".join(lines) + "\n")
    report = ingest(con, [path], quarantine_limit=0.5, now=NOW)
    refused_with_reason(con, report)


def test_a_repeated_key_in_a_parquet_map_is_refused(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "manifests.parquet"
    table = pa.table(
        {
            "name": ["a", "z", "dup"],
            "version": ["1.0.0"] * 3,
            "dependencies": pa.array(
                [None, None, [("a", "^1.0.0"), ("z", "^1.0.0"), ("a", "^2.0.0")]],
                pa.map_(pa.string(), pa.string()),
            ),
            "maintainers": [["x"]] * 3,
        }
    )
    pq.write_table(table, path)
    report = ingest(con, [path], quarantine_limit=0.5, now=NOW)
    refused_with_reason(con, report)


def test_distinct_keys_count_once_each_in_both_formats(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The control: without a repeat, JSON lines and Parquet give the same counts."""
    older = tmp_path / "manifests-1.jsonl"
    older.write_text(
        json.dumps(
            {"name": "dup", "version": "1.0.0", "dependencies": {"z": "1"}, "maintainers": ["x"]}
        )
        + "\n"
    )
    newer = tmp_path / "manifests-2.parquet"
    table = pa.table(
        {
            "name": ["a", "z", "dup", "other"],
            "version": ["2.0.0"] * 4,
            "dependencies": pa.array(
                [None, [], [("a", "^1.0.0"), ("z", "^1.0.0")], [("a", "1")]],
                pa.map_(pa.string(), pa.string()),
            ),
            "maintainers": [["x"]] * 4,
        }
    )
    pq.write_table(table, newer)
    report = ingest(con, [older, newer], quarantine_limit=0.0, now=NOW)
    assert dependents(con, report) == {"a": 2, "z": 1, "dup": 0, "other": 0}

"""Load landing files into the warehouse: validated, quarantined, exactly once.

Each file is one transaction: it is staged, checked by ``sql/raw/check_<kind>.sql``,
and then either loaded (good rows in, bad rows to ``quarantine``) or refused whole
when its bad share exceeds the limit. A file already loaded (same SHA-256) is
skipped, so re-running an ingest changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa

from rollout import landing, warehouse
from rollout.errors import BadInput, FileRejected, RowProblem
from rollout.landing import LandingFile
from rollout.names import PACKAGE_NAME_PATTERN

Status = Literal["loaded", "skipped", "rejected"]
Progress = Callable[[LandingFile, int, int], None]


@dataclass
class FileResult:
    path: Path
    kind: str
    status: Status
    rows_read: int = 0
    rows_loaded: int = 0
    rows_duplicate: int = 0
    rows_quarantined: int = 0
    message: str = ""
    file_id: int | None = None


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)

    def _count(self, status: Status) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def loaded(self) -> int:
        return self._count("loaded")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def rejected(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "rejected"]

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _check_parameters(
    file: LandingFile, con: duckdb.DuckDBPyConnection, now: datetime
) -> dict[str, object]:
    if file.kind == "downloads":
        bounds = warehouse.one(con, "select min(day), max(day) from incoming")
        lowest, highest = bounds if bounds else (None, None)
        lowest, highest = lowest or date.min, highest or date.min
        # Zone maps answer this without reading data; usually no loaded day overlaps.
        overlaps = warehouse.scalar(
            con,
            "select exists (select 1 from raw_downloads where day between $low and $high)",
            {"low": lowest, "high": highest},
        )
        return {
            "name_pattern": PACKAGE_NAME_PATTERN,
            "today": now.date(),
            "min_day": lowest,
            "max_day": highest,
            "overlaps": bool(overlaps),
        }
    if file.kind == "manifests":
        return {"name_pattern": PACKAGE_NAME_PATTERN}
    return {"now": now}


def _problems(
    con: duckdb.DuckDBPyConnection, file: LandingFile, limit: int | None
) -> list[RowProblem]:
    query = "select ordinal, line, problem from flagged where problem is not null order by ordinal"
    if limit is not None:
        query += f" limit {int(limit)}"
    rows = con.execute(query).fetchall()
    lines = landing.record_lines(file, [r[0] for r in rows]) if file.lines_need_mapping else {}
    return [RowProblem(lines.get(ordinal, line), problem) for ordinal, line, problem in rows]


def _record_quarantine(
    con: duckdb.DuckDBPyConnection,
    file: LandingFile,
    file_id: int,
    problems: list[RowProblem],
    now: datetime,
) -> None:
    records = con.execute(
        "select record from flagged where problem is not null order by ordinal"
    ).fetchall()
    table = pa.table(
        {
            "line": pa.array([p.line for p in problems], pa.int64()),
            "reason": pa.array([p.reason for p in problems], pa.string()),
            "record": pa.array([r[0] for r in records], pa.string()),
        }
    )
    con.register("quarantined_rows", table)
    try:
        con.execute(
            """
            insert into quarantine (file_id, path, kind, line, reason, record, quarantined_at)
            select $file_id, $path, $kind, line, reason, record, $now from quarantined_rows
            """,
            {"file_id": file_id, "path": str(file.path), "kind": file.kind, "now": now},
        )
    finally:
        con.unregister("quarantined_rows")


def _load(con: duckdb.DuckDBPyConnection, file: LandingFile, file_id: int) -> None:
    params = {"file_id": file_id}
    if file.kind == "manifests":
        warehouse.run(con, "raw/load_manifests", params)
        warehouse.run(con, "raw/load_dependencies", params)
    else:
        warehouse.run(con, f"raw/load_{file.kind}", params)


# Views first: they read the tables.
_STAGING = (
    "manifests_shaped",
    "incoming_dependencies",
    "incoming",
    "incoming_raw",
    "incoming_rows",
    "flagged",
)


def _drop_staging(con: duckdb.DuckDBPyConnection) -> None:
    # A staging name is a view or a table depending on the file's format.
    present = dict(
        con.execute(
            "select table_name, table_type from information_schema.tables "
            "where table_catalog = 'temp' and table_name in $names",
            {"names": list(_STAGING)},
        ).fetchall()
    )
    for name in _STAGING:
        if name in present:
            con.execute(f"drop {'view' if present[name] == 'VIEW' else 'table'} {name}")


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    file: LandingFile,
    *,
    quarantine_limit: float,
    now: datetime | None = None,
) -> FileResult:
    """Load one landing file; raises BadInput (nothing loaded) when it is refused."""
    now = now or _utc_now()
    digest = landing.sha256(file.path)
    earlier = warehouse.one(
        con, "select file_id, path from ingested_files where sha256 = $sha", {"sha": digest}
    )
    if earlier is not None:
        return FileResult(
            file.path,
            file.kind,
            "skipped",
            file_id=earlier[0],
            message=f"already loaded as file {earlier[0]} ({earlier[1]})",
        )

    # Staging and checks use temp tables outside the transaction: their rowids are
    # then the record order (inside one, DuckDB numbers uncommitted rows from 2**55).
    landing.STAGERS[file.kind](con, file)
    warehouse.run(con, f"raw/check_{file.kind}", _check_parameters(file, con, now))
    rows_read = warehouse.scalar(con, "select count(*) from incoming")
    counts = warehouse.one(
        con, "select count(problem), count(*) filter (where duplicate) from flagged"
    )
    rows_bad, rows_duplicate = counts if counts else (0, 0)
    if rows_read == 0:
        raise BadInput(file.path, None, "no rows: the file is empty")
    if rows_bad / rows_read > quarantine_limit:
        raise FileRejected(
            file.path,
            _problems(con, file, limit=5),
            f"{rows_bad} of {rows_read} {file.row_word}s are bad "
            f"({rows_bad / rows_read:.1%}, over the {quarantine_limit:.1%} limit); "
            "nothing was loaded",
        )
    problems = _problems(con, file, limit=None) if rows_bad else []
    rows_loaded = rows_read - rows_bad - rows_duplicate
    with warehouse.transaction(con):
        file_id = warehouse.scalar(con, "select nextval('ingested_file_ids')")
        _load(con, file, file_id)
        if problems:
            _record_quarantine(con, file, file_id, problems, now)
        con.execute(
            """
            insert into ingested_files values ($file_id, $kind, $path, $sha, $bytes, $read,
                $loaded, $duplicate, $quarantined, $now)
            """,
            {
                "file_id": file_id,
                "kind": file.kind,
                "path": str(file.path),
                "sha": digest,
                "bytes": file.path.stat().st_size,
                "read": rows_read,
                "loaded": rows_loaded,
                "duplicate": rows_duplicate,
                "quarantined": rows_bad,
                "now": now,
            },
        )
    _drop_staging(con)
    return FileResult(
        file.path,
        file.kind,
        "loaded",
        rows_read,
        rows_loaded,
        rows_duplicate,
        rows_bad,
        file_id=file_id,
    )


def ingest(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[Path],
    *,
    quarantine_limit: float,
    landing_root: Path | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Load every landing file under ``paths``; a refused file does not stop the others."""
    files = landing.discover(paths, landing_root)
    report = IngestReport()
    for index, file in enumerate(files):
        if progress:
            progress(file, index, len(files))
        try:
            report.files.append(ingest_file(con, file, quarantine_limit=quarantine_limit, now=now))
        except BadInput as error:
            _drop_staging(con)
            report.files.append(FileResult(file.path, file.kind, "rejected", message=str(error)))
    if progress and files:
        progress(files[-1], len(files), len(files))
    return report

"""Load landing files into the warehouse: validated, quarantined, exactly once.

Each file is one transaction: it is staged, checked by ``sql/raw/check_<kind>.sql``,
and then either loaded (good rows in, bad rows to ``quarantine``) or refused whole
when its bad share exceeds the limit. A file already loaded (same SHA-256) is
skipped, so re-running an ingest changes nothing.

Downloads in typed Parquet, the daily bulk, first try a faster way: loaded in place,
with no staging copy, and checked where they landed by the same SQL, in a transaction
that commits only if no row is bad or repeated (``_load_in_place``). Otherwise it is
rolled back and the file takes the staged way, which names the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa

from rollout import warehouse
from rollout.core.errors import BadInput, FileRejected, RowProblem
from rollout.core.names import PACKAGE_NAME_PATTERN
from rollout.warehouse import landing
from rollout.warehouse.landing import LandingFile

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


# Whether a downloads file's first rows come in key order: if not, the checks skip
# proving the whole file is (about 0.05 s of a 2M-row file, 10% of loading it).
_FIRST_ROWS_IN_ORDER = """
    select count(*) filter (
        where package > previous_package or (package = previous_package and day > previous_day)
    ) = count(*) - 1
    from (
        select package, day, lag(package) over () as previous_package,
            lag(day) over () as previous_day
        from (select package, day from incoming limit 1000)
    )
"""


def _check_parameters(
    file: LandingFile, con: duckdb.DuckDBPyConnection, now: datetime, file_id: int | None = None
) -> dict[str, object]:
    """``file_id``: the file's own, when its rows are in raw_downloads already (the
    in-place load) and must not count as loaded before."""
    if file.kind == "downloads":
        bounds = warehouse.one(con, "select min(day), max(day) from incoming")
        lowest, highest = bounds if bounds else (None, None)
        lowest, highest = lowest or date.min, highest or date.min
        # Zone maps answer this without reading data; usually no loaded day overlaps.
        overlaps = warehouse.scalar(
            con,
            "select exists (select 1 from raw_downloads where day between $low and $high "
            "and file_id is distinct from $file_id)",
            {"low": lowest, "high": highest, "file_id": file_id},
        )
        return {
            "name_pattern": PACKAGE_NAME_PATTERN,
            "today": now.date(),
            "min_day": lowest,
            "max_day": highest,
            "overlaps": bool(overlaps),
            "file_id": file_id,
            "may_be_in_order": bool(warehouse.scalar(con, _FIRST_ROWS_IN_ORDER)),
        }
    if file.kind == "manifests":
        return {"name_pattern": PACKAGE_NAME_PATTERN}
    if file.kind == "publishes":
        return {"now": now, "name_pattern": PACKAGE_NAME_PATTERN}
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


def _record_file(
    con: duckdb.DuckDBPyConnection,
    file: LandingFile,
    file_id: int,
    digest: str,
    counts: tuple[int, int, int, int],
    now: datetime,
) -> None:
    """The ``ingested_files`` row: what makes a second load of the file a no-op."""
    rows_read, rows_loaded, rows_duplicate, rows_quarantined = counts
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
            "quarantined": rows_quarantined,
            "now": now,
        },
    )


class _NotClean(Exception):
    """The in-place load met a row it cannot keep: rolled back, the file is staged."""


def _load_in_place(
    con: duckdb.DuckDBPyConnection, file: LandingFile, digest: str, now: datetime
) -> FileResult | None:
    """Load a typed Parquet downloads file with no copy: its rows go into raw_downloads
    and are checked there, by the same SQL as a staged file, in one transaction that
    commits only when no row is bad or repeated. Anything else (a NULL, a bad name, a
    repeat, an empty file) rolls it all back and returns None: the staged path then
    loads the file again and names the rows. Clean files are the daily case; this path
    was 11% of an npm-scale ingest."""
    try:
        with warehouse.transaction(con):
            file_id = int(warehouse.scalar(con, "select nextval('ingested_file_ids')"))
            try:
                warehouse.run(
                    con, "raw/load_downloads_in_place", {"path": str(file.path), "file_id": file_id}
                )
            except duckdb.Error as error:  # a NULL, a count beyond BIGINT, an unreadable file
                raise _NotClean from error
            # The checks read `incoming`; here it is the file's rows where they landed.
            # Their rowids number them (unique, if not the file's rows), as no row is
            # named unless something is wrong, and then the staged path names it.
            con.execute(
                f"""
                create or replace temp view incoming as
                select rowid as ordinal, rowid as line, package,
                    cast(null as varchar) as day_raw, day,
                    cast(null as varchar) as downloads_raw, downloads
                from raw_downloads
                where file_id = {file_id}
                """
            )
            warehouse.run(con, "raw/check_downloads", _check_parameters(file, con, now, file_id))
            counts = warehouse.one(
                con, "select (select count(*) from incoming), (select count(*) from flagged)"
            )
            rows_read, rows_flagged = counts if counts else (0, 0)
            if rows_read == 0 or rows_flagged:
                raise _NotClean
            _record_file(con, file, file_id, digest, (rows_read, rows_read, 0, 0), now)
    except _NotClean:
        _drop_staging(con)
        return None
    _drop_staging(con)
    return FileResult(file.path, file.kind, "loaded", rows_read, rows_read, file_id=file_id)


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
    digest: str | None = None,
) -> FileResult:
    """Load one landing file; raises BadInput (nothing loaded) when it is refused.
    ``digest``: the file's SHA-256 when the caller has it already."""
    now = now or _utc_now()
    landing.require_plain_path(file)
    digest = digest or landing.sha256(file.path)
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

    if landing.loads_in_place(file):
        loaded = _load_in_place(con, file, digest, now)
        if loaded is not None:
            return loaded

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
        counts = (rows_read, rows_loaded, rows_duplicate, rows_bad)
        _record_file(con, file, file_id, digest, counts, now)
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
    # The next file's checksum is read on a thread of its own (hashlib lets go of the
    # GIL) while DuckDB loads this one: a 20 MB file's is 17 ms, 4% of loading it.
    # One file ahead only: an error or Ctrl-C then waits for one checksum, not all,
    # and a file is hashed just before it is read.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hashing:

        def checksum(index: int) -> Future[str] | None:
            if index >= len(files):
                return None
            return hashing.submit(landing.sha256, files[index].path)

        upcoming = checksum(0)
        for index, file in enumerate(files):
            digest, upcoming = upcoming, checksum(index + 1)
            if progress:
                progress(file, index, len(files))
            try:
                report.files.append(
                    ingest_file(
                        con,
                        file,
                        quarantine_limit=quarantine_limit,
                        now=now,
                        digest=digest.result() if digest else None,
                    )
                )
            except BadInput as error:
                _drop_staging(con)
                report.files.append(
                    FileResult(file.path, file.kind, "rejected", message=str(error))
                )
    if progress and files:
        progress(files[-1], len(files), len(files))
    return report

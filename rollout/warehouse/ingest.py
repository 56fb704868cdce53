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

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa

from rollout import warehouse
from rollout.core.controls import visible
from rollout.core.counts import EXPONENT_PATTERN, WHOLE_COUNT_PATTERN
from rollout.core.errors import BadInput, FileRejected, RowProblem
from rollout.core.files import duckdb_path
from rollout.core.names import PACKAGE_NAME_PATTERN
from rollout.core.words import by_count, counted
from rollout.warehouse import landing
from rollout.warehouse.landing import Fingerprint, LandingFile

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
    # Why a file in a batch was refused (the error a file loaded alone raises).
    refusal: BadInput | None = field(default=None, repr=False, compare=False)


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    # What the warehouse's one-time repairs of an older rollout's rows removed, not told
    # before (``warehouse.unreported_repairs``): one sentence each, for the operator.
    repairs: list[str] = field(default_factory=list)

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

    @property
    def wholly_quarantined(self) -> list[FileResult]:
        """Files taken whose every row is bad, so nothing of them loaded: an events file
        (SendGrid's post is loaded whatever its share of bad events, each judged
        alone) whose delivery states are all lost unless someone looks."""
        return [
            f
            for f in self.files
            if f.status == "loaded" and f.rows_quarantined and not f.rows_loaded
        ]

    def quarantine_warnings(self) -> list[str]:
        """What the CLI and the flow say of this run's quarantined rows: each file
        nothing of which loaded, then where to see the rows (``rollout doctor``'s
        quarantine row names them for a week after)."""
        warnings = [
            f"{visible(f.path)}: every one of its {counted(f.rows_read, 'row')} is "
            "quarantined, nothing of it loaded"
            for f in self.wholly_quarantined
        ]
        if self.rows_quarantined:
            warnings.append(
                f"{counted(self.rows_quarantined, 'row')} quarantined: "
                "`rollout quarantine --days 1` lists them with their file, line and reason"
            )
        return warnings


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


# How far ahead of ours an event's timestamp may be before it is refused as "in the future".
EVENT_CLOCK_SKEW = timedelta(hours=1)


# The earliest time a landing row may hold: before any registry kept such data, so a
# typo, an epoch's default or a year 0 (which Python cannot even hold), not a fact.
EARLIEST = datetime(2000, 1, 1)


def _check_parameters(
    file: LandingFile,
    con: duckdb.DuckDBPyConnection,
    now: datetime,
    own_files: Sequence[int] = (),
) -> dict[str, object]:
    """``own_files``: the ids of the files being checked, when their rows are in
    raw_downloads already (the in-place load) and must not count as loaded before."""
    if file.kind == "downloads":
        bounds = warehouse.one(con, "select min(day), max(day) from incoming")
        lowest, highest = bounds if bounds else (None, None)
        lowest, highest = lowest or date.min, highest or date.min
        # Zone maps answer this without reading data; usually no loaded day overlaps.
        overlaps = warehouse.scalar(
            con,
            "select exists (select 1 from raw_downloads where day between $low and $high "
            "and not list_contains($own_files, file_id))",
            {"low": lowest, "high": highest, "own_files": list(own_files)},
        )
        return {
            "name_pattern": PACKAGE_NAME_PATTERN,
            "whole_pattern": WHOLE_COUNT_PATTERN,
            "exponent_pattern": EXPONENT_PATTERN,
            "today": now.date(),
            "earliest": EARLIEST.date(),
            "min_day": lowest,
            "max_day": highest,
            "overlaps": bool(overlaps),
            "own_files": list(own_files),
            "may_be_in_order": bool(warehouse.scalar(con, _FIRST_ROWS_IN_ORDER)),
        }
    if file.kind == "manifests":
        return {"name_pattern": PACKAGE_NAME_PATTERN}
    if file.kind == "publishes":
        return {"now": now, "earliest": EARLIEST, "name_pattern": PACKAGE_NAME_PATTERN}
    if file.kind == "events":
        # SendGrid's clock, not ours, stamps an event: a little ahead is not wrong.
        return {"latest": now + EVENT_CLOCK_SKEW, "earliest": EARLIEST}
    return {"now": now, "earliest": EARLIEST}


def _problems(
    con: duckdb.DuckDBPyConnection, file: LandingFile, limit: int | None
) -> list[RowProblem]:
    query = "select ordinal, line, problem from flagged where problem is not null order by ordinal"
    if limit is not None:
        query += f" limit {int(limit)}"
    rows = con.execute(query).fetchall()
    lines = landing.record_lines(file, [r[0] for r in rows]) if file.lines_need_mapping else {}
    return [RowProblem(lines.get(ordinal, line), problem) for ordinal, line, problem in rows]


def _shown(problems: list[RowProblem]) -> list[RowProblem]:
    """A bad row's reason quotes its value, which may be a field of 500 KB: a refusal
    (one line on a terminal) shows the start of each; the quarantine keeps them whole."""
    return [RowProblem(p.line, landing.shorten(p.reason)) for p in problems]


def _record_quarantine(
    con: duckdb.DuckDBPyConnection,
    file: LandingFile,
    file_id: int,
    problems: list[RowProblem],
    records: list[tuple[str]],
    now: datetime,
) -> None:
    """The file's bad rows, each with its line, reason and record as sent."""
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


# A file recorded as loaded: the file, its id, its fingerprint, and its counts (read,
# loaded, duplicate, quarantined).
Recorded = tuple[LandingFile, int, Fingerprint, tuple[int, int, int, int]]


def _record_files(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[Recorded],
    now: datetime,
    *,
    check_unchanged: bool = True,
) -> None:
    """The ``ingested_files`` rows, one insert for a batch: what makes a second load of
    a file a no-op. Inside the load's transaction, after its rows were read: a file no
    longer the one fingerprinted is ``BadInput`` (``check_unchanged``; a caller that
    read the files into a table checks them itself), and the transaction rolls back."""
    columns: dict[str, list[object]] = {
        "file_id": [], "kind": [], "path": [], "sha256": [], "bytes": [],
        "rows_read": [], "rows_loaded": [], "rows_duplicate": [], "rows_quarantined": [],
    }  # fmt: skip
    for file, file_id, digest, counts in files:
        if check_unchanged:
            landing.require_unchanged(file.path, digest)
        for name, value in zip(
            columns,
            (file_id, file.kind, str(file.path), digest.sha256, digest.size, *counts),
            strict=True,
        ):
            columns[name].append(value)
    con.register("recorded_files", pa.table(columns))
    try:
        con.execute(
            "insert into ingested_files by name select *, $now as loaded_at from recorded_files",
            {"now": now},
        )
    finally:
        con.unregister("recorded_files")


class _NotClean(Exception):
    """The in-place load met a row it cannot keep: rolled back, the file is staged."""


def _load_in_place(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[tuple[LandingFile, Fingerprint]],
    now: datetime,
) -> list[FileResult] | None:
    """Load downloads files, each with its fingerprint, straight into raw_downloads and
    check them there, by the same SQL as a staged file, in one transaction that commits
    only when no row is bad or repeated (within a file, across the files, or against
    what was loaded before). Anything else (a NULL, a bad name, a repeat, an empty,
    unreadable or changed file) rolls it all back and returns None: the caller then
    loads the files apart, and the staged path names the rows (or the change).

    A typed Parquet file goes in with no copy at all (the daily case at npm scale: this
    was 11% of its ingest); another format is staged first and its typed rows go in,
    which sees every problem the staged path would, as no row with a NULL gets in and
    a row's other faults show in its typed values. Several small files (a backfill)
    share one check and one commit."""
    try:
        with warehouse.transaction(con):
            ids: list[int] = []
            for file, _ in files:
                file_id = int(warehouse.scalar(con, "select nextval('ingested_file_ids')"))
                try:
                    if landing.loads_in_place(file):
                        warehouse.run(
                            con,
                            "raw/load_downloads_in_place",
                            {"path": duckdb_path(file.path), "file_id": file_id},
                        )
                    else:
                        landing.stage(con, file)
                        warehouse.run(
                            con, "raw/load_downloads_staged_in_place", {"file_id": file_id}
                        )
                        _drop_staging(con)
                # A NULL, a count beyond BIGINT, an unreadable or malformed file.
                except (duckdb.Error, BadInput) as error:
                    raise _NotClean from error
                ids.append(file_id)
            # The checks read `incoming`; here it is the files' rows where they landed.
            # Their rowids number them (unique, if not the files' rows), as no row is
            # named unless something is wrong, and then the staged path names it.
            own = ", ".join(str(i) for i in ids)
            con.execute(
                f"""
                create or replace temp view incoming as
                select rowid as ordinal, rowid as line, package,
                    cast(null as varchar) as package_raw, cast(null as varchar) as day_raw, day,
                    cast(null as varchar) as downloads_raw, downloads
                from raw_downloads
                where file_id in ({own})
                """
            )
            warehouse.run(con, "raw/check_downloads", _check_parameters(files[0][0], con, now, ids))
            if warehouse.scalar(con, "select count(*) from flagged"):
                raise _NotClean
            read = dict(
                con.execute(
                    f"select file_id, count(*) from raw_downloads where file_id in ({own}) "
                    "group by file_id"
                ).fetchall()
            )
            if len(read) < len(ids):
                raise _NotClean  # an empty file: the staged path refuses it
            recorded: list[Recorded] = [
                (file, file_id, digest, (read[file_id], read[file_id], 0, 0))
                for (file, digest), file_id in zip(files, ids, strict=True)
            ]
            try:
                _record_files(con, recorded, now)
            except BadInput as changed:  # a file changed while it was read
                raise _NotClean from changed
            results = [
                FileResult(file.path, file.kind, "loaded", *counts, file_id=file_id)
                for file, file_id, _, counts in recorded
            ]
    except _NotClean:
        _drop_staging(con)
        return None
    _drop_staging(con)
    return results


# Views first: they read the tables.
_STAGING = (
    "manifests_shaped",
    "incoming_files",
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
    digest: Fingerprint | None = None,
) -> FileResult:
    """Load one landing file; raises BadInput (nothing loaded) when it is refused.
    ``digest``: the file's fingerprint when the caller has it already."""
    landing.require_plain_path(file)
    digest = digest or landing.fingerprint(file.path)
    return _skipped(con, file, digest) or _ingest_new(
        con, file, digest, quarantine_limit=quarantine_limit, now=now or _utc_now()
    )


def _skipped(
    con: duckdb.DuckDBPyConnection, file: LandingFile, digest: Fingerprint
) -> FileResult | None:
    """The result of a file loaded before (the same SHA-256): nothing to do."""
    earlier = warehouse.one(
        con, "select file_id, path from ingested_files where sha256 = $sha", {"sha": digest.sha256}
    )
    return None if earlier is None else _skipped_result(file, *earlier)


def _skipped_result(file: LandingFile, file_id: int, path: str) -> FileResult:
    return FileResult(
        file.path,
        file.kind,
        "skipped",
        file_id=file_id,
        message=f"already loaded as file {file_id} ({path})",
    )


def _ingest_new(
    con: duckdb.DuckDBPyConnection,
    file: LandingFile,
    digest: Fingerprint,
    *,
    quarantine_limit: float,
    now: datetime,
) -> FileResult:
    """``ingest_file`` for a file not loaded before, at a path DuckDB reads as it is."""
    if file.kind == "events":
        (result,) = _load_new_events(con, [(file, digest)], now)
        if result.status == "rejected":
            raise result.refusal or BadInput(file.path, None, result.message)
        return result
    if landing.loads_in_place(file):
        loaded = _load_in_place(con, [(file, digest)], now)
        if loaded is not None:
            return loaded[0]

    # Staging and checks use temp tables outside the transaction: their rowids are
    # then the record order (inside one, DuckDB numbers uncommitted rows from 2**55).
    landing.stage(con, file)
    warehouse.run(con, f"raw/check_{file.kind}", _check_parameters(file, con, now))
    rows_read = warehouse.scalar(con, "select count(*) from incoming")
    counts = warehouse.one(
        con, "select count(problem), count(*) filter (where duplicate) from flagged"
    )
    rows_bad, rows_duplicate = counts if counts else (0, 0)
    if rows_read == 0 and (refused := landing.no_rows(file)) is not None:
        raise refused
    if rows_read and rows_bad / rows_read > quarantine_limit:
        raise FileRejected(
            file.path,
            _shown(_problems(con, file, limit=5)),
            f"{rows_bad:,} of {counted(rows_read, file.row_word)} "
            f"{by_count(rows_bad, 'is', 'are')} bad "
            f"({rows_bad / rows_read:.1%}, over the {quarantine_limit:.1%} limit); "
            "nothing was loaded",
        )
    problems = _problems(con, file, limit=None) if rows_bad else []
    rows_loaded = rows_read - rows_bad - rows_duplicate
    with warehouse.transaction(con):
        file_id = warehouse.scalar(con, "select nextval('ingested_file_ids')")
        _load(con, file, file_id)
        if problems:
            records = con.execute(
                "select record from flagged where problem is not null order by ordinal"
            ).fetchall()
            _record_quarantine(con, file, file_id, problems, records, now)
        counts = (rows_read, rows_loaded, rows_duplicate, rows_bad)
        _record_files(con, [(file, file_id, digest, counts)], now)
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


# --- SendGrid delivery events -------------------------------------------------------------


def _refused(file: LandingFile, error: BadInput) -> FileResult:
    return FileResult(file.path, file.kind, "rejected", message=str(error), refusal=error)


def _event_problems(
    con: duckdb.DuckDBPyConnection, file: LandingFile, index: int
) -> list[RowProblem]:
    """The bad events of the batch's ``index``-th file, by position (a JSON-lines
    file's by physical line)."""
    rows = con.execute(
        "select line, problem from flagged where file_index = $index order by ordinal",
        {"index": index},
    ).fetchall()
    lines = landing.record_lines(file, [r[0] for r in rows]) if file.format == "jsonl" else {}
    return [RowProblem(lines.get(line, line), problem) for line, problem in rows]


def _load_events(
    con: duckdb.DuckDBPyConnection,
    batch: Sequence[tuple[LandingFile, Fingerprint]],
    now: datetime,
) -> list[FileResult]:
    """Load events files of one format, each with its digest, as one: one read, one
    check, one transaction. Each file is still judged alone (refused when empty,
    nothing of it loaded) and gets its own ``ingested_files`` row. Its bad events are
    quarantined and the others load whatever their share, ROLLOUT_QUARANTINE_LIMIT
    notwithstanding: each event stands alone, a post is SendGrid's batch of a handful
    (one event from another sender on the account was over 1%), and a file refused for
    it was refused again on every run, its good events never loaded, after the
    receiver had answered 200 for it (SendGrid posts it no more). An event some file
    brought before, or an earlier file of the batch, counts as a duplicate of the file
    that repeats it. A file the reader
    cannot parse splits the batch until it is alone, and is refused naming where."""
    earlier = {
        sha: (file_id, path)
        for sha, file_id, path in con.execute(
            "select sha256, file_id, path from ingested_files where sha256 in $digests",
            {"digests": [digest.sha256 for _, digest in batch]},
        ).fetchall()
    }
    new = [(file, digest) for file, digest in batch if digest.sha256 not in earlier]
    loaded = iter(_load_new_events(con, new, now) if new else [])
    return [
        _skipped_result(file, *earlier[digest.sha256]) if digest.sha256 in earlier else next(loaded)
        for file, digest in batch
    ]


def _load_new_events(
    con: duckdb.DuckDBPyConnection,
    batch: Sequence[tuple[LandingFile, Fingerprint]],
    now: datetime,
) -> list[FileResult]:
    """:func:`_load_events` for files not loaded before."""
    files = [file for file, _ in batch]
    try:
        landing.stage_events(con, files)
    except BadInput as error:
        _drop_staging(con)
        if len(batch) == 1:
            return [_refused(files[0], error)]
        half = len(batch) // 2
        return _load_new_events(con, batch[:half], now) + _load_new_events(con, batch[half:], now)
    warehouse.run(con, "raw/check_events", _check_parameters(files[0], con, now))
    read = dict(con.execute("select file_index, count(*) from incoming group by all").fetchall())
    bad = dict(con.execute("select file_index, count(*) from flagged group by all").fetchall())
    results: list[FileResult | None] = [None] * len(batch)
    accepted: list[int] = []
    for index, file in enumerate(files):
        rows, rows_bad = read.get(index, 0), bad.get(index, 0)
        try:
            # Staged into a table: read whole, so checked once, here.
            landing.require_unchanged(file.path, batch[index][1])
        except BadInput as changed:
            results[index] = _refused(file, changed)
            continue
        if rows == 0:
            results[index] = _refused(
                file, BadInput(file.path, None, "no events: the file is empty")
            )
        else:
            accepted.append(index)
    if accepted:
        with warehouse.transaction(con):
            numbered = con.execute(
                "select nextval('ingested_file_ids') from range($n)", {"n": len(accepted)}
            ).fetchall()
            ids = {index: int(row[0]) for index, row in zip(accepted, numbered, strict=True)}
            con.register(
                "accepted_files",
                pa.table(
                    {
                        "file_index": pa.array(list(ids), pa.int64()),
                        "file_id": pa.array(list(ids.values()), pa.int64()),
                    }
                ),
            )
            try:
                warehouse.run(con, "raw/load_events", {})
                loaded = dict(
                    con.execute(
                        "select file_id, count(*) from raw_events "
                        "where file_id in (select file_id from accepted_files) group by all"
                    ).fetchall()
                )
            finally:
                con.unregister("accepted_files")
            recorded: list[Recorded] = []
            for index in accepted:
                file, digest = batch[index]
                file_id, rows, rows_bad = ids[index], read[index], bad.get(index, 0)
                if rows_bad:
                    problems = _event_problems(con, file, index)
                    records = con.execute(
                        "select record from flagged where file_index = $index order by ordinal",
                        {"index": index},
                    ).fetchall()
                    _record_quarantine(con, file, file_id, problems, records, now)
                rows_loaded = loaded.get(file_id, 0)
                counts = (rows, rows_loaded, rows - rows_bad - rows_loaded, rows_bad)
                recorded.append((file, file_id, digest, counts))
                results[index] = FileResult(
                    file.path, file.kind, "loaded", *counts, file_id=file_id
                )
            _record_files(con, recorded, now, check_unchanged=False)
            # The sends these events name, kept with them: `rollout doctor` reads the
            # duplicate sends from a small table, not from every event loaded.
            warehouse.keep_sends(con, min(ids.values()), now)
    _drop_staging(con)
    return [r for r in results if r is not None]


# Small downloads files (a backfill: months of daily files) load in place as a batch:
# one by one each costs about 70 ms, mostly the check's and the commit's fixed cost.
# Big files (npm's daily 2M rows, 14 MB of Parquet) still go one by one.
BATCH_BYTES = 8 << 20
# Events files (SendGrid's posts, up to a few MB each) load as one per this many bytes:
# read, checked and committed together, each still judged and recorded on its own.
EVENTS_BATCH_BYTES = 256 << 20


class _Ingest:
    """One ingest: the report, and the batch of in-place files waiting to load."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, quarantine_limit: float, now: datetime | None
    ) -> None:
        self.con, self.quarantine_limit, self.now = con, quarantine_limit, now
        self.report = IngestReport()
        self.batch: list[tuple[LandingFile, Fingerprint]] = []
        self.batch_digests: set[str] = set()  # a set: a day's thousands of events files
        self.batch_bytes = 0

    def refuse(self, path: Path, kind: str, error: BadInput) -> None:
        """Report a file refused before it could be read (unreadable, or no landing
        file at all), after the files before it, as any refused file: on its own."""
        self.flush()
        self.report.files.append(
            FileResult(path, kind, "rejected", message=str(error), refusal=error)
        )

    def one(self, file: LandingFile, digest: Fingerprint) -> None:
        """Load ``file``, not loaded before, on its own."""
        try:
            landing.require_plain_path(file)
            result = _ingest_new(
                self.con,
                file,
                digest,
                quarantine_limit=self.quarantine_limit,
                now=self.now or _utc_now(),
            )
        except BadInput as error:
            _drop_staging(self.con)
            result = FileResult(file.path, file.kind, "rejected", message=str(error))
        self.report.files.append(result)

    def add(self, file: LandingFile, digest: Fingerprint) -> None:
        """Load ``file`` now, or hold it for the batch when it is a small downloads file
        or an events file. Either way the files before it are loaded first, so the
        report keeps their order and a copy of an earlier file is a skip."""
        if digest.sha256 in self.batch_digests:
            self.flush()
        # An events batch asks which of its files were loaded before in one query.
        skipped = None if file.kind == "events" else _skipped(self.con, file, digest)
        if skipped is not None:
            self.flush()
            self.report.files.append(skipped)
            return
        size = digest.size
        limit = EVENTS_BATCH_BYTES if file.kind == "events" else BATCH_BYTES
        if file.kind not in ("downloads", "events") or size > limit or not _plain(file):
            self.flush()
            self.one(file, digest)
            return
        if self.batch and _batch_key(self.batch[0][0]) != _batch_key(file):
            self.flush()
        if self.batch_bytes + size > limit:
            self.flush()
        self.batch.append((file, digest))
        self.batch_digests.add(digest.sha256)
        self.batch_bytes += size

    def flush(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        self.batch_digests = set()
        if batch and batch[0][0].kind == "events":
            now = self.now or _utc_now()
            self.report.files.extend(_load_events(self.con, batch, now))
        else:
            self._load(batch)

    def _load(self, batch: list[tuple[LandingFile, Fingerprint]]) -> None:
        """All in one transaction; failing that, each half apart, down to single
        files, which take the staged path when they must: a few unclean files in a
        backfill cost a few more tries, not one each for the lot."""
        if len(batch) <= 1:
            for file, digest in batch:
                self.one(file, digest)
            return
        loaded = _load_in_place(self.con, batch, self.now or _utc_now())
        if loaded is not None:
            self.report.files.extend(loaded)
            return
        half = len(batch) // 2
        self._load(batch[:half])
        self._load(batch[half:])


def _batch_key(file: LandingFile) -> tuple[str, str | None]:
    """Files load together when this is the same: downloads of any format (each is
    staged on its own), events of one format (they are read as one)."""
    return file.kind, file.format if file.kind == "events" else None


def _plain(file: LandingFile) -> bool:
    """A path DuckDB reads as it is (else ``one`` refuses it, saying why)."""
    try:
        landing.require_plain_path(file)
    except BadInput:
        return False
    return True


def ingest(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[Path],
    *,
    quarantine_limit: float,
    landing_root: Path | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Load every landing file under ``paths``; a refused file does not stop the others.
    The report lists the files in the order they were found, then the files that are
    no landing file (a stray notes.csv, a format the kind does not take), refused."""
    files, strays = landing.survey(paths, landing_root)
    run = _Ingest(con, quarantine_limit, now)
    # The next file's checksum is read on a thread of its own (hashlib lets go of the
    # GIL) while DuckDB loads this one: a 20 MB file's is 17 ms, 4% of loading it.
    # One file ahead only: an error or Ctrl-C then waits for one checksum, not all,
    # and a file is hashed just before it is read.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hashing:

        def checksum(index: int) -> Future[Fingerprint] | None:
            if index >= len(files):
                return None
            return hashing.submit(landing.fingerprint, files[index].path)

        upcoming = checksum(0)
        for index, file in enumerate(files):
            digest, upcoming = upcoming, checksum(index + 1)
            if progress:
                progress(file, index, len(files))
            assert digest is not None  # one for each file
            try:
                sha = digest.result()
            except BadInput as unreadable:  # no permission, an I/O error, a change
                run.refuse(file.path, file.kind, unreadable)
                continue
            run.add(file, sha)
        run.flush()
    for stray in strays:
        run.refuse(stray.path, stray.kind, stray.refusal)
    if progress and files:
        progress(files[-1], len(files), len(files))
    run.report.repairs = warehouse.unreported_repairs(con)
    return run.report

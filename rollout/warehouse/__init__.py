"""The DuckDB warehouse: one file an analyst can open, rebuilt from landing files and
a registry extract. SQL lives in ``sql/``; this module runs it with named parameters."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from rollout.core.controls import visible
from rollout.core.errors import EXIT_BAD_INPUT, BadInput, RolloutError
from rollout.core.files import (
    close_to_others,
    duckdb_path,
    make_folder,
    private_folder_beside,
    written_in_place,
)
from rollout.core.resources import resource_dir
from rollout.core.stopping import interrupting_on_stop
from rollout.core.words import counted

# The checkout's sql/ (editable install), or the copy inside the installed wheel.
SQL_DIR = resource_dir("sql")

# Bumped whenever a table's shape changes: the warehouse has no migrations, it is
# rebuilt from landing files, and a file of another version is refused clearly.
SCHEMA_VERSION = 3

# What to do with a warehouse this rollout cannot use (not a DuckDB file, another
# schema version), and what it costs: every message that says to rebuild it says this.
# The landing files and the registry come back whole; the history of past days is the
# warehouse's own (metrics and cohort builds append a day's snapshot each run), and a
# day computed again reads the landing files and the registry as they are then.
REBUILD_ADVICE = (
    "move it aside (it keeps the history it holds) and run `rollout ingest`: the new "
    "warehouse re-reads every landing file still under the landing folder "
    "($ROLLOUT_HOME/landing) and copies the registry again; lost are the rows of "
    "landing files no longer there, and each past day's metrics and cohort snapshots "
    "(package_metrics_daily, metrics_runs, cohort_package_snapshots, "
    "cohort_account_snapshots, cohort_builds): `rollout metrics --as-of DAY` and "
    "`rollout cohorts build --as-of DAY` compute a day again, from the landing files and "
    "the registry as they are now (docs/runbook-operator.md, section 12)"
)

# Views over the raw tables, in dependency order.
STAGING_VIEWS = (
    "stg_downloads",
    "stg_logins",
    "stg_publishes",
    "stg_manifests",
    "stg_dependencies",
    "stg_dependency_edges",
)

# Until the first registry extract, views and summaries still need these to exist.
_REGISTRY_PLACEHOLDERS = {
    "accounts": "id bigint, username varchar, email varchar, email_verified boolean, "
    "created_at timestamp, last_login_at timestamp, elv_enrolled_at timestamp, "
    "tfa_required_at timestamp",
    "tfa_factors": "id bigint, account_id bigint, kind varchar, created_at timestamp, "
    "removed_at timestamp",
}


class WarehouseBusy(RolloutError):
    """The warehouse is open in another process (DuckDB allows one writer, or readers,
    not both). ``holder``: that process's id, when DuckDB names it."""

    def __init__(self, path: Path, holder: str | None, waited: str = "") -> None:
        self.path = path
        self.holder = holder
        self.who = f"process {holder}" if holder else "another process"
        waiting = f", waited for {waited}" if waited else ""
        super().__init__(
            f"{path}: the warehouse is open in {self.who} (a notebook, a duckdb shell, "
            f"another rollout run?){waiting}; close it or wait, then run again"
        )

    def after_waiting(self, waited: str) -> WarehouseBusy:
        """The same refusal, saying how long it was waited for (``"10 min"``)."""
        return WarehouseBusy(self.path, self.holder, waited)


def sql_text(name: str) -> str:
    """The text of ``sql/<name>.sql`` (``name`` like ``raw/landing``)."""
    return (SQL_DIR / f"{name}.sql").read_text()


def connect(
    path: Path | str,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    create: bool = True,
) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse at ``path``, made there (and its folder) if it is
    missing, unless ``read_only`` or not ``create``: then a missing one is an error."""
    path = Path(path)
    if (read_only or not create) and not path.exists():
        raise RolloutError(
            f"{visible(path)}: no warehouse yet: run `rollout ingest` first, or check "
            "ROLLOUT_HOME (or ROLLOUT_WAREHOUSE)"
        ).with_exit(EXIT_BAD_INPUT)  # the setting names a place with none, as a typo does
    _require_duckdb_file(path)
    if not read_only:
        make_folder(path.parent)
    # Never fetch an extension: DuckDB would download one over the network to read a
    # file of another kind (a SQLite registry named as the warehouse). What rollout
    # uses (Parquet, JSON, ICU) is built in.
    config: dict[str, Any] = {"autoinstall_known_extensions": False}
    if memory_limit:
        config["memory_limit"] = memory_limit
    made = not read_only and not path.exists()
    try:
        con = duckdb.connect(duckdb_path(path), read_only=read_only, config=config)
    except duckdb.IOException as error:
        if "lock" not in str(error).lower():
            # Not a DuckDB file, unreadable, a newer format: a message, not a traceback.
            raise RolloutError(
                f"{path}: cannot open the warehouse: {error}; if ROLLOUT_WAREHOUSE (or "
                f"ROLLOUT_HOME) names the warehouse, {REBUILD_ADVICE}"
            ) from None
        # DuckDB allows one writer, or readers, not both: say so, not a traceback.
        holder = re.search(r"\(PID (\d+)\)", str(error))
        raise WarehouseBusy(path, holder.group(1) if holder else None) from None
    if made and path.is_file():
        # DuckDB makes the file with the umask's permissions: it holds who has 2FA, so
        # it is closed to others as every file rollout makes (rollout.core.files).
        close_to_others(path)
    # Every time in the pipeline is UTC; never let the machine's zone leak in.
    con.execute("set TimeZone = 'UTC'")
    # DuckDB draws a progress bar on stdout for a query past two seconds, piped or not:
    # inside `--format json` or a CSV that goes to a file. rollout shows its own progress.
    con.execute("set enable_progress_bar = false")
    try:
        if read_only:
            _require_schema(con)
        else:
            ensure_schema(con)
    except BaseException:
        con.close()
        raise
    return con


def _require_duckdb_file(path: Path) -> None:
    """Refuse a folder or the SQLite registry where the warehouse should be
    (ROLLOUT_WAREHOUSE naming the wrong thing): DuckDB would read the registry through
    an extension (fetched over the network when it could), and the advice for a broken
    warehouse, to move derived data aside and rebuild it, would move a folder of landing
    files or the registry aside."""
    if path.is_dir():
        raise RolloutError(
            f"{visible(path)}: a folder, not a DuckDB warehouse file: check "
            "ROLLOUT_WAREHOUSE (or ROLLOUT_HOME)"
        ).with_exit(EXIT_BAD_INPUT)
    try:
        with path.open("rb") as file:
            header = file.read(16)
    except OSError:
        return  # made here, or DuckDB's own message
    if header.startswith(b"SQLite format 3"):
        raise RolloutError(
            f"{visible(path)}: a SQLite database (the registry?), not a DuckDB warehouse: "
            "check ROLLOUT_WAREHOUSE (or ROLLOUT_HOME)"
        ).with_exit(EXIT_BAD_INPUT)


@contextmanager
def open_warehouse(
    path: Path | str,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    create: bool = True,
) -> Iterator[duckdb.DuckDBPyConnection]:
    with held_open(
        connect(path, read_only=read_only, memory_limit=memory_limit, create=create)
    ) as con:
        yield con


@contextmanager
def held_open(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``con`` for the ``with`` block, closed on leaving; a stop meanwhile cuts a long
    statement short rather than wait for its end (interrupting_on_stop). Every
    warehouse connection a command uses (open_warehouse, Runtime.warehouse)."""
    try:
        with interrupting_on_stop(con.interrupt):
            yield con
    finally:
        con.close()


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The warehouse's schema version: 1 for one made before it was recorded, None for
    one with no tables yet."""
    tables = {
        row[0]
        for row in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main'"
        ).fetchall()
    }
    if "warehouse_meta" in tables:
        return scalar(con, "select schema_version from warehouse_meta")
    return 1 if tables else None


def _check_schema_version(con: duckdb.DuckDBPyConnection) -> None:
    found = schema_version(con)
    if found is None:
        con.execute("create table warehouse_meta (schema_version integer not null)")
        con.execute("insert into warehouse_meta values ($v)", {"v": SCHEMA_VERSION})
        # A new warehouse holds nothing an older rollout loaded: nothing to repair.
        _record_repairs(con, {name: Repaired() for name in REPAIRS}, reported=True)
        return
    _require_version(con, found)


def _require_version(con: duckdb.DuckDBPyConnection, found: int | None) -> None:
    if found != SCHEMA_VERSION:
        raise RolloutError(
            f"the warehouse {database_path(con)} has schema version {found}, this rollout "
            f"needs {SCHEMA_VERSION}: {REBUILD_ADVICE}"
        )


def made_by_this_sql(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether this rollout's SQL made the warehouse's tables and views (the fingerprint
    :func:`ensure_schema` keeps), not another version's."""
    kept = _schema_kept(con)
    return kept is not None and kept[0] == _schema_statements()[1]


def _require_schema(con: duckdb.DuckDBPyConnection) -> None:
    """What :func:`ensure_schema` makes sure of, for a read-only connection, which can
    make nothing: refuse a warehouse of another schema version, or one whose views
    another rollout's SQL made (the code upgraded, and no command has written the
    warehouse since). Read as they are, their queries failed on a column the old views
    lack (a traceback), or counted by the old rules. Its fingerprint only: the digest of
    the objects changes whenever a run makes a table, which a writer takes in its stride."""
    _require_version(con, schema_version(con))
    pending = repairs_pending(con)
    if pending:
        raise RolloutError(
            f"the warehouse {database_path(con)} was loaded by an older rollout and is "
            "not checked yet for rows that rollout loaded wrongly "
            f"({'; '.join(REPAIRS[name] for name in pending)}): run `rollout ingest` "
            "(any command that writes the warehouse checks it and repairs it in place), "
            "then this again"
        )
    if not made_by_this_sql(con):
        raise RolloutError(
            f"the warehouse {database_path(con)} was made by another version of rollout "
            "and has not been written since, so its views are not this version's: run "
            "`rollout ingest` (any command that writes the warehouse brings them up to "
            "date), then this again"
        )


def database_path(con: duckdb.DuckDBPyConnection) -> str | None:
    """The file ``con`` is the warehouse of (None: an in-memory one)."""
    return scalar(
        con, "select path from duckdb_databases() where database_name = current_database()"
    )


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Raw tables, an empty ``registry`` schema, and the staging views over them.

    Created again only when they may differ from this rollout's: the statements'
    fingerprint, and a digest of the tables and views they left, are kept in
    ``warehouse_schema``; running them all cost 0.05-0.2 s a connection (every command,
    and each of a test's many warehouses), checking costs a few milliseconds. Another
    rollout's SQL, or a view an analyst dropped or replaced, changes one or the other,
    and everything is created again."""
    _check_schema_version(con)
    statements, fingerprint = _schema_statements()
    kept = _schema_kept(con)
    if kept is None or kept[0] != fingerprint or kept[1] != _objects(con):
        _make_schema(con, statements, fingerprint)
    _repair(con)
    if sends_as_of(con) is None:
        # Made before the sends were kept: filled once from every event loaded.
        with transaction(con):
            keep_sends(con, 0, datetime.now(UTC).replace(tzinfo=None))


def _make_schema(
    con: duckdb.DuckDBPyConnection, statements: tuple[str, ...], fingerprint: str
) -> None:
    for statement in statements:
        con.execute(statement)
    con.execute(
        "create or replace table warehouse_schema (fingerprint varchar not null, "
        "objects varchar not null)"
    )
    con.execute(
        "insert into warehouse_schema values ($fingerprint, $objects)",
        {"fingerprint": fingerprint, "objects": _objects(con)},
    )


@functools.cache
def _schema_statements() -> tuple[tuple[str, ...], str]:
    """What :func:`ensure_schema` runs, in order, and its fingerprint."""
    statements = (
        sql_text("raw/landing"),
        sql_text("marts/history"),
        *(
            f"create table if not exists registry.{table} ({definition})"
            for table, definition in _REGISTRY_PLACEHOLDERS.items()
        ),
        *(sql_text(f"staging/{view}") for view in STAGING_VIEWS),
        sql_text("marts/analyst_views"),
    )
    digest = hashlib.sha256("\0".join(statements).encode()).hexdigest()
    return statements, digest


def _schema_kept(con: duckdb.DuckDBPyConnection) -> tuple[str, str] | None:
    try:
        row = con.execute("select fingerprint, objects from warehouse_schema").fetchone()
    except duckdb.CatalogException:  # made before the fingerprint was kept
        return None
    return (row[0], row[1]) if row else None


def _objects(con: duckdb.DuckDBPyConnection) -> str:
    """The warehouse's own tables and views (not temp) as they stand, definitions and
    all, as one digest: a view dropped or changed by hand changes it."""
    return str(
        scalar(
            con,
            """
            select md5(coalesce(string_agg(name || ':' || sql, chr(10) order by name), ''))
            from (
                select schema_name || '.' || table_name as name, sql from duckdb_tables()
                where not temporary and database_name = current_database()
                    and table_name not in ('warehouse_schema', 'warehouse_repairs')
                union all
                select schema_name || '.' || view_name, sql from duckdb_views()
                where not temporary and not internal and database_name = current_database()
            )
            """,
        )
    )


# --- the sends SendGrid's events name ------------------------------------------------


def keep_sends(con: duckdb.DuckDBPyConnection, from_file_id: int, now: datetime) -> None:
    """Merge the sends named by the events of the files numbered from ``from_file_id``
    into ``event_sends`` and ``duplicate_sends_kept`` (sql/raw/keep_sends.sql), and
    record the load in ``sends_kept``: what ``duplicate_sends`` and `rollout doctor`'s
    sends row read. Inside the caller's transaction: kept with the events or not at all.
    0 merges every event (a warehouse made before the sends were kept)."""
    run(con, "raw/stage_new_sends", {"from_file_id": from_file_id})
    con.execute(render("raw/keep_sends"))
    con.execute("delete from sends_kept")
    con.execute(
        "insert into sends_kept select max(file_id), $now from ingested_files "
        "where kind = 'events'",
        {"now": now},
    )


def sends_as_of(con: duckdb.DuckDBPyConnection) -> tuple[int | None, datetime] | None:
    """(the newest events file merged, when) of ``keep_sends``; None when the warehouse
    has never kept them (made by an older rollout, not written since)."""
    try:
        row = con.execute("select through_file_id, kept_at from sends_kept").fetchone()
    except duckdb.CatalogException:
        return None
    return (row[0], row[1]) if row else None


# --- repairs of what an older rollout loaded -------------------------------------------

# One-time repairs, in place, of rows an older rollout loaded that this one would not
# have: the warehouse keeps history no rebuild brings back (metrics and cohort builds
# of past days), and its landing files may be gone, so it is repaired, not refused.
# Each runs once, on the first writing connection of this rollout (`rollout ingest`
# after the upgrade), and is recorded in `warehouse_repairs` (a new warehouse records
# them all as done). What each name repairs, as the operator is told:
REPAIRS = {
    "logins_publishes_loaded_twice": "logins and publishes rows loaded twice, from a "
    "file and another holding them too (re-sent compressed or corrected, an export "
    "overlapping the last)",
}


@dataclass(frozen=True)
class Repaired:
    """What one repair removed: rows of each table, and the days they fell on."""

    rows: Mapping[str, int] = field(default_factory=dict)
    first_day: date | None = None
    last_day: date | None = None

    @property
    def removed(self) -> int:
        return sum(self.rows.values())


def _repairs_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        create table if not exists warehouse_repairs (
            name         varchar primary key,
            applied_at   timestamp not null,
            rows_removed bigint not null,
            detail       varchar not null,   -- rows removed by table, as json
            first_day    date,               -- the days of the rows removed
            last_day     date,
            reported     boolean not null    -- told the operator (rollout ingest)
        )
        """
    )


def _record_repairs(
    con: duckdb.DuckDBPyConnection, done: Mapping[str, Repaired], *, reported: bool
) -> None:
    _repairs_table(con)
    for name, repaired in done.items():
        con.execute(
            "insert into warehouse_repairs values "
            "($name, now(), $rows, $detail, $first, $last, $reported)",
            {
                "name": name,
                "rows": repaired.removed,
                "detail": json.dumps(dict(repaired.rows)),
                "first": repaired.first_day,
                "last": repaired.last_day,
                "reported": reported or not repaired.removed,
            },
        )


def repairs_pending(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The repairs this rollout knows that the warehouse has not had (read-only)."""
    try:
        done = {row[0] for row in con.execute("select name from warehouse_repairs").fetchall()}
    except duckdb.CatalogException:  # made by a rollout before repairs were recorded
        done = set()
    return [name for name in REPAIRS if name not in done]


def _repair(con: duckdb.DuckDBPyConnection) -> None:
    pending = repairs_pending(con)
    if not pending:
        return
    with transaction(con):  # all of it or none: a crash midway repairs it next time
        _record_repairs(con, {name: _REPAIR_RUNS[name](con) for name in pending}, reported=False)


def _remove_loaded_twice(con: duckdb.DuckDBPyConnection) -> Repaired:
    """Remove the logins and publishes rows the ingest's duplicate check would have
    skipped (sql/raw/repair_*_loaded_twice.sql), and count them as duplicates of their
    files in ``ingested_files``, as if loaded by this rollout."""
    rows: dict[str, int] = {}
    days: list[date] = []
    for kind in ("logins", "publishes"):
        run(con, f"raw/repair_{kind}_loaded_twice")
        found = one(
            con,
            "select count(*), min(occurred_at)::date, max(occurred_at)::date from loaded_twice",
        )
        assert found is not None
        if not found[0]:
            continue
        rows[kind] = found[0]
        days += [found[1], found[2]]
        con.execute(f"delete from raw_{kind} where rowid in (select row_id from loaded_twice)")
        con.execute(
            """
            update ingested_files set
                rows_loaded = rows_loaded - removed.n,
                rows_duplicate = rows_duplicate + removed.n
            from (select file_id, count(*) as n from loaded_twice group by file_id) as removed
            where ingested_files.file_id = removed.file_id
            """
        )
    con.execute("drop table if exists loaded_twice")
    return Repaired(rows, min(days, default=None), max(days, default=None))


_REPAIR_RUNS = {"logins_publishes_loaded_twice": _remove_loaded_twice}


def unreported_repairs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """What repairs removed that the operator has not been told yet, one sentence each,
    marked told: `rollout ingest` prints them."""
    _repairs_table(con)
    found = con.execute(
        "select name, detail, first_day, last_day from warehouse_repairs "
        "where not reported order by applied_at, name"
    ).fetchall()
    told = []
    for name, detail, first, last in found:
        removed = ", ".join(counted(n, f"{kind} row") for kind, n in json.loads(detail).items())
        days = f"{first}" if first == last else f"{first} to {last}"
        told.append(
            f"repaired the warehouse: removed {removed} an older rollout had "
            f"loaded twice ({REPAIRS[name]}), of {days}: the reports of those days "
            "counted them twice; write each again with `rollout report --as-of DAY`"
        )
    con.execute("update warehouse_repairs set reported = true where not reported")
    return told


_INCLUDE = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_LAYERS = ("staging", "intermediate", "marts")


def render(name: str) -> str:
    """The SQL of ``sql/<name>.sql`` with each ``{{ model }}`` replaced by that model's
    query (looked up in the staging, intermediate and marts layers), like dbt's ref."""

    def include(match: re.Match[str]) -> str:
        model = match.group(1)
        for layer in _LAYERS:
            if (SQL_DIR / layer / f"{model}.sql").exists():
                return render(f"{layer}/{model}")
        raise FileNotFoundError(f"sql model {model!r} (from {name}) not found in {_LAYERS}")

    return _INCLUDE.sub(include, sql_text(name))


def run(
    con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Run one single-statement SQL file with named ``$parameters``."""
    return con.execute(render(name), dict(params or {}))


# DuckDB's one compression for strings in new storage (DICT_FSST): a dictionary, then
# FSST over it. Names unique to a row (a package's, one row each) gain little from it.
STRING_COMPRESSION = "dict_fsst"


# The blocks of database_setting open in this process, per warehouse file and setting:
# how many, and the value the first of them found (guarded by _SETTINGS_GUARD).
_SETTINGS: dict[tuple[str, str], tuple[int, str]] = {}
_SETTINGS_GUARD = threading.Lock()


@contextmanager
def database_setting(
    con: duckdb.DuckDBPyConnection, name: str, change: Callable[[str], str]
) -> Iterator[None]:
    """DuckDB's setting ``name`` as ``change(what it was)`` while the block runs, put
    back after. Such a setting (``disabled_compression_methods``,
    ``preserve_insertion_order``) is the database's, not the connection's: every
    connection of this process to the file shares it (a thread's, a notebook's second
    cursor). So blocks overlapping on one file are counted: the first changes it, the
    last puts back what the first found (a block ending while another worked would have
    put the setting back under it, and the last one left the first's change for good).
    Read and set through a connection of its own: ``con`` may be inside a transaction a
    failed statement has aborted, which refuses every statement but a rollback (the
    caller then saw "Current transaction is aborted", not why it failed). The setting
    lives in the process, not the file: a process stopped inside leaves the file as it
    was. An in-memory database is counted per connection (its cursors cannot be told
    from another's)."""

    def setting(value: str | None = None) -> str:
        with con.cursor() as other:
            if value is not None:
                quoted = value.replace("'", "''")
                other.execute(f"set {name} = '{quoted}'")
            found = scalar(other, f"select current_setting('{name}')")
            return "" if found is None else str(found)

    path = database_path(con)
    key = (os.path.realpath(path) if path else f"memory:{id(con)}", name)
    with _SETTINGS_GUARD:
        blocks, kept = _SETTINGS.get(key, (0, ""))
        if blocks == 0:
            kept = setting()
            setting(change(kept))
        _SETTINGS[key] = (blocks + 1, kept)
    try:
        yield
    finally:
        with _SETTINGS_GUARD:
            blocks, kept = _SETTINGS.pop(key)
            if blocks > 1:
                _SETTINGS[key] = (blocks - 1, kept)
            else:
                setting(kept)


def strings_uncompressed(con: duckdb.DuckDBPyConnection) -> AbstractContextManager[None]:
    """Tables written within the block store their strings as they are, not through
    DICT_FSST. For the tables rollout.metrics and rollout.warehouse.manifests replace
    whole, one row a package (the latest manifests, the download windows, the
    dependents counts): at npm scale compressing their 4M names cost more CPU than
    the query that made them (1.5 s of the latest manifests' 3.9 s, 1.1 s of the
    windows' 1.7 s), in tables kept once, not a copy a day (package_metrics_daily is
    written as before). Only what DuckDB writes while the block runs is affected:
    rows left to a later checkpoint are compressed as ever. The setting is the
    database's (``database_setting``: blocks overlapping on one file are counted, and
    it is put back as the first found it)."""

    def with_strings_uncompressed(kept: str) -> str:
        methods = [m for m in kept.split(",") if m.strip()]
        if STRING_COMPRESSION not in (m.strip().lower() for m in methods):
            methods.append(STRING_COMPRESSION)
        return ",".join(methods)

    return database_setting(con, "disabled_compression_methods", with_strings_uncompressed)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All of it or none of it: a failure rolls back everything done inside."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


def one(
    con: duckdb.DuckDBPyConnection, query: str, params: Mapping[str, Any] | None = None
) -> tuple[Any, ...] | None:
    """The first row of a query, with the result fully consumed (see ``scalar``)."""
    rows = con.execute(query, dict(params or {})).fetchall()
    return rows[0] if rows else None


def scalar(
    con: duckdb.DuckDBPyConnection, query: str, params: Mapping[str, Any] | None = None
) -> Any:
    # fetchall, not fetchone: DuckDB 2.0 refuses other work on a connection while a
    # result is only partly fetched.
    rows = con.execute(query, dict(params or {})).fetchall()
    return rows[0][0] if rows else None


# --- a copy for analysts ---------------------------------------------------------------

# What a DuckDB file holds at bytes 8-11 (after its checksum): a file there that does
# not is not a warehouse copy, and `copy-warehouse --replace` leaves it alone.
_DUCKDB_MAGIC = b"DUCK"


def copy_warehouse(con: duckdb.DuckDBPyConnection, target: Path, *, replace: bool = False) -> Path:
    """Copy the warehouse ``con`` has open (read-only: DuckDB's shared lock keeps every
    writer out until the copy is made, so it is one committed state, whatever a run's
    log, the ``.wal`` beside the file, still holds) into a new DuckDB file at
    ``target`` (a folder: the warehouse's file name inside it), written beside it and
    moved into place whole. A file copied with ``cp`` while a run writes can be half of
    one checkpoint and half of another (DuckDB cannot open it), and without its ``.wal``
    it misses what the run committed. ``target`` there already is refused (exit 2),
    unless ``replace`` and it is a DuckDB file (replaced with its log, if a session
    on it left one) that no other process has open for writing (refused, exit 1,
    naming the process). Returns the file written."""
    source = Path(database_path(con) or "")
    if target.is_dir():
        target = target / source.name
    if target.exists() and target.resolve() == source.resolve():
        raise RolloutError(
            f"{visible(target)}: the warehouse itself: name another file for its copy"
        ).with_exit(EXIT_BAD_INPUT)
    if target.exists() and not replace:
        raise RolloutError(
            f"{visible(target)}: already exists: name another file, or give --replace to "
            "replace that copy"
        ).with_exit(EXIT_BAD_INPUT)
    if target.exists() and not _is_duckdb_file(target):
        raise RolloutError(
            f"{visible(target)}: not a DuckDB file, so not an earlier copy: --replace "
            "replaces only a warehouse copy; name another file"
        ).with_exit(EXIT_BAD_INPUT)
    _require_writable_beside(target)
    name = scalar(con, "select current_database()")
    with _not_written_elsewhere(target), written_in_place(target) as temporary:
        attached = duckdb_path(temporary).replace("'", "''")
        wal = Path(f"{temporary}.wal")
        try:
            con.execute(f"attach '{attached}' as rollout_copy (read_only false)")
            try:
                con.execute(f"copy from database {_identifier(name)} to rollout_copy")
            finally:
                # Detaching writes the copy out whole (a checkpoint): no log is left.
                con.execute("detach rollout_copy")
        except BaseException:
            wal.unlink(missing_ok=True)
            raise
        # The replaced copy's own log (a session on it killed before it wrote its
        # commits in: a notebook's kernel): left beside the new file, DuckDB refused
        # to open it ("WAL does not match database file"). It goes with its copy.
        Path(f"{target}.wal").unlink(missing_ok=True)
    return target


def _require_writable_beside(target: Path) -> None:
    """``BadInput`` (exit 2, naming ``target``) when no copy can be written there: a
    file where its folder should be, a folder this user cannot write to, a file system
    that makes no files (/proc). Tried as the copy is written, in a hidden folder beside
    it, made and removed: this said the hidden folder's name, as a failure (exit 1)."""
    try:
        with private_folder_beside(target):
            pass
    except OSError as error:
        if isinstance(error, FileExistsError | NotADirectoryError) and error.filename:
            where = Path(error.filename)
            while not where.exists() and where.parent != where:
                where = where.parent  # (NotADirectoryError names the folder not made)
            reason = f"{visible(where)} is a file, not a folder"
        else:
            # Not the hidden folder's name (mkdtemp's): a folder above is named if it failed.
            named = Path(error.filename) if error.filename else None
            reason = error.strerror or str(error)
            if named is not None and named in target.parents:
                reason = f"{visible(named)}: {reason}"
        raise BadInput(target, None, f"cannot write a copy there: {reason}") from None


@contextmanager
def _not_written_elsewhere(target: Path) -> Iterator[None]:
    """Refuse (exit 1, naming the process) to replace a copy another process has open
    for writing (an analyst's notebook, or this process: a kernel copying again with the
    old copy open): the file moved over it and its log taken away,
    that session went on writing into a file no longer there and lost what it wrote
    since its last checkpoint. Held open as a reader until the copy is in place, so no
    session starts writing the old one meanwhile. A reader of it keeps what it opened
    (the new file is another one) and writes no log: no refusal. Nothing there yet, or a
    file DuckDB cannot open otherwise: nothing to protect."""
    if not target.exists():
        yield
        return
    try:
        held = _open_reading(target)
    except duckdb.Error as error:
        said = str(error).lower()
        # This process has it open for writing: DuckDB opens a file once a process, and
        # a read-only opening beside a writing one is refused as "a different
        # configuration" (a notebook's kernel holding the old copy as it copies again).
        here = "different configuration" in said
        if "lock" not in said and not here:
            yield
            return
        holder = re.search(r"\(PID (\d+)\)", str(error))
        who = (
            "this process"
            if here
            else f"process {holder.group(1)}"
            if holder
            else "another process"
        )
        raise RolloutError(
            f"{visible(target)}: the copy is open in {who} for writing (a notebook, a "
            "duckdb shell?): replacing it would lose what that session wrote; close it "
            "there, then run again"
        ) from None
    try:
        yield
    finally:
        held.close()


def _open_reading(target: Path) -> duckdb.DuckDBPyConnection:
    """``target`` opened read-only, without installing an extension it names; with
    DuckDB's defaults when this process reads it so already (its opening is shared,
    and refused with another configuration): a reader, not a writer."""
    try:
        return duckdb.connect(
            duckdb_path(target), read_only=True, config={"autoinstall_known_extensions": False}
        )
    except duckdb.Error as error:
        if "different configuration" not in str(error).lower():
            raise
        return duckdb.connect(duckdb_path(target), read_only=True)


def _identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (a warehouse file named ``my "data".duckdb``)."""
    return '"' + name.replace('"', '""') + '"'


def _is_duckdb_file(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(12)[8:12] == _DUCKDB_MAGIC
    except OSError:
        return False

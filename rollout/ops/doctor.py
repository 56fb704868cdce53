"""Health checks for an operator (``rollout doctor``): one row per check, never a traceback.

Each check answers ``ok``, ``warn`` (works, but look at it) or ``fail`` (something the
pipeline needs is broken). They only read: no schema is created, no warehouse file
written, no email sent. The warehouse is opened read-only and only for a moment, and a
warehouse a run holds is a warning, not a wait: the doctor must never block a run.

The Prefect check talks to the server's REST API with httpx (nothing under ``rollout/``
imports prefect): the work pool, then its workers and their last heartbeats.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx

from rollout.core.clock import naive_utc
from rollout.core.config import prefect_api, url_shown
from rollout.core.controls import quoted, shell_word
from rollout.core.errors import BadInput, RolloutError
from rollout.core.files import duckdb_path
from rollout.core.words import counted

if TYPE_CHECKING:
    import duckdb

    from rollout.core.config import Settings
    from rollout.registry import Registry
    from rollout.runtime import Runtime

WORK_POOL = "rollout-process"
# The pool's queues (prefect.yaml): every deployment but notify-shard is on `default`,
# which only the worker of the ROLLOUT_HOME host polls (it polls every queue); workers
# on other machines poll `notify-shards` alone. A live worker of the pool is not enough:
# with only those, no daily, notify, report, preview, enforce or brown-out run starts.
HOME_QUEUE = "default"
SHARD_QUEUE = "notify-shards"
# Prefect's own rule for a ready work queue (server/models/work_queues.py,
# WORK_QUEUE_LAST_POLLED_TIMEOUT): a worker asked it for runs within 60 s.
QUEUE_POLLED_WITHIN = timedelta(seconds=60)
COLUMNS = ("check", "status", "detail")
# Seconds to wait for a database, SendGrid or Prefect before calling it unreachable:
# a health check that hangs is worse than one that says "no answer".
TIMEOUT = 10.0
# How long the registry checks wait for a SQLite registry's lock (a writer committing):
# the doctor answers in seconds, and says "locked" rather than wait as a command does.
REGISTRY_BUSY_SECONDS = 2.0
# Prefect's own rule for an online worker (server/schemas/responses.py): a heartbeat
# within 3 of its intervals, 30 s when the worker did not say.
HEARTBEAT_MULTIPLE = 3
DEFAULT_HEARTBEAT_SECONDS = 30
MAX_DETAIL = 300


class Status(StrEnum):
    ok = "ok"
    warn = "warn"
    fail = "fail"


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    detail: str

    def row(self) -> dict[str, str]:
        return {"check": self.check, "status": str(self.status), "detail": self.detail}


def any_failed(results: Sequence[CheckResult]) -> bool:
    return any(result.status is Status.fail for result in results)


def run_checks(
    runtime: Runtime,
    environ: Mapping[str, str],
    *,
    prefect_transport: httpx.BaseTransport | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[CheckResult]:
    """Every check, in the order an operator would fix them. The plan is read from its
    file by its check, not taken from ``runtime.plan``: one that does not load is a row."""
    settings = runtime.settings
    return [
        _guarded("registry", lambda: check_registry(runtime.registry)),
        _guarded("schema", lambda: check_schema(runtime.registry)),
        _guarded("warehouse", lambda: check_warehouse(settings.warehouse_path)),
        _guarded("quarantine", lambda: check_quarantine(settings.warehouse_path, now())),
        _guarded("sends", lambda: check_duplicate_sends(settings.warehouse_path, now())),
        _guarded("home", lambda: check_home(settings)),
        _guarded("landing", lambda: check_landing(settings.landing_dir)),
        _guarded("reports", lambda: check_reports(settings.reports_dir)),
        _guarded("leftovers", lambda: check_leftovers(settings, now())),
        _guarded("plan", lambda: check_plan(settings.plan_path)),
        _guarded(
            "sendgrid",
            lambda: check_sendgrid(settings, environ, prefect_transport=prefect_transport),
        ),
        _guarded("worker", lambda: check_worker(environ, transport=prefect_transport, now=now)),
    ]


def _guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    # One broken check must not hide the others: a surprise becomes its own fail row.
    try:
        return check()
    except Exception as error:
        return CheckResult(name, Status.fail, _short(f"{type(error).__name__}: {error}"))


def _short(text: str) -> str:
    text = " ".join(text.split())  # drivers' multi-line errors, on one line
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


# --- the registry -----------------------------------------------------------------------

# The checks take the Registry, as every library function does, but reach the database
# through a throwaway engine of their own on ``registry.url``: one that gives up after
# TIMEOUT, and that opens a registry at any schema (``registry.engine`` refuses one that
# is not this code's, which is the schema check's to report).


def _registry_engine(registry_url: str) -> Any:
    from rollout.registry.engine import is_sqlite, make_engine, normalize_url

    if is_sqlite(registry_url):
        # Only looked at: its journal mode left as it is, nothing written, a lock
        # waited for REGISTRY_BUSY_SECONDS at most.
        return make_engine(registry_url, query_only=True, busy_seconds=REGISTRY_BUSY_SECONDS)
    if "connect_timeout" in normalize_url(registry_url).query:
        # The URL's own, as every command connects with it: one no number fails here as
        # there (it was overridden, and the check passed while every command refused).
        engine = make_engine(registry_url)
    else:
        # libpq waits as long as the OS does for a host that drops packets.
        engine = make_engine(registry_url, connect_args={"connect_timeout": int(TIMEOUT)})
    from sqlalchemy import event

    # Connected, a statement still waits as long as a lock is held: a migration's
    # ACCESS EXCLUSIVE on alembic_version, say. Each transaction of the doctor's is
    # read-only and bounded, as SQLite's by its busy timeout.
    event.listen(engine, "begin", _bounded_transaction)
    return engine


def _bounded_transaction(connection: Any) -> None:
    connection.exec_driver_sql("set transaction read only")
    connection.exec_driver_sql(f"set local lock_timeout = {int(REGISTRY_BUSY_SECONDS * 1000)}")
    connection.exec_driver_sql(f"set local statement_timeout = {int(TIMEOUT * 1000)}")


# SQLSTATEs of PostgreSQL ending a statement of the doctor's own bounds.
LOCK_NOT_AVAILABLE = "55P03"


def _waited(error: BaseException) -> str | None:
    """What the registry row says when PostgreSQL ended a statement on the doctor's own
    bounds (lock_timeout, statement_timeout); None for any other error."""
    from rollout.registry.engine import RegistryStatementCancelled

    if isinstance(error, RegistryStatementCancelled):
        return (
            f"the server ended a statement ({error.reason}; the doctor bounds each at "
            f"{TIMEOUT:g} s): not checked; the registry is slow or busy, run again later"
        )
    orig = getattr(error, "orig", None)
    if getattr(orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        return (
            f"waited over {REGISTRY_BUSY_SECONDS:g} s for a lock another session holds on "
            "a registry table it reads (a schema migration, or a long transaction: see "
            "pg_locks): not checked; run again later"
        )
    return None


def _sqlite_file(registry_url: str) -> Path | None:
    """The file of a SQLite registry (None: PostgreSQL, or SQLite in memory)."""
    from rollout.registry.engine import is_sqlite, normalize_url

    if not is_sqlite(registry_url):
        return None
    database = normalize_url(registry_url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def _missing_sqlite_file(registry_url: str) -> Path | None:
    """The SQLite file the URL names when it does not exist: connecting would create it."""
    database = _sqlite_file(registry_url)
    return None if database is None or database.exists() else database


def check_registry(registry: Registry) -> CheckResult:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    registry_url = registry.url
    missing = _missing_sqlite_file(registry_url)
    if missing is not None:
        return CheckResult(
            "registry", Status.fail, f"no database at {missing}: run `rollout db upgrade`"
        )
    database = _sqlite_file(registry_url)
    unwritable = _unwritable(database) if database is not None else None
    if unwritable is not None:
        # `select 1` reads; every command that records anything (and its lock file,
        # and SQLite's journal, both beside the file) would fail on it.
        return CheckResult(
            "registry",
            Status.fail,
            f"{unwritable} is read-only for this user: no command can record anything "
            "in the registry (check its permissions and the file system)",
        )
    from rollout.registry.engine import (
        RegistryStatementCancelled,
        RegistryURLRefused,
        registry_url_shown,
    )

    engine = _registry_engine(registry_url)
    shown = registry_url_shown(engine.url)
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except (SQLAlchemyError, RegistryURLRefused, RegistryStatementCancelled) as error:
        # A statement cancelled is always one _waited words.
        waited = _waited(error)
        if waited is not None:
            return CheckResult("registry", Status.warn, _short(f"{shown}: {waited}"))
        reason = (
            error.reason
            if isinstance(error, RegistryURLRefused)
            else str(getattr(error, "orig", None) or error).strip()
        )
        return CheckResult("registry", Status.fail, _short(f"{shown}: cannot connect: {reason}"))
    finally:
        engine.dispose()
    return CheckResult("registry", Status.ok, shown)


def check_schema(registry: Registry) -> CheckResult:
    from sqlalchemy.exc import SQLAlchemyError

    from rollout.registry import migrate
    from rollout.registry.engine import RegistryStatementCancelled, RegistryURLRefused
    from rollout.registry.locks import migration_holding

    registry_url = registry.url
    if _missing_sqlite_file(registry_url) is not None:
        return CheckResult("schema", Status.fail, "no registry database yet (see registry)")
    engine = _registry_engine(registry_url)
    try:
        with engine.connect() as connection:
            migrating = migration_holding(registry_url, connection)
        current = migrate.current_revision(engine)
    except (SQLAlchemyError, RegistryURLRefused, RegistryStatementCancelled) as error:
        waited = _waited(error)
        if waited is not None:
            return CheckResult("schema", Status.warn, _short(waited))
        return CheckResult("schema", Status.fail, "cannot read it: the registry is unreachable")
    finally:
        engine.dispose()
    head = migrate.head_revision()
    if migrating:
        # Not "run `rollout db upgrade`": one is at work (or a downgrade), and the
        # commands that read the registry are refused until it ends (exit 3).
        return CheckResult(
            "schema",
            Status.warn,
            f"a schema migration (`rollout db upgrade` or `db downgrade`) is at work on "
            f"the registry, at revision {current or 'none'} for now (this code needs "
            f"{head}): run doctor again once it has finished",
        )
    if current is None:
        return CheckResult("schema", Status.fail, "no schema yet: run `rollout db upgrade`")
    if not migrate.is_known(current):
        # `rollout db upgrade` refuses it: the advice is the newer code, as every
        # other command gives it (rollout.registry.migrate.require_known_revision).
        return CheckResult(
            "schema",
            Status.fail,
            f"at revision {current}, which this rollout does not know (its newest is "
            f"{head}): a newer rollout migrated it; run that version, or upgrade this one",
        )
    if current != head:
        return CheckResult(
            "schema",
            Status.fail,
            f"at revision {current}, this code needs {head}: run `rollout db upgrade`",
        )
    return CheckResult("schema", Status.ok, f"at revision {current} (the newest)")


# --- the warehouse ------------------------------------------------------------------------


def check_warehouse(path: Path) -> CheckResult:
    import duckdb

    from rollout.warehouse import (
        REBUILD_ADVICE,
        REPAIRS,
        SCHEMA_VERSION,
        made_by_this_sql,
        repairs_pending,
        schema_version,
    )

    if not path.exists():
        if path.parent.is_dir() and not os.access(path.parent, os.W_OK):
            return CheckResult(
                "warehouse",
                Status.fail,
                f"no warehouse yet, and {path.parent} is read-only for this user: "
                "`rollout ingest` cannot make it there",
            )
        # Derived data: a new install has none until the first ingest.
        return CheckResult(
            "warehouse", Status.warn, f"no warehouse yet at {path}: run `rollout ingest`"
        )
    try:
        # Read-only and closed at once, so a run starting meanwhile is not kept out
        # for longer than this query.
        con = _warehouse_read_only(path)
    except duckdb.IOException as error:
        if "lock" not in str(error).lower():
            return CheckResult("warehouse", Status.fail, _short(f"{path}: cannot open: {error}"))
        holder = re.search(r"\(PID (\d+)\)", str(error))
        who = f"process {holder.group(1)}" if holder else "another process"
        return CheckResult(
            "warehouse",
            Status.warn,
            f"{path} is open in {who} (a run in progress?): not checked; run again later",
        )
    except duckdb.Error as error:
        return CheckResult("warehouse", Status.fail, _short(f"{path}: cannot open: {error}"))
    try:
        with _bounded(con):
            version = schema_version(con)
            current_sql = made_by_this_sql(con)
            pending = repairs_pending(con) if version == SCHEMA_VERSION else []
    except duckdb.InterruptException:
        return CheckResult("warehouse", Status.warn, f"{path}: {_too_long()}")
    finally:
        con.close()
    if version != SCHEMA_VERSION:
        return CheckResult(
            "warehouse",
            Status.fail,
            f"{path} has schema version {version}, this code needs {SCHEMA_VERSION}: "
            f"{REBUILD_ADVICE}",
        )
    unwritable = _unwritable(path)
    if unwritable is not None:
        # Read-only, the doctor opened it; every run that writes it (`rollout ingest`,
        # the daily run, cohort builds, reports) failed on it while this said ok.
        return CheckResult(
            "warehouse",
            Status.fail,
            f"{unwritable} is read-only for this user: `rollout ingest` and the daily run "
            "cannot write the warehouse (check its permissions and the file system)",
        )
    if pending:
        # Repaired in place by the next run that writes it; until then the commands
        # that only read it refuse it.
        return CheckResult(
            "warehouse",
            Status.warn,
            f"{path} was loaded by an older rollout and is not checked yet for rows "
            f"that rollout loaded wrongly ({'; '.join(REPAIRS[name] for name in pending)})"
            ": run `rollout ingest` to check it and repair it in place",
        )
    if not current_sql:
        # The next run that writes it makes the views again; until then the commands
        # that only read it refuse it.
        return CheckResult(
            "warehouse",
            Status.warn,
            f"{path}: its views are another rollout version's (not written since the "
            "upgrade): run `rollout ingest`, or wait for the daily run",
        )
    return CheckResult("warehouse", Status.ok, f"{path} (schema version {version}, read-only)")


_T = TypeVar("_T")


def _read_warehouse(
    path: Path,
    name: str,
    absent: str,
    read: Callable[[duckdb.DuckDBPyConnection], _T],
    instead: str,
) -> _T | CheckResult:
    """What ``read`` finds in the warehouse, opened read-only and only for a moment, as
    the warehouse check opens it (a warehouse a run holds is not waited for); or row
    ``name``'s result when it is not there (ok: "no warehouse yet: ``absent``"), does not
    open or is of another schema version (a warning: the warehouse row says why), or
    ``read`` runs past WAREHOUSE_SECONDS (a warning: interrupted, so no run waits on the
    doctor; ``instead`` says where to look)."""
    import duckdb

    from rollout.warehouse import SCHEMA_VERSION, schema_version

    if not path.exists():
        return CheckResult(name, Status.ok, f"no warehouse yet: {absent}")
    try:
        con = _warehouse_read_only(path)
    except duckdb.Error:
        return CheckResult(
            name, Status.warn, "not checked: the warehouse did not open (its row says why)"
        )
    try:
        with _bounded(con):
            if schema_version(con) != SCHEMA_VERSION:
                return CheckResult(name, Status.warn, "not checked: the warehouse row says why")
            return read(con)
    except duckdb.InterruptException:
        return CheckResult(name, Status.warn, f"{_too_long()}; {instead}")
    finally:
        con.close()


# How far back the quarantine check looks: a week of daily runs, so a row a run
# quarantined on Friday is still named on Monday, and one fixed at the source drops out.
QUARANTINE_DAYS = 7


def check_quarantine(path: Path, now: datetime) -> CheckResult:
    """Rows ingest quarantined in the last QUARANTINE_DAYS days: a warning naming how
    many of each kind, and each file nothing of which loaded (a SendGrid post whose
    every event is bad is loaded all the same, each event judged alone: its delivery
    states are lost unless someone looks). Read-only and only for a moment, as the
    warehouse check; a warehouse a run holds is not waited for."""
    since = naive_utc(now) - timedelta(days=QUARANTINE_DAYS)

    def read(con: duckdb.DuckDBPyConnection) -> tuple[list[Any], list[str]]:
        by_kind = con.execute(
            "select kind, count(*) from quarantine where quarantined_at >= $since "
            "group by kind order by kind",
            {"since": since},
        ).fetchall()
        wholly = [
            row[0]
            for row in con.execute(
                "select path from ingested_files where rows_quarantined > 0 "
                "and rows_loaded = 0 and loaded_at >= $since order by loaded_at, path",
                {"since": since},
            ).fetchall()
        ]
        return by_kind, wholly

    found = _read_warehouse(
        path,
        "quarantine",
        "nothing quarantined",
        read,
        f"`rollout quarantine --days {QUARANTINE_DAYS}` lists the rows",
    )
    if isinstance(found, CheckResult):
        return found
    by_kind, wholly = found
    if not by_kind:
        return CheckResult(
            "quarantine", Status.ok, f"no row quarantined in the last {QUARANTINE_DAYS} days"
        )
    total = sum(count for _, count in by_kind)
    kinds = ", ".join(f"{count:,} {kind}" for kind, count in by_kind)
    detail = (
        f"{counted(total, 'row')} quarantined in the last {QUARANTINE_DAYS} days ({kinds}): "
        f"`rollout quarantine --days {QUARANTINE_DAYS}` lists them"
    )
    if wholly:
        shown = _cut([quoted(name) for name in wholly])
        detail += (
            f"; {counted(len(wholly), 'file')} nothing of which loaded, every row bad: "
            + ", ".join(shown)
        )
    return CheckResult("quarantine", Status.warn, detail)


# How far back the sends check looks: as the quarantine check, a week of daily runs.
DUPLICATE_SENDS_DAYS = 7
SHOWN_SENDS = 8


def check_duplicate_sends(path: Path, now: datetime) -> CheckResult:
    """Outbox rows sent more than once in the last DUPLICATE_SENDS_DAYS days: SendGrid's
    events of one notification (its outbox id and address) under two or more message
    ids (sql/marts/duplicate_sends.sql). The registry records one send, and its delivery
    state counts only that one's events, so nothing else shows the others (a sender
    paused past its lease, its row taken over and sent again). Read from the small
    table ingest keeps as it loads events (duplicate_sends_kept), not from the events:
    milliseconds at any scale, as of the last load (said in the row). Read-only and only
    for a moment, as the warehouse check."""
    from rollout import warehouse

    since = naive_utc(now) - timedelta(days=DUPLICATE_SENDS_DAYS)

    def read(con: duckdb.DuckDBPyConnection) -> tuple[list[Any], tuple[Any, ...] | None]:
        kept = warehouse.sends_as_of(con)
        if kept is None:
            return [], None
        rows = con.execute(warehouse.render("marts/duplicate_sends"), {"since": since})
        return rows.fetchall(), kept

    found = _read_warehouse(
        path,
        "sends",
        "no delivery event loaded",
        read,
        "the warehouse's duplicate_sends lists the rows (query a copy: `rollout copy-warehouse`)",
    )
    if isinstance(found, CheckResult):
        return found
    rows, kept = found
    if kept is None:
        # Written last by a rollout before the sends were kept: the next run that
        # writes the warehouse fills them from every event loaded.
        return CheckResult(
            "sends",
            Status.warn,
            "not checked: the warehouse does not keep the duplicate sends yet (written "
            "last by an older rollout): run `rollout ingest`, or wait for the daily run",
        )
    as_of = (
        "no events loaded yet"
        if kept[0] is None
        else f"as of the events loaded at {kept[1]:%Y-%m-%d %H:%M} UTC"
    )
    if not rows:
        return CheckResult(
            "sends",
            Status.ok,
            f"no email sent twice in the last {DUPLICATE_SENDS_DAYS} days "
            f"(by SendGrid's events, {as_of})",
        )
    extra = sum(row[3] - 1 for row in rows)
    shown = _cut([f"{row[0]} ({quoted(row[2] or 'email')} x{row[3]})" for row in rows], SHOWN_SENDS)
    return CheckResult(
        "sends",
        Status.warn,
        f"{counted(len(rows), 'outbox row')} sent more than once in the last "
        f"{DUPLICATE_SENDS_DAYS} days ({counted(extra, 'extra email')}; SendGrid's events "
        f"name several message ids, {as_of}): outbox ids {', '.join(shown)}; each "
        "maintainer got the email again (a sender paused past its lease: its log names "
        "the message id); the warehouse's duplicate_sends lists them",
    )


# How long each warehouse row may read before it gives up (its query interrupted, the
# warehouse let go): DuckDB lets no run write it while the doctor reads it, and cron
# runs the doctor every 5 minutes. Scanning a season of SendGrid events (millions) for
# duplicate sends took 15-17 s: ingest now keeps them in a small table the sends row
# reads, and this bound stays for whatever else grows.
WAREHOUSE_SECONDS = 2.0


def _too_long() -> str:
    return (
        f"not checked: reading the warehouse took over {WAREHOUSE_SECONDS:g} s, and the "
        "doctor let it go rather than keep a run out of it"
    )


def _warehouse_read_only(path: Path) -> Any:
    """The warehouse at ``path`` opened read-only, as rollout.warehouse.connect opens it:
    never fetching a DuckDB extension over the network (a SQLite file named as the
    warehouse would make DuckDB download one: no answer for as long as that takes)."""
    import duckdb

    return duckdb.connect(
        duckdb_path(path), read_only=True, config={"autoinstall_known_extensions": False}
    )


# How often the block is interrupted again once past its time: DuckDB drops an interrupt
# that comes while no statement runs (between two of the block's queries), so one alone
# could let the next query run to its end.
INTERRUPT_AGAIN_SECONDS = 0.05


@contextmanager
def _bounded(con: Any, seconds: float | None = None) -> Iterator[None]:
    """The block's queries on ``con`` interrupted (duckdb.InterruptException) once the
    block has run ``seconds`` (WAREHOUSE_SECONDS), and again and again until it ends."""
    done = threading.Event()

    def interrupt_when_late() -> None:
        if done.wait(WAREHOUSE_SECONDS if seconds is None else seconds):
            return
        while not done.is_set():
            con.interrupt()
            done.wait(INTERRUPT_AGAIN_SECONDS)

    watcher = threading.Thread(target=interrupt_when_late, name="doctor-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _unwritable(path: Path) -> Path | None:
    """A database file, or its folder (DuckDB's WAL file, SQLite's journal and the
    registry's lock file go beside it), when this user cannot write it; None when both
    are writable. Asked, not tried: the doctor writes nothing."""
    for where in (path, path.parent):
        if not os.access(where, os.W_OK):
            return where
    return None


# --- who may read the home ------------------------------------------------------------------

# The files beside a database that hold its data too: SQLite's rollback journal or WAL
# and shared memory, DuckDB's WAL. Each takes the umask of the process that makes it.
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
DUCKDB_SIDECARS = (".wal",)
SHOWN_OPEN = 8


def _cut(shown: list[str], limit: int = SHOWN_OPEN) -> list[str]:
    """The first ``limit`` of ``shown``, and how many more when there are more: a row's
    list kept short."""
    return shown if len(shown) <= limit else [*shown[:limit], f"{len(shown) - limit:,} more"]


def check_home(settings: Settings) -> CheckResult:
    """Others (neither the owner nor the group) can read nothing of ROLLOUT_HOME: the
    home itself, what is directly in it, and the databases with the files beside them
    that hold their data (wherever ROLLOUT_WAREHOUSE or a SQLite URL puts them). rollout
    makes its files and folders closed to others; a home made by an older rollout, or
    by hand at 0755, is not, and what SQLite and DuckDB make beside a database takes the
    umask alone (0644), which a closed folder keeps closed. So a path is reported when it
    gives others any permission and its folder lets them through (x): nothing above the
    home (or a database's folder) is judged. A warning: nothing fails for it."""
    home = settings.home
    if not home.exists():
        return CheckResult("home", Status.ok, f"{home} (not there yet: the first run makes it)")
    folders = [(home, sorted(home.iterdir()))]
    databases = [(settings.warehouse_path, DUCKDB_SIDECARS)]
    registry_file = _sqlite_file(settings.registry_url)
    if registry_file is not None:
        databases.append((registry_file, SQLITE_SIDECARS))
    for database, sidecars in databases:
        folders.append(
            (database.parent, [database, *(Path(f"{database}{end}") for end in sidecars)])
        )
    open_to_others: dict[Path, int] = {}
    for folder, inside in folders:
        folder_mode = _mode(folder)
        if folder_mode is None:
            continue
        if folder_mode & 0o007:
            open_to_others.setdefault(folder, folder_mode)
        if not folder_mode & 0o001:  # others cannot get through it to what is inside
            continue
        for path in inside:
            mode = _mode(path)
            if mode is not None and mode & 0o007:
                open_to_others.setdefault(path, mode)
    if not open_to_others:
        return CheckResult("home", Status.ok, f"{home}: closed to others")
    # In the home, by their names there (the row stays short); elsewhere, in full.
    # At most SHOWN_OPEN of them, then how many more: the row's chmod closes every one.
    shown = _cut(
        [f"{quoted(_in_home(path, home))} ({mode:04o})" for path, mode in open_to_others.items()]
    )
    return CheckResult(
        "home",
        Status.warn,
        f"{counted(len(open_to_others), 'path')} open to others, personal data anyone "
        f"on the host may read: `chmod -R o-rwx {shell_word(str(home))}` closes them "
        f"(a database elsewhere: chmod o-rwx it and the files beside it): {', '.join(shown)}",
    )


def _mode(path: Path) -> int | None:
    """Its permission bits; None when it is not there (a sidecar), or gone meanwhile."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return None


def _in_home(path: Path, home: Path) -> str:
    if path == home:
        return str(home)
    if path.parent == home:
        return path.name + ("/" if path.is_dir() else "")
    return str(path)


# --- the folders the runs write -------------------------------------------------------------


def _folder_unusable(folder: Path) -> str | None:
    """Why this user cannot write files into ``folder`` (None: it can). A folder not
    there yet is fine when it can be made (the first run makes it): the nearest folder
    above it that is there must be writable. Asked, not tried: the doctor writes nothing."""
    if folder.exists():
        if not folder.is_dir():
            return f"{folder} is not a folder"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{folder} is read-only for this user"
        return None
    above = folder.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        return f"{folder} cannot be made: {above} is not a folder"
    if not os.access(above, os.W_OK | os.X_OK):
        return f"{folder} is not there, and cannot be made: {above} is read-only for this user"
    return None


def _check_folder(name: str, folder: Path, writers: str) -> CheckResult:
    problem = _folder_unusable(folder)
    if problem is not None:
        return CheckResult(
            name, Status.fail, f"{problem}: {writers} (check its permissions and the file system)"
        )
    made = "" if folder.is_dir() else " (not there yet: the first run makes it)"
    return CheckResult(name, Status.ok, f"{folder}{made}")


def check_landing(folder: Path) -> CheckResult:
    """The landing folder: `rollout sample` and the SendGrid events receiver write into
    it, and `rollout ingest` moves nothing out of it but reads it."""
    return _check_folder(
        "landing",
        folder,
        "the events receiver (`rollout notify events serve`) and `rollout sample` cannot "
        "write the landing files there",
    )


def check_reports(folder: Path) -> CheckResult:
    """The reports folder: every phase preview saves its list there (`phase enforce`
    checks against it), and `rollout report` writes the adoption report."""
    return _check_folder(
        "reports",
        folder,
        "`rollout phase preview` cannot save its list (so no phase can be enforced) and "
        "`rollout report` cannot write the report",
    )


# --- what killed processes left ------------------------------------------------------------

# How long the leftovers row looks through the folders: a file outbox holds a season's
# emails (hundreds of thousands of .eml files), and the doctor answers in seconds.
LEFTOVERS_SECONDS = 2.0


def check_leftovers(settings: Settings, now: datetime) -> CheckResult:
    """Temporary files and private folders (``.<name>.<random>.tmp``) no write has
    touched for an hour (``STALE_TEMPORARY_SECONDS``), in the folders runs write: the
    landing folder, the outbox, the reports and the warehouse's folder. A process
    killed mid-write (SIGKILL, the OOM killer, a host gone) leaves them: never seen as
    data (ingest and every listing pass hidden names over), and most are removed by
    the next writer of their folder, but a folder nobody writes again keeps them, a
    copy of personal data each. A warning with the command that removes them; the
    doctor writes nothing."""
    import time

    from rollout.core.files import STALE_TEMPORARY_SECONDS, stale_temporaries_by

    # The warehouse's folder (the home, by default) alone, not the folders below.
    roots = [(settings.landing_dir, True), (settings.outbox_dir, True)]
    roots += [(settings.reports_dir, True), (settings.warehouse_path.parent, False)]
    found: dict[Path, None] = {}
    unseen: list[tuple[Path, bool]] = []
    deadline = time.monotonic() + LEFTOVERS_SECONDS
    for index, (root, below) in enumerate(roots):
        paths, whole = stale_temporaries_by(
            root, below=below, now=now.timestamp(), deadline=deadline
        )
        for path in paths:
            found.setdefault(path)
        if not whole:
            unseen = roots[index:]
            break
    hours = STALE_TEMPORARY_SECONDS / 3600
    if unseen:
        return _leftovers_unseen(unseen, list(found), hours)
    span = f"{hours:g} hour{'s' if hours != 1 else ''}"
    if not found:
        return CheckResult("leftovers", Status.ok, f"no temporary file older than {span}")
    paths = list(found)
    shown = paths[:SHOWN_OPEN]
    more = (
        f" ({len(paths) - SHOWN_OPEN:,} more: run the doctor again after)"
        if (len(paths) > SHOWN_OPEN)
        else ""
    )
    command = "rm -rf -- " + " ".join(shell_word(str(path)) for path in shown)
    return CheckResult(
        "leftovers",
        Status.warn,
        f"{counted(len(paths), 'temporary file')} of writes killed midway, untouched for "
        f"over {span} (half-written, personal data "
        f"each): `{command}` removes them{more}",
    )


def _leftovers_unseen(
    unseen: list[tuple[Path, bool]], found: list[Path], hours: float
) -> CheckResult:
    """The leftovers row when the folders held more than LEFTOVERS_SECONDS could look
    through: a warning naming the folders not looked through to the end, with the
    `find` that lists their stale temporaries (and those found so far)."""
    minutes = int(hours * 60)
    finds = [
        f"find {shell_word(str(root))}{'' if below else ' -maxdepth 1'} "
        f"-name '.*.tmp' -mmin +{minutes}"
        for root, below in unseen
    ]
    so_far = (
        f"; found so far: {', '.join(quoted(path) for path in found[:SHOWN_OPEN])}" if found else ""
    )
    return CheckResult(
        "leftovers",
        Status.warn,
        f"not checked to the end: {', '.join(quoted(root) for root, _ in unseen)} "
        f"held more than {LEFTOVERS_SECONDS:g} s of files to look through (`"
        + "; ".join(finds)
        + f"` lists the temporary files of killed writes there){so_far}",
    )


# --- the plan -------------------------------------------------------------------------------


def check_plan(path: Path) -> CheckResult:
    from rollout.core.plan import load_plan

    try:
        plan = load_plan(path)
    except RolloutError as error:
        return CheckResult("plan", Status.fail, _short(str(error)))
    return CheckResult(
        "plan",
        Status.ok,
        f"{plan.name} ({path}): {counted(len(plan.phases), 'phase')}, "
        f"{counted(len(plan.cohorts), 'cohort')}",
    )


# --- SendGrid -------------------------------------------------------------------------------


def check_sendgrid(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    prefect_transport: httpx.BaseTransport | None = None,
) -> CheckResult:
    """The key against the configured host, with the sender ``notify send`` would use.

    The key is the one the notify flow sends with: ``SENDGRID_API_KEY``, else the
    Prefect Secret block ``ROLLOUT_SENDGRID_SECRET_BLOCK`` names (read through
    ``PREFECT_API_URL``, as the worker check reads the pool), else none (the file
    outbox). ``GET /v3/scopes`` is SendGrid's cheapest authenticated call, and it says
    whether the key may send mail at all, and read the suppression lists the notify flow
    copies (rollout.notify.suppressions; without them, a warning). Nothing is sent."""
    from pydantic import SecretStr

    from rollout.core.config import api_key
    from rollout.notify.senders import SendGridSender, make_sender
    from rollout.notify.suppressions import LISTS as SUPPRESSION_LISTS

    from_block = no_key = unchecked = ""
    if settings.sendgrid_api_key is None and environ is not None:
        block = _secret_block_key(environ, prefect_transport)
        if isinstance(block, CheckResult):
            return block
        if block is None:
            # No Prefect to ask: the deployed notify flow may hold a key in the block
            # (the runbook's way to give it one) that nothing here has checked.
            unchecked = _secret_block_unchecked(environ)
        name, stored = block if block is not None else ("", None)
        if block is not None and stored is None:
            no_key = f" and Prefect has no Secret block {quoted(name)}"
        elif stored is not None:
            no_key = f" and the Secret block {quoted(name)} is empty"
            try:
                key = api_key(stored)
            except ValueError as error:
                # The notify flow refuses it alike (flows/notify.py, settings_with_secret).
                return CheckResult(
                    "sendgrid", Status.fail, f"the Secret block {quoted(name)} {error}"
                )
            if key is not None:
                settings = settings.model_copy(update={"sendgrid_api_key": SecretStr(key)})
                from_block = (
                    f" (the key of the Secret block {quoted(name)}, as the notify flow takes it)"
                )
    sender = make_sender(settings)
    if not isinstance(sender, SendGridSender):
        problem = _folder_unusable(settings.outbox_dir)
        if problem is not None:
            return CheckResult(
                "sendgrid",
                Status.fail,
                f"file outbox: {problem}: `rollout notify send` cannot write the emails there",
            )
        if unchecked:
            return CheckResult(
                "sendgrid",
                Status.warn,
                f"{unchecked}; here, without SENDGRID_API_KEY, `rollout notify send` "
                f"writes the file outbox ({settings.outbox_dir})",
            )
        return CheckResult(
            "sendgrid",
            Status.ok,
            f"file outbox ({settings.outbox_dir}): SENDGRID_API_KEY is not set"
            f"{no_key}, nothing is sent",
        )
    status, scopes, problem = _read_scopes(sender)
    where = sender.base_url
    key_name = "the Secret block's key" if from_block else "SENDGRID_API_KEY"
    if problem is not None:
        return CheckResult("sendgrid", Status.fail, _short(f"{where}: {problem}"))
    if status in (401, 403):
        return CheckResult(
            "sendgrid",
            Status.fail,
            f"{where} refused the key ({status}): check {key_name}{from_block}",
        )
    if status != 200:
        return CheckResult("sendgrid", Status.fail, f"{where} answered {status} to GET /v3/scopes")
    if "mail.send" not in scopes:
        return CheckResult(
            "sendgrid",
            Status.fail,
            f"{where} accepts the key{from_block}, but it lacks the mail.send permission",
        )
    # Reading each list needs its scope, or the whole suppression.read.
    wanted = [f"suppression.{name}.read" for name in SUPPRESSION_LISTS]
    unreadable = [name for name in wanted if name not in scopes]
    if "suppression.read" in scopes:
        unreadable = []
    if unreadable:
        # A warning: mail goes, but bounced and complaining addresses are not skipped.
        return CheckResult(
            "sendgrid",
            Status.warn,
            f"{where} accepts the key{from_block} (mail.send), but it cannot read the suppression "
            f"lists ({', '.join(unreadable)}): bounces and spam reports are not skipped",
        )
    return CheckResult(
        "sendgrid", Status.ok, f"{where} accepts the key{from_block} (mail.send, suppression lists)"
    )


def _secret_block_unchecked(environ: Mapping[str, str]) -> str:
    """What the SendGrid check says of the notify flow's Secret block when there is no
    Prefect to read it from (no ``PREFECT_API_URL``): the block named as the flow
    names it (flows/notify.py, settings_with_secret)."""
    from rollout.notify.senders import SECRET_BLOCK, SECRET_BLOCK_SETTING

    name = environ.get(SECRET_BLOCK_SETTING) or SECRET_BLOCK
    return (
        f"the notify flow's Secret block {quoted(name)} was not checked: PREFECT_API_URL is not "
        "set (set it as the worker has it to check the key the deployed notify flow "
        "sends with)"
    )


def _secret_block_key(
    environ: Mapping[str, str], transport: httpx.BaseTransport | None
) -> tuple[str, str | None] | CheckResult | None:
    """(block name, the value it holds) of the Secret block the notify flow takes the
    SendGrid key from when ``SENDGRID_API_KEY`` is unset, the value None when there is
    no such block (the flow's file outbox); None when there is no Prefect to ask (no
    ``PREFECT_API_URL``); a warning row when Prefect cannot say (the worker check fails
    on that already). Through Prefect's REST API, as the worker check: nothing under
    rollout/ imports prefect."""
    from rollout.notify.senders import SECRET_BLOCK, SECRET_BLOCK_SETTING

    name = environ.get(SECRET_BLOCK_SETTING) or SECRET_BLOCK
    try:
        api = prefect_api(environ)
    except BadInput as error:
        return CheckResult(
            "sendgrid",
            Status.warn,
            _short(
                f"the notify flow's Secret block {quoted(name)} was not checked: {error.reason}"
            ),
        )
    if api is None:
        return None
    api_url, headers = api
    unread = f"the notify flow's Secret block {quoted(name)} was not checked: {url_shown(api_url)}"
    with _prefect_client(api_url, headers, transport) as client:
        try:
            answer = client.get(
                f"block_types/slug/secret/block_documents/name/{quote(name, safe='')}",
                params={"include_secrets": "true"},
            )
        except httpx.HTTPError as error:
            return CheckResult(
                "sendgrid", Status.warn, _short(f"{unread}: no answer: {type(error).__name__}")
            )
    if answer.status_code == 404:
        return name, None
    if answer.status_code != 200:
        return CheckResult("sendgrid", Status.warn, f"{unread} answered {answer.status_code}")
    try:
        value = (answer.json().get("data") or {}).get("value")
    except (ValueError, AttributeError):
        return CheckResult("sendgrid", Status.warn, f"{unread} is not Prefect's REST API")
    # As the flow reads it: str() of what the block holds (Secret.get()).
    return name, "" if value is None else str(value)


def _prefect_client(
    api_url: str, headers: Mapping[str, str], transport: httpx.BaseTransport | None
) -> httpx.Client:
    """A client of Prefect's REST API at ``api_url`` (``prefect_api``), its paths
    relative to it, bounded by TIMEOUT."""
    return httpx.Client(
        base_url=api_url.rstrip("/") + "/",
        headers=dict(headers),
        timeout=TIMEOUT,
        transport=transport,
    )


def _read_scopes(sender: Any) -> tuple[int | None, list[str], str | None]:
    """(HTTP status, scopes, network problem) for ``GET /v3/scopes``.

    Through the sender's own client: the same host, key, timeout and log redaction as a
    real send. Results are built outside the ``except`` blocks, so no client exception
    (which holds the request and its Authorization header) travels further."""
    import http.client
    import json

    import python_http_client.exceptions

    status: int | None = None
    body: bytes | str | None = None
    problem: str | None = None
    try:
        response = sender.scopes()
        status, body = response.status_code, response.body
    except python_http_client.exceptions.HTTPError as error:
        status = error.status_code
    except (OSError, http.client.HTTPException) as error:
        problem = f"cannot reach it: {type(error).__name__}"
        reason = getattr(error, "reason", None)
        if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError):
            problem = f"no answer within {sender.timeout:g}s"
    scopes: list[str] = []
    if status == 200:
        try:
            scopes = list(json.loads(body or b"{}").get("scopes") or [])
        except (ValueError, AttributeError):
            problem = "answered GET /v3/scopes with something that is not SendGrid's JSON"
    return status, scopes, problem


# --- the Prefect worker ---------------------------------------------------------------------


def check_worker(
    environ: Mapping[str, str],
    *,
    transport: httpx.BaseTransport | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CheckResult:
    """A worker of the pool sent a heartbeat recently (Prefect's rule for "online")."""
    try:
        api = prefect_api(environ)
    except BadInput as error:
        return CheckResult("worker", Status.fail, _short(error.reason))
    if api is None:
        return CheckResult(
            "worker", Status.warn, "PREFECT_API_URL not set: the Prefect worker was not checked"
        )
    api_url, headers = api
    with _prefect_client(api_url, headers, transport) as client:
        try:
            pool = client.get(f"work_pools/{WORK_POOL}")
            workers = queues = None
            if pool.status_code == 200:
                workers = client.post(f"work_pools/{WORK_POOL}/workers/filter", json={"offset": 0})
                queues = {
                    name: client.get(f"work_pools/{WORK_POOL}/queues/{name}")
                    for name in (HOME_QUEUE, SHARD_QUEUE)
                }
        except httpx.HTTPError as error:
            return CheckResult(
                "worker",
                Status.fail,
                _short(f"{url_shown(api_url)}: no answer: {type(error).__name__}"),
            )
    try:
        return _judge_workers(api_url, pool, workers, now()) or _judge_queues(
            api_url, queues or {}, workers, now()
        )
    except ValueError:  # JSONDecodeError: the UI's HTML, say, at a URL without /api
        return CheckResult(
            "worker",
            Status.fail,
            f"{url_shown(api_url)} is not Prefect's REST API (does PREFECT_API_URL end in /api?)",
        )


def _judge_workers(
    api_url: str, pool: httpx.Response, workers: httpx.Response | None, now: datetime
) -> CheckResult | None:
    """A fail when the pool cannot run anything (missing, paused, no live worker); None
    when it can, and its queues are next (``_judge_queues``)."""
    if pool.status_code == 404:
        return CheckResult(
            "worker",
            Status.fail,
            f"{url_shown(api_url)} has no work pool {WORK_POOL}: "
            f"`prefect work-pool create {WORK_POOL} --type process`",
        )
    if pool.status_code in (401, 403):
        return CheckResult(
            "worker",
            Status.fail,
            f"{url_shown(api_url)} refused us ({pool.status_code}): check PREFECT_API_AUTH_STRING",
        )
    if pool.status_code != 200 or workers is None or workers.status_code != 200:
        status = pool.status_code if workers is None else workers.status_code
        return CheckResult("worker", Status.fail, f"{url_shown(api_url)} answered {status}")
    if pool.json().get("is_paused"):
        return CheckResult(
            "worker",
            Status.fail,
            f"work pool {WORK_POOL} is paused: no run starts until "
            f"`prefect work-pool resume {WORK_POOL}`",
        )
    live = [w for w in workers.json() if _is_live(w, now)]
    if not live:
        known = ", ".join(quoted(w.get("name", "?")) for w in workers.json()) or "none ever"
        return CheckResult(
            "worker",
            Status.fail,
            _short(f"no live worker in {WORK_POOL} (no recent heartbeat; workers seen: {known})"),
        )
    return None


def _judge_queues(
    api_url: str,
    queues: Mapping[str, httpx.Response],
    workers: httpx.Response | None,
    now: datetime,
) -> CheckResult:
    """The pool's queues: none paused, and `default` polled lately. A live worker that
    polls `notify-shards` alone (another machine's) starts none of the runs on `default`."""
    for name, answer in queues.items():
        if answer.status_code == 404 and name == SHARD_QUEUE:
            continue  # made by `prefect deploy --all`; before it, nothing is on it
        if answer.status_code != 200:
            return CheckResult(
                "worker",
                Status.fail,
                f"{url_shown(api_url)} answered {answer.status_code} for the queue {name} "
                f"of {WORK_POOL}",
            )
        if answer.json().get("is_paused"):
            return CheckResult(
                "worker",
                Status.fail,
                f"queue {name} of {WORK_POOL} is paused: no run on it starts until "
                f"`prefect work-queue resume {name} --pool {WORK_POOL}`",
            )
    live = [w for w in (workers.json() if workers is not None else []) if _is_live(w, now)]
    names = ", ".join(quoted(w.get("name", "?")) for w in live)
    home = queues.get(HOME_QUEUE)
    polled = _when(home.json().get("last_polled")) if home is not None else None
    if polled is None or now - polled > QUEUE_POLLED_WITHIN:
        last = "never" if polled is None else f"{max((now - polled).total_seconds(), 0):.0f}s ago"
        return CheckResult(
            "worker",
            Status.fail,
            _short(
                f"no worker polls the queue {HOME_QUEUE} of {WORK_POOL} (last polled: {last}), "
                f"so no daily, notify, report, phase or brown-out run starts; the live "
                f"workers ({names}) poll other queues only: start the worker of the "
                f"ROLLOUT_HOME host without --work-queue"
            ),
        )
    newest = max(live, key=lambda w: _heartbeat(w) or now)
    age = max((now - (_heartbeat(newest) or now)).total_seconds(), 0)
    return CheckResult(
        "worker",
        Status.ok,
        f"{len(live)} live in {WORK_POOL}: {newest.get('name')} (heartbeat {age:.0f}s ago; "
        f"queue {HOME_QUEUE} polled {max((now - polled).total_seconds(), 0):.0f}s ago)",
    )


def _heartbeat(worker: Mapping[str, Any]) -> datetime | None:
    return _when(worker.get("last_heartbeat_time"))


def _when(value: object) -> datetime | None:
    """A time as Prefect's API gives it (ISO 8601, `Z` for UTC); None when not given."""
    if not value:
        return None
    when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _is_live(worker: Mapping[str, Any], now: datetime) -> bool:
    heartbeat = _heartbeat(worker)
    if heartbeat is None:
        return False
    interval = worker.get("heartbeat_interval_seconds") or DEFAULT_HEARTBEAT_SECONDS
    return now - heartbeat <= timedelta(seconds=interval * HEARTBEAT_MULTIPLE)

"""One run at a time: an advisory lock on PostgreSQL, a lock file on SQLite; and the
order in which runs of different kinds lock the rows they share.

Reached through :meth:`rollout.registry.Registry.lock`; here, below the handle, so the
registry package needs nothing from the layers above it.

Runs of different kinds hold different run locks and may go on at once: `phase
enforce` (or `rollback`) beside `elv enroll-all`, both changing ``accounts`` rows.
On PostgreSQL each of their transactions locks its accounts first, all of them, in
order of id (:func:`lock_accounts`), before it changes any: two transactions that take
their rows in one order never wait for each other in a circle. Left to its UPDATEs,
an enforcement batch flagged some accounts, then warned more of them (a later
statement, rows of lower ids), while an enrolment held those and waited for the first:
PostgreSQL's deadlock detector failed one of the two. On SQLite one transaction
writes at a time (``begin_writing``): nothing to order."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, event, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from rollout.core.controls import visible
from rollout.core.errors import GuardRefused, RolloutError
from rollout.core.files import FILE_MODE
from rollout.core.names import safe_path_component
from rollout.registry.engine import is_sqlite, make_engine, normalize_url, require_sqlite_file
from rollout.registry.models import Account
from rollout.registry.readonly import read_only_refusal, why_read_only

_ACCOUNTS = Account.__table__


# Every run lock the code takes (Registry.lock refuses another name, so none is left out
# of a migration's): what each run kind is, for the messages that name one.
RUN_LOCKS: dict[str, str] = {
    "cohorts": "`cohorts build` (the daily flow's cohort step)",
    "elv": "`elv enroll-all`",
    "enforce": "`phase enforce` or `rollback`, `phase snooze`, the phase-enforce flow",
    "notify": "`notify send` (the notify flow, its shards' run)",
    "orgs": "`orgs enforce`, `orgs reinvite` or `orgs invitations`",
    "queue": "`notify queue` (the daily flow's queue step)",
}

# Held by `rollout db upgrade` and `db downgrade` beside every run lock, for as long as
# they change the schema: a run refused meanwhile is told why. A session-level lock,
# not the transaction-level "migrate" one (hold_migration_lock) that orders migrations.
MIGRATION_LOCK = "schema-migration"
# Taken first by a migration, waited for: one migration of a registry at a time.
MIGRATION_GATE = "schema-migration-gate"
# PostgreSQL: taken shared by each transaction of a writer that holds no run lock
# (`brownout start`, `notify suppress`, ingest's delivery states: Registry.writing), and
# exclusively by a migration, after every run lock: the migration waits for the writes
# in flight (WRITERS_WAIT_SECONDS at most), and refuses every write meanwhile. SQLite
# needs none: its one writer at a time orders a write and a migration's transaction.
WRITERS_LOCK = "registry-writers"
# How long a migration waits for the writes in flight: each is one short transaction
# (a batch of delivery states, a suppression); one open longer is stuck, and refuses it.
WRITERS_WAIT_SECONDS = 30.0
# What a writer that holds no run lock is told while a schema migration is at work.
WRITING_DURING_MIGRATION = (
    "a schema migration (`rollout db upgrade` or `db downgrade`) is at work on the "
    "registry: nothing was changed; wait for it to finish, then run again"
)


def _lock_path(url: URL, name: str) -> Path:
    """Next to the database file itself: the same file reached through a symlink or
    another relative path must take the same lock (two enforcements ran at once so).
    The file stays when its lock is let go, empty: removed, a process that had opened
    it (waiting on it, or about to lock it) would lock the removed file while the next
    run made and locked a new one, two runs at once. A file left holds no lock."""
    database = os.path.realpath(url.database or "")
    return Path(f"{database}.{safe_path_component(name, 'lock')}.lock")


def _advisory_key(connection: Connection, name: str) -> int:
    """One lock per run kind and per registry: the schema is part of the key, so
    registries sharing a database (one a schema) do not block each other."""
    # The schema of a pooled connection does not change: asked once per connection.
    schema = connection.info.get("rollout_schema")
    if schema is None:
        schema = connection.execute(text("select current_schema()")).scalar()
        connection.info["rollout_schema"] = schema
    digest = hashlib.sha256(f"rollout:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def hold_migration_lock(connection: Connection) -> None:
    """PostgreSQL: wait until no other migration of this registry runs, and keep others
    waiting until this connection's transaction ends (alembic's, around the whole run)."""
    hold_transaction_lock(connection, "migrate")


def hold_transaction_lock(connection: Connection, name: str) -> None:
    """Wait until no other transaction holds ``name``, and keep others waiting until
    this connection's transaction ends: for a check and the write it decides (two at
    once would both pass the check). PostgreSQL: a transaction-level advisory lock.
    SQLite: nothing more than its one writer at a time, which ``begin_writing`` takes
    at the transaction's start."""
    if connection.dialect.name != "postgresql":
        return
    key = _advisory_key(connection, name)
    connection.execute(text("select pg_advisory_xact_lock(:k)"), {"k": key})


def lock_accounts(
    connection: Connection, where: ColumnElement[bool], *, limit: int | None = None
) -> list[int]:
    """The ids of the accounts ``where`` selects (the first ``limit`` of them), in
    order, locked for this transaction's changes on PostgreSQL (FOR NO KEY UPDATE, what
    an UPDATE of them takes, taken in order of id: the module's rule). A transaction
    that changes ``accounts`` calls it first, for every row it is going to change."""
    query = select(_ACCOUNTS.c.id).where(where).order_by(_ACCOUNTS.c.id)
    if limit is not None:
        query = query.limit(limit)
    # The rows are locked as the sort hands them over: in order of id, whatever way
    # the planner found them. SQLite ignores the clause (its one writer at a time).
    return list(connection.execute(query.with_for_update(key_share=True)).scalars())


class RunLockLost(RolloutError):
    """A run's lock went while it held it: on PostgreSQL its session ended (a server
    restart, a connection pooler, a network or keepalive timeout), and with it the
    advisory lock; another run may have started since."""


class HeldRunLock:
    """A run lock held (what ``exclusive_run`` yields): ``check`` before each batch of
    work. A lock file (SQLite) is the process's until it lets it go; a PostgreSQL
    advisory lock is its session's, and goes, silently, with the session: a run that
    went on without it would work beside the next run of its kind."""

    def __init__(self, name: str, connection: Connection | None = None, key: int = 0) -> None:
        self.name, self._connection, self._key = name, connection, key
        self._lost = False
        self._asking = threading.Lock()  # a run's batches may check from several threads

    def holds(self) -> bool:
        """Whether the lock is still this run's (asked on the lock's own connection;
        once lost, lost for good: a session that ended took the lock with it)."""
        if self._connection is None:
            return True
        with self._asking:
            if self._lost:
                return False
            try:
                self._lost = not bool(
                    self._connection.execute(
                        text(
                            f"select exists(select 1 from pg_locks where {_KEY_GRANTED}"
                            " and pid = pg_backend_pid())"
                        ),
                        _key_halves(self._key),
                    ).scalar()
                )
            except SQLAlchemyError:  # the connection gone, or left unusable by its loss
                self._lost = True
            return not self._lost

    def check(self) -> None:
        """RunLockLost when the lock is no longer this run's."""
        if not self.holds():
            raise RunLockLost(
                f"the {self.name} run lock was lost: its connection to PostgreSQL ended (a "
                "server restart, a connection pooler, a network or keepalive timeout), and "
                f"another {self.name} run may have started since: this run stopped before "
                "its next batch (what it had done is recorded); run it again"
            )


@contextmanager
def exclusive_run(
    registry_url: str, name: str, lock_engine: Engine | None, *, settle: float | None = None
) -> Iterator[HeldRunLock]:
    """Refuse a second concurrent run: an advisory lock on PostgreSQL, taken on a
    connection of ``lock_engine`` (:func:`make_lock_engine`; None on SQLite), a lock
    file next to the database on SQLite. Both vanish with the process that held them,
    so a crash never leaves a stale lock behind. Yields the lock, for the run to check
    it is still its own (HeldRunLock.check) before each batch of work."""
    url = normalize_url(registry_url)
    if url.get_backend_name() == "sqlite":
        path = _lock_path(url, name)
        require_sqlite_file(registry_url)  # the lock file goes next to it
        handle = _open_lock_file(url, path)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise GuardRefused(
                    _refusal(registry_url, None, name, f"another {name} run holds {path}")
                ) from error
            # This run's token in the file, while it holds the lock: what tells it from
            # the next run holding the same lock (run_lock_holder).
            os.ftruncate(handle, 0)
            os.pwrite(handle, secrets.token_hex(16).encode("ascii"), 0)
            try:
                yield HeldRunLock(name)
            finally:
                os.ftruncate(handle, 0)  # a lock let go names no run
        finally:
            os.close(handle)
        return
    if lock_engine is None:
        raise ValueError("a PostgreSQL run lock is taken on a lock engine (make_lock_engine)")
    # The lock is the connection's session's: it goes when the connection goes back to
    # the pool, whichever way the block is left (make_lock_engine).
    with lock_engine.connect() as connection:
        key = _advisory_key(connection, name)
        got = _try_advisory_lock(
            connection, key, LOCK_SETTLE_SECONDS if settle is None else settle, name
        )
        if not got:
            raise GuardRefused(
                _refusal(
                    registry_url,
                    connection,
                    name,
                    f"another {name} run holds the registry's advisory lock",
                )
            )
        # This run's token beside it, on the same session (an advisory lock of two keys,
        # drawn at random): what tells it from the next run holding the same lock, on
        # a session of its own or this one again from the pool (run_lock_holder).
        connection.execute(
            text("select pg_advisory_lock(:a, :b)"),
            {"a": _random_int4(), "b": _random_int4()},
        )
        yield HeldRunLock(name, connection, key)


def _random_int4() -> int:
    return int.from_bytes(secrets.token_bytes(4), "big", signed=True)


def _refusal(registry_url: str, connection: Connection | None, name: str, held: str) -> str:
    """Why a run lock is refused: another run of its kind, or a schema migration (which
    holds every run lock while it works)."""
    if name != MIGRATION_LOCK:
        if is_sqlite(registry_url):
            migrating = migration_at_work(registry_url)
        else:
            assert connection is not None
            migrating = bool(advisory_lock_holders(connection, MIGRATION_LOCK))
        if migrating:
            return (
                f"a schema migration (`rollout db upgrade` or `db downgrade`) holds the "
                f"{name} lock; wait for it to finish, then run again"
            )
    return f"{held}; wait for it to finish"


@contextmanager
def migration_exclusive(registry_url: str) -> Iterator[None]:
    """For a schema migration: take every run lock (RUN_LOCKS) and MIGRATION_LOCK, and
    hold them until the block ends, so that no run is at work while the schema changes
    under it and none starts meanwhile (each refused, told why). A run at work already:
    GuardRefused (exit 3) naming each one and how to stop it, nothing taken."""
    url = normalize_url(registry_url)
    lock_engine = None if url.get_backend_name() == "sqlite" else make_lock_engine(registry_url)
    try:
        with ExitStack() as held:
            # Another migration at work (the worker host's `db upgrade` and a release
            # manager's at once) is waited for, not refused: this one then finds what
            # it left (hold_migration_lock orders their transactions likewise).
            held.enter_context(_waiting_exclusive(registry_url, MIGRATION_GATE, lock_engine))
            busy = []
            for name in RUN_LOCKS:
                # Each asked once (settle=0): a run at work is refused, not waited for.
                try:
                    held.enter_context(exclusive_run(registry_url, name, lock_engine, settle=0.0))
                except GuardRefused:
                    busy.append(name)
            if busy:
                runs = "; ".join(f"{name}: {RUN_LOCKS[name]}" for name in busy)
                raise GuardRefused(
                    f"a run is at work on the registry, holding its run lock ({runs}): "
                    "the schema was not changed. Let it finish, or stop it (Ctrl-C or "
                    "SIGTERM to its process; `prefect flow-run cancel` for a flow run: it "
                    "stops cleanly, and runs again for the same day after the migration), "
                    "then migrate"
                )
            # Last, once every run lock is the migration's: while it is held, none of
            # them is a run's (run_lock_held).
            held.enter_context(exclusive_run(registry_url, MIGRATION_LOCK, lock_engine, settle=0.0))
            if lock_engine is not None:
                # The writers that hold no run lock: the writes in flight waited for,
                # each one after refused (refuse_writing_during_migration).
                held.enter_context(_writers_kept_out(lock_engine))
            yield
    finally:
        if lock_engine is not None:
            lock_engine.dispose()


def _open_lock_file(url: URL, path: Path) -> int:
    """The lock file ``path`` of the SQLite registry at ``url``, opened to be locked
    (made if need be). Only a run that writes the registry takes one: on a registry this
    process may not write, the writer's one-line refusal, not the lock file's EROFS."""
    if (reason := why_read_only(url.database or "")) is not None:
        raise read_only_refusal(url.database or "", reason)
    # FILE_MODE: every user of the group the umask leaves it to can take the lock.
    return os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)


@contextmanager
def _waiting_exclusive(registry_url: str, name: str, lock_engine: Engine | None) -> Iterator[None]:
    """``name`` taken exclusively, waiting for whoever holds it (Ctrl-C stops the wait)."""
    url = normalize_url(registry_url)
    if lock_engine is None:
        handle = _open_lock_file(url, _lock_path(url, name))
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)
        return
    with lock_engine.connect() as connection:
        key = _advisory_key(connection, name)
        connection.execute(text("select pg_advisory_lock(:k)"), {"k": key})
        yield  # let go as the connection goes back to the pool (make_lock_engine)


@contextmanager
def _writers_kept_out(lock_engine: Engine) -> Iterator[None]:
    """PostgreSQL: WRITERS_LOCK taken exclusively, waiting for the writers' transactions
    in flight; while the migration waits, a writer starting is refused already (its
    shared request conflicts with the one waiting). A write open for longer than
    WRITERS_WAIT_SECONDS: GuardRefused, the schema not changed."""
    with lock_engine.connect() as connection:
        key = _advisory_key(connection, WRITERS_LOCK)
        wait = f"{int(WRITERS_WAIT_SECONDS * 1000)}ms"
        connection.execute(text("select set_config('lock_timeout', :t, false)"), {"t": wait})
        try:
            connection.execute(text("select pg_advisory_lock(:k)"), {"k": key})
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            raise GuardRefused(
                f"a write to the registry has been at work for over "
                f"{WRITERS_WAIT_SECONDS:g} s (a transaction of `brownout`, `notify "
                "suppress`, `notify withdraw` or ingest's delivery states, or one left "
                "open): the schema was not changed. Let it finish, or stop it, then migrate"
            ) from error
        finally:
            connection.execute(text("select set_config('lock_timeout', '0', false)"))
        yield  # let go as the connection goes back to the pool (make_lock_engine)


def refuse_writing_during_migration(registry_url: str, connection: Connection) -> str | None:
    """Inside the transaction of a writer that holds no run lock (Registry.writing),
    before it changes anything: GuardRefused (exit 3, WRITING_DURING_MIGRATION) while a
    schema migration is at work, and otherwise the registry's schema revision as this
    transaction sees it (the caller compares it with its code's). PostgreSQL: WRITERS_LOCK
    taken shared until the transaction ends, so no migration starts changing the schema
    before it does; asked with the revision, in one round trip. SQLite: the transaction
    holds the database's write lock already (begin_writing), which a migration's
    transaction takes for its whole run: the migration lock file says whether one is
    about to begin, or has just committed."""
    if connection.dialect.name == "postgresql":
        key = _advisory_key(connection, WRITERS_LOCK)
        got, current = connection.execute(
            text(
                "select pg_try_advisory_xact_lock_shared(:k),"
                " (select version_num from alembic_version)"
            ),
            {"k": key},
        ).one()
        if not got:
            raise GuardRefused(WRITING_DURING_MIGRATION)
        return current
    if migration_at_work(registry_url):
        raise GuardRefused(WRITING_DURING_MIGRATION)
    return connection.execute(text("select version_num from alembic_version")).scalar()


READING_DURING_MIGRATION = (
    "a schema migration (`rollout db upgrade` or `db downgrade`) is at work on the "
    "registry: its tables are changing, so nothing was read; wait for it to finish, then "
    "run again"
)


def migration_holding(registry_url: str, connection: Connection) -> bool:
    """Whether a schema migration is at work on the registry ``connection`` reaches
    (its MIGRATION_LOCK held, taking nothing): an advisory lock on PostgreSQL, the lock
    file on SQLite."""
    if connection.dialect.name == "postgresql":
        return bool(advisory_lock_holders(connection, MIGRATION_LOCK))
    return migration_at_work(registry_url)


def migration_at_work(registry_url: str) -> bool:
    """SQLite: whether a schema migration holds the registry's migration lock (taking
    nothing): a writer refuses at once, rather than wait for the database's write lock
    behind the migration's transaction (the busy timeout) and fail "database is locked"."""
    url = normalize_url(registry_url)
    return url.get_backend_name() == "sqlite" and _file_lock_held(_lock_path(url, MIGRATION_LOCK))


# A run killed a moment ago holds its advisory lock until its server process notices
# the connection closed and exits: a few milliseconds, longer on a busy server. A rerun
# started at once waits that long for it rather than be refused; a run really at
# work is refused after it.
LOCK_SETTLE_SECONDS = 2.0


def _try_advisory_lock(connection: Connection, key: int, settle: float, name: str) -> bool:
    """Take the run lock ``key`` (``name``), trying again for ``settle`` seconds while
    a run killed a moment ago may still hold it; not when a schema migration holds it
    (it holds every run lock for as long as it works: seconds to minutes, no settling)."""
    deadline = time.monotonic() + settle
    query = text("select pg_try_advisory_lock(:k)")
    while not (got := bool(connection.execute(query, {"k": key}).scalar())):
        if time.monotonic() >= deadline:
            break
        if name != MIGRATION_LOCK and advisory_lock_holders(connection, MIGRATION_LOCK):
            break
        time.sleep(0.05)
    return got


def make_lock_engine(registry_url: str) -> Engine:
    """The engine PostgreSQL run locks are taken on (Registry.lock keeps one).

    In autocommit: a transaction left open for the run's hours would hold back
    PostgreSQL's cleanup of every row the run updates (no dead row could be vacuumed
    or skipped in an index: the outbox's claims slowed from 1 ms to 50 ms over a
    100,000-email drain). Pooled: a connection kept from one run to the next, not a new
    server process and engine for each (~10 ms a lock, and a simulated day takes
    several). A connection gives back every lock it holds as it returns to the pool
    (``pg_advisory_unlock_all``), however its run ended: a pooled session keeping one
    would refuse every other process's run, and let this process's next one in twice
    (the locks are re-entrant within a session). One it cannot is closed instead, which
    lets its locks go as well."""
    engine = make_engine(registry_url, isolation_level="AUTOCOMMIT", pool_size=2)

    @event.listens_for(engine, "checkin")
    def _give_back_every_lock(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None:  # invalidated: closed, its locks gone with it
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("select pg_advisory_unlock_all()")
            finally:
                cursor.close()
        except BaseException as error:  # interrupted too: closed, the lock goes
            record.invalidate(error)
            if not isinstance(error, Exception):
                raise

    return engine


def run_lock_held(registry_url: str, engine: Engine, name: str) -> bool:
    """Whether some run holds the ``name`` run lock (taking nothing; ``engine`` is the
    registry's): how `plan show` tells a run at work from one interrupted. Not while a
    schema migration holds it (migration_exclusive): no run is at work then."""
    url = normalize_url(registry_url)
    if url.get_backend_name() == "sqlite":
        return _file_lock_held(_lock_path(url, name)) and not _file_lock_held(
            _lock_path(url, MIGRATION_LOCK)
        )
    with engine.connect() as connection:
        return bool(advisory_lock_holders(connection, name)) and not advisory_lock_holders(
            connection, MIGRATION_LOCK
        )


def run_lock_holder(registry_url: str, engine: Engine, name: str) -> str | None:
    """Which run holds the ``name`` run lock (taking nothing): a token of its own, drawn
    as it took the lock (exclusive_run), so that the next run holding the lock, even
    from the same process and pooled session, is told from it; None when no run holds
    it, or a schema migration does (as run_lock_held). How a notify run's shards, on
    other machines, tell that the run holding the lock is still theirs: one frozen past
    its run's end (SIGSTOP, a paused VM) must not go on under the next run."""
    url = normalize_url(registry_url)
    if url.get_backend_name() == "sqlite":
        path = _lock_path(url, name)
        if not run_lock_held(registry_url, engine, name):
            return None
        try:
            token = path.read_text(encoding="ascii", errors="replace")
        except OSError:
            token = ""  # held, by a run this user cannot tell apart
        # Read again: the run may have let it go (its token cleared) meanwhile.
        return token if _file_lock_held(path) else None
    with engine.connect() as connection:
        holders = advisory_lock_holders(connection, name)
        if not holders or advisory_lock_holders(connection, MIGRATION_LOCK):
            return None
        tokens = connection.execute(
            text(
                "select pid, classid, objid from pg_locks where locktype = 'advisory'"
                " and granted and objsubid = 2 and pid = any(:pids)"
                " and database = (select oid from pg_database"
                " where datname = current_database())"
                " order by pid, classid, objid"
            ),
            {"pids": holders},
        ).all()
    return ",".join(f"{pid}:{a}:{b}" for pid, a, b in tokens) or ",".join(map(str, holders))


# The kernel's table of the file locks held (Linux): where a reader that may not open a
# lock file (a registry folder shared with analysts, the files the operator's) finds
# whether one is held. It lists the locks of the processes this one can see (its PID
# namespace): a migration run from another container on a shared volume is not seen.
PROC_LOCKS = Path("/proc/locks")


def _file_lock_held(path: Path) -> bool:
    """Whether some process holds the lock file ``path`` (SQLite), taking nothing."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except PermissionError as error:
        # Not readable by this user: a read-only user must still read (the file is
        # only ever read here), so the kernel's table says whether it is held.
        held = _held_in_proc_locks(path)
        if held is None:
            raise RolloutError(
                f"{visible(path)}: cannot tell whether a run or a schema migration holds "
                f"this lock file: {error.strerror or error}, and {PROC_LOCKS} (where it "
                "could be found without opening it) cannot be read. Make the lock files "
                "beside the registry readable to this user (`chmod a+r`: they are only "
                "read, never written, by a command that reads)"
            ) from error
        return held
    try:
        # A shared lock is refused while the run holds its exclusive one; when it
        # is granted it is let go at once (a run starting in that instant is refused
        # as if another held the lock, and may start again).
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False


def _held_in_proc_locks(path: Path) -> bool | None:
    """Whether the kernel's table of file locks (PROC_LOCKS) has a lock granted on the
    file ``path`` (its device and inode, from ``stat``, which needs no read permission);
    None when there is no such table to read (not Linux)."""
    found = os.stat(path)
    where = f"{os.major(found.st_dev):02x}:{os.minor(found.st_dev):02x}:{found.st_ino}"
    try:
        table = PROC_LOCKS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; a waiter's line has "->" after
    # the number: only granted locks count (a waiter implies one granted anyway).
    return any(
        "->" not in fields and where in fields
        for fields in (line.split() for line in table.splitlines())
    )


def advisory_lock_holders(connection: Connection, name: str) -> list[int]:
    """The server processes (pids) holding this registry's ``name`` run lock, on
    PostgreSQL."""
    return list(
        connection.execute(
            text(
                f"select pid from pg_locks where {_KEY_GRANTED}"
                " and database = (select oid from pg_database"
                " where datname = current_database())"
            ),
            _key_halves(_advisory_key(connection, name)),
        ).scalars()
    )


# A bigint advisory key granted, as pg_locks shows it: its high and low 32 bits
# (_key_halves), objsubid 1 (a two-int4 key, a run's token, shows as 2).
_KEY_GRANTED = (
    "locktype = 'advisory' and granted and objsubid = 1"
    " and classid = cast(:high as oid) and objid = cast(:low as oid)"
)


def _key_halves(key: int) -> dict[str, int]:
    return {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}

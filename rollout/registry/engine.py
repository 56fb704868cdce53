"""Connections to the registry database, SQLite by default and PostgreSQL in production."""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from rollout.core.config import connection_option_problem
from rollout.core.controls import controls_shown, visible
from rollout.core.errors import EXIT_BAD_INPUT, RolloutError
from rollout.core.files import make_folder
from rollout.registry.readonly import read_only_refusal, read_only_uri, why_read_only


def normalize_url(url: str | URL) -> URL:
    """Accept the URLs people paste (``postgresql://``, ``postgres://``) and pick psycopg 3."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


# libpq's connection parameters that hold a secret: a URL may give them in its query
# (``postgresql://rollout@db/rollout?password=...``) as well as in its authority.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def registry_url_shown(url: str | URL) -> str:
    """``url`` as a message, a table or JSON may show it: the password in its authority
    and every secret parameter of its query (``password``, ``sslpassword``) as ``***``
    (SQLAlchemy's ``hide_password`` hides the first alone)."""
    parsed = normalize_url(url)
    shown = parsed._replace(query={}).render_as_string(hide_password=True)
    if not parsed.query:
        return shown
    pairs = [
        (key, "***" if key.lower() in _SECRET_PARAMETERS else value)
        for key, values in sorted(parsed.query.items())
        for value in ((values,) if isinstance(values, str) else values)
    ]
    return f"{shown}?{urlencode(pairs, quote_via=quote, safe='*')}"


def is_sqlite(url: str | URL) -> bool:
    return normalize_url(url).get_backend_name() == "sqlite"


def adbc_uri(url: str | URL) -> str:
    """The same database as an ADBC driver wants it (a libpq URI or a SQLite path)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    # SQLAlchemy renders a space of the database name as it is, which libpq's URI
    # parser refuses ("unexpected spaces"), though psycopg, given the name apart,
    # connects: the name encoded here whole; the rest SQLAlchemy encodes itself.
    # Its query likewise: SQLAlchemy writes a space as "+", which libpq's URI parser
    # keeps as a "+" (options=-c statement_timeout=5000 reached the server as
    # "-c+statement_timeout=5000", refused, through ADBC alone).
    before_query = (
        parsed.set(drivername="postgresql")
        ._replace(database=None, query={})
        .render_as_string(hide_password=False)
    )
    database = "" if parsed.database is None else "/" + quote(parsed.database, safe="")
    query = urlencode(sorted(parsed.query.items()), doseq=True, quote_via=quote)
    return f"{before_query}{database}{'?' if query else ''}{query}"


def _sqlite_pragmas(
    database: str,
    dbapi_connection: Any,
    _record: Any,
    *,
    read_only: bool = False,
    query_only: bool = False,
    busy_ms: int = 30000,
) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets the warehouse extract read while an action writes; foreign keys are
        # off by default in SQLite; the busy timeout turns lock contention into waiting.
        # A file opened read-only keeps the journal mode it has (setting one writes), and
        # so does one opened only to look at it (query_only: `rollout doctor`).
        if not (read_only or query_only):
            cursor.execute("PRAGMA journal_mode=WAL")
        if query_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as error:
        # Not a SQLite file, or a damaged one: the first statement on it says so. A
        # message naming the file, not a traceback; the registry is the source of
        # truth, so the way back is its backup.
        if isinstance(error, sqlite3.OperationalError):
            raise  # locked, read-only, ...: SQLAlchemy's own handling
        raise RolloutError(
            f"{database}: cannot read the registry: {error}; restore it from its backup "
            '(docs/runbook-operator.md, section 12, "Backups")'
        ) from None
    finally:
        cursor.close()


def require_sqlite_file(registry_url: str) -> None:
    """Refuse (exit 2) a SQLite registry whose file does not exist: opening it would
    make an empty one, and its folder, wherever a mistyped ``ROLLOUT_HOME`` points.
    Only ``rollout db upgrade`` and ``rollout sample`` make a registry."""
    url = normalize_url(registry_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database)
    if not path.exists():
        raise RolloutError(
            f"{visible(path)}: no registry there: check ROLLOUT_HOME (or "
            "ROLLOUT_REGISTRY_URL), or make one with `rollout db upgrade`"
        ).with_exit(EXIT_BAD_INPUT)


# What libpq (or psycopg) answers, before any server speaks, for a URL that cannot work
# however often it is tried: a connection option. Matched in the driver's message, the
# only thing it gives (no SQLSTATE: nothing came from a server); libpq's and psycopg's
# own words are English in rollout's process, which never sets LC_MESSAGES from the
# environment (Python sets LC_CTYPE alone, and gettext translates nothing in the "C"
# locale). The server's own answers (its login, its database) are read by SQLSTATE
# (_server_refused), in any language; the English lines below are what is left when the
# SQLSTATE cannot be had (a libpq older than 18, which traces no startup; the server
# gone between the two tries). A refused connection, a timeout, a host not found are
# none of these: failures that may pass, which the flows retry.
_URL_REFUSALS = (
    "password authentication failed",  # 28P01
    "no password supplied",
    "does not exist",  # 3D000 the database, 28000 the role
    "is not permitted to log in",  # 28000
    "no pg_hba.conf entry",  # 28000
    "pg_hba.conf rejects connection",  # 28000
    "permission denied for database",  # 42501: no CONNECT privilege
    # A connection option libpq (or psycopg) refuses before connecting: unknown, or a
    # value it cannot take (sslmode, target_session_attrs, gssencmode, ...: "invalid
    # X value"; a port out of range; connect_timeout, which psycopg reads itself).
    "invalid connection option",
    "invalid URI query parameter",  # the same, as ADBC's libpq reads the URL
    "invalid port number",
    "bad value for connect_timeout",
    "could not match",  # more ports (or hostaddrs) than hosts
    "could not parse network address",  # hostaddr
    "invalid require_auth method",
    "invalid value for parameter",  # 22023: options=-c NAME=VALUE the server refuses
    "unrecognized configuration parameter",  # 42704: options=-c NAME=... it has no NAME
)
# "invalid sslmode value", "invalid integer value ... for connection option", ...
_INVALID_OPTION_VALUE = re.compile(r"\binvalid [a-z_ ]+ value\b")

# The SQLSTATEs of a server's answer that turn the URL itself down: class 28 (a wrong
# or missing password, no such role, a role that may not log in, pg_hba.conf), 3D000
# (no such database), 42501 (no CONNECT privilege), 42704 and 22023 (options=-c
# NAME=VALUE: no such setting, a value it cannot take). Others (53300 too many
# connections, 57P03 starting up or shutting down, ...) may pass.
_REFUSING_SQLSTATES = ("3D000", "42501", "42704", "22023")
# libpq writes a server's answer as "SEVERITY:  message" after the "... failed: " of
# the attempt (the severity in the server's language, the two spaces always).
_SERVER_ANSWERED = re.compile(r"failed: [^:\n]+:  ")
_TRACED_SQLSTATE = re.compile(rb'\tErrorResponse\t.*? C "([0-9A-Z]{5})"')
_PROBE_SECONDS = 10.0


def _refusing(sqlstate: str) -> bool:
    return sqlstate.startswith("28") or sqlstate in _REFUSING_SQLSTATES


def _server_sqlstates(conninfo: str) -> list[str]:
    """The SQLSTATE of each error the server answers a connection to ``conninfo``
    (a libpq URI) with, read from libpq's protocol trace: psycopg and ADBC give a failed
    connection none, and the message is in the server's lc_messages. One connection
    more, made only after the server has answered one with an error. Empty when none
    can be had (libpq before 18 traces no startup; no answer within _PROBE_SECONDS).
    The trace holds what the client sent too: an unnamed file of this process, read
    once and closed."""
    import select
    import tempfile
    import time

    from psycopg import pq

    deadline = time.monotonic() + _PROBE_SECONDS
    with tempfile.TemporaryFile() as trace:
        connection = pq.PGconn.connect_start(conninfo.encode())
        try:
            if connection.status == pq.ConnStatus.BAD:
                return []
            connection.trace(trace.fileno())
            connection.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            status = pq.PollingStatus.WRITING
            while status not in (pq.PollingStatus.OK, pq.PollingStatus.FAILED):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                waiting = [connection.socket]
                if status == pq.PollingStatus.READING:
                    select.select(waiting, [], [], left)
                else:
                    select.select([], waiting, [], left)
                status = connection.connect_poll()
            connection.untrace()  # flushes it
        finally:
            connection.finish()
        trace.seek(0)
        return [code.decode() for code in _TRACED_SQLSTATE.findall(trace.read())]


def _server_refused(message: str, conninfo: str | None) -> bool | None:
    """Whether the server's answer in ``message`` turned the URL down, by its SQLSTATE
    (``_server_sqlstates``); None when no server answered or its SQLSTATE cannot be
    had: the caller reads the message then."""
    if conninfo is None or not _SERVER_ANSWERED.search(message):
        return None
    try:
        sqlstates = _server_sqlstates(conninfo)
    except Exception:  # psycopg's own error, an OSError: no SQLSTATE, the text decides
        return None
    if not sqlstates:
        return None
    return all(_refusing(sqlstate) for sqlstate in sqlstates)


class RegistryURLRefused(RolloutError):
    """The registry's server turned down the URL itself (the login, the database, an
    option): a setting to fix, not a failure to wait out; exit code 2. ``reason`` is the
    server's answer on one line, which names the host, the user or the database it
    turned down (drivers never repeat a password)."""

    def __init__(self, reason: str) -> None:
        self.reason = controls_shown(reason)
        super().__init__(f"environment variable ROLLOUT_REGISTRY_URL: {self.reason}")
        self.exit_code = EXIT_BAD_INPUT


def url_refused(error: BaseException, url: str | URL | None = None) -> RegistryURLRefused | None:
    """What a driver's failure to connect (psycopg's, ADBC's) to ``url`` is when the
    server turned the URL down (by the SQLSTATE of its answer, in whatever language it
    answered), or libpq or psycopg did (``_URL_REFUSALS``): a RegistryURLRefused, which
    every caller, the CLI and the flows alike, treats as the user's to fix. None
    otherwise."""
    message = str(error)
    reason = " ".join(message.split())
    conninfo = None if url is None or is_sqlite(url) else adbc_uri(url)
    if (by_sqlstate := _server_refused(message, conninfo)) is not None:
        return RegistryURLRefused(reason) if by_sqlstate else None
    if not any(refusal in reason for refusal in _URL_REFUSALS) and not (
        _INVALID_OPTION_VALUE.search(reason)
    ):
        return None
    return RegistryURLRefused(reason)


def _refused_url(context: ExceptionContext) -> BaseException | None:
    """``handle_error``: a connection turned down raises RegistryURLRefused instead
    (``url_refused``). Only as a connection is made: a statement's errors are its own."""
    if context.connection is not None:
        return None
    url = context.engine.url if context.engine is not None else None
    return url_refused(context.original_exception, url)


# query_canceled: the server ended a statement because its statement_timeout passed (set
# by the operator on rollout's role or database, or in the URL's options=-c ...), or
# because someone asked it to (pg_cancel_backend). Either way someone bounded or
# stopped the statement on purpose, unlike lock_timeout (55P03), a deadlock (40P01) or a
# serialization failure (40001), which a next try may not meet. rollout's own cancel
# on a stop never reaches a caller as one: the stop is what is raised (psycopg's
# KeyboardInterrupt handling, _cancel_on_stop, rollout.registry.parallel).
STATEMENT_CANCELLED = "57014"


class RegistryStatementCancelled(RolloutError):
    """The registry's server ended a statement: its statement_timeout, or a cancel
    asked of it. Not a failure that passes by itself (the flows do not retry it: the
    statement ran its bound once already, and again would take as long): exit 1, one
    line naming the server's reason and the setting. ``reason``: the server's words."""

    def __init__(self, reason: str) -> None:
        self.reason = controls_shown(" ".join(reason.split()))
        super().__init__(
            f"the registry database ended a statement ({self.reason}; SQLSTATE "
            f"{STATEMENT_CANCELLED}): a statement_timeout set for rollout's role or "
            "database (ALTER ROLE ... SET statement_timeout), or in ROLLOUT_REGISTRY_URL's "
            "options=-c statement_timeout=..., bounds each statement; raise or unset it "
            "for rollout, or find who cancelled it (pg_cancel_backend). Not retried; what "
            "the statement was writing was rolled back"
        )


def statement_cancelled(error: BaseException) -> RegistryStatementCancelled | None:
    """``error`` (psycopg's or ADBC's) as a RegistryStatementCancelled when the server
    ended the statement (SQLSTATE 57014), None otherwise."""
    if getattr(error, "sqlstate", None) != STATEMENT_CANCELLED:
        return None
    # psycopg's primary message, or ADBC's "CANCELLED: [libpq] ... ERROR:  <message>".
    diag = getattr(error, "diag", None)
    reason = getattr(diag, "message_primary", None) or str(error).split("ERROR:")[-1]
    return RegistryStatementCancelled(reason.split(". SQLSTATE")[0].strip())


def _cancelled_statement(context: ExceptionContext) -> BaseException | None:
    """``handle_error``: a statement the server ended (``statement_cancelled``) raises
    RegistryStatementCancelled instead of an OperationalError the flows would retry."""
    if context.connection is None:
        return None
    return statement_cancelled(context.original_exception)


# How long a stop waits for the server to take a cancel request, at most.
STOP_CANCEL_SECONDS = 5.0


def _cancel_on_stop(context: ExceptionContext) -> None:
    """``handle_error``: a stop that is no KeyboardInterrupt (Prefect's TerminationSignal,
    which a flow run's SIGTERM raises) landing while a statement runs asks the server to
    cancel it. psycopg does so on a KeyboardInterrupt alone (the CLI's ``Stopped`` is
    one); on anything else it leaves the statement to run on in the server after the
    process is gone, holding its locks (a batch's rows, the writers' lock) against the
    next run until it is done, only to be rolled back. SQLAlchemy then closes the
    connection, as for any such stop."""
    if isinstance(context.original_exception, Exception | KeyboardInterrupt):
        return
    connection = context.connection
    # Nothing here may raise: an error a handler raises replaces the stop.
    with suppress(Exception):  # a connection closed, a statement ended, the server gone
        if connection is None or connection.invalidated:
            return
        cancel = getattr(connection.connection.dbapi_connection, "cancel_safe", None)
        if cancel is not None:
            cancel(timeout=STOP_CANCEL_SECONDS)


@contextmanager
def _as_engine_errors(driver: Any, *, connecting: str | URL | None = None) -> Iterator[None]:
    """ADBC's OperationalError (a server not there, a connection dropped or cancelled,
    a timeout: ADBC's IO, CANCELLED, TIMEOUT and UNKNOWN) raised as SQLAlchemy's, which
    wraps psycopg's and sqlite3's alike: the class the flows retry (``flows.common
    .is_transient``) and the CLI reports in one line, exit 1. ``connecting``, the URL
    being connected to: one the server turns down raises RegistryURLRefused. A
    statement the server ended (a statement_timeout) raises RegistryStatementCancelled,
    as through an engine. Other errors as they are."""
    import adbc_driver_manager

    try:
        yield
    except driver.Error as error:
        if connecting is not None and (refused := url_refused(error, connecting)) is not None:
            raise refused from None
        if (ended := statement_cancelled(error)) is not None:
            raise ended from error
        if isinstance(error, adbc_driver_manager.OperationalError):
            raise sqlalchemy_exc.OperationalError(None, None, error) from error
        raise


@contextmanager
def adbc_connect(url: str | URL) -> Iterator[Any]:
    """An ADBC DB-API connection to the registry at ``url`` (a SQLAlchemy URL), closed
    on leaving. Its failures read as an engine's do: a URL the server turns down raises
    RegistryURLRefused; a server not there, or gone while the connection is used, raises
    SQLAlchemy's OperationalError (``_as_engine_errors``)."""
    if is_sqlite(url):
        import adbc_driver_sqlite.dbapi as driver
    else:
        if (problem := connection_option_problem(normalize_url(url))) is not None:
            raise RegistryURLRefused(problem)
        import adbc_driver_postgresql.dbapi as driver
    with _as_engine_errors(driver, connecting=url):
        connection = driver.connect(adbc_uri(url))
    try:
        with _as_engine_errors(driver):
            yield connection
    finally:
        connection.close()


def make_engine(
    url: str | URL, *, query_only: bool = False, busy_seconds: float = 30, **kwargs: Any
) -> Engine:
    """The engine of the registry at ``url``. ``query_only`` (SQLite; `rollout doctor`,
    which only looks): no statement may write, the file's journal mode is left as it is
    (setting WAL rewrote the header of a registry in another mode, waiting for its write
    lock), and a lock is waited for ``busy_seconds`` at most."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        reason = None
        if database and database != ":memory:" and not database.startswith("file:"):
            reason = why_read_only(database)
            if reason is None:
                make_folder(Path(database).parent)
        if reason is not None and not Path(database).exists():
            # Only ``db upgrade`` and ``sample`` get here (readers are refused a registry
            # that is not there): one line saying why it cannot be made, not SQLite's
            # "unable to open database file" naming neither the file nor why.
            raise read_only_refusal(database, reason)
        if reason is not None:
            # A file this process may not write (an analyst's read access, a read-only
            # mount): opened read-only, so readers read; writers are refused in one line
            # naming the file (_refuse_writing), not "unable to open database file".
            uri = read_only_uri(database, reason)
            engine = create_engine(
                parsed,
                creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                **kwargs,
            )
            event.listen(
                engine,
                "connect",
                functools.partial(_sqlite_pragmas, database, read_only=True),
            )
            event.listen(
                engine, "handle_error", functools.partial(_refuse_writing, database, reason)
            )
            return engine
        if query_only:
            kwargs.setdefault("connect_args", {}).setdefault("timeout", busy_seconds)
        engine = create_engine(parsed, **kwargs)
        event.listen(
            engine,
            "connect",
            functools.partial(
                _sqlite_pragmas,
                database,
                query_only=query_only,
                busy_ms=int(busy_seconds * 1000),
            ),
        )
        return engine
    if (problem := connection_option_problem(parsed)) is not None:
        raise RegistryURLRefused(problem)
    # No server-side prepared statements (psycopg prepares a statement run 5 times):
    # PostgreSQL then reuses a generic plan made without the values, on the statistics
    # of that moment, for every later run of the statement. An enforcement's batches
    # run each statement 50 times with other ids while the tables it writes grow from
    # empty to 500k rows: the plan of the first batches (a scan of the whole table, then
    # tiny) made its audit insert 100 s of a 137 s run at npm scale. Planned each time
    # for its own values, a set-based statement costs a millisecond more.
    connect_args = {"prepare_threshold": None, **kwargs.pop("connect_args", {})}
    engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    event.listen(engine, "handle_error", _refused_url)
    event.listen(engine, "handle_error", _cancel_on_stop)
    event.listen(engine, "handle_error", _cancelled_statement)
    return engine


def _refuse_writing(database: str, reason: str, context: ExceptionContext) -> BaseException | None:
    """``handle_error`` of a SQLite engine reading ``database``, which this process may
    not write (``reason``): a statement that writes (SQLite's "attempt to write a
    readonly database") raises the one-line refusal instead."""
    error = context.original_exception
    if not isinstance(error, sqlite3.OperationalError):
        return None
    if getattr(error, "sqlite_errorcode", None) is None or (
        error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_READONLY
    ):
        return None
    return read_only_refusal(database, reason)


@contextmanager
def begin_writing(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` for a transaction that writes. On SQLite it takes the
    database's write lock first: a transaction that reads and then writes fails at once
    with "database is locked" when another process committed in between (WAL's snapshot
    rule, which the busy timeout does not cover), so an enforcement beside ELV's
    enrolment or a send stopped half way. Taken first, the lock is waited for, as the
    busy timeout intends. (A no-op UPDATE takes it: SQLite locks for writing at the
    statement's start, whatever rows it matches.) PostgreSQL: ``engine.begin()``."""
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("UPDATE accounts SET id = id WHERE 0")
        yield connection


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work commits together or not at all."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session

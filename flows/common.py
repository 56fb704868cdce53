"""Wiring shared by the flows: the run's runtime (settings, plan, registry, warehouse),
the day, the actor, markdown, and how a run fails: a user error in one line, transient
I/O errors retried."""

from __future__ import annotations

import functools
import http.client
import inspect
import logging
import os
import re
import signal
import urllib.error
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime
from typing import Annotated, Any, ParamSpec, TypeVar

import python_http_client.exceptions
from prefect import Task, get_run_logger
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import ParameterTypeError, TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff
from pydantic import Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from rollout.core.clock import require_data_day
from rollout.core.config import Settings
from rollout.core.controls import controls_shown
from rollout.core.errors import RolloutError, input_output_failure
from rollout.core.names import SAFE_NAME_PATTERN
from rollout.core.output import markdown_text as cell
from rollout.core.plan import Day
from rollout.core.stopping import interrupted_query
from rollout.notify.drain import MAX_CONCURRENCY
from rollout.runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")

# Every flow's day parameter (``as_of``), as Prefect validates it (with pydantic) from
# the UI, `prefect deployment run --param` or a schedule: a day written YYYY-MM-DD, as
# a plan's dates and the CLI's --as-of are. pydantic alone read digits (1646092800,
# typed or quoted) as seconds since 1970 and a midnight with an offset as its calendar
# day: a run of another day than asked, its data written under it. The server checks
# the deployment's schema when a run is made (the UI's form, `prefect deployment run`,
# the API), but its "format: date" only as a note: the pattern makes it refuse there,
# naming the parameter, a day not written YYYY-MM-DD with a month 01-12 and a day 01-31
# (a 2022-02-30 gets by it: the run refuses it when it starts, as it did every day).
DAY_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
FlowDay = Annotated[Day, Field(json_schema_extra={"pattern": DAY_PATTERN})]

# Every flow's name parameter (a phase's, a brown-out's), as a plan writes one
# (rollout.core.names.SAFE_NAME_PATTERN): refused before the run starts and, the pattern
# in the deployment's schema, by the server when the run is made, naming the parameter.
# An empty or blank value (`--param phase=""`, the UI's form left empty) made a run that
# failed once a worker started it, as the CLI refuses an empty path at once (path_given).
FlowName = Annotated[str, Field(pattern=SAFE_NAME_PATTERN)]

# The counts the flows take, bounded as the CLI's options are: refused before the run
# starts (and by the server when the run is made: the bound is in the deployment's
# schema), naming the parameter. A 0 typed for ``concurrency`` ran a notify run that sent
# nothing through SendGrid and ended Completed, every email left queued.
Concurrency = Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]
AtLeastOne = Annotated[int, Field(ge=1)]
Seconds = Annotated[int, Field(ge=1)]
NotNegativeSeconds = Annotated[float, Field(ge=0)]


def day_or_today(as_of: date | None) -> date:
    """The as-of day: the given one, else the UTC day the flow run was scheduled for
    (the week is the 7 days before); outside a flow run, today's. A scheduled run that
    starts late (the pool paused over midnight for an upgrade, runbook section 11) still
    does its own day: taking the day it ran, two late runs did one day twice and the
    day before never had its metrics, cohorts or report. A run started by hand is
    scheduled when it is made: today."""
    if as_of is not None:
        return as_of
    scheduled = flow_run.scheduled_start_time
    if scheduled is None:
        return datetime.now(UTC).date()
    return scheduled.astimezone(UTC).date()


def data_day_or_today(as_of: date | None) -> date:
    """The day of a run that computes and keeps a day's data (metrics, cohorts, the
    report): ``day_or_today``, refused when after today before the run opens anything
    (as the library and the CLI refuse it): it has no data yet."""
    day = day_or_today(as_of)
    require_data_day(day)
    return day


def key_for(*parts: str) -> str:
    """An artifact key from its parts: Prefect allows lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def artifact_key(prefix: str, as_of: date) -> str:
    """``<prefix>-YYYY-MM-DD``, a day's artifact."""
    return key_for(prefix, as_of.isoformat())


def run_actor(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """Who the audit ledger names: $ROLLOUT_ACTOR if the deployment sets it, else this run."""
    if environ.get("ROLLOUT_ACTOR"):
        return settings.actor
    return f"prefect/{flow_run.name or 'local'}"


# --- one runtime per flow run ----------------------------------------------------------

# The runtime of the flow run in progress in this thread. Tasks reach it through
# runtime(): a task's parameters must stay serialisable (Prefect records them), so the
# Runtime, with its engine, is never one. A task runs in its flow's thread and context,
# so it sees the flow run's runtime; a subflow sets its own and puts the parent's back.
_RUNTIME: ContextVar[Runtime | None] = ContextVar("rollout_flow_runtime", default=None)


# How long a run waits for the warehouse another process holds open before it fails.
# The pipeline's own runs hold it for seconds to a minute: runs that come due together
# (the late runs of a pool paused over a few nights, a manual metrics run beside the
# daily one) take turns instead of failing. A notebook left open is waited for no
# longer than this, then named in the run's failure.
WAREHOUSE_WAIT_SECONDS = 600


def _log_waiting(message: str) -> None:
    get_run_logger().warning("%s", message)


def with_runtime(fn: Callable[P, R]) -> Callable[P, R]:
    """For every flow function, under ``@flow`` and ``@fail_on_user_error``: one Runtime
    for the run, made as it starts and closed as it ends, whatever the outcome. Its parts
    are made on first use, so a bad setting raises in the flow body, where
    ``fail_on_user_error`` (outside this, so that Prefect still sees its signature) turns
    it into the run's one-line failure."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        made = Runtime(warehouse_wait=WAREHOUSE_WAIT_SECONDS, on_warehouse_wait=_log_waiting)
        with stops_kept(), _running_with(made):
            return fn(*args, **kwargs)

    return run


@contextmanager
def stops_kept() -> Iterator[None]:
    """A stop stays a stop in a flow run. Prefect's SIGTERM handler (a worker stopped,
    systemd's stop, a run cancelled) raises TerminationSignal, with which Prefect ends the
    run Crashed, or Cancelled when it was cancelled. One landing while DuckDB works (an
    ingest, the metrics, a cohort build, the report) became RuntimeError("Query
    interrupted"): the run ended Failed with a traceback, read as a bug, and a cancelled
    run was not Cancelled. That error is raised again as the stop it stands for: in a
    flow run only a signal interrupts a query (a worker's stop and cancel are SIGTERM;
    Ctrl-C's KeyboardInterrupt ends the run Crashed alike). The SIGTERM handler is left
    as Prefect installed it: wrapped, Prefect no longer knew it for its own and a
    cancelled run ended Crashed (prefect.utilities.engine.capture_sigterm)."""
    try:
        yield
    except Exception as error:
        # DuckDB swallows the exception the signal's handler raised and raises this
        # (or its InterruptException, the stop's interrupt: interrupting_on_stop).
        if not interrupted_query(error):
            raise
        raise TerminationSignal(signal.SIGTERM) from error


@contextmanager
def _running_with(current: Runtime) -> Iterator[Runtime]:
    """``current`` as the runtime of what runs inside (a flow run), closed afterwards."""
    token = _RUNTIME.set(current)
    try:
        yield current
    finally:
        _RUNTIME.reset(token)
        current.close()


def runtime() -> Runtime:
    """The runtime of the flow run in progress: its tasks call this, with no parameter."""
    current = _RUNTIME.get()
    if current is None:
        raise RuntimeError(
            "no runtime: a rollout task runs inside a flow whose function is @with_runtime"
        )
    return current


def table(rows: Sequence[tuple[Any, ...]], header: tuple[str, ...] = ("what", "value")) -> str:
    """A Markdown table, a name then its values (right-aligned); every cell shown as text
    (``cell``)."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
    ]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


# --- how runs fail ---------------------------------------------------------------------


def fail_on_user_error(fn: Callable[P, R]) -> Callable[P, R | State]:
    """For every flow function, under ``@flow``: a RolloutError (bad input, a guard's
    refusal, missing download days) ends the run Failed with the error's message as the
    state message, and nothing more; so does an error of the run's surroundings, in the
    one line the CLI prints (``failure_line``: a registry database that did not answer
    through the tasks' retries, a file the run could not write). It is
    the user's to fix, so no traceback and no "engine exited with unexpected exception".
    The error is the state's data: a parent flow calling this one (or
    ``state.result()``) gets it raised as it was. Anything else still fails the run the
    way a crash should, traceback and all.

    Not for tasks: a task returning a Failed state hands the state itself to the flow.
    A task with ``IO_RETRIES`` raises instead; its retry condition turns a RolloutError
    down without logging a traceback, and the flow gets the error raised."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R | State:
        failure: BaseException
        try:
            return fn(*args, **kwargs)
        except RolloutError as error:
            failure, message = error, str(error)
        except Exception as error:
            line = failure_line(error)
            if line is None:
                raise
            failure, message = error, line
        # One line, as the CLI prints it (``labelled``): a value or a library's words
        # holding a line break or an ESC are shown escaped, in the UI and on a terminal.
        return Failed(message=controls_shown(message), data=failure)

    # Prefect validates parameters against this wrapper, resolving string annotations
    # in this module's globals: hand it the function's own, already resolved.
    run.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return run


# What Prefect's engine logs, with the traceback, when a deployed run's flow ends Failed:
# it asks the final state for its result, which raises the run's error again.
ENGINE_EXIT_MESSAGE = "Engine execution exited with unexpected exception"


def registry_away(error: BaseException) -> str | None:
    """One line for a registry database that did not answer, or dropped the connection
    (the error, or one it came from, is SQLAlchemy's OperationalError or InterfaceError,
    through an engine or ADBC): the driver's reason, as the CLI gives it, and what to do.
    By the time a flow sees one, its task was retried (IO_RETRIES) and the server stayed
    away: SQLAlchemy's own text (three lines, a link to its docs) and a traceback read as
    a bug in rollout. None for any other error."""
    for current in _chain(error):
        if isinstance(current, OperationalError | InterfaceError):
            # The CLI's line for it (input_output_failure), and what a run's reader does.
            return f"{input_output_failure(current)}; run the deployment again once it answers"
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then each error it came from (its cause, else its context), each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def failure_line(error: BaseException) -> str | None:
    """The one line a run fails with for an error of its surroundings, as the CLI says
    it: the registry away (``registry_away``), or an operating-system or DuckDB
    input/output error naming its file (a full disk, a folder this user may not write:
    ``input_output_failure``). None for anything else, a bug, which keeps its traceback."""
    return registry_away(error) or input_output_failure(error)


class _NoTracebackForUserErrors(logging.Filter):
    """No traceback in a run's log for a user error: a RolloutError (bad input, a
    guard's refusal: ``fail_on_user_error``) or parameters that do not fit the flow (an
    ``as_of`` of 2022-13-01 typed in the UI); nor for an error of the run's surroundings
    that the CLI tells in one line (``failure_line``: the registry away through every
    retry, a file it could not write). The state's message says what in one line;
    a traceback made it read as a bug, and a bug's traceback is what the release
    manager's runbook says to look for. Any other error keeps it.

    - The engine's last word on a deployed run ("unexpected exception", raised again
      from the final state) is dropped for a RolloutError: "Finished in state Failed"
      already said it. For refused parameters it becomes that one line (nothing else in
      the run's log says why: Prefect's own lines about them stay in the worker's output).
    - A task without retries (enforcement) that raises one logs "Task run failed with
      exception: <the error>": kept, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.msg == ENGINE_EXIT_MESSAGE and isinstance(error, ParameterTypeError):
            record.msg = "the run's parameters were refused, the flow did not start: %s"
            record.args = (str(error),)
        elif not isinstance(error, RolloutError) and (error is None or failure_line(error) is None):
            return True
        elif record.msg == ENGINE_EXIT_MESSAGE:
            return False
        record.exc_info = record.exc_text = None
        return True


# On the loggers of flow and task runs, whose records go to the run's log on the server
# and to the worker's output. Installed when a flow module is imported, as a deployed
# run's process does before it runs the flow.
for _name in ("prefect.flow_runs", "prefect.task_runs"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _NoTracebackForUserErrors) for f in _logger.filters):
        _logger.addFilter(_NoTracebackForUserErrors())


def is_transient(error: BaseException) -> bool:
    """Whether an error may pass by itself: a dropped or refused database connection,
    a locked SQLite file, a network error, SendGrid's 5xx or 429. A RolloutError never
    is (bad input, a refusal: the same run fails the same way), whatever caused it."""
    if isinstance(error, RolloutError):
        return False
    for current in _chain(error):
        if isinstance(current, OperationalError) or (
            isinstance(current, DBAPIError) and current.connection_invalidated
        ):
            return True
        if isinstance(current, python_http_client.exceptions.HTTPError):
            return current.status_code >= 500 or current.status_code == 429
        if isinstance(
            current,
            urllib.error.URLError | TimeoutError | ConnectionError | http.client.HTTPException,
        ):
            return True
    return False


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """A task's ``retry_condition_fn``: retry only what :func:`is_transient` says may pass."""
    data = state.data
    # A raised error comes as it is; a returned Failed state holds it in a result record.
    error = data if isinstance(data, BaseException) else getattr(data, "result", None)
    return isinstance(error, BaseException) and is_transient(error)


# For tasks that read or write the registry, the warehouse or SendGrid: waits of 10, 20
# and 40 s ride out a database failover or a provider's bad minute. Only transient errors
# are retried; every such task is safe to run again (each effect has a natural key).
# Never for enforcement (flows/phases.py): it is exactly-once anyway, but a retry after a
# guard refused it, or after it half-ran under a lock another run then took, is not a
# decision a timer should make; a release manager reruns it.
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_condition_fn": retry_if_transient,
}


class _ToRunLog(logging.Handler):
    def __init__(self, run_logger: logging.LoggerAdapter[Any], level: int) -> None:
        super().__init__(level)
        self._run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        self._run_logger.log(record.levelno, "%s", record.getMessage())


@contextmanager
def library_logs_in_run_log(name: str = "rollout", level: int = logging.WARNING) -> Iterator[None]:
    """Show the library's warnings (a SendGrid retry, say) in this run's log. Prefect
    keeps only its own loggers' records, and only from threads it runs; the sender logs
    from the drain's send threads. Use inside a task or flow."""
    handler = _ToRunLog(get_run_logger(), level)  # type: ignore[arg-type]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)

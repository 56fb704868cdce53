"""Failures must show: user errors end a run Failed with one line, failed emails fail the
notify run (after its artifact), transient I/O errors are retried and nothing else is.

Against the temporary Prefect server and the local SendGrid server. The notify runs use
a registry of their own with 30 queued notices, on a day the plan has nothing due.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from python_http_client.exceptions import HTTPError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from flows import cohorts as cohort_flows
from flows import metrics as metrics_flows
from flows import notify as notify_flows
from flows import report as report_flows
from flows.common import fail_on_user_error, is_transient
from rollout.core.config import load_settings
from rollout.core.controls import CONTROL_CHARACTERS, controls_shown, quoted, shell_word
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.plan import load_plan
from rollout.demo.sample import generate_sample
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.phases.brownouts import refuse_unplanned
from rollout.registry import Registry
from rollout.registry.engine import (
    RegistryStatementCancelled,
    RegistryURLRefused,
    adbc_connect,
    make_engine,
)
from rollout.registry.migrate import upgrade
from tests.factories import LATE_NOTICE, NotificationFactory, bound_to
from tests.hostile import PROSE, TERMINAL
from tests.support.artifacts import logs_since, read_markdown, run_as_deployed
from tests.support.env import without_rollout_settings

# Nothing listens on port 1: connecting is refused at once.
SERVER_AWAY = "postgresql://u:s3cret@127.0.0.1:1/db"

ROOT = Path(__file__).resolve().parents[2]
QUIET_DAY = date(2021, 6, 1)  # the reference plan has no mailing due: only the outbox is sent
DATA_ENDS = date(2022, 1, 31)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "npm-2022.yaml"))
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):  # 127.0.0.1 goes direct
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def outbox_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None) -> Path:
    """A registry with 30 phase notices queued, nothing else."""
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    engine = make_engine(load_settings().registry_url)
    upgrade(engine)
    with bound_to(engine):
        NotificationFactory.create_batch(30, context=LATE_NOTICE)
    engine.dispose()
    return tmp_path


@pytest.fixture
def sendgrid(monkeypatch: pytest.MonkeyPatch, outbox_home: Path) -> Iterator[DevSendGrid]:
    with DevSendGrid() as server:
        monkeypatch.setenv("SENDGRID_API_KEY", server.api_key)
        monkeypatch.setenv("ROLLOUT_SENDGRID_URL", server.url)
        yield server


# --- notify ----------------------------------------------------------------------------


def test_refused_emails_fail_the_run_after_the_artifact_and_a_retry_sends_them(
    prefect_server: None, sendgrid: DevSendGrid
) -> None:
    # One 500 (retried), then 20 refusals; one request at a time, so in that order.
    sendgrid.script([{"status": 500}] + [{"status": 400}] * 20)
    start = datetime.now(UTC)
    state = notify_flows.notify(as_of=QUIET_DAY, concurrency=1, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("20 emails failed: SendGrid answered 400")
    assert "\n" not in state.message and "Traceback" not in state.message
    artifact = read_markdown(f"notify-{QUIET_DAY}")
    assert "| failed | 20 |" in artifact and "| sent | 10 |" in artifact
    assert "| retried after 5xx/429 | 1 |" in artifact
    logs = logs_since(start)
    assert "SendGrid answered 500" in logs and "(status 500); retry 1/4" in logs
    assert sendgrid.api_key not in logs and "Traceback" not in logs

    # A plain rerun leaves them alone; retry_failed sends them through the same sender.
    again = notify_flows.notify(as_of=QUIET_DAY, return_state=True)
    assert again.is_completed(), again.message
    assert again.result()["sent"] == 0 and len(sendgrid.messages) == 10
    retried = notify_flows.notify(as_of=QUIET_DAY, retry_failed=True, return_state=True)
    assert retried.is_completed(), retried.message
    assert retried.result() == {"queued": 0, "sent": 20, "failed": 0}
    assert len(sendgrid.messages) == 30
    assert "| failed before, queued again \\(retry\\_failed\\) | 20 |" in read_markdown(
        f"notify-{QUIET_DAY}"
    )


def test_the_file_outbox_refuses_a_retry_of_emails_meant_for_sendgrid(
    prefect_server: None, sendgrid: DevSendGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    sendgrid.script([{"status": 400}] * 5)
    assert notify_flows.notify(as_of=QUIET_DAY, concurrency=1, return_state=True).is_failed()
    # No key in this worker's environment, none in the Secret block: the file outbox.
    monkeypatch.delenv("SENDGRID_API_KEY")
    Secret(value="").save(notify_flows.SECRET_BLOCK, overwrite=True)
    state = notify_flows.notify(as_of=QUIET_DAY, retry_failed=True, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(
        "5 emails waiting to be sent were last attempted through SendGrid"
    )
    assert "SENDGRID_API_KEY" in state.message and "Traceback" not in state.message
    assert not list((load_settings().outbox_dir).glob("*.eml"))


def test_a_transient_registry_error_is_retried_and_a_user_error_is_not(
    prefect_server: None, outbox_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = notify_flows.queue_due

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append("flaky")
        if len(calls) == 1:
            raise OperationalError("select 1", {}, ConnectionError("server closed the connection"))
        return real(*args, **kwargs)

    # The same task, without the waits between attempts.
    monkeypatch.setattr(
        notify_flows, "queue_task", notify_flows.queue_task.with_options(retry_delay_seconds=0)
    )
    monkeypatch.setattr(notify_flows, "queue_due", flaky)
    state = notify_flows.notify(as_of=QUIET_DAY, send=False, return_state=True)
    assert state.is_completed(), state.message
    assert calls == ["flaky", "flaky"]

    def refused(*args: Any, **kwargs: Any) -> Any:
        calls.append("refused")
        raise BadInput(None, None, "the plan has no phase 'top-1000'")

    calls.clear()
    monkeypatch.setattr(notify_flows, "queue_due", refused)
    state = notify_flows.notify(as_of=QUIET_DAY, send=False, return_state=True)
    assert state.is_failed() and calls == ["refused"]
    assert state.message == "the plan has no phase 'top-1000'"
    with pytest.raises(BadInput):  # a caller (a parent flow) gets the error as raised
        state.result()


def test_a_registry_url_the_server_turns_down_fails_the_run_at_once_in_one_line(
    prefect_server: None,
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    turned_down_postgres_urls: dict[str, str],
) -> None:
    """A wrong password is the operator's to fix: retried, it failed after 70 s with a
    traceback, as if the server had been away."""
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", turned_down_postgres_urls["a wrong password"])
    start = datetime.now(UTC)
    state = notify_flows.notify(as_of=QUIET_DAY, send=False, return_state=True)
    assert datetime.now(UTC) - start < timedelta(seconds=10)  # the first retry waits 10 s
    assert state.is_failed()
    assert state.message.startswith("environment variable ROLLOUT_REGISTRY_URL: ")
    assert state.message.endswith('password authentication failed for user "rollout_password"')
    logs = logs_since(start)
    assert "AwaitingRetry" not in logs
    assert "Traceback" not in logs and "s3cret" not in logs


def test_a_registry_away_through_every_retry_fails_the_run_in_one_line_and_no_traceback(
    prefect_server: None,
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The registry's server stopped (a failover that did not come back, a restart that
    took too long) is retried, and once the retries are spent the run fails as the CLI
    does, in one line naming the registry database and the driver's reason: it ended
    with SQLAlchemy's message over three lines (a link to its docs among them) and three
    tracebacks in the run's log, "Engine execution exited with unexpected exception"
    the last, which read as a bug in rollout."""
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", SERVER_AWAY)
    # The same task, without the waits between attempts.
    monkeypatch.setattr(
        report_flows, "build", report_flows.build.with_options(retry_delay_seconds=0)
    )
    start = datetime.now(UTC)
    state = report_flows.report(as_of=DATA_ENDS, return_state=True)
    assert state.is_failed()
    message = state.message
    assert message.startswith("the registry database: ") and "Connection refused" in message
    assert message.endswith("run the deployment again once it answers")
    assert "\n" not in message and "sqlalche.me" not in message and "s3cret" not in message
    assert "Retry 3/3" in logs_since(start)  # retried all the same
    with pytest.raises(OperationalError):  # a parent flow gets the error as raised
        state.result()

    error, logs = run_as_deployed(report_flows.report, as_of=DATA_ENDS.isoformat())
    assert isinstance(error, OperationalError)
    assert f"Finished in state Failed({message!r})" in logs or message in logs
    assert "Traceback" not in logs and "unexpected exception" not in logs
    assert "s3cret" not in logs


def test_a_file_the_run_cannot_write_fails_it_in_one_line_as_the_cli_says_it(
    prefect_server: None, tmp_path: Path, sample_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reports` made a file (a full disk, a permission: an operating-system error the
    run cannot get past): `rollout report` says so in one line naming the path; the
    report flow ended with three tracebacks, "Engine execution exited with unexpected
    exception" the last, read as a bug."""
    (sample_home / "reports").write_text("not a folder")
    error, logs = run_as_deployed(report_flows.report, as_of=DATA_ENDS.isoformat())
    assert isinstance(error, NotADirectoryError)
    shown = f"{sample_home / 'reports' / DATA_ENDS.isoformat()}: Not a directory"
    assert f"Finished in state Failed({shown!r})" in logs
    assert "Traceback" not in logs and "unexpected exception" not in logs


@pytest.mark.parametrize("value", TERMINAL + PROSE[:2])
def test_a_failure_naming_a_hostile_value_is_one_line_in_the_state_message(
    value: str, tmp_path: Path
) -> None:
    """The state's message is the run's one line (the UI's, `prefect flow-run ls`'s), as
    the CLI's line is: a brown-out name typed into a run's parameters, a path an
    operating-system error names in its own words (Arrow's, with no file name apart)
    held a line break that started a line of its own, an ESC that acted on the
    operator's terminal. Shown escaped, as the CLI shows them (`labelled`)."""
    plan = load_plan(ROOT / "plans" / "npm-2022.yaml")

    @fail_on_user_error
    def start(name: str) -> None:
        refuse_unplanned(plan, name, None)

    @fail_on_user_error
    def write(folder: Path) -> None:
        pq.write_table(pa.table({"n": [1]}), str(folder / "part-0.parquet"))

    @fail_on_user_error
    def read_plan(words: str) -> None:
        # A parser's own words, quoting the line it read, as they came.
        raise BadInput(None, None, f"the plan cannot be read: {words}")

    refused = start(value)
    assert refused.is_failed() and not CONTROL_CHARACTERS.search(refused.message)
    assert refused.message.startswith(f"brown-out {quoted(value)} is not in plan npm-2022")
    assert shell_word(value) in refused.message  # the command it suggests, as one word
    unread = read_plan(value)
    assert unread.message == f"the plan cannot be read: {controls_shown(value)}"
    if "\x00" not in value:  # (a path cannot hold NUL: a ValueError, a bug's traceback)
        failed = write(tmp_path / value / "gone")
        assert failed.is_failed() and not CONTROL_CHARACTERS.search(failed.message)
        assert isinstance(failed.data, FileNotFoundError)
        assert controls_shown(str(tmp_path / value / "gone")) in failed.message


def test_a_turned_down_registry_url_is_not_transient_and_a_refused_connection_is(
    turned_down_postgres_urls: dict[str, str],
) -> None:
    for url in turned_down_postgres_urls.values():
        engine = make_engine(url)
        with pytest.raises(RegistryURLRefused) as turned_down:
            engine.connect()
        engine.dispose()
        assert not is_transient(turned_down.value)
    engine = make_engine(SERVER_AWAY)
    with pytest.raises(OperationalError) as refused:
        engine.connect()
    assert is_transient(refused.value)


def test_a_registry_server_not_there_is_transient_through_adbc_as_through_an_engine() -> None:
    """The extract and the bulk loads connect through ADBC: a server away (restarting,
    failing over) between a run's first statement and its extract was ADBC's own
    error, which no flow retried and the CLI printed as a traceback."""
    with pytest.raises(OperationalError) as refused, adbc_connect(SERVER_AWAY):
        pass
    assert is_transient(refused.value)
    reason = str(refused.value.orig)
    assert "Connection refused" in reason and "s3cret" not in str(refused.value)
    # A connection option libpq does not know is the URL's, through ADBC too.
    with pytest.raises(RegistryURLRefused) as unknown, adbc_connect(f"{SERVER_AWAY}?sslmod=x"):
        pass
    assert not is_transient(unknown.value)
    assert str(unknown.value).endswith('invalid URI query parameter: "sslmod"')


def test_a_connection_lost_in_use_through_adbc_is_transient(postgres_schema_url: str) -> None:
    """The server restarting (or failing over) in the middle of an extract: retried, as
    the same through an engine is; it was ADBC's error, a traceback and no retry."""
    engine = make_engine(postgres_schema_url)
    with pytest.raises(OperationalError) as lost, adbc_connect(postgres_schema_url) as connection:
        cursor = connection.cursor()
        cursor.execute("select pg_backend_pid()")
        [(pid,)] = cursor.fetchall()
        with engine.begin() as other:
            other.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
        cursor.execute("select 1")
        cursor.fetchall()
    engine.dispose()
    assert is_transient(lost.value)
    assert "terminating connection" in str(lost.value.orig)


# --- daily, on a registry whose downloads end before the day ---------------------------


@pytest.fixture
def sample_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None) -> Path:
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    settings = load_settings()
    generate_sample(
        "tiny",
        7,
        registry=Registry(settings.registry_url),
        landing_dir=settings.landing_dir,
        end=DATA_ENDS,
        days=40,
    )
    return tmp_path


def test_a_daily_run_past_the_data_fails_with_one_line_naming_the_weekly_window(
    prefect_server: None, sample_home: Path
) -> None:
    start = datetime.now(UTC)
    state = cohort_flows.daily(return_state=True)  # default parameters: as of today
    today = datetime.now(UTC).date()
    assert state.is_failed()
    assert state.message == (
        f"download data is missing for every day of {today}'s weekly window "
        f"({today - timedelta(days=7)}..{today - timedelta(days=1)}); the latest download "
        f"data loaded is for {DATA_ENDS}. Load it, or allow gaps (--allow-gaps; allow_gaps "
        "in the flows) to decide on partial data"
    )
    logs = logs_since(start)
    # repr() of the message: in double quotes, as it holds an apostrophe.
    assert logs.count('Finished in state Failed("download data is missing') == 2  # both flows
    assert "Traceback" not in logs and "unexpected exception" not in logs
    with pytest.raises(BadInput):
        state.result()
    assert "weekly window is incomplete" in read_markdown(f"metrics-{today}")


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(lambda day: metrics_flows.metrics(as_of=day, return_state=True), id="metrics"),
        pytest.param(lambda day: cohort_flows.cohorts(as_of=day, return_state=True), id="cohorts"),
        pytest.param(lambda day: cohort_flows.daily(as_of=day, return_state=True), id="daily"),
        pytest.param(lambda day: report_flows.report(as_of=day, return_state=True), id="report"),
    ],
)
def test_a_run_for_a_day_after_today_fails_with_one_line_and_leaves_no_such_day(
    prefect_server: None, sample_home: Path, run: Any
) -> None:
    """As `rollout metrics|cohorts build|report --as-of` refuse it: a day ahead has no
    data, and its metrics would stand as the latest day every default reads."""
    today = datetime.now(UTC).date()
    ahead = today + timedelta(days=10)
    state = run(ahead)
    assert state.is_failed()
    assert state.message == f"as_of: {ahead} is after today ({today}, UTC): it has no data yet"
    with pytest.raises(BadInput):
        state.result()
    warehouse = sample_home / "warehouse.duckdb"
    if warehouse.exists():  # the run refused before making one: no day at all
        with duckdb.connect(str(warehouse), read_only=True) as con:
            days = con.execute("select distinct as_of from package_metrics_daily").fetchall()
        assert (ahead,) not in days
    assert not (sample_home / "reports" / ahead.isoformat()).exists()


# --- what is retried, without a server -----------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("select 1", {}, Exception("could not connect to server")),
        HTTPError(503, "Service Unavailable", b"", {}),
        HTTPError(429, "Too Many Requests", b"", {}),
        urllib.error.URLError(ConnectionRefusedError()),
        TimeoutError("timed out"),
    ],
)
def test_transient_errors_are_retried(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        BadInput(None, None, "bad"),
        GuardRefused("another notify run holds the lock"),
        HTTPError(400, "Bad Request", b"", {}),
        ValueError("a bug"),
    ],
)
def test_user_errors_and_bugs_are_not(error: BaseException) -> None:
    assert not is_transient(error)


def test_a_user_error_caused_by_a_transient_one_is_not_retried() -> None:
    try:
        try:
            raise OperationalError("select 1", {}, Exception("gone"))
        except OperationalError as cause:
            raise GuardRefused("refused") from cause
    except GuardRefused as error:
        assert not is_transient(error)


# --- a stop ------------------------------------------------------------------------------

# A flow run of its own process, as a worker starts one: SIGTERM lands while DuckDB
# works (the worker's host stopping it, systemd's KillMode=control-group), one second in.
STOPPED_IN_A_QUERY = """
import os, signal, threading
import duckdb
from prefect import flow
from prefect.runtime import flow_run
from flows.common import with_runtime

@flow(name="stopped-in-a-query")
@with_runtime
def stopped_in_a_query() -> None:
    print(flow_run.id, flush=True)
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # Prefect's
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    # About 8 s of work on this project's machines: the signal lands in it. DuckDB does
    # not always see a signal at once (then it ends the query, and the handler raises
    # after it): the run is a stop either way, ended in seconds, not minutes.
    duckdb.connect().execute("select count(*) from range(100000000000) a").fetchall()

stopped_in_a_query()
"""


def _run_flow_script(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``source`` run as a flow run of its own process, as a worker starts one, on the
    package's Prefect server, with ROLLOUT_HOME in ``tmp_path`` (and ``env``)."""
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "stopped.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)],
        env={
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "ROLLOUT_HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def _run_state(run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_a_run_stopped_while_duckdb_works_ends_crashed_not_failed(
    prefect_server: None, clean_env: None, tmp_path: Path
) -> None:
    """DuckDB turns the signal's exception into RuntimeError("Query interrupted"): the
    run ended Failed with a traceback (the failed-run alert read a bug), not Crashed as
    Prefect ends a stopped run, nor Cancelled when it was cancelled."""
    done = _run_flow_script(tmp_path, STOPPED_IN_A_QUERY)
    state = _run_state(done.stdout.split()[0])
    assert state is not None and state.is_crashed(), (state, done.stderr[-2000:])
    assert "Query interrupted" not in (state.message or "")


# The same through the runtime's own warehouse connection, as every task opens one, on a
# statement of minutes: the stop watcher (rollout.core.stopping.interrupting_on_stop)
# must cut it short under Prefect's own SIGTERM handler, not let it run to its end.
STOPPED_IN_A_LONG_QUERY = """
import os, signal, threading, time
from prefect import flow
from prefect.runtime import flow_run
from flows.common import runtime, with_runtime

@flow(name="stopped-in-a-long-query")
@with_runtime
def stopped_in_a_long_query() -> None:
    with runtime().warehouse(create=True) as con:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        print(flow_run.id, time.time(), flush=True)
        con.execute("select sum(hash(i)) from range(1000000000000) t(i)").fetchall()

stopped_in_a_long_query()
"""


def test_a_run_stopped_in_a_long_query_of_its_runtime_s_warehouse_ends_it_at_once(
    prefect_server: None, clean_env: None, tmp_path: Path
) -> None:
    """A stopped flow run's query on ``runtime().warehouse`` (hours of work here) is
    interrupted within seconds of SIGTERM, under Prefect's signal handler, and the run
    ends Crashed: the watcher on the signal wakeup fd works in a flow run as in a
    command."""
    done = _run_flow_script(tmp_path, STOPPED_IN_A_LONG_QUERY)
    ended = time.time()
    run_id, started = done.stdout.split()[:2]
    # The signal lands 1 s after the query starts; the query would take hours (left to
    # run on, the subprocess's 120 s timeout ends the test). About 2 s on an idle
    # machine; 60 s leaves room for a loaded one (3 test workers, PostgreSQL and the
    # Prefect server on 2 cores: the run's state reported, the process ended).
    assert ended - float(started) < 60, done.stderr[-2000:]
    state = _run_state(run_id)
    assert state is not None and state.is_crashed(), (state, done.stderr[-2000:])
    assert "Query interrupted" not in (state.message or "")


# The same, SIGTERM landing while the registry's PostgreSQL works on a statement (an
# UPDATE of many rows, a lock wait): here a sleep with a marker pg_stat_activity shows.
STOPPED_IN_A_STATEMENT = """
import os, signal, threading
from sqlalchemy import text
from prefect import flow
from prefect.runtime import flow_run
from flows.common import with_runtime
from rollout.registry.engine import make_engine

@flow(name="stopped-in-a-statement")
@with_runtime
def stopped_in_a_statement() -> None:
    print(flow_run.id, flush=True)
    with make_engine(os.environ["ROLLOUT_REGISTRY_URL"]).connect() as connection:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        connection.execute(text("select pg_sleep(60) -- stopped-in-a-statement"))

stopped_in_a_statement()
"""


def test_a_run_stopped_while_postgresql_works_ends_its_statement_on_the_server(
    prefect_server: None, clean_env: None, tmp_path: Path, postgres_schema_url: str
) -> None:
    """Prefect's TerminationSignal is no KeyboardInterrupt, on which alone psycopg cancels
    the statement in flight: the run ended Crashed, but its statement went on in the
    server after the process was gone, holding its locks (a batch's rows, the writers'
    lock) against the next run for as long as it took."""
    started = time.monotonic()
    done = _run_flow_script(
        tmp_path, STOPPED_IN_A_STATEMENT, ROLLOUT_REGISTRY_URL=postgres_schema_url
    )
    assert time.monotonic() - started < 45  # not after the statement's 60 s
    state = _run_state(done.stdout.split()[0])
    assert state is not None and state.is_crashed(), (state, done.stderr[-2000:])
    assert "Execution was aborted by a termination signal" in (state.message or "")
    engine = make_engine(postgres_schema_url)
    try:
        with engine.connect() as connection:
            still_running = connection.execute(
                text(
                    "select count(*) from pg_stat_activity where state = 'active'"
                    " and query like '%-- stopped-in-a-statement' and pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert still_running == 0


# --- a statement the registry's server ends --------------------------------------------


def _bounded(url: str, setting: str) -> str:
    """``url`` with ``-c setting`` added to its options, as an operator bounds a role."""
    parsed = make_url(url)
    options = f"{parsed.query.get('options', '')} -c{setting}".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


def test_a_statement_the_operator_s_statement_timeout_ends_is_not_retried_and_says_why(
    postgres_schema_url: str,
) -> None:
    """A statement_timeout (on the role, the database, or in the URL's options) is the
    operator's bound: retried 3 times, the statement ran up to 4 times that bound."""
    engine = make_engine(_bounded(postgres_schema_url, "statement_timeout=200"))
    try:
        with pytest.raises(RegistryStatementCancelled) as ended, engine.connect() as connection:
            connection.execute(text("select pg_sleep(5)"))
    finally:
        engine.dispose()
    assert not is_transient(ended.value)
    message = str(ended.value)
    assert "canceling statement due to statement timeout" in message
    assert "statement_timeout" in message.replace("statement timeout", "")
    assert "Not retried" in message


def test_a_statement_the_operator_s_statement_timeout_ends_through_adbc_is_not_retried(
    postgres_schema_url: str,
) -> None:
    with (
        pytest.raises(RegistryStatementCancelled) as ended,
        adbc_connect(_bounded(postgres_schema_url, "statement_timeout=200")) as connection,
    ):
        cursor = connection.cursor()
        cursor.execute("select pg_sleep(5)")
        cursor.fetchall()
    assert not is_transient(ended.value)


def test_a_lock_timeout_or_a_deadlock_is_still_transient(postgres_schema_url: str) -> None:
    """Another transaction held what the statement needed: the next try may find it gone."""
    setup = make_engine(postgres_schema_url)
    waiting = make_engine(_bounded(postgres_schema_url, "lock_timeout=200"))
    try:
        with setup.begin() as connection:
            connection.execute(text("create table held (id int)"))
        with setup.begin() as holder:
            holder.execute(text("lock table held in access exclusive mode"))
            with pytest.raises(OperationalError) as lock_timeout, waiting.connect() as other:
                other.execute(text("select * from held"))
        assert lock_timeout.value.orig.sqlstate == "55P03"
        assert is_transient(lock_timeout.value)
    finally:
        waiting.dispose()
        setup.dispose()
    deadlock = OperationalError("update", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
    assert is_transient(deadlock)

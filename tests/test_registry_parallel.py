"""Jobs on several PostgreSQL connections at once (rollout.registry.parallel), as an
enforcement's batches run: two at a time, each its own transaction, the caller's clock
seen by each; a failure or a stop ends them all, whatever was in flight rolled back and
its statement cancelled on the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import Connection, Engine, text

from rollout.core.clock import SimulatedClock, use_clock
from rollout.registry.engine import make_engine
from rollout.registry.ledger import utc_now
from rollout.registry.parallel import connections_for, each_committed

# A guard against a hang (the sleep cancelled is 60 s), not a speed target.
STOPPED_WITHIN = 20.0


@pytest.fixture
def engine(postgres_schema_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_schema_url)
    with engine.begin() as connection:
        connection.execute(text("create table done (job int primary key, pid int, at text)"))
    yield engine
    engine.dispose()


def _insert(connection: Connection, job: int) -> None:
    connection.execute(
        text("insert into done values (:job, pg_backend_pid(), :at)"),
        {"job": job, "at": utc_now().isoformat()},
    )


def _rows(engine: Engine) -> list[tuple[int, int, str]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text("select * from done order by job"))]


def test_jobs_run_two_at_once_each_committed_and_seeing_the_caller_s_clock(
    engine: Engine,
) -> None:
    assert connections_for(engine) == 2
    # The first two jobs pass this only together: they ran at the same time.
    together = threading.Barrier(2, timeout=30)
    committed: list[int] = []

    def work(connection: Connection, job: int) -> int:
        _insert(connection, job)
        if job in (1, 2):
            together.wait()
        return job * 10

    def record(job: int, result: int) -> None:
        assert result == job * 10
        committed.append(job)

    with use_clock(SimulatedClock(datetime(2022, 2, 1, 12))):
        each_committed(engine, [1, 2, 3, 4, 5, 6], work, record, connections=2)
    assert sorted(committed) == [1, 2, 3, 4, 5, 6]
    rows = _rows(engine)
    assert [job for job, _, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert {at for _, _, at in rows} == {"2022-02-01T12:00:00"}
    assert len({pid for _, pid, _ in rows}) == 2


def test_a_failed_job_starts_no_other_and_rolls_back_what_was_in_flight(
    engine: Engine,
) -> None:
    committed: list[int] = []

    def work(connection: Connection, job: int) -> None:
        _insert(connection, job)
        if job == 2:
            raise ValueError("job 2 failed")
        if job == 1:
            connection.execute(text("select pg_sleep(60)"))  # cancelled

    started = time.monotonic()
    with pytest.raises(ValueError, match="job 2 failed"):
        each_committed(
            engine, [1, 2, 3, 4], work, lambda job, _: committed.append(job), connections=2
        )
    assert time.monotonic() - started < STOPPED_WITHIN
    assert _rows(engine) == [] and committed == []


def test_a_stop_cancels_the_statement_in_flight_and_commits_nothing_more(
    engine: Engine,
) -> None:
    """Ctrl-C (or SIGTERM) reaches the caller's thread, here while it takes job 2's
    result: job 1's statement, on the other connection, is cancelled on the server and
    its transaction rolled back; job 3 never starts."""

    def work(connection: Connection, job: int) -> None:
        _insert(connection, job)
        if job == 1:
            connection.execute(text("select pg_sleep(60)"))

    def stop_at_2(job: int, _: None) -> None:
        if job == 2:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        each_committed(engine, [1, 2, 3], work, stop_at_2, connections=2)
    assert time.monotonic() - started < STOPPED_WITHIN
    assert [job for job, _, _ in _rows(engine)] == [2]
    with engine.connect() as connection:
        sleeping = connection.execute(
            text("select count(*) from pg_stat_activity where query like 'select pg_sleep(60)%'")
        ).scalar_one()
    assert sleeping == 0

"""Transactions of independent jobs on several registry connections at once.

A batch of an enforcement is one transaction over accounts no other batch holds. On
PostgreSQL the server does nearly all of a batch's work while Python waits, so two
batches on two connections keep two server processes busy; on SQLite writes take one
lock in turn, so its jobs run one after the other, on the caller's thread, as before.

What a stop needs (rule 8 of the design, "a stop stops"): Ctrl-C or SIGTERM reaches the
caller's thread only. Waiting there for the others, it cancels their statements on the
server (each job's transaction then rolls back whole: exactly once holds, a rerun does
what is left), waits for their threads to end and raises the stop: psycopg cancels a
statement the caller's own thread is waiting on in the same way.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from rollout.registry.engine import begin_writing

J = TypeVar("J")
R = TypeVar("R")

# Connections a PostgreSQL registry is written on at once: the server process of each
# is busy for most of a batch (one core each), and more would compete with the server's
# other work (a job's or a worker's) for little more.
POSTGRES_CONNECTIONS = 2


def connections_for(engine: Engine) -> int:
    """How many jobs to run at once on ``engine``: one on SQLite (one writer at a time)."""
    return POSTGRES_CONNECTIONS if engine.dialect.name == "postgresql" else 1


def each_committed(
    engine: Engine,
    jobs: Sequence[J],
    work: Callable[[Connection, J], R],
    committed: Callable[[J, R], None],
    *,
    connections: int,
) -> None:
    """``work(connection, job)`` for each job, each in a writing transaction of its own
    (:func:`~rollout.registry.engine.begin_writing`), up to ``connections`` at once, in
    the order given as far as they start; ``committed(job, result)`` on this thread as
    each commits. A job that fails, or a stop, ends it: no job starts after it, those
    in flight are cancelled and rolled back, and the failure (or the stop) is raised
    once their threads have ended. ``work`` sees this thread's context (its clock)."""
    if connections <= 1 or len(jobs) <= 1:
        for job in jobs:
            with begin_writing(engine) as connection:
                result = work(connection, job)
            committed(job, result)
        return
    in_flight: dict[int, Any] = {}  # thread id: its DB-API connection, while in a job
    guard = threading.Lock()

    def one(job: J) -> R:
        with begin_writing(engine) as connection:
            with guard:
                in_flight[threading.get_ident()] = connection.connection.dbapi_connection
            try:
                return work(connection, job)
            finally:
                with guard:
                    in_flight.pop(threading.get_ident(), None)

    waiting = deque(jobs)
    running: dict[Future[R], J] = {}
    with ThreadPoolExecutor(connections, thread_name_prefix="registry-job") as pool:
        try:
            while waiting or running:
                while waiting and len(running) < connections:
                    job = waiting.popleft()
                    # A copy per job: a context cannot be entered by two threads at once.
                    context = contextvars.copy_context()
                    running[pool.submit(context.run, one, job)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    committed(job, future.result())
        except BaseException:
            waiting.clear()
            # Again until each has ended: a cancel finds nothing to cancel between two
            # statements of a job, which then starts the next.
            while wait(running, timeout=_CANCEL_AGAIN).not_done:
                _cancel(in_flight, guard)
            # Those that committed before their cancel arrived are done all the same.
            for future, job in running.items():
                if not future.cancelled() and future.exception() is None:
                    with suppress(Exception):
                        committed(job, future.result())
            raise


# Seconds between cancels of the statements still in flight after a stop.
_CANCEL_AGAIN = 0.1


def _cancel(in_flight: dict[int, Any], guard: threading.Lock) -> None:
    """Ask the server to cancel each job's statement in flight (psycopg's cancel_safe:
    a request on a connection of its own, safe from another thread)."""
    with guard:
        connections = list(in_flight.values())
    for connection in connections:
        cancel = getattr(connection, "cancel_safe", None) or getattr(connection, "cancel", None)
        if cancel is not None:
            with suppress(Exception):  # the statement may have ended meanwhile
                cancel()

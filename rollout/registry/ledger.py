"""Writing to the registry exactly once: upserts keyed by natural keys, and the audit
ledger, whose unique ``effect_key`` turns a replayed effect into a no-op."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from rollout.core import clock
from rollout.registry.engine import begin_writing
from rollout.registry.models import Action, PlanRun

ACTIONS: Table = Action.__table__  # type: ignore[assignment]
PLAN_RUNS: Table = PlanRun.__table__  # type: ignore[assignment]


def utc_now() -> datetime:
    """Now, naive UTC, from the pipeline's clock (real, or the demo's simulated one)."""
    return clock.utc_now()


def dialect_insert(connection: Connection, table: Table) -> Any:
    """INSERT with ON CONFLICT support for the connection's backend."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def insert_ignoring_existing(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    index_where: Any = None,
) -> int:
    """Insert rows whose natural key is new; returns how many were inserted.
    ``index_where``: the condition of a partial unique index over ``keys``, with its
    values as literals (``literal_column("'pending'")``): SQLite's compiler makes a bound
    value there a literal-execute parameter, which a statement of many rows refuses."""
    if not rows:
        return 0
    columns = set(rows[0])
    if any(set(row) != columns for row in rows):
        raise ValueError(f"rows for {table.name} must all have the same columns")
    # Counted from RETURNING: rowcount is not reliable for executemany on psycopg.
    key = next(iter(table.primary_key.columns))
    statement = (
        dialect_insert(connection, table)
        .on_conflict_do_nothing(index_elements=list(keys), index_where=index_where)
        .returning(key)
    )
    return len(connection.execute(statement, list(rows)).all())


def upsert(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    updates: Mapping[str, Any],
) -> None:
    """Insert rows, or on a natural-key clash set each column of ``updates`` to what
    its function returns given the proposed row (``excluded`` in SQL)."""
    if not rows:
        return
    statement = dialect_insert(connection, table)
    statement = statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: value(statement.excluded) for name, value in updates.items()},
    )
    connection.execute(statement, list(rows))


_ACTION_DEFAULTS: dict[str, Any] = {
    "account_id": None,
    "subject": None,
    "phase": None,
    "run_id": None,
    "details": {},
}


def record_actions(connection: Connection, actions: Iterable[Mapping[str, Any]]) -> None:
    """Append audit rows; an effect already recorded (same effect_key) is skipped.

    Every row gets every column: a multi-row INSERT takes its columns from the first
    row, so a key only later rows carry would be silently dropped. No RETURNING: at a
    million rows a run, counting what was inserted costs more than the insert.
    """
    now = utc_now()
    rows = [{**_ACTION_DEFAULTS, "created_at": now, **action} for action in actions]
    if rows:
        statement = dialect_insert(connection, ACTIONS).on_conflict_do_nothing(
            index_elements=["effect_key"]
        )
        connection.execute(statement, rows)


# PostgreSQL's sequence behind plan_runs.seq (revision 0018), also the column's default.
RUN_SEQUENCE = "plan_runs_seq"


def next_run_seq(connection: Connection) -> Any:
    """SQL: the ``plan_runs.seq`` of a run recorded now, above every run recorded before
    it. PostgreSQL draws it from its sequence. SQLite has no sequence for a column that
    is not the key: one more than the highest, read by the INSERT itself, which holds
    the database's one write lock from its start (no other writer can take the same
    number; the column's unique constraint would refuse it anyway)."""
    if connection.dialect.name == "postgresql":
        return func.nextval(RUN_SEQUENCE)
    return select(func.coalesce(func.max(PLAN_RUNS.c.seq), 0) + 1).scalar_subquery()


def start_run(
    connection: Connection,
    *,
    plan: str,
    step: str,
    mode: str,
    actor: str,
    parameters: Mapping[str, Any],
    lock: str | None = None,
) -> str:
    run_id = uuid.uuid4().hex
    connection.execute(
        PLAN_RUNS.insert().values(
            id=run_id,
            plan=plan,
            step=step,
            mode=mode,
            state="running",
            actor=actor,
            started_at=utc_now(),
            parameters=dict(parameters),
            summary={},
            lock_name=lock,
            seq=next_run_seq(connection),
        )
    )
    return run_id


def finish_run(
    connection: Connection, run_id: str, *, state: str, summary: Mapping[str, Any]
) -> None:
    connection.execute(
        update(PLAN_RUNS)
        .where(PLAN_RUNS.c.id == run_id)
        .values(state=state, finished_at=utc_now(), summary=dict(summary))
    )


@dataclass
class RunRecord:
    """The plan_runs row of a run in progress: its id, and the summary to store."""

    id: str
    summary: dict[str, Any] = field(default_factory=dict)


@contextmanager
def recorded_run(
    engine: Engine,
    *,
    plan: str,
    step: str,
    mode: str,
    actor: str,
    lock: str,
    parameters: Mapping[str, Any] | None = None,
) -> Iterator[RunRecord]:
    """A plan_runs row around a run: 'running' at once (its own transaction, so the
    effects can cite it), then 'succeeded' with the summary, or 'failed' with what
    was done so far if anything, a kill aside, goes wrong.

    ``lock`` names the run lock (``Registry.lock``) the caller holds for the
    whole run: after a kill, the row stays 'running' while its lock is free, which is
    how ``plan show`` tells an interrupted run from one still at work. A run stopped
    is interrupted too, not failed: its row keeps 'running' with what was done so far,
    and its rerun finishes the work. Stopped is any exception that is no Exception:
    SIGTERM or Ctrl-C in a command (a KeyboardInterrupt), and SIGTERM in a Prefect flow
    run (a cancel, the worker's upgrade), which Prefect raises as its TerminationSignal."""
    with begin_writing(engine) as connection:
        run = RunRecord(
            start_run(
                connection,
                plan=plan,
                step=step,
                mode=mode,
                actor=actor,
                parameters=parameters or {},
                lock=lock,
            )
        )
    try:
        yield run
    except Exception:
        with begin_writing(engine) as connection:
            finish_run(connection, run.id, state="failed", summary=run.summary)
        raise
    except BaseException:  # stopped
        with begin_writing(engine) as connection:
            connection.execute(
                update(PLAN_RUNS).where(PLAN_RUNS.c.id == run.id).values(summary=dict(run.summary))
            )
        raise
    with begin_writing(engine) as connection:
        finish_run(connection, run.id, state="succeeded", summary=run.summary)

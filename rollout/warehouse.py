"""The DuckDB warehouse: one file an analyst can open, rebuilt from landing files and
a registry extract. SQL lives in ``sql/``; this module runs it with named parameters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Views over the raw tables, in dependency order.
STAGING_VIEWS = ("stg_downloads", "stg_logins", "stg_manifests", "stg_dependencies")

# Until the first registry extract, views and summaries still need these to exist.
_REGISTRY_PLACEHOLDERS = {
    "accounts": "id bigint, username varchar, email varchar, email_verified boolean, "
    "created_at timestamp, last_login_at timestamp, elv_enrolled_at timestamp, "
    "tfa_required_at timestamp",
    "tfa_factors": "id bigint, account_id bigint, kind varchar, created_at timestamp, "
    "removed_at timestamp",
}


def sql_text(name: str) -> str:
    """The text of ``sql/<name>.sql`` (``name`` like ``raw/landing``)."""
    return (SQL_DIR / f"{name}.sql").read_text()


def connect(
    path: Path | str, *, read_only: bool = False, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(str(path), read_only=read_only, config=config)
    # Every time in the pipeline is UTC; never let the machine's zone leak in.
    con.execute("set TimeZone = 'UTC'")
    if not read_only:
        ensure_schema(con)
    return con


@contextmanager
def open_warehouse(
    path: Path | str, *, read_only: bool = False, memory_limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only, memory_limit=memory_limit)
    try:
        yield con
    finally:
        con.close()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Raw tables, an empty ``registry`` schema, and the staging views over them."""
    con.execute(sql_text("raw/landing"))
    for table, definition in _REGISTRY_PLACEHOLDERS.items():
        con.execute(f"create table if not exists registry.{table} ({definition})")
    for view in STAGING_VIEWS:
        con.execute(sql_text(f"staging/{view}"))


def run(
    con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Run one single-statement SQL file with named ``$parameters``."""
    return con.execute(sql_text(name), dict(params or {}))


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

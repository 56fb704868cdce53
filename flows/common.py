"""Wiring shared by the flows: settings, the warehouse, the day, the actor, markdown."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import duckdb
from prefect.runtime import flow_run

from rollout.config import Settings
from rollout.output import markdown_text as cell
from rollout.warehouse import open_warehouse


def day_or_today(as_of: date | None) -> date:
    """The as-of day: the given one, else today's UTC date (the week is the 7 days before)."""
    return as_of or datetime.now(UTC).date()


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


@contextmanager
def warehouse(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    with open_warehouse(settings.warehouse_path, memory_limit=settings.duckdb_memory_limit) as con:
        yield con


def table(rows: Sequence[tuple[str, Any]], header: tuple[str, str] = ("what", "value")) -> str:
    """A two-column Markdown table; every name and value shown as text (``cell``)."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {cell(name)} | {cell(value)} |" for name, value in rows]
    return "\n".join(lines)

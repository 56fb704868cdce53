"""One runtime per invocation: the settings, the plan, the registry and the warehouse.

A command (rollout.cli builds one in its callback) or a flow run (flows.common) makes
one Runtime and reaches everything through it, and so does the demo's Story, handed the
command's: the settings are read from the environment once, the plan is parsed once,
the registry is one
:class:`~rollout.registry.Registry` (one engine, its locks), and the warehouse opens
with the memory limit the settings give. Each part is made on first use, so a command
that needs none of them (``rollout --version``, ``rollout plan check FILE``) works
with settings that would not load; an error in them surfaces where a part is first
used, as the same BadInput (exit code 2) it always was.

Heavy imports (SQLAlchemy, DuckDB) wait for the part that needs them: the command line
starts without them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from rollout.core.config import Settings, load_settings

if TYPE_CHECKING:
    import duckdb

    from rollout.core.plan import Plan
    from rollout.registry import Registry


class Runtime:
    """Settings, plan, registry and warehouse for one invocation, each made on first use.

    ``settings`` and ``plan`` may be given, as tests do; otherwise they come from the
    environment (:func:`rollout.core.config.load_settings`) and ``settings.plan_path``.
    ``close`` closes the registry (a later use opens it again). Also a context manager.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        plan: Plan | None = None,
    ) -> None:
        self._settings = settings
        self._plan = plan
        self._registry: Registry | None = None
        self._making = threading.Lock()

    @property
    def settings(self) -> Settings:
        """Read on first use; a bad value raises BadInput naming the variable (and is
        read again next time, not remembered)."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def plan(self) -> Plan:
        """The plan at ``settings.plan_path``, parsed on first use."""
        if self._plan is None:
            from rollout.core.plan import load_plan

            self._plan = load_plan(self.settings.plan_path)
        return self._plan

    def use_plan(self, plan: Plan) -> None:
        """Run this invocation with ``plan`` instead of ``settings.plan_path``'s (a
        command's ``--plan``)."""
        self._plan = plan

    @property
    def registry(self) -> Registry:
        """The registry at ``settings.registry_url``; nothing is connected until used."""
        if self._registry is None:
            from rollout.registry import Registry

            url = self.settings.registry_url
            with self._making:
                if self._registry is None:
                    self._registry = Registry(url)
        return self._registry

    @contextmanager
    def warehouse(
        self, *, read_only: bool = False, create: bool = False
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse, closed on leaving, with
        ``ROLLOUT_DUCKDB_MEMORY_LIMIT`` applied: to readers too (a what-if or a diff can
        need as much memory as a build). A missing warehouse is an error (exit 2) unless
        ``create``: only what fills it from nothing (ingest, the report's registry
        extract, the demo) makes one, so a mistyped ``ROLLOUT_HOME`` makes no files."""
        from rollout.warehouse import open_warehouse

        settings = self.settings
        with open_warehouse(
            settings.warehouse_path,
            read_only=read_only,
            memory_limit=settings.duckdb_memory_limit,
            create=create,
        ) as con:
            yield con

    def close(self) -> None:
        """Close the registry, if it was opened."""
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from rollout.core.config import Settings, load_settings

if TYPE_CHECKING:
    import duckdb

    from rollout.core.plan import Plan
    from rollout.registry import Registry


# How often a waiting run tries the warehouse again.
WAREHOUSE_POLL_SECONDS = 2.0


def _duration(seconds: float) -> str:
    """``90`` -> ``"90 s"``, ``600`` -> ``"10 min"``."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


class Runtime:
    """Settings, plan, registry and warehouse for one invocation, each made on first use.

    ``settings`` and ``plan`` may be given, as tests do; otherwise they come from the
    environment (:func:`rollout.core.config.load_settings`) and ``settings.plan_path``.
    ``close`` closes the registry (a later use opens it again). Also a context manager.

    ``warehouse_wait``: how many seconds :meth:`warehouse` waits for a warehouse another
    process holds open before it fails (0, a command's: at once); ``on_warehouse_wait``
    is told, once, that it waits and for whom.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        plan: Plan | None = None,
        warehouse_wait: float = 0,
        on_warehouse_wait: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._plan = plan
        self._registry: Registry | None = None
        self._making = threading.Lock()
        self._warehouse_wait = warehouse_wait
        self._on_warehouse_wait = on_warehouse_wait

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
        extract, the demo) makes one, so a mistyped ``ROLLOUT_HOME`` makes no files.

        Held open by another process (DuckDB: one writer, or readers), it is waited for
        up to ``warehouse_wait`` seconds, then refused (WarehouseBusy)."""
        from rollout.warehouse import WarehouseBusy, connect, held_open

        settings = self.settings
        deadline = time.monotonic() + self._warehouse_wait
        told = False
        while True:
            try:
                con = connect(
                    settings.warehouse_path,
                    read_only=read_only,
                    memory_limit=settings.duckdb_memory_limit,
                    create=create,
                )
                break
            except WarehouseBusy as busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._warehouse_wait > 0:
                        raise busy.after_waiting(_duration(self._warehouse_wait)) from None
                    raise
                if not told and self._on_warehouse_wait is not None:
                    self._on_warehouse_wait(
                        f"{busy.path}: the warehouse is open in {busy.who}; waiting for it "
                        f"(at most {_duration(self._warehouse_wait)})"
                    )
                told = True
                time.sleep(min(WAREHOUSE_POLL_SECONDS, left))
        with held_open(con):
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

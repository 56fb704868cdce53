"""A PostgreSQL run lock lost with its session, as a server restart, a pooler or a
keepalive timeout loses it: silently, the holder still at work."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text

from rollout.registry import Registry
from rollout.registry.locks import advisory_lock_holders


def end_run_lock_session(registry: Registry, lock: str) -> None:
    """End the PostgreSQL session holding run lock ``lock``'s advisory lock, and wait
    until the lock is gone with it."""
    with registry.engine.connect() as connection:
        holders = advisory_lock_holders(connection, lock)
        connection.execute(
            text("select pg_terminate_backend(p) from unnest(cast(:p as int[])) p"),
            {"p": holders},
        )
    assert holders
    deadline = time.monotonic() + 30  # the backend exits as it gets the signal
    while registry.lock_held(lock) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not registry.lock_held(lock)


def lose_run_lock_during(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, registry: Registry, lock: str
) -> None:
    """Make ``owner.name`` end run lock ``lock``'s session on its first call, then do
    its work: the lock lost in the middle of a run, its holder still at work."""
    real = getattr(owner, name)
    calls: list[int] = []

    def losing(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append(1)
            end_run_lock_session(registry, lock)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, losing)

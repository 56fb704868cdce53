"""A schema migration and the runs at work: `rollout db upgrade` and `db downgrade` hold
every run lock while they change the schema (refused while a run holds one), and a run
checks the schema again once it holds its lock."""

from __future__ import annotations

import pytest

from rollout.core.errors import GuardRefused, RolloutError
from rollout.registry import Registry, migrate
from rollout.registry.locks import (
    RUN_LOCKS,
    exclusive_run,
    make_lock_engine,
    migration_exclusive,
)

NEWEST = migrate.head_revision()
BEFORE = "0021"  # one revision back: 0022 only added notifications.claim_token


def test_every_run_lock_refuses_a_migration_naming_the_run_and_changes_nothing(
    registry: Registry,
) -> None:
    for name in RUN_LOCKS:
        with registry.lock(name):
            with pytest.raises(GuardRefused, match=f"{name}: ") as refused:
                migrate.downgrade(registry.engine, BEFORE)
            assert "the schema was not changed" in str(refused.value)
            assert refused.value.exit_code == 3
        assert migrate.current_revision(registry.engine) == NEWEST


def test_an_upgrade_under_a_running_enforce_is_refused(registry: Registry) -> None:
    migrate.downgrade(registry.engine, BEFORE)
    # An enforcement of the rollout before the code's upgrade, at work.
    lock_engine = None if registry.is_sqlite else make_lock_engine(registry.url)
    try:
        with (
            exclusive_run(registry.url, "enforce", lock_engine),
            pytest.raises(GuardRefused, match="enforce: `phase enforce`"),
        ):
            migrate.upgrade(registry.engine)
    finally:
        if lock_engine is not None:
            lock_engine.dispose()
    assert migrate.current_revision(registry.engine) == BEFORE
    migrate.upgrade(registry.engine)  # with the run gone it goes
    assert migrate.current_revision(registry.engine) == NEWEST


def test_a_run_starting_during_a_migration_is_refused_and_told_why(registry: Registry) -> None:
    with migration_exclusive(registry.url):
        for name in RUN_LOCKS:
            with (
                pytest.raises(GuardRefused, match="a schema migration") as refused,
                registry.lock(name),
            ):
                pass
            assert f"holds the {name} lock" in str(refused.value)
            # No run is at work: a notify shard whose run died stops, `plan show` says
            # interrupted.
            assert not registry.lock_held(name)
    with registry.lock("notify"):
        assert registry.lock_held("notify")


def test_a_run_that_checked_the_schema_before_a_migration_refuses_once_it_holds_its_lock(
    registry: Registry,
) -> None:
    registry.check_schema()  # the run began (a flow waiting for approval, say)
    with Registry(registry.url) as operator:
        migrate.downgrade(operator.engine, BEFORE)
    with (
        pytest.raises(RolloutError, match=f"schema revision {BEFORE}, this rollout needs"),
        registry.lock("enforce"),
    ):
        pytest.fail("the run went on under another schema")
    migrate.upgrade(registry.engine)


def test_only_the_known_run_locks_are_taken(registry: Registry) -> None:
    with pytest.raises(ValueError, match="not one of"):
        registry.lock("tokens")

"""A schema migration and the runs at work: `rollout db upgrade` and `db downgrade` hold
every run lock while they change the schema (refused while a run holds one), and a run
checks the schema again once it holds its lock. A downgrade previews what it drops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.errors import GuardRefused, RolloutError
from rollout.registry import Registry, migrate
from rollout.registry.engine import make_engine
from rollout.registry.locks import (
    RUN_LOCKS,
    exclusive_run,
    make_lock_engine,
    migration_exclusive,
)

from .factories import NotificationFactory, bound_to

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


def test_a_downgrade_previews_what_it_drops_and_needs_the_revision_typed_back(
    rollout_home: Path,
) -> None:
    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    def revision() -> str:
        return json.loads(run("db", "status", "--format", "json").stdout)["revision"]

    assert run("db", "upgrade").exit_code == 0
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    try:
        with bound_to(engine):
            NotificationFactory(claim_token="c1")
            NotificationFactory()
    finally:
        engine.dispose()

    preview = run("db", "downgrade", BEFORE)
    assert preview.exit_code == 0, preview.stderr
    assert f"would take the registry from revision {NEWEST} back to {BEFORE}" in preview.stderr
    assert f"{NEWEST}: notification claims" in preview.stderr
    assert "drops column notifications.claim_token (1 values)" in preview.stderr
    assert f"rollout db downgrade {BEFORE} --apply --from {NEWEST}" in preview.stderr
    assert revision() == NEWEST  # the preview did it and rolled it back

    untyped = run("db", "downgrade", BEFORE, "--apply")
    assert untyped.exit_code == 2 and "--apply needs --from REVISION" in untyped.stderr
    stale = run("db", "downgrade", BEFORE, "--apply", "--from", BEFORE)
    assert stale.exit_code == 3 and f"is at revision {NEWEST} now" in stale.stderr
    assert revision() == NEWEST
    done = run("db", "downgrade", BEFORE, "--apply", "--from", NEWEST)
    assert done.exit_code == 0 and revision() == BEFORE, done.stderr


def test_a_downgrade_preview_does_the_downgrade_and_rolls_it_back(registry: Registry) -> None:
    with bound_to(registry.engine):
        NotificationFactory(claim_token="c1")
    preview = migrate.preview_downgrade(registry.engine, "0013")
    assert [rev for rev, _ in preview.revisions][:2] == [NEWEST, BEFORE]
    assert preview.columns["notifications.claim_token"] == 1
    assert preview.columns["plan_runs.seq"] == 0
    assert not preview.tables and not preview.rows
    assert migrate.current_revision(registry.engine) == NEWEST
    with registry.engine.connect() as connection:  # the columns are all still there
        assert connection.exec_driver_sql(
            "select claim_token, lease_expires_at, delivery from notifications"
        ).all() == [("c1", None, None)]

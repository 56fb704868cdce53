"""A schema migration and the runs at work: `rollout db upgrade` and `db downgrade` hold
every run lock while they change the schema (refused while a run holds one), and a run
checks the schema again once it holds its lock. The writers that hold no run lock
(`brownout`, `notify suppress|unsuppress|withdraw|sync-suppressions`, ingest's delivery
states) are kept out likewise. A downgrade previews what it drops."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.errors import GuardRefused, RolloutError
from rollout.core.plan import Brownout, Plan
from rollout.dev.sendgrid_api import DEFAULT_API_KEY, DevSendGrid
from rollout.notify import outbox
from rollout.notify.delivery import apply_delivery
from rollout.notify.senders import SendGridSender
from rollout.notify.suppressions import sync_suppressions, unsuppress
from rollout.notify.withdraw import Selection, withdraw
from rollout.phases import brownouts
from rollout.registry import Registry, migrate
from rollout.registry import locks as locks_module
from rollout.registry.engine import make_engine
from rollout.registry.ledger import utc_now
from rollout.registry.locks import (
    RUN_LOCKS,
    exclusive_run,
    make_lock_engine,
    migration_exclusive,
)
from rollout.warehouse import connect as warehouse_connect
from rollout.warehouse import ingest

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


def test_a_run_starting_during_a_migration_is_refused_and_told_why(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at once: the wait a run killed a moment ago is given to let its lock go
    (LOCK_SETTLE_SECONDS) is not spent on a migration, which holds every lock for as
    long as it works (it was 2 s a refusal on PostgreSQL)."""
    monkeypatch.setattr(locks_module, "LOCK_SETTLE_SECONDS", 60.0)
    _ = registry.engine  # made before the migration began (a first use meanwhile is refused)
    started = time.monotonic()
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
    assert time.monotonic() - started < 30  # not a settle of 60 s a lock
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


# The registry's tables a writer without a run lock changes, all rows counted: what
# "nothing was changed" is checked against.
WRITTEN = (
    "email_suppressions",
    "notifications",
    "brownout_windows",
    "actions",
    "plan_runs",
)


def written(registry: Registry) -> dict[str, Any]:
    with registry.engine.connect() as connection:
        return {
            table: connection.execute(text(f"select * from {table} order by 1")).all()
            for table in WRITTEN
        }


@pytest.fixture
def drill(plan: Plan) -> Plan:
    """The plan with one brown-out tomorrow, so it can still be started or ended."""
    tomorrow = utc_now().replace(microsecond=0) + timedelta(days=1)
    return plan.model_copy(update={"brownouts": [Brownout(name="drill", starts_at=tomorrow)]})


@pytest.fixture
def sendgrid() -> Iterator[DevSendGrid]:
    with DevSendGrid() as server:
        yield server


@pytest.fixture
def writers(
    registry: Registry,
    drill: Plan,
    sendgrid: DevSendGrid,
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
) -> dict[str, Callable[[], object]]:
    """Every writer that holds no run lock, each with something to write: a drill
    scheduled (to start and end), a manual suppression (to lift), a queued email (to
    withdraw), a failed one (to retry), a SendGrid bounce (to copy), a delivery event
    ingested into the warehouse (to apply to the registry)."""
    brownouts.schedule(registry, drill, actor="rm")
    outbox.suppress(registry, "dan@example.com", reason="bounced", actor="ops")
    with bound_to(registry.engine):
        NotificationFactory(state="queued", phase="cohort-1", email="phase_notice")
        NotificationFactory(state="failed", error="outbox 2: timed out")
        delivered = NotificationFactory(state="sent").id
    sendgrid.suppress(
        {"bounces": [{"email": "eve@example.com", "created": 1_640_995_200, "reason": "550"}]}
    )
    landing = tmp_path / "landing"
    (landing / "events").mkdir(parents=True)
    (landing / "events" / "events-0001.json").write_text(
        json.dumps(
            [
                {
                    "sg_event_id": "e1",
                    "event": "delivered",
                    "timestamp": 1_641_800_000,
                    "email": "ann@example.com",
                    "outbox_id": str(delivered),
                }
            ]
        )
    )
    ingest.ingest(con, [landing], quarantine_limit=0.0, landing_root=landing)
    sender = SendGridSender(DEFAULT_API_KEY, sendgrid.url, timeout=5, sleep=lambda _: None)
    return {
        "brownout schedule": lambda: brownouts.schedule(
            registry,
            drill.model_copy(
                update={"brownouts": [drill.brownouts[0].model_copy(update={"hours": 12})]}
            ),
            actor="rm",
        ),
        "brownout start": lambda: brownouts.start_now(
            registry, "drill", actor="rm", reason="rehearsal"
        ),
        "brownout end": lambda: brownouts.end_now(registry, "drill", actor="rm", reason="cut"),
        "notify suppress": lambda: outbox.suppress(
            registry, "ann@example.com", reason="asked", actor="rm"
        ),
        "notify unsuppress": lambda: unsuppress(
            registry, "dan@example.com", reason="by mistake", actor="rm"
        ),
        "notify withdraw": lambda: withdraw(
            registry, Selection(phase="cohort-1"), reason="wrong text", actor="rm"
        ),
        "retry failed emails": lambda: outbox.retry_failed(registry),
        "notify sync-suppressions": lambda: sync_suppressions(registry, sender, actor="ops"),
        "ingest's delivery states": lambda: apply_delivery(con, registry),
    }


WRITERS = [
    "brownout schedule",
    "brownout start",
    "brownout end",
    "notify suppress",
    "notify unsuppress",
    "notify withdraw",
    "retry failed emails",
    "notify sync-suppressions",
    "ingest's delivery states",
]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_writer_without_a_run_lock_is_refused_during_a_migration_and_changes_nothing(
    registry: Registry, writers: dict[str, Callable[[], object]], writer: str
) -> None:
    before = written(registry)
    with migration_exclusive(registry.url):
        with pytest.raises(GuardRefused, match="a schema migration") as refused:
            writers[writer]()
        assert refused.value.exit_code == 3
        assert "nothing was changed" in str(refused.value)
    assert written(registry) == before
    writers[writer]()  # the migration gone, it goes
    assert written(registry) != before


def test_a_writer_that_checked_the_schema_before_a_migration_refuses_to_write(
    registry: Registry,
) -> None:
    """A long-lived writer (a Prefect worker's flow, an operator's session) checked the
    schema, then a downgrade ran: its write is refused, not made in the old schema."""
    registry.check_schema()
    with Registry(registry.url) as operator:
        migrate.downgrade(operator.engine, BEFORE)
    with pytest.raises(RolloutError, match=f"schema revision {BEFORE}, this rollout needs"):
        outbox.suppress(registry, "ann@example.com", reason="asked", actor="rm")
    with registry.engine.connect() as connection:
        assert connection.execute(text("select count(*) from email_suppressions")).scalar() == 0
    migrate.upgrade(registry.engine)


def test_a_migration_waits_for_a_write_in_flight_and_the_write_commits_first(
    registry: Registry,
) -> None:
    """A suppression's transaction at work when `db downgrade` starts: the migration
    changes the schema once it committed, not under it."""
    done: list[BaseException | None] = []

    def migrate_down() -> None:
        try:
            with Registry(registry.url) as operator:
                migrate.downgrade(operator.engine, BEFORE)
            done.append(None)
        except BaseException as error:
            done.append(error)

    migration = threading.Thread(target=migrate_down)
    with registry.writing() as connection:
        connection.execute(
            text(
                "insert into email_suppressions (address, source, reason, created_at, "
                "created_by) values ('ann@example.com', 'manual', 'asked', "
                "current_timestamp, 'rm')"
            )
        )
        migration.start()
        time.sleep(1.0)
        assert migration.is_alive() and done == []  # waiting for the write
    migration.join(timeout=60)
    assert done == [None]
    assert migrate.current_revision(registry.engine) == BEFORE
    with registry.engine.connect() as connection:
        assert (
            connection.execute(
                select(func.count()).select_from(text("email_suppressions"))
            ).scalar()
            == 1
        )
    migrate.upgrade(registry.engine)


def test_a_writer_during_a_migration_is_refused_on_one_line_exit_3(
    rollout_home: Path,
) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    with migration_exclusive(f"sqlite:///{rollout_home / 'registry.db'}"):
        refused = runner.invoke(
            app, ["notify", "suppress", "ann@example.com", "--reason", "asked", "--apply"]
        )
    assert refused.exit_code == 3, refused.stderr
    assert "a schema migration (`rollout db upgrade` or `db downgrade`) is at work" in (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


# What a release manager or an analyst reads of the registry while an operator
# migrates: each first reaches it through its schema check. (`cohorts show` reads the
# warehouse alone, which a migration does not change.)
READERS = [
    ["notify", "status"],
    ["plan", "show"],
    ["report", "--as-of", "2022-01-31"],
    ["brownout", "status"],
]


@pytest.mark.parametrize("reader", READERS, ids=" ".join)
def test_a_read_during_a_migration_is_refused_on_one_line_exit_3(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, reader: list[str]
) -> None:
    """An upgrade at work: the schema is still the old one, and the reader was told "run
    `rollout db upgrade`", which is at work already. A downgrade at work: the schema was
    the newest, so the reader went on reading tables the migration was changing."""
    monkeypatch.setenv("ROLLOUT_PLAN", str(Path(__file__).parents[1] / "plans" / "npm-2022.yaml"))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    warehouse_connect(rollout_home / "warehouse.duckdb").close()
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    for revision in (BEFORE, NEWEST):  # an upgrade at work; a downgrade at work
        engine = make_engine(url)
        migrate.downgrade(engine, revision)
        engine.dispose()
        with migration_exclusive(url):
            refused = runner.invoke(app, reader)
        assert refused.exit_code == 3, refused.stderr
        assert refused.stderr.startswith(
            "error: a schema migration (`rollout db upgrade` or `db downgrade`) is at work "
            "on the registry"
        )
        assert "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()


def test_a_registry_first_used_during_a_migration_is_refused(registry: Registry) -> None:
    """On each backend: PostgreSQL's migration holds its advisory lock, SQLite's its file."""
    with migration_exclusive(registry.url), Registry(registry.url) as reader:
        with pytest.raises(GuardRefused, match="a schema migration") as refused:
            reader.check_schema()
        assert refused.value.exit_code == 3
    with Registry(registry.url) as reader:
        reader.check_schema()  # the migration gone, it reads


def test_doctor_during_an_upgrade_says_a_migration_is_at_work_not_to_run_the_upgrade(
    registry: Registry,
) -> None:
    """An upgrade at work: doctor's schema check said "run `rollout db upgrade`" (a fail,
    exit 1), the upgrade at work already, as a reader was told before it was refused."""
    from rollout.ops.doctor import Status, check_schema

    migrate.downgrade(registry.engine, BEFORE)
    with migration_exclusive(registry.url):
        during = check_schema(registry)
    assert during.status is Status.warn, during
    assert "a schema migration" in during.detail and "is at work" in during.detail
    assert "run `rollout db upgrade`" not in during.detail
    migrate.upgrade(registry.engine)
    assert check_schema(registry).status is Status.ok


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_db_status_during_an_upgrade_says_a_migration_is_at_work_in_every_format(
    rollout_home: Path, fmt: str
) -> None:
    """It said only `up_to_date: false`, which reads as "run `rollout db upgrade`", the
    upgrade at work already: doctor and the readers say a migration is at work."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    engine = make_engine(url)
    migrate.downgrade(engine, BEFORE)
    engine.dispose()
    with migration_exclusive(url):
        during = runner.invoke(app, ["db", "status", "--format", fmt])
    assert during.exit_code == 0, during.stderr
    assert "a schema migration (`rollout db upgrade` or `db downgrade`) is at work" in (
        " ".join(during.stderr.split())
    )
    if fmt == "json":
        status = json.loads(during.stdout)
        assert (status["up_to_date"], status["migration_at_work"]) == (False, True)
    elif fmt == "csv":
        [row] = csv.DictReader(io.StringIO(during.stdout))
        assert (row["up_to_date"], row["migration_at_work"]) == ("False", "True"), row
    else:  # a table: the field and its value on one line
        [line] = [line for line in during.stdout.splitlines() if "migration_at_work" in line]
        assert "true" in line.lower(), during.stdout
    after = runner.invoke(app, ["db", "status", "--format", "json"])
    assert json.loads(after.stdout)["migration_at_work"] is False
    assert "schema migration" not in after.stderr


def test_a_user_who_cannot_read_the_lock_files_reads_unless_a_migration_is_at_work(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read-only command checks the migration's lock file: one this user may not
    open failed with "Permission denied" (exit 1; doctor's schema check a fail), so an
    analyst could read nothing. Whether it is held is asked of the kernel instead: read
    when no migration is at work, refused as any reader is while one is."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    with migration_exclusive(url):
        pass  # every lock file made, as on a registry that has been migrated
    real_open = os.open
    monkeypatch.setattr(
        locks_module.os,
        "open",
        lambda path, flags, *args, **kwargs: (
            _refused(path)
            if str(path).endswith(".lock") and not flags & (os.O_WRONLY | os.O_RDWR)
            else real_open(path, flags, *args, **kwargs)
        ),
    )
    for reader in (["notify", "status"], ["brownout", "status"], ["db", "status"]):
        read = runner.invoke(app, reader)
        assert read.exit_code == 0, (reader, read.stderr)
    engine = make_engine(url)
    assert locks_module.run_lock_held(url, engine, "enforce") is False
    with migration_exclusive(url):
        refused = runner.invoke(app, ["notify", "status"])
        assert locks_module.run_lock_held(url, engine, "enforce") is False
        with Registry(url) as reader, pytest.raises(GuardRefused):
            reader.check_schema()
    assert refused.exit_code == 3, refused.stderr
    assert "a schema migration" in refused.stderr and "Traceback" not in refused.stderr
    with exclusive_run(url, "enforce", None):
        assert locks_module.run_lock_held(url, engine, "enforce") is True
    engine.dispose()

    # Where the kernel's table cannot be read either: one line saying what to do.
    monkeypatch.setattr(locks_module, "PROC_LOCKS", rollout_home / "no-such-table")
    failed = runner.invoke(app, ["notify", "status"])
    assert failed.exit_code == 1
    [said] = failed.stderr.strip().splitlines()
    assert said.startswith(f"error: {rollout_home / 'registry.db.schema-migration.lock'}: ")
    assert "cannot tell whether" in said and "chmod a+r" in said


def _refused(path: Any) -> int:
    raise PermissionError(13, "Permission denied", str(path))

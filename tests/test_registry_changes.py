"""The extract reads again only the registry tables that changed (SQLite's change
versions, rollout.registry.changes), and its copy is always what a full extract gives."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from rollout import warehouse
from rollout.registry import Registry, bulk, changes, migrate
from rollout.registry.engine import adbc_uri, make_engine
from rollout.warehouse import extract
from tests.factories import AccountFactory, bound_to
from tests.test_backup_restore import pg_tool

T0 = datetime(2022, 1, 3, 9)
TABLES = ("accounts", "tfa_factors", "tokens")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The tables each extract read from the registry."""
    seen: list[tuple[str, ...]] = []
    original = extract._replace_tables

    def spy(
        con: duckdb.DuckDBPyConnection, url: str, tables: tuple[str, ...], **kw: bool
    ) -> dict[str, int]:
        seen.append(tables)
        return original(con, url, tables, **kw)

    monkeypatch.setattr(extract, "_replace_tables", spy)
    return seen


def _copy(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[object, ...]]:
    return con.execute(f"select * from registry.{table} order by all").fetchall()


def _raw(url: str) -> sqlite3.Connection:
    """A connection of another program (the registry's own application)."""
    return sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)


def test_an_unchanged_table_is_not_read_again(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection, reads: list[tuple[str, ...]]
) -> None:
    with bound_to(engine):
        AccountFactory(username="alice")
    assert extract.extract_registry(con, Registry(sqlite_url), TABLES) == {
        "accounts": 1,
        "tfa_factors": 0,
        "tokens": 0,
    }
    assert extract.extract_registry(con, Registry(sqlite_url), TABLES)["accounts"] == 1
    assert reads == [TABLES]  # the second extract read nothing


def test_an_extract_with_nothing_changed_does_not_wait_for_a_running_job(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection, reads: list[tuple[str, ...]]
) -> None:
    """The claim took the write lock on every extract, changed or not, so a daily
    extract with nothing to read waited for a running job's write transaction (up to a
    minute, then "database is locked"). With nothing to mark read it now only reads."""
    _insert_account(sqlite_url, "alice")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    with closing(_raw(sqlite_url)) as job, ThreadPoolExecutor(max_workers=1) as pool:
        job.execute("BEGIN IMMEDIATE")  # the job's write transaction
        run = pool.submit(extract.extract_registry, con, Registry(sqlite_url), TABLES)
        try:
            counts = run.result(timeout=10)
        finally:
            job.execute("ROLLBACK")  # lets a waiting extract go on, whatever happened
            run.cancel()
    assert counts["accounts"] == 1
    assert reads == [TABLES]


@pytest.mark.parametrize(
    "change",
    [
        "insert into tokens (account_id, name, kind, writes, bypass_2fa, created_at) "
        "values (1, 'ci', 'automation', true, true, '2022-01-03 09:00:00.000000')",
        "update accounts set elv_enrolled_at = '2022-01-04 00:00:00.000000'",
        "delete from accounts",
    ],
    ids=["insert", "update", "delete"],
)
def test_a_change_by_another_program_is_read(
    engine: Engine,
    sqlite_url: str,
    con: duckdb.DuckDBPyConnection,
    reads: list[tuple[str, ...]],
    change: str,
) -> None:
    with bound_to(engine):
        AccountFactory(username="alice")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    changed = change.split()[2 if change.startswith(("insert", "delete")) else 1]
    with _raw(sqlite_url) as raw:
        raw.execute(change)
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert reads[-1] == (changed,)
    full = _full_copy(sqlite_url, changed)
    assert _copy(con, changed) == full


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [
        name
        for (name,) in con.execute(
            "select column_name from duckdb_columns() where schema_name = 'registry' "
            "and table_name = $table order by column_index",
            {"table": table},
        ).fetchall()
    ]


def test_the_warehouse_holds_no_address_nor_the_senders_bookkeeping(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection
) -> None:
    with bound_to(engine):
        AccountFactory(username="alice", email="alice@example.com")
    extract.extract_registry(con, Registry(sqlite_url), ("accounts", "notifications"))
    assert "email" not in _columns(con, "accounts")
    assert "username" in _columns(con, "accounts")
    kept = _columns(con, "notifications")
    bookkeeping = {"context", "message_id", "attempts", "error", "sender", "lease_expires_at"}
    assert not (bookkeeping | {"claim_token"}) & set(kept)
    assert {"email", "state", "delivery", "run_id", "sent_at"} <= set(kept)
    assert "alice@example.com" not in str(_copy(con, "accounts"))


def test_a_copy_with_other_columns_is_read_again_though_unchanged(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection, reads: list[tuple[str, ...]]
) -> None:
    """A warehouse extracted by an earlier rollout (accounts with their address) gets
    this one's copy on its next extract, though the registry did not change."""
    with bound_to(engine):
        AccountFactory(username="alice", email="alice@example.com")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    con.execute("alter table registry.accounts add column email varchar")
    con.execute("update registry.accounts set email = 'alice@example.com'")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert reads == [TABLES, ("accounts",)]
    assert "email" not in _columns(con, "accounts")
    assert _copy(con, "accounts") == _full_copy(sqlite_url, "accounts")


@pytest.mark.parametrize("kept", [True, False])
def test_the_extract_puts_back_the_connections_row_order_setting(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection, kept: bool
) -> None:
    """The copies are written in any row order (half the CPU of a cold extract); the
    setting is the connection's own again afterwards, whatever it was."""
    with bound_to(engine):
        AccountFactory(username="alice")
    con.execute(f"set preserve_insertion_order = {kept}")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert warehouse.scalar(con, "select current_setting('preserve_insertion_order')") is kept
    with _raw(sqlite_url) as raw:
        raw.execute("drop table tokens")  # the next extract fails half way
    with pytest.raises(Exception, match="tokens"):
        extract.extract_registry(con, Registry(sqlite_url), TABLES, full=True)
    assert warehouse.scalar(con, "select current_setting('preserve_insertion_order')") is kept


def test_an_extract_whose_copy_fails_in_the_warehouse_says_why_and_puts_the_setting_back(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection
) -> None:
    """A copy the warehouse refuses (an analyst's view where the extract keeps a table)
    aborts the warehouse's transaction, which then refuses every statement but a
    rollback: putting the row order setting back on that connection failed with
    "Current transaction is aborted", which the caller saw instead of the reason, and
    the setting stayed off for the process."""
    with bound_to(engine):
        AccountFactory(username="alice")
    con.execute("create or replace view registry.tokens as select 1 as id")
    with pytest.raises(duckdb.Error) as failed:
        extract.extract_registry(con, Registry(sqlite_url), TABLES, full=True)
    assert "transaction is aborted" not in str(failed.value)
    assert "tokens" in str(failed.value)
    assert warehouse.scalar(con, "select current_setting('preserve_insertion_order')") is True


def _full_copy(url: str, table: str) -> list[tuple[object, ...]]:
    with warehouse.open_warehouse(":memory:") as fresh:
        extract.extract_registry(fresh, Registry(url), (table,), full=True)
        return _copy(fresh, table)


def test_a_bulk_load_marks_its_tables_changed_and_keeps_tracking(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection, reads: list[tuple[str, ...]]
) -> None:
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    engine.dispose()  # ADBC's SQLite beside SQLAlchemy's: see rollout.registry.bulk
    accounts = pa.table(
        {
            "id": [7],
            "username": ["bulk"],
            "email": ["bulk@example.com"],
            "email_verified": [True],
            "created_at": pa.array([T0], pa.timestamp("us")),
        }
    )
    bulk.insert_arrow(sqlite_url, "accounts", accounts)
    assert extract.extract_registry(con, Registry(sqlite_url), TABLES)["accounts"] == 1
    assert reads[-1] == ("accounts",)
    with _raw(sqlite_url) as raw:  # the triggers are back
        raw.execute("update accounts set username = 'renamed'")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert reads[-1] == ("accounts",)
    assert _copy(con, "accounts")[0][1] == "renamed"


def test_without_its_triggers_a_table_is_read_whole_every_time(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection, reads: list[tuple[str, ...]]
) -> None:
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    with _raw(sqlite_url) as raw:
        raw.execute("drop trigger registry_changes_accounts_update")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert reads == [TABLES] * 3


def test_a_migration_that_copies_a_table_leaves_its_triggers_in_place(
    engine: Engine, sqlite_url: str
) -> None:
    # 0007 adds a column to notifications, which SQLite does by copying the table.
    migrate.downgrade(engine, "0006")
    migrate.upgrade(engine)
    with engine.connect() as connection:
        triggers = set(
            connection.execute(
                text("select name from sqlite_master where type = 'trigger'")
            ).scalars()
        )
    expected = {
        f"registry_changes_{table}_{operation}"
        for table in changes.TRACKED_TABLES
        for operation in changes.OPERATIONS
    }
    assert expected <= triggers


def test_a_replaced_registry_is_read_whole(
    engine: Engine, sqlite_url: str, con: duckdb.DuckDBPyConnection, reads: list[tuple[str, ...]]
) -> None:
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    migrate.downgrade(engine, "base")  # what `rollout sample --replace` does
    migrate.upgrade(engine)
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert reads == [TABLES, TABLES]


def _backup(url: str, to: Path) -> None:
    """SQLite's online backup (the sqlite3 shell's ``.backup``): a consistent copy,
    whatever other connections are doing."""
    with (
        closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as source,
        closing(sqlite3.connect(to)) as target,
    ):
        source.backup(target)


def _restore(url: str, backup: Path) -> None:
    """The backup put back over the registry, page by page (the shell's ``.restore``):
    what copying an older registry.db over it gives, without breaking the connections
    open on it."""
    with (
        closing(sqlite3.connect(backup)) as source,
        closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as target,
    ):
        source.backup(target)


def _insert_account(url: str, username: str) -> None:
    with _raw(url) as raw:
        raw.execute(
            "insert into accounts (username, email, email_verified, created_at) "
            "values (?, 'x@example.com', 1, '2022-01-03 09:00:00.000000')",
            (username,),
        )


@pytest.mark.parametrize("backed_up", ["before a change", "between a change and its read"])
def test_a_registry_restored_from_an_older_backup_is_read_again(
    engine: Engine,
    sqlite_url: str,
    con: duckdb.DuckDBPyConnection,
    reads: list[tuple[str, ...]],
    tmp_path: Path,
    backed_up: str,
) -> None:
    """The restore takes the change versions back too, to one the warehouse's copy
    holds (by a change after the restore: bob's insert and carol's bump accounts to the
    same version), or holds already (made while a change was not yet read: the copy's
    version is the backup's, but the copy has carol's insert too). Either way the copy
    kept rows the registry no longer has, until accounts changed again."""
    backup = tmp_path / "backup.db"
    _insert_account(sqlite_url, "alice")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    if backed_up == "before a change":
        _backup(sqlite_url, backup)
        _insert_account(sqlite_url, "bob")
    else:
        _insert_account(sqlite_url, "bob")
        _backup(sqlite_url, backup)
        _insert_account(sqlite_url, "carol")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    _restore(sqlite_url, backup)
    if backed_up == "before a change":
        _insert_account(sqlite_url, "carol")
    counts = extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert _copy(con, "accounts") == _full_copy(sqlite_url, "accounts")
    assert counts["accounts"] == 2
    # Read again once, not on every run from now on.
    reads.clear()
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert reads == []


def test_a_registry_restored_from_a_backup_made_during_an_extract_is_read_again(
    engine: Engine,
    sqlite_url: str,
    con: duckdb.DuckDBPyConnection,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A backup made after an extract claimed the versions and before it read, and a
    write after the backup: the copy has that write, the backup not, and the backup's
    version is the one the extract claimed."""
    backup = tmp_path / "backup.db"
    _insert_account(sqlite_url, "alice")
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    _insert_account(sqlite_url, "bob")
    claim = changes.claim_versions

    def claim_back_up_then_write(database: str, tables: tuple[str, ...]) -> object:
        versions = claim(database, tables)
        _backup(sqlite_url, backup)
        _insert_account(sqlite_url, "carol")
        return versions

    with monkeypatch.context() as patched:
        patched.setattr(changes, "claim_versions", claim_back_up_then_write)
        extract.extract_registry(con, Registry(sqlite_url), TABLES)
    _restore(sqlite_url, backup)
    extract.extract_registry(con, Registry(sqlite_url), TABLES)
    assert _copy(con, "accounts") == _full_copy(sqlite_url, "accounts")


@pytest.mark.postgres
def test_on_postgresql_a_restored_registry_is_copied_as_restored(
    postgres_schema_url: str, con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """pg_restore of an older dump over the registry (its schema: tests/conftest.py),
    then a write: PostgreSQL keeps no change versions (every extract reads every table),
    so there is none for the restore to take back. Kept so that an extract made
    incremental there too is made to see restores."""
    url = postgres_schema_url
    schema = make_url(url).query["options"].removeprefix("-csearch_path=")
    dump = tmp_path / "registry.dump"
    engine = make_engine(url)
    migrate.upgrade(engine)

    def insert(username: str) -> None:
        with bound_to(engine):
            AccountFactory(username=username)

    insert("alice")
    extract.extract_registry(con, Registry(url), TABLES)
    dump_command = [pg_tool("pg_dump"), "--format=custom", f"--schema={schema}"]
    subprocess.run([*dump_command, f"--file={dump}", adbc_uri(url)], check=True, timeout=300)
    insert("bob")
    extract.extract_registry(con, Registry(url), TABLES)
    engine.dispose()  # the restore drops and makes the tables again
    restore_command = [pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner"]
    subprocess.run(
        [*restore_command, "--exit-on-error", f"--dbname={adbc_uri(url)}", str(dump)],
        check=True,
        timeout=300,
    )
    insert("carol")
    extract.extract_registry(con, Registry(url), TABLES)
    usernames = con.execute("select username from registry.accounts order by 1").fetchall()
    assert usernames == [("alice",), ("carol",)]
    engine.dispose()


# --- the property: whatever the writes and wherever they fall, the copy is current ----

INSERT_ACCOUNT = (
    "accounts",
    "insert into accounts (username, email, email_verified, created_at) "
    "values ('u' || lower(hex(randomblob(8))), 'x@example.com', 1, "
    "'2022-01-03 09:00:00.000000')",
)
WRITES = st.sampled_from(
    [
        INSERT_ACCOUNT,
        (
            "accounts",
            "update accounts set last_login_at = '2022-01-05 10:00:00.000000' "
            "where id = (select max(id) from accounts)",
        ),
        (
            "accounts",
            "delete from accounts where id = (select min(id) from accounts) "
            "and id not in (select account_id from tfa_factors)",
        ),
        (
            "tfa_factors",
            "insert into tfa_factors (account_id, kind, created_at) "
            "select max(id), 'totp', '2022-01-03 09:00:00.000000' from accounts "
            "having count(*) > 0",
        ),
        (
            "tfa_factors",
            "update tfa_factors set removed_at = '2022-01-06 00:00:00.000000' "
            "where id = (select min(id) from tfa_factors)",
        ),
    ]
)
# A backup of the registry (the latest is kept), or the latest put back over it: a
# restore takes the change versions back with the rows.
BACKUP = ("backup", "")
RESTORE = ("restore", "")
ACTIONS = st.one_of(WRITES, st.just(BACKUP), st.just(RESTORE))
# Each step: writes, backups and restores, then an extract, with writes and backups
# falling between its claim of the versions and its read (the race the claim protocol
# must survive; a restore under a running extract is not one an operator makes), then
# more, and the extract that must have it all.
STEPS = st.lists(
    st.tuples(
        st.lists(ACTIONS, max_size=4),
        st.lists(st.one_of(WRITES, st.just(BACKUP)), max_size=2),
        st.lists(ACTIONS, max_size=2),
    ),
    max_size=6,
)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty registry at the newest schema, copied for each example (migrating
    one per example was most of this test's time)."""
    path = tmp_path_factory.mktemp("migrated") / "registry.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
# What 150 examples found on the code before the copies' stamps (15 do not, most
# runs): a backup made before the first extract (accounts' inserts not read yet) put
# back, an insert, and the version is the one the first extract recorded.
@example(steps=[([BACKUP], [], []), ([RESTORE, INSERT_ACCOUNT], [], [])])
# A backup made between an extract's claim and a write its read has, put back: the
# version is the one claimed (what the copy's version stands for, read after it).
@example(steps=[([], [BACKUP, INSERT_ACCOUNT], [RESTORE])])
def test_the_copy_is_what_a_full_extract_gives_after_every_run(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    migrated: Path,
    steps: list,
) -> None:
    folder = tmp_path_factory.mktemp("changes")
    shutil.copyfile(migrated, folder / "registry.db")
    url = f"sqlite:///{folder / 'registry.db'}"
    backup = folder / "backup.db"
    between: list[tuple[str, str]] = []
    claim = changes.claim_versions

    def run(actions: list[tuple[str, str]]) -> None:
        for kind, statement in actions:
            if (kind, statement) == BACKUP:
                _backup(url, backup)
            elif (kind, statement) == RESTORE:
                if backup.exists():
                    _restore(url, backup)
            else:
                with _raw(url) as raw:
                    raw.execute(statement)

    def claim_then_write(database: str, tables: tuple[str, ...]) -> object:
        versions = claim(database, tables)
        run(between)
        return versions

    monkeypatch.setattr(changes, "claim_versions", claim_then_write)
    with warehouse.open_warehouse(folder / "w.duckdb") as con:
        for before, during, after in steps:
            run(before)
            between[:] = during
            extract.extract_registry(con, Registry(url), ("accounts", "tfa_factors"))
            between.clear()
            run(after)
            # What was written during the last run is read by the next at the latest.
            extract.extract_registry(con, Registry(url), ("accounts", "tfa_factors"))
            for table in ("accounts", "tfa_factors"):
                assert _copy(con, table) == _full_copy(url, table), table


def test_a_registry_in_a_folder_named_with_a_hash_is_read_only_where_it_changed(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, reads: list[tuple[str, ...]]
) -> None:
    """The claim opened ``file:<path>?mode=rw`` unquoted: a ``#`` in a folder's name
    (``C#``) ended SQLite's path there, so it made an empty file ``C`` beside the folder
    and, finding no change tracking in it, the extract read every table every time."""
    folder = tmp_path / "C#"
    folder.mkdir()
    url = f"sqlite:///{folder / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    with bound_to(engine):
        AccountFactory(username="alice")
    engine.dispose()
    assert extract.extract_registry(con, Registry(url), TABLES)["accounts"] == 1
    assert extract.extract_registry(con, Registry(url), TABLES)["accounts"] == 1
    assert reads == [TABLES]  # the second extract read nothing
    assert not (tmp_path / "C").exists()

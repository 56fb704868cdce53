"""The registry schema on SQLite and PostgreSQL: migrations, constraints, the ledger."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import adbc_driver_manager
import pytest
from sqlalchemy import Engine, event, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from rollout import warehouse
from rollout.core.errors import RolloutError
from rollout.registry import Registry, migrate
from rollout.registry.engine import (
    RegistryURLRefused,
    adbc_connect,
    adbc_uri,
    begin_writing,
    make_engine,
    normalize_url,
    session_scope,
)
from rollout.registry.models import (
    Account,
    Action,
    Base,
    Notification,
    TfaFactor,
    Token,
    WebSession,
)
from rollout.registry.statistics import CAMPAIGN_TABLES, refresh_statistics
from rollout.warehouse import extract
from rollout.warehouse.extract import EXTRACTED_TABLES, extract_registry
from tests.conftest import fresh_postgres_database
from tests.factories import (
    AccountFactory,
    FactorFactory,
    OrgFactory,
    OrgMemberFactory,
    SessionFactory,
    TeamFactory,
    TokenFactory,
)
from tests.support.foreign_postgres import postgres_answering_in

T0 = datetime(2022, 1, 1, 12, 0)


def add_account(engine: Engine, username: str = "alice", **fields: object) -> int:
    with session_scope(engine) as session:
        account = Account(
            username=username,
            email=f"{username}@example.com",
            email_verified=True,
            created_at=T0,
            **fields,
        )
        session.add(account)
        session.flush()
        return account.id


def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_registry_url: str) -> None:
    engine = make_engine(empty_registry_url)
    migrate.upgrade(engine)
    assert migrate.is_up_to_date(engine)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
    engine.dispose()


def test_migrations_match_the_models(registry: Registry) -> None:
    """An autogenerate diff after upgrade is empty: models and migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with registry.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_usernames_are_unique(registry: Registry) -> None:
    add_account(registry.engine, "alice")
    with pytest.raises(IntegrityError):
        add_account(registry.engine, "alice")


def test_kinds_are_checked(registry: Registry) -> None:
    account = add_account(registry.engine)
    with pytest.raises(IntegrityError), session_scope(registry.engine) as session:
        session.add(TfaFactor(account_id=account, kind="sms", created_at=T0))


def test_legacy_tokens_have_no_name(registry: Registry) -> None:
    account = add_account(registry.engine)
    with session_scope(registry.engine) as session:
        session.add(Token(account_id=account, name=None, kind="publish", created_at=T0))
    with session_scope(registry.engine) as session:
        assert session.scalars(select(Token.name)).all() == [None]


def test_the_audit_ledger_is_append_only(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        session.add(
            Action(
                effect_key="revoke-session:1",
                action="revoke_session",
                reason="phase top-100",
                actor="test",
                created_at=T0,
            )
        )
    for statement in ("update actions set reason = 'rewritten'", "delete from actions"):
        with pytest.raises(DBAPIError, match="append-only"), registry.engine.begin() as connection:
            connection.execute(text(statement))
    with session_scope(registry.engine) as session:
        assert session.scalars(select(Action.reason)).all() == ["phase top-100"]


def test_an_effect_is_recorded_once(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        session.add(
            Action(
                effect_key="revoke-session:1",
                action="revoke_session",
                reason="r",
                actor="test",
                created_at=T0,
            )
        )
    with pytest.raises(IntegrityError), session_scope(registry.engine) as session:
        session.add(
            Action(
                effect_key="revoke-session:1",
                action="revoke_session",
                reason="r",
                actor="test",
                created_at=T0,
            )
        )


def test_an_email_exists_once_per_account_kind_and_phase(registry: Registry) -> None:
    account = add_account(registry.engine)

    def queue(phase: str) -> None:
        with session_scope(registry.engine) as session:
            session.add(
                Notification(
                    account_id=account,
                    email="phase_notice",
                    phase=phase,
                    state="queued",
                    created_at=T0,
                    updated_at=T0,
                )
            )

    queue("top-100")
    queue("high-impact")
    with pytest.raises(IntegrityError):
        queue("top-100")


# The registry's rows that can be deleted (an account closed takes its factors,
# sessions, tokens and org memberships with it; an org its teams and members) while the
# ledger, the outbox and the warehouse's history still name their ids.
DELETABLE = {
    "accounts": lambda: AccountFactory(),
    "tfa_factors": lambda: FactorFactory(),
    "web_sessions": lambda: SessionFactory(),
    "tokens": lambda: TokenFactory(),
    "orgs": lambda: OrgFactory(),
    "org_members": lambda: OrgMemberFactory(),
    "teams": lambda: TeamFactory(),
}


@pytest.mark.parametrize("table", sorted(DELETABLE))
def test_the_id_of_a_deleted_row_is_never_given_to_another(
    registry: Registry, factories: None, table: str
) -> None:
    """SQLite gives a new row the largest id plus one, unless the table says
    AUTOINCREMENT: the newest row deleted, the next took its id, and with it the
    history the ledger keeps of the first (notices, flags, revocations, snoozes)."""
    make = DELETABLE[table]
    make()
    deleted = make().id
    with registry.engine.begin() as connection:
        connection.execute(text(f"DELETE FROM {table} WHERE id = :id"), {"id": deleted})
    assert make().id > deleted


def test_live_sessions_are_indexed_for_revocation(registry: Registry) -> None:
    indexes = {ix["name"]: ix for ix in inspect(registry.engine).get_indexes("web_sessions")}
    assert indexes["ix_web_sessions_live"]["column_names"] == ["account_id"]


@pytest.fixture
def pg_registry(postgres_schema_url: str) -> Iterator[Registry]:
    """A registry at the newest schema on PostgreSQL alone: what is PostgreSQL's own."""
    engine = make_engine(postgres_schema_url)
    migrate.upgrade(engine)
    engine.dispose()
    with Registry(postgres_schema_url) as registry:
        yield registry


def add_accounts(registry: Registry, prefix: str, count: int) -> None:
    with registry.engine.begin() as connection:
        connection.execute(
            Account.__table__.insert(),
            [
                {"username": f"{prefix}{i}", "email": f"{prefix}{i}@example.com", "created_at": T0}
                for i in range(count)
            ],
        )
        if not registry.is_sqlite:  # the counters reach pg_stat_* once a second
            connection.execute(text("select pg_stat_force_next_flush()"))


def analyzed_tables(registry: Registry) -> set[str]:
    with registry.engine.connect() as connection:
        return set(
            connection.execute(
                text(
                    "select relname from pg_stat_user_tables where schemaname = "
                    "current_schema() and coalesce(last_analyze, last_autoanalyze) is not null"
                )
            ).scalars()
        )


def test_sqlite_needs_no_planner_statistics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    with Registry(url) as registry:
        add_accounts(registry, "a", 300)
        assert refresh_statistics(registry.engine) == []


def test_tables_changed_in_bulk_are_analyzed_before_a_run_reads_them(
    pg_registry: Registry,
) -> None:
    """PostgreSQL plans the deadline audiences on its statistics: tables a bulk change
    made stale, or never analyzed, are analyzed when a run starts, not at autovacuum's
    next look."""
    add_accounts(pg_registry, "a", 300)
    # accounts changed in bulk; the others, empty, had never been analyzed.
    assert refresh_statistics(pg_registry.engine) == sorted(CAMPAIGN_TABLES)
    assert set(CAMPAIGN_TABLES) <= analyzed_tables(pg_registry)
    assert refresh_statistics(pg_registry.engine) == []  # fresh now: nothing to do
    add_accounts(pg_registry, "b", 10)  # under the threshold (50 rows + 10%)
    assert refresh_statistics(pg_registry.engine) == []
    add_accounts(pg_registry, "c", 100)
    assert refresh_statistics(pg_registry.engine) == ["accounts"]


def test_a_registry_that_cannot_be_written_keeps_its_statistics_and_works(
    pg_registry: Registry,
) -> None:
    """A standby or a read-only role: the refresh is an optimisation, never a failure."""
    add_accounts(pg_registry, "a", 300)
    engine = make_engine(pg_registry.url)

    @event.listens_for(engine, "connect")
    def read_only(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.autocommit = True
        dbapi_connection.execute("set default_transaction_read_only = on")
        dbapi_connection.autocommit = False

    try:
        assert refresh_statistics(engine) == []
    finally:
        engine.dispose()
    assert "accounts" not in analyzed_tables(pg_registry)


def test_a_statement_run_again_is_planned_for_its_values_not_prepared_once(
    pg_registry: Registry,
) -> None:
    """A batch's statements run again with other ids while the tables grow: PostgreSQL
    plans each run for its own values, never reusing a generic plan of a prepared
    statement made on the first runs' statistics (100 s of an npm-scale enforcement)."""
    add_accounts(pg_registry, "a", 20)
    with pg_registry.engine.connect() as connection:
        for number in range(10):
            connection.execute(select(Account.id).where(Account.username == f"a{number}"))
        prepared = connection.execute(text("select count(*) from pg_prepared_statements"))
        assert prepared.scalar_one() == 0


def test_postgres_urls_as_people_paste_them_use_psycopg() -> None:
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_extract_copies_every_table_with_model_types(registry: Registry, tmp_path: Path) -> None:
    alice = add_account(registry.engine, "alice", last_login_at=datetime(2022, 1, 5, 8, 30))
    bob = add_account(registry.engine, "bob")
    with session_scope(registry.engine) as session:
        session.add(TfaFactor(account_id=alice, kind="webauthn", created_at=T0))
        # Many NULLs then a value: the SQLite driver must not guess the column's type.
        for index in range(1500):
            session.add(
                WebSession(account_id=bob, created_at=T0, revoked_at=T0 if index == 1499 else None)
            )
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        counts = extract_registry(con, registry)
        assert set(counts) == set(EXTRACTED_TABLES)
        assert (counts["accounts"], counts["tfa_factors"], counts["web_sessions"]) == (2, 1, 1500)
        assert con.execute(
            "select username, email_verified, last_login_at from registry.accounts order by id"
        ).fetchall() == [("alice", True, datetime(2022, 1, 5, 8, 30)), ("bob", True, None)]
        assert warehouse.scalar(con, "select count(revoked_at) from registry.web_sessions") == 1
        types = dict(
            con.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'registry' and table_name = 'web_sessions'"
            ).fetchall()
        )
        assert types["revoked_at"] == "TIMESTAMP" and types["account_id"] == "BIGINT"
        # A second extract replaces, never appends.
        assert extract_registry(con, registry)["web_sessions"] == 1500


def test_both_sqlite_readers_give_the_same_tables(tmp_path: Path) -> None:
    """Small extracts are read in this process, large ones by the child exporters
    (IN_PROCESS_ROWS): the warehouse gets the same rows and types either way."""
    from rollout.demo.sample import generate_sample
    from tests.factories import (
        AccountFactory,
        CohortPackageFactory,
        MembershipFactory,
        NotificationFactory,
        bound_to,
    )

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    with Registry(url) as registry:
        generate_sample("tiny", 7, registry=registry, landing_dir=tmp_path / "landing")
    with bound_to(engine):  # the ledger's tables too: JSON lists, dates, NULLs
        account = AccountFactory(with_totp=True, sessions=2)
        MembershipFactory(account=account, packages=["left-pad", "ünïcode"])
        CohortPackageFactory()
        NotificationFactory(account=account)
    engine.dispose()

    def extracted(exporters: bool) -> dict[str, tuple[list[Any], list[Any]]]:
        with (
            warehouse.open_warehouse(tmp_path / f"{exporters}.duckdb") as con,
            Registry(url) as registry,
        ):
            extract_registry(con, registry, exporters=exporters)
            return {
                name: (
                    con.execute(
                        "select column_name, data_type from information_schema.columns "
                        "where table_schema = 'registry' and table_name = $name "
                        "order by ordinal_position",
                        {"name": name},
                    ).fetchall(),
                    con.execute(f"select * from registry.{name} order by all").fetchall(),
                )
                for name in EXTRACTED_TABLES
            }

    by_exporters, here = extracted(exporters=True), extracted(exporters=False)
    assert sum(len(rows) for _, rows in here.values()) > 1000
    assert all(here[name][1] for name in ("accounts", "notifications", "cohort_memberships"))
    for name in EXTRACTED_TABLES:
        assert here[name] == by_exporters[name], name


def test_a_small_extract_of_an_empty_table_gives_an_empty_table(
    registry: Registry, tmp_path: Path
) -> None:
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        assert extract_registry(con, registry, ("cohort_packages",)) == {"cohort_packages": 0}


def test_the_export_is_shared_out_evenly_smallest_share_first() -> None:
    sizes = {"notifications": 100, "accounts": 60, "tokens": 50, "orgs": 5}
    shares = extract._share(sizes, 2)
    assert sorted(name for share in shares for name in share) == sorted(sizes)
    totals = [sum(sizes[name] for name in share) for share in shares]
    assert totals == sorted(totals) and totals[-1] - totals[0] <= max(sizes.values())
    assert extract._share({"orgs": 5}, 2) == [("orgs",)]


def test_a_failed_exporter_changes_nothing_and_leaves_no_process_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def children() -> set[Path]:
        return {
            status
            for status in Path("/proc").glob("[0-9]*/status")
            if f"PPid:\t{os.getpid()}\n" in _read(status)
        }

    # Children an earlier test in this process left for good (multiprocessing's
    # resource tracker outlives the pool that started it) are not this test's.
    before = children()
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    add_account(engine, "alice")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        extract_registry(con, Registry(url), ("accounts", "tokens"), exporters=True)
        add_account(engine, "bob")
        with engine.begin() as connection:  # the registry loses a table: its export fails
            connection.execute(text("drop table tokens"))
        engine.dispose()
        shares = [("tokens",), ("accounts",)]  # the failing share is waited for first
        monkeypatch.setattr(extract, "_share", lambda sizes, ways: shares)
        monkeypatch.setattr(extract, "_table_sizes", lambda database, tables: {})
        with pytest.raises(RolloutError, match=r"reading the registry .* failed: .*tokens"):
            extract_registry(con, Registry(url), ("accounts", "tokens"), exporters=True)
        # All or nothing: bob, exported by the other share, did not come in.
        assert warehouse.scalar(con, "select count(*) from registry.accounts") == 1
    assert children() - before == set()


def test_the_exporters_run_this_rollout_not_one_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from another checkout's folder (or any folder with a ``rollout`` in it), the
    exporters import this process's rollout, as the extract that reads their files."""
    other = tmp_path / "checkout" / "rollout" / "registry"
    other.mkdir(parents=True)
    marker = tmp_path / "the-other-rollout-ran"
    (other.parent / "__init__.py").write_text("")
    (other / "__init__.py").write_text("")
    (other / "sqlite_export.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit(1)\n"
    )
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    add_account(engine, "alice")
    engine.dispose()
    monkeypatch.chdir(other.parents[1])
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        counts = extract_registry(con, Registry(url), ("accounts",), exporters=True)
    assert counts == {"accounts": 1}
    assert not marker.exists()


def test_the_exporters_files_go_beside_the_warehouse_and_a_killed_extracts_are_removed(
    tmp_path: Path,
) -> None:
    """A SIGKILL runs no cleanup: what a killed extract left (a copy of registry tables)
    is removed by the next, found beside the warehouse rather than lost in /tmp."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    add_account(engine, "alice")
    engine.dispose()
    killed = tmp_path / ".w.duckdb.extract-dead1234"
    killed.mkdir()
    (killed / "accounts.arrow").write_bytes(b"half a table")
    other = tmp_path / ".other.duckdb.extract-live"  # another warehouse's: not touched
    other.mkdir()
    seen: list[Path] = []
    real = extract._export_sqlite

    def watching(registry_url: str, sizes: dict[str, int], folder: Path) -> Any:
        seen.append(folder)
        return real(registry_url, sizes, folder)

    with (
        pytest.MonkeyPatch.context() as patch,
        warehouse.open_warehouse(tmp_path / "w.duckdb") as con,
    ):
        patch.setattr(extract, "_export_sqlite", watching)
        extract_registry(con, Registry(url), ("accounts",), exporters=True)
        assert warehouse.scalar(con, "select count(*) from registry.accounts") == 1
    assert [folder.parent for folder in seen] == [tmp_path]
    assert seen[0].name.startswith(".w.duckdb.extract-")
    assert not killed.exists() and not seen[0].exists() and other.exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # a process that ended while we looked
        return ""


def _read_then_write(engine: Engine, begin: Any, other_write: Any) -> None:
    """A batch as enforcement runs one: a temp table, a read, then a write; another
    process commits a write between the read and the write."""
    with begin(engine) as connection:
        connection.exec_driver_sql("create temp table if not exists batch_ids (id integer)")
        connection.exec_driver_sql("insert into batch_ids values (1)")
        connection.exec_driver_sql("select count(*) from accounts").scalar_one()
        other_write()
        connection.exec_driver_sql("update accounts set last_login_at = '2022-01-02'")


def test_two_sqlite_writers_wait_for_each_other_rather_than_fail(tmp_path: Path) -> None:
    """WAL refuses a transaction that read before another process's commit the right to
    write, at once ("database is locked", the busy timeout not waited): an enforcement
    batch beside ELV's enrolment stopped half way. begin_writing takes the write lock
    first: the other writer waits for it instead."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate.upgrade(make_engine(url))
    engine, other = make_engine(url), make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "insert into accounts (username, email, email_verified, created_at) "
            "values ('ann', 'ann@example.com', 1, '2022-01-01')"
        )

    def commit_now() -> None:
        with other.begin() as connection:
            connection.exec_driver_sql("update accounts set last_login_at = '2022-01-03'")

    with pytest.raises(DBAPIError, match="database is locked"):
        _read_then_write(engine, lambda e: e.begin(), commit_now)

    finished: list[str] = []

    def commit_in_a_thread() -> None:
        def write() -> None:
            commit_now()
            finished.append("other")

        thread = threading.Thread(target=write)
        thread.start()
        time.sleep(0.3)  # it is waiting for the lock this batch holds
        assert not finished
        threads.append(thread)

    threads: list[threading.Thread] = []
    _read_then_write(engine, begin_writing, commit_in_a_thread)
    threads[0].join(timeout=30)
    assert finished == ["other"]  # it waited for the batch's commit, then wrote
    engine.dispose()
    other.dispose()


def refused_by_engine_and_adbc(url: str | URL) -> tuple[RegistryURLRefused, RegistryURLRefused]:
    """What an engine (its making and first connection) and ADBC each raise for ``url``,
    both required to be RegistryURLRefused."""
    with pytest.raises(RegistryURLRefused) as through_the_engine:
        engine = make_engine(url)
        try:
            engine.connect()
        finally:
            engine.dispose()
    with pytest.raises(RegistryURLRefused) as through_adbc, adbc_connect(url):
        pass
    return through_the_engine.value, through_adbc.value


def test_a_url_the_server_turns_down_is_refused_alike_by_an_engine_and_by_adbc(
    turned_down_postgres_urls: dict[str, str],
) -> None:
    """The extract and the bulk loads read and write through ADBC, a driver of its own:
    a turned-down URL says so there in the same words (it was ADBC's error, and a
    traceback)."""
    for url in turned_down_postgres_urls.values():
        through_the_engine, through_adbc = refused_by_engine_and_adbc(url)
        for refused in (through_the_engine, through_adbc):
            assert refused.exit_code == 2
            assert str(refused).startswith("environment variable ROLLOUT_REGISTRY_URL: ")
            assert "s3cret" not in str(refused)
        # The server's answer, after each driver's own words for "failed to connect".
        answer = through_the_engine.reason.partition("FATAL: ")[2]
        assert answer and through_adbc.reason.endswith(answer)


def test_a_connection_the_server_drops_under_adbc_is_an_engine_s_operational_error(
    postgres_schema_url: str,
) -> None:
    """A failover while the extract reads: SQLAlchemy's OperationalError, as an engine's
    dropped connection is (what the flows retry and the CLI reports in one line); a
    statement's own error (bad SQL) stays ADBC's."""
    with (
        pytest.raises(OperationalError) as dropped,
        adbc_connect(postgres_schema_url) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("select pg_terminate_backend(pg_backend_pid())")
        cursor.fetchall()
    assert "terminating connection" in str(dropped.value.orig)
    with (
        pytest.raises(adbc_driver_manager.ProgrammingError),
        adbc_connect(postgres_schema_url) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("selec 1")


def test_adbc_is_given_the_database_name_encoded_as_libpq_decodes_it() -> None:
    """Each character of it as a URI must have it (a space, which libpq refused), and
    decoded by libpq to the name psycopg is given."""
    url = URL.create("postgresql", "rop", "s3cret", "db.example", 5432, "reg 100%/x+y")
    assert adbc_uri(url) == "postgresql://rop:s3cret@db.example:5432/reg%20100%25%2Fx%2By"
    socket = make_url("postgresql://rop@/registry?host=/run/pg")
    assert adbc_uri(socket) == "postgresql://rop@/registry?host=%2Frun%2Fpg"


def test_adbc_is_given_a_connection_option_with_a_space_as_libpq_decodes_it() -> None:
    """SQLAlchemy writes a space of the query as "+", which libpq keeps: the server got
    "-c+statement_timeout=5000", refused, through ADBC (the extract) alone."""
    url = make_url("postgresql://rop@/registry?host=/run/pg&options=-c%20statement_timeout%3D5000")
    assert adbc_uri(url) == (
        "postgresql://rop@/registry?host=%2Frun%2Fpg&options=-c%20statement_timeout%3D5000"
    )


@pytest.mark.postgres
def test_a_url_a_server_turns_down_in_another_language_is_refused_all_the_same() -> None:
    """A server whose lc_messages is German answers "Passwort-Authentifizierung ...
    fehlgeschlagen": read as English words, it was a server away, retried for a minute,
    exit 1. Its SQLSTATE says what it is in any language; an answer that may pass (too
    many connections for the role) stays one."""
    with postgres_answering_in("de") as base:
        admin = make_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(
                "create role rollout_password login password 'right-password';"
                "create role rollout_busy login connection limit 0"
            )
        admin.dispose()
        url = make_url(base)
        turned_down = {
            "a wrong password": url.set(username="rollout_password", password="s3cret-wrong"),
            "no such database": url.set(database="no_such_registry"),
            "no such role": url.set(username="no_such_role"),
        }
        for what, wrong in turned_down.items():
            for refused in refused_by_engine_and_adbc(wrong):
                assert refused.exit_code == 2, what
                assert "s3cret" not in str(refused)
            if what == "no such database":  # the server did answer in German
                assert "Datenbank »no_such_registry« existiert nicht" in str(refused)
        busy = url.set(username="rollout_busy")
        engine = make_engine(busy)
        with pytest.raises(OperationalError):
            engine.connect()
        engine.dispose()
        with pytest.raises(OperationalError), adbc_connect(busy):
            pass


def test_a_connection_option_with_a_space_works_alike_through_an_engine_and_adbc(
    postgres_schema_url: str,
) -> None:
    url = make_url(postgres_schema_url)
    schema = url.query["options"].removeprefix("-csearch_path=")
    spaced = url.update_query_dict({"options": f"-c search_path={schema} -c work_mem=8MB"})
    engine = make_engine(spaced)
    with engine.connect() as connection:
        through_the_engine = connection.exec_driver_sql(
            "select current_setting('work_mem')"
        ).scalar_one()
    engine.dispose()
    with adbc_connect(spaced) as connection, connection.cursor() as cursor:
        cursor.execute("select current_setting('work_mem')")
        [(through_adbc,)] = cursor.fetchall()
    assert through_the_engine == through_adbc == "8MB"


@pytest.mark.parametrize(
    ("option", "answer"),
    [
        # libpq reads these only on a TCP connection: through a socket the engine
        # connected, and ADBC failed every extract with "Could not initialize PGcancel",
        # which the flows retried.
        ("keepalives=x", 'invalid integer value "x" for connection option "keepalives"'),
        ("tcp_user_timeout=9999999999", 'for connection option "tcp_user_timeout"'),
        # The server's answer to a setting it has no name for (42704): it was retried.
        ("options=-c no_such_setting=1", 'parameter "no_such_setting"'),
        ("sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("no_such_option=1", '"no_such_option"'),
    ],
)
def test_a_connection_option_that_can_never_work_is_refused_on_every_path(
    postgres_schema_url: str, option: str, answer: str
) -> None:
    """However often it is tried, the same answer: refused at once (exit 2, never
    retried), naming the option, through an engine and through ADBC alike."""
    name, _, value = option.partition("=")
    schema_url = make_url(postgres_schema_url)
    if name == "options":  # beside the schema's search_path
        value = f"{schema_url.query['options']} {value}"
    url = schema_url.update_query_dict({name: value})
    for refused in refused_by_engine_and_adbc(url):
        assert refused.exit_code == 2
        assert str(refused).startswith("environment variable ROLLOUT_REGISTRY_URL: ")
        assert answer in str(refused)


@pytest.mark.postgres
def test_adbc_connects_to_a_database_whose_name_has_a_space() -> None:
    """It was refused by libpq ("unexpected spaces found"), though every other command
    connected: each cohort build and report failed at its extract."""
    with fresh_postgres_database("rollout registry") as url:
        with adbc_connect(url) as connection, connection.cursor() as cursor:
            cursor.execute("select current_database()")
            [(name,)] = cursor.fetchall()
        assert name == make_url(url).database

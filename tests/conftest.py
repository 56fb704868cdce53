"""Shared fixtures: an isolated ROLLOUT_HOME, and a registry on SQLite and PostgreSQL.

PostgreSQL tests use ``ROLLOUT_TEST_POSTGRES_URL`` (``make test`` starts a throwaway
server and sets it: tests/support/with-postgres). Each test gets its own schema, so
tests never see each other's rows, even under xdist. When
``ROLLOUT_REQUIRE_POSTGRES=1`` (CI) a missing server fails the test instead of
skipping it: CI must exercise PostgreSQL.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main
import typer.testing
from sqlalchemy import text
from sqlalchemy.engine import make_url

from rollout.core.config import Settings
from rollout.core.plan import Plan, load_plan
from rollout.demo.sample import generate_sample
from rollout.demo.story import Story
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from rollout.runtime import Runtime
from rollout.warehouse import open_warehouse
from tests.support.env import without_rollout_settings
from tests.support.postgres_template import MigratedSchema, dump_migrated_schema

# typer's CliRunner makes the whole click command tree from the app again on every
# invoke (40-50 ms for rollout's, on each of well over a thousand invocations); the tree
# is the same every time (commands are registered at import), so make it once per app.
typer.testing._get_command = functools.cache(typer.main.get_command)

DATA = Path(__file__).parent / "data"
REFERENCE_PLAN = Path(__file__).resolve().parent.parent / "plans" / "npm-2022.yaml"


STORY_START, STORY_END = date(2021, 12, 1), date(2022, 5, 10)


def tiny_story(settings: Settings) -> Story:
    """The tiny sample written under ``settings``, and the reference plan ready to play
    over it from STORY_START to STORY_END, metrics every fortnight and on the cohort
    days: the demo story in less time. Close ``story.runtime`` when done with it."""
    generate_sample(
        "tiny",
        7,
        registry=Registry(settings.registry_url),
        landing_dir=settings.landing_dir,
        end=date(2022, 3, 13),  # the downloads reach the last cohort day
        days=110,
    )
    plan = load_plan(REFERENCE_PLAN)
    return Story(
        Runtime(settings, plan=plan), STORY_START, STORY_END, metrics_every=14, cohorts_every=14
    )


def typed_parquet_downloads(path: Path, rows: Sequence[tuple[str | None, date, int]]) -> Path:
    """A downloads landing file in Parquet with the stored types (string, date,
    integer): the kind that loads in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "package": pa.array([r[0] for r in rows], pa.string()),
                "day": pa.array([r[1] for r in rows], pa.date32()),
                "downloads": pa.array([r[2] for r in rows], pa.int32()),
            }
        ),
        path,
    )
    return path


POSTGRES_URL = os.environ.get("ROLLOUT_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("ROLLOUT_REQUIRE_POSTGRES") == "1"


def postgres_url_or_skip() -> str:
    if POSTGRES_URL:
        return POSTGRES_URL
    if REQUIRE_POSTGRES:
        pytest.fail("ROLLOUT_REQUIRE_POSTGRES=1 but ROLLOUT_TEST_POSTGRES_URL is not set")
    pytest.skip("PostgreSQL not configured: run `make test`, or set ROLLOUT_TEST_POSTGRES_URL")


def _with_search_path(url: str, schema: str) -> str:
    parsed = make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, empty schema of this test's own."""
    with fresh_postgres_schema() as url:
        yield url


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, empty schema, dropped afterwards
    (skips, or fails where PostgreSQL is required, without a server)."""
    base = postgres_url_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f"create schema {schema}"))
    try:
        yield _with_search_path(base, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"drop schema {schema} cascade"))
        admin.dispose()


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards (for
    what a schema of its own does not isolate: ADBC's bulk ingest, a restore)."""
    base = postgres_url_or_skip()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# The role tests/support/with-postgres makes give its password (every other login is
# trusted there).
PASSWORD_ROLE = "rollout_password"


@pytest.fixture
def turned_down_postgres_urls() -> dict[str, str]:
    """Registry URLs the test server turns down however often they are tried, by what
    is wrong with them: a wrong password, a database that does not exist. Each holds
    the password ``s3cret-wrong``."""
    base = make_url(postgres_url_or_skip())
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            text(
                f"do $$ begin create role {PASSWORD_ROLE} login password 'right-password';"
                " exception when duplicate_object then null; end $$"
            )
        )
    admin.dispose()
    wrong_password = base.set(username=PASSWORD_ROLE, password="s3cret-wrong")
    probe = make_engine(wrong_password)
    try:
        with probe.connect():
            lets_in = f"the test server lets {PASSWORD_ROLE} in without its password"
            if REQUIRE_POSTGRES:  # CI: nothing skips (tests/support/with-postgres asks it)
                pytest.fail(lets_in)
            pytest.skip(lets_in)
    except Exception:  # turned down, as it should be (pytest's outcomes are not Exceptions)
        pass
    finally:
        probe.dispose()
    no_database = base.set(password="s3cret-wrong", database="no_such_registry")
    return {
        "a wrong password": wrong_password.render_as_string(hide_password=False),
        "no such database": no_database.render_as_string(hide_password=False),
    }


# A test of what only PostgreSQL does (advisory locks going with their session, a
# server's locale): its registry on PostgreSQL alone, marked so, never a skip on SQLite.
postgres_only = pytest.mark.parametrize(
    "empty_registry_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, on each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture(scope="session")
def _migrated_sqlite_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite registry file the migrations brought to the newest schema, once per
    process: each test's registry is a copy (0.1 s of migrations saved on each of
    hundreds of tests)."""
    path = tmp_path_factory.mktemp("migrated") / "registry.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def _migrated_postgres_schema() -> MigratedSchema | None:
    """What the migrations make of an empty PostgreSQL schema, dumped once per process,
    so each test's schema is made by one script (about 0.1 s) rather than by running
    every migration (0.3-0.9 s on each of hundreds of tests). None where pg_dump cannot
    dump the test server: each test then migrates its own schema."""
    with fresh_postgres_schema() as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return dump_migrated_schema(url)


@pytest.fixture
def registry_url(empty_registry_url: str, request: pytest.FixtureRequest) -> str:
    """A registry at the newest schema, on each backend in turn: a copy of one the
    migrations made (a SQLite file, or a PostgreSQL schema's dump replayed), with an
    ``instance`` of its own, as migrating it gives (rollout.registry.changes): two
    registries of one test are never the same one."""
    if empty_registry_url.startswith("sqlite:"):
        template = request.getfixturevalue("_migrated_sqlite_registry")
        shutil.copyfile(template, make_url(empty_registry_url).database)
        engine = make_engine(empty_registry_url)
    else:
        engine = make_engine(empty_registry_url)
        migrated = request.getfixturevalue("_migrated_postgres_schema")
        if migrated is None:
            upgrade(engine)
            engine.dispose()
            return empty_registry_url
        migrated.make(engine)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE registry_changes SET instance = :instance"),
            {"instance": uuid.uuid4().hex},
        )
    engine.dispose()
    return empty_registry_url


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    """The registry at ``registry_url``, as the library's functions take it; a test
    writes and reads rows through ``registry.engine``."""
    with Registry(registry_url) as registry:
        yield registry


@pytest.fixture
def factories(registry: Registry) -> Iterator[None]:
    """tests.factories write their rows to this test's registry."""
    from tests.factories import bound_to

    with bound_to(registry.engine):
        yield


@pytest.fixture(scope="session")
def _empty_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse ``open_warehouse`` made and closed, once per process: each test's
    ``con`` is a copy of the file (its schema's tables and views made once, not 30 ms of
    DDL again on each of hundreds of tests), reopened as any existing warehouse is."""
    path = tmp_path_factory.mktemp("empty-warehouse") / "warehouse.duckdb"
    with open_warehouse(path):
        pass
    return path


@pytest.fixture
def con(tmp_path: Path, _empty_warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh, empty warehouse, ``tmp_path / "warehouse.duckdb"``, closed after the test.
    A module that needs one with rows in it overrides ``con`` on this one (``def
    con(con)``), its docstring saying what it adds (tests/test_warehouse.py,
    tests/test_cohorts.py)."""
    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(_empty_warehouse, path)
    with open_warehouse(path) as connection:
        yield connection


@pytest.fixture(scope="session")
def _reference_plan_as_loaded() -> Plan:
    return load_plan(REFERENCE_PLAN)


@pytest.fixture
def plan(_reference_plan_as_loaded: Plan) -> Plan:
    """The reference plan, plans/npm-2022.yaml, as shipped: read once per session, a
    deep copy for each test. (A Plan is a frozen pydantic model, but only shallowly: its
    lists and dicts could still be changed in place, and would leak into other tests.)
    A module that needs another plan makes it from this one under a name that says how
    it differs (``plan_exempting_carol``, ``three_phase_plan``)."""
    return _reference_plan_as_loaded.model_copy(deep=True)


@pytest.fixture
def rollout_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ROLLOUT_HOME in a temp dir, with nothing else from the outer environment."""
    home = tmp_path / "home"
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_HOME", str(home))
    return home


# Markers by where a test lives and what it uses, so `make test-fast` can leave out all
# that needs a service or takes long, without anyone remembering to mark new tests.
# Entries are a directory (ending in /), a module, or a test (all its parameters).
BROWSER_TESTS = ("tests/test_report_browser.py",)
PREFECT_TESTS = ("tests/flows/", "tests/e2e/")
# Whole modules, then tests measured over ~5 s with --durations on a 2-core machine.
SLOW_TESTS = (
    "tests/e2e/",
    "tests/test_benches.py",
    "tests/test_notebooks.py",
    "tests/test_story.py",
    "tests/test_plan_stories.py",
    "tests/test_wheel.py",
    "tests/test_delivery_loop.py",
    "tests/test_registry_changes.py::test_the_copy_is_what_a_full_extract_gives_after_every_run",
    "tests/sql/test_adoption_marts.py::test_adoption_daily_matches_a_plain_count",
    "tests/sql/test_adoption_marts.py::test_adoption_daily_by_org_forward_filled_matches_a_plain_count",
    "tests/sql/test_metrics_properties.py::test_metrics_equal_the_definitions",
    "tests/sql/test_metrics_properties.py::test_qualified_packages_are_the_rule_applied_to_the_metrics",
    "tests/sql/test_download_windows.py::test_windows_moved_day_to_day_equal_the_windows_summed_whole",
    "tests/sql/test_dependency_counts.py::test_counts_kept_from_day_to_day_equal_the_counts_made_whole",
    "tests/test_cli.py::test_ingest_json_output_is_only_json_and_rerun_skips",
    "tests/test_cli.py::test_metrics_and_cohorts_from_the_command_line",
    "tests/test_cli.py::test_notify_queues_previews_first_then_sends_to_the_file_outbox",
    "tests/test_cli.py::test_phase_enforce_previews_then_needs_the_count_typed_back",
    "tests/test_cli.py::test_plan_show_lists_the_timeline_with_states",
    "tests/test_cli.py::test_release_only_previews_without_apply",
    "tests/test_cohorts.py::test_a_package_that_dips_stays_in_its_cohort",
    "tests/test_cohorts.py::test_maintainers_and_team_publishers_make_the_cohort",
    "tests/test_cohorts.py::test_release_previews_then_takes_the_package_out_with_an_audit_row",
    "tests/test_cohorts.py::test_rerunning_a_day_writes_nothing_twice",
    "tests/test_enforce_faults.py::test_killed_runs_then_a_rerun_change_everything_exactly_once",
    "tests/test_ingest_properties.py::test_in_place_loading_gives_what_staging_gives",
    "tests/test_ingest_properties.py::test_files_loaded_in_a_batch_give_what_loading_them_one_by_one_gives",
    "tests/test_cli.py::test_metrics_of_the_next_day_equal_a_rebuild",
    "tests/test_registry.py::test_a_failed_exporter_changes_nothing_and_leaves_no_process_behind",
    "tests/test_registry.py::test_extract_copies_every_table_with_model_types",
    "tests/test_runbooks.py::test_the_release_manager_rehearsal_runs_as_the_runbook_gives_it",
    "tests/test_stop.py::test_a_stopped_send_in_processes_ends_them_all_and_finishes_later",
    "tests/test_stop.py::test_the_extract_s_exporters_end_with_the_command",
    "tests/test_stop.py::test_workers_whose_parent_is_killed_stop_and_put_back_what_they_held",
    "tests/test_progress.py::test_a_demo_played_over_a_cohort_built_with_nobody_in_it_tells_it",
)


def _listed(item: pytest.Item, entries: tuple[str, ...]) -> bool:
    return _listed_id(item.nodeid, entries)


def _listed_id(nodeid: str, entries: tuple[str, ...]) -> bool:
    test = nodeid.split("[", 1)[0]
    return any(test == e or test.startswith(e if e.endswith("/") else f"{e}::") for e in entries)


def _work_unit(nodeid: str) -> str:
    """The tests an xdist worker takes together: a whole module, so a module-scoped
    fixture (a demo, a wheel, a sample) is built once, not on each worker that gets one
    of its tests; all of tests/e2e, which shares one Prefect server and deploy
    (tests/e2e/conftest.py); all of tests/flows, so the package's Prefect harness
    (~14 s) starts on one worker only."""
    path = nodeid.split("::", 1)[0]
    for shared in ("tests/e2e/", "tests/flows/"):
        if path.startswith(shared):
            return shared
    if path in SPREAD_BY_TEST:
        return nodeid
    return path


# Modules of long tests sharing no module fixture: each test its own unit, so they
# spread over the workers rather than queue on one (the plans' stories: 6 minutes).
SPREAD_BY_TEST = ("tests/test_plan_stories.py",)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Work units from :func:`_work_unit`. (Not ``--dist loadgroup``: pytest-xdist 3.8
    marks a group by rewriting ``item._nodeid``, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # The longest units first, so that the run does not end with one worker
            # at a long unit while the other has nothing left: xdist hands them out
            # by their number of tests, which put the Prefect end-to-end unit (a few
            # tests, minutes) and the plans' stories wherever their counts fell.
            if not self.ordered:
                self.ordered = True
                units = sorted(
                    self.workqueue.items(), key=lambda unit: _unit_weight(unit[1]), reverse=True
                )
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return ByWorkUnit(config, log)


def _unit_weight(nodeids: Any) -> tuple[int, int]:
    """How long a unit is expected to take: its tests marked slow or Prefect's (each
    several seconds to minutes), then its number of tests."""
    slow = sum(1 for n in nodeids if _listed_id(n, SLOW_TESTS) or _listed_id(n, PREFECT_TESTS))
    return slow, len(nodeids)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        # The postgresql param of empty_registry_url carries its own mark.
        if "postgres_schema_url" in fixtures or "turned_down_postgres_urls" in fixtures:
            item.add_marker(pytest.mark.postgres)
        if _listed(item, BROWSER_TESTS):
            item.add_marker(pytest.mark.browser)
        # prefect_server is the package's prefect_test_harness.
        if _listed(item, PREFECT_TESTS) or "prefect_server" in fixtures:
            item.add_marker(pytest.mark.prefect)
        if _listed(item, SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (``.ci/run`` sets CI=true) nothing may skip: a skip there means a test CI
    never ran (a PostgreSQL-only case written as a skip on SQLite, a tool missing), so
    it fails, naming why it skipped. ``make test`` on a machine without PostgreSQL still
    skips those tests, saying so."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"

"""Shared fixtures: an isolated ROLLOUT_HOME, and a registry on SQLite and PostgreSQL.

PostgreSQL tests use ``ROLLOUT_TEST_POSTGRES_URL`` (``.ci/run`` sets it). Each test
gets its own schema, so tests never see each other's rows, even under xdist. When
``ROLLOUT_REQUIRE_POSTGRES=1`` (CI) a missing server fails the test instead of
skipping it: CI must exercise PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from rollout.config import Settings
from rollout.plan import load_plan
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from rollout.sample import generate_sample
from rollout.story import Story

DATA = Path(__file__).parent / "data"


STORY_START, STORY_END = date(2021, 12, 1), date(2022, 5, 10)


def tiny_story(settings: Settings) -> Story:
    """The tiny sample written under ``settings``, and the reference plan ready to play
    over it from STORY_START to STORY_END, metrics every fortnight and on the cohort
    days: the demo story in less time."""
    generate_sample(
        "tiny",
        7,
        registry_url=settings.registry_url,
        landing_dir=settings.landing_dir,
        end=date(2022, 3, 13),  # the downloads reach the last cohort day
        days=110,
    )
    plan = load_plan(Path(__file__).resolve().parent.parent / "plans" / "npm-2022.yaml")
    return Story(settings, plan, STORY_START, STORY_END, metrics_every=14, cohorts_every=14)


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
    pytest.skip("PostgreSQL not configured: set ROLLOUT_TEST_POSTGRES_URL (see .ci/run)")


def _with_search_path(url: str, schema: str) -> str:
    parsed = make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, empty schema of this test's own."""
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, on each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def registry_url(empty_registry_url: str) -> str:
    """A registry at the newest schema, on each backend in turn."""
    engine = make_engine(empty_registry_url)
    upgrade(engine)
    engine.dispose()
    return empty_registry_url


@pytest.fixture
def registry(registry_url: str) -> Iterator[Engine]:
    engine = make_engine(registry_url)
    yield engine
    engine.dispose()


@pytest.fixture
def rollout_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ROLLOUT_HOME in a temp dir, with nothing else from the outer environment."""
    home = tmp_path / "home"
    for name in list(os.environ):
        if name.startswith("ROLLOUT_") and not name.startswith("ROLLOUT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    monkeypatch.setenv("ROLLOUT_HOME", str(home))
    return home

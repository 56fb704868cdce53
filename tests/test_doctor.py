"""rollout doctor: each check passing and failing, and the command's rows and exit code.

SendGrid is checked against the local dev server (a good key, a bad one, one without
mail.send); Prefect's REST API is stood in for by httpx's MockTransport.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from rollout import warehouse
from rollout.cli import app
from rollout.core.config import Settings, load_settings
from rollout.core.controls import quoted
from rollout.core.errors import GuardRefused
from rollout.demo.sample import generate_sample
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.ops import doctor
from rollout.ops.doctor import (
    REGISTRY_BUSY_SECONDS,
    Status,
    check_home,
    check_landing,
    check_plan,
    check_registry,
    check_reports,
    check_schema,
    check_sendgrid,
    check_warehouse,
    check_worker,
)
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from tests.factories import AccountFactory, bound_to
from tests.support.warehouse_holder import warehouse_held

ROOT = Path(__file__).resolve().parent.parent
KEY = "SG.doctor-test.key"
NOW = datetime(2022, 2, 16, 12, 0, tzinfo=UTC)
API = "http://prefect.test/api"


def settings_for(tmp_path: Path, **environ: str) -> Settings:
    return load_settings({"ROLLOUT_HOME": str(tmp_path / "home"), **environ})


# --- registry and schema --------------------------------------------------------------------


def test_the_registry_and_its_schema_pass_once_upgraded(registry_url: str) -> None:
    registry = check_registry(Registry(registry_url))
    assert registry.status is Status.ok
    assert "rollout:rollout@" not in registry.detail  # the password stays hidden
    schema = check_schema(Registry(registry_url))
    assert schema.status is Status.ok and "the newest" in schema.detail


def test_an_empty_database_has_no_schema(empty_registry_url: str) -> None:
    engine = make_engine(empty_registry_url)
    engine.connect().close()  # an empty SQLite file, as a fresh PostgreSQL database is
    engine.dispose()
    assert check_registry(Registry(empty_registry_url)).status is Status.ok
    schema = check_schema(Registry(empty_registry_url))
    assert schema.status is Status.fail and "rollout db upgrade" in schema.detail


def test_an_older_schema_fails_naming_both_revisions(registry_url: str) -> None:
    engine = make_engine(registry_url)
    with engine.begin() as connection:
        connection.execute(text("update alembic_version set version_num = '0001'"))
    engine.dispose()
    schema = check_schema(Registry(registry_url))
    assert schema.status is Status.fail
    assert "at revision 0001" in schema.detail and "rollout db upgrade" in schema.detail


def test_a_schema_a_newer_rollout_migrated_fails_without_advising_db_upgrade(
    registry_url: str,
) -> None:
    """`rollout db upgrade` refuses such a registry; the doctor advised running it."""
    engine = make_engine(registry_url)
    with engine.begin() as connection:
        connection.execute(text("update alembic_version set version_num = '9999_future'"))
    engine.dispose()
    schema = check_schema(Registry(registry_url))
    assert schema.status is Status.fail
    assert "9999_future, which this rollout does not know" in schema.detail
    assert "rollout db upgrade" not in schema.detail


def test_a_missing_sqlite_file_fails_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "registry.db"
    url = f"sqlite:///{path}"
    assert check_registry(Registry(url)).status is Status.fail
    assert check_schema(Registry(url)).status is Status.fail
    assert not path.exists() and not path.parent.exists()


@pytest.mark.parametrize("which", ["file", "folder"])
def test_a_sqlite_registry_no_command_can_write_fails(tmp_path: Path, which: str) -> None:
    """`select 1` passed a registry on which every command that records anything failed
    ("attempt to write a readonly database", or no room for its journal and lock)."""
    path = tmp_path / "home" / "registry.db"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    with read_only(path if which == "file" else path.parent):
        result = check_registry(Registry(url))
    assert result.status is Status.fail, result
    assert "read-only" in result.detail
    assert check_registry(Registry(url)).status is Status.ok


def sqlite_registry_in_rollback_mode(tmp_path: Path) -> tuple[str, Path]:
    """A SQLite registry at the newest schema, its journal a rollback one (DELETE), as
    a registry copied or restored by another tool may be."""
    path = tmp_path / "home" / "registry.db"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    connection.close()
    return url, path


def test_the_doctor_leaves_a_sqlite_registry_as_it_is(tmp_path: Path) -> None:
    """The doctor only looks: it set the registry's journal mode to WAL, rewriting the
    file's header (and waiting for its write lock) from a cron job every 5 minutes."""
    url, path = sqlite_registry_in_rollback_mode(tmp_path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    assert check_registry(Registry(url)).status is Status.ok
    assert check_schema(Registry(url)).status is Status.ok

    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    connection.close()


def test_a_sqlite_registry_a_writer_locks_is_answered_within_seconds(tmp_path: Path) -> None:
    """A writer holding the registry's lock: each row answers within
    REGISTRY_BUSY_SECONDS, not a command's 30 s busy wait, nor SQLite's own 5."""
    url, path = sqlite_registry_in_rollback_mode(tmp_path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        for check in (check_registry, check_schema):
            started = time.monotonic()
            result = check(Registry(url))
            took = time.monotonic() - started
            assert result.status is Status.fail, result
            assert took < REGISTRY_BUSY_SECONDS + 1.5, (check, took)
    finally:
        writer.rollback()
        writer.close()


def test_an_unreachable_server_fails() -> None:
    # Port 1 on localhost: refused at once, no waiting for a timeout.
    result = check_registry(Registry("postgresql+psycopg://rollout:secret@127.0.0.1:1/rollout"))
    assert result.status is Status.fail and "cannot connect" in result.detail
    assert "secret" not in result.detail
    schema = check_schema(Registry("postgresql+psycopg://rollout:secret@127.0.0.1:1/rollout"))
    assert schema.status is Status.fail and "unreachable" in schema.detail


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://rollout@127.0.0.1:1/rollout?password=s3cret-pw",
        "postgresql://127.0.0.1:1/rollout?user=rollout&password=s3cret-pw",
        "postgresql://rollout:s3cret-pw@127.0.0.1:1/rollout?sslpassword=s3cret-pw",
    ],
    ids=["password", "user-and-password", "sslpassword"],
)
def test_a_password_in_the_registry_urls_query_is_not_shown(url: str) -> None:
    """libpq reads a password from the URL's query as from its authority: hidden alike."""
    result = check_registry(Registry(url))
    assert result.status is Status.fail and "cannot connect" in result.detail
    assert "s3cret-pw" not in result.detail
    assert "password=***" in result.detail
    # A Registry in a log line or a traceback's locals: the same URL, the same way.
    assert "s3cret-pw" not in repr(Registry(url)) and "password=***" in repr(Registry(url))


def test_a_registry_reached_with_a_password_in_its_query_is_shown_without_it(
    postgres_schema_url: str, tmp_path: Path
) -> None:
    """The check passing, and `rollout db status`, show the URL: not the password (the
    test server trusts its socket's users, so any password is let in)."""
    password = "s3cret-pw"
    url = make_url(postgres_schema_url).update_query_dict({"password": password})
    as_text = url.render_as_string(hide_password=False)
    upgrade(make_engine(as_text))
    result = check_registry(Registry(as_text))
    assert result.status is Status.ok, result
    assert password not in result.detail and "password=***" in result.detail
    status = CliRunner().invoke(
        app,
        ["db", "status", "--format", "json"],
        env={"ROLLOUT_HOME": str(tmp_path / "home"), "ROLLOUT_REGISTRY_URL": as_text},
    )
    assert status.exit_code == 0, status.output
    assert password not in status.output
    assert "password=***" in json.loads(status.stdout)["registry"]
    # `rollout sample` refusing a registry it did not make names it the same way.
    with bound_to(make_engine(as_text)):
        AccountFactory()
    with pytest.raises(GuardRefused) as refused:
        generate_sample("tiny", 7, registry=Registry(as_text), landing_dir=tmp_path / "landing")
    assert "did not make" in str(refused.value)
    assert password not in str(refused.value) and "password=***" in str(refused.value)


def test_the_registry_check_connects_with_the_urls_own_connect_timeout(
    postgres_schema_url: str,
) -> None:
    """As every command does: one that is no number fails the check, as it refuses
    every command (exit 2); the check's own timeout hid it, and the check passed."""
    bad = check_registry(Registry(f"{postgres_schema_url}&connect_timeout=abc"))
    assert bad.status is Status.fail, bad
    assert bad.detail.endswith("cannot connect: bad value for connect_timeout: 'abc'")
    good = check_registry(Registry(f"{postgres_schema_url}&connect_timeout=5"))
    assert good.status is Status.ok, good


# --- warehouse ------------------------------------------------------------------------------


def test_no_warehouse_yet_is_a_warning(tmp_path: Path) -> None:
    result = check_warehouse(tmp_path / "warehouse.duckdb")
    assert result.status is Status.warn and "rollout ingest" in result.detail
    assert not (tmp_path / "warehouse.duckdb").exists()


def test_a_current_warehouse_passes(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    warehouse.connect(path).close()
    result = check_warehouse(path)
    assert result.status is Status.ok and f"version {warehouse.SCHEMA_VERSION}" in result.detail


def test_a_warehouse_of_another_version_fails(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    con = warehouse.connect(path)
    con.execute("update warehouse_meta set schema_version = 1")
    con.close()
    result = check_warehouse(path)
    assert result.status is Status.fail and "move it aside" in result.detail


@pytest.fixture
def warehouse_held_by_a_run(tmp_path: Path) -> Iterator[Path]:
    """A warehouse another process has open for writing, as a running flow does."""
    path = tmp_path / "warehouse.duckdb"
    warehouse.connect(path).close()
    with warehouse_held(path):
        yield path


def test_a_warehouse_a_run_holds_is_skipped_with_a_warning(warehouse_held_by_a_run: Path) -> None:
    result = check_warehouse(warehouse_held_by_a_run)
    assert result.status is Status.warn
    assert "not checked" in result.detail and "process" in result.detail


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` made read-only for this user: its mode, and for root (whom modes do not
    stop) the immutable attribute. Skips where neither holds."""
    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = os.geteuid() == 0 and (
        subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    )
    try:
        if os.access(path, os.W_OK):
            pytest.skip(f"cannot make {path} read-only here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


@pytest.mark.parametrize("which", ["file", "folder"])
def test_a_warehouse_no_run_can_write_fails(tmp_path: Path, which: str) -> None:
    """The doctor opens it read-only, so it passed a warehouse on which every ingest,
    cohort build and report then failed ("Operation not permitted")."""
    path = tmp_path / "home" / "warehouse.duckdb"
    path.parent.mkdir()
    warehouse.connect(path).close()
    with read_only(path if which == "file" else path.parent):
        result = check_warehouse(path)
    assert result.status is Status.fail, result
    assert "read-only" in result.detail and "rollout ingest" in result.detail
    assert check_warehouse(path).status is Status.ok


def test_no_warehouse_yet_in_a_folder_no_run_can_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "home" / "warehouse.duckdb"
    path.parent.mkdir()
    with read_only(path.parent):
        result = check_warehouse(path)
    assert result.status is Status.fail and "read-only" in result.detail
    assert not path.exists()


# --- the landing and reports folders --------------------------------------------------------

FOLDER_CHECKS = [("landing", check_landing), ("reports", check_reports)]


@pytest.mark.parametrize(("name", "check"), FOLDER_CHECKS)
def test_a_folder_the_runs_write_that_this_user_cannot_fails(
    tmp_path: Path, name: str, check: Any
) -> None:
    """It checked the warehouse, the registry and the file outbox, not these: a preview
    that could not save its list, or a receiver that could not land events, went
    unseen until it failed."""
    folder = tmp_path / "home" / name
    folder.mkdir(parents=True)
    assert check(folder).status is Status.ok
    with read_only(folder):
        result = check(folder)
    assert result.status is Status.fail and result.check == name, result
    assert f"{folder} is read-only for this user" in result.detail


@pytest.mark.parametrize(("name", "check"), FOLDER_CHECKS)
def test_a_missing_folder_is_fine_when_it_can_be_made(
    tmp_path: Path, name: str, check: Any
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    made_later = check(home / name)
    assert made_later.status is Status.ok and "not there yet" in made_later.detail
    with read_only(home):
        result = check(home / name)
    assert result.status is Status.fail and "cannot be made" in result.detail
    assert not (home / name).exists()


@pytest.mark.parametrize(("name", "check"), FOLDER_CHECKS)
def test_a_file_where_the_folder_should_be_fails(tmp_path: Path, name: str, check: Any) -> None:
    (tmp_path / name).write_text("")
    result = check(tmp_path / name)
    assert result.status is Status.fail and "is not a folder" in result.detail


def test_a_file_outbox_that_cannot_be_made_fails(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    settings.home.mkdir()
    with read_only(settings.home):
        result = check_sendgrid(settings)
    assert result.status is Status.fail and "cannot be made" in result.detail


# --- plan -----------------------------------------------------------------------------------


def test_the_reference_plan_passes() -> None:
    result = check_plan(ROOT / "plans" / "npm-2022.yaml")
    assert result.status is Status.ok and "npm-2022" in result.detail


def test_a_broken_plan_fails_naming_the_file_and_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text((ROOT / "plans" / "npm-2022.yaml").read_text() + "\nsurprise: [\n")
    result = check_plan(plan)
    assert result.status is Status.fail and str(plan) in result.detail

    missing = check_plan(tmp_path / "missing.yaml")
    assert missing.status is Status.fail and "missing.yaml" in missing.detail


# --- SendGrid -------------------------------------------------------------------------------


def test_without_a_key_the_file_outbox_is_fine(tmp_path: Path) -> None:
    result = check_sendgrid(settings_for(tmp_path))
    assert result.status is Status.ok and "file outbox" in result.detail


def test_a_file_outbox_no_send_can_write_fails(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    settings.outbox_dir.mkdir(parents=True)
    with read_only(settings.outbox_dir):
        result = check_sendgrid(settings)
    assert result.status is Status.fail and "read-only" in result.detail


def test_a_key_the_server_accepts_passes(tmp_path: Path) -> None:
    with DevSendGrid(KEY) as dev:
        settings = settings_for(tmp_path, SENDGRID_API_KEY=KEY, ROLLOUT_SENDGRID_URL=dev.url)
        result = check_sendgrid(settings)
        assert result.status is Status.ok and dev.url in result.detail
        assert dev.messages == []  # a check, not a send


def test_a_key_the_server_refuses_fails_without_showing_it(tmp_path: Path) -> None:
    wrong = "SG.wrong-key.for-doctor"
    with DevSendGrid(KEY) as dev:
        settings = settings_for(tmp_path, SENDGRID_API_KEY=wrong, ROLLOUT_SENDGRID_URL=dev.url)
        result = check_sendgrid(settings)
    assert result.status is Status.fail and "refused the key (401)" in result.detail
    assert wrong not in result.detail


def test_a_key_without_mail_send_fails(tmp_path: Path) -> None:
    with DevSendGrid(KEY, scopes=["stats.read"]) as dev:
        settings = settings_for(tmp_path, SENDGRID_API_KEY=KEY, ROLLOUT_SENDGRID_URL=dev.url)
        result = check_sendgrid(settings)
    assert result.status is Status.fail and "mail.send" in result.detail


def test_a_key_that_cannot_read_the_suppression_lists_warns(tmp_path: Path) -> None:
    with DevSendGrid(KEY, scopes=["mail.send", "suppression.bounces.read"]) as dev:
        settings = settings_for(tmp_path, SENDGRID_API_KEY=KEY, ROLLOUT_SENDGRID_URL=dev.url)
        result = check_sendgrid(settings)
    assert result.status is Status.warn
    assert "suppression.spam_reports.read" in result.detail
    assert "suppression.bounces.read" not in result.detail
    with DevSendGrid(KEY, scopes=["mail.send", "suppression.read"]) as dev:
        settings = settings_for(tmp_path, SENDGRID_API_KEY=KEY, ROLLOUT_SENDGRID_URL=dev.url)
        assert check_sendgrid(settings).status is Status.ok


def secret_blocks(blocks: dict[str, Any], seen: list[httpx.Request] | None = None) -> Any:
    """Prefect's REST API holding these Secret blocks (name: value), as it answers
    ``GET block_types/slug/secret/block_documents/name/NAME``."""
    prefix = "/api/block_types/slug/secret/block_documents/name/"

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        name = request.url.path.removeprefix(prefix)
        if request.url.path.startswith(prefix) and name in blocks:
            return httpx.Response(200, json={"name": name, "data": {"value": blocks[name]}})
        return httpx.Response(404, json={"detail": "Block document not found"})

    return httpx.MockTransport(handle)


def check_with_blocks(
    settings: Settings, blocks: dict[str, Any], **environ: str
) -> tuple[Any, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    result = check_sendgrid(
        settings,
        {"PREFECT_API_URL": API, **environ},
        prefect_transport=secret_blocks(blocks, seen),
    )
    return result, seen


def test_the_key_of_the_notify_flow_s_secret_block_is_checked(tmp_path: Path) -> None:
    """The runbook's way to give the worker the key (section 9) is a Secret block, not
    the environment: the doctor said "file outbox, nothing is sent" while every notify
    run sent through SendGrid with a key it never checked."""
    wrong = "SG.revoked.in-the-block"
    with DevSendGrid(KEY) as dev:
        settings = settings_for(tmp_path, ROLLOUT_SENDGRID_URL=dev.url)
        good, seen = check_with_blocks(settings, {"sendgrid-api-key": KEY})
        refused, _ = check_with_blocks(settings, {"sendgrid-api-key": wrong + "\n"})
        named, _ = check_with_blocks(
            settings, {"ops-key": KEY}, ROLLOUT_SENDGRID_SECRET_BLOCK="ops-key"
        )
        assert dev.messages == []
    assert good.status is Status.ok and "Secret block 'sendgrid-api-key'" in good.detail
    assert seen[0].url.params["include_secrets"] == "true"
    assert refused.status is Status.fail and "refused the key (401)" in refused.detail
    assert "Secret block" in refused.detail and wrong not in refused.detail
    assert named.status is Status.ok and "'ops-key'" in named.detail


def test_without_a_key_or_a_secret_block_the_file_outbox_is_fine(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    result, _ = check_with_blocks(settings, {})
    assert result.status is Status.ok and "file outbox" in result.detail
    assert "no Secret block 'sendgrid-api-key'" in result.detail
    empty, _ = check_with_blocks(settings, {"sendgrid-api-key": "  "})
    assert empty.status is Status.ok and "file outbox" in empty.detail


def test_without_prefect_to_ask_the_secret_block_is_said_unchecked_not_ok(tmp_path: Path) -> None:
    """From a shell without PREFECT_API_URL the doctor cannot read the Secret block the
    deployed notify flow sends with: "ok, file outbox, nothing is sent" was not so for
    every notify run sending through SendGrid with a key nobody checked."""
    result = check_sendgrid(settings_for(tmp_path), {})
    assert result.status is Status.warn
    assert result.detail.startswith(
        "the notify flow's Secret block 'sendgrid-api-key' was not checked: PREFECT_API_URL "
        "is not set"
    )
    assert "file outbox" in result.detail  # what the CLI here would do
    named = check_sendgrid(settings_for(tmp_path), {"ROLLOUT_SENDGRID_SECRET_BLOCK": "ops-key"})
    assert named.status is Status.warn and "'ops-key' was not checked" in named.detail
    # A name holding a quote and a control character is named as every value is.
    odd = "o'neil\x1b[2K"
    named = check_sendgrid(settings_for(tmp_path), {"ROLLOUT_SENDGRID_SECRET_BLOCK": odd})
    assert f"Secret block {quoted(odd)} was not checked" in named.detail


def test_the_environment_s_key_goes_first_and_no_block_is_read(tmp_path: Path) -> None:
    with DevSendGrid(KEY) as dev:
        settings = settings_for(tmp_path, SENDGRID_API_KEY=KEY, ROLLOUT_SENDGRID_URL=dev.url)
        result, seen = check_with_blocks(settings, {"sendgrid-api-key": "SG.other"})
    assert result.status is Status.ok and "Secret block" not in result.detail and seen == []


def test_a_secret_block_holding_no_key_fails_without_showing_it(tmp_path: Path) -> None:
    result, _ = check_with_blocks(settings_for(tmp_path), {"sendgrid-api-key": "SG.a b"})
    assert result.status is Status.fail and "Secret block 'sendgrid-api-key'" in result.detail
    assert "SG.a b" not in result.detail


def test_a_secret_block_prefect_cannot_give_is_a_warning(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    result = check_sendgrid(
        settings_for(tmp_path),
        {"PREFECT_API_URL": API},
        prefect_transport=httpx.MockTransport(refuse),
    )
    assert result.status is Status.warn and "was not checked" in result.detail


def test_an_unreachable_sendgrid_fails(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, SENDGRID_API_KEY=KEY, ROLLOUT_SENDGRID_URL="http://127.0.0.1:1"
    )
    result = check_sendgrid(settings)
    assert result.status is Status.fail and "cannot reach" in result.detail


# --- the Prefect worker ---------------------------------------------------------------------


def prefect_api(
    *,
    pool_status: int = 200,
    paused: bool = False,
    workers: list[dict[str, Any]] | None = None,
    seen: list[httpx.Request] | None = None,
    polled: dict[str, float | None] | None = None,
    paused_queues: tuple[str, ...] = (),
) -> httpx.MockTransport:
    """Prefect's endpoints the check reads, answering as the server does: the pool, its
    workers, and its queues, each last polled ``polled[name]`` seconds ago (None: never;
    by default both a few seconds ago, as a worker polling the whole pool leaves them)."""
    polled = {"default": 5, "notify-shards": 5} if polled is None else polled

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        path = request.url.path
        if request.method == "GET" and path == "/api/work_pools/rollout-process":
            if pool_status != 200:
                return httpx.Response(pool_status, json={"detail": "Work pool not found."})
            return httpx.Response(200, json={"name": "rollout-process", "is_paused": paused})
        if request.method == "POST" and path == "/api/work_pools/rollout-process/workers/filter":
            return httpx.Response(200, json=workers or [])
        queue = path.removeprefix("/api/work_pools/rollout-process/queues/")
        if request.method == "GET" and queue in polled:
            ago = polled[queue]
            last = None if ago is None else (NOW - timedelta(seconds=ago)).isoformat()
            return httpx.Response(
                200,
                json={
                    "name": queue,
                    "is_paused": queue in paused_queues,
                    "last_polled": last and last.replace("+00:00", "Z"),
                    "status": "PAUSED" if queue in paused_queues else "READY",
                },
            )
        return httpx.Response(404, json={"detail": "Not Found"})

    return httpx.MockTransport(handle)


def worker(name: str, seconds_ago: float, interval: int | None = 30) -> dict[str, Any]:
    heartbeat = (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")
    return {
        "name": name,
        "last_heartbeat_time": heartbeat,
        "heartbeat_interval_seconds": interval,
        "status": "ONLINE",
    }


def check(transport: httpx.MockTransport, **environ: str) -> Any:
    return check_worker({"PREFECT_API_URL": API, **environ}, transport=transport, now=lambda: NOW)


def test_without_prefect_api_url_the_worker_is_not_checked() -> None:
    result = check_worker({}, transport=prefect_api())
    assert result.status is Status.warn and result.detail.startswith("PREFECT_API_URL not set")


def test_a_prefect_setting_that_cannot_be_used_fails_the_check_naming_it() -> None:
    """Read as `rollout approvals` reads them (config.prefect_api): the key not shown."""
    result = check_worker({"PREFECT_API_URL": "http://[::1/api"}, transport=prefect_api())
    assert result.status is Status.fail and "PREFECT_API_URL" in result.detail
    result = check(prefect_api(), PREFECT_API_KEY="pnu_s3cr\u00e9t")
    assert result.status is Status.fail and "PREFECT_API_KEY" in result.detail
    assert "s3cr" not in result.detail


def test_a_password_in_prefect_api_url_is_not_shown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    result = check_worker(
        {"PREFECT_API_URL": "http://ops:s3cret-pw@prefect.example/api"},
        transport=httpx.MockTransport(refuse),
    )
    assert result.status is Status.fail and "s3cret-pw" not in result.detail
    assert "http://ops:***@prefect.example/api" in result.detail
    result = check_worker({"PREFECT_API_URL": "http://ops:s3cret-pw@[::1/api"}, transport=None)
    assert result.status is Status.fail and "s3cret-pw" not in result.detail


def test_a_worker_with_a_recent_heartbeat_passes() -> None:
    result = check(prefect_api(workers=[worker("old", 3600), worker("host-1", 20)]))
    assert result.status is Status.ok
    assert "1 live" in result.detail and "host-1" in result.detail and "20s ago" in result.detail


def test_only_stale_heartbeats_fail() -> None:
    # Prefect's rule: more than 3 intervals (30 s when unknown) without a heartbeat.
    result = check(prefect_api(workers=[worker("host-1", 91), worker("host-2", 61, interval=20)]))
    assert result.status is Status.fail and "no live worker" in result.detail
    assert "host-1" in result.detail
    assert check(prefect_api(workers=[worker("host-1", 89, interval=None)])).status is Status.ok


def test_live_workers_that_poll_only_the_shard_queue_fail() -> None:
    """Workers on other machines poll notify-shards alone: alive, they start none of the
    runs on the default queue (daily, notify, report...) when the ROLLOUT_HOME host's
    worker is gone."""
    shards_only = {"default": 3600.0, "notify-shards": 5.0}
    result = check(prefect_api(workers=[worker("shard-host", 5)], polled=shards_only))
    assert result.status is Status.fail
    assert "no worker polls the queue default" in result.detail
    assert "3600s ago" in result.detail and "shard-host" in result.detail
    never = check(prefect_api(workers=[worker("shard-host", 5)], polled={"default": None}))
    assert never.status is Status.fail and "last polled: never" in never.detail
    # Prefect's own rule for a ready queue: polled within 60 s.
    assert check(prefect_api(workers=[worker("h", 5)], polled={"default": 59})).status is Status.ok


def test_the_default_queue_polled_lately_passes_and_says_so() -> None:
    result = check(prefect_api(workers=[worker("host-1", 5)], polled={"default": 7}))
    assert result.status is Status.ok and "queue default polled 7s ago" in result.detail


@pytest.mark.parametrize("queue", ["default", "notify-shards"])
def test_a_paused_queue_fails_with_the_command_to_resume_it(queue: str) -> None:
    result = check(prefect_api(workers=[worker("host-1", 5)], paused_queues=(queue,)))
    assert result.status is Status.fail
    assert f"prefect work-queue resume {queue} --pool rollout-process" in result.detail


def test_a_pool_without_any_worker_fails() -> None:
    result = check(prefect_api(workers=[]))
    assert result.status is Status.fail and "none ever" in result.detail


def test_a_missing_pool_fails_with_the_command_to_create_it() -> None:
    result = check(prefect_api(pool_status=404))
    assert result.status is Status.fail
    assert "prefect work-pool create rollout-process --type process" in result.detail


def test_a_paused_pool_fails() -> None:
    result = check(prefect_api(paused=True, workers=[worker("host-1", 5)]))
    assert result.status is Status.fail and "paused" in result.detail


def test_the_auth_string_is_sent_as_prefect_sends_it() -> None:
    seen: list[httpx.Request] = []
    check(prefect_api(workers=[worker("host-1", 5)], seen=seen), PREFECT_API_AUTH_STRING="a:b")
    expected = "Basic " + base64.b64encode(b"a:b").decode()
    assert seen and all(r.headers["Authorization"] == expected for r in seen)
    assert check(prefect_api(pool_status=401)).status is Status.fail


def test_a_url_that_is_not_the_api_says_so() -> None:
    html = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>UI</html>"))
    result = check(html)
    assert result.status is Status.fail and "end in /api" in result.detail


def test_an_unreachable_server_fails_the_worker_check() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = check(httpx.MockTransport(refuse))
    assert result.status is Status.fail and "no answer" in result.detail


# --- the command ----------------------------------------------------------------------------


def run_doctor(*args: str) -> Any:
    return CliRunner().invoke(app, ["doctor", *args])


@pytest.fixture
def healthy_home(rollout_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "npm-2022.yaml"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    upgrade(engine)
    engine.dispose()
    warehouse.connect(rollout_home / "warehouse.duckdb").close()
    return rollout_home


def test_doctor_lists_every_check_and_exits_0_when_none_fails(healthy_home: Path) -> None:
    result = run_doctor("--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # nothing but JSON on stdout
    assert [r["check"] for r in rows] == [
        "registry",
        "schema",
        "warehouse",
        "quarantine",
        "sends",
        "home",
        "landing",
        "reports",
        "leftovers",
        "plan",
        "sendgrid",
        "worker",
    ]
    statuses = {r["check"]: r["status"] for r in rows}
    # No PREFECT_API_URL here: neither the worker nor the notify flow's Secret block was
    # checked, a warning each, not a failure.
    assert statuses["worker"] == statuses["sendgrid"] == "warn"
    checks = ("registry", "schema", "warehouse", "quarantine", "sends", "home", "landing")
    checks += ("reports",)
    checks += ("leftovers", "plan")
    assert {statuses[c] for c in checks} == {"ok"}, rows


def test_doctor_exits_1_when_a_check_fails(healthy_home: Path, tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text("name: [unclosed\n")
    result = CliRunner().invoke(
        app, ["doctor", "--format", "csv"], env={"ROLLOUT_PLAN": str(tmp_path / "plan.yaml")}
    )
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "check,status,detail"
    assert any(line.startswith("plan,fail,") for line in lines)


def test_a_warehouse_whose_views_another_rollout_made_is_a_warning(tmp_path: Path) -> None:
    """Read-only commands refuse it until a run writes it; the doctor says so."""
    path = tmp_path / "warehouse.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("update warehouse_schema set fingerprint = 'an older rollout'")
    result = check_warehouse(path)
    assert result.status is Status.warn and "rollout ingest" in result.detail


def test_a_relative_plan_missing_from_the_working_folder_names_that_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROLLOUT_PLAN=plans/npm-2022.yaml, as the runbook's environment file has it, read
    by a job that did not cd into the checkout (cron starts in the home folder): the
    failure said only "plans/npm-2022.yaml: No such file or directory", which reads as
    a checkout missing its plan."""
    monkeypatch.chdir(tmp_path)
    result = check_plan(Path("plans/npm-2022.yaml"))
    assert result.status is Status.fail
    assert "plans/npm-2022.yaml" in result.detail
    assert f"a relative path, read from the working folder {tmp_path}" in result.detail


# --- who may read the home ------------------------------------------------------------------


def test_a_home_closed_to_others_passes(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert check_home(settings).status is Status.ok  # not there yet
    settings.home.mkdir(mode=0o750)
    (settings.home / "registry.db").write_text("")
    (settings.home / "registry.db").chmod(0o640)
    result = check_home(settings)
    assert result.status is Status.ok and result.check == "home", result


def test_a_home_an_older_rollout_left_open_to_others_warns_naming_each_path(
    tmp_path: Path,
) -> None:
    """A home made at 0755 (an older rollout, an operator's mkdir) with its outbox folder
    0755, and the files SQLite and DuckDB make beside their databases with the umask
    alone (0644): anyone on the host could read the registry and the emails. rollout
    makes its own files closed, but nothing said these were not."""
    settings = settings_for(tmp_path)
    home = settings.home
    home.mkdir()
    home.chmod(0o755)
    (home / "outbox").mkdir(mode=0o750)
    (home / "outbox").chmod(0o755)
    for name, mode in [
        ("registry.db", 0o640),
        ("registry.db-wal", 0o644),
        ("registry.db-shm", 0o644),
        ("warehouse.duckdb", 0o640),
        ("warehouse.duckdb.wal", 0o604),
    ]:
        (home / name).write_text("")
        (home / name).chmod(mode)

    result = check_home(settings)

    assert result.status is Status.warn, result
    assert result.detail.startswith(
        f"5 paths open to others, personal data anyone on the host may read: "
        f"`chmod -R o-rwx {home}` closes them"
    )
    assert result.detail.endswith(
        f": '{home}' (0755), 'outbox/' (0755), 'registry.db-shm' (0644), "
        "'registry.db-wal' (0644), 'warehouse.duckdb.wal' (0604)"
    )
    subprocess.run(["chmod", "-R", "o-rwx", str(home)], check=True)  # the advice
    assert check_home(settings).status is Status.ok


def test_files_the_databases_make_with_the_umask_in_a_closed_home_pass(tmp_path: Path) -> None:
    """SQLite's and DuckDB's files take the umask (0644): the closed folder keeps them
    closed, as the runbook says, and is not worth a warning."""
    settings = settings_for(tmp_path)
    settings.home.mkdir(mode=0o750)
    for name in ("registry.db", "registry.db-wal", "warehouse.duckdb.wal"):
        (settings.home / name).write_text("")
        (settings.home / name).chmod(0o644)
    assert check_home(settings).status is Status.ok


def test_a_warehouse_outside_the_home_is_checked_with_its_wal(tmp_path: Path) -> None:
    elsewhere = tmp_path / "data" / "warehouse.duckdb"
    elsewhere.parent.mkdir(mode=0o751)
    elsewhere.parent.chmod(0o751)
    settings = settings_for(tmp_path, ROLLOUT_WAREHOUSE=str(elsewhere))
    settings.home.mkdir(mode=0o700)
    Path(f"{elsewhere}.wal").write_text("")
    Path(f"{elsewhere}.wal").chmod(0o644)
    result = check_home(settings)
    assert result.status is Status.warn, result
    assert result.detail.endswith(f": '{elsewhere.parent}' (0751), '{elsewhere}.wal' (0644)")


def test_a_warehouse_read_past_its_time_is_stopped_even_when_the_time_ran_out_between_queries(
    tmp_path: Path,
) -> None:
    """DuckDB drops an interrupt that comes while no statement runs: a doctor row whose
    time ran out between two of its queries (the schema version read, then the scan)
    ran the scan to its end, holding the warehouse from every run meanwhile. The deadline
    interrupts again until the row's block ends."""
    import duckdb

    from rollout.ops import doctor

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    try:
        started = time.monotonic()
        with pytest.raises(duckdb.InterruptException), doctor._bounded(con, 0.05):
            time.sleep(0.3)  # the deadline passes here, no statement running
            con.execute("select count(*) from range(100000000000)").fetchone()
        assert time.monotonic() - started < 30  # the scan alone runs for minutes
    finally:
        con.close()


def test_a_table_locked_by_another_session_is_a_warning_naming_the_wait_not_a_hang(
    postgres_schema_url: str,
) -> None:
    """Connecting was bounded, the statements not: a migration's ACCESS EXCLUSIVE lock
    on alembic_version held the schema row (and the doctor's cron job) for as long."""
    upgrade(make_engine(postgres_schema_url))
    holder = make_engine(postgres_schema_url)
    try:
        with holder.begin() as connection:
            connection.execute(text("lock table alembic_version in access exclusive mode"))
            started = time.monotonic()
            schema = check_schema(Registry(postgres_schema_url))
            took = time.monotonic() - started
    finally:
        holder.dispose()
    assert schema.status is Status.warn, schema
    assert "waited over 2 s for a lock" in schema.detail and "not checked" in schema.detail
    assert took < doctor.TIMEOUT, took
    assert check_schema(Registry(postgres_schema_url)).status is Status.ok

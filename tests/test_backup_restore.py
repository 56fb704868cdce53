"""The backup and restore drill of docs/runbook-operator.md, actually run.

A registry on PostgreSQL with a sample, cohorts and an enforced phase is dumped with
``pg_dump --format=custom``, restored with ``pg_restore`` into a fresh database, and the
commands the runbook compares give the same answers on both. The runbook dumps a whole
database; this test's registry is a schema of its own (tests/conftest.py), so the dump
names it with ``--schema`` and the restore keeps its name, the one change from the runbook.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.plan import Plan
from rollout.phases.enforce import preview_phase
from rollout.phases.previews import save_preview
from rollout.registry import Registry
from rollout.registry.engine import adbc_uri
from tests.conftest import fresh_postgres_database
from tests.factories import AccountFactory
from tests.support.previews import to_apply

ROOT = Path(__file__).resolve().parent.parent


def pg_tool(name: str) -> str:
    """pg_dump or pg_restore: on PATH, else Debian's newest versioned one (a dump must
    be made by a pg_dump at least as new as the server)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        pytest.skip(f"{name} not found (apt-get install postgresql-client)")
    return str(candidates[-1])


def rollout(registry_url: str, home: Path, *args: str) -> Any:
    """One `rollout` command against ``registry_url``, with nothing else from outside."""
    env = {
        "ROLLOUT_HOME": str(home),
        "ROLLOUT_REGISTRY_URL": registry_url,
        "ROLLOUT_PLAN": str(ROOT / "plans" / "npm-2022.yaml"),
        "ROLLOUT_WAREHOUSE": None,
        "SENDGRID_API_KEY": None,
    }
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, f"rollout {' '.join(args)}: {result.output}"
    return result


def populate(registry_url: str, home: Path) -> int:
    """A tiny sample, its cohorts, and the top-100 phase enforced: every kind of row the
    registry holds that a restore must bring back (flags, revoked sessions, emails, audit)."""
    rollout(registry_url, home, "db", "upgrade")
    rollout(registry_url, home, "sample", "--scale", "tiny", "--seed", "3")
    rollout(registry_url, home, "ingest")
    rollout(registry_url, home, "metrics", "--as-of", "2022-02-01")
    rollout(registry_url, home, "cohorts", "build", "--as-of", "2022-02-01")
    preview = rollout(registry_url, home, "phase", "preview", "top-100", "--format", "json")
    count = len(json.loads(preview.stdout))
    rollout(registry_url, home, *to_apply(preview.stderr))
    return count


def answers(registry_url: str, home: Path) -> dict[str, Any]:
    """What the runbook's drill compares: the schema revision, a phase preview (who is
    required, their sessions) and the email ledger. Each run in a scratch home, so the
    drill never writes a preview record where the real ones are kept."""
    status = json.loads(rollout(registry_url, home, "db", "status", "--format", "json").stdout)
    status.pop("registry")  # the database's name: the one thing that differs
    preview = rollout(registry_url, home, "phase", "preview", "top-100", "--format", "json")
    emails = rollout(registry_url, home, "notify", "status", "--format", "json")
    return {
        "status": status,
        "preview": json.loads(preview.stdout),
        "emails": json.loads(emails.stdout),
    }


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A new, empty database on the test server (the runbook's `create database`)."""
    with fresh_postgres_database("rollout_drill") as url:
        yield url


@pytest.mark.slow
@pytest.mark.postgres
def test_a_dump_restored_into_a_fresh_database_gives_the_same_answers(
    postgres_schema_url: str, scratch_database: str, tmp_path: Path
) -> None:
    live = postgres_schema_url
    schema = make_url(live).query["options"].removeprefix("-csearch_path=")
    enforced = populate(live, tmp_path / "home")
    assert enforced > 0

    dump = tmp_path / "rollout.dump"
    dump_command = [pg_tool("pg_dump"), "--format=custom", f"--schema={schema}"]
    subprocess.run([*dump_command, f"--file={dump}", adbc_uri(live)], check=True, timeout=300)
    # The restore keeps the schema's name: point the restored URL's search_path at it.
    restored = make_url(scratch_database).update_query_dict({"options": f"-csearch_path={schema}"})
    restored_url = restored.render_as_string(hide_password=False)
    restore_command = [pg_tool("pg_restore"), "--no-owner", "--exit-on-error"]
    subprocess.run(
        [*restore_command, f"--dbname={adbc_uri(restored_url)}", str(dump)], check=True, timeout=300
    )

    before = answers(live, tmp_path / "drill-live")
    after = answers(restored_url, tmp_path / "drill-restored")
    assert after == before
    assert before["status"]["up_to_date"] is True
    assert len(before["preview"]) == enforced
    assert all(row["already_required"] for row in before["preview"])
    assert before["emails"]  # the enforcement notices are in the ledger too


def test_the_runbook_gives_the_commands_this_test_runs() -> None:
    runbook = (ROOT / "docs" / "runbook-operator.md").read_text()
    drill = runbook[runbook.index("### The restore drill") :]
    for command in (
        'pg_dump --format=custom --file="$BACKUP" "$LIVE"',
        'pg_restore --no-owner --exit-on-error --dbname="$DRILL" "$BACKUP"',
        "rollout db status --format json",
        "rollout phase preview top-100 --format json",
        "rollout notify status --format json",
    ):
        assert command in drill, command


def test_the_backup_table_keeps_every_file_a_phase_preview_saves(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """The table said `reports/previews/*.csv`: a backup taken by that glob left out each
    list's record (`.json`: who previewed, when, the counts), and a home restored from it
    lost every `previewed` of `rollout plan show`."""
    AccountFactory(username="alice", sessions=1, in_cohort="top-100")
    preview = preview_phase(registry, plan, plan.phase("top-100"))
    home = tmp_path / "home"
    saved = save_preview(plan, preview, home / "reports", actor="rm")
    written = sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file())
    assert any(name.endswith(".json") for name in written)

    runbook = (ROOT / "docs" / "runbook-operator.md").read_text()
    table = runbook[runbook.index("## 12. Backups") : runbook.index("**What a rebuild")]
    backed_up = [
        row.split("|")[1].strip().strip("`")
        for row in table.splitlines()
        if row.startswith("| `") and row.split("|")[2].strip().startswith("yes")
    ]
    for name in written:
        assert any(fnmatch(name, pattern) or name.startswith(pattern) for pattern in backed_up), (
            name,
            backed_up,
        )
    assert saved.csv_path.exists()

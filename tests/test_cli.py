"""The CLI end to end on small files: exit codes, stdout only for listings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from rollout.cli import app

from .conftest import DATA


def run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_db_upgrade_then_status(rollout_home: Path) -> None:
    assert run("db", "upgrade").exit_code == 0
    result = run("db", "status", "--format", "json")
    assert result.exit_code == 0
    status = json.loads(result.stdout)
    assert status["up_to_date"] is True
    assert (rollout_home / "registry.db").exists()


def test_ingest_bad_file_exits_2_naming_file_line_and_reason(rollout_home: Path) -> None:
    run("db", "upgrade")
    bad = DATA / "bad" / "downloads-negative-count.csv"
    result = run("ingest", str(bad), "--format", "json")
    assert result.exit_code == 2
    assert f"{bad}:3:" in result.stderr and "downloads -5 is negative" in result.stderr
    listing = json.loads(result.stdout)
    assert [(f["status"], f["loaded"]) for f in listing] == [("rejected", 0)]


def test_ingest_json_output_is_only_json_and_rerun_skips(rollout_home: Path) -> None:
    run("db", "upgrade")
    landing = rollout_home / "landing"
    shutil.copytree(
        DATA / "good", landing / "downloads", ignore=shutil.ignore_patterns("manifests*", "logins*")
    )
    first = run("ingest", "--format", "json")
    assert first.exit_code == 0, first.stderr
    assert {f["status"] for f in json.loads(first.stdout)} == {"loaded"}
    second = run("ingest", "--format", "json")
    assert {f["status"] for f in json.loads(second.stdout)} == {"skipped"}
    assert "0 loaded, 2 skipped" in second.stderr


def test_usage_errors_exit_2(rollout_home: Path) -> None:
    assert run("ingest", "--format", "yaml").exit_code == 2
    assert run("sample", "--scale", "galactic").exit_code == 2
    assert run("sample", "--end", "2022-13-01", "--scale", "tiny").exit_code == 2


def test_summary_csv(rollout_home: Path) -> None:
    run("db", "upgrade")
    run("ingest", str(DATA / "good"))
    result = run("summary", "--format", "csv")
    assert result.exit_code == 0
    header, values = result.stdout.strip().splitlines()
    row = dict(zip(header.split(","), values.split(","), strict=True))
    assert row["packages"] == "3"
    assert row["dependency_edges"] == "3"
    assert row["files_loaded"] == "4"

"""Commands the README's table promises, end to end through the CLI: `rollout
quarantine`, `rollout report`, exit code 1 for a failure that is neither bad input nor
a guard, and ROLLOUT_DUCKDB_MEMORY_LIMIT on every warehouse connection."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner, Result

from rollout import warehouse
from rollout.cli import app
from rollout.core.config import load_settings
from rollout.registry.engine import make_engine
from rollout.report.spec import report_spec

from .factories import AccountFactory, bound_to


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- rollout quarantine -------------------------------------------------------------------


def _downloads(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["package", "day", "downloads"])
        writer.writerows(rows)
    return path


def test_quarantine_lists_the_refused_rows_with_file_line_and_reason(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_QUARANTINE_LIMIT", "0.5")
    good = [(f"pkg-{n}", "2022-01-10", str(n)) for n in range(8)]
    first = _downloads(
        tmp_path / "in" / "downloads-a.csv",
        # Lines 2-4 good, 5 and 7 bad (line 1 is the header).
        [*good[:3], ("react", "2022-01-10", "-5"), good[3], (".bad", "2022-01-10", "1")],
    )
    second = _downloads(
        tmp_path / "in2" / "downloads-b.csv", [*good[4:], ("vue", "2022-01-10", "many")]
    )
    for path in (first, second):
        loaded = run("ingest", "--no-registry", str(path), "--format", "json")
        assert loaded.exit_code == 0, loaded.stderr
    [a] = json.loads(run("ingest", "--no-registry", str(first), "--format", "json").stdout)
    assert a["status"] == "skipped"  # a rerun quarantines nothing twice

    listed = run("quarantine", "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["file"], r["line"], r["reason"]) for r in rows] == [
        (str(first), 5, "downloads -5 is negative"),
        (str(first), 7, "package name '.bad' is not a valid npm package name"),
        (str(second), 6, "downloads 'many' is not a whole number"),
    ]
    assert json.loads(rows[0]["record"]) == {
        "package": "react",
        "day": "2022-01-10",
        "downloads": "-5",
    }

    limited = json.loads(run("quarantine", "--limit", "2", "--format", "json").stdout)
    assert limited == rows[:2]
    table = run("quarantine", "--limit", "1")
    assert table.exit_code == 0
    assert "downloads -5 is negative" in table.stdout and "'.bad'" not in table.stdout


def test_quarantine_without_a_warehouse_says_to_ingest_first(rollout_home: Path) -> None:
    result = run("quarantine")
    assert result.exit_code == 2
    assert "no warehouse yet" in result.stderr and "rollout ingest" in _one_line(result.stderr)
    assert result.stdout == ""


# --- rollout report ------------------------------------------------------------------------


def _registry(rollout_home: Path) -> str:
    assert run("db", "upgrade").exit_code == 0
    return load_settings().registry_url


def test_a_report_of_a_day_before_the_plans_lead_up_has_that_days_adoption(
    rollout_home: Path,
) -> None:
    """Its series started at the plan's lead-up, so it said there was no adoption."""
    engine = make_engine(_registry(rollout_home))
    with bound_to(engine):
        AccountFactory(username="ann", with_totp=True)
        AccountFactory(username="cat")
    engine.dispose()
    result = run("report", "--as-of", "2021-10-01", "--format", "json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["accounts"], record["with_2fa"], record["share"]) == (2, 1, 0.5)
    markdown = (rollout_home / "reports" / "2021-10-01" / "adoption.md").read_text()
    assert "No adoption data yet" not in markdown


def test_report_writes_html_markdown_and_a_csv_per_mart(rollout_home: Path) -> None:
    engine = make_engine(_registry(rollout_home))
    with bound_to(engine):
        AccountFactory(username="ann", with_totp=True)
        AccountFactory(username="ben", with_webauthn=True)
        AccountFactory(username="cat")
        AccountFactory(username="dan")
    engine.dispose()

    result = run("report", "--as-of", "2022-03-01", "--format", "json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    folder = rollout_home / "reports" / "2022-03-01"
    assert (record["accounts"], record["with_2fa"], record["share"]) == (4, 2, 0.5)
    assert Path(record["html"]) == folder / "adoption.html"
    assert Path(record["markdown"]) == folder / "adoption.md"

    written = sorted(p.name for p in folder.iterdir())
    assert written == sorted(
        ["adoption.html", "adoption.md", *(f"{m}.csv" for m in report_spec().marts)]
    )
    html = (folder / "adoption.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "2022-03-01" in html
    assert "2022-03-01" in (folder / "adoption.md").read_text()

    # Each CSV is its mart, whole: the mart's columns, then as many rows as it has.
    with warehouse.open_warehouse(rollout_home / "warehouse.duckdb", read_only=True) as con:
        for mart, columns in report_spec().marts.items():
            with (folder / f"{mart}.csv").open(newline="") as handle:
                header, *rows = list(csv.reader(handle))
            assert tuple(header) == columns, mart
            assert len(rows) == warehouse.scalar(con, f"select count(*) from {mart}"), mart
        everyone = con.execute(
            "select accounts, with_2fa from adoption_daily "
            "where population = 'all' and day = date '2022-03-01'"
        ).fetchall()
    assert everyone == [(4, 2)]
    with (folder / "adoption_daily.csv").open(newline="") as handle:
        daily = [r for r in csv.DictReader(handle) if r["population"] == "all"]
    assert (daily[-1]["day"], daily[-1]["accounts"], daily[-1]["with_2fa"]) == (
        "2022-03-01",
        "4",
        "2",
    )


def test_report_exit_codes(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _registry(rollout_home)
    bad_day = run("report", "--as-of", "2022-02-30")
    assert bad_day.exit_code == 2 and "--as-of" in bad_day.stderr
    # A day not come yet: its report would claim adoption figures up to it.
    ahead = run("report", "--as-of", "2099-01-01")
    assert ahead.exit_code == 2 and "--as-of: 2099-01-01 is after today" in ahead.stderr
    assert not (rollout_home / "reports").exists()
    monkeypatch.setenv("ROLLOUT_PLAN", str(tmp_path / "no-such-plan.yaml"))
    no_plan = run("report", "--as-of", "2022-03-01")
    assert no_plan.exit_code == 2 and "no-such-plan.yaml" in no_plan.stderr
    monkeypatch.delenv("ROLLOUT_PLAN")
    assert run("report", "--as-of", "2022-03-01").exit_code == 0


def _copy_where_it_cannot(con: Any, table: str, columns: Any, path: Path) -> None:
    # DuckDB's own input/output error: a "folder" that is a file takes no file.
    # Beside the report's folder (the path is in the report's hidden staging folder).
    blocker = Path(path).parent.parent.parent / "not-a-folder"
    blocker.write_text("")
    con.execute(f"copy (select 1 as x) to '{blocker}/{Path(path).name}' (format csv)")


def _write_to_a_full_disk(self: Any, name: str, text: str) -> Path:
    # What a write to a full disk raises: the kernel's ENOSPC, naming no file.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    ("target", "failing", "said"),
    [
        ("_copy_csv", _copy_where_it_cannot, "IO Error"),
        ("_Staging.write_text", _write_to_a_full_disk, "No space left on device"),
    ],
    ids=["duckdb", "python"],
)
def test_a_file_that_cannot_be_written_is_one_line_and_the_report_before_stays(
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    failing: Any,
    said: str,
) -> None:
    from rollout.report import reporting

    _registry(rollout_home)
    assert run("report", "--as-of", "2022-03-01").exit_code == 0
    folder = rollout_home / "reports" / "2022-03-01"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    owner, _, name = target.rpartition(".")
    monkeypatch.setattr(getattr(reporting, owner) if owner else reporting, name, failing)
    result = run("report", "--as-of", "2022-03-01")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and said in line and "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --- exit code 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("summary",),
        ("quarantine",),
        ("ingest", "--no-registry"),
        ("report", "--as-of", "2022-03-01"),
        ("cohorts", "simulate", "--top", "10"),
    ],
    ids=lambda a: " ".join(a),
)
def test_a_warehouse_that_cannot_be_opened_exits_1_with_a_message(
    rollout_home: Path, args: tuple[str, ...]
) -> None:
    """Neither bad input (2) nor a guard (3): the file is there, and it is not a DuckDB
    database. One line naming it and what to do, no traceback."""
    _registry(rollout_home)
    (rollout_home / "landing").mkdir(exist_ok=True)  # ingest checks its folder first
    broken = rollout_home / "warehouse.duckdb"
    broken.write_text("this is not a DuckDB file\n" * 100)
    result = run(*args)
    assert result.exit_code == 1, result.stderr
    assert isinstance(result.exception, SystemExit), result.exception
    message = _one_line(result.stderr)
    assert f"{broken}: cannot open the warehouse" in message
    assert "rollout ingest" in message and "Traceback" not in message
    assert broken.read_text().startswith("this is not a DuckDB file")  # left as it was


def test_the_registry_named_as_the_warehouse_is_refused_without_fetching_an_extension(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB tried to download its SQLite extension to open it, and the advice to move
    a broken warehouse aside would have been about the registry."""
    _registry(rollout_home)
    monkeypatch.setenv("ROLLOUT_WAREHOUSE", str(rollout_home / "registry.db"))
    before = (rollout_home / "registry.db").read_bytes()
    result = run("summary")
    assert result.exit_code == 2, result.stderr
    message = _one_line(result.stderr)
    assert "registry.db: a SQLite database (the registry?), not a DuckDB warehouse" in message
    assert "move it aside" not in message and "extension" not in message
    assert (rollout_home / "registry.db").read_bytes() == before


def test_a_folder_named_as_the_warehouse_is_a_setting_to_check(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advice for a broken warehouse, to move it aside, would have moved the
    landing files aside."""
    _registry(rollout_home)
    landing = rollout_home / "landing"
    landing.mkdir(exist_ok=True)
    monkeypatch.setenv("ROLLOUT_WAREHOUSE", str(landing))
    result = run("summary")
    assert result.exit_code == 2, result.stderr
    message = _one_line(result.stderr)
    assert f"{landing}: a folder, not a DuckDB warehouse file: check ROLLOUT_WAREHOUSE" in message
    assert "move it aside" not in message


def test_a_warehouse_connection_never_installs_an_extension(tmp_path: Path) -> None:
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        assert (
            warehouse.scalar(con, "select current_setting('autoinstall_known_extensions')") is False
        )


# --- ROLLOUT_DUCKDB_MEMORY_LIMIT -------------------------------------------------------------


def _limit_duckdb_reports(limit: str) -> str:
    with duckdb.connect(config={"memory_limit": limit}) as con:
        return str(con.execute("select current_setting('memory_limit')").fetchone()[0])


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, str]]:
    """Every warehouse connection the commands open: (read-only?, its memory limit)."""
    seen: list[tuple[bool, str]] = []
    real = warehouse.connect

    def recording(path: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        con = real(path, **kwargs)
        setting = con.execute("select current_setting('memory_limit')").fetchone()
        seen.append((bool(kwargs.get("read_only")), str(setting[0] if setting else None)))
        return con

    monkeypatch.setattr(warehouse, "connect", recording)
    return seen


def test_every_warehouse_connection_gets_the_memory_limit(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, connections: list[tuple[bool, str]]
) -> None:
    wanted = _limit_duckdb_reports("123MB")
    assert wanted != _limit_duckdb_reports("50%")  # the setting is told apart
    monkeypatch.setenv("ROLLOUT_DUCKDB_MEMORY_LIMIT", "123MB")
    _registry(rollout_home)
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        AccountFactory(username="ann", with_totp=True)
    engine.dispose()
    landing = rollout_home / "landing" / "downloads" / "downloads-2022-01-10.csv"
    _downloads(landing, [("react", "2022-01-10", "5")])
    for args in (
        ("ingest",),
        ("summary",),
        ("quarantine",),
        ("metrics", "--as-of", "2022-01-11"),
        ("cohorts", "simulate", "--top", "1", "--as-of", "2022-01-11"),
        ("report", "--as-of", "2022-01-11"),
    ):
        result = run(*args)
        assert result.exit_code == 0, (args, result.stderr)
    assert {read_only for read_only, _ in connections} == {True, False}
    assert [limit for _, limit in connections] == [wanted] * len(connections)


def test_without_the_variable_duckdb_keeps_its_default(
    rollout_home: Path, connections: list[tuple[bool, str]]
) -> None:
    _downloads(rollout_home / "in" / "downloads.csv", [("react", "2022-01-10", "5")])
    assert run("ingest", "--no-registry", str(rollout_home / "in")).exit_code == 0
    assert run("summary").exit_code == 0
    with duckdb.connect() as con:
        default = str(con.execute("select current_setting('memory_limit')").fetchone()[0])
    assert [limit for _, limit in connections] == [default, default]


def test_a_memory_limit_duckdb_cannot_read_is_refused_before_any_work(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_DUCKDB_MEMORY_LIMIT", "lots")
    result = run("summary")
    assert result.exit_code == 2
    assert "ROLLOUT_DUCKDB_MEMORY_LIMIT" in result.stderr

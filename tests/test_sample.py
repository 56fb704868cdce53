"""The sample registry generator: deterministic, refuses to overwrite, and realistic enough.

Everything runs at the ``tiny`` scale on SQLite; one test repeats it on PostgreSQL when
ROLLOUT_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
import sqlite3
import statistics
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.controls import visible
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.names import is_valid_package_name
from rollout.demo.sample import (
    REAL_DOWNLOADS,
    SAMPLE_MARK,
    SampleSummary,
    confirm_name,
    generate_sample,
    registry_contents,
)
from rollout.demo.story import STORY_LOGINS, STORY_PUBLISHES
from rollout.registry import Registry, bulk, migrate
from rollout.registry.engine import make_engine, session_scope
from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES, Account, RegistryMark
from tests.conftest import fresh_postgres_database, typed_parquet_downloads
from tests.factories import AccountFactory, NotificationFactory

SEED = 7
END = date(2022, 1, 31)


@dataclass
class Run:
    summary: SampleSummary
    db: Path
    landing: Path
    progress: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def query(self, sql: str) -> list[tuple]:
        with closing(sqlite3.connect(self.db)) as connection:
            return connection.execute(sql).fetchall()


def _generate(root: Path, seed: int = SEED, **kwargs: Any) -> Run:
    db, landing = root / "registry.db", root / "landing"
    summary = generate_sample(
        "tiny", seed, registry=Registry(f"sqlite:///{db}"), landing_dir=landing, **kwargs
    )
    return Run(summary, db, landing)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    calls: list[tuple[str, int, int]] = []
    result = _generate(tmp_path_factory.mktemp("a"), progress=lambda *a: calls.append(a))
    result.progress = calls
    return result


@pytest.fixture(scope="module")
def manifests(run: Run) -> list[dict]:
    path = run.landing / "manifests" / "manifests.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def downloads(run: Run) -> list[tuple[str, date, int]]:
    """Every (package, day, downloads) row of the daily files, CSV and Parquet."""
    rows: list[tuple[str, date, int]] = []
    for path in sorted((run.landing / "downloads").glob("downloads-*")):
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                assert reader.fieldnames == ["package", "day", "downloads"]
                rows += [
                    (r["package"], date.fromisoformat(r["day"]), int(r["downloads"]))
                    for r in reader
                ]
        else:
            table = pq.read_table(path)
            assert table.schema.field("day").type == pa.date32()
            assert pa.types.is_integer(table.schema.field("downloads").type)
            rows += list(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
    return rows


def _registry_checksum(run: Run) -> str:
    digest = hashlib.sha256()
    with closing(sqlite3.connect(run.db)) as connection:
        for table in REGISTRY_TABLES:
            for row in connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
                digest.update(repr(row).encode())
    return digest.hexdigest()


def _landing_bytes(landing: Path) -> dict[str, str]:
    return {
        str(p.relative_to(landing)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(landing.rglob("*"))
        if p.is_file()
    }


def _counts(run: Run) -> dict[str, int]:
    return {t: run.query(f"SELECT count(*) FROM {t}")[0][0] for t in REGISTRY_TABLES}


# --- determinism and refusal -----------------------------------------------------------


def test_same_seed_same_output_and_other_seed_differs(run: Run, tmp_path: Path) -> None:
    again = _generate(tmp_path / "b")
    assert _landing_bytes(again.landing) == _landing_bytes(run.landing)
    assert _counts(again) == _counts(run)
    assert _registry_checksum(again) == _registry_checksum(run)

    other = _generate(tmp_path / "c", seed=SEED + 1)
    assert _registry_checksum(other) != _registry_checksum(run)
    theirs, ours = _landing_bytes(other.landing), _landing_bytes(run.landing)
    assert theirs.keys() == ours.keys()
    assert all(theirs[name] != ours[name] for name in ours)


def test_refuses_to_overwrite_unless_replace(run: Run, tmp_path: Path) -> None:
    first = _generate(tmp_path)
    with pytest.raises(GuardRefused, match=r"--replace --confirm registry\.db"):
        _generate(tmp_path)
    with pytest.raises(BadInput, match="landing folder already has"):
        generate_sample(
            "tiny",
            SEED,
            registry=Registry(f"sqlite:///{tmp_path / 'fresh.db'}"),
            landing_dir=first.landing,
        )

    # The ledger's append-only triggers refuse DELETE: replace must still empty it.
    engine = make_engine(first.url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO actions (effect_key, action, reason, actor, created_at, details) "
                "VALUES ('k', 'test', 'r', 'me', '2022-01-01 00:00:00.000000', '{}')"
            )
        )
    engine.dispose()
    stray = first.landing / "downloads" / "downloads-2020-01-01.csv"
    stray.write_text("package,day,downloads\n", encoding="utf-8")
    mine = first.landing / "notes.txt"
    mine.write_text("not the sample's", encoding="utf-8")

    replaced = _generate(tmp_path, replace=True, confirm="registry.db")
    assert _registry_checksum(replaced) == _registry_checksum(run)
    assert all(replaced.query(f"SELECT count(*) FROM {t}")[0][0] == 0 for t in LEDGER_TABLES)
    assert not stray.exists()
    assert mine.exists()  # outside the sample's subfolders: left alone


def test_replacing_a_sample_drops_its_demos_events_so_ingest_loads_only_the_new_sample(
    tmp_path: Path,
) -> None:
    """The demo adds its story's publishes and SendGrid delivery events to the sample's
    landing folder: they outlived `--replace`, and the next `rollout ingest` loaded the
    old story's events (outbox ids naming no notification) with the new sample."""
    first = _generate(tmp_path)
    story = (
        first.landing / "publishes" / STORY_PUBLISHES,
        first.landing / "logins" / STORY_LOGINS,
        first.landing / "events" / "events-story-20220120.json",
    )
    for path in story:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the old story's")
    replaced = _generate(tmp_path, replace=True, confirm="registry.db")
    assert not any(path.exists() for path in story)
    written = sorted(p for p in replaced.landing.rglob("*") if p.is_file())
    assert written == sorted([*replaced.summary.landing_files, replaced.landing / SAMPLE_MARK])


def test_replacing_a_sample_drops_its_warehouse_so_the_next_ingest_loads_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's rehearsal in a used home: the old sample's warehouse refused the
    new sample's files as conflicting, and metrics read the old days."""
    home = tmp_path / "home"
    monkeypatch.setenv("ROLLOUT_HOME", str(home))
    monkeypatch.delenv("ROLLOUT_REGISTRY_URL", raising=False)
    monkeypatch.delenv("ROLLOUT_WAREHOUSE", raising=False)
    runner = CliRunner()

    def rollout(*args: str) -> Any:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result

    rollout("db", "upgrade")
    rollout("sample", "--scale", "tiny", "--seed", "7", "--days", "10")
    rollout("ingest")
    assert (home / "warehouse.duckdb").exists()
    for folder in ("outbox", "reports/previews"):  # as the demo leaves them
        (home / folder).mkdir(parents=True)
        (home / folder / "old-story").write_text("the replaced sample's", encoding="utf-8")
    replaced = rollout(
        "sample",
        "--scale",
        "tiny",
        "--seed",
        "8",
        "--days",
        "10",
        "--replace",
        "--confirm",
        "registry.db",
    )
    said = " ".join(replaced.stderr.split())
    assert "removed the replaced sample's warehouse" in said
    assert not (home / "warehouse.duckdb").exists()
    # The old story's emails, reports and previews went with it.
    assert "removed the replaced sample's outbox" in said
    assert not (home / "outbox").exists() and not (home / "reports").exists()
    rollout("ingest")


# --- replacing: only a sample, only with its name typed back ---------------------------


def _state(url: str) -> tuple[str | None, dict[str, int]]:
    """The schema revision and rows per table: what a refusal must leave as it was."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            counts = {
                t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in sorted(tables)
            }
        return migrate.current_revision(engine), counts
    finally:
        engine.dispose()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_a_registry_sample_did_not_make_is_never_replaced(
    registry_url: str, registry: Registry, factories: None, tmp_path: Path
) -> None:
    """`rollout db upgrade` made it and it holds real rows: whatever is typed back, it
    is left alone, schema included (this one is a revision behind)."""
    AccountFactory(with_totp=True, sessions=2, in_cohort="top-100")
    NotificationFactory()  # and its own account
    migrate.downgrade(registry.engine, "0005")
    registry.close()
    before = _state(registry_url)
    landing = tmp_path / "landing"
    for replace, confirm in ((False, None), (True, None), (True, confirm_name(registry))):
        with pytest.raises(GuardRefused) as refused:
            generate_sample(
                "tiny",
                SEED,
                registry=registry,
                landing_dir=landing,
                replace=replace,
                confirm=confirm,
            )
        message = str(refused.value)
        assert "a registry `rollout sample` did not make: 2 accounts, 1 email and 0 runs" in (
            message
        )
        assert make_url(registry_url).render_as_string(hide_password=True) in message
        assert "Nothing was changed" in message
    assert _state(registry_url) == before
    assert not landing.exists()


def test_a_sample_is_replaced_only_with_its_name_typed_back(tmp_path: Path) -> None:
    first = _generate(tmp_path)
    before = (_registry_checksum(first), _landing_bytes(first.landing))
    for confirm in (None, "registry", "production.db"):
        with pytest.raises(GuardRefused, match=r"--confirm registry\.db") as refused:
            _generate(tmp_path, replace=True, confirm=confirm)
        assert (
            f"sqlite:///{first.db} holds a sample registry: {first.summary.accounts} accounts, "
            "0 emails and 0 runs would be lost"
        ) in str(refused.value)
    assert (_registry_checksum(first), _landing_bytes(first.landing)) == before


def test_the_name_to_type_back_is_suggested_as_one_shell_word(tmp_path: Path) -> None:
    """A registry file named with a space, a quote and ``$(...)``: the suggested
    ``--confirm`` pasted into a shell gives the command exactly that name, and runs
    nothing it holds (it split into words, and ran the ``$(...)``)."""
    db = tmp_path / "it's my $(touch pwned) registry.db"
    registry = Registry(f"sqlite:///{db}")
    generate_sample("tiny", SEED, registry=registry, landing_dir=tmp_path / "landing")
    for replace in (False, True):
        with pytest.raises(GuardRefused) as refused:
            generate_sample(
                "tiny", SEED, registry=registry, landing_dir=tmp_path / "landing", replace=replace
            )
        suggested = str(refused.value).split("--confirm ", 1)[1].split(" (", 1)[0]
        typed = subprocess.run(
            ["bash", "-c", f"printf '%s\\n' {suggested}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        assert typed.stdout == f"{db.name}\n"
        assert not (tmp_path / "pwned").exists()


def test_an_empty_registry_is_filled_without_asking_and_marked_a_sample(
    registry: Registry, tmp_path: Path
) -> None:
    made_by_db_upgrade = registry_contents(registry)
    assert not made_by_db_upgrade.has_rows and not made_by_db_upgrade.is_sample
    landing = tmp_path / "landing"
    summary = generate_sample("tiny", SEED, registry=registry, landing_dir=landing)
    filled = registry_contents(registry)
    assert filled.is_sample and filled.accounts == summary.accounts


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("sqlite:////srv/rollout-home/registry.db", "registry.db"),
        ("postgresql://rollout:secret@db.internal:5432/rollout", "rollout"),
        ("postgres://u:p@h/rollout_test?options=-csearch_path%3Dt_0123", "rollout_test/t_0123"),
        ("postgresql://u:p@h/rollout?options=-c%20search_path%3Dscratch", "rollout/scratch"),
    ],
)
def test_the_name_to_type_back(url: str, name: str) -> None:
    assert confirm_name(Registry(url)) == name


def test_the_rehearsal_that_emptied_production_is_refused(
    rollout_home: Path,
    registry_url: str,
    factories: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scratch ROLLOUT_HOME, but ROLLOUT_REGISTRY_URL still on the real registry."""
    AccountFactory(sessions=2, in_cohort="top-100")
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    before = _state(registry_url)
    name = confirm_name(Registry(registry_url))
    for flags in ([], ["--replace"], ["--replace", "--confirm", name]):
        result = CliRunner().invoke(app, ["sample", "--scale", "tiny", *flags])
        assert result.exit_code == 3, result.output
        said = _one_line(result.stderr)
        assert "did not make: 1 account, 0 emails and 0 runs would be lost" in said
        password = make_url(registry_url).password
        assert not password or f":{password}@" not in said
    assert _state(registry_url) == before
    assert not rollout_home.exists()


def test_the_demo_is_never_played_on_a_registry_sample_did_not_make(
    rollout_home: Path,
    registry_url: str,
    factories: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`rollout demo` from a shell with the deployments' ROLLOUT_REGISTRY_URL: it rewound
    that registry to the story's start (deleting the sessions dated after it), scheduled
    the plan's brown-outs, queued emails and enforced. Refused, with nothing changed and
    no warehouse made."""
    AccountFactory(sessions=2, in_cohort="top-100")  # sessions from 2021-06-01
    (rollout_home / "landing").mkdir(parents=True)
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    before = _state(registry_url)
    result = CliRunner().invoke(app, ["demo", "--start", "2021-05-30", "--end", "2021-05-31"])
    assert result.exit_code == 3, result.output
    said = _one_line(result.stderr)
    assert "holds a registry `rollout sample` did not make" in said
    assert "Nothing was changed" in said
    password = make_url(registry_url).password
    assert not password or f":{password}@" not in said
    assert _state(registry_url) == before
    assert not (rollout_home / "warehouse.duckdb").exists()


def test_the_demo_without_its_landing_files_is_refused_before_it_changes_the_sample(
    rollout_home: Path,
    registry_url: str,
    registry: Registry,
    factories: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sample registry whose landing folder is not under ROLLOUT_HOME (a mistyped home,
    or a sample written elsewhere): the demo rewound the registry, then failed to ingest."""
    AccountFactory(sessions=2, in_cohort="top-100")
    with registry.engine.begin() as connection:
        connection.execute(
            insert(RegistryMark).values(
                kind="sample", created_at=datetime(2021, 6, 1), note="rollout sample"
            )
        )
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    before = _state(registry_url)
    result = CliRunner().invoke(app, ["demo", "--start", "2021-05-30", "--end", "2021-05-31"])
    assert result.exit_code == 2, result.output
    assert f"{rollout_home / 'landing'}: no such file or folder" in _one_line(result.stderr)
    assert _state(registry_url) == before
    assert not rollout_home.exists()


def test_the_command_previews_then_needs_the_name(rollout_home: Path) -> None:
    def sample(*flags: str) -> Any:
        return CliRunner().invoke(app, ["sample", "--scale", "tiny", "--seed", "3", *flags])

    assert sample().exit_code == 0
    db = rollout_home / "registry.db"
    accounts = registry_contents(Registry(f"sqlite:///{db}")).accounts
    before = _state(f"sqlite:///{db}")

    preview = sample()
    # The listing (stdout) is what --replace would lose; the messages are on stderr.
    assert preview.exit_code == 0 and "what --replace would lose" in preview.stdout
    said = _one_line(preview.stderr)
    assert f"preview only: sqlite:///{db} holds a sample registry: {accounts} accounts" in said
    assert "--replace --confirm registry.db" in said
    for flags in (["--replace"], ["--replace", "--confirm", "other.db"]):
        refused = sample(*flags)
        assert refused.exit_code == 3
        assert "type the database's name back" in _one_line(refused.stderr)
    assert sample("--confirm", "registry.db").exit_code == 2
    assert _state(f"sqlite:///{db}") == before

    assert sample("--replace", "--confirm", "registry.db").exit_code == 0


# --- the sample and the demo touch only their own --------------------------------------


DOWNLOADS_FILE = "downloads-2022-01-30.parquet"


def _production_home(root: Path) -> Path:
    """A worker's home `rollout sample` made none of: a landing file, the warehouse it
    was loaded into, an email in the outbox and a report."""
    home = root / "production"
    typed_parquet_downloads(
        home / "landing" / "downloads" / DOWNLOADS_FILE,
        [("left-pad", date(2022, 1, 30), 10)],
    )
    loaded = CliRunner().invoke(
        app, ["ingest", "--no-registry"], env={"ROLLOUT_HOME": str(home), "ROLLOUT_WAREHOUSE": ""}
    )
    assert loaded.exit_code == 0, loaded.output
    (home / "outbox").mkdir()
    (home / "outbox" / "00000001-someone.eml").write_text("Subject: 2FA\n", encoding="utf-8")
    (home / "reports" / "2022-01-30").mkdir(parents=True)
    (home / "reports" / "2022-01-30" / "adoption.html").write_text("<p>", encoding="utf-8")
    return home


def _rollout(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


SAMPLE = ("sample", "--scale", "tiny", "--seed", "7", "--days", "10")
REPLACE = (*SAMPLE, "--replace", "--confirm", "registry.db")
DEMO = ("demo", "--start", "2022-01-20", "--end", "2022-01-21")


def test_a_sample_home_with_the_warehouse_still_on_productions_is_refused(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROLLOUT_HOME on a demo home, ROLLOUT_WAREHOUSE still on production's: `sample
    --replace` deleted production's warehouse, and the demo loaded the sample into it."""
    production = _production_home(tmp_path / "o'neil")
    assert _rollout(*SAMPLE).exit_code == 0
    warehouse = production / "warehouse.duckdb"
    monkeypatch.setenv("ROLLOUT_WAREHOUSE", str(warehouse))
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    before = (_landing_bytes(production), _landing_bytes(rollout_home / "landing"), _state(url))
    for command in (REPLACE, SAMPLE, DEMO):
        result = _rollout(*command)
        assert result.exit_code == 3, (command, result.output)
        said = _one_line(result.stderr)
        assert f"ROLLOUT_WAREHOUSE's warehouse {visible(warehouse)}: " in said, command
        assert (
            f"from outside the sample's landing folder {visible(rollout_home / 'landing')}, "
            f"such as {visible(production / 'landing' / 'downloads' / DOWNLOADS_FILE)}"
        ) in said
        assert "Nothing was changed" in said
    after = (_landing_bytes(production), _landing_bytes(rollout_home / "landing"), _state(url))
    assert after == before
    assert not (rollout_home / "outbox").exists() and not (rollout_home / "reports").exists()


def test_a_sample_registry_with_the_home_still_on_productions_is_refused(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROLLOUT_REGISTRY_URL on a sample, ROLLOUT_HOME still on the worker's home: `sample
    --replace` deleted production's landing files (even with an empty registry, nothing
    typed back) and its warehouse, and the demo rewrote its login events and wrote its
    emails, reports and previews among production's."""
    # A home whose path holds a quote is named as a path is (visible): as it was,
    # Python's repr put this one in double quotes, the others in single ones.
    production = _production_home(tmp_path / "o'neil")
    assert _rollout(*SAMPLE).exit_code == 0
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    monkeypatch.setenv("ROLLOUT_HOME", str(production))
    before = (_landing_bytes(production), _state(url))
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    for registry_url, command in ((url, REPLACE), (url, DEMO), (empty, (*SAMPLE, "--replace"))):
        monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
        result = _rollout(*command)
        assert result.exit_code == 3, (command, result.output)
        said = _one_line(result.stderr)
        landing = visible(production / "landing")
        assert f"ROLLOUT_HOME's landing folder {landing}: " in said, command
        assert f"no {SAMPLE_MARK}" in said and "Nothing was changed" in said
    assert (_landing_bytes(production), _state(url)) == before


def test_an_outbox_or_reports_sample_did_not_make_is_refused(
    rollout_home: Path, tmp_path: Path
) -> None:
    """A home with no landing files yet, but another's emails or reports: the demo would
    write its own among them (and `plan show` read its previews)."""
    for folder, name in (("outbox", "00000001-someone.eml"), ("reports", "adoption.html")):
        (rollout_home / folder).mkdir(parents=True)
        (rollout_home / folder / name).write_text("theirs", encoding="utf-8")
        result = _rollout(*SAMPLE)
        assert result.exit_code == 3, result.output
        assert f"ROLLOUT_HOME's {folder}" in _one_line(result.stderr)
        assert sorted(p.name for p in rollout_home.iterdir()) == [folder]
        shutil.rmtree(rollout_home / folder)


def test_a_landing_folder_sample_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    first = _generate(tmp_path / "sample")
    assert (first.landing / SAMPLE_MARK).is_file()
    theirs = tmp_path / "theirs"
    typed_parquet_downloads(
        theirs / "downloads" / "downloads-2022-01-30.parquet", [("left-pad", date(2022, 1, 30), 1)]
    )
    before = (_landing_bytes(theirs), _registry_checksum(first))
    with pytest.raises(GuardRefused, match=f"holds 1 file and no {SAMPLE_MARK}"):
        generate_sample(
            "tiny",
            SEED,
            registry=Registry(first.url),
            landing_dir=theirs,
            replace=True,
            confirm="registry.db",
        )
    assert (_landing_bytes(theirs), _registry_checksum(first)) == before


def test_progress_reports_each_stage_from_zero_to_total(run: Run) -> None:
    stages: dict[str, list[tuple[int, int]]] = {}
    for stage, done, total in run.progress:
        stages.setdefault(stage, []).append((done, total))
    assert len(stages) >= 5
    for stage, steps in stages.items():
        total = steps[0][1]
        assert steps[0] == (0, total) and steps[-1] == (total, total), stage
        assert [d for d, _ in steps] == sorted({d for d, _ in steps}), stage
    assert len(stages["Writing downloads"]) == 36  # 0, then one per day


# --- landing files ---------------------------------------------------------------------


def test_manifests_follow_the_contract(run: Run, manifests: list[dict]) -> None:
    assert len(manifests) == run.summary.packages
    names = [m["name"] for m in manifests]
    assert len(set(names)) == len(names)
    usernames = {u for (u,) in run.query("SELECT username FROM accounts")}
    edges = 0
    for manifest in manifests:
        assert is_valid_package_name(manifest["name"])
        assert isinstance(manifest["version"], str) and manifest["version"]
        assert 1 <= len(manifest["maintainers"]) <= 5
        assert len(set(manifest["maintainers"])) == len(manifest["maintainers"])
        assert set(manifest["maintainers"]) <= usernames
        for key in ("dependencies", "devDependencies", "peerDependencies"):
            deps = manifest.get(key) or {}
            assert isinstance(deps, dict)
            assert manifest["name"] not in deps
            assert all(is_valid_package_name(k) and v for k, v in deps.items())
        edges += len(manifest.get("dependencies") or {})
    assert edges == run.summary.dependency_edges
    first = json.loads((run.landing / "manifests" / "manifests.jsonl").open().readline())
    assert list(first) == [
        "name",
        "version",
        "dependencies",
        "devDependencies",
        "peerDependencies",
        "maintainers",
    ]


def test_some_dependencies_name_missing_packages(manifests: list[dict]) -> None:
    names = {m["name"] for m in manifests}
    targets = [d for m in manifests for d in (m.get("dependencies") or {})]
    missing = [d for d in targets if d not in names]
    assert 0 < len(missing) < 0.01 * len(targets)
    ranges = Counter(r[0] for m in manifests for r in (m.get("dependencies") or {}).values())
    assert ranges["^"] > ranges["~"] > 0 and ranges["*"] > 0


def test_dependents_have_a_heavy_tail(manifests: list[dict]) -> None:
    dependents = Counter(d for m in manifests for d in (m.get("dependencies") or {}))
    counts = [dependents.get(m["name"], 0) for m in manifests]
    top = max(counts)
    assert top >= 100
    assert top >= 20 * max(1, statistics.median(counts))


def test_daily_downloads_follow_the_contract(run: Run, downloads: list) -> None:
    days = {day for _, day, _ in downloads}
    assert days == {END - timedelta(days=k) for k in range(35)}
    assert len(downloads) == run.summary.download_rows
    assert len({(p, d) for p, d, _ in downloads}) == len(downloads)
    assert all(is_valid_package_name(p) for p, _, _ in downloads)
    assert all(isinstance(n, int) and n >= 0 for _, _, n in downloads)
    csv_files = sorted((run.landing / "downloads").glob("downloads-*.csv"))
    parquet_files = sorted((run.landing / "downloads").glob("downloads-*.parquet"))
    assert len(csv_files) == 17 and len(parquet_files) == 18
    assert max(p.name for p in csv_files) < min(p.name for p in parquet_files)  # older as CSV


def test_weekends_are_quieter(downloads: list) -> None:
    weekday = [n for _, day, n in downloads if day.weekday() < 5]
    weekend = [n for _, day, n in downloads if day.weekday() >= 5]
    ratio = statistics.mean(weekend) / statistics.mean(weekday)
    assert 0.5 < ratio < 0.7


def test_thirty_day_blocks_keep_the_real_monthly_totals(downloads: list) -> None:
    with gzip.open(REAL_DOWNLOADS, "rt", encoding="utf-8") as handle:
        real = {
            row["name"]: int(row["downloads_a_month"])
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        }
    last_block = END - timedelta(days=29)
    totals: Counter[str] = Counter()
    for package, day, n in downloads:
        if day >= last_block:
            totals[package] += n
    present = [p for p in totals if p in real]
    assert len(present) > 500
    assert all(totals[p] == real[p] for p in present)
    # Several dozen packages above a million a week, as in the most-downloaded list.
    assert 20 <= sum(real[p] > 4_300_000 for p in present) <= 120


def test_api_files_repeat_the_daily_counts(run: Run, downloads: list) -> None:
    daily = {(p, d): n for p, d, n in downloads}
    files = sorted((run.landing / "downloads").glob("api-*.json"))
    assert len(files) == 5
    for path in files:
        body = json.loads(path.read_text(encoding="utf-8"))
        assert path.name == f"api-{body['package'].replace('/', '__')}.json"
        assert len(body["downloads"]) == 7
        assert body["start"] == body["downloads"][0]["day"]
        assert body["end"] == body["downloads"][-1]["day"] == END.isoformat()
        for point in body["downloads"]:
            assert daily[(body["package"], date.fromisoformat(point["day"]))] == point["downloads"]


def test_login_events_follow_the_contract(run: Run) -> None:
    table = pq.read_table(run.landing / "logins" / "logins.parquet")
    assert table.column_names == ["occurred_at", "username", "second_factor", "outcome"]
    assert table.num_rows == run.summary.login_events > 100
    events = table.to_pylist()
    usernames = {u for (u,) in run.query("SELECT username FROM accounts")}
    now = datetime.now(UTC)
    start = datetime(2021, 12, 28, tzinfo=UTC)
    assert all(start <= e["occurred_at"] <= now and e["username"] in usernames for e in events)
    factors = Counter(e["second_factor"] for e in events)
    assert set(factors) <= {"none", "elv", "totp", "webauthn"}
    assert factors["none"] > factors["totp"] > 0 and factors["webauthn"] > 0
    outcomes = Counter(e["outcome"] for e in events)
    assert set(outcomes) <= {"success", "failed", "abandoned"}
    assert outcomes["success"] > 0.85 * len(events) and outcomes["failed"] > 0


# --- the registry ----------------------------------------------------------------------


def test_summary_matches_the_registry(run: Run) -> None:
    counts = _counts(run)
    s = run.summary
    assert (s.accounts, s.web_sessions, s.tokens, s.orgs) == (
        counts["accounts"],
        counts["web_sessions"],
        counts["tokens"],
        counts["orgs"],
    )
    assert s.packages == 1000 and s.accounts == 700
    assert all(counts[t] > 0 for t in REGISTRY_TABLES)
    # Every file in the landing folder but the mark saying a sample wrote it.
    written = sorted(p for p in run.landing.rglob("*") if p.is_file())
    assert written == sorted([*s.landing_files, run.landing / SAMPLE_MARK])


def test_two_factor_share_and_kinds(run: Run) -> None:
    (share,) = run.query(
        "SELECT avg(id IN (SELECT account_id FROM tfa_factors WHERE removed_at IS NULL)) "
        "FROM accounts"
    )[0]
    assert 0.10 <= share <= 0.15
    assert run.summary.accounts_with_2fa == round(share * run.summary.accounts)
    kinds = dict(
        run.query("SELECT kind, count(*) FROM tfa_factors WHERE removed_at IS NULL GROUP BY kind")
    )
    assert kinds["totp"] > kinds["webauthn"] > 0
    (gave_up,) = run.query(
        "SELECT count(DISTINCT account_id) FROM tfa_factors WHERE account_id NOT IN "
        "(SELECT account_id FROM tfa_factors WHERE removed_at IS NULL)"
    )[0]
    assert gave_up > 0
    # Nothing has been rolled out yet.
    assert run.query(
        "SELECT count(*) FROM accounts WHERE elv_enrolled_at IS NOT NULL "
        "OR tfa_required_at IS NOT NULL"
    ) == [(0,)]


def test_accounts_look_real(run: Run) -> None:
    rows = run.query("SELECT username, email, email_verified, last_login_at FROM accounts")
    assert len({u for u, *_ in rows}) == len(rows)
    assert all(
        u == u.lower() and e.split("@")[1] in {"example.com", "example.org", "example.net"}
        for u, e, *_ in rows
    )
    assert 0.88 < statistics.mean(v for _, _, v, _ in rows) < 0.98
    assert any(last is None for *_, last in rows)
    (recent,) = run.query("SELECT avg(last_login_at >= '2021-11-02') FROM accounts")[0]
    assert 0.35 < recent < 0.65
    assert run.query("SELECT count(*) FROM accounts WHERE last_login_at < created_at") == [(0,)]


def test_every_org_has_an_owner_and_teams(run: Run, manifests: list[dict]) -> None:
    assert run.query(
        "SELECT count(*) FROM orgs WHERE id NOT IN (SELECT org_id FROM org_members "
        "WHERE role = 'owner' AND removed_at IS NULL)"
    ) == [(0,)]
    scopes = {m["name"].split("/")[0][1:] for m in manifests if m["name"].startswith("@")}
    assert {n for (n,) in run.query("SELECT name FROM orgs")} == scopes
    maintainers = {u for m in manifests for u in m["maintainers"]}
    members = {
        u
        for (u,) in run.query(
            "SELECT username FROM accounts JOIN org_members ON account_id = accounts.id"
        )
    }
    assert members - maintainers  # some members maintain nothing
    teams = dict(run.query("SELECT name, count(*) FROM teams GROUP BY name"))
    assert teams == {"developers": len(scopes), "publishers": len(scopes)}
    assert run.query("SELECT DISTINCT permission FROM team_packages ORDER BY 1") == [
        ("read",),
        ("write",),
    ]


def test_tokens_and_sessions(run: Run) -> None:
    kinds = dict(run.query("SELECT kind, count(*) FROM tokens GROUP BY kind"))
    assert set(kinds) == {"automation", "publish", "read_only"}
    assert run.query(
        "SELECT count(*) FROM tokens WHERE (name IS NULL) != (created_at < '2021-01-01')"
    ) == [(0,)]
    assert run.query("SELECT count(*) FROM tokens WHERE name = 'github-actions'")[0][0] > 0
    (live, total) = run.query("SELECT sum(revoked_at IS NULL), count(*) FROM web_sessions")[0]
    assert 0.7 * total < live < total


def test_orm_reads_the_rows_and_gets_fresh_ids(run: Run, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with closing(sqlite3.connect(run.db)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    engine = make_engine(f"sqlite:///{copy}")
    cutoff = datetime(2020, 1, 1)
    with session_scope(engine) as session:
        # Bound datetimes compare right only if the bulk load used SQLAlchemy's format.
        older = session.scalar(select(func.count()).where(Account.created_at < cutoff))
        everyone = session.scalars(select(Account)).all()
        assert older == sum(a.created_at < cutoff for a in everyone)
        assert all(isinstance(a.email_verified, bool) for a in everyone)
        account = Account(
            username="new-person", email="new@example.com", created_at=datetime(2022, 1, 1)
        )
        session.add(account)
        session.flush()
        assert account.id == len(everyone) + 1
    engine.dispose()


def test_insert_arrow_writes_what_the_orm_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bulk.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()  # no pooled sqlite3 connection open while ADBC writes (see bulk.py)
    rows = pa.table(
        {
            "id": pa.array([10, 11], pa.int64()),
            "username": ["ada", "grace"],
            "email": ["ada@example.com", "grace@example.org"],
            "email_verified": [True, False],
            "created_at": pa.array(
                [datetime(2021, 3, 4, 5, 6, 7), datetime(2020, 1, 1)], pa.timestamp("us")
            ),
            "last_login_at": pa.array([None, datetime(2022, 1, 2)], pa.timestamp("us")),
            "elv_enrolled_at": pa.nulls(2, pa.timestamp("us")),
            "tfa_required_at": pa.nulls(2, pa.timestamp("us")),
        }
    )
    assert bulk.insert_arrow(url, "accounts", rows) == 2
    bulk.reset_id_sequences(url, ["accounts"])  # nothing to do on SQLite, and harmless
    with session_scope(engine) as session:
        session.add(
            Account(username="linus", email="l@example.net", created_at=datetime(2022, 1, 1))
        )
    with closing(sqlite3.connect(tmp_path / "bulk.db")) as connection:
        stored = connection.execute(
            "SELECT id, created_at, email_verified FROM accounts ORDER BY id"
        ).fetchall()
    engine.dispose()
    # Bulk rows and ORM rows look alike, so SQL comparisons between them hold.
    assert stored == [
        (10, "2021-03-04 05:06:07.000000", 1),
        (11, "2020-01-01 00:00:00.000000", 0),
        (12, "2022-01-01 00:00:00.000000", 0),
    ]


# --- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway database on the test server, so other tests' tables are left alone."""
    with fresh_postgres_database("rollout_sample") as url:
        yield url


@pytest.mark.postgres
def test_postgres_gets_the_same_rows_and_fresh_ids(
    run: Run, postgres_url: str, tmp_path: Path
) -> None:
    summary = generate_sample(
        "tiny", SEED, registry=Registry(postgres_url), landing_dir=tmp_path / "landing"
    )
    assert summary.dependency_edges == run.summary.dependency_edges
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            counts = {
                t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in REGISTRY_TABLES
            }
            first = connection.execute(
                text("SELECT username, created_at, email_verified FROM accounts WHERE id = 1")
            ).one()
        assert counts == _counts(run)
        expected = run.query(
            "SELECT username, created_at, email_verified FROM accounts WHERE id = 1"
        )[0]
        assert first.username == expected[0]
        assert first.created_at == datetime.fromisoformat(expected[1])
        assert first.email_verified is bool(expected[2])
        with session_scope(engine) as session:
            account = Account(
                username="new-person", email="new@example.com", created_at=datetime(2022, 1, 1)
            )
            session.add(account)
            session.flush()
            assert account.id == counts["accounts"] + 1
    finally:
        engine.dispose()
    # Replace works on PostgreSQL too (the ledger trigger is a function there).
    again = generate_sample(
        "tiny",
        SEED,
        registry=Registry(postgres_url),
        landing_dir=tmp_path / "landing",
        replace=True,
        confirm=make_url(postgres_url).database,
    )
    assert again.accounts == summary.accounts


# --- landing files are never seen half written ------------------------------------------


def test_a_landing_file_cut_short_is_never_left_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sample stopped (or failing) while it writes a day's file leaves the days before
    whole and no part of that one where `rollout ingest` would take it as complete, and
    a file being written is hidden from an ingest running meanwhile."""
    import pyarrow.csv as pacsv

    from rollout.demo import sample
    from rollout.warehouse import landing

    real_write = pacsv.write_csv
    seen_while_writing: list[list[str]] = []

    def cut_on_the_third(table: pa.Table, path: Path) -> None:
        seen_while_writing.append([f.path.name for f in landing.discover([tmp_path])])
        if len(seen_while_writing) == 3:
            Path(path).write_text("package,day,downloads\nleft-pad,2022-01-03,1")
            raise KeyboardInterrupt  # Ctrl-C half way through the file
        real_write(table, path)

    monkeypatch.setattr(sample.pacsv, "write_csv", cut_on_the_third)
    days = [date(2022, 1, 1) + timedelta(days=n) for n in range(6)]  # 3 CSV, 3 Parquet
    counts = [[5, 0], [6, 1], [7, 2], [8, 3], [9, 4], [10, 5]]
    with pytest.raises(KeyboardInterrupt):
        sample.write_downloads(
            tmp_path / "downloads",
            pa.array(["left-pad", "is-odd"]),
            days,
            np.array(counts),
            mixed=True,
            progress=lambda done: None,
        )
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == [
        "downloads-2022-01-01.csv",
        "downloads-2022-01-02.csv",
    ]
    # While each file was being written, an ingest found only the whole ones.
    assert seen_while_writing == [
        [],
        ["downloads-2022-01-01.csv"],
        ["downloads-2022-01-01.csv", "downloads-2022-01-02.csv"],
    ]


@contextmanager
def _stopped_before_the_publishes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A `rollout sample` run inside stops (Ctrl-C) before its last landing file, the
    publishes, after the registry and the other landing files were written."""
    from rollout.demo import sample

    real_write = sample._write_parquet

    def stopped_at_the_publishes(table: pa.Table, path: Path) -> None:
        if Path(path).parent.name == "publishes":
            raise KeyboardInterrupt  # Ctrl-C before the last landing file
        real_write(table, path)

    with monkeypatch.context() as patched:
        patched.setattr(sample, "_write_parquet", stopped_at_the_publishes)
        yield


def test_a_sample_stopped_part_way_says_so_when_run_again(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after the registry was written but before its last landing file, a
    sample run leaves a registry that looks whole: the next `rollout sample` says the
    last run did not finish (an ingest would load only part of it), and how to write it
    whole; once replaced, it no longer says so."""

    def sample_run(*flags: str) -> Any:
        return _rollout("sample", "--scale", "tiny", "--seed", "3", *flags)

    with _stopped_before_the_publishes(monkeypatch):
        assert sample_run().exit_code != 0
    assert not (rollout_home / "landing" / "publishes" / "publishes.parquet").exists()

    preview = sample_run("--format", "json")
    assert preview.exit_code == 0
    assert json.loads(preview.stdout)["complete"] is False
    said = _one_line(preview.stderr)
    assert "holds an unfinished sample registry" in said
    assert "an ingest would load only part of the sample" in said
    assert "--replace --confirm registry.db" in said

    assert sample_run("--replace", "--confirm", "registry.db").exit_code == 0
    again = sample_run("--format", "json")
    assert json.loads(again.stdout)["complete"] is True
    assert "unfinished" not in again.stderr
    assert "holds a sample registry" in _one_line(again.stderr)


def test_the_demo_is_never_played_on_a_sample_stopped_part_way(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `rollout sample` stopped before its last landing file leaves a whole registry
    and only part of its landing files: `rollout demo` rewound that registry, then
    ingested and enforced over part of the sample (no publishes here), as if whole.
    Refused (exit 3) before anything is changed, saying how to write it whole; once
    replaced, the demo is played."""
    with _stopped_before_the_publishes(monkeypatch):
        assert _rollout(*SAMPLE).exit_code != 0
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    before = (_landing_bytes(rollout_home / "landing"), _state(url))
    refused = _rollout(*DEMO)
    assert refused.exit_code == 3, refused.output
    said = _one_line(refused.stderr)
    assert "holds an unfinished sample registry" in said
    assert "Nothing was changed" in said
    # The command that wrote it, to write the same sample whole.
    assert "Write the sample whole first: rollout sample --scale tiny --seed 7 " in said
    assert "--days 10 --replace --confirm registry.db" in said
    assert (_landing_bytes(rollout_home / "landing"), _state(url)) == before
    assert not (rollout_home / "warehouse.duckdb").exists()

    assert _rollout(*REPLACE).exit_code == 0
    played = _rollout(*DEMO)
    assert played.exit_code == 0, played.output


def test_the_demo_refuses_at_once_a_sample_whose_downloads_stop_before_a_cohort_day(
    rollout_home: Path,
) -> None:
    """A plain `rollout sample` ends its download history on 2022-01-31; the plan builds
    cohort high-impact on 2022-03-14. The demo computed no metrics past the data, so
    that cohort was never built, and the story stopped on its day, weeks in, with "has
    never been built": refused (exit 3) before anything is changed, naming the cohort
    day and the command that writes a sample fitted to the plan; with it, played."""
    assert _rollout(*SAMPLE).exit_code == 0
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    before = (_landing_bytes(rollout_home / "landing"), _state(url))
    calendar = ("demo", "--start", "2022-03-13", "--end", "2022-03-14")
    refused = _rollout(*calendar)
    assert refused.exit_code == 3, refused.output
    said = _one_line(refused.stderr)
    assert "its download history ends on 2022-01-31" in said
    assert "cohort high-impact cannot be built on its day, 2022-03-14" in said
    assert "Nothing was changed" in said
    fitted = "rollout sample --scale tiny --seed 7 --for-plan --replace --confirm registry.db"
    assert said.endswith(fitted)
    assert (_landing_bytes(rollout_home / "landing"), _state(url)) == before
    assert not (rollout_home / "warehouse.duckdb").exists()

    assert _rollout(*fitted.split()[1:]).exit_code == 0
    played = _rollout(*calendar)
    assert played.exit_code == 0, played.output
    assert "high-impact 70 accounts" in played.stderr


def test_the_demo_refuses_a_start_after_a_cohort_day_whose_phase_it_would_play(
    rollout_home: Path,
) -> None:
    """Cohort high-impact is fixed on 2022-03-14; its phase mails from 2022-03-15 and
    enforces on 2022-05-03. A story starting on 2022-03-20 never builds it (the story
    builds a cohort on its day), so its reminders went to no one, silently, and the
    story stopped weeks in on its enforcement day ("has never been built"): refused at
    once (exit 2 on --start), naming the cohort, its day and the --start that works,
    nothing changed. Once the registry holds that cohort's build (a story that played
    its day), the later calendar plays."""
    fitted = ("sample", "--scale", "tiny", "--seed", "7", "--for-plan")
    assert _rollout(*fitted).exit_code == 0
    url = f"sqlite:///{rollout_home / 'registry.db'}"
    before = (_landing_bytes(rollout_home / "landing"), _state(url))
    later = ("demo", "--start", "2022-03-20", "--end", "2022-04-03")
    refused = _rollout(*later)
    assert refused.exit_code == 2, refused.output
    said = _one_line(refused.stderr)
    assert "--start 2022-03-20 is after 2022-03-14, the day cohort high-impact" in said
    assert "plays phase high-impact reminders (30 days before) on 2022-04-03" in said
    assert "Nothing was changed" in said
    assert "Give --start 2022-03-14 or earlier" in said
    assert said.endswith("or one after 2022-05-03")
    assert (_landing_bytes(rollout_home / "landing"), _state(url)) == before
    assert not (rollout_home / "warehouse.duckdb").exists()

    its_day = _rollout("demo", "--start", "2022-03-14", "--end", "2022-03-14")
    assert its_day.exit_code == 0, its_day.output
    assert "high-impact 70 accounts" in its_day.stderr
    played = _rollout(*later)
    assert played.exit_code == 0, played.output
    assert "reminders high-impact 30d: " in played.stderr


@pytest.mark.parametrize("days", [800_000, 30_000])
def test_a_history_starting_before_the_registry_is_refused_before_anything_is_made(
    tmp_path: Path, days: int
) -> None:
    """800,000 days overflowed the calendar with the registry half made; 30,000 wrote
    download days before 1970."""
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    with pytest.raises(BadInput, match=r"before 2010-01-01, when the registry starts: at most"):
        generate_sample(
            "tiny", SEED, registry=registry, landing_dir=tmp_path / "landing", days=days
        )
    assert not (tmp_path / "landing").exists()
    assert not (tmp_path / "registry.db").exists() or not _has_accounts(tmp_path / "registry.db")


def _has_accounts(database: Path) -> bool:
    with closing(sqlite3.connect(database)) as connection:
        try:
            return bool(connection.execute("select count(*) from accounts").fetchone()[0])
        except sqlite3.OperationalError:  # no tables: nothing was made
            return False

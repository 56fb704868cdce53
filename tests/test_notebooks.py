"""The analysts' notebooks (notebooks/*.ipynb) run top to bottom against the tiny
demo's warehouse, under nbmake in a pytest subprocess, and are committed without
outputs. Every cell runs: the charts too (matplotlib, drawn off screen with Agg), and
the checks, cells that assert what a notebook computes (against the plan, the registry
extract and the login events, and that each chart shows its table). A warehouse with one
wrong fact makes each notebook fail. Their first cell finds the warehouse the way the
pipeline does, and says how to create it when there is none."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import nbformat
import pytest

from rollout.core.config import load_settings
from rollout.core.plan import Plan
from rollout.phases.brownouts import schedule
from rollout.registry import Registry
from rollout.report.adoption import registry_inputs
from rollout.report.reporting import report_from_registry
from tests.support.stories import play_fitted_story
from tests.support.warehouse_holder import warehouse_held

from .conftest import tiny_story

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = {"cohort_explorer.ipynb", "adoption_trends.ipynb", "brownout_impact.ipynb"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the kernel colours its tracebacks


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo, the reference plan played start to end: a SQLite registry, the
    landing files and the warehouse with its adoption marts, under one ROLLOUT_HOME."""
    home = tmp_path_factory.mktemp("notebooks") / "home"
    settings = load_settings({"ROLLOUT_HOME": str(home)})
    settings.ensure_home()
    story = tiny_story(settings)
    with story.runtime:
        story.run()
    return home


def notebook_env(home: Path, scratch: Path) -> dict[str, str]:
    """The environment the notebooks run in: the demo's home, and Jupyter's and
    IPython's state in temp dirs. Nothing of the outer pytest or rollout settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ROLLOUT_", "PYTEST_", "JUPYTER_", "IPYTHON"))
    }
    for name in ("ipython", "jupyter-data", "jupyter-runtime", "jupyter-config", "mpl"):
        (scratch / name).mkdir(parents=True, exist_ok=True)
    env.update(
        ROLLOUT_HOME=str(home),
        ROLLOUT_WAREHOUSE=str(home / "warehouse.duckdb"),
        IPYTHONDIR=str(scratch / "ipython"),
        JUPYTER_DATA_DIR=str(scratch / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(scratch / "jupyter-runtime"),
        JUPYTER_CONFIG_DIR=str(scratch / "jupyter-config"),
        MPLCONFIGDIR=str(scratch / "mpl"),
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_nbmake(notebooks: list[Path], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``notebooks`` under nbmake in a pytest subprocess: its exit code, its stdout,
    and everything it printed (for assertion messages)."""
    # Serially (no xdist), no cache written into the repository, no addopts from outside.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbmake",
        "--nbmake-timeout=300",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-q",
        *map(str, notebooks),
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = ANSI.sub("", f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return result.returncode, result.stdout, output


@pytest.mark.slow
def test_every_notebook_runs_top_to_bottom_on_the_demo(demo_home: Path, tmp_path: Path) -> None:
    notebooks = notebook_paths()
    assert notebooks, f"no notebooks in {NOTEBOOKS}"
    returncode, stdout, output = run_nbmake(notebooks, notebook_env(demo_home, tmp_path))
    assert returncode == 0, output
    assert f"{len(notebooks)} passed" in stdout, output


# One wrong fact per notebook, written into a copy of the demo's warehouse, and what the
# check that catches it says.
WRONG_FACTS = {
    "adoption_trends.ipynb": (
        # One more account with 2FA (TOTP) on the last day: the row still adds up.
        "update adoption_daily set with_2fa = with_2fa + 1, totp = totp + 1, "
        "share = (with_2fa + 1) / accounts "
        "where population = 'all' and day = (select max(day) from adoption_daily)",
        r"adoption_daily on \S+ disagrees with the registry",
    ),
    "brownout_impact.ipynb": (
        # Five more logins during the first brown-out than the login events hold.
        "update brownout_impact set logins = logins + 5 where period = 'brownout' "
        "and starts_at = (select min(starts_at) from brownout_impact where period = 'brownout')",
        r"brownout_impact has logins \d+, stg_logins \d+",
    ),
    "cohort_explorer.ipynb": (
        # An account missing from every cohort build it is in.
        "delete from cohort_account_snapshots "
        "where account_id = (select min(account_id) from cohort_accounts)",
        r"cohort sizes disagree with the registry's memberships",
    ),
}


@pytest.mark.slow
def test_each_notebook_fails_on_a_wrong_fact(demo_home: Path, tmp_path: Path) -> None:
    # One test, not one per notebook: under xdist each would build its own demo.
    assert set(WRONG_FACTS) == EXPECTED
    for notebook, (wrong_fact, caught) in WRONG_FACTS.items():
        warehouse = tmp_path / notebook / "warehouse.duckdb"
        warehouse.parent.mkdir()
        shutil.copy(demo_home / "warehouse.duckdb", warehouse)
        con = duckdb.connect(str(warehouse))
        try:
            changed = con.execute(wrong_fact).fetchone()[0]
        finally:
            con.close()
        assert changed > 0, f"{notebook}: the wrong fact changed no row"
        env = notebook_env(demo_home, tmp_path / notebook / "scratch")
        env["ROLLOUT_WAREHOUSE"] = str(warehouse)
        returncode, stdout, output = run_nbmake([NOTEBOOKS / notebook], env)
        assert returncode != 0, f"{notebook} passed on a wrong fact:\n{output}"
        assert "1 failed" in stdout, output
        assert re.search(rf"AssertionError: .*{caught}", output), (
            f"{notebook} did not fail with /{caught}/:\n{output}"
        )


@pytest.mark.slow
def test_every_notebook_runs_on_a_copy_reported_for_an_earlier_day(
    demo_home: Path, tmp_path: Path
) -> None:
    # The analyst's runbook: a copy of the warehouse, in a home of one's own, reported
    # for a day of one's choosing. On 2022-02-16 brown-out 1 is under way (the marts
    # count up to the start of the day: none of its hours yet, nor its baseline's) and
    # phase high-impact's notice is still to come (the funnel counts no account of it),
    # though the login events and the registry hold all of them.
    home = tmp_path / "copy"
    shutil.copytree(demo_home, home)
    rollout_cli(home, "report", "--as-of", "2022-02-16")
    notebooks = notebook_paths()
    returncode, stdout, output = run_nbmake(notebooks, notebook_env(home, tmp_path / "scratch"))
    assert returncode == 0, output
    assert f"{len(notebooks)} passed" in stdout, output


def code_cells(path: Path) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_every_notebook_checks_what_it_computes_and_draws(path: Path) -> None:
    cells = code_cells(path)
    checks = [cell for cell in cells if cell.startswith("# Check:")]
    assert len(checks) >= 3, "checks are code cells that start with '# Check:'"
    assert any("import matplotlib.pyplot as plt" in cell for cell in cells)
    assert any(".canvas.draw()" in cell for cell in checks), "a check draws a chart"
    assert not any("find_spec" in cell for cell in cells), "charts are not optional"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert raw["nbformat"] == 4
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
    assert raw["cells"][0]["cell_type"] == "markdown", "start with what the notebook answers"
    for n, cell in enumerate(raw["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {n} has outputs: clear them before committing"
            assert cell["execution_count"] is None, f"cell {n} has an execution count"


def test_the_three_notebooks_exist() -> None:
    assert {p.name for p in notebook_paths()} >= EXPECTED


def first_code_cell(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(cell.source for cell in notebook.cells if cell.cell_type == "code")


def test_every_notebook_finds_the_warehouse_the_same_way() -> None:
    assert len({first_code_cell(path) for path in notebook_paths()}) == 1


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"ROLLOUT_HOME": "{tmp}/home"}, "{tmp}/home/warehouse.duckdb"),
        # Relative to the repository root, though the notebook runs in notebooks/.
        ({"ROLLOUT_HOME": "no-such-home"}, "{root}/no-such-home/warehouse.duckdb"),
        (
            {"ROLLOUT_HOME": "{tmp}/home", "ROLLOUT_WAREHOUSE": "{tmp}/elsewhere.duckdb"},
            "{tmp}/elsewhere.duckdb",
        ),
    ],
    ids=["home", "relative-home", "warehouse-first"],
)
def test_a_missing_warehouse_says_how_to_create_it(
    env: dict[str, str],
    missing: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ROLLOUT_WAREHOUSE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path, root=ROOT))
    monkeypatch.chdir(NOTEBOOKS)
    with pytest.raises(FileNotFoundError) as raised:
        exec(first_code_cell(notebook_paths()[0]), {})
    message = str(raised.value)
    assert f"No warehouse at {missing.format(tmp=tmp_path, root=ROOT)}" in message
    assert "make demo" in message


@pytest.mark.parametrize("read_only", [False, True], ids=["a-run-writes", "another-reads"])
def test_opening_the_warehouse_while_a_run_writes_it_says_what_to_do(
    read_only: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(warehouse)).close()
    monkeypatch.setenv("ROLLOUT_WAREHOUSE", str(warehouse))
    monkeypatch.chdir(NOTEBOOKS)
    cell: dict[str, object] = {}
    # Another process with the warehouse open, as a pipeline run (read_only False) or
    # another analyst's notebook (True) has it.
    with warehouse_held(warehouse, read_only=read_only) as holder:
        if read_only:  # readers share it
            exec(first_code_cell(notebook_paths()[0]), cell)
            cell["con"].close()  # type: ignore[attr-defined]
            return
        with pytest.raises(RuntimeError) as raised:
            exec(first_code_cell(notebook_paths()[0]), cell)
    message = str(raised.value)
    assert f"{warehouse} is being written by another process" in message
    assert "run this again in a few minutes" in message
    assert "rollout copy-warehouse FILE" in message and f"(PID {holder.pid})" in message


def rollout_cli(home: Path, *args: str, plan: Path | None = None) -> None:
    """``rollout ARGS`` under ``home``, as an analyst runs it (with ``plan`` as
    ROLLOUT_PLAN); fails the test with its output if it fails."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ROLLOUT_")}
    env.update(ROLLOUT_HOME=str(home), PYTHONPATH=str(ROOT))
    if plan is not None:
        env["ROLLOUT_PLAN"] = str(plan)
    result = subprocess.run(
        [sys.executable, "-m", "rollout", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"rollout {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.slow
def test_every_notebook_runs_on_a_warehouse_with_no_cohort_built_yet(tmp_path: Path) -> None:
    # A fresh warehouse: the sample ingested and the marts built before the first cohort
    # day, no brown-out scheduled yet. Empty cohort views, a chart of no cohorts.
    home = tmp_path / "home"
    rollout_cli(home, "sample", "--scale", "tiny", "--seed", "7", "--for-plan")
    rollout_cli(home, "ingest")
    rollout_cli(home, "metrics", "--as-of", "2021-12-20")
    rollout_cli(home, "report", "--as-of", "2021-12-20")
    notebooks = notebook_paths()
    returncode, stdout, output = run_nbmake(notebooks, notebook_env(home, tmp_path / "scratch"))
    assert returncode == 0, output
    assert f"{len(notebooks)} passed" in stdout, output


@pytest.mark.slow
def test_every_notebook_runs_on_a_warehouse_with_a_cohort_built_empty(tmp_path: Path) -> None:
    # The reference plan with a high-impact rule no package meets, fixed on 2022-01-10:
    # its cohort is built on its day with nobody in it (no membership, no history row, no
    # daily series). The marts are of a day before the brown-outs' heads-ups.
    plan = tmp_path / "plan.yaml"
    reference = (ROOT / "plans" / "npm-2022.yaml").read_text()
    unmet = (
        reference.replace(
            "weekly_downloads_gt: 1000000\n", "weekly_downloads_gt: 1000000000000000\n"
        )
        .replace("dependents_gte: 500\n", "dependents_gte: 1000000000\n")
        .replace("cohort_as_of: 2022-03-14\n", "cohort_as_of: 2022-01-10\n")
        .replace("notice_on: 2022-03-15\n", "notice_on: 2022-01-11\n")
    )
    assert unmet.count("2022-01-1") == reference.count("2022-01-1") + 2
    plan.write_text(unmet)
    home = tmp_path / "home"
    rollout_cli(home, "sample", "--scale", "tiny", "--seed", "7", "--for-plan", plan=plan)
    rollout_cli(home, "brownout", "schedule", "--apply", plan=plan)
    rollout_cli(home, "ingest", plan=plan)
    for day in ("2022-01-03", "2022-01-10"):
        rollout_cli(home, "metrics", "--as-of", day, plan=plan)
        rollout_cli(home, "cohorts", "build", "--as-of", day, plan=plan)
    rollout_cli(home, "report", "--as-of", "2022-01-20", plan=plan)
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        built = con.execute("select count(*) from cohort_builds where cohort = 'high-impact'")
        assert built.fetchone() == (1,)
        # Built with nobody in it (the rule above unmet), as the case is, whatever the
        # reference plan's thresholds become.
        for view in ("cohort_accounts", "cohort_packages"):
            empty = con.execute(f"select count(*) from {view} where cohort = 'high-impact'")
            assert empty.fetchone() == (0,), view
        assert con.execute("select count(*) from cohort_accounts").fetchone() == (111,)
    finally:
        con.close()
    env = notebook_env(home, tmp_path / "scratch")
    env["ROLLOUT_PLAN"] = str(plan)
    notebooks = notebook_paths()
    returncode, stdout, output = run_nbmake(notebooks, env)
    assert returncode == 0, output
    assert f"{len(notebooks)} passed" in stdout, output


def notebook_registry_tables() -> set[str]:
    """The registry.* tables the notebooks read."""
    return {
        table
        for path in notebook_paths()
        for cell in code_cells(path)
        for table in re.findall(r"\bregistry\.([a-z_]+)\b", cell)
    }


def test_the_report_refreshes_every_registry_table_the_notebooks_read() -> None:
    # The notebooks read the marts of a report with these beside them: each copy as fresh.
    read = notebook_registry_tables()
    assert {"tfa_factors", "brownout_windows"} <= read, read
    assert read <= set(registry_inputs()), sorted(read - set(registry_inputs()))


def test_a_report_shows_the_notebooks_the_brownouts_scheduled_since_the_last_extract(
    con: duckdb.DuckDBPyConnection, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    as_of = date(2022, 1, 20)
    report_from_registry(con, registry, plan, as_of, tmp_path / "reports")
    assert con.execute("select count(*) from registry.brownout_windows").fetchone() == (0,)
    schedule(registry, plan, actor="rm")  # `rollout brownout schedule --apply`
    report_from_registry(con, registry, plan, as_of, tmp_path / "reports")
    scheduled = con.execute("select name from registry.brownout_windows order by starts_at")
    assert [name for (name,) in scheduled.fetchall()] == [b.name for b in plan.brownouts]


TOKENS_PLAN = ROOT / "plans" / "npm-2025-tokens.yaml"


@pytest.fixture(scope="module")
def tokens_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """npm-2025-tokens told as a story (`make demo PLAN=plans/npm-2025-tokens.yaml`) on
    the tiny sample fitted to it: its totp-closed phase requires a security key of
    everyone. A SQLite registry, the warehouse with its marts and the report, in one home."""
    from rollout.core.plan import load_plan

    home = tmp_path_factory.mktemp("tokens") / "home"
    settings = load_settings({"ROLLOUT_HOME": str(home)})
    settings.ensure_home()
    play_fitted_story(settings, load_plan(TOKENS_PLAN))
    return home


def shown_by_tokens_story(name: str, cell: str, home: Path, tmp_path: Path) -> Any:
    """Run a copy of notebook ``name`` on the npm-2025-tokens story's ``home`` with
    ``cell`` appended (it writes what the notebook shows as JSON to $SHOWN_TO); the
    notebook must pass: what the cell wrote."""
    copy = tmp_path / name
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(cell))
    nbformat.write(notebook, copy)
    env = notebook_env(home, tmp_path / "scratch")
    env.update(ROLLOUT_PLAN=str(TOKENS_PLAN), SHOWN_TO=str(tmp_path / "shown.json"))
    returncode, _, output = run_nbmake([copy], env)
    assert returncode == 0, output
    return json.loads((tmp_path / "shown.json").read_text())


# Appended to a copy of adoption_trends: what its chart and its weekly table show.
SHOWN = """
import json

drawn = ax.get_lines()[: len(share.columns)]
chart = {line.get_label(): float(line.get_ydata()[-1]) for line in drawn}
weeks = {p: float(rows["share"].iloc[-1]) for p, rows in weekly.groupby("population")}
Path(os.environ["SHOWN_TO"]).write_text(json.dumps({"chart": chart, "weekly": weeks}))
"""


def report_shares(report_md: Path) -> dict[str, str]:
    """The share compliant of each population in the report's population table."""
    shares = {}
    for line in report_md.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[4].endswith("%") and cells[0].startswith(("All", "Cohort")):
            shares[cells[0]] = cells[4]
    return shares


@pytest.mark.slow
def test_adoption_trends_measures_a_cohort_a_phase_requires_a_key_of_as_the_report_does(
    tokens_home: Path, tmp_path: Path
) -> None:
    """npm-2025-tokens' totp-closed requires a security key of everyone: the report shows
    everyone's share compliant as the share with a key (158 of 397, 39.8%), while the
    notebook drew its share with any 2FA (48.9%) under "Share of accounts with 2FA", and
    its weekly changes of it. Both measure it by keys now, all accounts by any 2FA."""
    shown = shown_by_tokens_story("adoption_trends.ipynb", SHOWN, tokens_home, tmp_path)

    [report_md] = (tokens_home / "reports").glob("*/adoption.md")
    in_report = report_shares(report_md)
    assert set(in_report) == {"All accounts", "Cohort everyone (compliant: a security key)"}
    assert shown["chart"].keys() == {"all", "cohort:everyone (a security key)"}
    for population, label in [
        ("all", "All accounts"),
        ("cohort:everyone (a security key)", "Cohort everyone (compliant: a security key)"),
    ]:
        assert f"{shown['chart'][population]:.1%}" == in_report[label], population
    assert shown["weekly"] == {
        "all": shown["chart"]["all"],
        "cohort:everyone": shown["chart"]["cohort:everyone (a security key)"],
    }
    con = duckdb.connect(str(tokens_home / "warehouse.duckdb"), read_only=True)
    try:
        keys, anyone = con.execute(
            "select webauthn / accounts, share from adoption_daily "
            "where population = 'cohort:everyone' order by day desc limit 1"
        ).fetchone()
    finally:
        con.close()
    assert keys < anyone  # TOTP users: the two shares differ in this story
    assert shown["chart"]["cohort:everyone (a security key)"] == keys


# Appended to a copy of cohort_explorer: its sizes and who it lists as falling short.
EXPLORED = """
import json

Path(os.environ["SHOWN_TO"]).write_text(
    json.dumps(
        {
            "sizes": sizes.set_index("cohort").to_dict("index"),
            "short": short_now.set_index("username")[["short_in", "tfa_now"]].to_dict("index"),
        },
        default=str,
    )
)
"""


@pytest.mark.slow
def test_cohort_explorer_counts_a_cohort_a_phase_requires_a_key_of_compliant_with_a_key(
    tokens_home: Path, tmp_path: Path
) -> None:
    """npm-2025-tokens' totp-closed requires a security key of everyone: the explorer's
    share of everyone "now" counted any 2FA, and its "Who lacks 2FA" left out the TOTP
    users the phase finds short. It measures such a cohort as the report does: compliant
    with a security key, the rule named (`requires`), every short account listed."""
    shown = shown_by_tokens_story("cohort_explorer.ipynb", EXPLORED, tokens_home, tmp_path)

    con = duckdb.connect(str(tokens_home / "warehouse.duckdb"), read_only=True)
    try:
        methods = dict(
            con.execute(
                "select accounts.username, coalesce(max(factors.kind), 'none') "
                "from cohort_accounts as accounts "
                "left join registry.tfa_factors as factors "
                "on factors.account_id = accounts.account_id and factors.removed_at is null "
                "where accounts.cohort = 'everyone' group by accounts.username"
            ).fetchall()
        )  # 'webauthn' > 'totp' > 'none': the strongest
    finally:
        con.close()
    with_a_key = sorted(u for u, kind in methods.items() if kind == "webauthn")
    totp_only = sorted(u for u, kind in methods.items() if kind == "totp")
    assert with_a_key and totp_only  # the story has both: the measures differ

    everyone = shown["sizes"]["everyone"]
    assert everyone["requires"] == "a security key (totp-closed)"
    assert everyone["accounts"] == len(methods)
    assert everyone["with_2fa_now"] == len(with_a_key) + len(totp_only)
    assert everyone["compliant_now"] == len(with_a_key)
    assert everyone["share_compliant_now"] == round(len(with_a_key) / len(methods), 3)
    short = shown["short"]
    assert sorted(short) == sorted(u for u in methods if u not in with_a_key)
    assert {short[u]["tfa_now"] for u in totp_only} == {"totp"}
    assert {short[u]["short_in"] for u in short} == {"everyone"}

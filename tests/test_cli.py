"""The CLI end to end on small files: exit codes, stdout only for listings."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rollout import warehouse
from rollout.cli import app
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.config import load_settings
from rollout.core.controls import quoted
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.phases.orgs import Member, removal_fingerprint
from rollout.registry.engine import make_engine

from .conftest import DATA
from .factories import (
    LATE_NOTICE,
    AccountFactory,
    CohortPackageFactory,
    NotificationFactory,
    OrgFactory,
    OrgMemberFactory,
    bound_to,
    existing_account,
)
from .support.env import without_rollout_settings
from .support.previews import to_apply

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_db_upgrade_then_status(rollout_home: Path) -> None:
    assert run("db", "upgrade").exit_code == 0
    result = run("db", "status", "--format", "json")
    assert result.exit_code == 0
    status = json.loads(result.stdout)
    assert status["up_to_date"] is True
    assert (rollout_home / "registry.db").exists()


def test_db_downgrade_previews_then_takes_the_schema_back(rollout_home: Path) -> None:
    """The way back after an upgrade of the code is undone (the operator runbook)."""
    from rollout.registry import migrate

    def revision() -> str:
        return json.loads(run("db", "status", "--format", "json").stdout)["revision"]

    assert run("db", "upgrade").exit_code == 0
    newest = revision()
    preview = run("db", "downgrade", "0014")
    assert preview.exit_code == 0 and revision() == newest
    assert f"would take the registry from revision {newest} back to 0014" in preview.stderr
    # The preview as one record too, as every command printing a result gives it.
    previewed = json.loads(run("db", "downgrade", "0014", "--format", "json").stdout)
    assert previewed["from_revision"] == newest and previewed["to_revision"] == "0014"
    assert (
        previewed["revisions_undone"][0] == newest and "0014" not in previewed["revisions_undone"]
    )
    assert previewed["applied"] is False and revision() == newest
    assert all(isinstance(n, int) for n in previewed["columns_dropped"].values())
    done = run("db", "downgrade", "0014", "--apply", "--from", newest, "--format", "json")
    assert done.exit_code == 0 and revision() == "0014", done.stderr
    assert json.loads(done.stdout) == {
        "from_revision": newest,
        "to_revision": "0014",
        "applied": True,
    }
    unknown = run("db", "downgrade", "0099", "--apply", "--from", "0014")
    assert (
        unknown.exit_code == 2 and "'0099' is not one of this code's migrations" in unknown.stderr
    )
    later = run("db", "downgrade", newest, "--apply", "--from", "0014")
    assert later.exit_code == 2 and "is not before it" in later.stderr
    assert revision() == "0014" and not migrate.is_before(newest, "0014")
    assert run("db", "upgrade").exit_code == 0 and revision() == newest


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


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (
            ("cohorts", "simulate", "--top", "5"),
            "no package metrics computed yet: run `rollout metrics --as-of YYYY-MM-DD` first",
        ),
        (
            ("plan", "simulate"),
            "no package metrics computed yet: run `rollout metrics --as-of YYYY-MM-DD` first",
        ),
        (
            ("cohorts", "show", "top-100"),
            "cohort top-100 was never built: run `rollout cohorts build --as-of YYYY-MM-DD` first",
        ),
    ],
)
def test_a_command_defaulting_to_the_latest_day_says_what_computes_the_first(
    rollout_home: Path, command: tuple[str, ...], said: str
) -> None:
    """With nothing computed yet they said "nothing computed yet (package_metrics_daily is
    empty): pass --as-of": a warehouse table's name, and advice that only led to another
    refusal, as no day has metrics yet. Exit 2, as for a day not computed."""
    run("db", "upgrade")
    run("ingest", str(DATA / "good"))

    result = run(*command)

    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip() == f"error: {said}"


def _reference_plan_with(tmp_path: Path, old: str, new: str) -> Path:
    """The reference plan with ``old`` replaced by ``new``, as a file of the test's own."""
    edited = tmp_path / "plan.yaml"
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    assert old in text
    edited.write_text(text.replace(old, new))
    return edited


def test_plan_check_names_the_line_and_exits_2(rollout_home: Path, tmp_path: Path) -> None:
    good = run("plan", "check", str(ROOT / "plans" / "npm-2022.yaml"))
    assert good.exit_code == 0 and "is valid" in good.stderr
    broken = _reference_plan_with(tmp_path, "    cohort: high-impact", "    cohort: nobody")
    result = run("plan", "check", str(broken))
    assert result.exit_code == 2
    assert f"{broken}:" in result.stderr and "unknown cohort 'nobody'" in result.stderr


def test_a_line_break_in_a_file_s_name_cannot_fake_a_line_of_a_message(
    rollout_home: Path, tmp_path: Path
) -> None:
    """A status line names the file as data: its line break is shown (\\x0a), as an
    error's is, never a line of its own saying something the command did not."""
    named = tmp_path / "mine\nerror: the registry was wiped.yaml"
    shutil.copyfile(ROOT / "plans" / "npm-2022.yaml", named)
    result = run("plan", "check", str(named))
    assert result.exit_code == 0, result.stderr
    assert f"{tmp_path}/mine\\x0aerror: the registry was wiped.yaml: plan npm-2022 is valid" in (
        result.stderr
    )
    assert not any(line.startswith("error:") for line in result.stderr.splitlines())


def test_plan_check_says_when_it_could_not_check_against_the_registry(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its checks of what the registry has done (renamed phases, orgs, brown-out windows)
    were skipped without a word when there was no registry or it was away."""
    plan = str(ROOT / "plans" / "npm-2022.yaml")
    none = run("plan", "check", plan)
    assert none.exit_code == 0 and "is valid" in none.stderr
    assert "warning: not checked against the registry" in none.stderr
    assert "there is none at ROLLOUT_REGISTRY_URL" in none.stderr
    assert run("db", "upgrade").exit_code == 0
    there = run("plan", "check", plan)
    assert there.exit_code == 0 and "not checked against the registry" not in there.stderr
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", "postgresql+psycopg://u:s3cret@127.0.0.1:1/db")
    away = run("plan", "check", plan)
    assert away.exit_code == 0 and "warning: not checked against the registry" in away.stderr
    assert "s3cret" not in away.stderr


def test_plan_check_counts_in_words_that_fit_the_count(rollout_home: Path) -> None:
    checked = run("plan", "check", str(ROOT / "plans" / "github-2023.yaml"))
    assert checked.exit_code == 0, checked.stderr
    assert "plan github-2023 is valid: 1 cohort, 1 phase, 0 brown-outs" in checked.stderr


def test_plan_check_warns_of_a_cohort_no_phase_names_and_passes(
    rollout_home: Path, tmp_path: Path
) -> None:
    unused = _reference_plan_with(tmp_path, "    cohort: high-impact", "    cohort: top-100")
    result = run("plan", "check", str(unused))
    assert result.exit_code == 0
    assert "warning: cohort high-impact is named by no phase" in result.stderr
    assert "is valid" in result.stderr


def test_metrics_and_cohorts_from_the_command_line(rollout_home: Path) -> None:
    assert run("sample", "--scale", "tiny", "--seed", "3").exit_code == 0
    assert run("ingest").exit_code == 0
    computed = run("metrics", "--as-of", "2022-02-01", "--format", "json")
    assert computed.exit_code == 0, computed.stderr
    assert json.loads(computed.stdout)["weekly_window_complete"] is True
    built = run("cohorts", "build", "--as-of", "2022-02-01", "--format", "json")
    assert built.exit_code == 0, built.stderr
    sizes = {row["cohort"]: row for row in json.loads(built.stdout)}
    assert sizes["top-100"]["packages"] == 100
    # high-impact is fixed from its phase's day (2022-03-14): left out, and said so.
    assert set(sizes) == {"top-100"}
    assert "not built before their day: high-impact (fixed from 2022-03-14 by phase " in (
        " ".join(built.stderr.split())
    )
    named = run("cohorts", "build", "--as-of", "2022-02-01", "--cohort", "high-impact")
    assert named.exit_code == 2 and "cohort high-impact is fixed from 2022-03-14" in named.stderr
    shown = run("cohorts", "show", "top-100", "--without-2fa", "--format", "json")
    accounts = json.loads(shown.stdout)
    assert len(accounts) == sizes["top-100"]["without_2fa"]
    assert {a["tfa_status"] for a in accounts} == {"none"}
    assert all(isinstance(a["packages"], list) and a["packages"] for a in accounts)
    simulated = run("cohorts", "simulate", "--top", "100", "--format", "json")
    assert json.loads(simulated.stdout)["accounts"] == sizes["top-100"]["accounts"]
    assert run("cohorts", "show", "nobody").exit_code == 2
    assert run("cohorts", "simulate").exit_code == 2
    # A day after today has no downloads yet: refused, and nothing stands as its day.
    for command in (["metrics"], ["cohorts", "build"]):
        ahead = run(*command, "--as-of", "2099-01-01")
        assert ahead.exit_code == 2
        assert "--as-of: 2099-01-01 is after today" in ahead.stderr
    simulated = run("cohorts", "simulate", "--top", "100", "--format", "json")
    assert json.loads(simulated.stdout)["as_of"] == "2022-02-01"


def test_metrics_gives_the_missing_days_as_a_list_scripts_read(rollout_home: Path) -> None:
    """JSON: a list of ISO dates, empty for none (it was "none", or the days in words);
    CSV: one cell, a JSON array, as every command gives a list there."""
    assert run("sample", "--scale", "tiny", "--seed", "3").exit_code == 0
    assert run("ingest").exit_code == 0  # downloads up to 2022-01-31
    complete = run("metrics", "--as-of", "2022-02-01", "--format", "json")
    assert json.loads(complete.stdout)["missing_days"] == []
    gaps = run("metrics", "--as-of", "2022-02-03", "--format", "json")
    assert gaps.exit_code == 0, gaps.stderr
    assert json.loads(gaps.stdout)["missing_days"] == ["2022-02-01", "2022-02-02"]
    assert "download data missing for 2022-02-01, 2022-02-02" in gaps.stderr
    cells = next(
        csv.DictReader(
            io.StringIO(run("metrics", "--as-of", "2022-02-03", "--format", "csv").stdout)
        )
    )
    assert json.loads(cells["missing_days"]) == ["2022-02-01", "2022-02-02"]
    cells = next(
        csv.DictReader(
            io.StringIO(run("metrics", "--as-of", "2022-02-01", "--format", "csv").stdout)
        )
    )
    assert cells["missing_days"] == "[]"


def test_metrics_of_the_next_day_equal_a_rebuild(rollout_home: Path) -> None:
    """The next day's windows are the kept ones moved; --rebuild sums them whole."""
    assert run("sample", "--scale", "tiny", "--seed", "3").exit_code == 0
    assert run("ingest").exit_code == 0
    assert run("metrics", "--as-of", "2022-01-31").exit_code == 0
    query = "select * from package_metrics_daily where as_of = '2022-02-01' order by package"
    assert run("metrics", "--as-of", "2022-02-01").exit_code == 0
    with warehouse.open_warehouse(rollout_home / "warehouse.duckdb", read_only=True) as con:
        moved = con.execute(query).fetchall()
    rebuilt = run("metrics", "--as-of", "2022-02-01", "--rebuild", "--format", "json")
    assert rebuilt.exit_code == 0, rebuilt.stderr
    with warehouse.open_warehouse(rollout_home / "warehouse.duckdb", read_only=True) as con:
        assert con.execute(query).fetchall() == moved
    assert len(moved) == json.loads(rebuilt.stdout)["packages"] > 0


def test_release_only_previews_without_apply(rollout_home: Path) -> None:
    run("sample", "--scale", "tiny", "--seed", "3")
    run("ingest")
    run("metrics", "--as-of", "2022-02-01")
    run("cohorts", "build", "--as-of", "2022-02-01")
    package = json.loads(
        run("cohorts", "show", "top-100", "--packages", "--format", "json").stdout
    )[0]["package"]
    preview = run("cohorts", "release", package, "--cohort", "top-100", "--reason", "test")
    assert preview.exit_code == 0 and "preview only" in preview.stderr
    rebuilt = run("cohorts", "build", "--as-of", "2022-02-01", "--format", "json")
    assert json.loads(rebuilt.stdout)[0]["packages"] == 100
    applied = run(
        "cohorts", "release", package, "--cohort", "top-100", "--reason", "test", "--apply"
    )
    assert applied.exit_code == 0 and f"released {package}" in applied.stderr
    rebuilt = run("cohorts", "build", "--as-of", "2022-02-01", "--format", "json")
    assert json.loads(rebuilt.stdout)[0]["packages"] == 99


def test_a_release_run_again_after_it_went_through_changes_nothing_and_succeeds(
    rollout_home: Path,
) -> None:
    """The release committed, then the terminal was lost (or the command killed before
    it printed): the same command again finds it done and says so, exit 0, with no
    second audit row and the first reason kept, as a rerun after a crash finishes the
    job. Its preview says there is nothing to release, not "add --apply"; the record
    gives the time it was released, once applied too."""
    from sqlalchemy import func, select

    from rollout.registry.models import Action

    run("db", "upgrade")
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(engine):
        CohortPackageFactory(package="left-pad")
    release = ("cohorts", "release", "left-pad", "--cohort", "top-100", "--format", "json")

    first = run(*release, "--reason", "inflated downloads", "--apply")
    assert first.exit_code == 0, first.stderr
    released_at = json.loads(first.stdout)["released_at"]
    assert released_at is not None

    again = run(*release, "--reason", "inflated downloads", "--apply")
    assert again.exit_code == 0, again.stderr
    said = " ".join(again.stderr.split())
    assert (
        f"left-pad was already released from top-100 on {released_at[:10]} by "
        "rollout (inflated downloads): nothing changed"
    ) in said
    assert json.loads(again.stdout) | {"applied": None} == json.loads(first.stdout) | {
        "applied": None
    }
    previewed = run(*release, "--reason", "x")
    assert previewed.exit_code == 0
    assert "preview only" not in previewed.stderr
    assert "already released" in " ".join(previewed.stderr.split())
    with engine.connect() as connection:
        audited = connection.scalar(
            select(func.count()).where(Action.action == "cohort_package_release")
        )
    engine.dispose()
    assert audited == 1


def test_phase_enforce_previews_then_needs_the_count_typed_back(rollout_home: Path) -> None:
    run("sample", "--scale", "tiny", "--seed", "3")
    run("ingest")
    run("metrics", "--as-of", "2022-02-01")
    run("cohorts", "build", "--as-of", "2022-02-01")
    preview = run("phase", "preview", "top-100", "--format", "json")
    targets = json.loads(preview.stdout)
    assert targets and all(t["live_sessions"] >= 0 for t in targets)
    [listed] = re.findall(rf"--apply --expect {len(targets)} --expect-list (\w+)", preview.stderr)
    assert run("phase", "enforce", "top-100", "--apply").exit_code == 2
    apply = ("phase", "enforce", "top-100", "--apply", "--expect", str(len(targets)))
    # The count alone is not the list previewed: refused before anything is read.
    count_only = run(*apply)
    assert count_only.exit_code == 2
    assert (
        "--apply needs --expect-list F (the fingerprint of the list the preview showed): "
        "run `rollout phase preview top-100`, check the list, and copy the command it prints"
    ) in " ".join(count_only.stderr.split())
    assert json.loads(run("phase", "preview", "top-100", "--format", "json").stdout) == targets
    wrong = run(*apply[:-1], str(len(targets) + 1), "--expect-list", listed)
    assert wrong.exit_code == 3 and "not the" in wrong.stderr
    stale = run(*apply, "--expect-list", "000000000000")
    assert stale.exit_code == 3 and "not the ones previewed" in stale.stderr
    done = run(*apply, "--expect-list", listed, "--format", "json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["accounts_flagged"] == len(targets)
    rollback = run("phase", "rollback", "top-100", "--format", "json")
    assert rollback.exit_code == 0 and "preview only" in rollback.stderr
    listed = json.loads(rollback.stdout)
    assert len(listed) == len(targets) and {a["outcome"] for a in listed} == {"cleared"}
    applied = run("phase", "rollback", "top-100", "--apply", "--format", "json")
    assert applied.exit_code == 0, applied.stderr
    summary = json.loads(applied.stdout)
    assert summary["accounts_cleared"] == summary["emails_withdrawn"] == len(targets)


def test_orgs_audit_and_enforce_preview(rollout_home: Path) -> None:
    import sqlite3

    run("sample", "--scale", "tiny", "--seed", "3")
    with sqlite3.connect(rollout_home / "registry.db") as connection:
        org = connection.execute(
            "select o.name from orgs o join org_members m on m.org_id = o.id "
            "group by o.name order by count(*) desc, o.name limit 1"
        ).fetchone()[0]
    audit = run("orgs", "audit", org, "--format", "json")
    assert audit.exit_code == 0, audit.stderr
    members = json.loads(audit.stdout)
    assert members and {m["tfa_status"] for m in members} <= {"none", "totp", "webauthn"}
    owners = json.loads(run("orgs", "audit", org, "--role", "owner", "--format", "json").stdout)
    assert owners and all(m["role"] == "owner" for m in owners)
    preview = run("orgs", "enforce", org, "--format", "json")
    assert preview.exit_code == 0 and "preview only" in preview.stderr
    without = [m["username"] for m in members if m["tfa_status"] == "none"]
    assert [m["username"] for m in json.loads(preview.stdout)] == without
    assert run("orgs", "enforce", org, "--confirm", org).exit_code == 2
    assert run("orgs", "audit", "no-such-org").exit_code == 2


def test_brownouts_and_elv_from_the_command_line(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("sample", "--scale", "tiny", "--seed", "3")
    preview = run("brownout", "schedule")
    assert "brownout-1 │ create │ 2022-02-16T00:00:00" in preview.stdout
    assert json.loads(run("brownout", "status", "--format", "json").stdout) == []
    assert run("brownout", "schedule", "--apply").exit_code == 0
    windows = json.loads(run("brownout", "status", "--format", "json").stdout)
    assert [(w["name"], w["state"]) for w in windows] == [
        ("brownout-1", "ended"),
        ("brownout-2", "ended"),
    ]
    ended = run("brownout", "end", "brownout-1", "--reason", "test", "--apply")
    assert ended.exit_code == 3 and "already ended" in ended.stderr
    # Times are UTC, and a person is told so: in the table's headings (CSV and JSON keep
    # the names programs read).
    table = run("brownout", "status").stdout
    assert "starts_at (UTC)" in table and "ends_at (UTC)" in table and "state (UTC)" not in table
    assert run("brownout", "status", "--format", "csv").stdout.startswith(
        "name,state,starts_at,ends_at,ended_early_at,in_plan\n"
    )
    # Whether the plan still names each window: the registry applies it either way.
    assert [w["in_plan"] for w in windows] == [True, True]
    # Only the plan's windows start: one it dropped is refused (exit 3), a typo is bad
    # input (exit 2).
    reference = (ROOT / "plans" / "npm-2022.yaml").read_text()
    start = reference.index("  - name: brownout-2")  # the last window, a blank line after
    without = rollout_home / "without-brownout-2.yaml"
    without.write_text(reference[:start] + reference[reference.index("\n\n", start) + 1 :])
    monkeypatch.setenv("ROLLOUT_PLAN", str(without))
    for extra in ((), ("--apply",)):
        dropped = run("brownout", "start", "brownout-2", "--reason", "x", *extra)
        assert dropped.exit_code == 3, dropped.stderr
        assert "brown-out 'brownout-2' is not in plan npm-2022" in _one_line(dropped.stderr)
    assert run("brownout", "start", "brownout-9", "--reason", "x").exit_code == 2
    listed = json.loads(run("brownout", "status", "--format", "json").stdout)
    assert [w["in_plan"] for w in listed] == [True, False]
    monkeypatch.delenv("ROLLOUT_PLAN")
    # The previews refuse as the apply would (the runbook said they did not look).
    for change in ("end", "start"):
        previewed = run("brownout", change, "brownout-1", "--reason", "test")
        assert previewed.exit_code == 3 and "ended" in previewed.stderr
        assert "preview only" not in previewed.stderr
    assert "preview only" in run("elv", "enroll-all").stderr
    enrolled = run("elv", "enroll-all", "--apply")
    assert enrolled.exit_code == 0 and "enrolled 700 accounts" in enrolled.stderr


def test_a_cohort_release_gives_its_preview_and_what_it_did_as_json(rollout_home: Path) -> None:
    """`cohorts release` previews (the package, since when and why it is in, how many
    accounts leave with it) and releases: with --format json, that record alone on
    stdout, as every command printing a result gives it; its sentence on stderr."""
    assert run("sample", "--scale", "tiny", "--seed", "3").exit_code == 0
    assert run("ingest").exit_code == 0
    assert run("metrics", "--as-of", "2022-02-01").exit_code == 0
    assert run("cohorts", "build", "--as-of", "2022-02-01").exit_code == 0
    packages = json.loads(run("cohorts", "show", "top-100", "--packages", "-f", "json").stdout)
    package = packages[0]["package"]
    release = ("cohorts", "release", package, "--cohort", "top-100", "--reason", "test")

    previewed = run(*release, "--format", "json")
    assert previewed.exit_code == 0, previewed.stderr
    record = json.loads(previewed.stdout)
    assert record == {
        "package": package,
        "cohort": "top-100",
        "first_qualified_on": "2022-02-01",
        "reasons": packages[0]["reasons"],
        "released_at": None,
        "accounts_leaving": record["accounts_leaving"],
        "applied": False,
    }
    assert isinstance(record["accounts_leaving"], int)
    assert f"{package}: in top-100 since 2022-02-01" in previewed.stderr
    assert "preview only" in previewed.stderr

    released = run(*release, "--apply", "--format", "json")
    assert released.exit_code == 0, released.stderr
    done = json.loads(released.stdout)
    # Applied, the record says when it was released (the preview's was before).
    assert done == {**record, "released_at": done["released_at"], "applied": True}
    assert done["released_at"] is not None
    assert f"released {package} from top-100" in released.stderr
    listed = run(*release, "--format", "csv")
    (row,) = csv.DictReader(io.StringIO(listed.stdout))
    assert row["released_at"] and row["applied"] == "False"  # released before this preview


def test_every_command_printing_a_result_gives_json_alone_on_stdout(rollout_home: Path) -> None:
    """`--format json` on the commands that took none (brown-out schedule, start and end,
    ELV for all, notify send) or printed nothing with it (a sample's preview): their
    result as JSON on stdout, their messages on stderr."""

    def json_of(*args: str) -> Any:
        result = run(*args, "--format", "json")
        assert result.exit_code == 0, (args, result.stderr)
        return json.loads(result.stdout)

    run("sample", "--scale", "tiny", "--seed", "3")
    assert json_of("sample", "--scale", "tiny", "--seed", "3") == {
        "registry": f"sqlite:///{rollout_home / 'registry.db'}",
        "name": "registry.db",
        "accounts": 700,
        "emails": 0,
        "runs": 0,
        "complete": True,
    }
    planned = json_of("brownout", "schedule")
    assert [(w["name"], w["change"], w["starts_at"]) for w in planned] == [
        ("brownout-1", "create", "2022-02-16T00:00:00"),
        ("brownout-2", "create", "2022-02-23T00:00:00"),
    ]
    assert [w["change"] for w in json_of("brownout", "schedule", "--apply")] == ["create"] * 2
    assert [w["change"] for w in json_of("brownout", "schedule")] == ["unchanged"] * 2
    moved = "brownout-1", "--reason", "test"
    with use_clock(SimulatedClock(datetime(2022, 2, 1))):
        assert json_of("brownout", "start", *moved)["state"] == "scheduled"
        started = json_of("brownout", "start", *moved, "--apply")
        assert (started["name"], started["state"]) == ("brownout-1", "active")
        assert json_of("brownout", "end", *moved)["state"] == "active"
        ended = json_of("brownout", "end", *moved, "--apply")
        assert ended["state"] == "ended early" and ended["ended_early_at"].startswith("2022-02-01")
    # Not "not_enrolled 700" beside "enrolled 700" once applied: the count is of before.
    assert json_of("elv", "enroll-all") == {
        "not_enrolled_before": 700,
        "enrolled": 0,
        "applied": False,
    }
    assert json_of("elv", "enroll-all", "--apply") == {
        "not_enrolled_before": 700,
        "enrolled": 700,
        "applied": True,
    }
    assert json_of("notify", "send") == []
    sent = json_of("notify", "send", "--apply")
    # Every count of the drain's report, to the emails another sender took over.
    assert sent == {
        "sender": "file",
        **dict.fromkeys(("sent", "failed", "skipped", "resumed", "retried"), 0),
        **dict.fromkeys(("requeued", "overtaken"), 0),
    }
    files = json_of("notify", "preview", "phase_notice")
    assert files and all(Path(f["file"]).is_file() for f in files)


def test_an_enforcement_refused_as_not_previewed_names_who_changed_since(
    rollout_home: Path,
) -> None:
    """Between the preview and the apply one listed account enabled 2FA and another
    dropped its factor: the same count, another list. The refusal (exit 3, nothing
    changed) names who left the list and who joined it since the preview approved,
    with that preview's time and file, so the release manager need not diff two CSVs;
    another count is refused naming them the same way."""
    from sqlalchemy import func, select

    from rollout.registry.models import Action, TfaFactor

    run("db", "upgrade")
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(engine):
        AccountFactory(username="alice", in_cohort="top-100", sessions=1)
        bob = AccountFactory(username="bob", in_cohort="top-100")
        # Hostile: a formula (the CSV guards it), a line break (the message keeps one line).
        carol = AccountFactory(username="=carol\nx", in_cohort="top-100", with_totp=True)
    preview = run("phase", "preview", "top-100")
    assert preview.exit_code == 0, preview.stderr
    apply = to_apply(preview.stderr)
    assert apply[apply.index("--expect") + 1] == "2"
    [csv_name] = [p.name for p in (rollout_home / "reports" / "previews").glob("*.csv")]

    with engine.begin() as connection:
        connection.execute(
            TfaFactor.__table__.insert().values(
                account_id=bob.id, kind="totp", created_at=datetime(2022, 1, 1)
            )
        )
        connection.execute(
            TfaFactor.__table__.update()
            .where(TfaFactor.account_id == carol.id)
            .values(removed_at=datetime(2022, 1, 1))
        )
    refused = run(*apply)
    assert refused.exit_code == 3, refused.stderr
    [said] = refused.stderr.splitlines()
    assert "the accounts it would change now are not the ones previewed" in said
    assert (
        f"({csv_name}): 1 account no longer listed ('bob'); 1 account newly listed ('=carol\\x0ax')"
    ) in said

    with engine.begin() as connection:
        connection.execute(
            TfaFactor.__table__.insert().values(
                account_id=carol.id, kind="totp", created_at=datetime(2022, 1, 1)
            )
        )
    fewer = run(*apply)
    assert fewer.exit_code == 3
    said = " ".join(fewer.stderr.split())
    assert "phase top-100 would change 1 account, not the 2 expected" in said
    assert "1 account no longer listed ('bob'); 0 accounts newly listed" in said
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Action)) == 0
    engine.dispose()


def test_phase_preview_says_when_the_blast_radius_refuses_it(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command the preview ends with would be refused (exit 3) over max_accounts:
    the preview says so first, as it does "Not due yet"."""
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    small = tmp_path / "small.yaml"
    small.write_text(text.replace("max_accounts: 1000", "max_accounts: 5"))
    monkeypatch.setenv("ROLLOUT_PLAN", str(small))
    _tiny_with_cohorts()
    preview = run("phase", "preview", "top-100", "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    count = len(json.loads(preview.stdout))
    assert count > 5
    said = " ".join(preview.stderr.split())
    over = f"phase top-100 would change {count} accounts, over the plan's blast-radius limit of 5"
    assert f"Over the blast radius: {over}" in said
    refused = run(*to_apply(preview.stderr))
    assert refused.exit_code == 3 and over in " ".join(refused.stderr.split())


def test_a_mistyped_cohort_or_phase_is_said_before_what_else_is_missing(
    rollout_home: Path, tmp_path: Path
) -> None:
    """A typo in a cohort or phase name is reported as the typo, even where something
    else is missing too (the day's metrics, the requests file): "no package metrics"
    sent the release manager to compute metrics for a cohort that does not exist."""
    assert run("db", "upgrade").exit_code == 0
    typo = run("cohorts", "build", "--as-of", "2022-01-05", "--cohort", "top-10")
    assert typo.exit_code == 2
    assert "no cohort 'top-10' in plan npm-2022 (cohorts: top-100, high-impact)" in typo.stderr
    # Named before its phase's day: said as such, whatever the metrics.
    early = run("cohorts", "build", "--as-of", "2022-01-01", "--cohort", "top-100")
    assert early.exit_code == 2 and "cohort top-100 is fixed from 2022-01-03" in early.stderr
    # Not named: what is missing is still said as that.
    unnamed = run("cohorts", "build", "--as-of", "2022-01-05")
    assert unnamed.exit_code == 2 and "no warehouse yet" in unnamed.stderr
    snooze = run("phase", "snooze", "top-10", "--file", str(tmp_path / "missing.csv"))
    assert snooze.exit_code == 2
    assert "no phase 'top-10' in plan npm-2022 (phases: top-100, high-impact)" in snooze.stderr


def test_brownout_schedule_previews_the_refusal_its_apply_gives(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window that cannot move (ended; or its heads-up went) makes --apply refuse the
    lot (exit 3, nothing scheduled): the preview refuses with it, as start's and end's
    previews do, instead of suggesting the --apply."""
    run("db", "upgrade")
    assert run("brownout", "schedule", "--apply").exit_code == 0  # 2022: both ended
    moved = tmp_path / "moved.yaml"
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    moved.write_text(text.replace("2022-02-16T00:00:00", "2022-02-17T00:00:00"))
    monkeypatch.setenv("ROLLOUT_PLAN", str(moved))
    refusal = "brownout-1: refused: already ended, cannot move"
    for command in (("brownout", "schedule"), ("brownout", "schedule", "--apply")):
        refused = run(*command)
        assert refused.exit_code == 3, refused.stderr
        assert f"error: {refusal}" in refused.stderr and "add --apply" not in refused.stderr


def _tiny_with_cohorts(day: str = "2022-01-03") -> None:
    run("sample", "--scale", "tiny", "--seed", "3")
    run("ingest")
    run("metrics", "--as-of", day)
    assert run("cohorts", "build", "--as-of", day, "--allow-gaps").exit_code == 0


def test_plan_show_lists_the_timeline_with_states(rollout_home: Path) -> None:
    _tiny_with_cohorts()
    run("phase", "preview", "top-100")
    shown = run("plan", "show", "--format", "json")
    assert shown.exit_code == 0, shown.stderr
    steps = {s["step"]: s for s in json.loads(shown.stdout)}
    assert steps["phase top-100 enforced"]["state"] == "previewed"
    assert steps["cohort top-100 fixed for phase top-100"]["state"] == "applied"
    assert steps["phase high-impact enforced"]["state"] == "pending"
    assert [s["on"] for s in steps.values()] == sorted(s["on"] for s in steps.values())
    assert run("plan", "show", "--at", "yesterday").exit_code == 2


def test_plan_show_warns_of_a_preview_record_it_cannot_read_and_shows_the_rest(
    rollout_home: Path,
) -> None:
    """A record edited into a list, or with a number for its time: a TypeError traceback.
    Now a warning naming the file and what is wrong, the real preview still shown."""
    _tiny_with_cohorts()
    run("phase", "preview", "top-100")
    folder = rollout_home / "reports" / "previews"
    [record] = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    (folder / "edited.json").write_text("[]")
    (folder / "retimed.json").write_text(json.dumps({**record, "at": 20220201}))
    shown = run("plan", "show", "--format", "json")
    assert shown.exit_code == 0, shown.stderr
    steps = {s["step"]: s for s in json.loads(shown.stdout)}
    assert steps["phase top-100 enforced"]["state"] == "previewed"
    said = " ".join(shown.stderr.split())
    assert f"warning: {folder / 'edited.json'}: not read as a preview record: a list" in said
    assert f"{folder / 'retimed.json'}: not read as a preview record: 'at' is a number" in said
    assert "Traceback" not in shown.stderr


def test_notify_queues_previews_first_then_sends_to_the_file_outbox(rollout_home: Path) -> None:
    _tiny_with_cohorts()
    # Queued years late (this test runs after 2022): sent now, the notices would give a
    # deadline long past. Held back, saying so and how to queue them anyway.
    years_late = run("notify", "queue", "--as-of", "2022-01-04", "--format", "json")
    [held] = json.loads(years_late.stdout)
    assert held["new"] == 0 and held["held_back"] == held["audience"] > 0
    said = " ".join(years_late.stderr.split())
    assert "held back: notices top-100: its last day was 2022-01-31, before today" in said
    assert "--late queues them anyway" in said
    with use_clock(SimulatedClock(datetime(2022, 1, 4, 9))):
        preview = run("notify", "queue", "--as-of", "2022-01-04", "--format", "json")
        assert preview.exit_code == 0 and "preview only" in preview.stderr
        assert "held back" not in preview.stderr and "warning:" not in preview.stderr
        [due] = json.loads(preview.stdout)
        assert due["email"] == "phase_notice" and due["new"] == due["audience"] > 0
        assert due["held_back"] == 0
        assert json.loads(run("notify", "status", "--format", "json").stdout) == []
        queued = run("notify", "queue", "--as-of", "2022-01-04", "--apply", "--format", "json")
        assert json.loads(queued.stdout)[0]["new"] == due["new"]
        counted = run("notify", "send")
        assert counted.exit_code == 0 and "preview only" in counted.stderr
        sent = run("notify", "send", "--apply")
        assert sent.exit_code == 0, sent.stderr
    status = json.loads(run("notify", "status", "--format", "json").stdout)
    by_state = {(r["state"], r["reason"]): r["count"] for r in status}
    assert sum(by_state.values()) == due["new"]
    # What the preview said would be skipped, and the apply recorded, is what was.
    skipped = sum(n for (state, _), n in by_state.items() if state == "skipped")
    assert skipped == due["of_which_skipped"] == json.loads(queued.stdout)[0]["of_which_skipped"]
    emls = list((rollout_home / "outbox").glob("*.eml"))
    assert len(emls) == by_state[("sent", "")]
    again = run("notify", "queue", "--as-of", "2022-01-04", "--apply", "--format", "json")
    assert json.loads(again.stdout)[0]["new"] == 0


def test_notify_preview_renders_every_email(rollout_home: Path) -> None:
    run("db", "upgrade")
    result = run("notify", "preview")
    assert result.exit_code == 0, result.stderr
    files = {Path(line).name for line in result.stdout.split()}
    assert "phase_notice-compliant.html" in files and "reminder-non-compliant.txt" in files
    assert "reminder-compliant.txt" not in files  # a compliant account gets no reminder
    assert run("notify", "preview", "no_such_email").exit_code == 2


def test_notify_preview_lists_its_files_as_they_are_named_when_piped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path a line, as scripts read it: what looks like a terminal escape in a folder's
    name is part of the name, not taken out (which named a file that is not there)."""
    home = tmp_path / "home\x1b[31m"
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_HOME", str(home))
    run("db", "upgrade")
    result = run("notify", "preview", "phase_notice")
    assert result.exit_code == 0, result.stderr
    listed = result.stdout.splitlines()
    assert listed and all(Path(line).is_file() for line in listed)
    assert all(line.startswith(f"{home}/outbox/preview/") for line in listed)


def test_notify_preview_renders_the_emails_of_the_phase_asked_for(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each phase words its emails by what it asks and does: npm 2025's token phase's
    reminder lists tokens, its first phase (a security key, TOTP closed) sends none, and
    by default the reminder is the first phase's that sends one, with its own days."""
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "npm-2025-tokens.yaml"))
    run("db", "upgrade")
    out = rollout_home / "outbox" / "preview"
    by_default = run("notify", "preview", "reminder")
    assert by_default.exit_code == 0, by_default.stderr
    default_text = (out / "reminder-non-compliant.txt").read_text()
    assert "In 7 days" in default_text and "token" in default_text
    tokens = run("notify", "preview", "--phase", "bypass-tokens")
    assert tokens.exit_code == 0, tokens.stderr
    files = {Path(line).name for line in tokens.stdout.split()}
    assert {"phase_notice-non-compliant.txt", "reminder-non-compliant.txt"} <= files
    assert not any(name.startswith("brownout") or name.startswith("elv") for name in files)
    none = run("notify", "preview", "reminder", "--phase", "totp-closed")
    assert none.exit_code == 2 and "phase totp-closed sends no reminder" in none.stderr
    assert run("notify", "preview", "--phase", "no-such-phase").exit_code == 2


def test_notify_suppress_is_idempotent(rollout_home: Path) -> None:
    run("db", "upgrade")
    first = run("notify", "suppress", "Someone@Example.com", "--reason", "hard bounce", "--apply")
    assert first.exit_code == 0 and "suppressed" in first.stderr
    again = run("notify", "suppress", "someone@example.com", "--reason", "again", "--apply")
    assert "already suppressed" in again.stderr


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", "bounced"),
        ("not an email at all", "bounced"),
        ("a@b.c\nBcc: x@evil.example", "bounced"),
        ("a@localhost", "bounced"),
        ("a@b.example", "  "),
        # Longer than any address is stored (PostgreSQL refused it with a traceback).
        ("a" * 330 + "@example.com", "bounced"),
    ],
)
def test_notify_suppress_refuses_what_is_not_an_address_and_stores_nothing(
    rollout_home: Path, address: str, reason: str
) -> None:
    run("db", "upgrade")
    refused = run("notify", "suppress", address, "--reason", reason)
    assert refused.exit_code == 2, refused.stderr
    assert "\nBcc" not in refused.stderr
    engine = make_engine(load_settings().registry_url)
    with engine.connect() as connection:
        from sqlalchemy import text

        assert connection.execute(text("select count(*) from email_suppressions")).scalar() == 0
    engine.dispose()


def test_hostile_names_stay_text_in_tables_csv_and_messages(rollout_home: Path) -> None:
    from datetime import datetime

    from rollout.registry.engine import make_engine, session_scope
    from rollout.registry.models import Account, Org, OrgMember

    from .hostile import FORMULAS, RICH_MARKUP, TERMINAL

    run("db", "upgrade")
    org = "[bold]org[/bold]\x1b[2K"
    names = [*TERMINAL, *RICH_MARKUP, *FORMULAS]
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with session_scope(engine) as session:
        t0 = datetime(2022, 1, 1)
        team = Org(name=org, created_at=t0)
        accounts = [
            Account(username=n, email=f"u{i}@example.com", email_verified=True, created_at=t0)
            for i, n in enumerate(names)
        ]
        session.add_all([team, *accounts])
        session.flush()
        session.add_all(
            OrgMember(org_id=team.id, account_id=a.id, role="developer", joined_at=t0)
            for a in accounts
        )
    engine.dispose()

    table = run("orgs", "audit", org)
    assert table.exit_code == 0, table.stderr
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout
    assert "\\x1b[2K\\x1b[1Amallory" in table.stdout
    assert "[bold]org[/bold]\\x1b[2K" in table.stdout  # the title, as typed
    for markup in RICH_MARKUP:
        assert markup in table.stdout
    listed = run("orgs", "audit", org, "--format", "csv")
    usernames = [row["username"] for row in csv.DictReader(io.StringIO(listed.stdout, newline=""))]
    assert sorted(usernames) == sorted(("'" + n if n in FORMULAS else n) for n in names)
    missing = run("orgs", "audit", "[red]nobody[/red]\x1b[1A")
    assert missing.exit_code == 2
    assert "\x1b" not in missing.stderr and "[red]nobody[/red]" in missing.stderr


def test_a_suggested_command_gives_the_shell_the_name_and_nothing_else(
    rollout_home: Path,
) -> None:
    """An org's name is its owner's choice: the command a preview suggests, pasted into
    a shell, names that org and runs nothing the name holds, on the one line shown."""
    import subprocess

    from rollout.registry.engine import make_engine

    run("db", "upgrade")
    org = "ac-dev\n\nSECURITY: re-enrol at https://evil.example $(touch pwned) 'x'"
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(engine):
        team = OrgFactory(name=org)
        sam = AccountFactory(username="sam").id
        OrgMemberFactory(org=team, account=existing_account(sam))
        # An owner with 2FA, who can turn enforcement on: the preview suggests the command.
        OrgMemberFactory(org=team, account=AccountFactory(with_totp=True), role="owner")
    engine.dispose()

    preview = run("orgs", "enforce", org)
    assert preview.exit_code == 0, preview.stderr
    [hint] = [line for line in preview.stderr.splitlines() if "preview only" in line]
    assert not any(line.startswith("SECURITY") for line in preview.stderr.splitlines())
    command = hint.split(" run ", 1)[1]
    words = subprocess.run(
        ["bash", "-c", f"set -- {command}; printf '%s\\0' \"$@\""],
        cwd=rollout_home,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert words.split("\0")[:-1] == [
        *("rollout", "orgs", "enforce", org),
        *("--owner", "YOU", "--confirm", org, "--expect", "1"),
        *("--expect-list", _removing(sam)),
    ]
    assert not (rollout_home / "pwned").exists()


@pytest.mark.parametrize("typed", ["zz", "53aeb24bf13", "53aeb24bf1345", "87", ""])
def test_a_mistyped_list_fingerprint_is_a_usage_error(rollout_home: Path, typed: str) -> None:
    """--expect-list that no preview could have printed (a digit short, the count pasted
    in its place) is refused as the usage error it is (exit 2, naming the option), before
    anything is read: not as a list that changed since its preview (exit 3, "preview
    again"), which sent the release manager to look for who changed."""
    run("db", "upgrade")
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        team = OrgFactory(name="acme")
        sam = AccountFactory(username="sam").id
        OrgMemberFactory(org=team, account=existing_account(sam))
        OrgMemberFactory(
            org=team, account=AccountFactory(username="o", with_totp=True), role="owner"
        )
    engine.dispose()
    phase = run("phase", "enforce", "top-100", "--apply", "--expect", "1", "--expect-list", typed)
    org = run(
        *("orgs", "enforce", "acme", "--owner", "o", "--confirm", "acme", "--expect", "1"),
        *("--expect-list", typed),
    )
    for refused in (phase, org):
        assert refused.exit_code == 2, refused.stderr
        said = _one_line(refused.stderr)
        assert f"--expect-list: {quoted(typed)} is not a list's fingerprint (12 hex digits" in said
    # As typed back from the preview (any case, spaces around): taken.
    taken = run(
        *("orgs", "enforce", "acme", "--owner", "o", "--confirm", "acme", "--expect", "1"),
        *("--expect-list", f" {_removing(sam).upper()} "),
    )
    assert taken.exit_code == 0, taken.stderr


def _removing(*developers: int) -> str:
    """The --expect-list an org preview prints for removing these developers' accounts."""
    return removal_fingerprint(
        Member(0, account, "", "developer", "none", [], datetime.min) for account in developers
    )


def _one_line(text: str) -> str:
    """stderr as one line: the console wraps long messages at its width."""
    return " ".join(text.split())


def test_notify_send_never_hands_sendgrid_failures_to_the_file_outbox(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("db", "upgrade")
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        NotificationFactory.create_batch(3, context=LATE_NOTICE)
    engine.dispose()
    with DevSendGrid() as server:
        monkeypatch.setenv("SENDGRID_API_KEY", server.api_key)
        monkeypatch.setenv("ROLLOUT_SENDGRID_URL", server.url)
        server.script([{"status": 400}] * 2)
        sent = run("notify", "send", "--apply", "--concurrency", "1")
        assert sent.exit_code == 1
        assert "2 emails failed: SendGrid answered 400" in _one_line(sent.stderr)
        assert "retried after 5xx/429: 0" in _one_line(sent.stderr)
        status = json.loads(run("notify", "status", "--format", "json").stdout)
        [failed] = [r for r in status if r["state"] == "failed"]
        assert failed["count"] == 2 and failed["reason"].startswith("SendGrid answered 400")
        # A shell without the key: the preview says so and refuses, and so does --apply.
        monkeypatch.delenv("SENDGRID_API_KEY")
        for args in ((), ("--apply",)):
            refused = run("notify", "send", "--retry-failed", *args)
            shown = _one_line(refused.stderr)
            assert refused.exit_code == 1, shown
            assert "sender: file" in shown and "2 failed emails to queue again first" in shown
            assert "2 emails waiting to be sent were last attempted through SendGrid" in shown
            assert "Set SENDGRID_API_KEY" in shown
        assert not list((rollout_home / "outbox").glob("*.eml"))
        still = json.loads(run("notify", "status", "--format", "json").stdout)
        assert [r["count"] for r in still if r["state"] == "failed"] == [2]
        monkeypatch.setenv("SENDGRID_API_KEY", server.api_key)
        retried = run("notify", "send", "--retry-failed", "--apply")
        assert retried.exit_code == 0, retried.stderr
        assert "2 failed emails queued again" in _one_line(retried.stderr)
        assert len(server.messages) == 3


@pytest.mark.parametrize("damage", ["not a database", "truncated"])
def test_a_damaged_registry_is_named_with_the_way_back_not_a_traceback(
    rollout_home: Path, damage: str
) -> None:
    run("db", "upgrade")
    path = rollout_home / "registry.db"
    if damage == "not a database":
        path.write_text("garbage\n" * 1000)
    else:
        with path.open("r+b") as file:
            file.seek(100)  # past the header: the schema's page, cut
            file.truncate()
    for command in (("db", "status"), ("db", "upgrade"), ("notify", "status")):
        result = run(*command)
        assert result.exit_code == 1, (command, result.stderr)
        assert result.stderr.startswith(f"error: {path}: cannot read the registry: "), command
        assert "restore it from its backup" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_command_that_reads_the_warehouse_refuses_one_an_older_rollout_left(
    rollout_home: Path,
) -> None:
    """After the code's upgrade, before any run wrote the warehouse: one line naming the
    way out, not a traceback from a view that lacks a column (cohorts simulate)."""
    path = rollout_home / "warehouse.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute(
            "create or replace view stg_manifests as "
            "select name as package, version, maintainers from raw_manifests"
        )
        con.execute("update warehouse_schema set fingerprint = 'an older rollout'")
    result = run("cohorts", "simulate", "--top", "5", "--as-of", "2022-01-03")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "made by another version of rollout" in result.stderr
    assert "run `rollout ingest`" in result.stderr


def test_notify_preview_for_an_account_words_the_email_as_the_send_would_that_day(
    registry_url: str, factories: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """top-100's deadline is 2022-02-01. An account's notice previewed after it reads
    as a notice queued --late and sent then ("since", no "action needed by"), and the
    preview says the send would skip it as too late unless so queued; its reminder
    counts the days left on that day. Before the deadline, as planned. Today (the
    pipeline's clock) is the default day."""
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    AccountFactory(username="kim")
    out = tmp_path / "outbox" / "preview"

    def preview(email: str, *on: str) -> tuple[str, str]:
        result = run("notify", "preview", email, "--account", "kim", *on)
        assert result.exit_code == 0, result.stderr
        subject = (out / f"{email}-kim.subject.txt").read_text()
        return subject + " " + " ".join((out / f"{email}-kim.txt").read_text().split()), " ".join(
            result.stderr.split()
        )

    late, said = preview("phase_notice", "--on", "2022-02-05")
    assert "since Tuesday 1 February 2022" in late and "will be required" not in late
    assert "phase_notice: its last day was 2022-01-31, so on 2022-02-05 the send skips" in said
    assert "notify queue --late" in said
    ahead, said = preview("phase_notice", "--on", "2022-01-04")
    assert "will be required of your account from Tuesday 1 February 2022" in ahead
    assert "past its last day" not in said
    reminder, _ = preview("reminder", "--on", "2022-01-30")
    assert "In 2 days" in reminder and "In 3 days" not in reminder
    with use_clock(SimulatedClock(datetime(2022, 3, 1, 9))):
        today, said = preview("phase_notice")
    assert "since Tuesday 1 February 2022" in today and "2022-03-01" in said
    assert run("notify", "preview", "--on", "2022-02-30").exit_code == 2


@pytest.mark.parametrize(
    ("email", "on"), [("phase_notice", "2022-02-01"), ("reminder", "2022-02-01")]
)
def test_notify_preview_names_the_last_day_as_queue_and_the_runbook_do(
    registry_url: str,
    factories: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    email: str,
    on: str,
) -> None:
    """A mailing's last day is the day before the date it announces (the runbook, section
    4; `notify queue`'s "its last day was 2022-01-31"): top-100's notice and reminders,
    before its 2022-02-01 deadline. The preview on the deadline said "on 2022-02-01 it is
    past its last day (2022-02-01)", the deadline taken for the last day."""
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    AccountFactory(username="kim")

    result = run("notify", "preview", email, "--account", "kim", "--on", on)

    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert f"{email}: its last day was 2022-01-31, so on {on} the send skips it" in said
    assert "(2022-02-01)" not in said
    on_the_last_day = run("notify", "preview", email, "--account", "kim", "--on", "2022-01-31")
    assert "last day" not in on_the_last_day.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("metrics", "--as-of", "2022-01-01", "--format", "{hostile}"),  # a bad choice
        ("metrics", "--{hostile}"),  # an unknown option
        ("summary", "{hostile}"),  # an extra argument
        ("{hostile}",),  # no such command
        ("phase", "enforce", "top-100", "--expect", "{hostile}"),  # not a number
    ],
)
def test_a_usage_error_shows_the_value_typed_as_data(
    rollout_home: Path, args: tuple[str, ...]
) -> None:
    """Click's usage errors repeat what was typed: an erase (ESC[2J), a right-to-left
    override and a line break faking an error stay escapes on the one error line."""
    hostile = "x\x1b[2J\u202e\nerror: the registry was wiped"
    result = run(*(a.replace("{hostile}", hostile) for a in args))
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")


def test_phase_enforce_counts_apart_the_sessions_signed_in_since_the_preview(
    rollout_home: Path,
) -> None:
    """The preview said "signed out of 3 web sessions"; an account signed in again before
    the release manager applied it, and the run's JSON said ``sessions_revoked 4`` with
    nothing to tell the session the preview never showed. The preview says the rule
    (every live session when enforced, any signed in since too), and the run counts
    those signed in since the approved preview apart."""
    from rollout.registry.ledger import utc_now

    from .factories import SessionFactory

    run("db", "upgrade")
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(engine):
        alice = AccountFactory(username="alice", in_cohort="top-100", sessions=1)
        AccountFactory(username="dave", in_cohort="top-100", sessions=2)
    preview = run("phase", "preview", "top-100")
    assert preview.exit_code == 0, preview.stderr
    said = " ".join(preview.stderr.split())
    assert "signed out of 3 web sessions" in said
    assert (
        "revoke_sessions (every live web session of the accounts when enforced: 3 now, "
        "and any signed in since)"
    ) in said
    with bound_to(engine):
        SessionFactory(account=alice, created_at=utc_now() + timedelta(minutes=1))
    done = run(*to_apply(preview.stderr), "--format", "json")
    assert done.exit_code == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["sessions_revoked"], result["sessions_signed_in_since_preview"]) == (4, 1)
    engine.dispose()


def test_phase_enforce_without_a_saved_preview_says_the_sessions_since_are_not_known(
    rollout_home: Path,
) -> None:
    """Previewed on another machine (no record under reports/previews here), the run
    printed ``sessions_signed_in_since_preview 0``: a count it never took, read as
    measured. The table says it is not known, and why (the JSON gives null: the run's
    summary, tests/test_preview_equals_apply.py)."""
    import shutil

    run("db", "upgrade")
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(engine):
        AccountFactory(username="alice", in_cohort="top-100", sessions=2)
    preview = run("phase", "preview", "top-100")
    assert preview.exit_code == 0, preview.stderr
    shutil.rmtree(rollout_home / "reports" / "previews")
    done = run(*to_apply(preview.stderr))
    assert done.exit_code == 0, done.stderr
    [row] = [
        line for line in done.stdout.splitlines() if "sessions_signed_in_since_preview" in line
    ]
    assert "not known: no saved preview here" in " ".join(row.split())
    assert " 0 " not in f"{row} "
    engine.dispose()


def test_phase_enforce_of_a_recommending_phase_says_it_acted_on_accounts_not_required_them(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """top-100 as a banner and TOTP set-ups closed: its preview says "acted on", plan
    show and the summary email ``accounts_acted_on``, and `phase enforce` printed
    ``accounts_required 2`` (table and JSON alike) of a phase that requires nothing of
    anyone's login. The table says ``accounts_acted_on``; the JSON too, keeping
    ``accounts_required`` beside it, the stored key scripts read (as documented)."""
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    banner = tmp_path / "banner.yaml"
    banner.write_text(
        text.replace(
            "    max_accounts: 1000\n",
            "    max_accounts: 1000\n    requires: {two_factor: phishing_resistant}\n"
            "    effects: [warn, close_totp_enrolment]\n",
            1,
        )
    )
    monkeypatch.setenv("ROLLOUT_PLAN", str(banner))
    run("db", "upgrade")
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(engine):
        AccountFactory(username="alice", in_cohort="top-100", sessions=1)
        AccountFactory(username="dave", in_cohort="top-100")
    engine.dispose()
    preview = run("phase", "preview", "top-100")
    assert preview.exit_code == 0, preview.stderr
    done = run(*to_apply(preview.stderr), "--format", "json")
    assert done.exit_code == 0, done.stderr
    said = json.loads(done.stdout)
    assert (said["accounts_acted_on"], said["accounts_required"]) == (2, 2)
    assert (said["accounts_flagged"], said["sessions_revoked"]) == (0, 0)
    # Run again (a rerun passes over them): the table names no requirement either.
    table = run(*to_apply(run("phase", "preview", "top-100").stderr))
    assert table.exit_code == 0, table.stderr
    assert "accounts_acted_on" in table.stdout and "accounts_required" not in table.stdout


def test_cohorts_show_short_lists_who_falls_short_of_what_the_phases_require(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runbook's "who still has to act" was `--without-2fa`: where top-100's phase
    requires a security key, its TOTP users have to act too. `--short` lists the
    accounts short of what the cohort's phases require, and `--without-2fa` there says
    that it leaves them out."""
    keys = _reference_plan_with(
        tmp_path,
        "    notify_compliant: true\n",
        "    notify_compliant: true\n    requires: {two_factor: phishing_resistant}\n",
    )
    monkeypatch.setenv("ROLLOUT_PLAN", str(keys))
    assert run("sample", "--scale", "tiny", "--seed", "3").exit_code == 0
    assert run("ingest").exit_code == 0
    assert run("metrics", "--as-of", "2022-02-01").exit_code == 0
    assert run("cohorts", "build", "--as-of", "2022-02-01").exit_code == 0

    def shown(*options: str) -> tuple[dict[str, str], str]:
        result = run("cohorts", "show", "top-100", *options, "--format", "json")
        assert result.exit_code == 0, result.stderr
        return {a["username"]: a["tfa_status"] for a in json.loads(result.stdout)}, " ".join(
            result.stderr.split()
        )

    everyone, _ = shown()
    short, _ = shown("--short")
    assert short == {u: s for u, s in everyone.items() if s != "webauthn"}
    assert set(short.values()) == {"none", "totp"}
    without, said = shown("--without-2fa")
    assert without == {u: s for u, s in everyone.items() if s == "none"}
    assert "phase top-100 requires a security key of cohort top-100" in said
    assert "--short" in said
    refused = run("cohorts", "show", "top-100", "--short", "--without-2fa")
    assert refused.exit_code == 2


def test_cohorts_show_short_is_without_2fa_where_the_phases_ask_any_2fa(
    rollout_home: Path,
) -> None:
    assert run("sample", "--scale", "tiny", "--seed", "3").exit_code == 0
    assert run("ingest").exit_code == 0
    assert run("metrics", "--as-of", "2022-02-01").exit_code == 0
    assert run("cohorts", "build", "--as-of", "2022-02-01").exit_code == 0
    short = run("cohorts", "show", "top-100", "--short", "--format", "json")
    without = run("cohorts", "show", "top-100", "--without-2fa", "--format", "json")
    assert short.exit_code == 0 and short.stdout == without.stdout
    assert "security key" not in without.stderr

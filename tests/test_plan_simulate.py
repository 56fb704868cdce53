"""`rollout plan simulate PLAN --as-of D`: what each phase of a plan would touch if it
ran on D (its cohort by its rule on D's metrics; the accounts without 2FA at the start
of D, 00:00 UTC, when enforcement on D acts, it would require it of, or only warn in a
warn-only phase, minus exemptions; their web sessions live then), writing nothing, so
a release manager can compare plans."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from tests.support.env import without_rollout_settings

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "plans" / "npm-2022.yaml"
DAY = "2022-02-01"  # the tiny sample's downloads cover its weekly window


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny sample with metrics and cohorts of DAY, for the module (nothing here
    writes to it: that is one of the things tested)."""
    path = tmp_path_factory.mktemp("simulate") / "home"
    with pytest.MonkeyPatch.context() as patch:
        without_rollout_settings(patch)
        patch.setenv("ROLLOUT_HOME", str(path))
        for command in (
            ("sample", "--scale", "tiny", "--seed", "3"),
            ("ingest",),
            ("metrics", "--as-of", DAY),
            ("cohorts", "build", "--as-of", DAY),
        ):
            assert run(*command).exit_code == 0, command
        yield path


def simulate(*args: str) -> dict[str, dict[str, Any]]:
    result = run("plan", "simulate", *args, "--as-of", DAY, "--format", "json")
    assert result.exit_code == 0, result.output
    return {row["phase"]: row for row in json.loads(result.stdout)}


def plan_file(tmp_path: Path, old: str, new: str) -> Path:
    text = REFERENCE.read_text()
    assert old in text
    path = tmp_path / "plan.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def previewed_and_simulated(
    plan: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Under PLAN: what `phase preview top-100` lists (JSON), and `plan simulate`'s row
    of top-100."""
    monkeypatch.setenv("ROLLOUT_PLAN", str(plan))
    preview = run("phase", "preview", "top-100", "--format", "json")
    assert preview.exit_code == 0, preview.output
    return json.loads(preview.stdout), simulate(str(plan))["top-100"]


def test_a_phase_would_touch_what_its_preview_lists_on_that_day(home: Path) -> None:
    # The top-100 cohort was built on DAY, and nothing in the sample is later than DAY:
    # the what-if and the enforcement preview see the same accounts and sessions.
    preview = run("phase", "preview", "top-100", "--format", "json")
    assert preview.exit_code == 0, preview.output
    targets = json.loads(preview.stdout)
    top = simulate()["top-100"]
    assert top["packages"] == 100 and top["cohort"] == "top-100"
    assert top["accounts_to_require"] == len(targets) > 0
    assert top["sessions_to_revoke"] == sum(t["live_sessions"] for t in targets)
    assert top["accounts"] >= top["accounts_to_require"] and top["exempt"] == 0


def test_plans_compare_a_stricter_rule_touches_fewer(home: Path, tmp_path: Path) -> None:
    stricter = plan_file(tmp_path, "top_by_dependents: 100", "top_by_dependents: 10")
    reference, other = simulate()["top-100"], simulate(str(stricter))["top-100"]
    assert other["packages"] == 10
    assert other["accounts"] <= reference["accounts"]
    assert other["accounts_to_require"] <= reference["accounts_to_require"]


def test_an_exempt_account_is_counted_apart(home: Path, tmp_path: Path) -> None:
    preview = json.loads(run("phase", "preview", "top-100", "--format", "json").stdout)
    username = preview[0]["username"]
    exempting = plan_file(
        tmp_path,
        "  accounts: []",
        f"  accounts:\n    - username: {username}\n      reason: a test account",
    )
    before, after = simulate()["top-100"], simulate(str(exempting))["top-100"]
    assert after["exempt"] == 1
    assert after["accounts_to_require"] == before["accounts_to_require"] - 1
    assert after["sessions_to_revoke"] == before["sessions_to_revoke"] - preview[0]["live_sessions"]


def test_it_writes_nothing(home: Path) -> None:
    def fingerprint() -> dict[str, str]:
        return {
            str(path.relative_to(home)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(home.rglob("*"))
            if path.is_file()
        }

    before = fingerprint()
    simulate()
    assert fingerprint() == before


def test_a_bad_plan_file_exits_2_naming_it(home: Path, tmp_path: Path) -> None:
    broken = plan_file(tmp_path, "top_by_dependents: 100", "top_by_dependents: lots")
    result = run("plan", "simulate", str(broken), "--as-of", DAY)
    assert result.exit_code == 2
    assert str(broken) in result.stderr and "top_by_dependents" in result.stderr


@pytest.mark.parametrize(
    "requires",
    [
        "{two_factor: none, no_classic_tokens: true}",
        "{two_factor: phishing_resistant, no_write_tokens_without_2fa: true}",
        "{two_factor: none, no_write_tokens_without_2fa: true}",
        "{two_factor: none, token_max_lifetime_days: 30}",
        "{two_factor: none, write_token_max_lifetime_days: 30}",
    ],
)
def test_token_and_security_key_requirements_count_what_the_preview_lists(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requires: str
) -> None:
    effects = (
        "[revoke_tokens]" if "none" in requires else "[require_2fa, revoke_sessions, revoke_tokens]"
    )
    strict = plan_file(
        tmp_path,
        "    max_accounts: 1000\n",
        f"    max_accounts: 1000\n    requires: {requires}\n    effects: {effects}\n"
        "    max_tokens: 100000\n",
    )
    targets, top = previewed_and_simulated(strict, monkeypatch)
    assert top["accounts_to_require"] == len(targets) > 0
    assert top["tokens_to_revoke"] == sum(t["tokens_to_revoke"] for t in targets) > 0
    assert top["sessions_to_revoke"] == sum(
        t["live_sessions"] for t in targets if t["lacks_factor"] and "sessions" in effects
    )


def test_a_token_age_rule_counts_the_tokens_enforcement_on_the_day_would_revoke(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enforcement on D ages tokens at the start of D (the day its warnings announced):
    a token made N days before D is not yet over N days old. Aged at the end of D, the
    what-if counted the tokens made on each boundary day as well (some of these ages
    fall on a day a cohort account made a token)."""
    for days in range(1, 12):
        aged = plan_file(
            tmp_path,
            "    max_accounts: 1000\n",
            "    max_accounts: 1000\n"
            f"    requires: {{two_factor: none, token_max_age_days: {days}}}\n"
            "    effects: [revoke_tokens]\n    max_tokens: 100000\n",
        )
        targets, top = previewed_and_simulated(aged, monkeypatch)
        assert (top["accounts_to_require"], top["tokens_to_revoke"]) == (
            len(targets),
            sum(t["tokens_to_revoke"] for t in targets),
        ), f"token_max_age_days: {days}"


def test_a_token_expiring_during_the_day_is_counted_as_enforcement_at_its_start_revokes_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enforcement on D runs from 00:00 UTC: a classic token expiring at 10:00 on D
    still works then, and is revoked (the preview at that moment lists it, as the
    warnings did). Judged at the end of D, the what-if left it out; one expiring at
    00:00 on D has stopped working, and neither counts it."""
    import shutil
    from datetime import datetime

    from rollout.core.clock import SimulatedClock, use_clock

    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    shutil.rmtree(copy / "reports", ignore_errors=True)  # other tests' previews
    monkeypatch.setenv("ROLLOUT_HOME", str(copy))
    classic = plan_file(
        tmp_path,
        "    max_accounts: 1000\n",
        "    max_accounts: 1000\n"
        "    requires: {two_factor: none, no_classic_tokens: true}\n"
        "    effects: [revoke_tokens]\n    max_tokens: 100000\n",
    )
    monkeypatch.setenv("ROLLOUT_PLAN", str(classic))
    with sqlite3.connect(copy / "registry.db") as db:
        first, second = [
            token_id
            for (token_id,) in db.execute(
                "select t.id from tokens t join cohort_memberships m"
                " on m.account_id = t.account_id and m.cohort = 'top-100'"
                " and m.left_on is null"
                " where t.kind in ('automation', 'publish', 'read_only')"
                " and t.revoked_at is null and t.expires_at is null"
                " order by t.id limit 2"
            )
        ]
        db.execute(
            "update tokens set expires_at = ? where id = ?", (f"{DAY} 10:00:00.000000", first)
        )
        db.execute(
            "update tokens set expires_at = ? where id = ?", (f"{DAY} 00:00:00.000000", second)
        )
    assert run("ingest", "--full-extract").exit_code == 0
    with use_clock(SimulatedClock(datetime.fromisoformat(DAY))):
        preview = run("phase", "preview", "top-100", "--format", "json")
    assert preview.exit_code == 0, preview.output
    listed = sum(t["tokens_to_revoke"] for t in json.loads(preview.stdout))
    [tokens_csv] = (copy / "reports" / "previews").glob("*-tokens.csv")
    ids = {int(line.split(",")[0]) for line in tokens_csv.read_text().splitlines()[1:]}
    assert first in ids and second not in ids
    assert simulate(str(classic))["top-100"]["tokens_to_revoke"] == listed


def test_tokens_revoked_or_made_during_the_day_are_judged_as_enforcement_at_its_start_sees_them(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enforcement on D runs from 00:00 UTC. A classic token its owner revokes at 10:00
    on D is live then, and revoked by it: the what-if, judging revocations at the end
    of D, left it out. One revoked at 00:00 on D is gone by then; one made at 10:00 on
    D did not exist yet, and the what-if counted it."""
    import shutil

    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    monkeypatch.setenv("ROLLOUT_HOME", str(copy))
    classic = plan_file(
        tmp_path,
        "    max_accounts: 1000\n",
        "    max_accounts: 1000\n"
        "    requires: {two_factor: none, no_classic_tokens: true}\n"
        "    effects: [revoke_tokens]\n    max_tokens: 100000\n",
    )

    def counted_after(column: str, at: str, token_id: int) -> int:
        with sqlite3.connect(copy / "registry.db") as db:
            db.execute(f"update tokens set {column} = ? where id = ?", (f"{DAY} {at}", token_id))
        assert run("ingest", "--full-extract").exit_code == 0
        return int(simulate(str(classic))["top-100"]["tokens_to_revoke"])

    with sqlite3.connect(copy / "registry.db") as db:
        revoked_late, revoked_at_start, made_late, made_at_start = [
            token_id
            for (token_id,) in db.execute(
                "select t.id from tokens t join cohort_memberships m"
                " on m.account_id = t.account_id and m.cohort = 'top-100'"
                " and m.left_on is null"
                " where t.kind in ('automation', 'publish', 'read_only')"
                " and t.revoked_at is null and t.expires_at is null"
                f" and t.created_at < '{DAY}' order by t.id limit 4"
            )
        ]
    before = simulate(str(classic))["top-100"]["tokens_to_revoke"]
    assert counted_after("revoked_at", "10:00:00.000000", revoked_late) == before
    assert counted_after("revoked_at", "00:00:00.000000", revoked_at_start) == before - 1
    assert counted_after("created_at", "10:00:00.000000", made_late) == before - 2
    assert counted_after("created_at", "00:00:00.000000", made_at_start) == before - 2


def test_a_second_factor_added_during_the_day_keeps_no_write_token_enforcement_revokes(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyPI 2024's rule on D, enforced from 00:00 UTC: an account without 2FA then loses
    its publishing tokens, though it adds a factor at 10:00. Judged at the end of D,
    the what-if counted none of them."""
    import shutil

    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    monkeypatch.setenv("ROLLOUT_HOME", str(copy))
    writes = plan_file(
        tmp_path,
        "    max_accounts: 1000\n",
        "    max_accounts: 1000\n"
        "    requires: {two_factor: none, no_write_tokens_without_2fa: true}\n"
        "    effects: [revoke_tokens]\n    max_tokens: 100000\n",
    )
    with sqlite3.connect(copy / "registry.db") as db:
        account_id, tokens = db.execute(
            "select t.account_id, count(*) from tokens t join cohort_memberships m"
            " on m.account_id = t.account_id and m.cohort = 'top-100' and m.left_on is null"
            " where t.writes and t.revoked_at is null and t.expires_at is null"
            " and t.account_id not in (select account_id from tfa_factors)"
            " group by t.account_id order by t.account_id limit 1"
        ).fetchone()
    before = simulate(str(writes))["top-100"]["tokens_to_revoke"]
    for at, counted in (("10:00:00.000000", before), ("00:00:00.000000", before - tokens)):
        with sqlite3.connect(copy / "registry.db") as db:
            db.execute("delete from tfa_factors where account_id = ?", (account_id,))
            db.execute(
                "insert into tfa_factors (account_id, kind, created_at) values (?, 'totp', ?)",
                (account_id, f"{DAY} {at}"),
            )
        assert run("ingest", "--full-extract").exit_code == 0
        assert simulate(str(writes))["top-100"]["tokens_to_revoke"] == counted, at


def test_a_warn_only_phase_counts_accounts_to_warn_and_requires_nobody(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rubygems-2022's first tier: a banner for the accounts short of it, nothing required.
    warning = plan_file(
        tmp_path, "    max_accounts: 1000\n", "    max_accounts: 1000\n    effects: [warn]\n"
    )
    targets, top = previewed_and_simulated(warning, monkeypatch)
    assert top["accounts_to_warn"] == len(targets) > 0
    assert (top["accounts_to_require"], top["sessions_to_revoke"]) == (0, 0)


def test_a_phase_that_warns_and_requires_counts_its_accounts_in_both(
    home: Path, tmp_path: Path
) -> None:
    both = plan_file(
        tmp_path,
        "    max_accounts: 1000\n",
        "    max_accounts: 1000\n    effects: [warn, require_2fa]\n",
    )
    top = simulate(str(both))["top-100"]
    assert (
        top["accounts_to_warn"]
        == top["accounts_to_require"]
        == simulate()["top-100"]["accounts_to_require"]
        > 0
    )
    assert simulate()["top-100"]["accounts_to_warn"] == 0


def test_a_cohort_naming_an_org_the_registry_does_not_have_is_said_not_counted_as_zero(
    home: Path, tmp_path: Path
) -> None:
    """Org names are exact: a misspelt org lets none of its members in, so the what-if
    counts none, as `plan check` warns and `cohorts build` refuses; the what-if says so
    on stderr (its counts still come: a plan is often tried before its orgs exist)."""
    with sqlite3.connect(home / "registry.db") as connection:
        org = connection.execute(
            "select name from orgs where upper(name) <> name order by name limit 1"
        ).fetchone()[0]
    misspelt = org.upper()
    naming = plan_file(
        tmp_path,
        "    top_by_dependents: 100\n",
        f"    top_by_dependents: 100\n    orgs: [{misspelt}, {org}, no-such-org]\n",
    )
    result = run("plan", "simulate", str(naming), "--as-of", DAY, "--format", "json")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert (
        f"warning: cohort top-100: orgs names {misspelt!r} (the registry as last extracted "
        f"has {org!r}), 'no-such-org', which the registry as last extracted does not have: "
        "its filter lets no member of them in (so counted none here"
    ) in said
    assert f"{org!r}," not in said.replace(f"has {org!r})", "")
    assert {row["phase"] for row in json.loads(result.stdout)} >= {"top-100"}
    # A plan whose orgs the registry has is tried without a word.
    quiet = run("plan", "simulate", "--as-of", DAY, "--format", "json")
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def windowed_plan(tmp_path: Path, name: str, windows: str, rule: str) -> Path:
    """The reference plan with its metrics windows and high-impact's rule replaced."""
    text = REFERENCE.read_text()
    old_windows = "  weekly_window_days: 7\n  monthly_window_days: 30\n"
    old_rule = "    weekly_downloads_gt: 1000000\n    dependents_gte: 500\n"
    assert old_windows in text and old_rule in text
    path = tmp_path / f"{name}.yaml"
    windows += "" if "monthly" in windows else "  monthly_window_days: 30\n"
    path.write_text(text.replace(old_windows, windows).replace(old_rule, f"    {rule}\n"))
    return path


def test_a_plan_with_another_weekly_window_counts_its_weekly_downloads_over_it(
    home: Path, tmp_path: Path
) -> None:
    """The day's metrics were computed with the reference plan's 7-day week: a plan with
    a 28-day one gave exactly the 7-day counts, silently. Its weekly downloads are its
    28 days, as many packages as the same threshold over 28 days selects."""
    week = "  weekly_window_days: 7\n  monthly_window_days: 30\n"
    four_weeks = "  weekly_window_days: 28\n  monthly_window_days: 30\n"
    rule = "weekly_downloads_gt: 1000"
    seven = simulate(str(windowed_plan(tmp_path, "seven", week, rule)))["high-impact"]
    weekly = simulate(str(windowed_plan(tmp_path, "weekly", four_weeks, rule)))["high-impact"]
    over_28 = windowed_plan(tmp_path, "over", week, "downloads_gt: {count: 1000, days: 28}")
    assert weekly["packages"] == simulate(str(over_28))["high-impact"]["packages"]
    assert weekly["packages"] > seven["packages"] > 0
    assert weekly["accounts"] >= seven["accounts"]


def test_a_longer_weekly_window_with_days_not_loaded_is_refused_unless_gaps_are_allowed(
    home: Path, tmp_path: Path
) -> None:
    """Its weekly window reaches before the sample's first download day: refused, as a
    gap in the metrics' own weekly window is, naming the plan's window, not counted
    short (the metrics' missing days cover only their own windows)."""
    long = windowed_plan(
        tmp_path,
        "long",
        "  weekly_window_days: 90\n  monthly_window_days: 90\n",
        "weekly_downloads_gt: 1000",
    )
    result = run("plan", "simulate", str(long), "--as-of", DAY)
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"of {DAY}'s weekly window (2021-11-03..2022-01-31)" in said
    assert "--allow-gaps" in said
    allowed = run("plan", "simulate", str(long), "--as-of", DAY, "--allow-gaps")
    assert allowed.exit_code == 0, allowed.output


def test_cohorts_simulate_under_a_plan_whose_week_changed_since_the_metrics_counts_its_week(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROLLOUT_PLAN's weekly window changed after the day's metrics were computed: the
    cohort what-if (and a build, by the same rule) sums the plan's week, not the
    metrics' one."""

    def sized(plan: Path) -> int:
        monkeypatch.setenv("ROLLOUT_PLAN", str(plan))
        result = run(
            "cohorts", "simulate", "--weekly-downloads-gt", "1000", "--as-of", DAY,
            "--format", "json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return int(json.loads(result.stdout)["packages"])

    rule = "weekly_downloads_gt: 1000"
    week = windowed_plan(tmp_path, "week", "  weekly_window_days: 7\n", rule)
    four = windowed_plan(tmp_path, "four", "  weekly_window_days: 28\n", rule)
    assert sized(four) > sized(week) > 0


def test_accounts_factors_and_sessions_are_judged_at_the_start_of_the_day_as_tokens_are(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enforcement on D runs from 00:00 UTC, and the what-if judges every fact then, as
    it judges tokens. An account that adds 2FA at 10:00 on D is still flagged and signed
    out by it; a session opened at 10:00 on D, and an account made then, it never saw.
    Judged at the end of D, the what-if left out the first and counted the others."""
    import shutil

    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    monkeypatch.setenv("ROLLOUT_HOME", str(copy))
    with sqlite3.connect(copy / "registry.db") as db:
        lacking = [
            account_id
            for (account_id,) in db.execute(
                "select m.account_id from cohort_memberships m"
                " where m.cohort = 'top-100' and m.left_on is null"
                " and m.account_id not in (select account_id from tfa_factors)"
                " and (select count(*) from web_sessions s where s.account_id = m.account_id"
                "      and s.revoked_at is null) = 1"
                " order by m.account_id limit 3"
            )
        ]
    adds_factor, opens_session, made_late = lacking
    before = simulate()["top-100"]

    def after(statement: str, account_id: int) -> dict[str, Any]:
        with sqlite3.connect(copy / "registry.db") as db:
            db.execute(statement, (f"{DAY} 10:00:00.000000", account_id))
        assert run("ingest", "--full-extract").exit_code == 0
        return simulate()["top-100"]

    added = after(
        "insert into tfa_factors (created_at, account_id, kind) values (?, ?, 'totp')",
        adds_factor,
    )
    assert added["accounts_to_require"] == before["accounts_to_require"]
    assert added["sessions_to_revoke"] == before["sessions_to_revoke"]

    opened = after(
        "update web_sessions set created_at = ? where account_id = ? and revoked_at is null",
        opens_session,
    )
    assert opened["accounts_to_require"] == before["accounts_to_require"]
    assert opened["sessions_to_revoke"] == before["sessions_to_revoke"] - 1

    made = after("update accounts set created_at = ? where id = ?", made_late)
    assert made["accounts"] == before["accounts"] - 1
    assert made["accounts_to_require"] == before["accounts_to_require"] - 1
    assert made["sessions_to_revoke"] == before["sessions_to_revoke"] - 2


def test_a_phase_recommending_security_keys_requires_nobody_and_counts_the_totp_set_ups_closed(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A banner and new TOTP set-ups closed: it stops no one signing in or publishing (its
    # emails recommend), so "accounts_to_require" is 0; the accounts without a key are
    # the ones it warns and whose TOTP set-ups it closes, as enforcement marks them.
    keys = plan_file(
        tmp_path,
        "    max_accounts: 1000\n",
        "    max_accounts: 1000\n    requires: {two_factor: phishing_resistant}\n"
        "    effects: [warn, close_totp_enrolment]\n",
    )
    targets, top = previewed_and_simulated(keys, monkeypatch)
    assert top["accounts_to_warn"] == top["totp_enrolments_to_close"] == len(targets) > 0
    assert (top["accounts_to_require"], top["sessions_to_revoke"]) == (0, 0)
    assert simulate(str(REFERENCE))["top-100"]["totp_enrolments_to_close"] == 0

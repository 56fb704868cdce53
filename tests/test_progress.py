"""Progress on a terminal only: drawn on stderr for people, never when piped or JSON."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.config import load_settings
from rollout.core.output import FORCE_PROGRESS, Format, progress_for, shows_progress
from rollout.core.plan import Plan
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.engine import make_engine

from .conftest import DATA, REFERENCE_PLAN
from .factories import LATE_NOTICE, AccountFactory, NotificationFactory, bound_to
from .support.previews import to_apply

ROOT = Path(__file__).resolve().parent.parent
BAR = "━"  # Rich's bar; ESC starts every ANSI sequence


def run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def drawn(text: str) -> bool:
    return "\x1b[" in text or BAR in text


@pytest.fixture
def landing(rollout_home: Path) -> Path:
    """Two small download files in the landing folder, and a registry."""
    assert run("db", "upgrade").exit_code == 0
    folder = rollout_home / "landing" / "downloads"
    shutil.copytree(DATA / "good", folder, ignore=shutil.ignore_patterns("manifests*", "logins*"))
    return folder


@pytest.fixture
def three_to_enforce(rollout_home: Path) -> int:
    """Three top-100 accounts without 2FA, one web session each."""
    assert run("db", "upgrade").exit_code == 0
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        AccountFactory.create_batch(3, sessions=1, in_cohort="top-100")
    engine.dispose()
    return 3


def test_the_helper_decides_terminal_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORCE_PROGRESS, raising=False)
    assert not shows_progress()  # pytest's stderr is not a terminal
    assert progress_for(Format.table).disable
    monkeypatch.setenv(FORCE_PROGRESS, "1")
    assert shows_progress(Format.table) and shows_progress(None)
    assert not progress_for(Format.table).disable
    assert progress_for(Format.table).console.is_terminal
    assert not shows_progress(Format.json) and progress_for(Format.json).disable


def test_ingest_piped_draws_no_progress(landing: Path) -> None:
    result = run("ingest", "--no-registry")
    assert result.exit_code == 0, result.stderr
    assert not drawn(result.stderr) and "2 loaded" in result.stderr


def test_ingest_on_a_terminal_draws_progress_with_the_file_name(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORCE_PROGRESS, "1")
    result = run("ingest", "--no-registry")
    assert result.exit_code == 0, result.stderr
    assert drawn(result.stderr) and "ingest downloads-" in result.stderr


def test_ingest_json_is_only_json_even_when_progress_is_forced(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORCE_PROGRESS, "1")
    result = run("ingest", "--no-registry", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert {f["status"] for f in json.loads(result.stdout)} == {"loaded"}
    assert not drawn(result.stderr) and not drawn(result.stdout)


def test_phase_enforce_draws_progress_on_a_terminal_only(
    three_to_enforce: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORCE_PROGRESS, "1")
    shown = run(*to_apply(run("phase", "preview", "top-100").stderr))
    assert shown.exit_code == 0, shown.stderr
    assert drawn(shown.stderr) and "phase top-100: accounts" in shown.stderr


def test_phase_enforce_piped_and_json_draw_nothing(
    three_to_enforce: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORCE_PROGRESS, "1")
    done = run(*to_apply(run("phase", "preview", "top-100").stderr), "--format", "json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["accounts_flagged"] == 3
    assert not drawn(done.stderr)
    monkeypatch.delenv(FORCE_PROGRESS)
    again = run(*to_apply(run("phase", "preview", "top-100").stderr))
    assert again.exit_code == 0, again.stderr
    assert not drawn(again.stderr)


def test_enforce_phase_reports_progress_after_each_batch(three_to_enforce: int, plan: Plan) -> None:
    calls: list[tuple[int, int]] = []
    with Registry(load_settings().registry_url) as registry:
        result = enforce.enforce_phase(
            registry,
            plan,
            "top-100",
            expect=3,
            actor="rm",
            batch_size=2,
            progress=lambda done, total: calls.append((done, total)),
        )
    assert result.accounts_required == 3
    assert calls == [(2, 3), (3, 3)]


def test_elv_enroll_all_piped_draws_no_progress(three_to_enforce: int) -> None:
    enrolled = run("elv", "enroll-all", "--apply")
    assert enrolled.exit_code == 0, enrolled.stderr
    assert "enrolled 3 accounts" in enrolled.stderr and not drawn(enrolled.stderr)


def test_notify_send_piped_draws_no_progress(rollout_home: Path) -> None:
    assert run("db", "upgrade").exit_code == 0
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        NotificationFactory.create_batch(2, context=LATE_NOTICE)
    engine.dispose()
    sent = run("notify", "send", "--apply", "--concurrency", "1")
    assert sent.exit_code == 0, sent.stderr
    assert "sent 2" in sent.stderr and not drawn(sent.stderr)


def test_the_demo_ends_with_the_numbers_that_tell_the_story(plan: Plan) -> None:
    from datetime import date

    from rollout.cli.demo import _story_lines
    from rollout.demo.story import StoryReport

    report = StoryReport(date(2021, 12, 1), date(2022, 5, 10))
    report.shares = {"cohort:top-100": (0.31, 0.97), "all": (0.1, None)}
    report.enforced = {"top-100": 12}
    report.emails["sent"] = 1234
    report.enrolled.update({"brown-out": 40, "organic": 15})
    lines = _story_lines(report, plan)
    assert lines == [
        "The story:",
        "  cohort top-100: 2FA 31% -> 97%",
        "  all accounts: 2FA 10% -> ?",
        "  phase top-100: 12 accounts required to use 2FA",
        "  emails sent: 1,234",
        "  enrolled in response to a brown-out: 40 (unprompted, over all 161 days: 15)",
    ]


def test_the_demo_tells_a_cohort_named_all_from_all_accounts(plan: Plan) -> None:
    """A cohort may be named ``all``: its line read "all:" like every account's."""
    from datetime import date

    from rollout.cli.demo import _story_lines
    from rollout.demo.story import StoryReport

    top = plan.phase("top-100").model_copy(update={"cohort": "all"})
    named_all = plan.model_copy(
        update={"cohorts": {"all": plan.cohorts["top-100"]}, "phases": [top]}
    )
    report = StoryReport(date(2021, 12, 1), date(2022, 5, 10))
    report.shares = {"cohort:all": (0.31, 0.97), "all": (0.1, 0.4)}
    lines = _story_lines(report, named_all)
    assert "  cohort all: 2FA 31% -> 97%" in lines
    assert "  all accounts: 2FA 10% -> 40%" in lines


def test_the_demo_gives_a_security_key_cohort_its_security_key_share(plan: Plan) -> None:
    """A phase asking a security key counts WebAuthn alone: its cohort's "2FA" share
    (TOTP too) is not what it asks, so the closing lines give the security-key share
    beside it (npm-2025-tokens read "everyone: 2FA 12% -> 68%" with 50% holding a key)."""
    from datetime import date

    from rollout.cli.demo import _story_lines
    from rollout.core.plan import Requirements
    from rollout.demo.story import StoryReport

    keys = plan.phase("top-100").model_copy(
        update={"requires": Requirements(two_factor="phishing_resistant")}
    )
    with_keys = plan.model_copy(update={"phases": [keys, plan.phase("high-impact")]})
    report = StoryReport(date(2021, 12, 1), date(2022, 5, 10))
    report.shares = {"cohort:top-100": (0.3, 0.9), "cohort:high-impact": (0.2, 0.6)}
    report.key_shares = {"cohort:top-100": (0.1, 0.5), "cohort:high-impact": (0.05, 0.1)}
    lines = _story_lines(report, with_keys)
    assert "  cohort top-100: 2FA 30% -> 90%, security key 10% -> 50%" in lines
    assert "  cohort high-impact: 2FA 20% -> 60%" in lines


def test_the_demo_tells_a_cohort_built_with_nobody_in_it(plan: Plan) -> None:
    """A cohort whose build selected no one (a rule no package meets) has days of 0
    accounts and no share: the closing lines left it out, silently, while the report
    shows it with 0 accounts ("built: selected no one"). It is told, as the report
    tells it; a cohort with no rows (not built by the end) is still left out."""
    import duckdb

    from rollout.cli.demo import _story_lines
    from rollout.demo.story import StoryReport, _selected_no_one, _shares

    con = duckdb.connect()
    con.execute(
        "create table adoption_daily (day date, population varchar, accounts int, "
        "share double, webauthn int)"
    )
    con.execute(
        "insert into adoption_daily values ('2022-01-01', 'all', 10, 0.5, 1), "
        "('2022-01-03', 'all', 10, 0.8, 4), ('2022-01-01', 'cohort:top-100', 0, 0.0, 0), "
        "('2022-01-03', 'cohort:top-100', 4, 0.5, 1), "
        "('2022-01-01', 'cohort:high-impact', 0, 0.0, 0), "
        "('2022-01-03', 'cohort:high-impact', 0, 0.0, 0), "
        "('2022-01-04', 'cohort:later', 3, 1.0, 0)"
    )
    start, end = date(2022, 1, 1), date(2022, 1, 3)
    report = StoryReport(start, end)
    report.shares = _shares(con, start, end)
    report.selected_no_one = _selected_no_one(con, end)
    assert report.selected_no_one == ["cohort:high-impact"]
    lines = _story_lines(report, plan)
    assert lines[:4] == [
        "The story:",
        "  cohort top-100: 2FA 50% -> 50%",
        "  cohort high-impact: 0 accounts (built: selected no one)",
        "  all accounts: 2FA 50% -> 80%",
    ]


def test_a_demo_played_over_a_cohort_built_with_nobody_in_it_tells_it(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole demo, not its closing lines alone: a plan whose high-impact rule no
    package meets builds that cohort with nobody in it on 2022-03-14, and the story's
    closing lines tell it with 0 accounts, as the report does (the test above builds
    the lines from a report it fills itself: a story that never filled it passed)."""
    plan = rollout_home.parent / "nobody-high-impact.yaml"
    unmet = REFERENCE_PLAN.read_text()
    for rule, nobody in [
        ("weekly_downloads_gt: 1000000\n", "weekly_downloads_gt: 1000000000000000\n"),
        ("dependents_gte: 500\n", "dependents_gte: 1000000000\n"),
    ]:
        assert unmet.count(rule) == 1, f"the reference plan's high-impact rule: {rule}"
        unmet = unmet.replace(rule, nobody)
    plan.write_text(unmet)
    monkeypatch.setenv("ROLLOUT_PLAN", str(plan))
    runner = CliRunner()
    sampled = runner.invoke(app, ["sample", "--scale", "tiny", "--seed", "7", "--for-plan"])
    assert sampled.exit_code == 0, sampled.output

    played = runner.invoke(app, ["demo", "--start", "2022-03-14", "--end", "2022-03-14"])

    assert played.exit_code == 0, played.output
    lines = played.stderr.splitlines()
    assert "  cohort high-impact: 0 accounts (built: selected no one)" in lines
    assert any(line.startswith("  cohort top-100: 2FA ") for line in lines)


def test_the_story_security_key_shares_are_webauthn_of_accounts() -> None:
    import duckdb

    from rollout.demo.story import _shares

    con = duckdb.connect()
    con.execute(
        "create table adoption_daily (day date, population varchar, accounts int, "
        "share double, webauthn int)"
    )
    con.execute(
        "insert into adoption_daily values ('2022-01-01', 'all', 10, 0.5, 1), "
        "('2022-01-03', 'all', 10, 0.8, 4), ('2022-01-03', 'cohort:c', 0, 0.0, 0)"
    )
    assert _shares(con, date(2022, 1, 1), date(2022, 1, 3), security_key=True) == {
        "all": (0.1, 0.4)
    }


def test_the_demo_says_required_to_use_2fa_only_of_a_phase_that_asks_only_that(
    plan: Plan,
) -> None:
    """A phase with a token rule applies to accounts with 2FA too (a stale token): its
    count is not of accounts "required to use 2FA" (the keys-and-tokens plan's demo said
    126 where 101 lacked 2FA)."""
    from datetime import date

    from rollout.cli.demo import _story_lines
    from rollout.core.plan import Requirements
    from rollout.demo.story import StoryReport

    top = plan.phase("top-100")
    tokens = top.model_copy(
        update={
            "requires": Requirements(token_max_age_days=365),
            "effects": ["require_2fa", "revoke_tokens"],
        }
    )
    keys = top.model_copy(update={"requires": Requirements(two_factor="phishing_resistant")})
    report = StoryReport(date(2021, 12, 1), date(2022, 5, 10))
    report.enforced = {"top-100": 126}
    for phase, said in (
        (top, "required to use 2FA"),
        (tokens, "it applies to"),
        (keys, "it applies to"),
    ):
        changed = plan.model_copy(update={"phases": [phase]})
        assert f"  phase top-100: 126 accounts {said}" in _story_lines(report, changed)


def _shares_of(rows: str, start: date, end: date) -> dict[str, tuple[float | None, float | None]]:
    """``story._shares`` over an ``adoption_daily`` of these (day, population, accounts,
    share) rows."""
    import duckdb

    from rollout.demo.story import _shares

    con = duckdb.connect()
    con.execute(
        "create table adoption_daily (day date, population varchar, accounts int, share double)"
    )
    con.execute(f"insert into adoption_daily values {rows}")
    return _shares(con, start, end)


def test_the_story_shares_are_the_start_and_end_days() -> None:
    shares = _shares_of(
        "('2021-11-30', 'all', 9, 0.1), ('2021-12-01', 'all', 9, 0.2), "
        "('2021-12-05', 'all', 9, 0.5), ('2021-12-09', 'all', 9, 0.9), "
        "('2021-12-03', 'cohort:top-100', 5, 0.4), ('2021-12-06', 'cohort:top-100', 5, 0.8)",
        date(2021, 12, 1),
        date(2021, 12, 6),
    )
    assert shares == {"all": (0.2, 0.5), "cohort:top-100": (0.4, 0.8)}


def test_the_closing_shares_start_with_a_cohort_s_first_member() -> None:
    """Before its first build a cohort's rows say 0 accounts and 0%: the demo's closing
    lines read "top-100: 2FA 0% -> 96%" for a cohort that began at 24%."""
    shares = _shares_of(
        "('2022-01-01', 'all', 10, 0.1), ('2022-01-01', 'cohort:top-100', 0, 0.0), "
        "('2022-01-02', 'all', 10, 0.2), ('2022-01-02', 'cohort:top-100', 5, 0.24), "
        "('2022-01-03', 'all', 10, 0.3), ('2022-01-03', 'cohort:top-100', 5, 0.96)",
        date(2022, 1, 1),
        date(2022, 1, 3),
    )
    assert shares == {"all": (0.1, 0.3), "cohort:top-100": (0.24, 0.96)}


def test_the_demo_counts_one_thing_in_the_singular(plan: Plan) -> None:
    """A tiny sample's story read "1 accounts" and "1 maintainers": every count the
    demo says, in its closing lines and its milestones, takes its noun's number."""
    from datetime import date
    from types import SimpleNamespace

    from rollout.cli.demo import _story_lines
    from rollout.demo.story import StoryReport, _did

    report = StoryReport(date(2021, 12, 1), date(2022, 5, 10))
    report.enforced = {"top-100": 1}
    report.tokens_revoked = {"top-100": 1}
    report.emails["sent"] = 3
    report.bounced = 1
    lines = _story_lines(report, plan)
    assert "  phase top-100: 1 account required to use 2FA, 1 token revoked" in lines
    assert "  emails sent: 3 (to 1 maintainer they bounced)" in lines

    one = SimpleNamespace(accounts_required=1, sessions_revoked=1, tokens_revoked=2)
    assert _did(plan.phase("top-100"), one) == (
        "1 account required to use 2FA, 1 web session revoked"
    )

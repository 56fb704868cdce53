"""A plan edited mid-campaign, against what the registry did under its earlier version:
a phase renamed after it emailed is refused by `plan check` (its emails no longer
render, its rollback is gone); a deadline moved earlier than reminders told is a
warning, and enforcement waits for the date the accounts were given."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import GuardRefused
from rollout.core.plan import Plan
from rollout.phases import enforce
from rollout.registry import Registry
from tests.factories import CohortPackageFactory, OrgFactory, bound_to
from tests.hostile import PROSE
from tests.support.outbox import ids, queue_and_send
from tests.support.previews import names_read_back

__all__ = ["ids"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parent.parent


def edited(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    assert old in text
    path = tmp_path / "edited.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.fixture
def check(
    registry_url: str, rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Path], Result]:
    """`rollout plan check FILE` against this test's registry."""
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    return lambda path: CliRunner().invoke(app, ["plan", "check", str(path)])


def _previewed_refused_then_forced(
    registry: Registry,
    plan_file: Path,
    at: datetime,
    *,
    says: str,
    refused: str,
    expect: int,
) -> int:
    """Under the edited plan at ``at``: top-100's preview says ``says``, its enforcement
    is refused (``refused``), and with --early (the release manager's choice) applies.
    The accounts that run required."""
    from rollout.core.plan import load_plan

    edited_plan = load_plan(plan_file)
    with use_clock(SimulatedClock(at)):
        preview = CliRunner().invoke(
            app, ["phase", "preview", "top-100"], env={"ROLLOUT_PLAN": str(plan_file)}
        )
        assert preview.exit_code == 0, preview.stderr
        assert says in " ".join(preview.stderr.split())
        with pytest.raises(GuardRefused, match=refused):
            enforce.enforce_phase(registry, edited_plan, "top-100", expect=expect, actor="rm")
        forced = enforce.enforce_phase(
            registry, edited_plan, "top-100", expect=expect, actor="rm", early=True
        )
    return forced.accounts_required


def test_a_phase_renamed_after_it_emailed_is_refused_by_plan_check(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    queue_and_send(registry, plan, date(2022, 1, 4))  # top-100's notices
    renamed = edited(tmp_path, "  - name: top-100\n", "  - name: top100-maintainers\n")
    result = check(renamed)
    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    assert "phase 'top-100' is not in plan npm-2022, but the registry has 0 accounts" in said
    assert "renamed or deleted after it acted?" in said
    # The plan as it was is fine.
    assert check(ROOT / "plans" / "npm-2022.yaml").exit_code == 0


def test_a_deadline_moved_before_the_one_reminders_told_warns_and_enforcement_waits(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    queue_and_send(registry, plan, date(2022, 1, 4))
    queue_and_send(registry, plan, date(2022, 1, 18))  # "in 14 days, on 1 February"
    moved = edited(tmp_path, "enforce_on: 2022-02-01", "enforce_on: 2022-01-25")
    result = check(moved)
    assert result.exit_code == 0
    assert (
        "warning: phase top-100: 3 sent emails (notices, reminders) told accounts 2022-02-01"
        in (" ".join(result.stderr.split()))
    )
    # The preview names the date enforcement waits for, not the plan's.
    forced = _previewed_refused_then_forced(
        registry,
        moved,
        datetime(2022, 1, 25, 10),
        says="Not due yet: the phase is enforced from 2022-02-01 (in 7 days)",
        refused="reminders told accounts 2022-02-01",
        expect=3,
    )
    assert forced == 3


def test_a_deadline_moved_before_the_one_the_notices_told_holds_enforcement_back(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    """No reminder has gone yet (or the phase has none): the notices alone told "from
    Tuesday 1 February". Moved to 25 January, enforcement on the 25th signed accounts
    out "as announced"; it waits for the date the notices gave."""
    queue_and_send(registry, plan, date(2022, 1, 4))  # top-100's notices, no reminder yet
    moved = edited(tmp_path, "enforce_on: 2022-02-01", "enforce_on: 2022-01-25")
    result = check(moved)
    assert result.exit_code == 0
    said = " ".join(result.stderr.split())
    assert "phase top-100: 2 sent emails (notices, reminders) told accounts 2022-02-01" in said
    assert "(`phase enforce` refuses before the date told)" in said
    from rollout.core.plan import load_plan

    earlier = load_plan(moved)
    with (
        use_clock(SimulatedClock(datetime(2022, 1, 25, 10))),
        pytest.raises(GuardRefused, match="told accounts 2022-02-01"),
    ):
        enforce.enforce_phase(registry, earlier, "top-100", expect=3, actor="rm")
    with use_clock(SimulatedClock(datetime(2022, 2, 1, 10))):
        done = enforce.enforce_phase(registry, earlier, "top-100", expect=3, actor="rm")
    assert done.accounts_required == 3
    # Postponed instead, the notices' earlier date holds nothing back.
    assert (
        check(edited(tmp_path, "enforce_on: 2022-02-01", "enforce_on: 2022-02-08")).exit_code == 0
    )


def test_a_second_plan_reusing_a_phase_name_on_the_same_registry_is_refused(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    """npm-2022's top-100 emailed; a later plan with its own top-100 would find every
    notice "already" sent and enforce a new requirement on accounts told nothing."""
    queue_and_send(registry, plan, date(2022, 1, 4))
    queue_and_send(registry, plan, date(2022, 1, 18))  # npm-2022's reminder: "1 February"
    second = edited(tmp_path, "name: npm-2022", "name: npm-2025-keys")
    second.write_text(
        second.read_text().replace("enforce_on: 2022-02-01", "enforce_on: 2022-03-01")
    )
    result = check(second)
    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    assert "has the name of a phase plan npm-2022 ran on this registry" in said
    # The other plan's reminders told its own date: not this plan's to warn of.
    assert "told accounts" not in said


def test_an_exemption_naming_no_account_is_a_warning(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    """Usernames are exact: `ANN` spares nobody when the account is `ann`, and she would
    be enforced like everyone else."""
    exempting = edited(
        tmp_path,
        "  accounts: []",
        "  accounts:\n"
        "    - {username: ANN, reason: on leave}\n"
        "    - {username: ann, reason: on leave}",
    )
    result = check(exempting)
    assert result.exit_code == 0
    said = " ".join(result.stderr.split())
    assert "warning: exemptions: no account is named 'ANN' in the registry" in said
    assert "named 'ann'" not in said


def test_a_release_manager_naming_no_account_is_a_warning(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    """The phase summary goes to the accounts `release_managers` names, exactly: `Eve`
    (the account is `eve`) or `alice` (none yet) would get no summary of enforcement,
    and nothing said so."""
    managing = edited(tmp_path, "  release_managers: []", "  release_managers: [Eve, eve, alice]")
    result = check(managing)
    assert result.exit_code == 0
    said = " ".join(result.stderr.split())
    for username in ("Eve", "alice"):
        assert (
            f"warning: notifications.release_managers: no account is named {username!r} in "
            "the registry (usernames are exact): no phase summary goes to it"
        ) in said
    assert "named 'eve'" not in said


def test_cohort_packages_from_before_the_day_the_cohort_is_fixed_are_a_warning(
    registry: Registry,
    factories: None,
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    """A build before the phase's cohort_as_of (an earlier rollout built every cohort
    daily; or cohort_as_of moved later since) added packages for good that the rule
    never judged on the cohort's day: their maintainers would be emailed and enforced.
    Released ones, and those that entered on the day or after, are not named."""
    early = date(2022, 3, 7)
    for package in ("early-a", "early-b"):
        CohortPackageFactory(cohort="high-impact", package=package, first_qualified_on=early)
    CohortPackageFactory(
        cohort="high-impact",
        package="early-released",
        first_qualified_on=early,
        released_at=datetime(2022, 3, 8),
        released_reason="not on its day",
        released_by="rm",
    )
    CohortPackageFactory(
        cohort="high-impact", package="on-the-day", first_qualified_on=date(2022, 3, 14)
    )
    CohortPackageFactory(cohort="top-100", package="top", first_qualified_on=date(2022, 1, 3))
    result = check(ROOT / "plans" / "npm-2022.yaml")
    assert result.exit_code == 0
    said = " ".join(result.stderr.split())
    assert (
        "warning: cohort high-impact: 2 packages entered on a build before 2022-03-14, "
        "the day phase high-impact fixes it (cohort_as_of)" in said
    )
    assert "'early-a', 'early-b'" in said
    assert "rollout cohorts release PACKAGE --cohort high-impact --reason" in said
    for named in ("early-released", "on-the-day", "cohort top-100"):
        assert named not in said
    # Moving cohort_as_of later, after the builds, makes the same packages early.
    moved = edited(tmp_path, "cohort_as_of: 2022-01-03", "cohort_as_of: 2022-01-04")
    said = " ".join(check(moved).stderr.split())
    assert "cohort top-100: 1 package entered on a build before 2022-01-04" in said


def test_a_phase_asking_more_than_its_notices_told_is_refused_and_not_enforced(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    """top-100's notices told any second factor would do, and ben (TOTP) that he met it
    already. The plan edited since to ask a security key would flag ben and close his
    TOTP set-ups with no word of it: `plan check` refuses the edit and enforcement
    waits, unless forced."""
    queue_and_send(registry, plan, date(2022, 1, 4))  # top-100's notices: "any factor"
    stricter = edited(
        tmp_path,
        "    max_accounts: 1000\n",
        "    max_accounts: 1000\n    requires: {two_factor: phishing_resistant}\n"
        "    effects: [require_2fa, revoke_sessions, close_totp_enrolment]\n",
    )
    result = check(stricter)
    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    assert (
        "phase top-100: 2 sent emails (notices, reminders) told accounts it asks and does "
        "'two_factor=any;effects=require_2fa,revoke_sessions'" in said
    )
    assert (
        "it now asks more (a security key (WebAuthn, not TOTP alone); effect "
        "close_totp_enrolment)" in said
    )
    forced = _previewed_refused_then_forced(
        registry,
        stricter,
        datetime(2022, 2, 1, 10),
        says="Not to be enforced: 2 of phase top-100's sent notices and reminders",
        refused="the plan now asks more",
        expect=4,
    )
    assert forced == 4  # ben too, as the release manager chose


def test_a_phase_asking_less_than_its_notices_told_is_only_a_warning(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    queue_and_send(registry, plan, date(2022, 1, 4))
    milder = edited(
        tmp_path, "    max_accounts: 1000\n", "    max_accounts: 1000\n    effects: [require_2fa]\n"
    )
    result = check(milder)
    assert result.exit_code == 0, result.stderr
    assert (
        "warning: phase top-100: 2 sent emails (notices, reminders) told accounts it asks "
        "and does 'two_factor=any;effects=require_2fa,revoke_sessions', the plan now says "
        "'two_factor=any;effects=require_2fa'" in " ".join(result.stderr.split())
    )
    from rollout.core.plan import load_plan

    with use_clock(SimulatedClock(datetime(2022, 2, 1, 10))):
        done = enforce.enforce_phase(registry, load_plan(milder), "top-100", expect=3, actor="rm")
    assert done.accounts_required == 3


def test_a_cohort_naming_an_org_the_registry_does_not_have_is_a_warning(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    check: Callable[[Path], Result],
) -> None:
    """Org names are exact: `orgs: [Acme, corp-lab]` lets none of acme's members in, and
    corp-lab may not exist yet (a plan is written before its orgs): said, not refused."""
    with bound_to(registry.engine):
        OrgFactory(name="acme")
        OrgFactory(name="corp")
    naming = edited(
        tmp_path,
        "    top_by_dependents: 100\n",
        "    top_by_dependents: 100\n    orgs: [Acme, corp, corp-lab]\n",
    )
    result = check(naming)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert (
        "warning: cohort top-100: orgs names 'Acme' (the registry has 'acme'), 'corp-lab', "
        "which the registry does not have: its filter lets no member of them in "
        "(`cohorts build` refuses it until the registry has the org)"
    ) in said
    assert "'corp'," not in said


@pytest.mark.parametrize("name", PROSE)
def test_the_early_packages_a_warning_lists_read_as_those_packages(
    registry: Registry, factories: None, check: Callable[[Path], Result], name: str
) -> None:
    """A package named 'bo, di' among those a build put in a cohort before its day: the
    warning's list read 'bo, di, early', three packages for two."""
    for package in (name, "early"):
        CohortPackageFactory(
            cohort="high-impact", package=package, first_qualified_on=date(2022, 3, 7)
        )
    result = check(ROOT / "plans" / "npm-2022.yaml")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    listed = said.split("stay for good though its rule was not judged on that day: ")[1]
    assert sorted(names_read_back(listed.split(". Their maintainers")[0])) == sorted(
        [name, "early"]
    )

"""Phase enforcement on SQLite and PostgreSQL: previews first, only the non-compliant,
guards, audit rows, and exactly once across crashes and reruns."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.plan import ExemptAccount, Exemptions, Plan
from rollout.notify.withdraw import Selection, withdraw
from rollout.phases import enforce
from rollout.phases.previews import preview_markdown, save_preview, saved_previews
from rollout.phases.timeline import plan_steps, step_states
from rollout.registry import Registry, locks
from rollout.registry.engine import make_engine
from rollout.registry.ledger import finish_run, start_run
from rollout.registry.locks import _advisory_key, make_lock_engine
from rollout.registry.migrate import upgrade
from rollout.registry.models import (
    Account,
    Action,
    Notification,
    PlanRun,
    WebSession,
)
from tests.factories import AccountFactory, FactorFactory, existing_account
from tests.support.previews import to_apply
from tests.support.run_locks import end_run_lock_session

from .conftest import postgres_only


@pytest.fixture
def plan_exempting_carol(plan: Plan) -> Plan:
    """The reference plan, which exempts nobody, with carol exempted."""
    return plan.model_copy(
        update={
            "exemptions": Exemptions(
                accounts=[ExemptAccount(username="carol", reason="security team service account")]
            )
        }
    )


@pytest.fixture
def ids(factories: None) -> dict[str, int]:
    """alice: no 2FA, 2 live sessions. bob: TOTP. carol: no 2FA, exempt. dave: no 2FA,
    one live and one already revoked session. erin: no 2FA, left the cohort."""
    accounts = {
        "alice": AccountFactory(username="alice", sessions=2, in_cohort="top-100"),
        "bob": AccountFactory(username="bob", with_totp=True, sessions=1, in_cohort="top-100"),
        "carol": AccountFactory(username="carol", sessions=1, in_cohort="top-100"),
        "dave": AccountFactory(
            username="dave", sessions=1, revoked_sessions=1, in_cohort="top-100"
        ),
        "erin": AccountFactory(username="erin", sessions=1, left_cohort="top-100"),
    }
    return {name: account.id for name, account in accounts.items()}


def count(registry: Registry, model: type, *where: object) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(model).where(*where)
        ).scalar_one()


def required(registry: Registry) -> set[str]:
    with registry.engine.connect() as connection:
        return {
            u
            for (u,) in connection.execute(
                select(Account.username).where(Account.tfa_required_at.is_not(None))
            )
        }


def live_sessions(registry: Registry, account_id: int) -> int:
    return count(
        registry, WebSession, WebSession.account_id == account_id, WebSession.revoked_at.is_(None)
    )


def test_preview_lists_exactly_the_non_compliant(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    preview = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    assert [t.username for t in preview.targets] == ["alice", "dave"]
    assert preview.sessions == 3
    assert (preview.compliant, preview.exempted) == (1, ["carol"])
    assert count(registry, Action) == 0 and required(registry) == set()


def test_a_phase_whose_cohort_was_never_built_is_refused_not_applied_to_no_one(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """high-impact before its cohort's first build: the preview said "0 accounts ...
    would be required", `--apply --expect 0` was recorded as applied, and `plan show`
    then said the phase was enforced while the build to come would list maintainers
    no enforcement ever reached."""
    never_built = "its cohort high-impact has never been built"
    with pytest.raises(BadInput, match=never_built):
        enforce.preview_phase(registry, plan, plan.phase("high-impact"))
    with pytest.raises(BadInput, match=never_built):
        enforce.enforce_phase(registry, plan, "high-impact", expect=0, actor="rm")
    assert count(registry, PlanRun) == 0 and required(registry) == set()
    # Built on its day and found empty, it is a cohort of no one: previewed as such.
    with registry.engine.begin() as connection:
        run = start_run(
            connection,
            plan=plan.name,
            step="cohorts 2022-03-14",
            mode="apply",
            actor="rm",
            parameters={"as_of": "2022-03-14", "cohorts": ["high-impact"]},
        )
        finish_run(connection, run, state="succeeded", summary={})
    assert enforce.preview_phase(registry, plan, plan.phase("high-impact")).count == 0


def test_a_token_count_given_for_a_phase_that_revokes_none_is_refused(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    """Most likely typed back from another phase's preview: refused, not ignored."""
    with pytest.raises(BadInput, match="--expect-tokens 7: phase top-100 revokes no tokens"):
        enforce.enforce_phase(
            registry, plan_exempting_carol, "top-100", expect=2, expect_tokens=7, actor="rm"
        )
    assert required(registry) == set() and count(registry, Action) == 0


def test_enforcing_before_enforce_on_is_refused_unless_early(
    registry: Registry,
    plan_exempting_carol: Plan,
    ids: dict[str, int],
    rollout_home: Path,
    registry_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """top-100 is enforced from 2022-02-01, the date its notices gave: a day early,
    nothing is done (the preview says why); --early is the release manager's call."""
    from typer.testing import CliRunner

    from rollout.cli import app
    from rollout.core.clock import SimulatedClock, use_clock

    plan = plan_exempting_carol
    with use_clock(SimulatedClock(datetime(2022, 1, 31, 23, 59))):
        with pytest.raises(GuardRefused, match="enforced from 2022-02-01, the date its emails"):
            enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
        assert required(registry) == set() and count(registry, Action) == 0
        monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
        preview = CliRunner().invoke(app, ["phase", "preview", "top-100"])
        cli = CliRunner().invoke(app, to_apply(preview.stderr))
        assert cli.exit_code == 3 and "pass --early to enforce anyway" in cli.stderr
        assert "Not due yet: the phase is enforced from 2022-02-01 (in 1 day)" in preview.stderr
        early = enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm", early=True)
    assert early.accounts_required == 2 and required(registry) == {"alice", "dave"}
    with use_clock(SimulatedClock(datetime(2022, 2, 1))):
        preview = CliRunner().invoke(app, ["phase", "preview", "top-100"])
    assert "Not due yet" not in preview.stderr


def test_an_exemption_added_after_enforcement_is_shown_as_not_undoing_it(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """The preview said "exempted: carol" while the phase still required her: the
    exemption keeps her out of the next enforcement, it does not release her."""
    enforce.enforce_phase(registry, plan, "top-100", expect=3, actor="rm")
    exempting = plan.model_copy(
        update={
            "exemptions": Exemptions(
                accounts=[ExemptAccount(username="carol", reason="security team service account")]
            )
        }
    )
    preview = enforce.preview_phase(registry, exempting, exempting.phase("top-100"))
    assert (preview.exempted, preview.exempt_but_required) == (["carol"], ["carol"])
    saved = save_preview(exempting, preview, tmp_path, actor="rm")
    assert "Exempted but required by this phase before the exemption" in preview_markdown(saved)
    assert "carol" in required(registry)


def test_the_preview_names_each_exempted_account_as_one_name(
    registry: Registry,
    plan: Plan,
    ids: dict[str, int],
    tmp_path: Path,
    registry_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A username may hold ", " (the registry and the plan allow it): "exempted: bo, di,
    carol" would read as three people exempted. Each name is quoted, as in refusals."""
    from typer.testing import CliRunner

    from rollout.cli import app

    AccountFactory(username="bo, di", in_cohort="top-100")
    exempting = plan.model_copy(
        update={
            "exemptions": Exemptions(
                accounts=[
                    ExemptAccount(username="bo, di", reason="service account"),
                    ExemptAccount(username="carol", reason="security team service account"),
                ]
            )
        }
    )
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(exempting.model_dump_json())
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_PLAN", str(plan_file))
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    enforce.enforce_phase(registry, plan, "top-100", expect=4, actor="rm")
    shown = CliRunner().invoke(app, ["phase", "preview", "top-100"])
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.stderr.split())
    assert "exempted: 'carol', 'bo, di' ('carol', 'bo, di' required by this phase" in said


def test_a_preview_after_enforcement_tells_whom_the_phase_requires_already(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """alice and dave stay on the list once enforced (still without 2FA): the preview
    says the phase requires them already, not that they would be required."""
    before = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    assert [t.required_by_phase for t in before.targets] == [False, False]
    assert (before.required_by_phase, before.newly_required) == (0, 2)
    enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")

    after = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    assert [(t.username, t.required_by_phase) for t in after.targets] == [
        ("alice", True),
        ("dave", True),
    ]
    assert (after.count, after.required_by_phase, after.newly_required) == (2, 2, 0)
    # Another phase's requirement sets the account's flag, not this phase's column.
    other = enforce.preview_phase(
        registry,
        plan_exempting_carol,
        plan_exempting_carol.phase("top-100").model_copy(update={"name": "other"}),
    )
    assert [(t.already_required, t.required_by_phase) for t in other.targets] == [
        (True, False),
        (True, False),
    ]
    saved = save_preview(plan_exempting_carol, after, tmp_path, actor="rm")
    markdown = preview_markdown(saved)
    assert "| of which this phase requires already (enforced) | 2 |" in markdown
    assert "| of which it would newly require | 0 |" in markdown
    header, *rows = saved.csv_path.read_text().splitlines()
    assert ",already_required,required_by_phase," in header
    # Required, by this phase, lacking the factor, no tokens, no own deadline; and no
    # notice was ever sent them (the enforcement email comes after, and warns nobody).
    assert all(row.endswith(",True,True,True,0,,never sent a notice") for row in rows)
    [record] = saved_previews(tmp_path)
    assert (record["required_by_phase"], record["newly_required"]) == (2, 0)

    enforce.rollback_phase(registry, plan_exempting_carol, "top-100", actor="rm")
    rolled_back = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    assert rolled_back.required_by_phase == 0


def test_the_cli_preview_after_enforcement_counts_the_already_required(
    registry: Registry,
    registry_url: str,
    plan_exempting_carol: Plan,
    ids: dict[str, int],
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from rollout.cli import app

    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")
    # The CLI reads the reference plan, which exempts nobody: carol is new to the list.
    result = CliRunner().invoke(app, ["phase", "preview", "top-100", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert (
        "3 accounts without 2FA in cohort top-100: 2 already required by this phase "
        "(enforced), 1 would be newly required;" in " ".join(result.stderr.split())
    )
    assert "would be required to enrol" not in result.stderr
    assert "--apply --expect 3" in result.stderr


def test_a_wrong_expected_count_refuses_and_changes_nothing(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    with pytest.raises(GuardRefused, match="would change 2 accounts, not the 3 expected"):
        enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=3, actor="rm")
    assert required(registry) == set() and count(registry, Action) == 0


def test_another_list_of_the_same_size_refuses_with_the_previewed_fingerprint(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    """alice enrols and frank joins the cohort without 2FA after the preview: still 2
    accounts, but not the 2 approved. The count lets it through; the list does not."""
    approved = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    FactorFactory(account=existing_account(ids["alice"]), kind="totp")
    AccountFactory(username="frank", in_cohort="top-100")
    with pytest.raises(GuardRefused, match="not the ones previewed") as refused:
        enforce.enforce_phase(
            registry,
            plan_exempting_carol,
            "top-100",
            expect=2,
            expect_list=approved.fingerprint,
            actor="rm",
        )
    assert f"not {approved.fingerprint}" in str(refused.value)
    assert required(registry) == set() and count(registry, Action) == 0
    again = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    assert again.count == approved.count and again.fingerprint != approved.fingerprint
    enforce.enforce_phase(
        registry,
        plan_exempting_carol,
        "top-100",
        expect=2,
        expect_list=again.fingerprint.upper(),  # as typed back
        actor="rm",
    )
    assert required(registry) == {"dave", "frank"}


def test_the_blast_radius_limit_refuses(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    phases = [p.model_copy(update={"max_accounts": 1}) for p in plan_exempting_carol.phases]
    small = plan_exempting_carol.model_copy(update={"phases": phases})
    with pytest.raises(GuardRefused, match="over the plan's blast-radius limit of 1"):
        enforce.enforce_phase(registry, small, "top-100", expect=2, actor="rm")
    # Enforced, then the limit lowered: a rerun passes over them again, and says so.
    enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")
    with pytest.raises(
        GuardRefused, match=r"2 accounts \(2 of them required by it already\), over the plan"
    ):
        enforce.enforce_phase(registry, small, "top-100", expect=2, actor="rm")


def test_the_preview_says_the_blast_radius_refuses_it(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """A list over max_accounts is refused whatever count is typed back: the preview and
    the approval's artifact say so, in the guard's words, before anyone approves it."""
    phases = [p.model_copy(update={"max_accounts": 1}) for p in plan_exempting_carol.phases]
    small = plan_exempting_carol.model_copy(update={"phases": phases})
    preview = enforce.preview_phase(registry, small, small.phase("top-100"))
    over = "phase top-100 would change 2 accounts, over the plan's blast-radius limit of 1"
    assert preview.over_blast_radius("accounts") == over
    assert preview.over_blast_radius("tokens") is None
    verdict = preview.blast_radius_verdict()
    assert verdict is not None and over in verdict
    markdown = preview_markdown(save_preview(small, preview, tmp_path, actor="rm"))
    assert "Over the blast radius" in markdown and "limit of 1" in markdown
    with pytest.raises(GuardRefused) as refused:
        enforce.enforce_phase(registry, small, "top-100", expect=2, actor="rm")
    assert str(refused.value) == over
    within = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    assert within.blast_radius_verdict() is None
    markdown = preview_markdown(save_preview(plan_exempting_carol, within, tmp_path, actor="rm"))
    assert "blast radius" not in markdown


def enforcement_notices(registry: Registry) -> dict[str, tuple[str, str | None]]:
    """{username: (state, skip reason)} of the phase top-100's enforcement emails."""
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(Account.username, Notification.state, Notification.skip_reason)
            .join(Account, Account.id == Notification.account_id)
            .where(Notification.phase == "top-100", Notification.email == "enforcement_notice")
        ).all()
    return {username: (state, why) for username, state, why in rows}


def test_enforcement_emails_a_person_withdrew_stay_withdrawn_when_it_runs_again(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    """`notify withdraw` takes back a wrong text for good: the next run of the phase
    (a deadline phase's each day, a rerun) queued it again. What the phase's own
    rollback withdrew is queued again when it is enforced anew: the account is told."""

    def again() -> int:
        return enforce.enforce_phase(
            registry, plan_exempting_carol, "top-100", expect=2, actor="rm"
        ).emails_queued

    assert again() == 2
    taken = withdraw(
        registry,
        Selection(phase="top-100", email="enforcement_notice"),
        reason="wrong text",
        actor="rm",
    )
    assert taken.taken == 2
    withdrawn = {"alice": ("skipped", "withdrawn: wrong text")}
    withdrawn["dave"] = withdrawn["alice"]
    assert again() == 0
    assert enforcement_notices(registry) == withdrawn
    # Rolled back and enforced anew: what the person withdrew stays withdrawn.
    enforce.rollback_phase(registry, plan_exempting_carol, "top-100", actor="rm")
    assert again() == 0
    assert enforcement_notices(registry) == withdrawn
    # Withdrawn by the rollback (never sent): queued again by the next enforcement.
    with registry.engine.begin() as connection:
        connection.execute(
            Notification.__table__.update()
            .where(Notification.email == "enforcement_notice")
            .values(state="queued", skip_reason=None)
        )
    enforce.rollback_phase(registry, plan_exempting_carol, "top-100", actor="rm")
    rolled_back = ("skipped", "withdrawn: phase top-100 rolled back")
    assert enforcement_notices(registry) == {"alice": rolled_back, "dave": rolled_back}
    assert again() == 2
    assert enforcement_notices(registry) == {"alice": ("queued", None), "dave": ("queued", None)}


def test_enforce_flags_revokes_audits_and_queues_once(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    result = enforce.enforce_phase(
        registry, plan_exempting_carol, "top-100", expect=2, actor="rm", batch_size=1
    )
    assert (
        result.accounts_flagged,
        result.sessions_revoked,
        result.emails_queued,
        result.batches,
    ) == (2, 3, 2, 2)
    assert required(registry) == {"alice", "dave"}
    assert [live_sessions(registry, ids[n]) for n in ("alice", "bob", "carol", "dave", "erin")] == [
        0,
        1,
        1,
        0,
        1,
    ]
    assert count(registry, Action, Action.action == "tfa_required") == 2
    assert count(registry, Action, Action.action == "revoke_session") == 3
    assert count(registry, Notification, Notification.email == "enforcement_notice") == 2
    again = enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")
    assert (again.accounts_flagged, again.sessions_revoked, again.emails_queued) == (0, 0, 0)
    assert count(registry, Action, Action.action.in_(["tfa_required", "revoke_session"])) == 5
    assert count(registry, Notification) == 2


def test_a_session_made_after_a_revoked_one_was_deleted_is_revoked_and_audited_too(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """The registry deletes signed-out sessions; the audit keeps their revocations by
    id. A later session never takes such an id: the next run revokes it under an audit
    row of its own, rather than failing on the key the first revocation holds."""
    alice = AccountFactory(username="alice", sessions=1, in_cohort="top-100")
    enforce.enforce_phase(registry, plan, "top-100", expect=1, actor="rm")
    with registry.engine.begin() as connection:
        [revoked] = connection.execute(select(WebSession.id)).scalars()
        connection.execute(text("DELETE FROM web_sessions WHERE id = :id"), {"id": revoked})
    bob = AccountFactory(username="bob", sessions=1, in_cohort="top-100")
    expect = enforce.preview_phase(registry, plan, plan.phase("top-100")).count
    result = enforce.enforce_phase(registry, plan, "top-100", expect=expect, actor="rm")
    assert result.sessions_revoked == 1 and live_sessions(registry, bob.id) == 0
    with registry.engine.connect() as connection:
        audited = connection.execute(
            select(Action.account_id, Action.subject).where(Action.action == "revoke_session")
        ).all()
    [(_, first), (_, second)] = sorted(audited)
    assert sorted(a for a, _ in audited) == [alice.id, bob.id]
    assert first == f"web_session:{revoked}" and second != first


def test_a_crash_between_batches_then_a_rerun_finishes_exactly_once(
    registry: Registry,
    plan_exempting_carol: Plan,
    ids: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real, calls = enforce._enforce_batch, []

    def crash_on_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(enforce, "_enforce_batch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        enforce.enforce_phase(
            registry, plan_exempting_carol, "top-100", expect=2, actor="rm", batch_size=1
        )
    assert required(registry) == {"alice"}
    with registry.engine.connect() as connection:
        interrupted = connection.execute(select(PlanRun.state, PlanRun.summary)).one()
    # Stopped, not failed: `plan show` says interrupted (its lock is free), with what
    # was done, and the rerun finishes it.
    assert interrupted.state == "running"
    assert interrupted.summary["accounts_flagged"] == 1
    from rollout.phases.timeline import step_states

    [stopped] = [s for s in step_states(registry, plan_exempting_carol) if s.run_id]
    assert stopped.state == "interrupted" and "accounts_flagged 1" in stopped.detail
    monkeypatch.setattr(enforce, "_enforce_batch", real)
    enforce.enforce_phase(
        registry, plan_exempting_carol, "top-100", expect=2, actor="rm", batch_size=1
    )
    assert required(registry) == {"alice", "dave"}
    assert count(registry, Action, Action.action == "tfa_required") == 2
    assert count(registry, Action, Action.action == "revoke_session") == 3
    assert count(registry, Notification) == 2


@postgres_only
def test_an_enforcement_whose_run_lock_session_ends_stops_before_its_next_batch(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    """PostgreSQL: the enforce lock is an advisory lock of the lock's session; the
    session ended (a server restart, a pooler, a keepalive timeout), the lock went
    with it, silently, and another enforcement may be at work: no batch more."""

    def end_the_lock_session(done: int, total: int) -> None:
        end_run_lock_session(registry, "enforce")

    with pytest.raises(locks.RunLockLost, match="the enforce run lock was lost"):
        enforce.enforce_phase(
            registry,
            plan_exempting_carol,
            "top-100",
            expect=2,
            actor="rm",
            batch_size=1,
            progress=end_the_lock_session,
        )
    assert required(registry) == {"alice"}  # the first batch, committed before
    enforce.enforce_phase(
        registry, plan_exempting_carol, "top-100", expect=2, actor="rm", batch_size=1
    )
    assert required(registry) == {"alice", "dave"}
    assert count(registry, Action, Action.action == "tfa_required") == 2


@postgres_only
def test_a_rollback_whose_run_lock_session_ends_stops_before_its_next_batch(
    registry: Registry,
    plan_exempting_carol: Plan,
    ids: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As an enforcement: a rollback whose enforce lock went with its PostgreSQL
    session clears no batch more; a rerun finishes what it left."""
    phase = plan_exempting_carol.phase("top-100").model_copy(update={"batch_size": 1})
    plan = plan_exempting_carol.model_copy(update={"phases": [phase]})
    enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
    rollback_batch = enforce._rollback_batch

    batches: list[int] = []

    def then_the_lock_session_ends(*args: Any, **kwargs: Any) -> Any:
        outcome = rollback_batch(*args, **kwargs)
        batches.append(1)
        if len(batches) == 1:
            end_run_lock_session(registry, "enforce")
        return outcome

    monkeypatch.setattr(enforce, "_rollback_batch", then_the_lock_session_ends)
    with pytest.raises(locks.RunLockLost, match="the enforce run lock was lost"):
        enforce.rollback_phase(registry, plan, "top-100", actor="rm")
    assert len(batches) == 1 and len(required(registry)) == 1  # the first, committed
    monkeypatch.setattr(enforce, "_rollback_batch", rollback_batch)
    enforce.rollback_phase(registry, plan, "top-100", actor="rm")
    assert required(registry) == set()
    assert count(registry, Action, Action.action == "tfa_required_cleared") == 2


def test_an_account_deleted_during_the_run_is_neither_acted_on_nor_called_compliant(
    registry: Registry, plan: Plan, factories: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry closes accounts while a run goes through its batches (the preview
    under the run's lock named them): a closed one is skipped as deleted, not counted
    among those that enrolled since, and nothing is recorded of it."""
    alice = AccountFactory(username="alice", sessions=1, in_cohort="top-100")
    bob = AccountFactory(username="bob", sessions=1, in_cohort="top-100")
    real = enforce._enforce_batch

    def bob_closed_first(
        connection: Any, phase: Any, account_ids: list[int], *args: Any, **kw: Any
    ) -> Any:
        if bob.id in account_ids:
            connection.execute(text("DELETE FROM accounts WHERE id = :id"), {"id": bob.id})
        return real(connection, phase, account_ids, *args, **kw)

    monkeypatch.setattr(enforce, "_enforce_batch", bob_closed_first)
    result = enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm", batch_size=1)
    assert (result.accounts_required, result.sessions_revoked, result.emails_queued) == (1, 1, 1)
    assert (result.skipped_deleted, result.skipped_now_compliant) == (1, 0)
    with registry.engine.connect() as connection:
        [summary] = connection.execute(select(PlanRun.summary)).scalars()
        audited = set(connection.execute(select(Action.account_id)).scalars())
    assert summary["skipped_deleted"] == 1 and summary["skipped_now_compliant"] == 0
    assert audited == {alice.id}


def test_an_account_that_enrolled_since_the_preview_is_left_alone(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    FactorFactory(account=existing_account(ids["alice"]), kind="webauthn")
    with registry.engine.begin() as connection:
        run_id = start_run(connection, plan="p", step="s", mode="apply", actor="rm", parameters={})
        outcome = enforce._enforce_batch(
            connection,
            plan_exempting_carol.phase("top-100"),
            [ids["alice"], ids["dave"]],
            run_id,
            "rm",
            datetime(2022, 2, 1),
        )
    assert outcome == enforce.BatchOutcome(
        accounts_required=1,
        accounts_flagged=1,
        sessions_revoked=1,
        # No approved preview's time given: how many signed in since is not known.
        sessions_signed_in_since_preview=None,
        emails_queued=1,
        skipped_now_compliant=1,
    )
    assert live_sessions(registry, ids["alice"]) == 2


def test_rollback_clears_the_flags_but_not_the_revocations(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")
    assert enforce.rollback_preview(registry, "top-100").cleared == [ids["alice"], ids["dave"]]
    cleared = enforce.rollback_phase(
        registry, plan_exempting_carol, "top-100", actor="rm"
    ).accounts_cleared
    assert cleared == 2 and required(registry) == set()
    assert live_sessions(registry, ids["alice"]) == 0
    assert count(registry, Action, Action.action == "tfa_required_cleared") == 2
    again = enforce.rollback_phase(registry, plan_exempting_carol, "top-100", actor="rm")
    assert (again.requirements_withdrawn, again.accounts_cleared) == (0, 0)
    assert count(registry, Action, Action.action == "tfa_required_cleared") == 2


def test_a_phase_never_enforced_is_not_rolled_back(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    """Nothing to undo: refused, no run recorded, and the calendar does not read
    'rolled back'."""
    with pytest.raises(GuardRefused, match="phase high-impact was never enforced"):
        enforce.rollback_phase(registry, plan_exempting_carol, "high-impact", actor="rm")
    assert count(registry, PlanRun) == 0
    states = {s.step.label: s.state for s in step_states(registry, plan_exempting_carol)}
    assert states["phase high-impact enforced"] != "rolled back"


def test_a_second_run_at_once_is_refused(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    with (
        registry.lock("enforce"),
        pytest.raises(GuardRefused, match="another enforce run"),
    ):
        enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")


def test_a_saved_preview_keeps_the_list_and_its_record_and_writes_nothing_to_the_registry(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    preview = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    saved = save_preview(plan_exempting_carol, preview, tmp_path, actor="rm")
    assert saved.csv_path.parent == tmp_path / "previews"
    lines = saved.csv_path.read_text().splitlines()
    assert lines[0] == (
        "account_id,username,email,last_login_at,live_sessions,already_required,"
        "required_by_phase,lacks_factor,tokens_to_revoke,deadline,notice"
    )
    assert [line.split(",")[1] for line in lines[1:]] == ["alice", "dave"]
    [record] = saved_previews(tmp_path)
    assert (record["phase"], record["actor"], record["run_id"]) == ("top-100", "rm", saved.run_id)
    assert record["accounts"] == 2 and record["exempted"] == 1
    assert count(registry, PlanRun) == 0
    markdown = preview_markdown(saved)
    assert "| accounts without 2FA to require it of | 2 |" in markdown
    assert "`alice`" not in markdown and "| alice |" in markdown
    assert "expected count **2**" in markdown and "--apply" not in markdown
    assert "Exempted: 'carol'" in markdown
    assert required(registry) == set() and count(registry, Action) == 0


# Files under reports/previews/ that are not preview records (edited by hand, another
# tool's), each with what plan show says is wrong with it.
NOT_PREVIEW_RECORDS = {
    "a-list.json": ("[1, 2]", "a list, not a JSON object"),
    "a-number-for-a-time.json": ("{}", "'at' is a number, not a string"),
    "a-number-for-its-list.json": ("{}", "'csv' is a number, not a string"),
    "a-path-for-its-list.json": ("{}", "'csv' is not the name of a file beside it"),
    "cut-short.json": ('{"plan": "npm-2022", "at": "2022', "not JSON (line 1:"),
}


def _not_preview_records(folder: Path, record: dict[str, Any]) -> None:
    """Each of NOT_PREVIEW_RECORDS, the broken ones a copy of ``record`` (a real one,
    later, its fingerprint) with one field spoilt."""
    spoilt = {
        "a-number-for-a-time.json": {"at": 1893456000},
        "a-number-for-its-list.json": {"csv": 5, "at": "2030-01-01T00:00:00"},
        "a-path-for-its-list.json": {"csv": "../../../etc/passwd"},
    }
    for name, (content, _) in NOT_PREVIEW_RECORDS.items():
        if name in spoilt:
            content = json.dumps({**record, **spoilt[name]})
        (folder / name).write_text(content)


def test_files_in_the_previews_folder_that_are_not_preview_records_are_skipped_and_named(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """A list, a number for the time or the CSV's name: plan show
    (and an enforcement refusal's "changed since") raised TypeError, a traceback. Each is
    left out, named with what is wrong, and the real preview still read; a record that
    names its list by a path is not followed there."""
    from rollout.phases.previews import changed_since

    phase = plan_exempting_carol.phase("top-100")
    preview = enforce.preview_phase(registry, plan_exempting_carol, phase)
    saved = save_preview(plan_exempting_carol, preview, tmp_path, actor="rm")
    folder = tmp_path / "previews"
    record = json.loads(saved.csv_path.with_suffix(".json").read_text())
    _not_preview_records(folder, record)

    skipped: list[str] = []
    states = step_states(registry, plan_exempting_carol, datetime(2999, 1, 1), tmp_path, skipped)
    [enforced] = [s for s in states if s.step.label == "phase top-100 enforced"]
    assert (enforced.state, enforced.run_id) == ("previewed", saved.run_id)
    assert len(skipped) == len(NOT_PREVIEW_RECORDS)
    for name, (_, why) in NOT_PREVIEW_RECORDS.items():
        [said] = [line for line in skipped if f"{folder / name}:" in line]
        assert why in said, said

    # One account left the list since: named against the real record, not a broken
    # one of the same fingerprint saved later.
    fewer = dataclasses.replace(preview, targets=preview.targets[:1])
    changes = changed_since(tmp_path, fewer, record["fingerprint"])
    assert changes is not None and changes.startswith("since the preview of ")
    assert f"({saved.csv_path.name}): 1 account no longer listed" in changes


def _state(registry: Registry, plan: Plan, what: str, reports: Path | None = None) -> str:
    # Far ahead: every run of the test has happened by then.
    states = step_states(registry, plan, datetime(2999, 1, 1), reports)
    return next(s.state for s in states if s.step.label == what)


def test_plan_show_follows_a_phase_from_pending_to_rolled_back(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    enforced = "phase top-100 enforced"
    assert _state(registry, plan_exempting_carol, enforced, tmp_path) == "pending"
    preview = enforce.preview_phase(
        registry, plan_exempting_carol, plan_exempting_carol.phase("top-100")
    )
    save_preview(plan_exempting_carol, preview, tmp_path, actor="rm")
    assert _state(registry, plan_exempting_carol, enforced, tmp_path) == "previewed"
    enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")
    assert _state(registry, plan_exempting_carol, enforced, tmp_path) == "applied"
    enforce.rollback_phase(registry, plan_exempting_carol, "top-100", actor="rm")
    assert _state(registry, plan_exempting_carol, enforced, tmp_path) == "rolled back"
    assert _state(registry, plan_exempting_carol, "ELV opt-in trial ends") == "passed"
    assert _state(registry, plan_exempting_carol, "every account enrolled in ELV") == "pending"
    assert (
        _state(registry, plan_exempting_carol, "brownout-1: 24 h of ELV for all") == "not scheduled"
    )


def test_plan_show_orders_runs_of_one_instant_as_they_were_recorded(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    """Under a clock that stands still (the demo's), an apply, its rollback and the apply
    after it all start at one instant: ordered by their start alone, the rollback could
    come before the apply (the runs' ids are random), and the apply after a rollback of
    the same instant was no apply at all (plan show failed on it)."""
    plan, enforced = plan_exempting_carol, "phase top-100 enforced"
    with use_clock(SimulatedClock(datetime(2022, 2, 1, 12))):
        first = enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
        back = enforce.rollback_phase(registry, plan, "top-100", actor="rm")
        [step] = [s for s in step_states(registry, plan) if s.step.label == enforced]
        assert (step.state, step.run_id) == ("rolled back", back.run_id)
        again = enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
        [step] = [s for s in step_states(registry, plan) if s.step.label == enforced]
        assert (step.state, step.run_id) == ("applied", again.run_id)
        assert again.run_id != first.run_id


def test_a_re_run_killed_at_the_instant_of_the_apply_leaves_it_applied(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    """What the step did before the re-run is every run recorded before it, those of
    its own instant too: by start alone, the apply was not before it, and the step read
    "interrupted", an enforcement half done."""
    plan = plan_exempting_carol
    with use_clock(SimulatedClock(datetime(2022, 2, 1, 12))):
        applied = enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
        _left_running(registry, plan.name, "phase top-100", "apply", "enforce")
        [step] = [
            s for s in step_states(registry, plan) if s.step.label == "phase top-100 enforced"
        ]
    assert (step.state, step.run_id) == ("applied, re-run interrupted", applied.run_id)


def test_plan_show_tells_an_interrupted_enforce_run_from_a_running_one(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    with registry.engine.begin() as connection:
        start_run(
            connection,
            plan=plan.name,
            step="phase top-100",
            mode="apply",
            actor="rm",
            parameters={},
            lock="enforce",
        )
    assert _state(registry, plan, "phase top-100 enforced") == "interrupted"
    with registry.lock("enforce"):
        assert _state(registry, plan, "phase top-100 enforced") == "running"
    # The runbook's first move after a crash, a preview, does not hide it.
    preview = enforce.preview_phase(registry, plan, plan.phase("top-100"))
    save_preview(plan, preview, tmp_path, actor="rm")
    assert _state(registry, plan, "phase top-100 enforced", tmp_path) == "interrupted"


def _left_running(registry: Registry, plan: str, step: str, mode: str, lock: str) -> str:
    """A plan_runs row as a killed run leaves it: running, its lock free."""
    with registry.engine.begin() as connection:
        return start_run(
            connection, plan=plan, step=step, mode=mode, actor="rm", parameters={}, lock=lock
        )


def _plan_show(registry_url: str, monkeypatch: pytest.MonkeyPatch, *options: str) -> Any:
    """`rollout plan show` on ``registry_url``, which must succeed."""
    from typer.testing import CliRunner

    from rollout.cli import app

    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    result = CliRunner().invoke(app, ["plan", "show", *options])
    assert result.exit_code == 0, result.stderr
    return result


def test_a_re_run_killed_after_the_step_was_applied_leaves_it_applied(
    registry: Registry,
    registry_url: str,
    plan_exempting_carol: Plan,
    ids: dict[str, int],
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The apply's counts stand; the state says a later re-run died, and the hint how
    to finish what it had left. Not "interrupted", read as an enforcement half done."""
    plan = plan_exempting_carol
    applied = enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")
    _left_running(registry, plan.name, "phase top-100", "apply", "enforce")
    [step] = [s for s in step_states(registry, plan) if s.step.label == "phase top-100 enforced"]
    assert (step.state, step.run_id) == ("applied, re-run interrupted", applied.run_id)
    assert "accounts_flagged 2" in step.detail
    hint = " ".join(_plan_show(registry_url, monkeypatch).stderr.split())
    assert f"applied by run {applied.run_id}; a later re-run stopped" in hint
    assert "re-run it to resume" not in hint


def test_plan_show_tells_an_interrupted_rollback_and_how_to_finish_it(
    registry: Registry,
    registry_url: str,
    plan: Plan,
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not "interrupted" with the enforcement's hint: re-running `phase enforce` would
    require again the accounts the rollback had released."""
    _left_running(registry, plan.name, "phase top-100", "rollback", "enforce")
    assert _state(registry, plan, "phase top-100 enforced") == "rollback interrupted"
    result = _plan_show(registry_url, monkeypatch)
    hint = " ".join(result.stderr.split())
    assert "finish it with `rollout phase rollback top-100 --apply`" in hint
    assert "re-run it to resume" not in hint


def test_plan_show_lists_interrupted_runs_of_no_dated_step(
    registry: Registry,
    registry_url: str,
    plan: Plan,
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An org owner's enforcement, a snooze, a cohort build on an undated day: killed,
    they are listed below the calendar, each with its hint; a finished one is not."""
    from rollout.core.calendar import cohorts_step, org_enforcement_step

    org = _left_running(registry, "orgs", org_enforcement_step("acme\x1b[2J"), "apply", "orgs")
    build = _left_running(registry, plan.name, cohorts_step(date(2022, 2, 9)), "apply", "cohorts")
    with registry.lock("enforce"):  # one still at work is not interrupted
        _left_running(registry, "orgs", org_enforcement_step("busy"), "apply", "enforce")
    with registry.lock("enforce"):
        result = _plan_show(registry_url, monkeypatch, "--format", "json")
    listed = {row["run"]: row for row in json.loads(result.stdout) if row["run"] in (org, build)}
    assert {row["state"] for row in listed.values()} == {"interrupted"}
    assert len(listed) == 2
    assert "busy" not in result.stdout
    hints = result.stderr.splitlines()
    assert f"enforce acme\\x1b[2J: run {org} stopped before finishing" in result.stderr
    assert not any("\x1b" in line for line in hints)  # the org's name stays data
    assert any(line.startswith(f"cohorts 2022-02-09: run {build}") for line in hints)


def test_a_killed_elv_enrolment_is_listed_under_a_plan_without_elv(registry: Registry) -> None:
    from rollout.core.calendar import ENROLL_ALL_STEP
    from rollout.core.plan import load_plan
    from rollout.phases.brownouts import ELV_PLAN
    from rollout.phases.timeline import interrupted_off_calendar

    github = load_plan(Path(__file__).parent.parent / "plans" / "github-2023.yaml")
    assert github.elv is None  # no ELV section: no dated enrolment step
    killed = _left_running(registry, ELV_PLAN, ENROLL_ALL_STEP, "apply", "elv")
    _left_running(registry, "npm-2022", "notices top-100", "apply", "queue")  # another plan's
    assert [run.id for run in interrupted_off_calendar(registry, github)] == [killed]


def test_the_timeline_is_in_calendar_order(plan: Plan) -> None:
    steps = plan_steps(plan)
    assert [s.on for s in steps] == sorted(s.on for s in steps)
    whats = [s.label for s in steps]
    assert whats.index("phase top-100 notices") < whats.index(
        "phase top-100 reminders (14 days before)"
    )
    assert whats[-1] == "phase high-impact enforced"


def test_plan_show_at_a_past_time_ignores_the_runs_that_came_after(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int]
) -> None:
    enforce.enforce_phase(registry, plan_exempting_carol, "top-100", expect=2, actor="rm")
    enforce.enforce_phase(
        registry, plan_exempting_carol, "top-100", expect=2, actor="rm"
    )  # a no-op rerun
    now = {s.step.label: s for s in step_states(registry, plan_exempting_carol)}
    enforced = now["phase top-100 enforced"]
    assert enforced.state == "applied" and "accounts_flagged 2" in enforced.detail
    before = step_states(registry, plan_exempting_carol, datetime(2022, 2, 2))
    # Not top-100's enforcement of 02-01 (its runs came later); its notice and reminders,
    # never queued, with their last days gone: missed, not pending for good.
    states = {s.step.label: s.state for s in before if s.step.key}
    assert states["phase top-100 enforced"] == "pending"
    assert states["phase top-100 notices"] == "missed"
    assert set(states.values()) == {"pending", "missed", "not scheduled"}


def test_different_run_kinds_do_not_block_each_other(registry: Registry) -> None:
    with registry.lock("enforce"), registry.lock("notify"):
        pass


def test_the_same_database_reached_through_a_symlink_takes_the_same_lock(tmp_path: Path) -> None:
    real = tmp_path / "data" / "registry.db"
    real.parent.mkdir()
    upgrade(make_engine(f"sqlite:///{real}"))
    (tmp_path / "registry.db").symlink_to(real)
    with (
        Registry(f"sqlite:///{real}").lock("enforce"),
        pytest.raises(GuardRefused, match="another enforce run"),
        Registry(f"sqlite:///{tmp_path / 'registry.db'}").lock("enforce"),
    ):
        pass


def test_a_lock_given_back_is_free_everywhere_whatever_the_run_did(registry: Registry) -> None:
    """On PostgreSQL a registry keeps its lock connections from one run to the next:
    one goes back to the pool only with its lock given back, after a run that failed
    too, and a run of the same kind is refused while any other holds it."""
    for _ in range(3):
        with registry.lock("enforce"):
            pass
    with pytest.raises(RuntimeError, match="the run failed"), registry.lock("enforce"):
        raise RuntimeError("the run failed")
    with Registry(registry.url) as elsewhere:
        with (
            elsewhere.lock("enforce"),
            pytest.raises(GuardRefused, match="another enforce run"),
            registry.lock("enforce"),
        ):
            pass
        assert not registry.lock_held("enforce")
        with registry.lock("enforce"):
            with pytest.raises(GuardRefused), elsewhere.lock("enforce"):
                pass
            # The same registry is refused too: its second run would be a second run.
            with pytest.raises(GuardRefused), registry.lock("enforce"):
                pass


def test_a_lock_connection_back_in_the_pool_holds_no_lock(postgres_schema_url: str) -> None:
    """Should a pooled lock connection return still holding its lock (a run stopped
    between taking it and the code that gives it back), it gives it back on return."""
    engine = make_engine(postgres_schema_url)
    upgrade(engine)
    engine.dispose()
    with Registry(postgres_schema_url) as registry:
        _lock_given_back_on_return(registry)


def test_a_rerun_waits_a_moment_for_the_lock_of_a_run_just_killed(
    postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run's advisory lock goes only when its server process has seen the
    connection close: a rerun started at once waits that moment out (LOCK_SETTLE_SECONDS)
    rather than be refused; a lock held longer is refused after it."""
    monkeypatch.setattr(locks, "LOCK_SETTLE_SECONDS", 1.0)
    engine = make_engine(postgres_schema_url)
    upgrade(engine)
    engine.dispose()
    holder = make_lock_engine(postgres_schema_url)
    try:
        with Registry(postgres_schema_url) as registry:
            connection = holder.connect()
            key = _advisory_key(connection, "enforce")
            connection.execute(text("select pg_advisory_lock(:k)"), {"k": key})
            letting_go = threading.Timer(0.3, connection.close)  # the old run's backend exits
            letting_go.start()
            started = time.monotonic()
            with registry.lock("enforce"):
                waited = time.monotonic() - started
            letting_go.join()
            assert 0.2 < waited < 1.0
            with holder.connect() as still_running:
                still_running.execute(text("select pg_advisory_lock(:k)"), {"k": key})
                started = time.monotonic()
                with (
                    pytest.raises(GuardRefused, match="another enforce run"),
                    registry.lock("enforce"),
                ):
                    pass
                assert time.monotonic() - started >= 1.0
                still_running.execute(text("select pg_advisory_unlock(:k)"), {"k": key})
    finally:
        holder.dispose()


def _lock_given_back_on_return(registry: Registry) -> None:
    engine = make_lock_engine(registry.url)
    try:
        with engine.connect() as connection:
            key = _advisory_key(connection, "enforce")
            connection.execute(text("select pg_advisory_lock(:k)"), {"k": key})
            assert registry.lock_held("enforce")
        assert not registry.lock_held("enforce")  # back in the pool, the lock went
        with registry.lock("enforce"):
            pass
    finally:
        engine.dispose()


def test_the_preview_of_a_phase_recommending_keys_says_it_acted_on_them_not_required_them(
    registry: Registry,
    registry_url: str,
    plan_exempting_carol: Plan,
    ids: dict[str, int],
    rollout_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A banner and new TOTP set-ups closed to the accounts without a security key: it
    requires nothing of their logins (its emails recommend), so after it was applied its
    preview counts the accounts it acted on already, not "requires already": in the
    saved Markdown and in what `phase preview` tells the release manager."""
    from typer.testing import CliRunner

    from rollout.cli import app
    from rollout.core.plan import Requirements
    from tests.conftest import REFERENCE_PLAN

    phase = plan_exempting_carol.phase("top-100").model_copy(
        update={
            "requires": Requirements(two_factor="phishing_resistant"),
            "effects": ["warn", "close_totp_enrolment"],
        }
    )
    keys = plan_exempting_carol.model_copy(update={"phases": [phase]})
    enforce.enforce_phase(registry, keys, "top-100", expect=3, actor="rm")
    after = enforce.preview_phase(registry, keys, phase)
    assert (after.count, after.required_by_phase, after.newly_required) == (3, 3, 0)
    markdown = preview_markdown(save_preview(keys, after, tmp_path, actor="rm"))
    assert "| of which this phase acts on already (enforced) | 3 |" in markdown
    assert "| of which it would newly act on | 0 |" in markdown
    assert "requires already" not in markdown and "newly require" not in markdown
    # The same phase in a plan file, which exempts nobody: carol is new to the list.
    text = REFERENCE_PLAN.read_text()
    assert "    max_accounts: 1000\n" in text
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        text.replace(
            "    max_accounts: 1000\n",
            "    max_accounts: 1000\n    requires: {two_factor: phishing_resistant}\n"
            "    effects: [warn, close_totp_enrolment]\n",
            1,
        )
    )
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_PLAN", str(keys_file))
    result = CliRunner().invoke(app, ["phase", "preview", "top-100", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert ": 3 already acted on by this phase (enforced), 1 would be newly acted on" in said, said
    assert "already required" not in said and "newly required" not in said


def test_plan_show_and_the_summary_say_a_recommending_phase_acted_on_its_accounts(
    registry: Registry, plan_exempting_carol: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """The banner and TOTP set-ups closed, applied: plan show read "accounts_required 3"
    and the release managers' summary "accounts required 3" of a phase that requires
    nothing of anyone's login (its emails recommend, its preview says "acted on"). Both
    say ``accounts_acted_on``; the run's stored summary keeps its key (older runs have
    it too), and a phase requiring 2FA keeps ``accounts_required``."""
    from rollout.core.plan import Requirements
    from rollout.notify.emails import Recipient, phase_summary
    from rollout.notify.render import render

    phase = plan_exempting_carol.phase("top-100").model_copy(
        update={
            "requires": Requirements(two_factor="phishing_resistant"),
            "effects": ["warn", "close_totp_enrolment"],
        }
    )
    keys = plan_exempting_carol.model_copy(update={"phases": [phase]})
    result = enforce.enforce_phase(registry, keys, "top-100", expect=3, actor="rm")
    states = step_states(registry, keys, datetime(2999, 1, 1), tmp_path)
    [applied] = [s for s in states if s.step.label == "phase top-100 enforced"]
    assert "accounts_acted_on 3" in applied.detail
    assert "accounts_required" not in applied.detail
    with registry.engine.connect() as connection:
        stored = connection.execute(
            select(PlanRun.summary).where(PlanRun.id == result.run_id)
        ).scalar_one()
    assert stored["accounts_required"] == 3  # as stored, for scripts and older runs
    manager = Recipient(9, "rm", "rm@example.com", True, "webauthn")
    summary = {"phase": "top-100", "counts": stored, "run_id": result.run_id}
    rendered = render("phase_summary", manager, summary, keys)
    assert "accounts acted on" in rendered.text and "accounts required" not in rendered.text
    assert "accounts acted on" in rendered.html and "accounts required" not in rendered.html
    assert rendered.subject.startswith("Phase top-100 enforced: 3 accounts short of its")
    required = render("phase_summary", manager, summary, plan_exempting_carol)
    assert "accounts required" in required.text
    assert phase_summary(manager, summary, plan_exempting_carol)["counts"] == stored

"""Which applied phases require 2FA of an account, when cohorts overlap.

An account is required while at least one applied (not rolled back) phase requires
it; rolling a phase back clears exactly the accounts no other applied phase still
requires, says so in its preview, and audits both directions. On SQLite and
PostgreSQL, with worked cases and random sequences of enforce, rollback and enrolment.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select, update

from rollout.core.errors import GuardRefused
from rollout.core.plan import Plan
from rollout.phases import enforce
from rollout.phases.timeline import step_states
from rollout.registry import Registry
from rollout.registry.ledger import finish_run, start_run
from rollout.registry.locks import LOCK_SETTLE_SECONDS
from rollout.registry.migrate import downgrade, upgrade
from rollout.registry.models import (
    Account,
    Action,
    CohortMembership,
    Notification,
    PhaseRequirement,
    PlanRun,
    TfaFactor,
)
from tests.conftest import REFERENCE_PLAN
from tests.factories import AccountFactory, FactorFactory

PHASES = ("p1", "p2", "p3")


@pytest.fixture
def three_phase_plan(plan: Plan) -> Plan:
    """Three phases over three cohorts named like them, in small batches."""
    template = plan.phases[0]
    return plan.model_copy(
        update={
            "phases": [
                template.model_copy(update={"name": name, "cohort": name, "batch_size": 2})
                for name in PHASES
            ]
        }
    )


def required(registry: Registry) -> set[int]:
    with registry.engine.connect() as connection:
        return set(
            connection.scalars(select(Account.id).where(Account.tfa_required_at.is_not(None)))
        )


def requirements(registry: Registry) -> set[tuple[int, str]]:
    with registry.engine.connect() as connection:
        return {
            (a, p)
            for a, p in connection.execute(
                select(PhaseRequirement.account_id, PhaseRequirement.phase)
            )
        }


def actions(registry: Registry, action: str) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(Action).where(Action.action == action)
        ).scalar_one()


def built(registry: Registry, plan: Plan, *cohorts: str) -> None:
    """Record a cohort build of ``cohorts`` on 2022-01-03: one that found no one is a
    cohort of none (a cohort never built is refused by the preview)."""
    with registry.engine.begin() as connection:
        run_id = start_run(
            connection,
            plan=plan.name,
            step="cohorts 2022-01-03",
            mode="apply",
            actor="rm",
            parameters={"as_of": "2022-01-03", "cohorts": list(cohorts)},
        )
        finish_run(connection, run_id, state="succeeded", summary={})


def run(registry: Registry, plan: Plan, phase: str) -> enforce.EnforceResult:
    count = enforce.preview_phase(registry, plan, plan.phase(phase)).count
    return enforce.enforce_phase(registry, plan, phase, expect=count, actor="rm")


@pytest.fixture
def overlap(factories: None) -> dict[str, set[int]]:
    """p1's cohort: 4 without 2FA and one with; p2's: 3 of p1's without 2FA and 2 of
    its own, one with 2FA: the shape of top-100 inside high-impact."""
    shared = [AccountFactory(in_cohort=["p1", "p2"]).id for _ in range(3)]
    only_p1 = [AccountFactory(in_cohort="p1").id]
    only_p2 = [AccountFactory(in_cohort="p2", sessions=1).id for _ in range(2)]
    AccountFactory(with_totp=True, in_cohort=["p1", "p2"])
    return {"shared": set(shared), "only_p1": set(only_p1), "only_p2": set(only_p2)}


def test_rolling_back_one_of_two_overlapping_phases_keeps_what_the_other_requires(
    registry: Registry, three_phase_plan: Plan, overlap: dict[str, set[int]]
) -> None:
    first = run(registry, three_phase_plan, "p1")
    assert (first.accounts_required, first.accounts_flagged) == (4, 4)
    second = run(registry, three_phase_plan, "p2")
    # p2 requires all five of its accounts without 2FA, though only two are new flags.
    assert (second.accounts_required, second.accounts_flagged) == (5, 2)
    assert actions(registry, "tfa_required") == 9

    preview = enforce.rollback_preview(registry, "p1")
    assert set(preview.cleared) == overlap["only_p1"]
    assert {a.account_id for a in preview.kept} == overlap["shared"]
    assert all(a.still_required_by == ("p2",) for a in preview.kept)

    result = enforce.rollback_phase(registry, three_phase_plan, "p1", actor="rm")
    assert (result.requirements_withdrawn, result.accounts_cleared) == (4, 1)
    assert required(registry) == overlap["shared"] | overlap["only_p2"]
    assert actions(registry, "tfa_required_withdrawn") == 4
    assert actions(registry, "tfa_required_cleared") == 1
    states = {s.step.key: s.state for s in step_states(registry, three_phase_plan)}
    assert states["phase p1"] == "rolled back" and states["phase p2"] == "applied"


def test_rolling_back_every_phase_clears_every_requirement(
    registry: Registry, three_phase_plan: Plan, overlap: dict[str, set[int]]
) -> None:
    run(registry, three_phase_plan, "p1")
    enforce.rollback_phase(registry, three_phase_plan, "p1", actor="rm")
    run(registry, three_phase_plan, "p2")
    assert required(registry) == overlap["shared"] | overlap["only_p2"]
    result = enforce.rollback_phase(registry, three_phase_plan, "p2", actor="rm")
    assert (result.requirements_withdrawn, result.accounts_cleared) == (5, 5)
    assert required(registry) == set() and requirements(registry) == set()


def test_a_rollback_withdraws_the_emails_its_enforcement_queued_and_has_not_sent(
    registry: Registry, three_phase_plan: Plan, overlap: dict[str, set[int]]
) -> None:
    run(registry, three_phase_plan, "p1")
    run(registry, three_phase_plan, "p2")
    with registry.engine.begin() as connection:
        # One of p1's notices already went out: it stays as it is.
        sent = connection.scalars(
            select(Notification.id).where(Notification.phase == "p1").limit(1)
        ).one()
        connection.execute(update(Notification).where(Notification.id == sent).values(state="sent"))
    assert enforce.rollback_preview(registry, "p1").queued_emails == 3
    assert (
        enforce.rollback_phase(registry, three_phase_plan, "p1", actor="rm").emails_withdrawn == 3
    )
    with registry.engine.connect() as connection:
        by_state = dict(
            connection.execute(
                select(Notification.state, func.count())
                .where(Notification.phase == "p1")
                .group_by(Notification.state)
            ).all()
        )
        reasons = set(
            connection.scalars(
                select(Notification.skip_reason).where(Notification.state == "skipped")
            )
        )
        p2_queued = connection.execute(
            select(func.count())
            .select_from(Notification)
            .where(Notification.phase == "p2", Notification.state == "queued")
        ).scalar_one()
    assert by_state == {"sent": 1, "skipped": 3}
    assert reasons == {"withdrawn: phase p1 rolled back"}
    assert p2_queued == 5


def enforcement_emails(registry: Registry, phase: str) -> dict[int, str]:
    with registry.engine.connect() as connection:
        return dict(
            connection.execute(
                select(Notification.account_id, Notification.state).where(
                    Notification.phase == phase, Notification.email == "enforcement_notice"
                )
            ).all()
        )


def test_a_rollback_killed_between_batches_has_withdrawn_every_unsent_email_already(
    registry: Registry,
    three_phase_plan: Plan,
    overlap: dict[str, set[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The emails are withdrawn before the first batch: killed after it, the next send
    must not tell the accounts it released that 2FA is now required."""
    run(registry, three_phase_plan, "p1")
    released = required(registry)
    first_batch = enforce._rollback_batch

    def killed_after_one(*args: object, **kwargs: object) -> tuple[int, int, int]:
        monkeypatch.setattr(enforce, "_rollback_batch", dying)
        return first_batch(*args, **kwargs)

    def dying(*args: object, **kwargs: object) -> tuple[int, int, int]:
        raise KeyboardInterrupt  # a kill, as far as this process goes

    monkeypatch.setattr(enforce, "_rollback_batch", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        enforce.rollback_phase(registry, three_phase_plan, "p1", actor="rm")
    assert 0 < len(released - required(registry)) < len(released)  # one batch of two
    assert set(enforcement_emails(registry, "p1").values()) == {"skipped"}


def test_enforcing_again_after_a_rollback_tells_the_accounts_again(
    registry: Registry, three_phase_plan: Plan, overlap: dict[str, set[int]]
) -> None:
    """The rollback withdrew the enforcement emails before they went: enforced anew, the
    accounts must hear of it (the withdrawn row is not an email already given)."""
    run(registry, three_phase_plan, "p1")
    enforce.rollback_phase(registry, three_phase_plan, "p1", actor="rm")
    assert set(enforcement_emails(registry, "p1").values()) == {"skipped"}
    again = run(registry, three_phase_plan, "p1")
    assert again.emails_queued == 4
    assert set(enforcement_emails(registry, "p1").values()) == {"queued"}
    with registry.engine.connect() as connection:
        reasons = set(
            connection.scalars(
                select(Notification.skip_reason).where(Notification.phase == "p1").distinct()
            )
        )
    assert reasons == {None}


def _reset(registry: Registry) -> None:
    with registry.engine.begin() as connection:
        for table in (PhaseRequirement, Notification, CohortMembership, TfaFactor, PlanRun):
            connection.execute(delete(table))
        connection.execute(update(Account).values(tfa_required_at=None))


operations = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["enforce", "rollback"]), st.sampled_from(PHASES)),
        st.tuples(st.just("enrol"), st.integers(0, 7)),
    ),
    min_size=1,
    max_size=8,
)
cohorts = st.lists(st.sets(st.sampled_from(PHASES)), min_size=8, max_size=8)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(memberships=cohorts, steps=operations)
def test_required_means_some_applied_phase_requires_it(
    registry: Registry,
    three_phase_plan: Plan,
    factories: None,
    memberships: list[set[str]],
    steps: list[tuple[str, object]],
) -> None:
    with registry.engine.connect() as connection:
        accounts = list(connection.scalars(select(Account.id).order_by(Account.id)))
    if not accounts:
        accounts = [AccountFactory().id for _ in range(8)]
    _reset(registry)
    built(registry, three_phase_plan, *PHASES)
    with registry.engine.begin() as connection:
        for account_id, names in zip(accounts, memberships, strict=True):
            for name in names:
                connection.execute(
                    CohortMembership.__table__.insert().values(
                        cohort=name,
                        account_id=account_id,
                        packages=["pkg"],
                        first_qualified_on=datetime(2022, 1, 3).date(),
                        last_qualified_on=datetime(2022, 1, 3).date(),
                    )
                )
    enrolled: set[int] = set()
    applied: dict[str, set[int]] = {}  # phase -> the accounts it requires
    enforced: set[str] = set()  # phases an enforcement ever ran for
    for what, arg in steps:
        if what == "enrol":
            account_id = accounts[int(arg)]  # type: ignore[call-overload]
            if account_id not in enrolled:
                FactorFactory(account_id=account_id, account=None)
                enrolled.add(account_id)
        elif what == "enforce":
            phase = str(arg)
            cohort = {a for a, names in zip(accounts, memberships, strict=True) if phase in names}
            before = applied.get(phase, set())
            result = run(registry, three_phase_plan, phase)
            enforced.add(phase)
            applied[phase] = before | (cohort - enrolled)
            assert result.accounts_required == len(applied[phase] - before)
        elif str(arg) not in enforced:  # nothing to roll back: refused, nothing recorded
            with pytest.raises(GuardRefused, match="never enforced"):
                enforce.rollback_phase(registry, three_phase_plan, str(arg), actor="rm")
        else:
            phase = str(arg)
            mine = applied.pop(phase, set())
            others = set().union(*applied.values()) if applied else set()
            preview = enforce.rollback_preview(registry, phase)
            assert set(preview.cleared) == mine - others
            result = enforce.rollback_phase(registry, three_phase_plan, phase, actor="rm")
            assert result.requirements_withdrawn == len(mine)
            assert result.accounts_cleared == len(mine - others)
        required_accounts = set().union(*applied.values()) if applied else set()
        assert required(registry) == required_accounts
        assert requirements(registry) == {(a, p) for p, ids in applied.items() for a in ids}


def test_the_migration_rebuilds_requirements_from_what_enforcement_left(
    registry: Registry, three_phase_plan: Plan, overlap: dict[str, set[int]]
) -> None:
    """A registry enforced before revision 0005 has no requirement rows: upgrading
    rebuilds them from the audit rows and emails each enforcement left."""
    run(registry, three_phase_plan, "p1")
    run(registry, three_phase_plan, "p2")
    built(registry, three_phase_plan, "p3")
    run(registry, three_phase_plan, "p3")  # an empty cohort: requires nobody
    enforce.rollback_phase(registry, three_phase_plan, "p1", actor="rm")
    run(registry, three_phase_plan, "p1")
    enforce.rollback_phase(registry, three_phase_plan, "p2", actor="rm")
    expected = requirements(registry)
    assert expected == {(a, "p1") for a in overlap["shared"] | overlap["only_p1"]}
    downgrade(registry.engine, "0004")
    upgrade(registry.engine)
    assert requirements(registry) == expected


# Enrols one account, then kills its own process the way SIGKILL or the OOM killer
# would: no cleanup, the run's row left 'running'.
ENROL_AND_DIE = """
import os, signal, sys
from rollout.core.plan import load_plan
from rollout.phases.brownouts import enroll_all
from rollout.registry import Registry
enroll_all(Registry(sys.argv[1]), load_plan(sys.argv[2]), actor="ops", batch_size=1,
           progress=lambda done, total: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_killed_elv_enrolment_shows_interrupted_then_finishes(
    registry: Registry, registry_url: str, three_phase_plan: Plan, factories: None
) -> None:
    for _ in range(3):
        AccountFactory()
    child = subprocess.run(
        [sys.executable, "-c", ENROL_AND_DIE, registry_url, str(REFERENCE_PLAN)],
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL

    def state() -> str:
        states = step_states(registry, three_phase_plan)
        return next(s.state for s in states if s.step.key == "enroll all")

    # PostgreSQL lets a killed client's advisory lock go when its server process
    # notices the closed connection: a moment after the kill, longer on a busy
    # server (LOCK_SETTLE_SECONDS). Until then the run is, to the server, at work.
    deadline = time.monotonic() + 5 * LOCK_SETTLE_SECONDS
    while state() == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state() == "interrupted"
    from rollout.phases.brownouts import enroll_all

    assert enroll_all(registry, three_phase_plan, actor="ops", batch_size=1) == 2
    assert state() == "applied"


def test_a_second_enforcement_at_the_same_instant_audits_only_its_own_sessions(
    registry: Registry, three_phase_plan: Plan, factories: None
) -> None:
    """Under a clock that stands still (the demo's simulated one), enforce, roll back
    and enforce again in the same instant: the second run revokes and audits the one
    session signed in since, not again those the first revoked at that instant."""
    from rollout.core.clock import SimulatedClock, use_clock
    from tests.factories import SessionFactory

    first_ids = [AccountFactory(in_cohort="p1", sessions=1).id for _ in range(3)]
    with use_clock(SimulatedClock(datetime(2022, 2, 1, 10))):
        assert run(registry, three_phase_plan, "p1").sessions_revoked == 3
        enforce.rollback_phase(registry, three_phase_plan, "p1", actor="rm")
        SessionFactory(account_id=first_ids[0])  # signed in again, same instant
        again = run(registry, three_phase_plan, "p1")
    assert again.sessions_revoked == 1
    assert actions(registry, "revoke_session") == 4  # once per session, each its own

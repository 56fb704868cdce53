"""The longest names the registry and a plan allow fit every column they are written to.

SQLite ignores VARCHAR lengths; PostgreSQL enforces them, so these matter there: an
org name of 214 characters (the registry's limit for names) was once impossible to
enforce, ``org:<name>`` not fitting ``notifications.phase``.
"""

from __future__ import annotations

from sqlalchemy import func, select

from rollout.core.plan import Plan
from rollout.notify.withdraw import Selection, withdraw
from rollout.phases import enforce, orgs
from rollout.registry import Registry
from rollout.registry.models import Account, Action, Notification, PlanRun
from tests.factories import AccountFactory, OrgFactory, OrgMemberFactory

REGISTRY_NAME_LIMIT = 214  # npm's limit for package, scope and user names
PLAN_NAME_LIMIT = 100  # rollout.core.names.SAFE_NAME_PATTERN


def test_an_org_with_the_longest_allowed_name_can_be_enforced(
    registry: Registry, factories: None
) -> None:
    name = "o" * REGISTRY_NAME_LIMIT
    org = OrgFactory(name=name)
    owner = AccountFactory(username="a" * REGISTRY_NAME_LIMIT, with_webauthn=True)
    OrgMemberFactory(org=org, account=owner, role="owner")
    member = AccountFactory(username="b" * REGISTRY_NAME_LIMIT)
    OrgMemberFactory(org=org, account=member)

    result = orgs.enforce_org(registry, name, confirm=name, owner=owner.username, actor="x")

    assert result.removed == [member.username]
    with registry.engine.connect() as connection:
        phases = set(connection.scalars(select(Notification.phase)))
        steps = set(connection.scalars(select(PlanRun.step)))
    assert phases == {f"org:{name}"} and steps == {f"enforce {name}"}


def test_a_phase_and_cohort_with_the_longest_allowed_names_enforce_and_roll_back(
    registry: Registry, plan: Plan, factories: None
) -> None:
    name = "p" * PLAN_NAME_LIMIT
    long_named = plan.model_copy(
        update={"phases": [plan.phases[0].model_copy(update={"name": name, "cohort": name})]}
    )
    AccountFactory(username="u" * REGISTRY_NAME_LIMIT, in_cohort=name, sessions=1)

    enforced = enforce.enforce_phase(registry, long_named, name, expect=1, actor="rm")
    rolled_back = enforce.rollback_phase(registry, long_named, name, actor="rm")

    assert (enforced.accounts_required, enforced.sessions_revoked) == (1, 1)
    assert rolled_back.accounts_cleared == 1
    with registry.engine.connect() as connection:
        assert (
            connection.execute(
                select(func.count()).select_from(Account).where(Account.tfa_required_at.is_(None))
            ).scalar_one()
            == 1
        )


def test_the_emails_of_an_org_with_the_longest_allowed_name_can_be_withdrawn(
    registry: Registry, factories: None
) -> None:
    """`notify withdraw --phase org:<name>` audits the withdrawal under that phase: 218
    characters, which actions.phase (100) did not hold on PostgreSQL, so the withdrawal
    failed with a traceback and the org's emails stayed queued, to be sent."""
    name = "o" * REGISTRY_NAME_LIMIT
    org = OrgFactory(name=name)
    owner = AccountFactory(username="a" * REGISTRY_NAME_LIMIT, with_webauthn=True)
    OrgMemberFactory(org=org, account=owner, role="owner")
    OrgMemberFactory(org=org, account=AccountFactory(username="b" * REGISTRY_NAME_LIMIT))
    orgs.enforce_org(registry, name, confirm=name, owner=owner.username, actor="x")

    withdrawn = withdraw(
        registry,
        Selection(phase=f"org:{name}"),
        reason="the org changed its mind",
        actor="rm",
    )

    assert withdrawn.taken == 2  # the removed member's notice and the owner's summary
    with registry.engine.connect() as connection:
        states = set(connection.scalars(select(Notification.state)))
        [audited] = connection.execute(
            select(Action.phase, Action.details).where(Action.action == "emails_withdrawn")
        ).all()
    assert states == {"skipped"}
    assert audited.phase == f"org:{name}" and audited.details["count"] == 2

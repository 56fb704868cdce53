"""Org 2FA enforcement on SQLite and PostgreSQL: audit, owner guard, confirm, removals."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from rollout.core.errors import BadInput, GuardRefused
from rollout.phases import orgs
from rollout.registry import Registry
from rollout.registry.models import Account, Action, Notification, Org
from tests.factories import AccountFactory, OrgFactory, OrgMemberFactory


@pytest.fixture
def acme(factories: None) -> dict[str, int]:
    """owner ada (WebAuthn), owner bo (none), admin cy (TOTP), developers di (none) and
    ed (none, already removed)."""
    people = {
        "ada": AccountFactory(username="ada", with_webauthn=True),
        "bo": AccountFactory(username="bo"),
        "cy": AccountFactory(username="cy", with_totp=True),
        "di": AccountFactory(username="di"),
        "ed": AccountFactory(username="ed"),
    }
    org = OrgFactory(name="acme")
    for name, role in (
        ("ada", "owner"),
        ("bo", "owner"),
        ("cy", "admin"),
        ("di", "developer"),
        ("ed", "developer"),
    ):
        OrgMemberFactory(org=org, account=people[name], role=role, removed=name == "ed")
    return {name: account.id for name, account in people.items()}


def test_audit_lists_current_members_with_status(registry: Registry, acme: dict[str, int]) -> None:
    members = orgs.audit_org(registry, "acme")
    assert [(m.username, m.role, m.tfa_status) for m in members] == [
        ("ada", "owner", "webauthn"),
        ("bo", "owner", "none"),
        ("cy", "admin", "totp"),
        ("di", "developer", "none"),
    ]
    assert [m.username for m in orgs.enforcement_preview(registry, "acme")] == ["bo", "di"]
    with pytest.raises(BadInput, match="no org named 'nope'"):
        orgs.audit_org(registry, "nope")


def test_enforce_needs_the_name_typed_back(registry: Registry, acme: dict[str, int]) -> None:
    with pytest.raises(GuardRefused, match="--confirm acme"):
        orgs.enforce_org(registry, "acme", confirm="acne", owner="ada", actor="t")


def test_an_owner_without_2fa_cannot_turn_it_on(registry: Registry, acme: dict[str, int]) -> None:
    with pytest.raises(GuardRefused, match="bo has no 2FA"):
        orgs.enforce_org(registry, "acme", confirm="acme", owner="bo", actor="t")
    with pytest.raises(GuardRefused, match="cy is not an owner"):
        orgs.enforce_org(registry, "acme", confirm="acme", owner="cy", actor="t")


def test_enforce_removes_members_without_2fa_once(registry: Registry, acme: dict[str, int]) -> None:
    result = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert (result.removed, result.owners_notified, result.already_enforced) == (
        ["bo", "di"],
        1,
        False,
    )
    assert [m.username for m in orgs.audit_org(registry, "acme")] == ["ada", "cy"]
    with registry.engine.connect() as connection:
        assert connection.execute(select(Org.tfa_enforced_at)).scalar_one() is not None
        emails = sorted(
            connection.execute(
                select(Notification.email, Account.username).join(
                    Account, Account.id == Notification.account_id
                )
            ).all()
        )
        audit = sorted(connection.execute(select(Action.action, Action.account_id)).all())
    assert emails == [
        ("org_enforcement_summary", "ada"),
        ("org_removal_notice", "bo"),
        ("org_removal_notice", "di"),
    ]
    assert audit == sorted(
        [
            ("org_tfa_enforced", acme["ada"]),
            ("org_member_removed", acme["bo"]),
            ("org_member_removed", acme["di"]),
        ]
    )
    again = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert (again.removed, again.already_enforced) == ([], True)
    with registry.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(Action)).scalar_one() == 3

"""Org 2FA enforcement: what an org owner audits and turns on.

``audit_org`` lists every current member with its 2FA status and method.
``enforce_org`` turns enforcement on for an org: only an owner who uses 2FA may, only
after the org's name is typed back, and then every current member without 2FA is
removed (with a notice), the owners get a summary, and every effect is audited once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, case, func, select, update

from rollout.core.calendar import org_enforcement_step
from rollout.core.errors import BadInput, GuardRefused
from rollout.registry import Registry
from rollout.registry.ledger import (
    insert_ignoring_existing,
    record_actions,
    recorded_run,
    utc_now,
)
from rollout.registry.models import (
    Account,
    Notification,
    Org,
    OrgMember,
    TfaFactor,
    has_active_factor,
)

ORGS = Org.__table__
MEMBERS = OrgMember.__table__
NOTIFICATIONS = Notification.__table__
REMOVAL_EMAIL = "org_removal_notice"
SUMMARY_EMAIL = "org_enforcement_summary"


@dataclass(frozen=True)
class Member:
    member_id: int
    account_id: int
    username: str
    role: str
    tfa_status: str  # none | totp | webauthn
    tfa_methods: list[str]
    joined_at: datetime


@dataclass
class OrgEnforcement:
    org: str
    run_id: str
    removed: list[str]
    owners_notified: int
    already_enforced: bool


def _org_id(engine: Engine, org: str) -> tuple[int, datetime | None]:
    with engine.connect() as connection:
        row = connection.execute(select(Org.id, Org.tfa_enforced_at).where(Org.name == org)).first()
    if row is None:
        raise BadInput(None, None, f"no org named {org!r}")
    return row[0], row[1]


def audit_org(registry: Registry, org: str) -> list[Member]:
    """Every current member of ``org``, owners first, with 2FA status and methods."""
    engine = registry.engine
    org_id, _ = _org_id(engine, org)
    methods = (
        select(
            TfaFactor.account_id,
            func.count().label("factors"),
            func.max(case((TfaFactor.kind == "webauthn", 1), else_=0)).label("webauthn"),
            func.max(case((TfaFactor.kind == "totp", 1), else_=0)).label("totp"),
        )
        .where(TfaFactor.removed_at.is_(None))
        .group_by(TfaFactor.account_id)
        .subquery()
    )
    query = (
        select(
            OrgMember.id,
            Account.id,
            Account.username,
            OrgMember.role,
            OrgMember.joined_at,
            methods.c.webauthn,
            methods.c.totp,
        )
        .join(Account, Account.id == OrgMember.account_id)
        .outerjoin(methods, methods.c.account_id == Account.id)
        .where(and_(OrgMember.org_id == org_id, OrgMember.removed_at.is_(None)))
    )
    order = {"owner": 0, "admin": 1, "developer": 2}
    members = []
    with engine.connect() as connection:
        for member_id, account_id, username, role, joined, webauthn, totp in connection.execute(
            query
        ):
            kinds = [k for k, on in (("totp", totp), ("webauthn", webauthn)) if on]
            status = "webauthn" if webauthn else "totp" if totp else "none"
            members.append(Member(member_id, account_id, username, role, status, kinds, joined))
    return sorted(members, key=lambda m: (order.get(m.role, 9), m.username))


def enforcement_preview(registry: Registry, org: str) -> list[Member]:
    """The members that turning enforcement on would remove: those without 2FA."""
    return [m for m in audit_org(registry, org) if m.tfa_status == "none"]


def enforce_org(
    registry: Registry, org: str, *, confirm: str, owner: str, actor: str
) -> OrgEnforcement:
    """Turn on 2FA enforcement for ``org`` as ``owner`` and remove members without 2FA."""
    if confirm != org:
        raise GuardRefused(f"type the org's name back to confirm: --confirm {org}")
    with registry.lock("orgs"):
        engine = registry.engine
        org_id, enforced_at = _org_id(engine, org)
        members = audit_org(registry, org)
        acting = next((m for m in members if m.username == owner), None)
        if acting is None or acting.role != "owner":
            raise GuardRefused(f"{owner} is not an owner of {org}")
        if acting.tfa_status == "none":
            raise GuardRefused(
                f"{owner} has no 2FA: an owner must enable 2FA before enforcing it on {org}"
            )
        to_remove = [m for m in members if m.tfa_status == "none"]
        owners = [m for m in members if m.role == "owner" and m.tfa_status != "none"]
        reason = f"org {org} requires 2FA"
        now = utc_now()
        with recorded_run(
            engine,
            plan="orgs",
            step=org_enforcement_step(org),
            mode="apply",
            actor=actor,
            lock="orgs",
            parameters={"org": org, "owner": owner},
        ) as run:
            run_id = run.id
            with engine.begin() as connection:
                turned_on = connection.execute(
                    update(ORGS)
                    .where(and_(ORGS.c.id == org_id, ORGS.c.tfa_enforced_at.is_(None)))
                    .values(tfa_enforced_at=now)
                    .returning(ORGS.c.id)
                ).all()
                removed = connection.execute(
                    update(MEMBERS)
                    .where(
                        and_(
                            MEMBERS.c.id.in_([m.member_id for m in to_remove]),
                            MEMBERS.c.removed_at.is_(None),
                            # Re-checked here: a member who enrolled since is kept.
                            ~has_active_factor(MEMBERS.c.account_id),
                        )
                    )
                    .values(removed_at=now, removed_reason=reason)
                    .returning(MEMBERS.c.id, MEMBERS.c.account_id)
                ).all()
                by_member = {m.member_id: m for m in to_remove}
                removed_names = sorted(by_member[member_id].username for member_id, _ in removed)
                phase = f"org:{org}"
                insert_ignoring_existing(
                    connection,
                    NOTIFICATIONS,
                    [
                        {
                            "account_id": account_id,
                            "email": REMOVAL_EMAIL,
                            "phase": phase,
                            "state": "queued",
                            "context": {"org": org},
                            "attempts": 0,
                            "run_id": run_id,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for _, account_id in removed
                    ],
                    ["account_id", "email", "phase", "occasion"],
                )
                notified = insert_ignoring_existing(
                    connection,
                    NOTIFICATIONS,
                    [
                        {
                            "account_id": m.account_id,
                            "email": SUMMARY_EMAIL,
                            "phase": phase,
                            "state": "queued",
                            "context": {"org": org, "removed": removed_names},
                            "attempts": 0,
                            "run_id": run_id,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for m in owners
                    ],
                    ["account_id", "email", "phase", "occasion"],
                )
                record_actions(
                    connection,
                    [
                        *(
                            {
                                "effect_key": f"org-enforce:{org}",
                                "action": "org_tfa_enforced",
                                "account_id": acting.account_id,
                                "subject": f"org:{org}",
                                "reason": reason,
                                "actor": actor,
                                "run_id": run_id,
                                "created_at": now,
                            }
                            for _ in turned_on
                        ),
                        *(
                            {
                                "effect_key": f"org-remove:{org}:{member_id}",
                                "action": "org_member_removed",
                                "account_id": account_id,
                                "subject": f"org:{org}",
                                "reason": reason,
                                "actor": actor,
                                "run_id": run_id,
                                "created_at": now,
                            }
                            for member_id, account_id in removed
                        ),
                    ],
                )
            run.summary = {"removed": len(removed), "owners_notified": notified}
        return OrgEnforcement(org, run_id, removed_names, notified, enforced_at is not None)

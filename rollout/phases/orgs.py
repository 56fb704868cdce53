"""Org 2FA enforcement: what an org owner audits and turns on, and who comes back.

``audit_org`` lists every current member with its 2FA status and method.
``enforce_org`` turns enforcement on for an org: only an owner who uses 2FA may, only
after the org's name is typed back, and then every current member without 2FA is
removed (with a notice), the owners get a summary, and every effect is audited once.
``reinvite`` invites the members it removed who have since enabled 2FA back into a
team the owner chooses, previewed and confirmed the same way; ``settle_invitations``
records the invitations accepted (a member again) or expired.

Each preview is saved under ``reports/previews/`` as a phase's is (its CSV, a record
beside it: rollout.phases.previews.save_list), so an apply refused as not previewed
names who changed since (``naming_member_changes``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    and_,
    case,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)

from rollout.core.calendar import org_enforcement_step, org_reinvite_step
from rollout.core.controls import quoted, shell_word, visible
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.fingerprints import list_fingerprint, same_list
from rollout.core.names import file_stem_for
from rollout.core.words import counted
from rollout.notify.emails import INVITATION_EMAIL
from rollout.notify.queue import queue_each
from rollout.phases.previews import (
    changed_since_preview,
    names_shown,
    naming_changes_since,
    read_rows,
    save_list,
    shown_list,
)
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.engine import begin_writing
from rollout.registry.invitations import member_again
from rollout.registry.ledger import (
    insert_ignoring_existing,
    record_actions,
    recorded_run,
    utc_now,
)
from rollout.registry.models import (
    Account,
    Action,
    Org,
    OrgInvitation,
    OrgMember,
    Team,
    TeamMember,
    TfaFactor,
    has_active_factor,
)

ORGS = Org.__table__
MEMBERS = OrgMember.__table__
TEAMS = Team.__table__
TEAM_MEMBERS = TeamMember.__table__
INVITATIONS = OrgInvitation.__table__
ACTIONS = Action.__table__
REMOVAL_EMAIL = "org_removal_notice"
SUMMARY_EMAIL = "org_enforcement_summary"
# How long an invitation back stays open (GitHub's org invitations: 7 days).
INVITATION_DAYS = 7
# The ``kind`` of an org's saved preview record (reports/previews/), and its CSV's columns.
ENFORCE_PREVIEW = "org-enforce"
REINVITE_PREVIEW = "org-reinvite"
ENFORCE_COLUMNS = ("account_id", "username", "role", "tfa_status", "joined_at")
REINVITE_COLUMNS = ("account_id", "username", "removed_at")


def removal_reason(org: str) -> str:
    """What org enforcement records as a removed member's reason: how a reinvitation
    finds the members enforcement removed (not those who left or were removed by hand)."""
    return f"org {org} requires 2FA"


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
    # The enforcement summaries queued to the org's owners with 2FA: queued, not sent
    # (the send may still skip one: suppressed, unverified).
    owner_summaries_queued: int
    already_enforced: bool


def _org_id(engine: Engine, org: str) -> tuple[int, datetime | None]:
    with engine.connect() as connection:
        row = connection.execute(select(Org.id, Org.tfa_enforced_at).where(Org.name == org)).first()
    if row is None:
        raise BadInput(None, None, f"no org named {quoted(org)}")
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
    return removed_by_enforcement(audit_org(registry, org))


def removed_by_enforcement(members: list[Member]) -> list[Member]:
    """Of an org's members, those turning enforcement on removes: without 2FA."""
    return [m for m in members if m.tfa_status == "none"]


def owners_with_2fa(members: list[Member]) -> list[Member]:
    """The owners who may turn enforcement on (and are told what it did)."""
    return [m for m in members if m.role == "owner" and m.tfa_status != "none"]


def _acting_owner(members: list[Member], org: str, owner: str, doing: str) -> Member:
    """The owner acting, who must be an owner of the org and use 2FA."""
    acting = next((m for m in members if m.username == owner), None)
    if acting is None or acting.role != "owner":
        raise GuardRefused(f"{quoted(owner)} is not an owner of {quoted(org)}")
    if acting.tfa_status == "none":
        raise GuardRefused(
            f"{quoted(owner)} has no 2FA: an owner must enable 2FA before {doing} {quoted(org)}"
        )
    return acting


def removal_fingerprint(members: Iterable[Member]) -> str:
    """Which members enforcement removes, as the preview's ``--expect-list``: their
    accounts, not their names (a name freed by a deleted account may be taken by
    another before the apply), each with its role: the preview warns apart of the owners
    and admins going, so a member made an owner since is not the list confirmed."""
    return list_fingerprint(f"{m.account_id}:{m.role}" for m in members)


def leading_removed(members: Iterable[Member]) -> str | None:
    """The owners and admins among ``members`` (those enforcement removes), by name, as
    data: what the org loses who runs it (``2 owners (bo, di) and 1 admin (cy)``)."""
    by_role: dict[str, list[str]] = {}
    for m in members:
        if m.role in ("owner", "admin"):
            by_role.setdefault(m.role, []).append(m.username)
    if not by_role:
        return None
    return " and ".join(
        f"{counted(len(names), role)} ({', '.join(quoted(n) for n in sorted(names))})"
        for role, names in sorted(by_role.items(), key=lambda item: item[0] != "owner")
    )


def enforce_org(
    registry: Registry,
    org: str,
    *,
    confirm: str,
    owner: str,
    actor: str,
    expect: int | None = None,
    expect_list: str | None = None,
) -> OrgEnforcement:
    """Turn on 2FA enforcement for ``org`` as ``owner`` and remove members without 2FA;
    with ``expect`` (the count the preview showed), only if that many would go now, and
    with ``expect_list`` (its fingerprint: removal_fingerprint), only those same members."""
    if confirm != org:
        raise GuardRefused(f"type the org's name back to confirm: --confirm {shell_word(org)}")
    with registry.lock("orgs") as held:
        engine = registry.engine
        org_id, enforced_at = _org_id(engine, org)
        members = audit_org(registry, org)
        acting = _acting_owner(members, org, owner, "enforcing it on")
        to_remove = removed_by_enforcement(members)
        _as_previewed(
            org,
            ("member", "without 2FA to remove", "remove"),
            (len(to_remove), expect),
            (removal_fingerprint(to_remove), expect_list),
            f"rollout orgs enforce {shell_word(org)}",
            (ENFORCE_PREVIEW, org_id, {m.account_id: (m.username, m.role) for m in to_remove}),
            # A role is part of the list: who the org would lose that runs it, now.
            now_said=f"it would remove {leading_removed(to_remove) or 'no owner or admin'} now",
        )
        owners = owners_with_2fa(members)
        reason = removal_reason(org)
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
            with begin_writing(engine) as connection:
                # Before any removal: an invitation back its member accepted is recorded
                # accepted while the account is still a member (removed, it would read
                # pending, keep the member from being invited again, then "expire").
                settle_invitations(connection, org_id, org, now=now, actor=actor, run_id=run_id)
                turned_on = connection.execute(
                    update(ORGS)
                    .where(and_(ORGS.c.id == org_id, ORGS.c.tfa_enforced_at.is_(None)))
                    .values(tfa_enforced_at=now)
                    .returning(ORGS.c.id)
                ).all()
                removed: list[Row[tuple[int, int]]] = []
                for members in in_chunks([m.member_id for m in to_remove]):
                    removed += connection.execute(
                        update(MEMBERS)
                        .where(
                            and_(
                                MEMBERS.c.id.in_(members),
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
                teams_left = _leave_teams(connection, org_id, [a for _, a in removed])
                phase = f"org:{org}"
                # Each run's emails are its own (occasion: the run): a later run that
                # removes members who joined without 2FA since tells them and the
                # owners again. A run is one transaction, so none is ever queued twice.
                queue_each(
                    connection,
                    email=REMOVAL_EMAIL,
                    phase=phase,
                    emails=[(account_id, run_id, {"org": org}) for _, account_id in removed],
                    run_id=run_id,
                    now=now,
                )
                summary = {"org": org, "removed": removed_names}
                notified = queue_each(
                    connection,
                    email=SUMMARY_EMAIL,
                    phase=phase,
                    emails=[
                        (m.account_id, run_id, summary)
                        for m in owners
                        if turned_on or removed  # a run that changed nothing tells no one
                    ],
                    run_id=run_id,
                    now=now,
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
                                "effect_key": f"org-remove:{org}:{member_id}:{run_id}",
                                "action": "org_member_removed",
                                "account_id": account_id,
                                "subject": f"org:{org}",
                                "reason": reason,
                                "actor": actor,
                                "run_id": run_id,
                                "created_at": now,
                                # What it takes to put them back as they were.
                                "details": {"teams": teams_left.get(account_id, [])},
                            }
                            for member_id, account_id in removed
                        ),
                    ],
                )
                # Before the commit: the lock gone with its PostgreSQL session, another
                # org command may be at work on this org (a rerun finishes the job).
                held.check()
            run.summary = {"removed": len(removed), "owner_summaries_queued": notified}
        return OrgEnforcement(org, run_id, removed_names, notified, enforced_at is not None)


def _leave_teams(
    connection: Connection, org_id: int, account_ids: list[int]
) -> dict[int, list[str]]:
    """Take the removed members out of the org's teams, as leaving an org does (the
    removal email says so): kept, a membership restored later would bring back every
    team's package access with it. Returns the teams each left, by account."""
    left: dict[int, list[str]] = {}
    for accounts in in_chunks(account_ids):
        rows = connection.execute(
            select(TEAM_MEMBERS.c.account_id, TEAMS.c.name)
            .join(TEAMS, TEAMS.c.id == TEAM_MEMBERS.c.team_id)
            .where(and_(TEAMS.c.org_id == org_id, TEAM_MEMBERS.c.account_id.in_(accounts)))
            .order_by(TEAMS.c.name)
        ).all()
        for account_id, team in rows:
            left.setdefault(account_id, []).append(team)
        connection.execute(
            delete(TEAM_MEMBERS).where(
                and_(
                    TEAM_MEMBERS.c.account_id.in_(accounts),
                    TEAM_MEMBERS.c.team_id.in_(select(TEAMS.c.id).where(TEAMS.c.org_id == org_id)),
                )
            )
        )
    return left


# --- invitations back ------------------------------------------------------------------


@dataclass(frozen=True)
class Invitee:
    """A member org enforcement removed who has since enabled 2FA."""

    account_id: int
    username: str
    removed_at: datetime


@dataclass
class Reinvitation:
    org: str
    team: str
    run_id: str
    invited: list[str]
    emails_queued: int
    expires_at: datetime


def _team_id(connection: Connection, org_id: int, org: str, team: str) -> int:
    teams = dict(connection.execute(select(Team.name, Team.id).where(Team.org_id == org_id)).all())
    if team not in teams:
        known = ", ".join(quoted(name) for name in sorted(teams)) or "none"
        raise BadInput(None, None, f"no team {quoted(team)} in org {quoted(org)} (teams: {known})")
    return int(teams[team])


def reinvite_preview(registry: Registry, org: str, team: str) -> list[Invitee]:
    """Whom ``reinvite`` would invite into ``team``: the members org enforcement removed,
    not members again, who now have a 2FA factor and no pending invitation. Reads only."""
    engine = registry.engine
    org_id, _ = _org_id(engine, org)
    with engine.connect() as connection:
        _team_id(connection, org_id, org, team)
        return _invitees(connection, org_id, org, utc_now())


def removed_by_enforcement_of(org: str) -> ColumnElement[bool]:
    """SQL over ``org_members``: the row's removal was the org's enforcement, not the
    member leaving or an owner's hand: its reason names the org, or, for an org renamed
    since (the reason names it as it was then), the removal's audit row, written with it
    at the same instant."""
    audited = exists().where(
        and_(
            ACTIONS.c.account_id == MEMBERS.c.account_id,
            ACTIONS.c.action == "org_member_removed",
            ACTIONS.c.created_at == MEMBERS.c.removed_at,
        )
    )
    return or_(MEMBERS.c.removed_reason == removal_reason(org), audited)


def _invitees(connection: Connection, org_id: int, org: str, now: datetime) -> list[Invitee]:
    pending = exists().where(
        and_(
            INVITATIONS.c.org_id == org_id,
            INVITATIONS.c.account_id == MEMBERS.c.account_id,
            INVITATIONS.c.state == "pending",
            INVITATIONS.c.expires_at > now,
        )
    )
    query = (
        select(Account.id, Account.username, MEMBERS.c.removed_at)
        .join(MEMBERS, MEMBERS.c.account_id == Account.id)
        .where(
            and_(
                MEMBERS.c.org_id == org_id,
                MEMBERS.c.removed_at.is_not(None),
                removed_by_enforcement_of(org),
                has_active_factor(Account.id),
                ~pending,
            )
        )
        .order_by(Account.username)
    )
    return [Invitee(*row) for row in connection.execute(query)]


def invitation_fingerprint(invitees: Iterable[Invitee], team: str) -> str:
    """Which members ``reinvite`` invites, and into which team, as the preview's
    ``--expect-list`` (their accounts, as removal_fingerprint, and the team's name): an
    apply into another team than the one previewed is refused as not previewed."""
    return list_fingerprint((i.account_id for i in invitees), [team])


def settle_invitations(
    connection: Connection, org_id: int, org: str, *, now: datetime, actor: str, run_id: str | None
) -> dict[str, int]:
    """Record the pending invitations of ``org`` that were accepted (the account is a
    member again) or expired, each once, audited. Returns how many of each."""
    # A member again now, or one since the invitation (joined after it was sent, and
    # removed again since: accepted all the same, not pending, nor later "expired").
    settled = {}
    for state, condition in (
        ("accepted", member_again()),
        ("expired", INVITATIONS.c.expires_at <= now),
    ):
        rows = connection.execute(
            update(INVITATIONS)
            .where(
                and_(INVITATIONS.c.org_id == org_id, INVITATIONS.c.state == "pending", condition)
            )
            .values(state=state, settled_at=now)
            .returning(INVITATIONS.c.id, INVITATIONS.c.account_id)
        ).all()
        record_actions(
            connection,
            [
                {
                    "effect_key": f"org-invitation-{state}:{invitation_id}",
                    "action": f"org_invitation_{state}",
                    "account_id": account_id,
                    "subject": f"org:{org}",
                    "reason": f"invitation back into org {org} {state}",
                    "actor": actor,
                    "run_id": run_id,
                    "created_at": now,
                }
                for invitation_id, account_id in rows
            ],
        )
        settled[state] = len(rows)
    return settled


def reinvite(
    registry: Registry,
    org: str,
    team: str,
    *,
    owner: str,
    confirm: str,
    expect: int,
    actor: str,
    expect_list: str | None = None,
) -> Reinvitation:
    """Invite back into ``team`` of ``org`` exactly the previewed members (enforcement
    removed them; they now use 2FA), as ``owner``: one pending invitation each, open
    for INVITATION_DAYS, emailed and audited, each once across reruns. ``expect`` is
    the count the preview showed, and ``expect_list`` (invitation_fingerprint) who."""
    if confirm != org:
        raise GuardRefused(f"type the org's name back to confirm: --confirm {shell_word(org)}")
    with registry.lock("orgs") as held:
        engine = registry.engine
        org_id, _ = _org_id(engine, org)
        _acting_owner(audit_org(registry, org), org, owner, "inviting members back to")
        now = utc_now()
        with engine.connect() as connection:
            team_id = _team_id(connection, org_id, org, team)
            invitees = _invitees(connection, org_id, org, now)
        _as_previewed(
            org,
            ("member", "to invite back", "invite back"),
            (len(invitees), expect),
            (invitation_fingerprint(invitees, team), expect_list),
            f"rollout orgs reinvite {shell_word(org)} --team {shell_word(team)}",
            (REINVITE_PREVIEW, org_id, {i.account_id: (i.username, None) for i in invitees}),
            now_said="or the team they would go into",
            team=team,
        )
        expires_at = now + timedelta(days=INVITATION_DAYS)
        with recorded_run(
            engine,
            plan="orgs",
            step=org_reinvite_step(org),
            mode="apply",
            actor=actor,
            lock="orgs",
            parameters={
                "org": org,
                "team": team,
                "owner": owner,
                "expect": expect,
                "expect_list": expect_list,
            },
        ) as run:
            with begin_writing(engine) as connection:
                settle_invitations(connection, org_id, org, now=now, actor=actor, run_id=run.id)
                invited = insert_ignoring_existing(
                    connection,
                    INVITATIONS,
                    [
                        {
                            "org_id": org_id,
                            "account_id": i.account_id,
                            "team_id": team_id,
                            "state": "pending",
                            "invited_by": owner,
                            "created_at": now,
                            "expires_at": expires_at,
                            "run_id": run.id,
                        }
                        for i in invitees
                    ],
                    ["org_id", "account_id"],
                    index_where=INVITATIONS.c.state == literal_column("'pending'"),
                )
                rows = connection.execute(
                    select(INVITATIONS.c.id, INVITATIONS.c.account_id).where(
                        and_(INVITATIONS.c.org_id == org_id, INVITATIONS.c.run_id == run.id)
                    )
                ).all()
                invited = {
                    "org": org,
                    "team": team,
                    "invited_by": owner,
                    "expires_at": expires_at.isoformat(),
                }
                emails = queue_each(
                    connection,
                    email=INVITATION_EMAIL,
                    phase=f"org:{org}",
                    emails=[
                        (account_id, f"invitation:{invitation_id}", invited)
                        for invitation_id, account_id in rows
                    ],
                    run_id=run.id,
                    now=now,
                )
                record_actions(
                    connection,
                    [
                        {
                            "effect_key": f"org-invitation-sent:{invitation_id}",
                            "action": "org_invitation_sent",
                            "account_id": account_id,
                            "subject": f"org:{org}",
                            "reason": f"invited back into team {team} of org {org} by {owner}",
                            "actor": actor,
                            "run_id": run.id,
                            "created_at": now,
                        }
                        for invitation_id, account_id in rows
                    ],
                )
                held.check()  # before the commit, as enforcement's
            run.summary = {"invited": invited, "emails_queued": emails}
        by_id = {i.account_id: i.username for i in invitees}
        names = sorted(by_id[account_id] for _, account_id in rows)
        return Reinvitation(org, team, run.id, names, emails, expires_at)


@dataclass(frozen=True)
class Invitation:
    """One invitation back. The registry may have deleted its account (or its team)
    since: the invitation is still listed, with ``username`` (``team``) None and
    ``account_deleted`` set, as the ledger keeps it (docs/data-contracts.md)."""

    account_id: int
    username: str | None
    team: str | None
    state: str
    invited_by: str
    created_at: datetime
    expires_at: datetime
    settled_at: datetime | None

    @property
    def account_deleted(self) -> bool:
        return self.username is None


def invitations(registry: Registry, org: str, *, actor: str) -> list[Invitation]:
    """The org's invitations back, newest first, after recording those accepted or
    expired since (``settle_invitations``): every one, those of accounts (or teams) the
    registry deleted since included (no name: :class:`Invitation`)."""
    engine = registry.engine
    org_id, _ = _org_id(engine, org)
    with registry.lock("orgs") as held, begin_writing(engine) as connection:
        settle_invitations(connection, org_id, org, now=utc_now(), actor=actor, run_id=None)
        held.check()  # before the commit, as enforcement's
    query = (
        select(
            INVITATIONS.c.account_id,
            Account.username,
            Team.name,
            INVITATIONS.c.state,
            INVITATIONS.c.invited_by,
            INVITATIONS.c.created_at,
            INVITATIONS.c.expires_at,
            INVITATIONS.c.settled_at,
        )
        # Outer joins: an inner one dropped the invitation of an account deleted since.
        .outerjoin(Account, Account.id == INVITATIONS.c.account_id)
        .outerjoin(Team, Team.id == INVITATIONS.c.team_id)
        .where(INVITATIONS.c.org_id == org_id)
        .order_by(INVITATIONS.c.created_at.desc(), Account.username, INVITATIONS.c.account_id)
    )
    with engine.connect() as connection:
        return [Invitation(*row) for row in connection.execute(query)]


class MembersNotAsPreviewed(GuardRefused):
    """Refused: the members an org command would act on now (``listed``: account id to
    name and role, None for a list without roles) are not the ones previewed (their
    count or fingerprint): a caller holding the preview's files can say who changed
    (:func:`naming_member_changes`); ``team``: the team a reinvitation would invite them
    into now (None for enforcement)."""

    def __init__(
        self,
        message: str,
        kind: str,
        org_id: int,
        listed: dict[int, tuple[str, str | None]],
        team: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.org_id, self.listed, self.team = kind, org_id, listed, team

    def __reduce__(self) -> tuple[type[GuardRefused], tuple[str]]:
        # Passed on as the refusal it is: its message, not the members listed.
        return GuardRefused, (str(self),)


def _as_previewed(
    org: str,
    words: tuple[str, str, str],
    counts: tuple[int, int | None],
    lists: tuple[str, str | None],
    preview: str,
    listed: tuple[str, int, dict[int, tuple[str, str | None]]],
    *,
    now_said: str | None = None,
    team: str | None = None,
) -> None:
    """Refuse (:class:`MembersNotAsPreviewed`) a confirmation that no longer matches
    what the command would do: the count typed back (``counts``: now, expected; None
    when not given), and the previewed list's fingerprint (``lists``: now, expected).
    ``words``: whom it acts on (a noun, counted, and the words after it), and what it
    does to them; ``preview``: the command that previews it again; ``listed``: the
    preview's kind, the org's id and the members now (what the refusal carries);
    ``now_said``: what the refusal of another list says of the list now; ``team``: the
    team a reinvitation would invite them into now."""
    (who, why, does), (found, expect), (fingerprint, expect_list) = words, counts, lists
    if expect is not None and found != expect:
        raise MembersNotAsPreviewed(
            f"org {quoted(org)} has {counted(found, who)} {why}, not the {expect} expected: "
            f"run `{preview}` and check",
            *listed,
            team,
        )

    if expect_list is not None and not same_list(fingerprint, expect_list):
        raise MembersNotAsPreviewed(
            f"org {quoted(org)}: the members it would {does} now are not the ones previewed "
            f"(list {fingerprint}, not {expect_list}): some changed since, though the count "
            f"may not have{'' if now_said is None else f' ({now_said})'}; run `{preview}` "
            "and check",
            *listed,
            team,
        )


# --- saved previews ----------------------------------------------------------------------


def _preview_stem(kind: str, org: str) -> str:
    """The file name's start of an org's saved preview: the org's name is the registry's
    (any character), made safe (file_stem_for)."""
    stem = f"org-{file_stem_for(org)}"
    return stem if kind == ENFORCE_PREVIEW else f"{stem}-reinvite"


# What an org preview's record must hold for a refusal to name who changed since it.
_RECORD_FIELDS: dict[str, type] = {
    "org": str,
    "org_id": int,
    "actor": str,
    "members": int,
    "fingerprint": str,
}


def save_enforcement_preview(
    registry: Registry, org: str, members: list[Member], reports_dir: Path, *, actor: str
) -> Path:
    """Save the members ``orgs enforce`` would remove (removed_by_enforcement), as the
    preview showed them, under ``reports/previews/`` (a phase preview's naming, its
    record beside it). Returns the CSV's path."""
    org_id, _ = _org_id(registry.engine, org)
    rows = [{c: getattr(m, c) for c in ENFORCE_COLUMNS} for m in members]
    record = {
        "kind": ENFORCE_PREVIEW,
        "org": org,
        # A refusal finds the preview by the org's id: it may be renamed before the apply.
        "org_id": org_id,
        "actor": actor,
        "members": len(members),
        "owners": sum(m.role == "owner" for m in members),
        "admins": sum(m.role == "admin" for m in members),
        "fingerprint": removal_fingerprint(members),
    }
    path, _, _ = save_list(
        reports_dir, _preview_stem(ENFORCE_PREVIEW, org), ENFORCE_COLUMNS, rows, record
    )
    return path


def save_reinvite_preview(
    registry: Registry,
    org: str,
    team: str,
    invitees: list[Invitee],
    reports_dir: Path,
    *,
    actor: str,
) -> Path:
    """Save the members ``orgs reinvite`` would invite back into ``team``, as
    :func:`save_enforcement_preview` does. Returns the CSV's path."""
    org_id, _ = _org_id(registry.engine, org)
    rows = [{c: getattr(i, c) for c in REINVITE_COLUMNS} for i in invitees]
    record = {
        "kind": REINVITE_PREVIEW,
        "org": org,
        "org_id": org_id,
        "team": team,
        "actor": actor,
        "members": len(invitees),
        "fingerprint": invitation_fingerprint(invitees, team),
    }
    path, _, _ = save_list(
        reports_dir, _preview_stem(REINVITE_PREVIEW, org), REINVITE_COLUMNS, rows, record
    )
    return path


def naming_member_changes(
    refused: GuardRefused, reports_dir: Path, typed: str | None
) -> GuardRefused:
    """``refused``, and when it is a list not as previewed (:class:`MembersNotAsPreviewed`)
    whose preview (``typed``: its fingerprint) is saved under ``reports_dir``, saying
    who changed since (:func:`members_changed_since`); else as it is."""
    return naming_changes_since(
        refused,
        typed,
        MembersNotAsPreviewed,
        lambda refused, typed: members_changed_since(reports_dir, refused, typed),
    )


def members_changed_since(
    reports_dir: Path, refused: MembersNotAsPreviewed, typed: str
) -> str | None:
    """Who changed since the org's preview whose list's fingerprint was typed back (the
    latest of its kind and org saved under ``reports/previews/``), against the members
    now (``refused.listed``): those no longer listed, those newly listed, and those whose
    role changed, by name, as data (visible), as changed_since_preview says it (None
    when there is no such preview here, or it cannot be read or differs in nothing)."""

    def read(folder: Path, record: dict[str, Any]) -> dict[int, tuple[str, str | None]]:
        then = read_rows(folder / record["csv"], "account_id")
        return {a: (row["username"], row.get("role")) for a, row in then.items()}

    def differences(
        record: dict[str, Any], then: dict[int, tuple[str, str | None]]
    ) -> list[str] | None:
        now = refused.listed
        gone = sorted(then[a][0] for a in then.keys() - now.keys())
        new = sorted(now[a][0] for a in now.keys() - then.keys())
        moved = sorted(
            (now[a][0], then[a][1], now[a][1])
            for a in then.keys() & now.keys()
            if now[a][1] is not None and then[a][1] != now[a][1]
        )
        # A reinvitation's team, as the preview's record names it, against the one now.
        then_team = record.get("team") if refused.team is not None else None
        retargeted = isinstance(then_team, str) and then_team != refused.team
        if not (gone or new or moved or retargeted):
            return None
        parts = [
            f"{counted(len(gone), 'member')} no longer listed"
            + (f" ({names_shown(gone)})" if gone else ""),
            f"{counted(len(new), 'member')} newly listed"
            + (f" ({names_shown(new)})" if new else ""),
        ]
        if moved:
            roles = [
                f"{quoted(name)}: {visible(was)} to {visible(role)}" for name, was, role in moved
            ]
            parts.append(f"{counted(len(moved), 'role')} changed ({shown_list(roles)})")
        if retargeted:
            parts.append(f"the team: {quoted(then_team)} previewed, {quoted(refused.team)} now")
        return parts

    return changed_since_preview(
        reports_dir,
        typed,
        kind=refused.kind,
        fields=_RECORD_FIELDS,
        matches=lambda record: record["org_id"] == refused.org_id,
        read=read,
        differences=differences,
    )

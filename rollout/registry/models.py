"""The registry database: what the pipeline may read and change.

All times are naive UTC datetimes: SQLite has no time zones and DuckDB/Arrow
extracts stay simple when every backend stores the same thing.
Enumerations are strings with CHECK constraints rather than native enums so that
SQLite and PostgreSQL migrate the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    exists,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TFA_KINDS = ("totp", "webauthn")
# npm's classic tokens (read_only, publish, automation: automation publishes without a
# second factor) and granular access tokens (scoped, expiring, optionally bypassing 2FA).
CLASSIC_TOKEN_KINDS = ("automation", "publish", "read_only")
TOKEN_KINDS = (*CLASSIC_TOKEN_KINDS, "granular")
ORG_ROLES = ("owner", "admin", "developer")
TEAM_PERMISSIONS = ("read", "write")
NOTIFICATION_STATES = ("queued", "sending", "sent", "failed", "skipped")
# A sent email's fate by SendGrid's events, least final first; of an email's events the
# most final decides (events come out of order): sql/intermediate/int_notification_delivery.
DELIVERY_STATES = ("processed", "deferred", "delivered", "dropped", "bounced", "spam_report")
# The states in which the notice reached its maintainer's mailbox.
REACHED_STATES = ("delivered", "spam_report")
INVITATION_STATES = ("pending", "accepted", "expired")
PLAN_RUN_MODES = ("preview", "apply", "rollback")
PLAN_RUN_STATES = ("running", "succeeded", "failed")
REGISTRY_KINDS = ("sample",)


# Classic kinds that publish; by default, what a row of a kind can do is its kind's.
WRITING_KINDS = ("publish", "automation")


def _kind(context: Any) -> str | None:
    kind = context.get_current_parameters().get("kind")
    return str(kind) if kind is not None else None


def _one_of(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


# BIGINT on PostgreSQL, but INTEGER on SQLite so the column is the rowid alias.
Id = BigInteger().with_variant(Integer(), "sqlite")

# The registry's tables whose rows can be deleted (a closed account takes its factors,
# sessions, tokens and org memberships; a deleted org its teams and members) while the
# ledger, the outbox and the warehouse still name their ids: the audit's keys and
# subjects (revoke-session:<id>, token:<id>), notices, snoozes, invitations. SQLite gives
# a new row the largest id plus one, so the newest row deleted, the next took its id and
# that history; AUTOINCREMENT never gives an id twice, as PostgreSQL's sequences never
# do (revision 0020). The ledger's own tables are never deleted from.
NEVER_REUSED = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (NEVER_REUSED,)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(214), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)
    elv_enrolled_at: Mapped[datetime | None] = mapped_column(DateTime)
    tfa_required_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Marks later phases set (a plan's `effects`): the site's warning banner, a security
    # key required (TOTP no longer passes), TOTP set-up closed.
    warned_at: Mapped[datetime | None] = mapped_column(DateTime)
    webauthn_required_at: Mapped[datetime | None] = mapped_column(DateTime)
    totp_enrolment_closed_at: Mapped[datetime | None] = mapped_column(DateTime)


class TfaFactor(Base):
    __tablename__ = "tfa_factors"
    __table_args__ = (
        CheckConstraint(_one_of("kind", TFA_KINDS), name="kind"),
        # "Has 2FA" is asked of every cohort account: an active-factor lookup by account.
        Index(
            "ix_tfa_factors_active",
            "account_id",
            sqlite_where=text("removed_at IS NULL"),
            postgresql_where=text("removed_at IS NULL"),
        ),
        NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime)


def has_active_factor(account_id: Any) -> Any:
    """SQL: the account (an id or an id column) has a 2FA factor not removed, the one
    test of "uses 2FA" every action applies."""
    return exists().where(and_(TfaFactor.account_id == account_id, TfaFactor.removed_at.is_(None)))


class WebSession(Base):
    __tablename__ = "web_sessions"
    __table_args__ = (
        # Enforcement revokes the live sessions of an account: find them without a scan.
        Index(
            "ix_web_sessions_live",
            "account_id",
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
        NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Says which phase and cohort (plan names, up to 100 characters each).
    revoked_reason: Mapped[str | None] = mapped_column(String(300))


class Token(Base):
    __tablename__ = "tokens"
    __table_args__ = (
        CheckConstraint(_one_of("kind", TOKEN_KINDS), name="kind"),
        # What each classic kind can do is fixed; a granular token says for itself.
        CheckConstraint(
            "(kind <> 'read_only' OR (NOT writes AND NOT bypass_2fa))"
            " AND (kind <> 'publish' OR (writes AND NOT bypass_2fa))"
            " AND (kind <> 'automation' OR (writes AND bypass_2fa))",
            name="capabilities",
        ),
        CheckConstraint("expires_at IS NULL OR expires_at > created_at", name="expiry"),
        Index("ix_tokens_account", "account_id"),
        # Enforcement revokes the live tokens of the accounts it targets.
        Index(
            "ix_tokens_live",
            "account_id",
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
        NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # Legacy tokens were created before tokens had names: NULL is meaningful.
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    # It can publish (classic publish and automation; a granular read-write token).
    writes: Mapped[bool] = mapped_column(Boolean, default=lambda c: _kind(c) in WRITING_KINDS)
    # It publishes without a second factor (classic automation; a granular token made
    # with "bypass 2FA"): what token-hardening campaigns take away first.
    bypass_2fa: Mapped[bool] = mapped_column(Boolean, default=lambda c: _kind(c) == "automation")
    # A granular token's packages and scopes ("pkg:NAME", "scope:@NAME", "org:NAME");
    # NULL: everything the account may touch, as every classic token.
    scopes: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # NULL: never expires (classic tokens did not).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Says which phase revoked it, as a web session's does.
    revoked_reason: Mapped[str | None] = mapped_column(String(300))


class Org(Base):
    __tablename__ = "orgs"
    __table_args__ = (NEVER_REUSED,)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(214), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    tfa_enforced_at: Mapped[datetime | None] = mapped_column(DateTime)


class OrgMember(Base):
    __tablename__ = "org_members"
    __table_args__ = (
        CheckConstraint(_one_of("role", ORG_ROLES), name="role"),
        UniqueConstraint("org_id", "account_id", name="uq_org_members_org_account"),
        Index("ix_org_members_account", "account_id"),
        NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    joined_at: Mapped[datetime] = mapped_column(DateTime)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Names the org (up to 214 characters).
    removed_reason: Mapped[str | None] = mapped_column(String(300))


class OrgInvitation(Base):
    """An invitation back into an org, to a team an owner chose, for a member that org
    enforcement removed and who has since enabled 2FA (``rollout orgs reinvite``). The
    registry's site shows the pending ones; the ledger records when each was accepted
    (the account is a member again) or expired. No foreign keys, as the other ledger
    tables: they outlive what they name."""

    __tablename__ = "org_invitations"
    __table_args__ = (
        CheckConstraint(_one_of("state", INVITATION_STATES), name="state"),
        # At most one pending invitation per org and account: inviting again, or a
        # rerun after a crash, adds none.
        Index(
            "uq_org_invitations_pending",
            "org_id",
            "account_id",
            unique=True,
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[int] = mapped_column(Id)
    account_id: Mapped[int] = mapped_column(Id)
    team_id: Mapped[int] = mapped_column(Id)
    state: Mapped[str] = mapped_column(String(16))
    invited_by: Mapped[str] = mapped_column(String(214))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime)
    run_id: Mapped[str | None] = mapped_column(String(64))


class DeadlineSnooze(Base):
    """An account's one postponement of its own deadline in a phase with per-account
    deadlines (``rollout phase snooze``): at most one per phase and account, by at most
    the plan's ``snooze_days``. The account's deadline is the day its notice was sent,
    plus the phase's days, plus these (rollout.registry.deadlines)."""

    __tablename__ = "deadline_snoozes"
    __table_args__ = (
        UniqueConstraint("phase", "account_id", name="uq_deadline_snoozes_phase_account"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    phase: Mapped[str] = mapped_column(String(100))
    account_id: Mapped[int] = mapped_column(Id)
    days: Mapped[int] = mapped_column(Integer)
    requested_at: Mapped[datetime] = mapped_column(DateTime)
    granted_at: Mapped[datetime] = mapped_column(DateTime)
    # "command", or the request file and line it came from.
    source: Mapped[str] = mapped_column(String(300))
    actor: Mapped[str] = mapped_column(String(214))
    run_id: Mapped[str | None] = mapped_column(String(64))


class Team(Base):
    __tablename__ = "teams"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_teams_org_name"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(214))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class TeamMember(Base):
    __tablename__ = "team_members"
    __table_args__ = (Index("ix_team_members_account", "account_id"),)

    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )


class TeamPackage(Base):
    __tablename__ = "team_packages"
    __table_args__ = (
        CheckConstraint(_one_of("permission", TEAM_PERMISSIONS), name="permission"),
        Index("ix_team_packages_package", "package_name"),
    )

    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    package_name: Mapped[str] = mapped_column(String(214), primary_key=True)
    permission: Mapped[str] = mapped_column(String(8))


# --- the pipeline's own ledger -------------------------------------------------------


class PlanRun(Base):
    """One run of one plan step (preview, apply or rollback), the id every effect cites."""

    __tablename__ = "plan_runs"
    __table_args__ = (
        CheckConstraint(_one_of("mode", PLAN_RUN_MODES), name="mode"),
        CheckConstraint(_one_of("state", PLAN_RUN_STATES), name="state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan: Mapped[str] = mapped_column(String(200))
    # Wide enough for any name the registry allows: ``enforce <org>`` with a 214-character
    # org name (NAME_LIMIT).
    step: Mapped[str] = mapped_column(String(300))
    mode: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The run lock (Registry.lock) the run holds while it works: a row still
    # 'running' whose lock is free was left by a process that is gone (interrupted).
    lock_name: Mapped[str | None] = mapped_column(String(50))
    # The order the runs were recorded in, 1, 2, 3... (rollout.registry.ledger.start_run
    # numbers each; revision 0018 numbered those before it). Which of two runs came last
    # is (started_at, seq): two runs can start at the same instant (the demo's
    # simulated clock stands still while it moves a phase; a coarse clock), and then
    # only seq tells an apply from the rollback after it. Not the id, a random UUID.
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)


class PhaseRequirement(Base):
    """An applied phase requires 2FA of an account: one row per account and phase.

    An account is 2FA-required (``accounts.tfa_required_at``) while at least one row
    names it. Enforcing a phase adds its rows, rolling it back deletes them and clears
    the flag of exactly the accounts left with none: the truth of "who requires whom"
    is here, by construction, not read back from the audit ledger (which records both
    directions).
    """

    __tablename__ = "phase_requirements"
    __table_args__ = (Index("ix_phase_requirements_phase", "phase"),)

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[str] = mapped_column(String(100), primary_key=True)
    required_at: Mapped[datetime] = mapped_column(DateTime)
    run_id: Mapped[str | None] = mapped_column(String(64))


class CohortPackage(Base):
    """A package in a cohort. Sticky: once it qualifies it stays, whatever its numbers
    do later, until someone releases it explicitly (with a reason and an audit row).

    ``package_key`` is the lower-cased name: a package re-published under another
    capitalization is still the same cohort entry.
    """

    __tablename__ = "cohort_packages"
    __table_args__ = (
        UniqueConstraint("cohort", "package_key", name="uq_cohort_packages_cohort_key"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    cohort: Mapped[str] = mapped_column(String(100))
    package_key: Mapped[str] = mapped_column(String(214))
    package: Mapped[str] = mapped_column(String(214))
    first_qualified_on: Mapped[date] = mapped_column(Date)
    last_qualified_on: Mapped[date] = mapped_column(Date)
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    released_at: Mapped[datetime | None] = mapped_column(DateTime)
    released_reason: Mapped[str | None] = mapped_column(Text)
    released_by: Mapped[str | None] = mapped_column(String(200))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("plan_runs.id"))


class CohortMembership(Base):
    """An account required to use 2FA because of the cohort packages it can publish.

    Derived each day from the cohort's packages: ``left_on`` is set when the account
    no longer maintains any of them (and cleared if it does again).
    """

    __tablename__ = "cohort_memberships"
    __table_args__ = (
        UniqueConstraint("cohort", "account_id", name="uq_cohort_memberships_cohort_account"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    cohort: Mapped[str] = mapped_column(String(100))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    packages: Mapped[list[Any]] = mapped_column(default=list)
    first_qualified_on: Mapped[date] = mapped_column(Date)
    last_qualified_on: Mapped[date] = mapped_column(Date)
    left_on: Mapped[date | None] = mapped_column(Date)
    released_at: Mapped[datetime | None] = mapped_column(DateTime)
    released_reason: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("plan_runs.id"))


def current_membership(cohort: str) -> Any:
    """SQL: a ``cohort_memberships`` row is of ``cohort``'s current members (not left):
    the condition :func:`current_members` selects by, for a query that joins the
    memberships to other rows instead (a set-based join keeps its plan)."""
    return and_(CohortMembership.cohort == cohort, CohortMembership.left_on.is_(None))


def current_members(cohort: str) -> Any:
    """SQL: the account ids of ``cohort``'s current members (not left), a subquery for
    ``account_id.in_(...)`` or to select from."""
    return select(CohortMembership.account_id).where(current_membership(cohort))


class Action(Base):
    """The append-only audit ledger: who changed what, why and when.

    ``effect_key`` is the natural key of the effect (e.g. ``revoke-session:1234``):
    the unique constraint is what makes a re-run after a crash write nothing twice.
    Database triggers (see the migration) refuse UPDATE and DELETE.
    """

    __tablename__ = "actions"
    __table_args__ = (
        Index("ix_actions_account", "account_id"),
        Index("ix_actions_run", "run_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # Keys join a kind, plan names (<= 100 characters) and registry names (<= 214).
    effect_key: Mapped[str] = mapped_column(String(500), unique=True)
    action: Mapped[str] = mapped_column(String(100))
    # No foreign keys: the ledger outlives what it describes (an account may be
    # deleted, its history may not), and on PostgreSQL the per-row checks were a third
    # of an npm-scale enforcement run writing 1.3M audit rows.
    account_id: Mapped[int | None] = mapped_column(Id)
    subject: Mapped[str | None] = mapped_column(String(300))
    # org:<name> too (an org's emails withdrawn): a name may have 214 characters.
    phase: Mapped[str | None] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Notification(Base):
    """One email to one account for one reason; the outbox and its delivery record."""

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(_one_of("state", NOTIFICATION_STATES), name="state"),
        # An email for the same account, email kind, phase and occasion exists at most
        # once: re-running a flow, a phase or the whole plan can never send it again.
        UniqueConstraint(
            "account_id", "email", "phase", "occasion", name="uq_notifications_natural_key"
        ),
        Index("ix_notifications_state", "state"),
        # Drainers claim the lowest ids of the queued rows, and of the held ones whose
        # lease ran out (rollout.notify.drain._claim, which names the state literally).
        Index(
            "ix_notifications_queued",
            "id",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        Index(
            "ix_notifications_sending",
            "id",
            sqlite_where=text("state = 'sending'"),
            postgresql_where=text("state = 'sending'"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # No foreign key (revision 0021), as the audit ledger: the registry may delete an
    # account it has emailed (closed, erased at its owner's request), and the outbox
    # keeps what was sent to it. The drain skips an email whose account is gone.
    account_id: Mapped[int] = mapped_column(Id)
    email: Mapped[str] = mapped_column(String(100))
    # '' rather than NULL for emails outside a phase: NULLs never collide in UNIQUE.
    # A plan phase, or ``org:<org>`` for an org's enforcement (an org name is up to 214).
    phase: Mapped[str] = mapped_column(String(300), default="")
    # Which of the phase's emails of this kind: "14d" for a reminder, a brown-out's name.
    occasion: Mapped[str] = mapped_column(String(100), default="", server_default="")
    state: Mapped[str] = mapped_column(String(16))
    skip_reason: Mapped[str | None] = mapped_column(String(200))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    message_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("plan_runs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    # The sender that last attempted it ("sendgrid", "file"): the file outbox never
    # takes over an email meant for SendGrid. NULL: never attempted (or before 0007).
    sender: Mapped[str | None] = mapped_column(String(20))
    # What SendGrid's events say became of it (one of DELIVERY_STATES, set by
    # rollout.notify.delivery as ingest loads them), when, and why (a bounce's or a
    # drop's reason). NULL: no event yet.
    delivery: Mapped[str | None] = mapped_column(String(16))
    delivery_at: Mapped[datetime | None] = mapped_column(DateTime)
    delivery_reason: Mapped[str | None] = mapped_column(Text)
    # While 'sending': until when the drainer that claimed it holds it; after that
    # another drainer of the run takes it over (rollout.notify.drain). NULL otherwise.
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    # While 'sending': the token of the claim that holds it, drawn afresh by each claim
    # (a take-over too); the drainer renews, records or puts back only the rows still
    # 'sending' under its own token (revision 0022). NULL otherwise.
    claim_token: Mapped[str | None] = mapped_column(String(32))


class EmailSuppression(Base):
    """An address on a suppression list: set by hand (source ``manual``), or one of
    SendGrid's lists copied by rollout.notify.suppressions (``bounce``, ``block``,
    ``spam_report``, ``invalid_email``, ``unsubscribe``). Every source but
    ``unsubscribe`` stops all email to the address (skipped, with the source)."""

    __tablename__ = "email_suppressions"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    source: Mapped[str] = mapped_column(
        String(40), primary_key=True, default="manual", server_default="manual"
    )
    reason: Mapped[str] = mapped_column(Text)
    # When the address was put on the list (SendGrid's time for its lists).
    created_at: Mapped[datetime] = mapped_column(DateTime)
    created_by: Mapped[str] = mapped_column(String(200))


class BrownoutWindow(Base):
    """A span during which every account without 2FA must pass enhanced login verification."""

    __tablename__ = "brownout_windows"
    __table_args__ = (CheckConstraint("ends_at > starts_at", name="ordered"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    starts_at: Mapped[datetime] = mapped_column(DateTime)
    ends_at: Mapped[datetime] = mapped_column(DateTime)
    ended_early_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)


def windows_named(connection: Any, names: Iterable[str]) -> dict[str, Any]:
    """The brown-out windows of ``names`` as the registry has them (their times and
    early end: what ``state_at`` reads), by name; one read, none for no names."""
    names = sorted(set(names))
    if not names:
        return {}
    return {
        w.name: w
        for w in connection.execute(
            select(
                BrownoutWindow.name,
                BrownoutWindow.starts_at,
                BrownoutWindow.ends_at,
                BrownoutWindow.ended_early_at,
            ).where(BrownoutWindow.name.in_(names))
        )
    }


def state_at(window: Any, at: datetime) -> str:
    """A brown-out window's state at ``at``: scheduled, active, ended or ended early,
    for any row with the window's times (here, under every stage that reads windows:
    the phases run them, the queue announces them)."""
    if window.ended_early_at is not None and window.ended_early_at <= at:
        return "ended early"
    if at < window.starts_at:
        return "scheduled"
    return "active" if at < window.ends_at else "ended"


def ahead_until(window: Any) -> datetime:
    """The instant a brown-out window stops being ahead (``state_at`` no longer
    "scheduled"): its start, or its early end if it was called off before it began. A
    heads-up announcing it is too late from then (rollout.core.calendar.too_late)."""
    if window.ended_early_at is not None:
        return min(window.starts_at, window.ended_early_at)
    return window.starts_at


class RegistryMark(Base):
    """What made this registry, when something other than ``rollout db upgrade`` did.

    ``rollout sample`` writes kind 'sample' when it fills a registry, and replaces only
    registries carrying that mark: a registry without it holds real accounts and
    history, and no rehearsal may empty it. Not extracted to the warehouse.
    """

    __tablename__ = "registry_marks"
    __table_args__ = (CheckConstraint(_one_of("kind", REGISTRY_KINDS), name="kind"),)

    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # What wrote it, e.g. "rollout sample --scale tiny --seed 7".
    note: Mapped[str] = mapped_column(Text)


class RegistryChange(Base):
    """How often each table the warehouse copies has changed since it was last read,
    bumped by triggers on SQLite (rollout.registry.changes says how, and why not on
    PostgreSQL). Not extracted to the warehouse."""

    __tablename__ = "registry_changes"

    table_name: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Tells this registry from one that replaced it (the same versions would recur).
    instance: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(BigInteger)
    read_version: Mapped[int] = mapped_column(BigInteger)
    # Drawn at random by each read of a change (the claim): what tells the copy of a
    # version from a restored backup's rows at the same version. NULL: none drawn yet.
    stamp: Mapped[str | None] = mapped_column(String(32))


# The tables the sample generator and the warehouse extract know, in dependency order.
REGISTRY_TABLES: tuple[str, ...] = (
    "accounts",
    "tfa_factors",
    "web_sessions",
    "tokens",
    "orgs",
    "org_members",
    "teams",
    "team_members",
    "team_packages",
)
LEDGER_TABLES: tuple[str, ...] = (
    "plan_runs",
    "phase_requirements",
    "cohort_packages",
    "cohort_memberships",
    "actions",
    "notifications",
    "email_suppressions",
    "brownout_windows",
    "org_invitations",
    "deadline_snoozes",
)


# Columns the warehouse does not copy, being nothing a mart or an analyst's question
# needs. Of the outbox (5M emails at npm scale, the biggest table a cold extract
# reads): what an email was rendered from and the provider's id (most of its bytes),
# and the sender's own bookkeeping (attempts, last error, which sender, its lease and
# claim): the four cost about a fifth of reading the table. Of the accounts: the address,
# personal data the warehouse (read more widely than the registry) does not need;
# emails go from the registry.
NOT_EXTRACTED: dict[str, frozenset[str]] = {
    "notifications": frozenset(
        {
            "context",
            "message_id",
            "attempts",
            "error",
            "sender",
            "lease_expires_at",
            "claim_token",
        }
    ),
    "accounts": frozenset({"email"}),
}


def extracted_columns(table: Table) -> list[Column[Any]]:
    """The columns of ``table`` the warehouse extract copies, in table order."""
    skip = NOT_EXTRACTED.get(table.name, frozenset())
    return [column for column in table.columns if column.name not in skip]

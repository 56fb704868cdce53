"""Registry rows for tests, from factory_boy factories with traits.

Bind a registry first (the ``factories`` fixture of tests/conftest.py does), then::

    alice = AccountFactory(sessions=2, in_cohort="top-100")
    bob = AccountFactory(with_totp=True, in_cohort="top-100")

Each factory call commits, so the code under test (which opens its own connections)
sees the rows at once. For hundreds of rows, ``bound_to(engine, batch=True)``: the
factories only flush, and the block commits once at its end (400 accounts in a cohort
take ~0.3 s on PostgreSQL, ~0.8 s committed one by one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

import factory
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from rollout.notify.outbox import QUEUED_LATE
from rollout.registry.models import (
    Account,
    CohortMembership,
    CohortPackage,
    DeadlineSnooze,
    Notification,
    Org,
    OrgMember,
    Team,
    TeamMember,
    TfaFactor,
    Token,
    WebSession,
)

T0 = datetime(2021, 6, 1)
COHORT_DAY = date(2022, 1, 3)
# The context of a top-100 notice queued past its last day on purpose (``notify queue
# --late``): a drain by the real clock, years after the reference plan's dates, sends it
# (one without the mark is skipped as too late).
LATE_NOTICE = {"phase": "top-100", QUEUED_LATE: True}

_sessions: list[Session] = []


@contextmanager
def bound_to(engine: Engine, *, batch: bool = False) -> Iterator[Session]:
    """Make the factories write to ``engine`` for the duration of the block. With
    ``batch=True`` the rows are committed together when the block ends (and not at all
    if it raises), not one by one: only code after the block sees them."""
    with Session(engine, expire_on_commit=False, info={"batch": batch}) as session:
        _sessions.append(session)
        try:
            yield session
            if batch:
                session.commit()
        finally:
            _sessions.pop()


def _current() -> Session:
    if not _sessions:
        raise RuntimeError("bind the factories to a registry first (the `factories` fixture)")
    return _sessions[-1]


class _Factory(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session_factory = _current
        sqlalchemy_session_persistence = "commit"

    @classmethod
    def _save(cls, model_class: type, session: Session, args: Any, kwargs: Any) -> Any:
        if not session.info.get("batch"):
            return super()._save(model_class, session, args, kwargs)
        row = model_class(*args, **kwargs)
        session.add(row)
        session.flush()  # its id, for the rows made after it; committed by bound_to
        return row


def existing_account(account_id: int) -> Account:
    """The account of that id, for a factory's ``account=`` where a test kept only ids."""
    return _current().get_one(Account, account_id)


def existing_org(org_id: int) -> Org:
    """The org of that id, for a factory's ``org=`` where a test kept only its id."""
    return _current().get_one(Org, org_id)


class AccountFactory(_Factory):
    """An account without 2FA, its email verified (``email_verified=False``: not yet).
    Traits: ``with_totp``, ``with_webauthn``; ``sessions=N`` live web sessions,
    ``revoked_sessions=N`` signed-out ones; ``in_cohort="name"`` (or a list of names) a
    current membership, ``left_cohort="name"`` (or a list) one the account has since
    left. A membership's other fields go after a double underscore, as factory_boy
    passes them on: ``in_cohort__packages=["zeta-pkg"]`` (MembershipFactory's
    defaults otherwise)."""

    class Meta:
        model = Account

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda a: f"{a.username}@example.com")
    email_verified = True
    created_at = T0

    class Params:
        with_totp = factory.Trait(
            totp=factory.RelatedFactory("tests.factories.FactorFactory", "account", kind="totp")
        )
        with_webauthn = factory.Trait(
            webauthn=factory.RelatedFactory(
                "tests.factories.FactorFactory", "account", kind="webauthn"
            )
        )

    @factory.post_generation
    def sessions(account: Account, create: bool, extracted: int | None, **_: Any) -> None:
        for _ in range(extracted or 0):
            SessionFactory(account=account)

    @factory.post_generation
    def revoked_sessions(account: Account, create: bool, extracted: int | None, **_: Any) -> None:
        for _ in range(extracted or 0):
            SessionFactory(account=account, revoked=True)

    @factory.post_generation
    def in_cohort(
        account: Account, create: bool, extracted: str | list[str] | None, **fields: Any
    ) -> None:
        for name in _names(extracted):
            MembershipFactory(account=account, cohort=name, **fields)

    @factory.post_generation
    def left_cohort(
        account: Account, create: bool, extracted: str | list[str] | None, **fields: Any
    ) -> None:
        for name in _names(extracted):
            MembershipFactory(account=account, cohort=name, left=True, **fields)


def _names(extracted: str | list[str] | None) -> list[str]:
    return [extracted] if isinstance(extracted, str) else list(extracted or [])


class FactorFactory(_Factory):
    class Meta:
        model = TfaFactor
        exclude = ("account",)

    account = factory.SubFactory(AccountFactory)
    account_id = factory.SelfAttribute("account.id")
    kind = "totp"
    created_at = T0


class SessionFactory(_Factory):
    """A live web session (``revoked=True``: one already signed out)."""

    class Meta:
        model = WebSession
        exclude = ("account",)

    account = factory.SubFactory(AccountFactory)
    account_id = factory.SelfAttribute("account.id")
    created_at = T0

    class Params:
        revoked = factory.Trait(revoked_at=T0, revoked_reason="signed out")


class TokenFactory(_Factory):
    """A classic automation token (its capabilities follow its kind). Traits:
    ``granular`` (a granular write token expiring after 90 days; set ``writes``,
    ``bypass_2fa``, ``scopes`` or ``expires_at`` to change it), ``legacy`` (no name)."""

    class Meta:
        model = Token
        exclude = ("account",)

    account = factory.SubFactory(AccountFactory)
    account_id = factory.SelfAttribute("account.id")
    name = factory.Sequence(lambda n: f"ci-{n}")
    kind = "automation"
    created_at = T0

    class Params:
        granular = factory.Trait(
            kind="granular",
            writes=True,
            bypass_2fa=False,
            expires_at=factory.LazyAttribute(lambda t: t.created_at + timedelta(days=90)),
        )
        legacy = factory.Trait(name=None, kind="publish")


class MembershipFactory(_Factory):
    """A current cohort membership (``left=True``: the account has since left)."""

    class Meta:
        model = CohortMembership
        exclude = ("account",)

    account = factory.SubFactory(AccountFactory)
    account_id = factory.SelfAttribute("account.id")
    cohort = "top-100"
    packages = factory.LazyFunction(lambda: ["pkg"])
    first_qualified_on = COHORT_DAY
    last_qualified_on = COHORT_DAY

    class Params:
        left = factory.Trait(left_on=date(2022, 1, 10))


class OrgFactory(_Factory):
    class Meta:
        model = Org

    name = factory.Sequence(lambda n: f"org{n}")
    created_at = T0


class OrgMemberFactory(_Factory):
    """A current member (``removed=True``: one who has since left the org)."""

    class Meta:
        model = OrgMember
        exclude = ("org", "account")

    org = factory.SubFactory(OrgFactory)
    account = factory.SubFactory(AccountFactory)
    org_id = factory.SelfAttribute("org.id")
    account_id = factory.SelfAttribute("account.id")
    role = "developer"
    joined_at = T0

    class Params:
        removed = factory.Trait(removed_at=T0, removed_reason="left")


class TeamFactory(_Factory):
    class Meta:
        model = Team
        exclude = ("org",)

    org = factory.SubFactory(OrgFactory)
    org_id = factory.SelfAttribute("org.id")
    name = factory.Sequence(lambda n: f"team{n}")
    created_at = T0


class TeamMemberFactory(_Factory):
    class Meta:
        model = TeamMember
        exclude = ("team",)

    team = factory.SubFactory(TeamFactory)
    team_id = factory.SelfAttribute("team.id")
    account_id = factory.LazyFunction(lambda: AccountFactory().id)


class NotificationFactory(_Factory):
    """An email in the outbox, queued unless told otherwise."""

    class Meta:
        model = Notification
        exclude = ("account",)

    account = factory.SubFactory(AccountFactory)
    account_id = factory.SelfAttribute("account.id")
    email = "phase_notice"
    phase = "top-100"
    occasion = ""
    state = "queued"
    context = factory.LazyFunction(dict)
    attempts = 0
    created_at = T0
    updated_at = T0


class CohortPackageFactory(_Factory):
    """A package in a cohort since COHORT_DAY."""

    class Meta:
        model = CohortPackage

    cohort = "top-100"
    package = factory.Sequence(lambda n: f"pkg{n}")
    package_key = factory.LazyAttribute(lambda p: p.package.lower())
    first_qualified_on = COHORT_DAY
    last_qualified_on = COHORT_DAY
    reasons = factory.LazyFunction(lambda: ["top-100 by dependents"])


class SnoozeFactory(_Factory):
    """A granted snooze of an account's own deadline (rollout.phases.snoozes)."""

    class Meta:
        model = DeadlineSnooze
        exclude = ("account",)

    account = factory.SubFactory(AccountFactory)
    account_id = factory.SelfAttribute("account.id")
    phase = "top-100"
    days = 3
    requested_at = T0
    granted_at = T0
    source = "command"
    actor = "rm"

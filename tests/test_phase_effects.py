"""A phase's requirements and effects beyond npm 2022's: phishing-resistant 2FA, token
rules, revoking tokens, the warning banner, closing TOTP enrolment. On SQLite and
PostgreSQL: previews list exactly what enforcement changes, enforcement changes it
once, audited, and never touches a compliant account or a token the preview left out."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import GuardRefused
from rollout.core.plan import Phase, Plan, Requirements, parse_plan
from rollout.phases import brownouts, enforce
from rollout.phases.approvals import ApprovalRequest
from rollout.phases.previews import _accounts_label, preview_markdown, save_preview
from rollout.registry import Registry
from rollout.registry.models import Account, Action, Notification, Token, WebSession
from tests.factories import T0, AccountFactory, FactorFactory, TokenFactory
from tests.support.previews import to_apply

from .conftest import postgres_only

NOW = datetime(2025, 12, 9, 12)


@pytest.fixture(autouse=True)
def clock() -> Iterator[SimulatedClock]:
    """Enforcement at npm's classic-token revocation day (token ages and expiries
    are measured from the pipeline's clock)."""
    simulated = SimulatedClock(NOW)
    with use_clock(simulated):
        yield simulated


def phase_of(plan: Plan, **changes: Any) -> Plan:
    """The reference plan whose top-100 phase asks and does what ``changes`` say."""
    phase = plan.phase("top-100")
    changed = Phase.model_validate({**phase.model_dump(), **changes})
    return plan.model_copy(update={"phases": [changed, *plan.phases[1:]]})


@pytest.fixture
def token_plan(plan: Plan) -> Plan:
    """npm 2025: no classic tokens, nor tokens that bypass 2FA; revoke them."""
    return phase_of(
        plan,
        requires={"two_factor": "none", "no_classic_tokens": True, "no_bypass_2fa_tokens": True},
        effects=["revoke_tokens"],
        max_tokens=100,
    )


@pytest.fixture
def key_plan(plan: Plan) -> Plan:
    """A security key required (TOTP is not enough), and no new TOTP set-ups."""
    return phase_of(
        plan,
        requires={"two_factor": "phishing_resistant"},
        effects=["require_2fa", "close_totp_enrolment"],
    )


@pytest.fixture
def tokens_of(factories: None) -> dict[str, list[int]]:
    """alice: 2FA, a classic automation token and a granular one (fine).
    bob: no 2FA, a granular token that bypasses 2FA and an already revoked classic one.
    carol: 2FA, only a granular token (compliant). dave: a classic token that expired.
    erin: a classic token, but she left the cohort."""
    alice = AccountFactory(username="alice", with_totp=True, sessions=1, in_cohort="top-100")
    bob = AccountFactory(username="bob", sessions=2, in_cohort="top-100")
    carol = AccountFactory(username="carol", with_totp=True, in_cohort="top-100")
    dave = AccountFactory(username="dave", with_totp=True, in_cohort="top-100")
    erin = AccountFactory(username="erin", left_cohort="top-100")
    fresh = NOW - timedelta(days=10)
    return {
        "alice": [
            TokenFactory(account=alice).id,
            TokenFactory(account=alice, granular=True, created_at=fresh).id,
        ],
        "bob": [
            TokenFactory(account=bob, granular=True, bypass_2fa=True, created_at=fresh).id,
            TokenFactory(account=bob, kind="publish", revoked_at=fresh).id,
        ],
        "carol": [TokenFactory(account=carol, granular=True, created_at=fresh).id],
        "dave": [TokenFactory(account=dave, kind="publish", expires_at=fresh).id],
        "erin": [TokenFactory(account=erin).id],
    }


def live_tokens(registry: Registry) -> set[int]:
    with registry.engine.connect() as connection:
        return set(connection.execute(select(Token.id).where(Token.revoked_at.is_(None))).scalars())


def audited(registry: Registry, action: str) -> list[tuple[str, int]]:
    """Each thing the action was audited for (its subject, else its account) and how
    many audit rows it has."""
    with registry.engine.connect() as connection:
        return sorted(
            (subject or f"account:{account_id}", count)
            for account_id, subject, count in connection.execute(
                select(Action.account_id, Action.subject, func.count())
                .where(Action.action == action)
                .group_by(Action.account_id, Action.subject)
            )
        )


def marked(registry: Registry, column: str) -> set[str]:
    with registry.engine.connect() as connection:
        return set(
            connection.execute(
                select(Account.username).where(getattr(Account, column).is_not(None))
            ).scalars()
        )


# --- the plan language ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase_yaml", "reason"),
    [
        ("effects: [revoke_tokens]\n    max_tokens: 10", "revoke_tokens needs a token rule"),
        (
            "requires: {two_factor: none, no_classic_tokens: true}\n    effects: [revoke_tokens]",
            "needs max_tokens",
        ),
        # Left out, two_factor is any: an account without 2FA but without a classic token
        # would be required with nothing done.
        (
            "requires: {no_classic_tokens: true}\n    effects: [revoke_tokens]\n    max_tokens: 5",
            "any second factor needs an effect that acts on it",
        ),
        (
            "requires:\n      two_factor: phishing_resistant\n"
            "      no_write_tokens_without_2fa: true\n"
            "    effects: [revoke_tokens]\n    max_tokens: 5",
            "phishing_resistant second factor needs an effect",
        ),
        ("effects: [close_totp_enrolment]", "needs two_factor: phishing_resistant"),
        (
            "requires: {two_factor: none, no_classic_tokens: true}\n"
            "    effects: [revoke_sessions, revoke_tokens]\n    max_tokens: 5",
            "revoke_sessions needs a two_factor requirement",
        ),
        (
            "requires: {no_classic_tokens: true}\n    effects: [warn]\n    max_tokens: 5",
            "max_tokens is set but the effects do not revoke_tokens",
        ),
        ("effects: []", "at least one effect"),
        ("effects: [warn, warn]", "listed twice"),
        ("effects: [revoke_everything]", "effects.0: Input should be"),
        ("requires: {two_factor: none}", "needs a token rule"),
        ("requires: {no_classic_tokens: true}", "need the revoke_tokens or warn effect"),
        ("requires: {token_max_age_days: 0}\n    effects: [warn]", "greater than or equal to 1"),
        (
            "requires: {token_max_lifetime_days: 0}\n    effects: [warn]",
            "greater than or equal to 1",
        ),
    ],
)
def test_a_plan_whose_effects_cannot_act_is_refused_on_the_line(
    phase_yaml: str, reason: str
) -> None:
    text = (
        "name: p\ncohorts:\n  c: {top_by_dependents: 5}\nphases:\n"
        "  - name: one\n    cohort: c\n    cohort_as_of: 2025-01-01\n    notice_on: 2025-01-02\n"
        "    enforce_on: 2025-02-01\n    max_accounts: 10\n"
        f"    {phase_yaml}\n"
    )
    _, problems = parse_plan(text, "p.yaml")
    assert problems, text
    assert reason in problems[0].reason
    # The line of the phase's own field, or of the phase (line 5) for a missing one.
    expected_lines = {5} if "needs max_tokens" in reason else {11, 12, 13}
    assert problems[0].line in expected_lines


def test_the_reference_plan_keeps_npm_2022s_requirement_and_effects(plan: Plan) -> None:
    for phase in plan.phases:
        assert phase.requires == Requirements()
        assert phase.effects == ["require_2fa", "revoke_sessions"]


# --- previews ---------------------------------------------------------------------------


def test_phishing_resistant_2fa_counts_only_a_security_key(
    registry: Registry, key_plan: Plan, factories: None
) -> None:
    AccountFactory(username="totp-only", with_totp=True, in_cohort="top-100")
    AccountFactory(username="with-key", with_webauthn=True, in_cohort="top-100")
    AccountFactory(username="none", in_cohort="top-100")
    preview = enforce.preview_phase(registry, key_plan, key_plan.phase("top-100"))
    assert [t.username for t in preview.targets] == ["totp-only", "none"]
    assert preview.compliant == 1
    # Not "2 without 2FA, 1 already uses 2FA": totp-only has 2FA, and falls short.
    assert not preview.asks_only_2fa
    assert _accounts_label(preview) == "accounts that fall short of the phase's requirements"

    result = enforce.enforce_phase(registry, key_plan, "top-100", expect=2, actor="rm")
    assert (result.accounts_flagged, result.totp_enrolment_closed) == (2, 2)
    assert marked(registry, "webauthn_required_at") == {"totp-only", "none"}
    assert marked(registry, "totp_enrolment_closed_at") == {"totp-only", "none"}
    assert [count for _, count in audited(registry, "close_totp_enrolment")] == [1, 1]
    # The ledger's reason lists what the phase asks, items joined by "; ": the security
    # key is one item ("a security key (WebAuthn); TOTP alone is not enough" read as two).
    with registry.engine.connect() as connection:
        reasons = set(
            connection.execute(
                select(Action.reason).where(Action.action == "close_totp_enrolment")
            ).scalars()
        )
    assert reasons == {
        "phase top-100: a security key (WebAuthn, not TOTP alone) required of cohort top-100"
    }


def test_token_rules_list_exactly_the_forbidden_live_tokens_of_the_cohort(
    registry: Registry, token_plan: Plan, tokens_of: dict[str, list[int]]
) -> None:
    preview = enforce.preview_phase(registry, token_plan, token_plan.phase("top-100"))
    assert [(t.username, t.lacks_factor, t.offending_tokens) for t in preview.targets] == [
        ("alice", False, 1),
        ("bob", False, 1),
    ]
    assert [t.token_id for t in preview.tokens] == [tokens_of["alice"][0], tokens_of["bob"][0]]
    # A token-only phase revokes no sessions, and counts carol and dave as compliant.
    assert (preview.sessions, preview.compliant) == (0, 2)


def test_the_token_age_and_pypis_publishing_without_2fa_rules(
    registry: Registry, plan: Plan, factories: None
) -> None:
    old = AccountFactory(username="old-token", with_totp=True, in_cohort="top-100")
    young = AccountFactory(username="young-token", with_totp=True, in_cohort="top-100")
    TokenFactory(account=old, kind="publish", created_at=NOW - timedelta(days=91))
    TokenFactory(account=young, kind="publish", created_at=NOW - timedelta(days=89))
    aged = phase_of(
        plan,
        requires={"two_factor": "none", "token_max_age_days": 90},
        effects=["revoke_tokens"],
        max_tokens=10,
        enforce_on=NOW.date(),
    )
    preview = enforce.preview_phase(registry, aged, aged.phase("top-100"), now=NOW)
    assert [t.username for t in preview.targets] == ["old-token"]

    without = AccountFactory(username="no-2fa", in_cohort="top-100")
    reader = AccountFactory(username="reads-only", in_cohort="top-100")
    keyless = AccountFactory(username="totp-publisher", with_totp=True, in_cohort="top-100")
    AccountFactory(username="no-2fa-no-token", in_cohort="top-100")
    TokenFactory(account=without, kind="publish")
    TokenFactory(account=reader, kind="read_only")
    TokenFactory(account=keyless, kind="publish")
    pypi = phase_of(
        plan,
        requires={"two_factor": "none", "no_write_tokens_without_2fa": True},
        effects=["revoke_tokens"],
        max_tokens=10,
    )
    preview = enforce.preview_phase(registry, pypi, pypi.phase("top-100"))
    # PyPI 2024-07-30: only an account without 2FA that holds a publishing token falls
    # short (an account without 2FA and without one has nothing to revoke), and only
    # that token is revoked.
    assert [t.username for t in preview.targets] == ["no-2fa"]
    assert [t.username for t in preview.tokens] == ["no-2fa"]
    # Asking a security key as well does not make a TOTP user's token "without 2FA".
    strict = phase_of(
        plan,
        requires={"two_factor": "phishing_resistant", "no_write_tokens_without_2fa": True},
        effects=["require_2fa", "revoke_tokens"],
        max_tokens=10,
    )
    preview = enforce.preview_phase(registry, strict, strict.phase("top-100"))
    assert [t.username for t in preview.tokens] == ["no-2fa"]


def over_a_90_day_cap(account: Account, made: datetime) -> tuple[int, int, int]:
    """Three publishing tokens of ``account`` made at ``made`` that break a 90-day cap
    on how long a token is valid: a granular one that never expires, a classic one (no
    expiry), and a granular one valid 90 days and a microsecond. Their ids."""
    forever = TokenFactory(account=account, granular=True, created_at=made, expires_at=None)
    classic = TokenFactory(account=account, kind="publish", created_at=made)
    too_long = TokenFactory(
        account=account,
        granular=True,
        created_at=made,
        expires_at=made + timedelta(days=90, microseconds=1),
    )
    return forever.id, classic.id, too_long.id


def saved_breaks(plan: Plan, preview: enforce.PhasePreview, reports: Path) -> dict[int, str]:
    """The rule each token breaks, as the saved preview's tokens CSV says it."""
    import csv

    saved = save_preview(plan, preview, reports, actor="rm")
    tokens_csv = saved.csv_path.with_name(saved.csv_path.stem + "-tokens.csv")
    rows = list(csv.DictReader(tokens_csv.open(newline="")))
    return {int(r["token_id"]): r["breaks"] for r in rows}


def test_a_token_lifetime_cap_forbids_tokens_that_never_expire_or_outlive_it(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """npm 2025: a write token lasts 90 days at most. A live token breaks the cap when it
    never expires or expires more than 90 days after it was made (exactly 90 is
    allowed); a revoked or expired one is left alone. The preview lists exactly those
    (its CSV saying the rule), enforcement revokes exactly those, once."""
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    capped = AccountFactory(username="capped", with_totp=True, in_cohort="top-100")
    made = NOW - timedelta(days=10)
    forever, classic, too_long = over_a_90_day_cap(holder, made)
    TokenFactory(account=capped, granular=True, created_at=made)  # exactly 90 days
    TokenFactory(account=capped, granular=True, created_at=made, expires_at=None, revoked_at=made)
    TokenFactory(
        account=capped,
        kind="publish",
        created_at=NOW - timedelta(days=400),
        expires_at=NOW - timedelta(days=1),
    )
    capping = phase_of(
        plan,
        requires={"two_factor": "none", "token_max_lifetime_days": 90},
        effects=["revoke_tokens"],
        max_tokens=10,
        enforce_on=NOW.date(),
    )
    phase = capping.phase("top-100")
    rule = "no tokens valid for more than 90 days"
    preview = enforce.preview_phase(registry, capping, phase, now=NOW)
    assert [t.username for t in preview.targets] == ["holder"]
    assert {t.token_id: t.breaks for t in preview.tokens} == dict.fromkeys(
        (forever, classic, too_long), rule
    )
    assert saved_breaks(capping, preview, tmp_path) == dict.fromkeys(
        (forever, classic, too_long), rule
    )
    # A lifetime does not grow: a week on, the same tokens and no others.
    later = enforce.preview_phase(registry, capping, phase, now=NOW + timedelta(days=7))
    assert later.fingerprint == preview.fingerprint

    before = live_tokens(registry)
    result = enforce.enforce_phase(
        registry, capping, "top-100", expect=1, expect_tokens=3, actor="rm"
    )
    assert result.tokens_revoked == 3
    assert live_tokens(registry) == before - {forever, classic, too_long}
    with registry.engine.connect() as connection:
        reasons = set(
            connection.execute(
                select(Token.revoked_reason).where(Token.id.in_([forever, classic, too_long]))
            ).scalars()
        )
    assert reasons == {f"phase top-100: {rule} required of cohort top-100"}
    again = enforce.enforce_phase(
        registry, capping, "top-100", expect=0, expect_tokens=0, actor="rm"
    )
    assert again.tokens_revoked == 0
    assert audited(registry, "revoke_token") == sorted(
        (f"token:{t}", 1) for t in (forever, classic, too_long)
    )


def test_a_lifetime_cap_on_publishing_tokens_leaves_read_only_tokens_alone(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """npm's 90-day cap of 2025-10-13 was on write tokens: a phase with
    write_token_max_lifetime_days revokes a publishing token that never expires or
    outlives the cap, and leaves a read-only one of any lifetime (an account holding only
    those is not a target). The preview's CSV says the rule; enforcement revokes exactly
    those, once."""
    writer = AccountFactory(username="writer", with_totp=True, in_cohort="top-100")
    reader = AccountFactory(username="reader", with_totp=True, in_cohort="top-100")
    made = NOW - timedelta(days=10)
    forever, classic, too_long = over_a_90_day_cap(writer, made)
    TokenFactory(account=writer, granular=True, created_at=made)  # exactly 90 days
    TokenFactory(account=reader, kind="read_only", writes=False, created_at=made)
    TokenFactory(account=reader, granular=True, writes=False, created_at=made, expires_at=None)
    capping = phase_of(
        plan,
        requires={"two_factor": "none", "write_token_max_lifetime_days": 90},
        effects=["revoke_tokens"],
        max_tokens=10,
        enforce_on=NOW.date(),
    )
    phase = capping.phase("top-100")
    rule = "no publishing tokens valid for more than 90 days"
    preview = enforce.preview_phase(registry, capping, phase, now=NOW)
    assert [t.username for t in preview.targets] == ["writer"]
    assert saved_breaks(capping, preview, tmp_path) == dict.fromkeys(
        (forever, classic, too_long), rule
    )
    before = live_tokens(registry)
    result = enforce.enforce_phase(
        registry, capping, "top-100", expect=1, expect_tokens=3, actor="rm"
    )
    assert result.tokens_revoked == 3
    assert live_tokens(registry) == before - {forever, classic, too_long}
    again = enforce.enforce_phase(
        registry, capping, "top-100", expect=0, expect_tokens=0, actor="rm"
    )
    assert again.tokens_revoked == 0


def test_a_token_is_aged_as_at_the_day_the_phase_announced_not_at_a_later_rerun(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """The warnings judged each token as it would be at the start of enforce_on: one
    90 days old that morning was announced, one that turns 91 a week later was not. A
    rerun of the phase a week on revokes the first, not the second (it revoked both,
    the second unwarned); enforced early, a token is aged as at that moment."""
    enforce_on = NOW.date()
    announced = AccountFactory(username="announced", with_totp=True, in_cohort="top-100")
    later = AccountFactory(username="old-later", with_totp=True, in_cohort="top-100")
    TokenFactory(account=announced, kind="publish", created_at=NOW - timedelta(days=91))
    TokenFactory(account=later, kind="publish", created_at=NOW - timedelta(days=85))
    aged = phase_of(
        plan,
        requires={"two_factor": "none", "token_max_age_days": 90},
        effects=["revoke_tokens"],
        max_tokens=10,
        enforce_on=enforce_on,
    )
    phase = aged.phase("top-100")
    a_week_on = NOW + timedelta(days=7)
    assert [
        t.username for t in enforce.preview_phase(registry, aged, phase, now=a_week_on).tokens
    ] == ["announced"]
    # Early, the day before: the first token is 90 days old already, not yet 91.
    early = enforce.preview_phase(registry, aged, phase, now=NOW - timedelta(days=1))
    assert [t.username for t in early.tokens] == []


def test_the_preview_says_the_token_revocation_is_irreversible_and_lists_them(
    registry: Registry, token_plan: Plan, tokens_of: dict[str, list[int]], tmp_path: Path
) -> None:
    preview = enforce.preview_phase(registry, token_plan, token_plan.phase("top-100"))
    saved = save_preview(token_plan, preview, tmp_path, actor="rm")
    markdown = preview_markdown(saved)
    assert "| their tokens to revoke (irreversible) | 2 |" in markdown
    assert "| accounts that fall short of the phase's requirements | 2 |" in markdown
    # It signs nobody out: no sessions row, and an approver is not told of any.
    assert "web sessions" not in markdown
    request = ApprovalRequest.from_saved(saved, "phase-preview-top-100")
    assert (request.sessions, request.tokens) == (None, 2)
    tokens_csv = saved.csv_path.with_name(saved.csv_path.stem + "-tokens.csv")
    header, *rows = tokens_csv.read_text().splitlines()
    assert header.startswith("token_id,account_id,username,kind")
    assert [row.split(",")[0] for row in rows] == [
        str(tokens_of["alice"][0]),
        str(tokens_of["bob"][0]),
    ]


def test_the_preview_says_which_rule_each_token_breaks(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """Several token rules in one phase: each listed token says which it breaks (in the
    CSV, the Markdown and the count by rule), the approver no longer infers it from the
    kind, the name, the creation day; the cells stay data, and the list's fingerprint
    (the ids) does not change with them."""
    import csv

    from tests.hostile import FORMULAS

    strict = phase_of(
        plan,
        requires={
            "two_factor": "none",
            "no_classic_tokens": True,
            "no_bypass_2fa_tokens": True,
            "token_max_age_days": 90,
        },
        effects=["revoke_tokens"],
        max_tokens=100,
    )
    holder = AccountFactory(username=FORMULAS[0], in_cohort="top-100")
    fresh = NOW - timedelta(days=10)
    classic_old = TokenFactory(account=holder, name=FORMULAS[1]).id
    classic_new = TokenFactory(account=holder, kind="publish", created_at=fresh).id
    bypass = TokenFactory(account=holder, granular=True, bypass_2fa=True, created_at=fresh).id
    TokenFactory(account=holder, granular=True, created_at=fresh)  # breaks none
    preview = enforce.preview_phase(registry, strict, strict.phase("top-100"))
    assert {t.token_id: t.breaks for t in preview.tokens} == {
        # a classic automation token bypasses 2FA too
        classic_old: "no classic tokens; no tokens that bypass 2FA; no tokens older than 90 days",
        classic_new: "no classic tokens",
        bypass: "no tokens that bypass 2FA",
    }
    assert preview.tokens_by_rule() == [
        ("no classic tokens", 2),
        ("no tokens that bypass 2FA", 2),
        ("no tokens older than 90 days", 1),
    ]
    saved = save_preview(strict, preview, tmp_path, actor="rm")
    tokens_csv = saved.csv_path.with_name(saved.csv_path.stem + "-tokens.csv")
    rows = list(csv.DictReader(tokens_csv.open(newline="")))
    assert {int(r["token_id"]): r["breaks"] for r in rows} == {
        t.token_id: t.breaks for t in preview.tokens
    }
    assert all(r["username"] == "'" + FORMULAS[0] for r in rows)
    markdown = preview_markdown(saved)
    assert "| of which break the rule: no classic tokens | 2 |" in markdown
    assert "no classic tokens; no tokens that bypass 2FA; no tokens older than" in markdown
    without = enforce.preview_phase(registry, strict, strict.phase("top-100"), details=False)
    assert without.fingerprint == preview.fingerprint


def test_one_token_rule_adds_no_count_by_rule(
    registry: Registry, token_plan: Plan, tokens_of: dict[str, list[int]], tmp_path: Path
) -> None:
    only_classic = phase_of(
        token_plan,
        requires={"two_factor": "none", "no_classic_tokens": True},
        effects=["revoke_tokens"],
        max_tokens=100,
    )
    preview = enforce.preview_phase(registry, only_classic, only_classic.phase("top-100"))
    assert [t.breaks for t in preview.tokens] == ["no classic tokens"]
    assert preview.tokens_by_rule() == []
    assert "break the rule" not in preview_markdown(
        save_preview(only_classic, preview, tmp_path, actor="rm")
    )


# --- enforcement ------------------------------------------------------------------------


def test_revoking_tokens_changes_exactly_the_previewed_ones_once(
    registry: Registry, token_plan: Plan, tokens_of: dict[str, list[int]]
) -> None:
    before = live_tokens(registry)
    result = enforce.enforce_phase(
        registry, token_plan, "top-100", expect=2, expect_tokens=2, actor="rm"
    )
    assert (result.tokens_revoked, result.sessions_revoked, result.accounts_flagged) == (2, 0, 0)
    revoked = {tokens_of["alice"][0], tokens_of["bob"][0]}
    assert live_tokens(registry) == before - revoked
    assert audited(registry, "revoke_token") == sorted((f"token:{t}", 1) for t in revoked)
    # Nobody's flag, nobody's sessions: the phase asked nothing of the factors.
    assert marked(registry, "tfa_required_at") == set()
    with registry.engine.connect() as connection:
        reasons = set(
            connection.execute(select(Token.revoked_reason).where(Token.id.in_(revoked))).scalars()
        )
        live_sessions = connection.execute(
            select(func.count()).select_from(WebSession).where(WebSession.revoked_at.is_(None))
        ).scalar_one()
    assert reasons == {
        "phase top-100: no classic tokens; no tokens that bypass 2FA required of cohort top-100"
    }
    assert live_sessions == 3

    # Nothing is left to do: a second run finds both accounts compliant.
    again = enforce.preview_phase(registry, token_plan, token_plan.phase("top-100"))
    assert again.count == 0 and again.tokens == []
    second = enforce.enforce_phase(
        registry, token_plan, "top-100", expect=0, expect_tokens=0, actor="rm"
    )
    assert second.tokens_revoked == 0
    assert len(audited(registry, "revoke_token")) == 2


def test_every_account_a_phase_acts_on_is_audited_as_required_once(
    registry: Registry, token_plan: Plan, key_plan: Plan, tokens_of: dict[str, list[int]]
) -> None:
    """The ledger names whom each phase applied to, whatever its effects: the marts read
    it (int_phase_requirements_known) for the funnel's required and the accounts acted
    on unwarned. A token phase's holders are phase_required; a security-key phase's TOTP
    users, short of the factor it asks, tfa_required; a rerun adds none."""
    enforce.enforce_phase(registry, token_plan, "top-100", expect=2, expect_tokens=2, actor="rm")
    with registry.engine.connect() as connection:
        ids = {name: id_ for name, id_ in connection.execute(select(Account.username, Account.id))}
    assert audited(registry, "phase_required") == [
        (f"account:{ids['alice']}", 1),
        (f"account:{ids['bob']}", 1),
    ]
    assert audited(registry, "tfa_required") == []
    key = phase_of(key_plan, name="keys")
    preview = enforce.preview_phase(registry, key, key.phase("keys"))
    enforce.enforce_phase(registry, key, "keys", expect=preview.count, actor="rm")
    enforce.enforce_phase(registry, key, "keys", expect=preview.count, actor="rm")
    with registry.engine.connect() as connection:
        keys = connection.execute(
            select(Action.action, func.count())
            .where(Action.phase == "keys")
            .where(Action.action.in_(["tfa_required", "phase_required"]))
            .group_by(Action.action)
        ).all()
    assert dict(keys) == {"tfa_required": preview.count}


def _new_classic_token(registry: Registry, username: str) -> None:
    """A classic token ``username`` made an hour before enforcement: after the preview."""
    with registry.engine.connect() as connection:
        owner = connection.execute(
            select(Account.id).where(Account.username == username)
        ).scalar_one()
    TokenFactory(account_id=owner, kind="publish", created_at=NOW - timedelta(hours=1))


def _revoked_by_its_owner(registry: Registry, token_id: int, reason: str) -> None:
    """The token revoked at NOW, as its owner does, outside the phase."""
    with registry.engine.begin() as connection:
        connection.execute(
            Token.__table__.update()
            .where(Token.id == token_id)
            .values(revoked_at=NOW, revoked_reason=reason)
        )


def test_a_rotated_token_at_the_same_count_refuses_with_the_previewed_fingerprint(
    registry: Registry, token_plan: Plan, tokens_of: dict[str, list[int]]
) -> None:
    """alice rotates her classic token (the old one revoked, a new one made): still 2
    accounts and 2 tokens, but not the tokens approved."""
    approved = enforce.preview_phase(registry, token_plan, token_plan.phase("top-100"))
    with registry.engine.begin() as connection:
        connection.execute(
            Token.__table__.update()
            .where(Token.id == tokens_of["alice"][0])
            .values(revoked_at=NOW - timedelta(hours=2))
        )
    _new_classic_token(registry, "alice")
    with pytest.raises(GuardRefused, match="accounts and tokens it would change now are not"):
        enforce.enforce_phase(
            registry,
            token_plan,
            "top-100",
            expect=approved.count,
            expect_tokens=approved.token_count,
            expect_list=approved.fingerprint,
            actor="rm",
        )
    assert audited(registry, "revoke_token") == []


def test_a_token_count_that_moved_since_the_preview_refuses_and_changes_nothing(
    registry: Registry, token_plan: Plan, tokens_of: dict[str, list[int]]
) -> None:
    with pytest.raises(GuardRefused, match="--expect-tokens"):
        enforce.enforce_phase(registry, token_plan, "top-100", expect=2, actor="rm")
    # A classic token made after the preview: not in the list the approver saw.
    _new_classic_token(registry, "alice")
    with pytest.raises(GuardRefused, match="revoke 3 tokens, not the 2 expected"):
        enforce.enforce_phase(
            registry, token_plan, "top-100", expect=2, expect_tokens=2, actor="rm"
        )
    limited = phase_of(token_plan, max_tokens=2)
    with pytest.raises(GuardRefused, match="blast-radius limit of 2"):
        enforce.enforce_phase(registry, limited, "top-100", expect=2, expect_tokens=3, actor="rm")
    assert audited(registry, "revoke_token") == []
    assert len(live_tokens(registry)) == 7  # six of the fixture, and the new one


def test_a_token_made_since_the_preview_is_named_in_the_refusal_with_its_preview(
    registry: Registry, token_plan: Plan, tokens_of: dict[str, list[int]], tmp_path: Path
) -> None:
    """The approved preview saved (as `phase preview` and the flow save it): the refusal
    of a token count that moved says, against it, what changed: the same accounts, one
    token more; as a GuardRefused that names it all, with nothing changed."""
    preview = enforce.preview_phase(registry, token_plan, token_plan.phase("top-100"))
    saved = save_preview(token_plan, preview, tmp_path, actor="rm")
    _new_classic_token(registry, "alice")
    with pytest.raises(enforce.NotAsPreviewed) as refused:
        enforce.enforce_phase(
            registry,
            token_plan,
            "top-100",
            expect=2,
            expect_tokens=2,
            expect_list=preview.fingerprint,
            actor="rm",
        )
    said = str(enforce.naming_changes(refused.value, tmp_path, preview.fingerprint))
    assert said.startswith("phase top-100 would revoke 3 tokens, not the 2 expected")
    assert said.endswith(
        f"({saved.csv_path.name}): 0 accounts no longer listed; 0 accounts newly listed; "
        "0 tokens no longer listed, 1 newly listed"
    )
    # No preview saved with that list here (taken elsewhere): the refusal as it was.
    assert enforce.naming_changes(refused.value, tmp_path, "0123456789ab") is refused.value
    assert audited(registry, "revoke_token") == []


def test_an_account_compliant_since_the_preview_keeps_its_tokens_and_sessions(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """PyPI's rule: a publishing token of an account without 2FA offends. The account
    enrols between the preview and its batch: it is skipped, nothing of it revoked."""
    first = AccountFactory(username="first", sessions=1, in_cohort="top-100")
    late = AccountFactory(username="late", sessions=1, in_cohort="top-100")
    TokenFactory(account=first, kind="publish")
    TokenFactory(account=late, kind="publish")
    pypi = phase_of(
        plan,
        requires={"no_write_tokens_without_2fa": True},
        effects=["require_2fa", "revoke_sessions", "revoke_tokens"],
        max_tokens=10,
        batch_size=1,
    )

    def enrol_late(done: int, total: int) -> None:
        if done == 1:
            FactorFactory(account_id=late.id, kind="webauthn", created_at=NOW)

    result = enforce.enforce_phase(
        registry, pypi, "top-100", expect=2, expect_tokens=2, actor="rm", progress=enrol_late
    )
    assert (result.tokens_revoked, result.sessions_revoked) == (1, 1)
    assert result.skipped_now_compliant == 1
    assert marked(registry, "tfa_required_at") == {"first"}
    with registry.engine.connect() as connection:
        late_live = connection.execute(
            select(func.count())
            .select_from(Token)
            .where(Token.account_id == late.id, Token.revoked_at.is_(None))
        ).scalar_one()
    assert late_live == 1


def test_an_account_that_rotated_its_token_during_the_run_is_left_for_the_next_preview(
    registry: Registry, token_plan: Plan, factories: None
) -> None:
    """rotator replaces its listed classic token with a new classic one after the
    preview but before its batch. The new token was never approved, so it stays live;
    nor is rotator recorded as enforced or told so (its enforcement email would say
    "nothing for you to do" with a forbidden token live). The next preview lists it,
    with the new token."""
    first = AccountFactory(username="first", with_totp=True, in_cohort="top-100")
    rotator = AccountFactory(username="rotator", with_totp=True, in_cohort="top-100")
    TokenFactory(account=first, name="ci-first", kind="automation")
    listed = TokenFactory(account=rotator, name="ci-old", kind="publish")
    one_by_one = phase_of(token_plan, batch_size=1)
    made_since: list[int] = []

    def rotate(done: int, total: int) -> None:
        if done == 1:
            _revoked_by_its_owner(registry, listed.id, "replaced by its maintainer")
            made_since.append(TokenFactory(account=rotator, name="ci-new", kind="publish").id)

    result = enforce.enforce_phase(
        registry, one_by_one, "top-100", expect=2, expect_tokens=2, actor="rm", progress=rotate
    )
    assert (result.accounts_required, result.tokens_revoked, result.emails_queued) == (1, 1, 1)
    assert (result.skipped_tokens_changed, result.skipped_now_compliant) == (1, 0)
    assert made_since[0] in live_tokens(registry)
    assert audited(registry, "phase_required") == [(f"account:{first.id}", 1)]
    with registry.engine.connect() as connection:
        told = connection.execute(select(Notification.account_id)).scalars().all()
    assert told == [first.id]

    again = enforce.preview_phase(registry, one_by_one, one_by_one.phase("top-100"))
    assert [t.username for t in again.targets] == ["rotator"]
    assert [t.token_id for t in again.tokens] == made_since


def test_a_listed_token_its_owner_revoked_at_the_batch_s_instant_is_not_counted_as_revoked(
    registry: Registry, token_plan: Plan, factories: None
) -> None:
    """holder revokes one of its two listed tokens itself, at the very instant its
    batch runs (a coarse or simulated clock). The phase revokes the other: it counts
    and audits that one alone, and the one its owner revoked keeps its owner's reason."""
    first = AccountFactory(username="first", with_totp=True, in_cohort="top-100")
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    TokenFactory(account=first, kind="automation")
    by_owner = TokenFactory(account=holder, name="ci-old", kind="publish")
    by_phase = TokenFactory(account=holder, name="ci-other", kind="publish")

    def owner_revokes(done: int, total: int) -> None:
        if done == 1:
            _revoked_by_its_owner(registry, by_owner.id, "revoked by its owner")

    result = enforce.enforce_phase(
        registry,
        phase_of(token_plan, batch_size=1),
        "top-100",
        expect=2,
        expect_tokens=3,
        actor="rm",
        progress=owner_revokes,
    )
    assert result.tokens_revoked == 2
    revoked = [t for t, _ in audited(registry, "revoke_token")]
    assert f"token:{by_phase.id}" in revoked and f"token:{by_owner.id}" not in revoked
    with registry.engine.connect() as connection:
        reason = connection.execute(
            select(Token.revoked_reason).where(Token.id == by_owner.id)
        ).scalar_one()
    assert reason == "revoked by its owner"


def test_the_warning_banner_then_rollback_clears_it_but_keeps_revocations(
    registry: Registry, plan: Plan, factories: None
) -> None:
    holder = AccountFactory(username="holder", with_totp=True, in_cohort="top-100")
    AccountFactory(username="plain", in_cohort="top-100")
    TokenFactory(account=holder, kind="publish")
    warn_then_revoke = phase_of(
        plan,
        requires={"no_classic_tokens": True},
        effects=["warn", "require_2fa", "revoke_tokens"],
        max_tokens=10,
    )
    result = enforce.enforce_phase(
        registry, warn_then_revoke, "top-100", expect=2, expect_tokens=1, actor="rm"
    )
    assert (result.accounts_warned, result.accounts_flagged, result.tokens_revoked) == (2, 1, 1)
    assert marked(registry, "warned_at") == {"holder", "plain"}
    assert marked(registry, "tfa_required_at") == {"plain"}

    rolled = enforce.rollback_phase(registry, warn_then_revoke, "top-100", actor="rm")
    assert (rolled.accounts_cleared, rolled.marks_cleared) == (1, 2)  # the banners counted
    assert marked(registry, "warned_at") == set()
    assert marked(registry, "tfa_required_at") == set()
    assert live_tokens(registry) == set()  # a revoked token stays revoked
    with registry.engine.connect() as connection:
        cleared = connection.execute(
            select(func.count()).select_from(Action).where(Action.action == "mark_cleared")
        ).scalar_one()
    assert cleared == 2


def test_a_rollback_clears_what_the_enforcement_set_though_the_plan_changed_since(
    registry: Registry, plan: Plan, key_plan: Plan, factories: None
) -> None:
    """Enforced requiring a security key and closing TOTP set-ups; the plan's phase then
    edited down to a banner. The rollback undoes what the runs did (their audit rows
    say), not what the plan says now: the flags stayed set, with no way to clear them."""
    AccountFactory(username="totp-only", with_totp=True, in_cohort="top-100")
    AccountFactory(username="plain", in_cohort="top-100")
    enforce.enforce_phase(registry, key_plan, "top-100", expect=2, actor="rm")
    assert marked(registry, "webauthn_required_at") == {"totp-only", "plain"}
    assert marked(registry, "totp_enrolment_closed_at") == {"totp-only", "plain"}
    edited = phase_of(plan, effects=["warn"])

    rolled = enforce.rollback_phase(registry, edited, "top-100", actor="rm")
    assert (rolled.requirements_withdrawn, rolled.accounts_cleared) == (2, 2)
    for mark in ("tfa_required_at", "webauthn_required_at", "totp_enrolment_closed_at"):
        assert marked(registry, mark) == set(), mark
    assert rolled.marks_cleared == 4


def test_marks_are_cleared_by_what_the_other_applied_phases_set(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """A phase that only warns does not hold up clearing the 2FA flag, and a 2FA phase
    does not hold up clearing the banner."""
    account = AccountFactory(username="both", in_cohort=["top-100", "high-impact"])
    TokenFactory(account=account, kind="publish")
    warn_only = Phase.model_validate(
        {
            **plan.phase("high-impact").model_dump(),
            "requires": {"two_factor": "none", "no_classic_tokens": True},
            "effects": ["warn"],
        }
    )
    both = plan.model_copy(update={"phases": [plan.phase("top-100"), warn_only]})
    enforce.enforce_phase(registry, both, "top-100", expect=1, actor="rm")
    enforce.enforce_phase(registry, both, "high-impact", expect=1, actor="rm")
    assert marked(registry, "tfa_required_at") == marked(registry, "warned_at") == {"both"}

    preview = enforce.rollback_preview(registry, "top-100", both)
    assert [(a.cleared, a.still_required_by) for a in preview.accounts] == [(True, ())]
    enforce.rollback_phase(registry, both, "top-100", actor="rm")
    assert marked(registry, "tfa_required_at") == set()
    assert marked(registry, "warned_at") == {"both"}  # high-impact still warns


def test_the_preview_counts_the_banner_and_totp_closing_as_enforcement_then_does(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """PyPI 2023: a banner phase after an earlier one showed it. The preview of the
    second names how many it newly shows the banner to (and closes to TOTP set-ups),
    the very numbers enforcement then reports, not only the accounts it acts on."""
    AccountFactory(username="seen", in_cohort=["top-100", "high-impact"])
    AccountFactory(username="fresh", in_cohort="top-100")
    AccountFactory(username="keyless", with_totp=True, in_cohort=["top-100", "high-impact"])
    earlier = Phase.model_validate(
        {
            **plan.phase("high-impact").model_dump(),
            "requires": {"two_factor": "phishing_resistant"},
            "effects": ["warn", "close_totp_enrolment"],
        }
    )
    later = phase_of(
        plan,
        requires={"two_factor": "phishing_resistant"},
        effects=["warn", "close_totp_enrolment"],
    )
    both = later.model_copy(update={"phases": [later.phase("top-100"), earlier]})
    enforce.enforce_phase(registry, both, "high-impact", expect=2, actor="rm")

    preview = enforce.preview_phase(registry, both, both.phase("top-100"))
    assert preview.count == 3
    assert (preview.newly_warned, preview.newly_totp_closed) == (1, 1)
    assert preview.effects_in_words() == (
        "warn (the banner newly shown to 1; 2 see it already), "
        "close_totp_enrolment (newly closed to 1; 2 closed already)"
    )
    result = enforce.enforce_phase(registry, both, "top-100", expect=3, actor="rm")
    assert (result.accounts_warned, result.totp_enrolment_closed) == (
        preview.newly_warned,
        preview.newly_totp_closed,
    )


# --- the command line -------------------------------------------------------------------


def test_the_cli_needs_the_token_count_typed_back(
    registry_url: str,
    token_plan: Plan,
    tokens_of: dict[str, list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(token_plan.model_dump_json())
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_PLAN", str(plan_file))
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    runner = CliRunner()
    shown = runner.invoke(app, ["phase", "preview", "top-100", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert "2 of their tokens would be revoked, which cannot be undone" in shown.stderr
    # It revokes tokens only: nobody is required anything nor signed out.
    said = " ".join(shown.stderr.split())
    assert "in cohort top-100; 2 of their tokens would be revoked" in said
    assert "signed out" not in said and "web sessions" not in said
    # Two token rules: how many tokens break each (alice's automation token both).
    assert (
        "which cannot be undone (by the rule each breaks, a token may break several: "
        "no classic tokens: 1, no tokens that bypass 2FA: 2)" in said
    )
    assert "with the rules each breaks)" in said
    assert "--apply --expect 2 --expect-tokens 2" in shown.stderr
    apply = to_apply(shown.stderr)
    assert apply[3:7] == ["--apply", "--expect", "2", "--expect-tokens"]
    without_tokens = [*apply[:6], *apply[8:]]
    refused = runner.invoke(app, without_tokens)
    # Typed back as the count and the list are: a usage error naming it, before the
    # lock is taken or the registry read (it was exit 3 after a whole preview).
    assert refused.exit_code == 2, refused.stderr
    assert " ".join(refused.stderr.split()) == (
        "error: --apply needs --expect-tokens T (the token count the preview showed): run "
        "`rollout phase preview top-100`, check the list, and copy the command it prints"
    )
    assert not audited_by_url(registry_url)
    done = runner.invoke(app, apply, catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    assert len(audited_by_url(registry_url)) == 2
    # Its rollback speaks of what a token phase set, and of the tokens it cannot undo.
    rollback = runner.invoke(app, ["phase", "rollback", "top-100"])
    assert rollback.exit_code == 0, rollback.stderr
    said = " ".join(rollback.stderr.split())
    assert "would withdraw the phase from 2 accounts; it set nothing on them to clear" in said
    outcomes = runner.invoke(app, ["phase", "rollback", "top-100", "--format", "json"])
    assert {row["outcome"] for row in json.loads(outcomes.stdout)} == {
        "withdrawn (nothing to clear)"
    }
    assert "revoked tokens stay revoked" in said
    assert "sessions" not in said and "2FA requirement" not in said


def audited_by_url(url: str) -> list[tuple[str, int]]:
    with Registry(url) as registry:
        return audited(registry, "revoke_token")


def test_a_phase_named_with_an_underscore_finds_only_the_tokens_it_revoked(
    registry: Registry, factories: None
) -> None:
    """LIKE reads _ as any character: phase a_b's check also took phase axb's tokens."""
    from rollout.registry.requirements import TOKENS, revoked_by_phase

    mine = TokenFactory(revoked_at=T0, revoked_reason="phase a_b: 2FA required of cohort c")
    TokenFactory(revoked_at=T0, revoked_reason="phase axb: 2FA required of cohort c")
    TokenFactory(revoked_at=T0, revoked_reason="phase a%b: 2FA required of cohort c")
    with registry.engine.connect() as connection:
        found = (
            connection.execute(select(TOKENS.c.id).where(revoked_by_phase(TOKENS, "a_b")))
            .scalars()
            .all()
        )
    assert found == [mine.id]


def test_a_warning_lists_the_tokens_enforcement_will_revoke_on_its_day(
    registry: Registry, plan: Plan, factories: None, tmp_path: Path
) -> None:
    """A token-age rule (no token older than 90 days) judged as enforcement will judge
    it: the notice sent 28 days before lists the token that will be 95 days old then
    (67 today), not the one that expires before that day (old enough today)."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from tests.support.outbox import Recording

    aged = phase_of(
        plan,
        requires={"two_factor": "none", "token_max_age_days": 90},
        effects=["revoke_tokens"],
        max_tokens=10,
    )
    top = aged.phase("top-100")
    enforced = datetime.combine(top.enforce_on, datetime.min.time())
    sam = AccountFactory(username="sam", with_totp=True, in_cohort="top-100")
    # (name, days old at enforcement, days before enforcement it expires; None: never)
    for name, age, expiry in (
        ("ages-by-then", 95, None),
        ("expires-before", 200, 3),
        ("young", 30, None),
    ):
        TokenFactory(
            account=sam,
            name=name,
            granular=True,
            created_at=enforced - timedelta(days=age),
            expires_at=None if expiry is None else enforced - timedelta(days=expiry),
        )
    with use_clock(
        SimulatedClock(datetime.combine(top.notice_on, datetime.min.time()) + timedelta(hours=9))
    ):
        queue_due(registry, aged, top.notice_on, actor="rm")
        sender = Recording()
        drain(registry, aged, sender)
    [notice] = sender.sent
    text = " ".join(notice.text.split())
    assert "ages-by-then" in text
    assert "expires-before" not in text and "young" not in text
    # And enforcement on the day revokes exactly the token the notice named.
    with use_clock(SimulatedClock(enforced + timedelta(hours=10))):
        preview = enforce.preview_phase(registry, aged, aged.phase("top-100"))
    assert [t.name for t in preview.tokens] == ["ages-by-then"]


# --- beside ELV's enrolment ----------------------------------------------------------


def _waiting_on_a_row_lock(registry: Registry) -> bool:
    """Whether another server process of this database waits for a lock on a row."""
    with registry.engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "select count(*) from pg_stat_activity where datname = current_database()"
                    " and pid <> pg_backend_pid() and wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


@postgres_only
def test_an_enforcement_and_elv_enrolment_at_once_both_finish(
    registry: Registry, plan: Plan, factories: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phase enforce` and `elv enroll-all` change the same account rows. Enforcement
    flags (one UPDATE) then warns (another) its batch; enrolment takes a range of ids.
    Had each locked the rows as its statements met them, enrolment would hold amy
    (flagged already, so the first UPDATE passed her) and wait for ben, while
    enforcement held ben and waited for amy: PostgreSQL's deadlock detector fails one.
    Both lock their rows first, in order of id: one waits, then both finish."""
    amy = AccountFactory(username="amy", in_cohort="top-100", tfa_required_at=T0)
    ben = AccountFactory(username="ben", in_cohort="top-100")
    assert amy.id < ben.id
    warns_too = phase_of(plan, effects=["require_2fa", "warn"])
    between_statements, go_on = threading.Event(), threading.Event()
    mark_accounts = enforce._mark_accounts

    def pause_before_warning(*args: Any, **kwargs: Any) -> int:
        between_statements.set()
        assert go_on.wait(30)
        return mark_accounts(*args, **kwargs)

    monkeypatch.setattr(enforce, "_mark_accounts", pause_before_warning)
    failures: list[BaseException] = []

    def run(work: Any) -> threading.Thread:
        def catching() -> None:
            try:
                work()
            except BaseException as error:
                failures.append(error)
                between_statements.set()

        thread = threading.Thread(target=catching)
        thread.start()
        return thread

    enforcing = run(
        lambda: enforce.enforce_phase(registry, warns_too, "top-100", expect=2, actor="rm")
    )
    assert between_statements.wait(30)
    enrolling = run(lambda: brownouts.enroll_all(registry, plan, actor="ops"))
    deadline = time.monotonic() + 30
    while not _waiting_on_a_row_lock(registry) and time.monotonic() < deadline:
        time.sleep(0.02)
    go_on.set()
    enforcing.join(60)
    enrolling.join(60)
    assert failures == []
    assert marked(registry, "warned_at") == {"amy", "ben"}
    assert marked(registry, "tfa_required_at") == {"amy", "ben"}
    assert marked(registry, "elv_enrolled_at") == {"amy", "ben"}

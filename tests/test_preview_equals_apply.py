"""What enforcement reports against what its approved preview showed, on SQLite and
PostgreSQL: the sessions it signs out and the tokens it revokes, when nothing changed
between the two, and when an account signed in or made a token meanwhile."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollout.core.errors import GuardRefused
from rollout.core.plan import Phase, Plan
from rollout.phases import enforce
from rollout.phases.previews import PhasePreview, SavedPreview, approved_preview_at, save_preview
from rollout.registry import Registry
from tests.factories import AccountFactory, SessionFactory, TokenFactory


@pytest.fixture
def revoking_plan(plan: Plan) -> Plan:
    """top-100 requires 2FA and holds no classic token: it flags, signs out and revokes."""
    phase = plan.phase("top-100")
    changed = Phase.model_validate(
        {
            **phase.model_dump(),
            "requires": {"two_factor": "any", "no_classic_tokens": True},
            "effects": ["require_2fa", "revoke_sessions", "revoke_tokens"],
            "max_tokens": 100,
        }
    )
    return plan.model_copy(update={"phases": [changed, *plan.phases[1:]]})


@pytest.fixture
def accounts(factories: None) -> dict[str, Any]:
    """alice: no 2FA, two live sessions, a classic token. dave: no 2FA, one session."""
    alice = AccountFactory(username="alice", sessions=2, in_cohort="top-100")
    TokenFactory(account=alice)
    dave = AccountFactory(username="dave", sessions=1, in_cohort="top-100")
    return {"alice": alice, "dave": dave}


def previewed(registry: Registry, plan: Plan, reports: Path) -> SavedPreview:
    preview = enforce.preview_phase(registry, plan, plan.phase("top-100"))
    return save_preview(plan, preview, reports, actor="rm")


def enforced(registry: Registry, plan: Plan, saved: SavedPreview) -> enforce.EnforceResult:
    return enforced_as(registry, plan, saved.preview, previewed_at=saved.at)


def enforced_as(
    registry: Registry, plan: Plan, p: PhasePreview, previewed_at: datetime | None = None
) -> enforce.EnforceResult:
    """top-100 enforced early, as ``p`` counted it (approved at ``previewed_at``; None:
    no time known, approved on another machine)."""
    return enforce.enforce_phase(
        registry,
        plan,
        "top-100",
        expect=p.count,
        expect_tokens=p.token_count,
        expect_list=p.fingerprint,
        actor="rm",
        early=True,
        previewed_at=previewed_at,
    )


def test_enforcement_signs_out_and_revokes_what_its_preview_counted(
    registry: Registry, revoking_plan: Plan, accounts: dict[str, Any], tmp_path: Path
) -> None:
    saved = previewed(registry, revoking_plan, tmp_path)
    assert (saved.preview.sessions, saved.preview.token_count) == (3, 1)
    result = enforced(registry, revoking_plan, saved)
    assert (result.sessions_revoked, result.tokens_revoked) == (3, 1)
    assert result.sessions_signed_in_since_preview == 0


def test_a_session_signed_in_since_the_preview_is_signed_out_and_counted_apart(
    registry: Registry, revoking_plan: Plan, accounts: dict[str, Any], tmp_path: Path
) -> None:
    """The preview said "3 web sessions"; alice signed in again before the approval.
    Enforcement signs every live session of its accounts out (the phase's rule: a
    session left live would be one the phase exists to end), and its report said
    ``sessions_revoked 4`` against the preview's 3 with nothing to reconcile them by:
    the session signed in since is counted apart."""
    saved = previewed(registry, revoking_plan, tmp_path)
    SessionFactory(account=accounts["alice"], created_at=saved.at + timedelta(seconds=1))
    result = enforced(registry, revoking_plan, saved)
    assert result.sessions_revoked == saved.preview.sessions + 1
    assert result.sessions_signed_in_since_preview == 1
    summary = result.summary()
    assert summary["sessions_revoked"] - summary["sessions_signed_in_since_preview"] == 3


def test_sessions_signed_in_since_an_unknown_preview_are_not_known_not_zero(
    registry: Registry, revoking_plan: Plan, accounts: dict[str, Any], tmp_path: Path
) -> None:
    """Approved on another machine (no saved preview here, so no time to count against),
    the run signed out 3 sessions and said 0 of them were signed in since the preview: a
    count it never took, read as measured. It is not known: None in the result, left out
    of the run's stored summary (not stored as 0)."""
    from sqlalchemy import select

    from rollout.registry.models import PlanRun

    saved = previewed(registry, revoking_plan, tmp_path)
    result = enforced_as(registry, revoking_plan, saved.preview)
    assert result.sessions_revoked == 3
    assert result.sessions_signed_in_since_preview is None
    assert result.summary()["sessions_signed_in_since_preview"] is None
    with registry.engine.connect() as connection:
        stored = connection.execute(
            select(PlanRun.summary).where(PlanRun.id == result.run_id)
        ).scalar_one()
    assert stored["sessions_revoked"] == 3
    assert "sessions_signed_in_since_preview" not in stored


def test_a_run_that_signs_out_no_session_knows_none_was_signed_in_since(
    registry: Registry, revoking_plan: Plan, factories: None
) -> None:
    """No preview time, but no session to sign out either: 0 of none is a measured 0."""
    AccountFactory(username="erin", sessions=0, in_cohort="top-100")
    p = enforce.preview_phase(registry, revoking_plan, revoking_plan.phase("top-100"))
    result = enforced_as(registry, revoking_plan, p)
    assert (result.accounts_required, result.sessions_revoked) == (1, 0)
    assert result.sessions_signed_in_since_preview == 0


def test_a_token_made_since_the_preview_refuses_rather_than_being_revoked_unseen(
    registry: Registry, revoking_plan: Plan, accounts: dict[str, Any], tmp_path: Path
) -> None:
    """Tokens are revoked by the list the preview showed: one made since changes the
    list's fingerprint (and the count), and enforcement refuses, revoking nothing."""
    saved = previewed(registry, revoking_plan, tmp_path)
    TokenFactory(account=accounts["dave"], created_at=saved.at)
    with pytest.raises(GuardRefused, match="would revoke 2 tokens, not the 1 expected") as refused:
        enforced(registry, revoking_plan, saved)
    named = enforce.naming_changes(refused.value, tmp_path, saved.preview.fingerprint)
    assert "0 tokens no longer listed, 1 newly listed" in str(named)


def test_the_approved_preview_s_time_is_found_by_its_list(
    registry: Registry, revoking_plan: Plan, accounts: dict[str, Any], tmp_path: Path
) -> None:
    saved = previewed(registry, revoking_plan, tmp_path)
    fingerprint = saved.preview.fingerprint
    assert approved_preview_at(tmp_path, "top-100", f" {fingerprint.upper()} ") == saved.at
    assert approved_preview_at(tmp_path, "high-impact", fingerprint) is None
    assert approved_preview_at(tmp_path, "top-100", "000000000000") is None
    assert approved_preview_at(tmp_path, "top-100", None) is None

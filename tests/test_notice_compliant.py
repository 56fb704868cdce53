"""A phase's notice to an account that already meets the phase goes only when the plan
asks (``notify_compliant``): a banner phase's notice to every account with 2FA, or a
token phase's to every account holding no such token, was mail with nothing to do
(PyPI 2023: 374 of 374 accounts noticed of the banner, 248 of them with 2FA). The notice
an account needs, before the enforcement that acts on it, still goes: to one short of
the phase, and to one that falls short after its notice was skipped."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from rollout.core.errors import BadInput
from rollout.core.plan import Plan, load_plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.notify.drain import drain
from rollout.notify.queue import queue_due, queue_preview
from rollout.registry import Registry
from rollout.registry.models import TfaFactor
from tests.factories import FactorFactory, bound_to, existing_account
from tests.support.outbox import Recording, ids, on, rows

__all__ = ["ids"]  # a fixture, used by name
REFERENCE = Path(__file__).resolve().parents[1] / "plans" / "npm-2022.yaml"


@pytest.fixture
def plan_not_thanking(plan: Plan) -> Plan:
    """The reference plan with its top-100 phase's notice to accounts short of it only."""
    phases = [
        p.model_copy(update={"notify_compliant": False}) if p.name == "top-100" else p
        for p in plan.phases
    ]
    return plan.model_copy(update={"phases": phases})


def test_an_account_that_meets_the_phase_gets_no_notice_unless_the_plan_asks(
    registry: Registry, plan_not_thanking: Plan, ids: dict[str, int]
) -> None:
    with on(NOTICE_DAY):
        [preview] = queue_preview(registry, plan_not_thanking, NOTICE_DAY)
        assert (preview.added, preview.skipped) == (4, 3)
        queue_due(registry, plan_not_thanking, NOTICE_DAY, actor="rm")
        sender = Recording()
        drain(registry, plan_not_thanking, sender)
    assert rows(registry, "phase_notice")["ben"] == ("skipped", "already compliant")
    assert rows(registry, "phase_notice")["ann"] == ("sent", None)  # it must act: told
    assert [m.to_name for m in sender.sent] == ["ann"]


def test_the_reference_plan_asks_for_the_thank_you(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    assert all(p.notify_compliant for p in plan.phases)
    with on(NOTICE_DAY):
        queue_due(registry, plan, NOTICE_DAY, actor="rm")
    assert rows(registry, "phase_notice")["ben"] == ("queued", None)


def test_an_account_that_enrolls_before_its_notice_is_sent_gets_none(
    registry: Registry, plan_not_thanking: Plan, ids: dict[str, int]
) -> None:
    with on(NOTICE_DAY):
        queue_due(registry, plan_not_thanking, NOTICE_DAY, actor="rm")
        with bound_to(registry.engine):
            FactorFactory(account=existing_account(ids["ann"]), kind="webauthn")
        sender = Recording()
        drain(registry, plan_not_thanking, sender)
    assert sender.sent == []
    assert rows(registry, "phase_notice")["ann"] == ("skipped", "already compliant")


def test_an_account_that_drops_2fa_after_its_notice_was_skipped_is_told_before_enforcement(
    registry: Registry, plan_not_thanking: Plan, ids: dict[str, int]
) -> None:
    """Skipped as compliant on the notice day, ben removes its TOTP: the next day's
    queue sends it the notice, before the enforcement that will flag it."""
    with on(NOTICE_DAY):
        queue_due(registry, plan_not_thanking, NOTICE_DAY, actor="rm")
        drain(registry, plan_not_thanking, Recording())
    with registry.engine.begin() as connection:
        connection.execute(
            update(TfaFactor)
            .where(TfaFactor.account_id == ids["ben"])
            .values(removed_at=datetime(2022, 1, 5, 12))
        )
    later = date(2022, 1, 6)
    with on(later):
        [preview] = queue_preview(registry, plan_not_thanking, later)
        assert preview.added == 1  # ben's notice, queued again
        queue_due(registry, plan_not_thanking, later, actor="rm")
        sender = Recording()
        drain(registry, plan_not_thanking, sender)
    [told] = sender.sent
    assert told.to_name == "ben" and told.subject.startswith("Action needed")
    assert rows(registry, "phase_notice")["ben"] == ("sent", None)
    with on(date(2022, 1, 7)):  # still compliant accounts are not queued again daily
        [again] = queue_preview(registry, plan_not_thanking, date(2022, 1, 7))
        assert again.added == 0


def test_notify_compliant_is_true_or_false_refused_at_its_line(tmp_path: Path) -> None:
    text = REFERENCE.read_text().replace("notify_compliant: true", 'notify_compliant: "yes"', 1)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if '"yes"' in row)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=rf"^{path}:{line}: phases\.0\.notify_compliant"):
        load_plan(path)


def test_a_phase_with_per_account_deadlines_must_notify_compliant_accounts_too(
    tmp_path: Path,
) -> None:
    """A notice skipped as compliant starts no clock: under per-account deadlines an
    account with 2FA until last_notice_on that dropped it after had no deadline, and
    daily enforcement never flagged it. plan check refuses the phase, at its line."""
    github = REFERENCE.parent / "github-2023.yaml"
    text = github.read_text().replace("    notify_compliant: true\n", "")
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "- name: publishers" in row)
    with pytest.raises(
        BadInput, match=rf"^{path}:{line}: phases\.0\.notify_compliant: .*never be enforced"
    ):
        load_plan(path)

"""Org 2FA enforcement on SQLite and PostgreSQL: audit, owner guard, confirm, removals."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.fingerprints import list_fingerprint
from rollout.core.plan import Plan
from rollout.phases import orgs
from rollout.registry import Registry, batches
from rollout.registry.ledger import start_run
from rollout.registry.locks import RunLockLost
from rollout.registry.models import (
    Account,
    Action,
    Notification,
    Org,
    OrgInvitation,
    OrgMember,
    TeamMember,
    TfaFactor,
)
from tests.factories import (
    AccountFactory,
    FactorFactory,
    OrgFactory,
    OrgMemberFactory,
    TeamFactory,
    TeamMemberFactory,
    existing_account,
    existing_org,
)
from tests.hostile import PROSE
from tests.support.env import without_rollout_settings
from tests.support.previews import names_read_back
from tests.support.run_locks import lose_run_lock_during

from .conftest import postgres_only


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
    with pytest.raises(GuardRefused, match="'bo' has no 2FA"):
        orgs.enforce_org(registry, "acme", confirm="acme", owner="bo", actor="t")
    with pytest.raises(GuardRefused, match="'cy' is not an owner"):
        orgs.enforce_org(registry, "acme", confirm="acme", owner="cy", actor="t")


# One member a statement as well: the removals go in slices (rollout.registry.batches).
@pytest.mark.parametrize("in_list_max", [batches.IN_LIST_MAX, 1])
def test_enforce_removes_members_without_2fa_once(
    registry: Registry, acme: dict[str, int], in_list_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "IN_LIST_MAX", in_list_max)
    result = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert (result.removed, result.owner_summaries_queued, result.already_enforced) == (
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


def test_a_later_run_tells_whom_it_removed_and_the_owners_again(
    registry: Registry, acme: dict[str, int]
) -> None:
    orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    # fay joins later without 2FA (the registry let her in: enforcement came after).
    fay = AccountFactory(username="fay")
    OrgMemberFactory(org_id=_org(registry), account=fay, role="developer")
    later = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert (later.removed, later.owner_summaries_queued, later.already_enforced) == (
        ["fay"],
        1,
        True,
    )
    with registry.engine.connect() as connection:
        emails = connection.execute(
            select(Notification.email, Account.username, Notification.context)
            .join(Account, Account.id == Notification.account_id)
            .where(Notification.run_id == later.run_id)
            .order_by(Notification.email)
        ).all()
    assert [(e, u) for e, u, _ in emails] == [
        ("org_enforcement_summary", "ada"),
        ("org_removal_notice", "fay"),
    ]
    assert emails[0].context["removed"] == ["fay"]


def test_enforce_with_a_count_typed_back_refuses_when_more_would_go(
    registry: Registry, acme: dict[str, int]
) -> None:
    """The preview showed bo and di; fay joined without 2FA since: refused, nobody removed."""
    assert len(orgs.enforcement_preview(registry, "acme")) == 2
    OrgMemberFactory(
        org_id=_org(registry), account=AccountFactory(username="fay"), role="developer"
    )
    with pytest.raises(GuardRefused, match="has 3 members without 2FA to remove, not the 2"):
        orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t", expect=2)
    assert len(orgs.audit_org(registry, "acme")) == 5
    done = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t", expect=3)
    assert done.removed == ["bo", "di", "fay"]


def test_another_list_of_the_same_size_refuses_with_the_previewed_fingerprint(
    registry: Registry, acme: dict[str, int]
) -> None:
    """The preview showed bo and di; bo enabled 2FA and fay joined without it since:
    still two, but fay was on no list the owner saw. Nobody is removed."""
    approved = orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme"))
    FactorFactory(account=existing_account(acme["bo"]), kind="totp")
    OrgMemberFactory(
        org_id=_org(registry), account=AccountFactory(username="fay"), role="developer"
    )

    def enforce(listed: str) -> orgs.OrgEnforcement:
        return orgs.enforce_org(
            registry, "acme", confirm="acme", owner="ada", actor="t", expect=2, expect_list=listed
        )

    with pytest.raises(GuardRefused, match="are not the ones previewed"):
        enforce(approved)
    assert len(orgs.audit_org(registry, "acme")) == 5
    done = enforce(orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme")))
    assert done.removed == ["di", "fay"]


def test_a_member_removed_again_after_rejoining_is_audited_again(
    registry: Registry, acme: dict[str, int]
) -> None:
    """di is removed, rejoins, drops 2FA and is removed again: two removals, two rows."""
    orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    with registry.engine.begin() as connection:
        connection.execute(
            update(OrgMember)
            .where(OrgMember.account_id == acme["di"])
            .values(removed_at=None, removed_reason=None)
        )
    again = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert again.removed == ["di"]
    with registry.engine.connect() as connection:
        removals = connection.execute(
            select(Action.run_id).where(
                Action.action == "org_member_removed", Action.account_id == acme["di"]
            )
        ).all()
    assert len(removals) == 2 and removals[1].run_id == again.run_id


# --- invitations back ---------------------------------------------------------------------


@pytest.fixture
def enforced(registry: Registry, acme: dict[str, int]) -> dict[str, int]:
    """acme enforced (bo and di removed), then di enabled TOTP; a release team."""
    orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    FactorFactory(account_id=acme["di"], kind="totp", created_at=datetime(2022, 2, 2))
    TeamFactory(org_id=_org(registry), name="release")
    return acme


def _org(registry: Registry) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(select(Org.id).where(Org.name == "acme")).scalar_one()


def test_only_members_enforcement_removed_who_now_use_2fa_are_invited_back(
    registry: Registry, enforced: dict[str, int]
) -> None:
    # bo: removed, still no 2FA. ed: left on their own before. di: removed, now TOTP.
    assert [i.username for i in orgs.reinvite_preview(registry, "acme", "release")] == ["di"]
    with pytest.raises(BadInput, match=r"no team 'devs' in org 'acme' \(teams: 'release'\)"):
        orgs.reinvite_preview(registry, "acme", "devs")


def test_reinvite_is_guarded_and_happens_once(registry: Registry, enforced: dict[str, int]) -> None:
    with pytest.raises(GuardRefused, match="--confirm acme"):
        orgs.reinvite(registry, "acme", "release", owner="ada", confirm="x", expect=1, actor="t")
    with pytest.raises(GuardRefused, match="'cy' is not an owner"):
        orgs.reinvite(registry, "acme", "release", owner="cy", confirm="acme", expect=1, actor="t")
    with pytest.raises(GuardRefused, match="1 member to invite back, not the 2 expected"):
        orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=2, actor="t")

    done = orgs.reinvite(
        registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t"
    )
    assert (done.invited, done.emails_queued) == (["di"], 1)
    # Pending now: a second run finds nobody to invite, and changes nothing.
    assert orgs.reinvite_preview(registry, "acme", "release") == []
    again = orgs.reinvite(
        registry, "acme", "release", owner="ada", confirm="acme", expect=0, actor="t"
    )
    assert (again.invited, again.emails_queued) == ([], 0)
    [invitation] = orgs.invitations(registry, "acme", actor="t")
    assert (invitation.username, invitation.team, invitation.state, invitation.invited_by) == (
        "di",
        "release",
        "pending",
        "ada",
    )
    assert invitation.expires_at - invitation.created_at == timedelta(days=orgs.INVITATION_DAYS)
    with registry.engine.connect() as connection:
        emails = (
            connection.execute(
                select(Notification.context).where(Notification.email == "org_invitation")
            )
            .scalars()
            .all()
        )
        sent = connection.execute(
            select(func.count()).select_from(Action).where(Action.action == "org_invitation_sent")
        ).scalar_one()
    assert [(e["org"], e["team"], e["invited_by"]) for e in emails] == [("acme", "release", "ada")]
    assert sent == 1


def test_reinvite_invites_every_member_back_in_one_run(
    registry: Registry, enforced: dict[str, int]
) -> None:
    """Two and more invitations go in one statement of many rows, as one does."""
    FactorFactory(account_id=enforced["bo"], kind="webauthn", created_at=datetime(2022, 2, 3))
    done = orgs.reinvite(
        registry, "acme", "release", owner="ada", confirm="acme", expect=2, actor="t"
    )
    assert (sorted(done.invited), done.emails_queued) == (["bo", "di"], 2)
    invitations = orgs.invitations(registry, "acme", actor="t")
    assert sorted((i.username, i.state) for i in invitations) == [
        ("bo", "pending"),
        ("di", "pending"),
    ]
    assert orgs.reinvite_preview(registry, "acme", "release") == []


def test_invitations_are_recorded_accepted_or_expired(
    registry: Registry, enforced: dict[str, int]
) -> None:
    start = datetime(2022, 3, 1, 10)
    with use_clock(SimulatedClock(start)):
        orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t")
    _accepts(registry, enforced["di"], start + timedelta(days=1))
    with use_clock(SimulatedClock(start + timedelta(days=2))):
        [accepted] = orgs.invitations(registry, "acme", actor="t")
    assert accepted.state == "accepted"

    # bo enables 2FA later, is invited, and lets the invitation lapse.
    FactorFactory(account_id=enforced["bo"], kind="webauthn", created_at=start)
    with use_clock(SimulatedClock(start + timedelta(days=3))):
        orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t")
    late = start + timedelta(days=3 + orgs.INVITATION_DAYS, seconds=1)
    with use_clock(SimulatedClock(late)):
        states = {i.username: i.state for i in orgs.invitations(registry, "acme", actor="t")}
        # Expired: bo may be invited again.
        assert [i.username for i in orgs.reinvite_preview(registry, "acme", "release")] == ["bo"]
    assert states == {"di": "accepted", "bo": "expired"}
    with registry.engine.connect() as connection:
        audit = sorted(
            connection.execute(
                select(Action.action).where(Action.action.like("org_invitation_%"))
            ).scalars()
        )
    assert audit == [
        "org_invitation_accepted",
        "org_invitation_expired",
        "org_invitation_sent",
        "org_invitation_sent",
    ]


def test_an_invitation_email_is_not_sent_to_a_member_back_already(
    registry: Registry, enforced: dict[str, int], plan: Plan
) -> None:
    """di accepts on the registry's site (a member again) while the invitation's email
    waits, and nobody has run `orgs invitations` since, which records it accepted: the
    send sent "acme invites you back" to a member back already. It is skipped, too
    late, as one the registry has recorded accepted is; bo's, still pending, goes."""
    from rollout.notify.drain import drain, skips_waiting
    from rollout.notify.outbox import TOO_LATE
    from tests.support.outbox import Recording, rows

    start = datetime(2022, 3, 1, 10)
    FactorFactory(account_id=enforced["bo"], kind="webauthn", created_at=start)
    with use_clock(SimulatedClock(start)):
        orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=2, actor="t")
    _accepts(registry, enforced["di"], start + timedelta(hours=1))
    sender = Recording()
    with use_clock(SimulatedClock(start + timedelta(hours=2))):
        assert skips_waiting(registry, plan) == {(TOO_LATE, "org_invitation"): 1}
        drain(registry, plan, sender)
    assert [m.to_name for m in sender.sent if m.email == "org_invitation"] == ["bo"]
    assert rows(registry, "org_invitation")["di"] == ("skipped", TOO_LATE)


@pytest.fixture
def cli(registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`rollout ARGS...` against this test's registry, with a home of its own."""
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_reinvite_from_the_command_line(
    registry: Registry, enforced: dict[str, int], cli: Callable[..., Any]
) -> None:
    run = cli
    preview = run("orgs", "reinvite", "acme", "--team", "release", "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    assert [m["username"] for m in json.loads(preview.stdout)] == ["di"]
    fingerprint = orgs.invitation_fingerprint(
        orgs.reinvite_preview(registry, "acme", "release"), "release"
    )
    assert f"--owner YOU --confirm acme --expect 1 --expect-list {fingerprint}" in " ".join(
        preview.stderr.split()
    )
    # Given with the preview, the owner is in the command it prints: it runs as printed.
    by_ada = run("orgs", "reinvite", "acme", "--team", "release", "--owner", "ada")
    assert by_ada.exit_code == 0 and "reinvite acme --team release --owner ada --confirm acme" in (
        " ".join(by_ada.stderr.split())
    )
    assert run("orgs", "reinvite", "acme", "--team", "release", "--confirm", "acme").exit_code == 2
    assert run("orgs", "reinvite", "acme", "--team", "nope").exit_code == 2
    confirm = ("orgs", "reinvite", "acme", "--team", "release", "--owner", "ada")
    moved = run(*confirm, "--confirm", "acme", "--expect", "2", "--expect-list", fingerprint)
    assert moved.exit_code == 3 and "not the 2 expected" in moved.stderr
    done = run(
        *confirm,
        *("--confirm", "acme", "--expect", "1", "--expect-list", fingerprint),
        *("--format", "json"),
    )
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["invited_members"] == ["di"]
    listed = json.loads(run("orgs", "invitations", "acme", "--format", "json").stdout)
    assert [(i["username"], i["team"], i["state"]) for i in listed] == [
        ("di", "release", "pending")
    ]


def test_an_invitation_to_an_account_deleted_since_is_still_listed_as_deleted(
    registry: Registry, enforced: dict[str, int], cli: Callable[..., Any]
) -> None:
    """The registry closes di's account after di was invited back: the owner still sees
    the invitation, its invitee shown as deleted (by id, with no name)."""
    orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t")
    with registry.engine.begin() as connection:
        connection.execute(delete(Account).where(Account.id == enforced["di"]))

    [invitation] = orgs.invitations(registry, "acme", actor="t")
    assert (invitation.username, invitation.account_id, invitation.account_deleted) == (
        None,
        enforced["di"],
        True,
    )
    assert (invitation.team, invitation.state) == ("release", "pending")
    listed = cli("orgs", "invitations", "acme", "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    assert [
        (i["username"], i["account_id"], i["account_deleted"], i["state"])
        for i in json.loads(listed.stdout)
    ] == [(None, enforced["di"], True, "pending")]
    table = cli("orgs", "invitations", "acme")
    assert re.search(r"'acme': 1 invitation\b", table.stdout) and "True" in table.stdout


def test_enforce_from_the_command_line_names_the_owners_going_and_needs_the_count(
    registry: Registry, acme: dict[str, int], cli: Callable[..., Any]
) -> None:
    run = cli
    preview = run("orgs", "enforce", "acme")
    said = " ".join(preview.stderr.split())
    assert (
        preview.exit_code == 0
        and "of them 1 owner, without 2FA, is removed too: owner 'bo'" in said
    )
    listed = orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme"))
    assert f"--owner YOU --confirm acme --expect 2 --expect-list {listed}" in said
    by_ada = " ".join(run("orgs", "enforce", "acme", "--owner", "ada").stderr.split())
    assert f"enforce acme --owner ada --confirm acme --expect 2 --expect-list {listed}" in by_ada
    # It removes people: the count is typed back, always.
    unchecked = run("orgs", "enforce", "acme", "--owner", "ada", "--confirm", "acme")
    assert unchecked.exit_code == 2 and "--confirm needs --expect" in unchecked.stderr
    assert [m.username for m in orgs.enforcement_preview(registry, "acme")] == ["bo", "di"]

    # The members removed, a list for programs (it was their names in one string, or
    # "none").
    apply = ("orgs", "enforce", "acme", "--owner", "ada", "--confirm", "acme", "--format", "json")
    done = run(*apply, "--expect", "2", "--expect-list", listed)
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["removed_members"] == ["bo", "di"]
    # The owners' summary is queued, not sent: said so ("owners_notified" was not true
    # until the next send, which may yet skip it).
    assert json.loads(done.stdout)["owner_summaries_queued"] == 1
    assert "owners_notified" not in json.loads(done.stdout)
    nobody = orgs.removal_fingerprint([])
    again = run(*apply, "--expect", "0", "--expect-list", nobody)
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["removed_members"] == []

    # With no owner using 2FA, every --owner would be refused: no command to copy.
    with registry.engine.begin() as connection:
        connection.execute(
            update(OrgMember)
            .where(OrgMember.account_id == acme["ada"])
            .values(removed_at=datetime(2022, 1, 1))
        )
    alone = run("orgs", "enforce", "acme")
    said = " ".join(alone.stderr.split())
    assert alone.exit_code == 0 and "no owner of 'acme' uses 2FA" in said
    assert "--confirm" not in said


def test_a_removed_member_leaves_the_orgs_teams_and_the_audit_says_which(
    registry: Registry, acme: dict[str, int]
) -> None:
    """As leaving an org does (the removal email says so): kept, a membership restored
    later would bring back every team's package access."""
    org_id = _org(registry)
    release = TeamFactory(org_id=org_id, name="release")
    docs = TeamFactory(org_id=org_id, name="docs")
    elsewhere = TeamFactory(name="other-org-team")
    for team, name in ((release, "di"), (docs, "di"), (release, "cy"), (elsewhere, "di")):
        TeamMemberFactory(team=team, account_id=acme[name])
    orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t", expect=2)
    with registry.engine.connect() as connection:
        memberships = set(
            connection.execute(select(TeamMember.team_id, TeamMember.account_id)).all()
        )
        removed = dict(
            connection.execute(
                select(Account.username, Action.details)
                .join(Account, Account.id == Action.account_id)
                .where(Action.action == "org_member_removed")
            ).all()
        )
    # di left acme's teams, not another org's; cy (2FA) stays.
    assert memberships == {(release.id, acme["cy"]), (elsewhere.id, acme["di"])}
    assert removed == {"bo": {"teams": []}, "di": {"teams": ["docs", "release"]}}


def test_an_invitation_accepted_before_the_member_is_removed_again_reads_accepted(
    registry: Registry, enforced: dict[str, int]
) -> None:
    """di is invited back, accepts, drops 2FA and is removed again before anyone listed
    the invitations: the invitation was accepted (not pending, nor later expired), and
    once di uses 2FA again, di can be invited back again."""
    start = datetime(2022, 3, 1, 10)
    with use_clock(SimulatedClock(start)):
        orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t")
    _accepts(registry, enforced["di"], start + timedelta(hours=1))
    with registry.engine.begin() as connection:
        connection.execute(
            update(TfaFactor)
            .where(TfaFactor.account_id == enforced["di"])
            .values(removed_at=start + timedelta(hours=2))
        )
    with use_clock(SimulatedClock(start + timedelta(hours=3))):
        again = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert again.removed == ["di"]
    FactorFactory(account_id=enforced["di"], kind="webauthn", created_at=start)
    with use_clock(SimulatedClock(start + timedelta(hours=4))):
        [invitation] = orgs.invitations(registry, "acme", actor="t")
        assert [i.username for i in orgs.reinvite_preview(registry, "acme", "release")] == ["di"]
    assert invitation.state == "accepted"
    with registry.engine.connect() as connection:
        audit = connection.execute(
            select(Action.action).where(Action.action.like("org_invitation_%")).order_by(Action.id)
        ).scalars()
        assert list(audit) == ["org_invitation_sent", "org_invitation_accepted"]


def test_reinvite_refuses_another_list_of_the_same_size_than_the_one_previewed(
    registry: Registry, enforced: dict[str, int], cli: Callable[..., Any]
) -> None:
    """The preview shows di; then di drops 2FA and bo enables it: one to invite either
    way, but not the one the owner confirmed. Nobody is invited."""
    preview = cli("orgs", "reinvite", "acme", "--team", "release")
    listed = orgs.invitation_fingerprint(
        orgs.reinvite_preview(registry, "acme", "release"), "release"
    )
    assert f"--expect 1 --expect-list {listed}" in " ".join(preview.stderr.split())
    with registry.engine.begin() as connection:
        connection.execute(
            update(TfaFactor)
            .where(TfaFactor.account_id == enforced["di"])
            .values(removed_at=datetime(2022, 2, 4))
        )
    FactorFactory(account_id=enforced["bo"], kind="webauthn", created_at=datetime(2022, 2, 4))
    with pytest.raises(GuardRefused, match="not the ones previewed"):
        orgs.reinvite(
            registry,
            "acme",
            "release",
            owner="ada",
            confirm="acme",
            expect=1,
            expect_list=listed,
            actor="t",
        )
    confirm = ["--owner", "ada", "--confirm", "acme", "--expect", "1", "--expect-list"]
    swapped = cli("orgs", "reinvite", "acme", "--team", "release", *confirm, listed)
    assert swapped.exit_code == 3 and "not the ones previewed" in swapped.stderr
    mistyped = cli("orgs", "reinvite", "acme", "--team", "release", *confirm, "1")
    assert mistyped.exit_code == 2
    assert orgs.invitations(registry, "acme", actor="t") == []
    now = orgs.invitation_fingerprint(orgs.reinvite_preview(registry, "acme", "release"), "release")
    done = cli("orgs", "reinvite", "acme", "--team", "release", *confirm, now)
    assert done.exit_code == 0, done.stderr
    assert [i.username for i in orgs.invitations(registry, "acme", actor="t")] == ["bo"]


@pytest.mark.parametrize(
    "command",
    [
        ("orgs", "enforce", "acme"),
        ("orgs", "reinvite", "acme", "--team", "release"),
    ],
    ids=["enforce", "reinvite"],
)
def test_an_owner_confirms_the_exact_list_the_preview_showed_not_only_its_count(
    registry: Registry, enforced: dict[str, int], cli: Callable[..., Any], command: tuple[str, ...]
) -> None:
    """The owner confirms the exact list (DESIGN): --confirm with the count but without
    the list's fingerprint is a usage error naming --expect-list and the preview to run
    (exit 2), and nobody is removed or invited."""
    OrgMemberFactory(org=existing_org(_org(registry)), account=AccountFactory(username="fy"))
    before = _state(registry)
    count = len(json.loads(cli(*command, "--format", "json").stdout))
    assert count == 1
    refused = cli(*command, "--owner", "ada", "--confirm", "acme", "--expect", str(count))
    said = " ".join(refused.stderr.split())
    assert refused.exit_code == 2, said
    assert "--confirm needs --expect-list F" in said
    assert f"run `rollout {' '.join(command)}`" in said
    assert _state(registry) == before


def _state(registry: Registry) -> tuple[object, ...]:
    """What enforcing or inviting back would change: memberships, invitations, emails,
    the audit."""
    with registry.engine.connect() as connection:
        counts = [
            connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (Action, Notification, OrgInvitation)
        ]
        members = connection.execute(select(OrgMember.account_id, OrgMember.removed_at))
        return (*counts, sorted(members.all()))


def test_members_removed_before_the_org_was_renamed_are_invited_back_under_its_new_name(
    registry: Registry, enforced: dict[str, int]
) -> None:
    """acme becomes acme-inc after its enforcement removed bo and di: di, now with 2FA,
    is still a member its enforcement removed (not one who left on their own)."""
    with registry.engine.begin() as connection:
        connection.execute(update(Org).where(Org.name == "acme").values(name="acme-inc"))
    assert [i.username for i in orgs.reinvite_preview(registry, "acme-inc", "release")] == ["di"]
    done = orgs.reinvite(
        registry, "acme-inc", "release", owner="ada", confirm="acme-inc", expect=1, actor="t"
    )
    assert done.invited == ["di"]


def test_enforce_refuses_when_a_previewed_name_now_belongs_to_another_account(
    registry: Registry, acme: dict[str, int]
) -> None:
    """di's account is deleted after the preview, and a new account takes the name di
    and joins without 2FA: the same names and count, but not the member previewed."""
    previewed = orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme"))
    with registry.engine.begin() as connection:
        connection.execute(delete(Account).where(Account.id == acme["di"]))
    newcomer = AccountFactory(username="di")
    OrgMemberFactory(org=existing_org(_org(registry)), account=newcomer, role="developer")
    assert [m.username for m in orgs.enforcement_preview(registry, "acme")] == ["bo", "di"]
    with pytest.raises(GuardRefused, match="not the ones previewed"):
        orgs.enforce_org(
            registry,
            "acme",
            confirm="acme",
            owner="ada",
            actor="t",
            expect=2,
            expect_list=previewed,
        )
    assert [m.username for m in orgs.enforcement_preview(registry, "acme")] == ["bo", "di"]


def test_names_holding_the_fingerprints_separator_make_different_lists() -> None:
    """{'x,y', 'z'} and {'x', 'y,z'}: two lists of two each, two fingerprints (a
    registry's names are data: any character may be in one)."""
    assert list_fingerprint(["x,y", "z"]) != list_fingerprint(["x", "y,z"])
    assert list_fingerprint(["a;b"]) != list_fingerprint(["a"], ["b"])
    assert list_fingerprint(["a\\,b"]) != list_fingerprint(["a\\", "b"])


def _accepts(registry: Registry, account_id: int, at: datetime) -> None:
    """The member accepts the invitation: the registry makes them a member again."""
    with registry.engine.begin() as connection:
        connection.execute(
            update(OrgMember)
            .where(OrgMember.account_id == account_id)
            .values(removed_at=None, removed_reason=None, joined_at=at)
        )


def test_an_org_enforcement_killed_then_run_again_is_no_longer_listed_interrupted(
    registry: Registry, acme: dict[str, int], plan: Plan
) -> None:
    """`plan show` says of a killed org enforcement "re-run it": once a re-run finished
    the work, it no longer does. One of another org, or killed after, still is."""
    from rollout.core.calendar import org_enforcement_step
    from rollout.phases.timeline import interrupted_off_calendar

    def killed(org: str) -> str:
        with registry.engine.begin() as connection:
            return start_run(
                connection,
                plan="orgs",
                step=org_enforcement_step(org),
                mode="apply",
                actor="rm",
                parameters={"org": org, "owner": "ada"},
                lock="orgs",
            )

    first, other = killed("acme"), killed("beta")
    assert [run.id for run in interrupted_off_calendar(registry, plan)] == [first, other]
    orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="rm")
    assert [run.id for run in interrupted_off_calendar(registry, plan)] == [other]
    later = killed("acme")
    assert [run.id for run in interrupted_off_calendar(registry, plan)] == [other, later]


def test_a_member_promoted_to_owner_since_the_preview_is_not_removed_as_previewed(
    registry: Registry, acme: dict[str, int]
) -> None:
    """The preview showed bo (owner) and di (developer), and warned of one owner going;
    di is made an owner since: the same accounts, but the org would lose a second owner
    the confirming owner was never told of. Refused, naming the owners it would remove
    now; nobody is removed."""
    approved = orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme"))
    with registry.engine.begin() as connection:
        connection.execute(
            update(OrgMember).where(OrgMember.account_id == acme["di"]).values(role="owner")
        )
    with pytest.raises(GuardRefused, match="not the ones previewed") as refused:
        orgs.enforce_org(
            registry, "acme", confirm="acme", owner="ada", actor="t", expect=2, expect_list=approved
        )
    assert "2 owners ('bo', 'di')" in str(refused.value)
    assert [m.username for m in orgs.enforcement_preview(registry, "acme")] == ["bo", "di"]


def _said(result: Any) -> str:
    return " ".join(result.stderr.split())


def test_an_org_preview_is_saved_as_a_phase_preview_is(
    registry: Registry, acme: dict[str, int], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """The list the owner confirms is kept: its CSV under reports/previews/, named as a
    phase preview's, its record beside it (who, when, the counts, the fingerprint),
    each preview its own files; the preview says where."""
    first = cli("orgs", "enforce", "acme")
    assert first.exit_code == 0, first.stderr
    [path] = (tmp_path / "reports" / "previews").glob("*.csv")
    assert re.fullmatch(r"org-acme-\d{8}T\d{6}-[0-9a-f]{8}\.csv", path.name)
    assert f"the list: {path}" in _said(first)
    assert path.read_text().splitlines() == [
        "account_id,username,role,tfa_status,joined_at",
        *(
            f"{m.account_id},{m.username},{m.role},none,{m.joined_at.isoformat()}"
            for m in orgs.enforcement_preview(registry, "acme")
        ),
    ]
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["kind"] == "org-enforce" and record["org"] == "acme"
    assert (record["members"], record["owners"], record["admins"]) == (2, 1, 0)
    assert record["fingerprint"] == orgs.removal_fingerprint(
        orgs.enforcement_preview(registry, "acme")
    )
    assert record["csv"] == path.name and record["org_id"] == _org(registry)
    assert cli("orgs", "enforce", "acme").exit_code == 0
    assert len(list((tmp_path / "reports" / "previews").glob("org-acme-*.json"))) == 2
    # Nothing else is left behind (atomic writes), and no plan step reads them: plan
    # show reads phase previews beside them, without a word on the org's.
    assert not list((tmp_path / "reports" / "previews").glob(".*"))
    shown = cli("plan", "show")
    assert shown.exit_code == 0, shown.stderr
    assert "warning" not in shown.stderr


def test_an_org_preview_of_a_hostile_org_name_stays_in_its_folder(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    """An org's name is the registry's: any character. Its file name is made safe, and
    its record keeps the name as it is."""
    name = "../../x\n=evil"
    OrgFactory(name=name)
    path = orgs.save_enforcement_preview(registry, name, [], tmp_path, actor="t")
    assert path.parent == tmp_path / "previews"
    assert re.fullmatch(r"org-x_evil-[0-9a-f]{12}-\d{8}T\d{6}-[0-9a-f]{8}\.csv", path.name)
    assert json.loads(path.with_suffix(".json").read_text())["org"] == name


def test_an_org_enforcement_refused_as_not_previewed_names_who_changed_since(
    registry: Registry, acme: dict[str, int], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Since the preview (bo, owner; di, developer): bo enabled 2FA, a newcomer joined
    without it, di was made an owner. Two members either way: the refusal (exit 3,
    nobody removed) names who left the list, who joined it and whose role changed,
    names as data, with the preview's time and file. Then di leaves the org: another
    count, named the same way."""
    apply = ("orgs", "enforce", "acme", "--owner", "ada", "--confirm", "acme")
    preview = cli("orgs", "enforce", "acme")
    listed = orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme"))
    [csv_name] = [p.name for p in (tmp_path / "reports" / "previews").glob("*.csv")]
    FactorFactory(account=existing_account(acme["bo"]), kind="totp")
    OrgMemberFactory(
        org=existing_org(_org(registry)),
        account=AccountFactory(username="=fay\nx"),
        role="developer",
    )
    with registry.engine.begin() as connection:
        connection.execute(
            update(OrgMember).where(OrgMember.account_id == acme["di"]).values(role="owner")
        )
    before = _state(registry)

    refused = cli(*apply, "--expect", "2", "--expect-list", listed)
    assert refused.exit_code == 3, refused.stderr
    [said] = refused.stderr.splitlines()
    assert said.count("are not the ones previewed") == 1
    assert (
        f"({csv_name}): 1 member no longer listed ('bo'); 1 member newly listed ('=fay\\x0ax'); "
        "1 role changed ('di': developer to owner)"
    ) in said
    assert preview.exit_code == 0 and _state(registry) == before

    with registry.engine.begin() as connection:
        connection.execute(
            update(OrgMember)
            .where(OrgMember.account_id == acme["di"])
            .values(removed_at=datetime(2022, 2, 3))
        )
    fewer = cli(*apply, "--expect", "2", "--expect-list", listed)
    assert fewer.exit_code == 3
    said = _said(fewer)
    assert "org 'acme' has 1 member without 2FA to remove, not the 2 expected" in said
    assert "2 members no longer listed ('bo', 'di'); 1 member newly listed ('=fay\\x0ax')" in said
    # A fingerprint no preview here showed (another machine's): the refusal alone.
    elsewhere = cli(*apply, "--expect", "1", "--expect-list", "0123456789ab")
    assert elsewhere.exit_code == 3 and "no longer listed" not in elsewhere.stderr
    assert _state(registry)[:3] == before[:3]
    assert [m.username for m in orgs.enforcement_preview(registry, "acme")] == ["=fay\nx"]


@pytest.mark.parametrize("name", PROSE)
def test_an_org_refusal_names_a_hostile_member_as_one_name(
    registry: Registry, acme: dict[str, int], cli: Callable[..., Any], name: str
) -> None:
    """Since the preview, bo enabled 2FA and an admin named as prose joined without it
    (``bo); 2 accounts newly listed (eve``, ``di and 40 more``): the refusal (exit 3,
    nobody removed) names them each as one quoted name, who left the list, who joined
    it and the admin it would now remove, each reading back as exactly the username."""
    listed = orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme"))
    assert cli("orgs", "enforce", "acme").exit_code == 0
    FactorFactory(account=existing_account(acme["bo"]), kind="totp")
    OrgMemberFactory(
        org=existing_org(_org(registry)), account=AccountFactory(username=name), role="admin"
    )
    before = _state(registry)

    refused = cli(
        *("orgs", "enforce", "acme", "--owner", "ada", "--confirm", "acme"),
        *("--expect", "2", "--expect-list", listed),
    )

    assert refused.exit_code == 3, refused.stderr
    [said] = refused.stderr.splitlines()
    removed, gone, new = re.search(
        r"\(it would remove 1 admin \((.*)\) now\).*1 member no longer listed \((.*)\); "
        r"1 member newly listed \((.*)\)$",
        said,
    ).groups()
    assert names_read_back(removed) == [name] and names_read_back(new) == [name]
    assert names_read_back(gone) == ["bo"]
    assert _state(registry) == before


def test_a_reinvitation_refused_as_not_previewed_names_who_changed_since(
    registry: Registry, enforced: dict[str, int], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """The preview showed di; then di dropped 2FA and bo enabled it: one either way,
    but the refusal names who left the list and who joined it; nobody is invited."""
    preview = cli("orgs", "reinvite", "acme", "--team", "release")
    assert preview.exit_code == 0, preview.stderr
    [path] = (tmp_path / "reports" / "previews").glob("*.csv")
    assert re.fullmatch(r"org-acme-reinvite-\d{8}T\d{6}-[0-9a-f]{8}\.csv", path.name)
    assert f"the list: {path}" in _said(preview)
    record = json.loads(path.with_suffix(".json").read_text())
    assert (record["kind"], record["team"], record["members"]) == ("org-reinvite", "release", 1)
    listed = record["fingerprint"]
    with registry.engine.begin() as connection:
        connection.execute(
            update(TfaFactor)
            .where(TfaFactor.account_id == enforced["di"])
            .values(removed_at=datetime(2022, 2, 4))
        )
    FactorFactory(account_id=enforced["bo"], kind="webauthn", created_at=datetime(2022, 2, 4))
    confirm = ("--owner", "ada", "--confirm", "acme", "--expect", "1", "--expect-list", listed)
    refused = cli("orgs", "reinvite", "acme", "--team", "release", *confirm)
    assert refused.exit_code == 3, refused.stderr
    said = _said(refused)
    assert "not the ones previewed" in said
    assert f"({path.name}): 1 member no longer listed ('di'); 1 member newly listed ('bo')" in said
    assert "role" not in said
    assert orgs.invitations(registry, "acme", actor="t") == []


def test_a_reinvitation_into_another_team_than_previewed_is_refused_as_not_previewed(
    registry: Registry, enforced: dict[str, int], cli: Callable[..., Any]
) -> None:
    """The owner previewed di's invitation back into release, then typed its count and
    fingerprint back with --team admins: the same member, but another team than the
    one approved. Refused, naming both teams; nobody is invited. Applied as previewed,
    di goes into release."""
    TeamFactory(org_id=_org(registry), name="admins")
    preview = cli("orgs", "reinvite", "acme", "--team", "release")
    assert preview.exit_code == 0, preview.stderr
    listed = re.search(r"--expect-list ([0-9a-f]{12})", _said(preview))
    assert listed, preview.stderr
    confirm = ("--owner", "ada", "--confirm", "acme", "--expect", "1")
    elsewhere = cli(
        "orgs", "reinvite", "acme", "--team", "admins", *confirm, "--expect-list", listed[1]
    )
    assert elsewhere.exit_code == 3, elsewhere.stderr
    said = _said(elsewhere)
    assert "not the ones previewed" in said
    assert "the team: 'release' previewed, 'admins' now" in said
    assert orgs.invitations(registry, "acme", actor="t") == []
    with pytest.raises(GuardRefused, match="not the ones previewed"):
        orgs.reinvite(
            registry,
            "acme",
            "admins",
            owner="ada",
            confirm="acme",
            expect=1,
            expect_list=listed[1],
            actor="t",
        )
    done = cli(
        "orgs", "reinvite", "acme", "--team", "release", *confirm, "--expect-list", listed[1]
    )
    assert done.exit_code == 0, done.stderr
    assert [(i.username, i.team) for i in orgs.invitations(registry, "acme", actor="t")] == [
        ("di", "release")
    ]


def test_a_reinvitation_preview_of_nobody_says_so_and_saves_nothing(
    registry: Registry, enforced: dict[str, int], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """di was invited back already, and bo still has no 2FA: nobody to invite. The
    preview says so (exit 0) and neither saves a list nor prints an apply that would
    invite nobody, as notify withdraw's preview of nothing."""
    orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t")
    preview = cli("orgs", "reinvite", "acme", "--team", "release", "--format", "json")
    assert preview.exit_code == 0, preview.stderr
    assert json.loads(preview.stdout) == []
    said = _said(preview)
    assert "nobody to invite back" in said
    assert "--confirm" not in said and "the list:" not in said
    previews = tmp_path / "reports" / "previews"
    assert not previews.exists() or not list(previews.iterdir())


@pytest.mark.parametrize("name", PROSE)
def test_a_reinvitation_preview_of_nobody_quotes_the_org(
    registry: Registry, factories: None, cli: Callable[..., Any], name: str
) -> None:
    """An org's name is the registry's data: 'nobody to invite back' showed it as it
    was, so an org named ``bo, di`` or ``di and 40 more`` read as more of the sentence.
    Quoted, as every refusal names it."""
    from rollout.core.controls import quoted

    TeamFactory(org=OrgFactory(name=name), name="release")
    preview = cli("orgs", "reinvite", name, "--team", "release")
    assert preview.exit_code == 0, preview.stderr
    assert f"no member the enforcement of {quoted(name)} removed" in _said(preview)


@pytest.mark.parametrize("name", PROSE)
def test_the_members_enforcement_removed_read_as_those_members_in_its_table(
    registry: Registry, acme: dict[str, int], cli: Callable[..., Any], name: str
) -> None:
    """bo renamed 'bo, di' (or 'di and 40 more'): the record's removed_members cell read
    'bo, di, di', three people removed where two were. A table quotes each member (CSV
    gives a JSON array: tests/test_output.py)."""
    with registry.engine.begin() as connection:
        connection.execute(update(Account).where(Account.id == acme["bo"]).values(username=name))
    listed = orgs.removal_fingerprint(orgs.enforcement_preview(registry, "acme"))
    apply = ("orgs", "enforce", "acme", "--owner", "ada", "--confirm", "acme", "--expect", "2")
    done = cli(*apply, "--expect-list", listed)
    assert done.exit_code == 0, done.stderr
    [cell] = [
        line.split("│")[2].strip() for line in done.stdout.splitlines() if "removed_members" in line
    ]
    assert sorted(names_read_back(cell)) == sorted([name, "di"])


def test_an_org_refusal_stands_on_its_own_where_its_preview_cannot_say_who_changed(
    registry: Registry, acme: dict[str, int], tmp_path: Path
) -> None:
    """The refusal as it is (the same one): no fingerprint typed back, one no preview
    here was saved with (taken on another machine), the list unchanged since, or the
    preview's CSV cut short (a row of fewer cells than its header)."""
    members = orgs.enforcement_preview(registry, "acme")
    saved = orgs.save_enforcement_preview(registry, "acme", members, tmp_path, actor="ada")
    typed = orgs.removal_fingerprint(members)
    listed = {m.account_id: (m.username, m.role) for m in members}

    def refusal(listed: dict[int, tuple[str, str | None]]) -> orgs.MembersNotAsPreviewed:
        return orgs.MembersNotAsPreviewed(
            "not the ones previewed", orgs.ENFORCE_PREVIEW, _org(registry), listed
        )

    unchanged, fewer = refusal(listed), refusal(dict(list(listed.items())[1:]))
    assert orgs.naming_member_changes(fewer, tmp_path, None) is fewer
    assert orgs.naming_member_changes(fewer, tmp_path, "0123456789ab") is fewer
    assert orgs.naming_member_changes(unchanged, tmp_path, typed) is unchanged
    said = str(orgs.naming_member_changes(fewer, tmp_path, f" {typed.upper()} "))
    assert said.startswith("not the ones previewed; since the preview of ")
    assert said.endswith(
        f"({saved.name}): 1 member no longer listed ('{members[0].username}'); "
        "0 members newly listed"
    )

    lines = saved.read_text(encoding="utf-8").splitlines()
    saved.write_text("\n".join([*lines[:-1], lines[-1].split(",")[0]]) + "\n", encoding="utf-8")
    assert orgs.naming_member_changes(fewer, tmp_path, typed) is fewer


@postgres_only
def test_an_org_command_whose_run_lock_session_ends_commits_nothing(
    registry: Registry, acme: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the orgs lock went with its session (a server restart, a pooler, a
    keepalive timeout) while enforcement worked, and another org command may be at
    work: nothing of this run commits (no removal, no email, no audit row); its rerun
    does the job once."""
    with monkeypatch.context() as patched, pytest.raises(RunLockLost, match="orgs run lock"):
        lose_run_lock_during(patched, orgs, "queue_each", registry, "orgs")
        orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert [m.username for m in orgs.audit_org(registry, "acme")] == ["ada", "bo", "cy", "di"]
    with registry.engine.connect() as connection:
        assert connection.execute(select(Org.tfa_enforced_at)).scalar_one() is None
        assert connection.execute(select(func.count()).select_from(Notification)).scalar_one() == 0
        assert connection.execute(select(func.count()).select_from(Action)).scalar_one() == 0
    done = orgs.enforce_org(registry, "acme", confirm="acme", owner="ada", actor="t")
    assert (done.removed, done.already_enforced) == (["bo", "di"], False)


@postgres_only
def test_a_reinvitation_whose_run_lock_session_ends_invites_no_one(
    registry: Registry, enforced: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As enforcement: reinvite with its lock lost commits no invitation and no email;
    and listing the invitations (which records those settled) commits nothing either."""
    start = datetime(2022, 3, 1, 10)
    with (
        monkeypatch.context() as patched,
        use_clock(SimulatedClock(start)),
        pytest.raises(RunLockLost, match="the orgs run lock was lost"),
    ):
        lose_run_lock_during(patched, orgs, "queue_each", registry, "orgs")
        orgs.reinvite(registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t")
    with registry.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(OrgInvitation)).scalar_one() == 0
        assert connection.execute(select(func.count()).select_from(Notification)).scalar_one() == 3
    with use_clock(SimulatedClock(start)):
        again = orgs.reinvite(
            registry, "acme", "release", owner="ada", confirm="acme", expect=1, actor="t"
        )
    assert again.invited == ["di"]
    # Past its days, the invitation has expired: listing records it, unless the lock went.
    late = SimulatedClock(start + timedelta(days=orgs.INVITATION_DAYS, seconds=1))
    with (
        monkeypatch.context() as patched,
        use_clock(late),
        pytest.raises(RunLockLost, match="the orgs run lock was lost"),
    ):
        lose_run_lock_during(patched, orgs, "settle_invitations", registry, "orgs")
        orgs.invitations(registry, "acme", actor="t")
    with registry.engine.connect() as connection:
        assert connection.execute(select(OrgInvitation.state)).scalars().all() == ["pending"]
    with use_clock(late):
        assert [i.state for i in orgs.invitations(registry, "acme", actor="t")] == ["expired"]

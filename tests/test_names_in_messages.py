"""A name a user chose, said in a sentence of the tool's, is one quoted name
(rollout.core.controls.quoted), whatever it holds: an org ``acme uses 2FA; 40 owners``,
a phase ``bo, di`` or a username ``o'neil', 'x`` never reads as more of the sentence
around it. One representative message of each command group, on both backends."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.controls import quoted
from rollout.core.plan import Plan
from rollout.notify.drain import drain
from rollout.registry import Registry
from rollout.registry.models import Notification
from tests.factories import (
    AccountFactory,
    NotificationFactory,
    OrgFactory,
    OrgMemberFactory,
)
from tests.hostile import PROSE
from tests.support.env import without_rollout_settings
from tests.support.outbox import Recording
from tests.support.previews import names_read_back

ROOT = Path(__file__).resolve().parent.parent
# One quoted name as rollout.core.controls.quoted writes it.
QUOTED = r"('(?:[^'\\]|\\.)*')"


@pytest.fixture
def cli(registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`rollout ARGS...` against this test's registry, with a home of its own."""
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def named(result: Any, before: str, after: str) -> list[str]:
    """The name said between ``before`` and ``after`` (the tool's own words), read back;
    the message is one line however the console wrapped it."""
    said = " ".join(result.stderr.split())
    found = re.search(re.escape(before) + " " + QUOTED + " " + re.escape(after), said)
    assert found, said
    return names_read_back(found[1])


@pytest.mark.parametrize("name", PROSE)
def test_an_org_with_no_owner_using_2fa_is_named_as_one_name(
    factories: None, cli: Callable[..., Any], name: str
) -> None:
    """`orgs enforce` of an org none of whose owners uses 2FA says so, naming the org as
    one quoted name: ``no owner of acme uses 2FA; 40 owners uses 2FA`` read as prose."""
    OrgMemberFactory(org=OrgFactory(name=name), account=AccountFactory(), role="owner")

    preview = cli("orgs", "enforce", name)

    assert preview.exit_code == 0, preview.stderr
    assert named(preview, "preview only: no owner of", "uses 2FA") == [name]


@pytest.mark.parametrize("name", PROSE)
def test_nothing_to_withdraw_names_the_phase_asked_for_as_one_name(
    registry: Registry, cli: Callable[..., Any], name: str
) -> None:
    """`notify withdraw --phase org:NAME` with nothing queued says so (exit 0), the phase
    (an org's enforcement, named after the org) one quoted name."""
    result = cli("notify", "withdraw", "--phase", f"org:{name}", "--email", "org_removal_notice")

    assert result.exit_code == 0, result.stderr
    said = named(
        result, "no queued, failed or in-flight emails of phase", "and kind org_removal_notice"
    )
    assert said == [f"org:{name}"]


@pytest.mark.parametrize("name", PROSE)
def test_a_phase_the_plan_does_not_have_is_named_as_one_name(
    registry: Registry, cli: Callable[..., Any], name: str
) -> None:
    result = cli("phase", "preview", name)

    assert result.exit_code == 2
    assert named(result, "no phase", "in plan npm-2022") == [name]


@pytest.mark.parametrize("name", PROSE)
def test_a_cohort_the_plan_does_not_have_is_named_as_one_name(
    registry: Registry, cli: Callable[..., Any], name: str
) -> None:
    result = cli("cohorts", "diff", "2022-01-03", "2022-01-04", "--cohort", name)

    assert result.exit_code == 2
    assert named(result, "no cohort", "in plan npm-2022") == [name]


@pytest.mark.parametrize("name", PROSE)
def test_a_brownout_window_there_is_not_is_named_as_one_name(
    registry: Registry, cli: Callable[..., Any], name: str
) -> None:
    result = cli("brownout", "end", name, "--reason", "drill")

    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    found = re.search("no brown-out window named " + QUOTED + ": the registry has none", said)
    assert found, said
    assert names_read_back(found[1]) == [name]


@pytest.mark.parametrize("name", PROSE)
def test_an_account_exempted_twice_is_named_as_one_name(
    registry: Registry, cli: Callable[..., Any], tmp_path: Path, name: str
) -> None:
    """`plan check` of a plan exempting one username twice names it (exit 2): as it
    was, ``bo, di is exempted twice`` read as two people."""
    exempt = json.dumps({"username": name, "reason": "bot account"})
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    assert "  accounts: []" in text
    plan = tmp_path / "plan.yaml"
    plan.write_text(text.replace("  accounts: []", f"  accounts: [{exempt}, {exempt}]", 1))

    result = cli("plan", "check", str(plan))

    assert result.exit_code == 2
    assert named(result, "exemptions.accounts.1.username:", "is exempted twice") == [name]


@pytest.mark.parametrize("command", ["suppress", "unsuppress"])
@pytest.mark.parametrize("name", PROSE)
def test_the_accounts_an_address_reaches_are_named_each_as_one_name(
    factories: None, cli: Callable[..., Any], name: str, command: str
) -> None:
    """`notify suppress` (and `unsuppress`) previews whom the address silences, the
    usernames to check before `--apply`: as it was, ``shared@example.com: 2 accounts use
    it: bo, di, carol`` read as three people, and the address was bare."""
    AccountFactory(username=name, email="shared@example.com")
    AccountFactory(username="carol", email="Shared@Example.com")

    result = cli("notify", command, "shared@example.com", "--reason", "bounced")

    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    found = re.search(QUOTED + r": 2 accounts use it: ((?:" + QUOTED + "(?:, )?)+)", said)
    assert found, said
    assert names_read_back(found[1]) == ["shared@example.com"]
    assert sorted(names_read_back(found[2])) == sorted([name, "carol"])


@pytest.mark.parametrize("command", ["suppress", "unsuppress"])
def test_an_address_that_is_none_is_named_as_one_name(
    registry: Registry, cli: Callable[..., Any], command: str
) -> None:
    """A value that is not an email address is refused (exit 2) naming it as every
    message names a value typed: quoted, a line break shown as ``\\x0a`` (as it was,
    Python's ``repr``: ``'\\n'``, and another quote when the value held one)."""
    typed = "o'neil\nerror: x"

    result = cli("notify", command, typed, "--reason", "bounced")

    assert result.exit_code == 2
    found = re.search("^error: " + QUOTED + " is not an email address", result.stderr)
    assert found, result.stderr
    assert names_read_back(found[1]) == [typed]


@pytest.mark.parametrize("name", PROSE)
def test_the_owners_and_admins_an_org_enforcement_removes_are_named_each_as_one_name(
    factories: None, cli: Callable[..., Any], name: str
) -> None:
    """`orgs enforce`'s preview says apart who runs the org and goes (docs/security.md:
    "an org preview names among the owners and admins it removes"): it counted them
    only, "of them 1 owner and 1 admin, without 2FA, are removed too", naming none."""
    org = OrgFactory(name="acme")
    OrgMemberFactory(org=org, account=AccountFactory(username="ada"), role="owner")
    OrgMemberFactory(org=org, account=AccountFactory(username=name), role="owner")
    OrgMemberFactory(org=org, account=AccountFactory(username="cy"), role="admin")
    OrgMemberFactory(org=org, account=AccountFactory(username="di"), role="developer")

    preview = cli("orgs", "enforce", "acme")

    assert preview.exit_code == 0, preview.stderr
    said = " ".join(preview.stderr.split())
    found = re.search(
        r"of them 2 owners and 1 admin, without 2FA, are removed too: owners (?P<owners>(?:"
        + QUOTED
        + r"(?:, )?)+); admin (?P<admin>"
        + QUOTED
        + ")",
        said,
    )
    assert found, said
    assert sorted(names_read_back(found["owners"])) == sorted(["ada", name])
    assert names_read_back(found["admin"]) == ["cy"]


@pytest.mark.parametrize("command", ["suppress", "unsuppress"])
def test_an_address_longer_than_any_account_s_is_named_as_one_name(
    registry: Registry, cli: Callable[..., Any], command: str
) -> None:
    """An address past the longest an account's can be is refused (exit 2) naming its
    start as every message names a value typed: quoted, its quote and backslash each
    escaped (Python's ``repr`` put it in double quotes and doubled the backslash)."""
    typed = "o'neil\\" + "a" * 320 + "@example.com"

    result = cli("notify", command, typed, "--reason", "bounced")

    assert result.exit_code == 2
    found = re.search(
        "^error: " + QUOTED + r"\.\.\. is 339 characters: an address has at most 320",
        result.stderr,
    )
    assert found, result.stderr
    assert names_read_back(found[1]) == [typed[:40]]


@pytest.mark.parametrize("kind", ["o'neil\x1b[2K", "back\\slash"])
def test_a_queued_email_of_no_kind_this_code_has_fails_naming_it_as_one_name(
    factories: None, registry: Registry, plan: Plan, kind: str
) -> None:
    """An email queued under a kind this code does not know (a newer rollout's, a row
    edited by hand) fails, naming the kind as `notify status --email` names one: quoted,
    not in Python's repr (which put this one in double quotes)."""
    NotificationFactory(email=kind, account=AccountFactory(username="ann"))

    drain(registry, plan, Recording())

    with registry.engine.connect() as connection:
        [(state, error)] = connection.execute(select(Notification.state, Notification.error))
    assert (state, error) == ("failed", f"no email named {quoted(kind)}")

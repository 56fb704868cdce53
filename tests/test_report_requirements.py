"""The adoption report measures each cohort against what its phases require, and tells
the plan's own story: a cohort a phase requires a security key of (``two_factor:
phishing_resistant``: npm 2025's totp-closed, "a security key of the top 50 packages'
maintainers") is compliant with a key, not with any 2FA. Its headline read "Cohort
everyone with 2FA 87.7%" while 68% held a key, beside a funnel and a methods table
that counted keys; and the token section spoke npm 2022's words of any plan."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import duckdb
import pytest

from rollout.core.plan import Phase, Plan, load_plan
from rollout.registry import Registry
from rollout.report.reporting import build_report, report_from_registry, token_notes
from rollout.warehouse import open_warehouse
from tests.factories import AccountFactory, FactorFactory
from tests.support.reports import AS_OF, create_marts, run_report

REPO = Path(__file__).resolve().parents[1]
KEY_NOTE = "the accounts with a security key (phase top-100 requires one: TOTP alone falls short)"


@pytest.fixture
def key_plan(plan: Plan) -> Plan:
    """The reference plan whose top-100 phase requires a security key; high-impact
    still asks any 2FA."""
    top = plan.phase("top-100")
    keys = Phase.model_validate(
        {
            **top.model_dump(),
            "requires": {"two_factor": "phishing_resistant"},
            "effects": ["require_2fa", "close_totp_enrolment"],
        }
    )
    return plan.model_copy(update={"phases": [keys, *plan.phases[1:]]})


def test_a_cohort_asked_for_a_security_key_is_measured_by_security_keys(
    registry: Registry,
    factories: None,
    key_plan: Plan,
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
) -> None:
    """Of top-100's 10 maintainers 8 have 2FA, 2 of them a security key (one with TOTP
    too, counted once): 20% compliant, not 80%. high-impact asks any 2FA: 2 of 3."""
    for n in range(6):
        AccountFactory(username=f"totp-{n}", with_totp=True, in_cohort="top-100")
    AccountFactory(username="key", with_webauthn=True, in_cohort="top-100")
    both = AccountFactory(username="both", with_webauthn=True, in_cohort="top-100")
    FactorFactory(account=both, kind="totp")
    AccountFactory(username="none-1", in_cohort="top-100")
    AccountFactory(username="none-2", in_cohort="top-100")
    AccountFactory(username="wide-totp", with_totp=True, in_cohort="high-impact")
    AccountFactory(username="wide-key", with_webauthn=True, in_cohort="high-impact")
    AccountFactory(username="wide-none", in_cohort="high-impact")

    files = report_from_registry(con, registry, key_plan, AS_OF, tmp_path / "reports")

    figures = {p.population: p for p in files.populations}
    top, wide = figures["cohort:top-100"], figures["cohort:high-impact"]
    assert (top.accounts, top.with_2fa, top.webauthn, top.compliant) == (10, 8, 2, 2)
    assert top.share == pytest.approx(0.2)
    assert top.any_2fa_share == pytest.approx(0.8)  # still shown beside it
    assert (wide.accounts, wide.compliant) == (3, 2)
    assert wide.share == pytest.approx(2 / 3)
    everyone = figures["all"]
    assert everyone.share == pytest.approx(everyone.with_2fa / everyone.accounts)

    markdown = files.markdown.read_text()
    assert (
        "| population | accounts | with 2FA | with a security key | share compliant "
        "| change, 7 days |" in markdown
    )
    assert "| Cohort top-100 (compliant: a security key) | 10 | 8 | 2 | 20.0% |" in markdown
    assert "| Cohort high-impact | 3 | 2 | 1 | 66.7% |" in markdown
    assert KEY_NOTE in markdown
    # The funnel's note no longer sets its security-key counts against a headline of
    # any 2FA: both count keys.
    assert "as the headline measures its cohort (share compliant: with a security key)" in (
        markdown
    )
    assert "can exceed the headline" not in markdown
    html = files.html.read_text()
    card = re.search(r"Cohort top-100 with a security key[^<]*", html)
    assert card is not None
    assert card.group(0).startswith(
        "Cohort top-100 with a security key, as phase top-100 requires (2 of 10; "
        "with any 2FA 80.0%)"
    )
    assert "Cohort top-100 with 2FA" not in html
    assert KEY_NOTE in html
    # The chart and its daily table: top-100's line is its share with a key.
    assert "Cohort top-100 (a security key)" in html
    assert "Cohort top-100: the share with a security key, as phase top-100 requires" in html


def test_the_daily_shares_of_a_security_key_cohort_are_of_keys(
    tmp_path: Path, key_plan: Plan, plan: Plan
) -> None:
    """Every day of the chart's table and of the weekly Markdown follows the share with
    a key (the hand-made marts: a fifth of the accounts with 2FA hold one)."""
    files = run_report(tmp_path / "keys", key_plan)
    top = next(p for p in files.populations if p.population == "cohort:top-100")
    assert top.counts_a_key and top.key_phases == ("top-100",)
    assert top.share == pytest.approx(top.webauthn / top.accounts)
    assert top.share < top.any_2fa_share - 0.5  # type: ignore[operator]
    plain = run_report(tmp_path / "plain", plan)
    plain_top = next(p for p in plain.populations if p.population == "cohort:top-100")
    assert plain_top.share == pytest.approx(top.any_2fa_share)
    weekly = files.markdown.read_text().split("## Adoption over time")[1].split("## ")[0]
    # (The Markdown escapes a value's parentheses.)
    assert r"| day | All accounts | Cohort top-100 \(a security key\) | Cohort high-impact |" in (
        weekly
    )
    last = weekly.strip().splitlines()[-1]
    assert f"| {top.share * 100:.1f}% |" in last
    # The reference plan (any 2FA everywhere) reads as before: nothing of keys.
    for text in (plain.markdown.read_text(), plain.html.read_text()):
        assert "share compliant" not in text and "(a security key)" not in text
        assert "compliant: a security key" not in text


def test_the_token_section_follows_the_plan_not_npm_2022(tmp_path: Path, plan: Plan) -> None:
    """npm 2025's plan requires no 2FA to publish: no enforcement of it stops a CI for
    a legacy or personal token. Its phases revoke classic tokens and tokens that bypass
    2FA, and one requires a security key: the section says so, by the phases' names."""
    tokens = load_plan(REPO / "plans" / "npm-2025-tokens.yaml")
    as_of = date(2025, 12, 15)
    notes = " ".join(token_notes(tokens, as_of))
    assert "would stop their CI" not in notes
    assert "No phase of plan npm-2025-tokens requires 2FA" in notes
    assert "Phase classic-tokens revokes classic tokens" in notes
    assert "Phase bypass-tokens revokes tokens that bypass 2FA" in notes
    assert "Phase totp-closed requires a security key (TOTP alone falls short)" in notes
    with open_warehouse(tmp_path / "warehouse.duckdb") as con:
        create_marts(con)
        con.execute(
            "insert into token_readiness values "
            "('everyone', 10, 1, 1, 2, 8, 3, 1, 6, 3, null, null)"
        )
        files = build_report(con, tokens, as_of, tmp_path / "out")
    section = files.markdown.read_text().split("## Token readiness")[1].split("## ")[0]
    assert "Phase classic-tokens revokes classic tokens" in section
    assert "would stop their CI" not in section
    assert "Phase classic-tokens revokes classic tokens" in files.html.read_text()

    # The reference plan's two phases require 2FA: its words are npm 2022's.
    reference = " ".join(token_notes(plan, AS_OF))
    assert reference.startswith(
        "Phases top-100, high-impact require 2FA: maintainers who published in the 90 days "
        "to 2022-05-31 with a legacy (unnamed) or a personal publish token are not ready, "
        "as their enforcement would stop their CI."
    )
    assert "classic" not in reference and "security key" not in reference


def test_automation_tokens_are_not_said_to_keep_working_where_a_token_rule_stops_them(
    plan: Plan,
) -> None:
    """A phase that requires 2FA and caps how long a token lasts (npm's 90-day cap):
    an automation token gets through 2FA, but one that never expires is revoked all the
    same, so "Automation tokens keep working" was false of the phase's CI. The note
    names the phase's token rule; a phase with none, or one revoking no token, still says
    they keep working."""
    top = plan.phase("top-100")
    capped = Phase.model_validate(
        {
            **top.model_dump(),
            "requires": {"two_factor": "any", "token_max_lifetime_days": 90},
            "effects": ["require_2fa", "revoke_sessions", "revoke_tokens"],
        }
    )
    notes = " ".join(
        token_notes(plan.model_copy(update={"phases": [capped, *plan.phases[1:]]}), AS_OF)
    )
    assert "Automation tokens keep working." not in notes
    assert "Phase top-100 revokes tokens against: no tokens valid for more than 90 days" in notes
    assert "high-impact" not in notes.split("Automation tokens")[1]

    # The same rule without revoke_tokens stops no token: they keep working.
    kept = Phase.model_validate({**capped.model_dump(), "effects": ["require_2fa"]})
    notes = " ".join(
        token_notes(plan.model_copy(update={"phases": [kept, *plan.phases[1:]]}), AS_OF)
    )
    assert "Automation tokens keep working." in notes

    # The reference plan's phases ask only 2FA: automation tokens keep working.
    assert "Automation tokens keep working." in " ".join(token_notes(plan, AS_OF))


def test_the_token_section_shows_expiry_readiness_when_the_plan_caps_a_token_s_life(
    tmp_path: Path, plan: Plan
) -> None:
    """A plan capping how long a publishing token is valid (npm's 90 days on write
    tokens): the token section shows who uses a token that never expires, the cohort's
    cap and who uses a token over it (a cohort no phase caps: "—", not 0), and says what
    they count, naming the phase and its cap, in Markdown and HTML alike. A plan with no
    cap shows none of it (the shipped plans' reports are as before)."""
    top = plan.phase("top-100")
    capped = Phase.model_validate(
        {
            **top.model_dump(),
            "requires": {"two_factor": "none", "write_token_max_lifetime_days": 90},
            "effects": ["revoke_tokens"],
            "max_tokens": 100,
        }
    )
    capping = plan.model_copy(update={"phases": [capped, *plan.phases[1:]]})
    with open_warehouse(tmp_path / "warehouse.duckdb") as con:
        create_marts(con)
        con.execute("delete from token_readiness")
        con.execute(
            "insert into token_readiness values "
            "('high-impact', 40, 1, 1, 2, 38, 3, 1, 6, 17, null, null), "
            "('top-100', 10, 1, 1, 2, 8, 3, 1, 6, 4, 90, 7)"
        )
        files = build_report(con, capping, AS_OF, tmp_path / "out")
        plain = build_report(con, plan, AS_OF, tmp_path / "plain")
    markdown = files.markdown.read_text().split("## Token readiness")[1].split("\n## ")[0]
    html = files.html.read_text().split('id="tokens-h"')[1].split("</section>")[0]
    header = "| using tokens that never expire | token cap (days) | using tokens over the cap |"
    assert header in markdown
    assert "| 6 | 60.0% | 4 | 90 | 7 |" in markdown
    assert "| 6 | 15.0% | 17 | — | — |" in markdown
    assert '<th scope="col" class="num">using tokens over the cap</th>' in html
    said = (
        "Phase top-100 caps how long a token is valid (top-100: no publishing tokens valid "
        "for more than 90 days), and revokes the tokens over it"
    )
    # The Markdown escapes its parentheses.
    assert said in " ".join(markdown.replace("\\", "").split())
    assert said in " ".join(html.split())
    for text in (plain.markdown.read_text(), plain.html.read_text()):
        assert "over the cap" not in text and "never expire" not in text

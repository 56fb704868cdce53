"""A count of one reads in the singular: "1 account", never "1 accounts", in what the
commands say (a guard's refusal, a phase preview, notify send's summary, ingest's), all
through rollout.core.words.counted; the words after it agree too ("add --apply to send it",
not "them", for one email: rollout.core.words.them and by_count)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.config import load_settings
from rollout.core.errors import GuardRefused
from rollout.core.plan import Plan
from rollout.core.words import by_count, counted, them
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from tests.factories import LATE_NOTICE, AccountFactory, NotificationFactory, bound_to


def run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def said(text: str) -> str:
    """Text as one line (Rich wraps long lines on stderr)."""
    return " ".join(text.split())


def test_counted_says_one_in_the_singular_and_takes_an_irregular_plural() -> None:
    assert counted(1, "account") == "1 account"
    assert counted(0, "account") == "0 accounts"
    assert counted(12_000, "account") == "12,000 accounts"
    assert counted(1, "reply", "replies") == "1 reply"
    assert counted(2, "reply", "replies") == "2 replies"


def test_the_words_after_a_count_agree_with_it() -> None:
    assert [them(n) for n in (0, 1, 2)] == ["them", "it", "them"]
    assert by_count(1, "it goes", "they go") == "it goes"
    assert by_count(3, "it goes", "they go") == "they go"


def test_previews_of_one_thing_say_it_not_them(
    registry: Registry,
    registry_url: str,
    factories: None,
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "1 account is not enrolled in ELV yet ... add --apply to enrol it": the pronoun
    after a count agrees with it, as the noun does."""
    AccountFactory(username="alice")
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    told = said(run("elv", "enroll-all", "--early").stderr)
    assert "1 account is not enrolled in ELV yet" in told
    assert "preview only: add --apply to enrol it" in told


def test_a_guard_refusal_over_one_account_says_1_account(
    registry: Registry, plan: Plan, factories: None
) -> None:
    AccountFactory(username="alice", sessions=1, in_cohort="top-100")
    with pytest.raises(GuardRefused, match=r"would change 1 account, not the 2 expected"):
        enforce.enforce_phase(registry, plan, "top-100", expect=2, actor="rm")


def test_a_phase_preview_of_one_account_and_one_session_reads_in_the_singular(
    registry: Registry,
    registry_url: str,
    factories: None,
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    AccountFactory(username="alice", sessions=1, in_cohort="top-100")
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    result = run("phase", "preview", "top-100")
    assert result.exit_code == 0, result.stderr
    assert "phase top-100: 1 account, 1 web session" in said(result.stdout)
    told = said(result.stderr)
    assert "1 account without 2FA in cohort top-100 would be required to enrol" in told
    assert "signed out of 1 web session;" in told
    assert "1 accounts" not in told and "1 web sessions" not in told


def test_notify_send_of_one_email_counts_it_in_the_singular(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("db", "upgrade")
    engine = make_engine(load_settings().registry_url)
    with bound_to(engine):
        NotificationFactory(context=LATE_NOTICE)
    engine.dispose()
    with DevSendGrid() as server:
        monkeypatch.setenv("SENDGRID_API_KEY", server.api_key)
        monkeypatch.setenv("ROLLOUT_SENDGRID_URL", server.url)
        preview = run("notify", "send")
        assert "1 email queued; sender: sendgrid" in said(preview.stderr)
        assert "preview only: add --apply to send it" in said(preview.stderr)
        server.script([{"status": 400}])
        sent = run("notify", "send", "--apply")
        assert sent.exit_code == 1
        assert "1 email failed: SendGrid answered 400" in said(sent.stderr)
        # Without the key the preview refuses, each count still in the singular.
        monkeypatch.delenv("SENDGRID_API_KEY")
        refused = said(run("notify", "send", "--retry-failed").stderr)
        assert "1 failed email to queue again first" in refused
        assert "1 email waiting to be sent was last attempted through SendGrid" in refused
        monkeypatch.setenv("SENDGRID_API_KEY", server.api_key)
        retried = run("notify", "send", "--retry-failed", "--apply")
        assert retried.exit_code == 0, retried.stderr
        assert "1 failed email queued again" in said(retried.stderr)


def test_ingest_of_one_row_says_1_row_loaded(rollout_home: Path) -> None:
    run("db", "upgrade")
    downloads = rollout_home / "landing" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "downloads-2022-01-10.csv").write_text(
        "package,day,downloads\nreact,2022-01-10,120\n"
    )
    loaded = run("ingest", "--format", "json")
    assert loaded.exit_code == 0, loaded.stderr
    assert [f["loaded"] for f in json.loads(loaded.stdout)] == [1]
    assert "1 loaded, 0 skipped (already loaded), 0 refused; 1 row loaded" in said(loaded.stderr)

"""Every migration's downgrade works on data its upgrade produced, or says it cannot.

On SQLite and PostgreSQL: the tiny sample at the newest revision, with a phase
enforced, rolled back and enforced again, notices and two reminders queued (so the
occasion of revision 0004 matters), brown-outs scheduled and an address suppressed:
a row in every table. Then down one revision at a time to base, each step checked,
and from each revision back up to the newest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from rollout.core.errors import RolloutError
from rollout.core.plan import Plan
from rollout.demo.sample import generate_sample
from rollout.notify import outbox
from rollout.notify.queue import queue_due
from rollout.phases import brownouts, enforce, orgs
from rollout.registry import Registry, migrate
from rollout.registry.engine import make_engine
from rollout.registry.ledger import start_run, utc_now
from rollout.registry.models import Action, Base
from tests.factories import (
    AccountFactory,
    CohortPackageFactory,
    FactorFactory,
    NotificationFactory,
    OrgFactory,
    OrgMemberFactory,
    SnoozeFactory,
    TeamFactory,
    TokenFactory,
    bound_to,
)

PHASE = "top-100"
# The documented refusal: "cannot downgrade below <revision>: ...; nothing was changed".
CANNOT = "cannot downgrade"


def _revisions() -> list[str]:
    """Every revision, newest first."""
    script = ScriptDirectory(str(migrate.MIGRATIONS))
    return [r.revision for r in script.walk_revisions()]


REVISIONS = _revisions()


def _counts(engine: Engine) -> dict[str, int]:
    """Rows per table (alembic's own aside), read fresh."""
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
        return {
            t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in sorted(tables)
        }


def _columns(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as connection:
        inspector = inspect(connection)
        return {
            t: [c["name"] for c in inspector.get_columns(t)] for t in inspector.get_table_names()
        }


def _state(engine: Engine) -> tuple[str | None, dict[str, int], dict[str, list[str]]]:
    return migrate.current_revision(engine), _counts(engine), _columns(engine)


def _notification_keys(engine: Engine) -> int:
    """Distinct (account, email, phase): all a registry below 0004 can hold."""
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM (SELECT DISTINCT account_id, email, phase "
                "FROM notifications) AS keys"
            )
        ).scalar_one()


def _step_down(engine: Engine, target: str) -> bool:
    """Downgrade one revision: True when it worked; False when it refused as documented,
    in which case nothing may have changed."""
    before = _state(engine)
    try:
        migrate.downgrade(engine, target)
    except Exception as error:
        assert CANNOT in str(error), f"downgrade to {target} failed: {error}"
        assert "nothing was changed" in str(error)
        assert _state(engine) == before
        return False
    assert migrate.current_revision(engine) == (None if target == "base" else target)
    return True


def _assert_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


@pytest.fixture
def populated(empty_registry_url: str, tmp_path: Path, plan: Plan) -> Iterator[Engine]:
    """A registry at the newest revision with realistic rows in every table."""
    url = empty_registry_url
    registry = Registry(url)
    generate_sample(
        "tiny",
        7,
        registry=registry,
        landing_dir=tmp_path / "landing",
        end=date(2022, 3, 13),
        days=110,
    )
    engine = make_engine(url)
    with bound_to(engine):
        for _ in range(3):
            AccountFactory(sessions=2, in_cohort=PHASE)
        AccountFactory(with_totp=True, sessions=1, in_cohort=PHASE)
        CohortPackageFactory(cohort=PHASE)
        # An org whose enforcement removes a member, who then enables 2FA and is
        # invited back (org_invitations).
        org = OrgFactory(name="rehearsal-org")
        OrgMemberFactory(
            org=org, account=AccountFactory(username="org-owner", with_totp=True), role="owner"
        )
        returning = AccountFactory(username="org-returning")
        OrgMemberFactory(org=org, account=returning)
        TeamFactory(org=org, name="release")
        # An account that postponed its own deadline (deadline_snoozes).
        SnoozeFactory(account=returning, phase=PHASE)
    with registry:
        orgs.enforce_org(
            registry, "rehearsal-org", confirm="rehearsal-org", owner="org-owner", actor="rehearsal"
        )
        with bound_to(engine):
            FactorFactory(account_id=returning.id)
        orgs.reinvite(
            registry,
            "rehearsal-org",
            "release",
            owner="org-owner",
            confirm="rehearsal-org",
            expect=1,
            actor="rehearsal",
        )
        brownouts.schedule(registry, plan, actor="rehearsal")
        outbox.suppress(registry, "nobody@example.com", reason="bounced", actor="rehearsal")
        # The notice, then both reminders (14 and 3 days before 2022-02-01): one account,
        # one email kind, one phase, two occasions. Queued years late (--late): held back
        # otherwise.
        for day in (date(2022, 1, 4), date(2022, 1, 18), date(2022, 1, 29)):
            queue_due(registry, plan, day, actor="rehearsal", late=True)

        def enforce_now() -> None:
            phase = plan.phase(PHASE)
            count = enforce.preview_phase(registry, plan, phase).count
            enforce.enforce_phase(registry, plan, PHASE, expect=count, actor="rehearsal")

        enforce_now()
        enforce.rollback_phase(registry, plan, PHASE, actor="rehearsal")
        enforce_now()
    yield engine
    engine.dispose()


def test_the_populated_registry_has_rows_everywhere_and_reminders_by_occasion(
    populated: Engine,
) -> None:
    counts = _counts(populated)
    assert set(counts) == set(Base.metadata.tables)
    assert [t for t, n in counts.items() if n == 0] == []
    with populated.connect() as connection:
        occasions = connection.execute(
            text(
                "SELECT count(DISTINCT occasion) FROM notifications "
                "WHERE email = 'reminder' GROUP BY account_id ORDER BY 1 DESC"
            )
        ).first()
    assert occasions is not None and occasions[0] == 2
    assert _notification_keys(populated) < counts["notifications"]


def test_every_downgrade_works_on_what_upgrades_made_and_back_up_again(
    populated: Engine,
) -> None:
    assert migrate.current_revision(populated) == REVISIONS[0]
    accounts = _counts(populated)["accounts"]
    targets = [*REVISIONS[1:], "base"]
    for current, target in zip(REVISIONS, targets, strict=True):
        before = _counts(populated)
        keys = _notification_keys(populated) if "notifications" in before else 0
        assert _step_down(populated, target), f"{current} refused to downgrade"
        after = _counts(populated)
        if target == "base":
            assert after == {}
            break
        for table, rows in after.items():
            if table == "notifications" and current == "0004":
                # Rows differing only by occasion are merged into one.
                assert rows == keys, table
            else:
                assert rows == before[table], (current, table)
        # And back up from here: the data of every table left comes through.
        migrate.upgrade(populated)
        _assert_matches_the_models(populated)
        assert _counts(populated)["accounts"] == accounts
        migrate.downgrade(populated, target)
        assert _counts(populated) == after
    migrate.upgrade(populated)
    assert migrate.is_up_to_date(populated)
    _assert_matches_the_models(populated)


def test_merging_occasions_keeps_the_email_that_went_furthest(registry: Registry) -> None:
    """0004's downgrade keeps one row per (account, email, phase): the sent one, the
    earliest sent of several, never a queued one beside it (it would be sent again)."""
    with bound_to(registry.engine):
        alice, bob = AccountFactory(), AccountFactory()
        sent = {"state": "sent", "attempts": 1}
        NotificationFactory(
            account=alice, email="reminder", occasion="14d", **sent, sent_at=date(2022, 1, 18)
        )
        NotificationFactory(account=alice, email="reminder", occasion="3d")
        NotificationFactory(
            account=bob,
            email="reminder",
            occasion="14d",
            state="skipped",
            skip_reason="unverified email",
        )
        NotificationFactory(
            account=bob, email="reminder", occasion="3d", **sent, sent_at=date(2022, 1, 29)
        )
        NotificationFactory(
            account=bob, email="reminder", occasion="30d", **sent, sent_at=date(2022, 1, 2)
        )
        NotificationFactory(account=bob, email="phase_notice")
    migrate.downgrade(registry.engine, "0003")
    with registry.engine.connect() as connection:
        kept = connection.execute(
            text(
                "SELECT username, notifications.email, state, sent_at FROM notifications "
                "JOIN accounts ON accounts.id = account_id ORDER BY 1, 2"
            )
        ).all()
    assert [(u, e, s, str(at)[:10] if at else None) for u, e, s, at in kept] == [
        (alice.username, "reminder", "sent", "2022-01-18"),
        (bob.username, "phase_notice", "queued", None),
        (bob.username, "reminder", "sent", "2022-01-02"),
    ]
    migrate.upgrade(registry.engine)
    _assert_matches_the_models(registry.engine)


def test_a_downgrade_that_cannot_says_so_and_changes_nothing(registry: Registry) -> None:
    """An org name of 214 characters fits since 0005 only: below it, refused whole,
    even when asked for several revisions at once."""
    org = "o" * 214
    with bound_to(registry.engine):
        NotificationFactory(phase=f"org:{org}", email="org_removal_notice")
    for target in ("0004", "base"):
        assert not _step_down(registry.engine, target)
    assert migrate.current_revision(registry.engine) == REVISIONS[0]
    _assert_matches_the_models(registry.engine)


def test_an_upgrade_over_rows_with_broken_keys_names_them_and_changes_nothing(
    rollout_home: Path,
) -> None:
    """A SQLite registry edited outside rollout with foreign keys off (the sqlite3
    shell's default: an account deleted by hand leaves its tokens) failed `db upgrade`
    with a traceback blaming the migration ("the migration broke foreign keys:
    [('tokens', 2, 'accounts', 0)]"). Now refused before anything changes, as bad input
    (exit 2): the file, each row and the key it holds."""
    import sqlite3

    from typer.testing import CliRunner

    from rollout.cli import app

    path = rollout_home / "registry.db"
    rollout_home.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine, REVISIONS[1])
    with bound_to(engine):
        kept = TokenFactory()
    engine.dispose()
    shell = sqlite3.connect(path)  # foreign keys off, as in the sqlite3 shell
    with shell:
        shell.execute(
            "INSERT INTO tokens (account_id, name, kind, created_at, writes, bypass_2fa) "
            "VALUES (99, 'left behind', 'publish', '2022-01-01', 1, 0)"
        )
    orphan = shell.execute("SELECT max(id) FROM tokens").fetchone()[0]
    shell.close()

    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2, (result.stderr, result.exception)
    said = " ".join(result.stderr.split())
    assert said.startswith(f"error: {path}: 1 row(s) name a row that is not there")
    assert f"tokens rowid {orphan} (account_id 99: no such accounts row)" in said
    assert "nothing was changed" in said
    assert "Traceback" not in result.stderr
    engine = make_engine(f"sqlite:///{path}")
    assert migrate.current_revision(engine) == REVISIONS[1]
    assert _counts(engine)["tokens"] == 2 and kept.id != orphan
    engine.dispose()


def test_a_registry_a_newer_rollout_migrated_is_refused_by_upgrade_and_use(
    tmp_path: Path,
) -> None:
    """Alembic's CommandError was a traceback from `db upgrade`, and every other command
    advised running `db upgrade`."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = _migrated_by_a_newer_rollout(url)
    with pytest.raises(RolloutError, match=NEWER):
        migrate.upgrade(engine)
    with pytest.raises(RolloutError, match=NEWER) as refused:
        migrate.require_current_schema(url)
    assert "run `rollout db upgrade`" not in str(refused.value)
    assert migrate.current_revision(engine) == FUTURE
    engine.dispose()


# The revision a newer rollout's migrations would leave, and how this one refuses it.
FUTURE = "9999_future"
NEWER = f"schema revision {FUTURE}, which this rollout does not know"


def _migrated_by_a_newer_rollout(url: str) -> Engine:
    """An engine on a registry at every revision this rollout has, then one it has not."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            text("update alembic_version set version_num = :future"), {"future": FUTURE}
        )
    return engine


# Commands of every group that use the registry.
REGISTRY_COMMANDS = [
    ("notify", "status"),
    ("brownout", "status"),
    ("elv", "enroll-all"),
    ("phase", "preview", "top-100"),
    ("plan", "show"),
    ("orgs", "audit", "acme"),
    ("ingest",),
    ("db", "upgrade"),
]


@pytest.mark.parametrize("schema", ["older", "newer"])
@pytest.mark.parametrize("command", REGISTRY_COMMANDS, ids=" ".join)
def test_a_registry_at_another_schema_is_a_failure_exit_1_in_every_command(
    rollout_home: Path, schema: str, command: tuple[str, ...]
) -> None:
    """Not bad input (2: nothing typed is wrong) nor a guard (3): the registry and the
    code must be brought to one version, and the message says which way (the README's
    exit codes). `db upgrade` brings an older one up instead."""
    from typer.testing import CliRunner

    from rollout.cli import app

    url = f"sqlite:///{rollout_home / 'registry.db'}"
    (rollout_home / "landing").mkdir(parents=True)
    if schema == "newer":
        _migrated_by_a_newer_rollout(url).dispose()
    else:
        engine = make_engine(url)
        migrate.upgrade(engine, REVISIONS[-2])
        engine.dispose()
    result = CliRunner().invoke(app, list(command))
    if command == ("db", "upgrade") and schema == "older":
        assert result.exit_code == 0, result.stderr
        return
    assert result.exit_code == 1, (result.stderr, result.exception)
    said = " ".join(result.stderr.split())
    if schema == "older":
        assert said.startswith(f"error: the registry is at schema revision {REVISIONS[-2]}")
        assert "run `rollout db upgrade`" in said
    else:
        assert said.startswith(f"error: the registry is at {NEWER}")
        assert "a newer rollout migrated it" in said


def test_classic_tokens_get_what_their_kind_can_do_at_0009(registry: Registry) -> None:
    engine = registry.engine
    migrate.downgrade(engine, "0008")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO accounts (id, username, email, email_verified, created_at) "
                "VALUES (1, 'ann', 'ann@example.com', true, '2021-01-01 00:00:00')"
            )
        )
        for kind in ("automation", "publish", "read_only"):
            connection.execute(
                text(
                    "INSERT INTO tokens (account_id, name, kind, created_at) "
                    "VALUES (1, :kind, :kind, '2021-06-01 00:00:00')"
                ),
                {"kind": kind},
            )
    migrate.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT kind, writes, bypass_2fa, scopes, expires_at FROM tokens ORDER BY kind")
        ).all()
    assert [tuple(row) for row in rows] == [
        ("automation", True, True, None, None),
        ("publish", True, False, None, None),
        ("read_only", False, False, None, None),
    ]
    _assert_matches_the_models(engine)


def test_a_granular_token_holds_the_registry_at_0009(registry: Registry) -> None:
    """Revision 0008 knows no granular token: below 0009 is refused, nothing changed."""
    with bound_to(registry.engine):
        TokenFactory(granular=True)
    assert not _step_down(registry.engine, "0008")
    assert migrate.current_revision(registry.engine) == REVISIONS[0]
    _assert_matches_the_models(registry.engine)


def test_an_org_phase_in_the_audit_holds_the_registry_at_0017(registry: Registry) -> None:
    """`notify withdraw --phase org:<name>` audits a phase of up to 218 characters,
    which 0016's actions.phase (100) cannot hold: on PostgreSQL the narrower column
    failed with a page of traceback ("value too long"); now refused whole, on either
    backend, as the other downgrades that cannot."""
    with registry.engine.begin() as connection:
        connection.execute(
            Action.__table__.insert().values(
                effect_key="withdraw:1",
                action="withdraw_notification",
                phase=f"org:{'o' * 214}",
                reason="withdrawn",
                actor="test",
                created_at=utc_now(),
                details={},
            )
        )
    assert not _step_down(registry.engine, "0016")
    assert migrate.current_revision(registry.engine) == REVISIONS[0]
    _assert_matches_the_models(registry.engine)


def test_a_downgrade_that_cannot_is_one_line_exit_3_from_the_cli(rollout_home: Path) -> None:
    """The documented refusal ("cannot downgrade below ...; nothing was changed") was a
    RuntimeError: 70 lines of traceback and exit 1, the preview's as the apply's. It is
    a safety guard's refusal: one line, exit 3 (the README's exit codes)."""
    from typer.testing import CliRunner

    from rollout.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = make_engine(f"sqlite:///{rollout_home / 'registry.db'}")
    with bound_to(engine):
        TokenFactory(granular=True)
    newest = REVISIONS[0]
    for args in (["0008"], ["0008", "--apply", "--from", newest]):
        result = runner.invoke(app, ["db", "downgrade", *args])
        assert result.exit_code == 3, (result.stderr, result.exception)
        assert result.stderr.startswith("error: cannot downgrade below 0009: 1 granular")
        assert "nothing was changed" in " ".join(result.stderr.split())
        assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr
        assert migrate.current_revision(engine) == newest
    engine.dispose()


def test_below_0013_an_address_keeps_one_suppression_and_unsubscribes_go(
    registry: Registry,
) -> None:
    """Below 0013 every row stops all email and an address has one: a global
    unsubscribe (which does not stop the security notices) is dropped, and of an
    address's other rows the first by source stays."""
    engine = registry.engine
    rows = [
        ("a@example.com", "manual", "asked"),
        ("a@example.com", "bounce", "5.1.1"),
        ("b@example.com", "unsubscribe", "global unsubscribe"),
        ("c@example.com", "unsubscribe", "global unsubscribe"),
        ("c@example.com", "spam_report", "spam report"),
    ]
    with engine.begin() as connection:
        for address, source, reason in rows:
            connection.execute(
                text(
                    "INSERT INTO email_suppressions (address, source, reason, created_at, "
                    "created_by) VALUES (:a, :s, :r, '2022-01-01 00:00:00', 'test')"
                ),
                {"a": address, "s": source, "r": reason},
            )
    migrate.downgrade(engine, "0012")
    query = text("SELECT address, reason FROM email_suppressions ORDER BY address")
    with engine.connect() as connection:
        assert connection.execute(query).all() == [
            ("a@example.com", "5.1.1"),
            ("c@example.com", "spam report"),
        ]
    migrate.upgrade(engine)
    _assert_matches_the_models(engine)
    with engine.connect() as connection:
        assert connection.execute(
            text("SELECT address, source FROM email_suppressions ORDER BY address")
        ).all() == [("a@example.com", "manual"), ("c@example.com", "manual")]


def test_0018_numbers_the_runs_recorded_before_it_in_their_order(registry: Registry) -> None:
    """By start, then finish (a run not finished after those of its instant), then as
    inserted; the runs recorded afterwards come after them, whoever writes them."""
    engine = registry.engine
    migrate.downgrade(engine, "0017")
    rows = [  # (id, started_at, finished_at), in the order they were inserted
        ("c", "2022-02-01 10:00:00", "2022-02-01 10:05:00"),
        ("a", "2022-02-01 09:00:00", "2022-02-01 09:01:00"),
        ("e", "2022-02-01 11:00:00", None),
        ("f", "2022-02-01 11:00:00", "2022-02-01 11:00:00"),
        ("g", "2022-02-01 11:00:00", "2022-02-01 11:00:00"),
        ("b", "2022-02-01 09:30:00", "2022-02-01 09:31:00"),
    ]
    with engine.begin() as connection:
        for run_id, started, finished in rows:
            connection.execute(
                text(
                    "INSERT INTO plan_runs (id, plan, step, mode, state, actor, started_at, "
                    "finished_at, parameters, summary) VALUES (:id, 'p', 'phase top-100', "
                    "'apply', :state, 'rm', :started, :finished, '{}', '{}')"
                ),
                {
                    "id": run_id,
                    "state": "succeeded" if finished else "running",
                    "started": started,
                    "finished": finished,
                },
            )
    migrate.upgrade(engine)
    _assert_matches_the_models(engine)
    order = text("SELECT id FROM plan_runs ORDER BY seq")
    with engine.connect() as connection:
        assert connection.execute(order).scalars().all() == ["a", "b", "c", "f", "g", "e"]
        assert connection.execute(text("SELECT min(seq) FROM plan_runs")).scalar_one() == 1
    with engine.begin() as connection:
        start_run(
            connection, plan="p", step="phase top-100", mode="rollback", actor="rm", parameters={}
        )
    with engine.connect() as connection:
        assert connection.execute(text("SELECT max(seq) FROM plan_runs")).scalar_one() == 7
    if engine.dialect.name == "postgresql":
        # Another writer's run, without a seq, gets the next one from the sequence.
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO plan_runs (id, plan, step, mode, state, actor, started_at, "
                    "parameters, summary) VALUES ('h', 'p', 's', 'apply', 'running', 'rm', "
                    "'2022-02-02 00:00:00', '{}', '{}')"
                )
            )
        with engine.connect() as connection:
            assert connection.execute(order).scalars().all()[-1] == "h"
            assert connection.execute(text("SELECT max(seq) FROM plan_runs")).scalar_one() == 8
    migrate.downgrade(engine, "0017")
    assert "seq" not in _columns(engine)["plan_runs"]
    migrate.upgrade(engine)
    _assert_matches_the_models(engine)


def test_0018_has_the_warehouse_copy_plan_runs_again(registry: Registry) -> None:
    """The warehouse copies a SQLite registry's table again only when its change version
    moved (rollout.registry.changes): adding seq moves it, even with no run to number,
    or the copy would lack the column the adoption marts read."""
    engine = registry.engine
    migrate.downgrade(engine, "0017")
    versions = text(
        "SELECT version, read_version FROM registry_changes WHERE table_name = 'plan_runs'"
    )
    with engine.begin() as connection:
        connection.execute(text("UPDATE registry_changes SET read_version = version"))
        read, _ = connection.execute(versions).one()
    migrate.upgrade(engine)
    with engine.connect() as connection:
        version, read_version = connection.execute(versions).one()
    assert read_version == read and version != read


def test_0019_stamps_every_table_afresh_on_each_upgrade(registry: Registry) -> None:
    """A registry taken below 0019 and up again (or a backup of it restored, then
    upgraded) is never one the warehouse copied: each upgrade draws another stamp,
    which no copy holds (rollout.registry.changes)."""
    engine = registry.engine
    stamps = text("SELECT DISTINCT stamp FROM registry_changes")

    def drawn() -> list[str | None]:
        with engine.connect() as connection:
            return list(connection.execute(stamps).scalars())

    migrate.downgrade(engine, "0018")
    assert "stamp" not in _columns(engine)["registry_changes"]
    migrate.upgrade(engine)
    first = drawn()
    migrate.downgrade(engine, "0018")
    migrate.upgrade(engine)
    second = drawn()
    assert len(first) == len(second) == 1 and None not in first + second
    assert first != second
    _assert_matches_the_models(engine)


def test_0020_gives_no_id_again_not_even_one_deleted_before_it(registry: Registry) -> None:
    """Below 0020 SQLite gave the newest row's id again once it was deleted. Upgraded,
    the rows keep their ids, and a new account, session, token, org or team takes an id
    past every one the registry holds or the ledger still names (an account deleted
    before the upgrade, a session the audit says was revoked); on PostgreSQL, whose
    sequences never went back, the revision changes nothing."""
    engine = registry.engine
    migrate.downgrade(engine, "0019")
    with bound_to(engine):
        kept = AccountFactory(sessions=1)
        TokenFactory(account=kept)
        org = OrgFactory()
        TeamFactory(org=org)
        OrgMemberFactory(org=org, account=kept)
        FactorFactory(account=kept)
        gone = AccountFactory(username="closed")
    tables = ["accounts", "web_sessions", "tokens", "orgs", "teams"]
    with engine.begin() as connection:
        largest = {
            t: connection.execute(text(f"SELECT max(id) FROM {t}")).scalar_one() for t in tables
        }
        # What the ledger says of rows deleted since: the account, its revoked session
        # and token, the org and team it was invited back into.
        connection.execute(
            text(
                "INSERT INTO actions (effect_key, action, account_id, subject, reason, actor, "
                "created_at, details) VALUES (:key, 'revoke_session', :account, :subject, "
                "'r', 'rm', '2022-02-01 00:00:00', '{}')"
            ),
            [
                {
                    "key": "revoke-session:old",
                    "account": gone.id,
                    "subject": f"web_session:{largest['web_sessions'] + 5}",
                },
                {
                    "key": "revoke-token:old",
                    "account": gone.id,
                    "subject": f"token:{largest['tokens'] + 5}",
                },
            ],
        )
        connection.execute(
            text(
                "INSERT INTO org_invitations (org_id, account_id, team_id, state, invited_by, "
                "created_at, expires_at) VALUES (:org, :account, :team, 'expired', 'o', "
                "'2022-02-01 00:00:00', '2022-02-08 00:00:00')"
            ),
            {
                "org": largest["orgs"] + 5,
                "account": gone.id,
                "team": largest["teams"] + 5,
            },
        )
        connection.execute(text("DELETE FROM accounts WHERE id = :id"), {"id": gone.id})
    before = _counts(engine)
    migrate.upgrade(engine)
    _assert_matches_the_models(engine)
    assert _counts(engine) == before
    with bound_to(engine):
        account = AccountFactory(sessions=1)
        token = TokenFactory(account=account)
        team = TeamFactory(org=OrgFactory())
        session = account_session(engine, account.id)
    assert account.id > gone.id
    past = 5 if engine.dialect.name == "sqlite" else 0
    assert session > largest["web_sessions"] + past
    assert token.id > largest["tokens"] + past
    assert team.org_id > largest["orgs"] + past and team.id > largest["teams"] + past
    # Down again: the rows stay; up again: the same.
    migrate.downgrade(engine, "0019")
    assert _counts(engine)["accounts"] == before["accounts"] + 1
    migrate.upgrade(engine)
    _assert_matches_the_models(engine)


def account_session(engine: Engine, account_id: int) -> int:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT id FROM web_sessions WHERE account_id = :a"), {"a": account_id}
        ).scalar_one()


def test_a_registry_a_newer_rollout_migrated_is_refused_by_downgrade(
    empty_registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rollout db downgrade` from a revision this code does not have: alembic's
    ResolutionError ("No such revision or branch") was a traceback, preview or not."""
    from typer.testing import CliRunner

    from rollout.cli import app

    engine = _migrated_by_a_newer_rollout(empty_registry_url)
    with pytest.raises(RolloutError, match=NEWER):
        migrate.downgrade(engine, REVISIONS[1])
    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", empty_registry_url)
    for apply in ([], ["--apply", "--from", FUTURE]):
        result = CliRunner().invoke(app, ["db", "downgrade", REVISIONS[1], *apply])
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit)
        assert NEWER in result.stderr
    assert migrate.current_revision(engine) == FUTURE
    engine.dispose()


def _waiting_on_locks(engine: Engine) -> int:
    """PostgreSQL: the server processes waiting for a lock."""
    with engine.connect() as connection:
        return connection.execute(
            text("select count(*) from pg_stat_activity where wait_event_type = 'Lock'")
        ).scalar_one()


def test_two_upgrades_at_once_take_turns(empty_registry_url: str, tmp_path: Path) -> None:
    """Two `rollout db upgrade` at once (the worker host's and a release manager's): both
    read the same revision and ran the same migrations, and the second failed, on
    PostgreSQL with a page of traceback (a duplicate key in pg_type), on SQLite with
    "database is locked". Now the second waits for the first and finds nothing to do.
    A transaction holding the notifications table keeps both at 0014 until both wait."""
    url = empty_registry_url
    engine = make_engine(url)
    migrate.upgrade(engine, "0013")
    env = {**os.environ, "ROLLOUT_REGISTRY_URL": url, "ROLLOUT_HOME": str(tmp_path / "home")}
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as blocker:
        if postgres:
            blocker.execute(text("lock table notifications in access share mode"))
        else:
            blocker.exec_driver_sql("update accounts set id = id where 0")  # the write lock
        upgrades = [
            subprocess.Popen(
                [sys.executable, "-m", "rollout", "db", "upgrade"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 60
        if postgres:
            while _waiting_on_locks(engine) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            time.sleep(5)  # both started and waiting for the write lock (30 s at most)
        blocker.rollback()
    errors = [upgrade.communicate(timeout=120)[1] for upgrade in upgrades]
    assert [upgrade.returncode for upgrade in upgrades] == [0, 0], errors
    assert migrate.current_revision(engine) == REVISIONS[0]
    _assert_matches_the_models(engine)
    engine.dispose()


def test_an_upgrade_with_nothing_to_do_does_not_wait_for_a_running_job(tmp_path: Path) -> None:
    """`rollout db upgrade` of a SQLite registry already at the newest revision took the
    write lock all the same (its migration transaction begins IMMEDIATE), so it waited
    for a running job's write transaction (the busy timeout, 30 s) and then failed with
    "database is locked". With nothing to do it now only reads. Still at the newest
    revision but without a change trigger, it puts the trigger back (it takes the lock)."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    other = make_engine(url)
    with ThreadPoolExecutor(max_workers=1) as pool, engine.connect() as job:
        job.exec_driver_sql("update accounts set id = id where 0")  # the write lock
        upgrade = pool.submit(migrate.upgrade, other)
        try:
            upgrade.result(timeout=10)
        finally:
            job.rollback()  # lets a waiting upgrade go on, whatever happened
            upgrade.cancel()
    trigger = "registry_changes_accounts_update"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"drop trigger {trigger}")
    migrate.upgrade(other)
    with engine.connect() as connection:
        found = connection.execute(
            text("select count(*) from sqlite_master where type = 'trigger' and name = :n"),
            {"n": trigger},
        ).scalar_one()
    assert found == 1
    other.dispose()
    engine.dispose()

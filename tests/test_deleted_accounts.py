"""The registry stays free to delete its own rows: an account closed (at its owner's
request, say) goes with its factors, sessions, tokens and memberships, whatever the
pipeline has recorded of it; the ledger keeps its rows, and everything that reads them
copes with an account that is gone. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select, text

from rollout import warehouse
from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.notify.drain import drain
from rollout.notify.queue import queue_due
from rollout.notify.senders import FileSender
from rollout.phases import enforce
from rollout.registry import Registry, changes, migrate
from rollout.registry.models import LEDGER_TABLES, REGISTRY_TABLES, Notification
from rollout.report.adoption import build_adoption
from rollout.warehouse.extract import extract_registry
from tests.factories import (
    AccountFactory,
    NotificationFactory,
    OrgFactory,
    SnoozeFactory,
    TeamFactory,
    bound_to,
    existing_account,
)
from tests.support.outbox import Recording, ids, on, queue_late, rows

__all__ = ["ids"]  # a fixture, used by name


def close_account(engine: Engine, account_id: int) -> None:
    """What the registry does to close an account: one DELETE, its own rows following."""
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM accounts WHERE id = :id"), {"id": account_id})


def outbox_rows(engine: Engine, account_id: int) -> list[tuple[str, str | None, str | None]]:
    with engine.connect() as connection:
        return [
            (r.state, r.skip_reason, r.error)
            for r in connection.execute(
                select(Notification.state, Notification.skip_reason, Notification.error)
                .where(Notification.account_id == account_id)
                .order_by(Notification.id)
            )
        ]


def test_the_registry_can_delete_an_account_the_pipeline_emailed_and_the_outbox_keeps_it(
    registry: Registry,
) -> None:
    engine = registry.engine
    with bound_to(engine):
        emailed = AccountFactory(in_cohort="top-100")
        NotificationFactory(account=emailed, state="sent")
        NotificationFactory(account=emailed, email="reminder", occasion="14d")
        SnoozeFactory(account=emailed)
    close_account(engine, emailed.id)
    with engine.connect() as connection:
        left = connection.execute(
            text("SELECT count(*) FROM accounts WHERE id = :id"), {"id": emailed.id}
        ).scalar_one()
    assert left == 0
    assert [state for state, _, _ in outbox_rows(engine, emailed.id)] == ["sent", "queued"]


def test_an_email_queued_to_an_account_deleted_since_is_skipped_never_sent_nor_failed(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    close_account(registry.engine, ids["ann"])
    sender = Recording()
    report = drain(registry, plan, sender)
    assert "ann" not in {m.to_name for m in sender.sent}
    assert (report.sent, report.failed, report.skipped["account deleted"]) == (1, 0, 1)
    assert outbox_rows(registry.engine, ids["ann"]) == [("skipped", "account deleted", None)]
    assert rows(registry)["ben"] == ("sent", None)
    # And for good: a retry of failed emails has nothing of it to send again.
    assert drain(registry, plan, Recording(), retry_failed=True).done == 0


def test_the_file_outbox_writes_nothing_for_a_deleted_account(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    close_account(registry.engine, ids["ann"])
    report = drain(registry, plan, FileSender(tmp_path / "outbox"))
    written = [p.read_text() for p in (tmp_path / "outbox").glob("*.eml")]
    assert len(written) == report.sent
    assert not any("ann@example.com" in eml for eml in written)
    assert outbox_rows(registry.engine, ids["ann"]) == [("skipped", "account deleted", None)]


def test_migration_0021_downgrade_refuses_over_a_deleted_accounts_email_and_changes_nothing(
    registry: Registry,
) -> None:
    engine = registry.engine
    with bound_to(engine):
        emailed = AccountFactory()
        NotificationFactory(account=emailed, state="sent")
    close_account(engine, emailed.id)
    with pytest.raises(Exception, match="cannot downgrade below 0021: 1 email"):
        migrate.downgrade(engine, "0020")
    assert migrate.current_revision(engine) == migrate.head_revision()  # unchanged
    assert [state for state, _, _ in outbox_rows(engine, emailed.id)] == ["sent"]


def test_the_queue_previews_enforcement_and_the_warehouse_go_on_without_a_deleted_account(
    registry: Registry, plan: Plan, ids: dict[str, int], tmp_path: Path
) -> None:
    """ann was in the cohort, sent her notice, snoozed, then closed: nothing that reads the
    ledger afterwards fails on her, or counts her as a member, a target or unwarned."""
    engine = registry.engine
    queue_late(registry, plan, NOTICE_DAY)
    drain(registry, plan, Recording())
    with bound_to(engine):
        SnoozeFactory(account=existing_account(ids["ann"]))
    close_account(engine, ids["ann"])

    with on(date(2022, 1, 18)):
        queue_due(registry, plan, date(2022, 1, 18), actor="rm", late=True)
    assert [s for s, _, _ in outbox_rows(engine, ids["ann"])] == ["sent"]

    preview = enforce.preview_phase(registry, plan, plan.phase("top-100"))
    assert ids["ann"] not in {t.account_id for t in preview.targets}
    assert ids["ann"] not in preview.unreached
    enforce.enforce_phase(registry, plan, "top-100", expect=preview.count, actor="rm")

    with warehouse.open_warehouse(tmp_path / "warehouse.duckdb") as con:
        counts = extract_registry(con, registry)
        build_adoption(con, plan, date(2022, 2, 2))
        kept = con.execute(
            "select state from registry.notifications where account_id = $id", {"id": ids["ann"]}
        ).fetchall()
        members = con.execute(
            "select count(*) from registry.cohort_memberships where account_id = $id",
            {"id": ids["ann"]},
        ).fetchone()
        # The cohort at the notice: ben, cat and dan; of them cat and dan without 2FA.
        funnel = con.execute(
            "select accounts, without_2fa_at_notice from compliance_funnel where phase = 'top-100'"
        ).fetchone()
    assert counts["notifications"] >= 1 and kept == [("sent",)]
    assert members == (0,) and funnel == (3, 2)


def test_no_ledger_table_holds_a_key_or_trigger_that_refuses_the_registry_a_delete(
    registry: Registry,
) -> None:
    """The whole class, as the migrations left it: a key from a ledger table to a
    registry table follows the registry's row (ON DELETE CASCADE) or does not exist; no
    trigger sits on a registry table but the change counters, which never refuse."""
    engine = registry.engine
    inspector = inspect(engine)
    blocking = [
        (table, key["name"])
        for table in LEDGER_TABLES
        for key in inspector.get_foreign_keys(table)
        if key["referred_table"] in REGISTRY_TABLES
        and (key.get("options") or {}).get("ondelete", "").upper() != "CASCADE"
    ]
    assert blocking == []
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            triggers = connection.execute(
                text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")
            ).all()
        else:
            triggers = connection.execute(
                text(
                    "SELECT event_object_table, trigger_name FROM information_schema.triggers "
                    "WHERE event_object_schema = current_schema()"
                )
            ).all()
    on_registry = {name for table, name in triggers if table in REGISTRY_TABLES}
    assert all(name.startswith(changes.TRIGGER_PREFIX) for name in on_registry)


def test_the_registry_can_delete_an_org_and_team_rollout_invited_an_account_back_into(
    registry: Registry,
) -> None:
    engine = registry.engine
    with bound_to(engine):
        account = AccountFactory(in_cohort="top-100")
        team = TeamFactory(org=OrgFactory(name="closing-org"))
        NotificationFactory(account=account, phase="org:closing-org", email="org_invitation")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO org_invitations (org_id, account_id, team_id, state, invited_by, "
                "created_at, expires_at) VALUES (:org, :account, :team, 'pending', 'owner', "
                "'2022-02-01 00:00:00', '2022-02-08 00:00:00')"
            ),
            {"org": team.org_id, "account": account.id, "team": team.id},
        )
        connection.execute(text("DELETE FROM orgs WHERE id = :id"), {"id": team.org_id})
    close_account(engine, account.id)
    with engine.connect() as connection:
        kept = connection.execute(text("SELECT count(*) FROM org_invitations")).scalar_one()
    assert kept == 1

"""the outbox outlives the accounts it wrote to: no foreign key to accounts

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-14
"""

from __future__ import annotations

from alembic import op

from rollout.core.errors import GuardRefused

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


# notifications.account_id kept the foreign key to accounts that 0003 took off the audit
# ledger, with no ON DELETE: the registry could not delete an account the pipeline had
# ever emailed ("FOREIGN KEY constraint failed" on SQLite, a violation on PostgreSQL),
# an account closed at its owner's request (GDPR erasure) among them. The outbox is
# the ledger's, and outlives what it names as the audit does: the drain skips an email
# whose account is gone (rollout.notify.drain, "account deleted"). The other ledger
# tables naming accounts (actions, deadline_snoozes, org_invitations) have no key;
# cohort_memberships and phase_requirements go with their account (ON DELETE CASCADE:
# they describe a live account, and the audit keeps their history).
#
# SQLite copies the table: its rows, CHECK, unique key, indexes (the partial ones of
# 0016 among them) and the key to plan_runs come through; env.py puts the change
# triggers back. notifications is not one of 0020's AUTOINCREMENT tables.

_KEY = "fk_notifications_account_id_accounts"


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(_KEY), type_="foreignkey")


def downgrade() -> None:
    # Checked before anything changes: the key cannot come back over emails of deleted
    # accounts, and the outbox is not trimmed to make it (it stops those being queued
    # again, and tells what was sent to whom).
    orphans = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT count(*) FROM notifications WHERE NOT EXISTS "
            "(SELECT 1 FROM accounts WHERE accounts.id = notifications.account_id)"
        )
        .scalar_one()
    )
    if orphans:
        raise GuardRefused(
            f"cannot downgrade below 0021: {orphans} email(s) in the outbox name an account "
            "the registry has since deleted, which revision 0020's foreign key to accounts "
            "refuses; nothing was changed"
        )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_foreign_key(batch_op.f(_KEY), "accounts", ["account_id"], ["id"])

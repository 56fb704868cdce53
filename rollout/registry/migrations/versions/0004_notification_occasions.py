"""notification occasions and email suppressions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


# A phase sends several reminders (14 and 3 days before) and the plan several
# brown-out heads-ups: the natural key of an email gains the occasion it is for.


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("occasion", sa.String(length=100), nullable=False, server_default="")
        )
        batch_op.drop_constraint("uq_notifications_natural_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_notifications_natural_key", ["account_id", "email", "phase", "occasion"]
        )
    op.create_table(
        "email_suppressions",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_email_suppressions")),
    )


# Below this revision an account has one email of a kind per phase, so rows that differ
# only by occasion (the 14- and 3-day reminders) cannot all stay. They are merged rather
# than the downgrade refused: every registry that has sent a phase's reminders has such
# rows, so refusing would make this revision impossible to leave. The row kept is the
# one that went furthest towards the inbox, the earliest sent first: to code at 0003 a
# row means "this account got this email for this phase", which it states truly, and a
# queued row kept beside a sent one would send the email a second time.
_MERGE_OCCASIONS = """
DELETE FROM notifications
WHERE id IN (
    SELECT id
    FROM (
        SELECT
            id,
            row_number() OVER (
                PARTITION BY account_id, email, phase
                ORDER BY
                    CASE state
                        WHEN 'sent' THEN 0
                        WHEN 'sending' THEN 1
                        WHEN 'failed' THEN 2
                        WHEN 'queued' THEN 3
                        ELSE 4
                    END,
                    CASE WHEN sent_at IS NULL THEN 1 ELSE 0 END,
                    sent_at,
                    created_at,
                    id
            ) AS rank
        FROM notifications
    ) AS ranked
    WHERE ranked.rank > 1
)
"""


def downgrade() -> None:
    op.execute(_MERGE_OCCASIONS)
    op.drop_table("email_suppressions")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_constraint("uq_notifications_natural_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_notifications_natural_key", ["account_id", "email", "phase"]
        )
        batch_op.drop_column("occasion")

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


def downgrade() -> None:
    op.drop_table("email_suppressions")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_constraint("uq_notifications_natural_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_notifications_natural_key", ["account_id", "email", "phase"]
        )
        batch_op.drop_column("occasion")

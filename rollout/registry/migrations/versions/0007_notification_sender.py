"""notification sender: which sender last attempted each email

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# A failed email retried without SENDGRID_API_KEY would have gone to the file outbox
# and been marked sent: nobody would get it. The drain now refuses to hand an email
# last attempted through SendGrid to the file sender, and needs to know which that is.
# Rows from before this revision have no sender (NULL): nothing is known, none refused.


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sender", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("sender")

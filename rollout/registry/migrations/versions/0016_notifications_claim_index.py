"""notifications: the claim's index, (state, id)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


# A drainer claims the lowest ids of one state (rollout.notify.drain._claim). With an
# index on state alone, PostgreSQL walked the primary key past every row already sent
# to find the next queued ones: a claim of 16 took 100 ms once 60,000 were sent, and a
# 100,000-email drain slowed as it went. On (state, id) the claim reads only its rows.


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_state")
        batch_op.create_index("ix_notifications_state_id", ["state", "id"])


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_state_id")
        batch_op.create_index("ix_notifications_state", ["state"])

"""notifications: an index for each state a drainer claims from

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


# A drainer claims the lowest ids of one state (rollout.notify.drain._claim). With an
# index on state alone, PostgreSQL walked the primary key past every row already sent
# to find the next queued ones (its estimate has queued rows spread evenly; they are
# the newest): a claim of 16 took 20-100 ms once 60,000 were sent. Partial indexes on
# the id of the queued and of the held rows hold only those rows, and the claim names
# the state as a literal so that the planner can use them.

QUEUED = "state = 'queued'"
SENDING = "state = 'sending'"


def upgrade() -> None:
    for name, where in (("ix_notifications_queued", QUEUED), ("ix_notifications_sending", SENDING)):
        op.create_index(
            name,
            "notifications",
            ["id"],
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )


def downgrade() -> None:
    op.drop_index("ix_notifications_sending", table_name="notifications")
    op.drop_index("ix_notifications_queued", table_name="notifications")

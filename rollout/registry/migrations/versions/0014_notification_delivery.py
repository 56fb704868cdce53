"""notification delivery: what SendGrid's events say became of each sent email

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


# Accepted (202) is not delivered. rollout.notify.delivery sets these from the Event
# Webhook's events as ingest loads them; NULL: no event yet (or never sent through
# SendGrid). Derived data: a downgrade drops them, the events stay in the warehouse.


# The warehouse applies only the events loaded since the last file it applied to this
# registry instance (delivery_state): columns made here are empty, also when a registry
# taken below this revision comes back up (its states went with them), so to the
# warehouse it is another registry instance (rollout.registry.changes), which gets every
# event applied again (and every table copied again, once). Without it, the states
# already applied stayed NULL for good: those emails read "not delivered yet".
_ANOTHER_INSTANCE = "UPDATE registry_changes SET instance = '{}'"


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("delivery_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("delivery_reason", sa.Text(), nullable=True))
    op.execute(_ANOTHER_INSTANCE.format(uuid.uuid4().hex))


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("delivery_reason")
        batch_op.drop_column("delivery_at")
        batch_op.drop_column("delivery")

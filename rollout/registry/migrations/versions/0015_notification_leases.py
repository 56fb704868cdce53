"""notification leases: until when a drainer holds an email it claimed

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


# Drainers on several machines share the outbox (rollout.notify.drain.drain_shard): a
# row one of them claimed (state 'sending') is its until the lease expires; after that
# another takes it over, within the same run, as its drainer is presumed dead. NULL:
# not claimed, or claimed before this revision (a locked drain, or a sharded run as it
# starts, requeues those).


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("lease_expires_at")

"""notification claims: which claim holds an email in flight

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


# A drainer holds the rows it claimed ('sending') while their lease lasts; a row whose
# lease ran out is taken over by another (rollout.notify.drain). Each claim draws a
# token of its own, written to the rows it takes: a drainer renews, records, puts back
# or releases only the rows still 'sending' under its token. Before this revision the
# row's ``attempts`` as claimed told the claims apart, and it can come round again:
# queueing sets it back to 0 when it reopens a notice skipped for its address, so a
# drainer that outlived its lease could take a later claim of the row for its own
# (renew it, record over it, put it back under the new holder, send it a second time).
#
# NULL: not in flight, or claimed before this revision (no drainer of this code holds
# such a row: a locked drain, or a sharded run as it starts, queues them again, and a
# shard takes them over once their lease runs out). Downgrading drops the tokens: the
# older code tells its claims apart by ``attempts`` again.


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("claim_token")

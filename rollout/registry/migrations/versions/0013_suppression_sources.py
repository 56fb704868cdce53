"""suppression sources: an address can be on several lists (SendGrid's and our own)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows before this revision were all set by hand (`rollout notify suppress`).
    with op.batch_alter_table("email_suppressions", recreate="always") as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=40), nullable=False, server_default="manual")
        )
        batch_op.drop_constraint("pk_email_suppressions", type_="primary")
        batch_op.create_primary_key("pk_email_suppressions", ["address", "source"])


def downgrade() -> None:
    # Below this revision every row stops all email to its address, and an address has
    # one row. A global unsubscribe does not stop the security notices (see
    # rollout.notify.suppressions), so those rows go; of an address's other rows the
    # one kept is the first by source (the next sync after an upgrade brings the rest).
    op.execute("DELETE FROM email_suppressions WHERE source = 'unsubscribe'")
    op.execute(
        "DELETE FROM email_suppressions WHERE EXISTS (SELECT 1 FROM email_suppressions AS s "
        "WHERE s.address = email_suppressions.address AND s.source < email_suppressions.source)"
    )
    with op.batch_alter_table("email_suppressions", recreate="always") as batch_op:
        batch_op.drop_constraint("pk_email_suppressions", type_="primary")
        batch_op.create_primary_key("pk_email_suppressions", ["address"])
        batch_op.drop_column("source")

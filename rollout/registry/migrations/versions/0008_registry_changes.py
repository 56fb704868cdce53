"""registry changes: which tables changed since the warehouse last copied them

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from rollout.registry import changes

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


# A daily run copied every registry table into the warehouse several times though most
# days only a few small ones change; now the extract skips a table whose version has
# not moved (rollout.registry.changes). The triggers are SQLite's only, and installed
# by the migration environment after every upgrade (a later migration that copies a
# table loses them); here, the table they count in.


def upgrade() -> None:
    op.create_table(
        "registry_changes",
        sa.Column("table_name", sa.String(length=40), nullable=False),
        sa.Column("instance", sa.String(length=32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("read_version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("table_name", name=op.f("pk_registry_changes")),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in changes.drop_triggers_sql():
            op.execute(statement)
    op.drop_table("registry_changes")

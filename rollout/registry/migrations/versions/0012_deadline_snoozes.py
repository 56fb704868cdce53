"""deadline snoozes: one postponement of an account's own deadline per phase

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "deadline_snoozes",
        sa.Column("id", ID, nullable=False),
        sa.Column("phase", sa.String(length=100), nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("granted_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("actor", sa.String(length=214), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deadline_snoozes")),
        sa.UniqueConstraint("phase", "account_id", name="uq_deadline_snoozes_phase_account"),
    )


def downgrade() -> None:
    op.drop_table("deadline_snoozes")

"""sticky cohort packages

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cohort_packages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("cohort", sa.String(length=100), nullable=False),
        sa.Column("package_key", sa.String(length=214), nullable=False),
        sa.Column("package", sa.String(length=214), nullable=False),
        sa.Column("first_qualified_on", sa.Date(), nullable=False),
        sa.Column("last_qualified_on", sa.Date(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.Column("released_reason", sa.Text(), nullable=True),
        sa.Column("released_by", sa.String(length=200), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["plan_runs.id"], name=op.f("fk_cohort_packages_run_id_plan_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cohort_packages")),
        sa.UniqueConstraint("cohort", "package_key", name="uq_cohort_packages_cohort_key"),
    )
    with op.batch_alter_table("cohort_memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("left_on", sa.Date(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cohort_memberships", schema=None) as batch_op:
        batch_op.drop_column("left_on")

    op.drop_table("cohort_packages")

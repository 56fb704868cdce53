"""registry marks: which registries `rollout sample` made

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# `rollout sample --replace` empties a registry. It used to empty whichever one
# ROLLOUT_REGISTRY_URL named, production included; now it empties only a registry it
# filled itself, which says so here (models.RegistryMark). No registry existing before
# this revision is marked: whether it was a sample cannot be told, so none is assumed.


def upgrade() -> None:
    op.create_table(
        "registry_marks",
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.CheckConstraint("kind IN ('sample')", name=op.f("ck_registry_marks_kind")),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_registry_marks")),
    )


def downgrade() -> None:
    # A sample downgraded below this revision loses its mark, and `rollout sample`
    # then refuses to replace it: the safe way round.
    op.drop_table("registry_marks")

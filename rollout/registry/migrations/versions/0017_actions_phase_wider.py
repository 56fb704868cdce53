"""actions.phase: as wide as notifications.phase

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from rollout.core.errors import GuardRefused

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


# An org's emails belong to the phase ``org:<name>``, and a name may have 214 characters
# (the registry's limit): `notify withdraw --phase org:<name>` audits the withdrawal
# with that phase, which 100 characters did not hold on PostgreSQL (SQLite ignores
# lengths), so the withdrawal failed and the emails stayed queued. 300, as
# notifications.phase.

# SQLite alters a table by copying it: the append-only triggers of 0001 go with the
# old table and are made again here (as 0003 does).
_SQLITE_GUARDS = (
    "DROP TRIGGER IF EXISTS actions_no_update",
    "DROP TRIGGER IF EXISTS actions_no_delete",
    "CREATE TRIGGER actions_no_update BEFORE UPDATE ON actions "
    "BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END",
    "CREATE TRIGGER actions_no_delete BEFORE DELETE ON actions "
    "BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END",
)


def _alter(length_from: int, length_to: int) -> None:
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.alter_column(
            "phase",
            existing_type=sa.String(length_from),
            type_=sa.String(length_to),
            existing_nullable=True,
        )
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_GUARDS:
            op.execute(statement)


def upgrade() -> None:
    _alter(100, 300)


def downgrade() -> None:
    # Checked before anything changes: PostgreSQL refused the narrower column over a
    # longer phase with a page of traceback ("value too long"), SQLite kept it unseen.
    longest = (
        op.get_bind()
        .exec_driver_sql("SELECT coalesce(max(length(phase)), 0) FROM actions")
        .scalar_one()
    )
    if longest > 100:
        raise GuardRefused(
            f"cannot downgrade below 0017: an actions.phase is {longest} characters long, "
            "over the 100 revision 0016 allows (an org's phase, `org:<name>`, audited by "
            "`notify withdraw`); nothing was changed"
        )
    _alter(300, 100)

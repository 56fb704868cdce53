"""audit ledger without foreign keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# The audit ledger outlives what it describes (see models.Action), and per-row key
# checks were a third of an npm-scale enforcement's time on PostgreSQL.

# SQLite alters a table by copying it: the append-only triggers of 0001 go with the
# old table and are made again here.
_SQLITE_GUARDS = (
    "DROP TRIGGER IF EXISTS actions_no_update",
    "DROP TRIGGER IF EXISTS actions_no_delete",
    "CREATE TRIGGER actions_no_update BEFORE UPDATE ON actions "
    "BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END",
    "CREATE TRIGGER actions_no_delete BEFORE DELETE ON actions "
    "BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END",
)


def _guard_again_on_sqlite() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_GUARDS:
            op.execute(statement)


def upgrade() -> None:
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_actions_account_id_accounts"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_actions_run_id_plan_runs"), type_="foreignkey")
    _guard_again_on_sqlite()


def downgrade() -> None:
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_actions_run_id_plan_runs"), "plan_runs", ["run_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_actions_account_id_accounts"), "accounts", ["account_id"], ["id"]
        )
    _guard_again_on_sqlite()

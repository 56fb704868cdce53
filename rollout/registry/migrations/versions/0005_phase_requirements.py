"""phase requirements per account, run locks, columns as wide as registry names

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from rollout.core.errors import GuardRefused

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


# Rolling back a phase used to decide whose requirement to clear by reading the audit
# ledger, which enforcement did not write for accounts another phase already required:
# overlapping cohorts then lost or kept requirements wrongly. Which applied phases
# require an account is now a table (models.PhaseRequirement).
#
# The rows for a registry enforced before this revision are rebuilt from the evidence
# each enforcement left for every account it covered, whether it flagged it or found
# it flagged: its ``tfa_required`` and ``revoke_session`` audit rows and its
# ``enforcement_notice`` email; a later ``tfa_required_cleared`` of the same phase
# (or, after this revision, ``tfa_required_withdrawn``) cancels them. Only accounts
# still flagged get rows.
_BACKFILL = """
INSERT INTO phase_requirements (account_id, phase, required_at, run_id)
SELECT latest.account_id, latest.phase, latest.at, NULL
FROM (
    SELECT evidence.account_id, evidence.phase, max(evidence.at) AS at
    FROM (
        SELECT account_id, phase, created_at AS at
        FROM actions
        WHERE action IN ('tfa_required', 'revoke_session')
            AND account_id IS NOT NULL AND phase IS NOT NULL
        UNION ALL
        SELECT account_id, phase, created_at AS at
        FROM notifications
        WHERE email = 'enforcement_notice' AND phase <> ''
    ) AS evidence
    GROUP BY evidence.account_id, evidence.phase
) AS latest
INNER JOIN accounts ON accounts.id = latest.account_id
WHERE accounts.tfa_required_at IS NOT NULL
    AND NOT EXISTS (
        SELECT 1
        FROM actions AS cleared
        WHERE cleared.action IN ('tfa_required_cleared', 'tfa_required_withdrawn')
            AND cleared.account_id = latest.account_id
            AND cleared.phase = latest.phase
            AND cleared.created_at >= latest.at
    )
"""

# SQLite alters a table by copying it: the ledger's append-only triggers (0001, 0003)
# go with the old table and are made again.
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


# (table, column, width at 0004, width now): each holds a value built from a registry
# name (up to 214 characters) or a plan name (up to 100).
_WIDENED = (
    ("actions", "effect_key", 300, 500),
    ("plan_runs", "step", 200, 300),
    ("notifications", "phase", 100, 300),
    ("web_sessions", "revoked_reason", 200, 300),
    ("org_members", "removed_reason", 200, 300),
)


def _widths(at_0004: bool) -> None:
    for table, column, before, after in _WIDENED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, type_=sa.String(length=before if at_0004 else after))
        if table == "actions":
            _guard_again_on_sqlite()


def upgrade() -> None:
    # An org name may be 214 characters: ``org:<org>`` did not fit notifications.phase
    # (100) nor ``enforce <org>`` plan_runs.step (200), so such an org could never be
    # enforced on PostgreSQL.
    _widths(at_0004=False)
    with op.batch_alter_table("plan_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lock_name", sa.String(length=50), nullable=True))
    # The one kind of run that held a lock before this revision.
    op.execute("UPDATE plan_runs SET lock_name = 'enforce' WHERE step LIKE 'phase %'")
    op.create_table(
        "phase_requirements",
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")),
        sa.Column("phase", sa.String(length=100), nullable=False),
        sa.Column("required_at", sa.DateTime(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_phase_requirements_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "phase", name=op.f("pk_phase_requirements")),
    )
    op.create_index("ix_phase_requirements_phase", "phase_requirements", ["phase"])
    op.execute(_BACKFILL)


def downgrade() -> None:
    # Checked before anything changes: SQLite does not roll DDL back.
    bind = op.get_bind()
    for table, column, width, _ in _WIDENED:
        longest = bind.execute(
            sa.text(f"SELECT coalesce(max(length({column})), 0) FROM {table}")
        ).scalar_one()
        if longest > width:
            raise GuardRefused(
                f"cannot downgrade below 0005: a {table}.{column} is {longest} characters "
                f"long, over the {width} revision 0004 allows (an org or plan name this "
                "revision made possible); nothing was changed"
            )
    # The requirements go; accounts keep their flags, which is all 0004 knew.
    op.drop_index("ix_phase_requirements_phase", table_name="phase_requirements")
    op.drop_table("phase_requirements")
    with op.batch_alter_table("plan_runs", schema=None) as batch_op:
        batch_op.drop_column("lock_name")
    _widths(at_0004=True)

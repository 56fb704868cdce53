"""plan_runs.seq: the order the runs were recorded in

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


# Which of a phase's runs came last (is it applied or rolled back?) was read from
# started_at alone. Two runs can start at the same instant: the demo's simulated clock
# stands still while an apply and its rollback run, and a coarse clock does the same.
# The ids are random UUIDs, so the last of such a tie was arbitrary: an enforcement
# email said "rolled back since" of a step applied again, or not of one rolled back, and
# `plan show` showed either state. seq numbers the runs as they are recorded
# (rollout.registry.ledger.start_run); the readers order by (started_at, seq).
#
# The runs already recorded are numbered in their (started_at, finished_at) order, a
# run not finished after the finished ones of its instant, and then in the order they
# were inserted where the backend keeps it: SQLite's rowid (nothing deletes runs, and
# the table copies of 0005 kept its order); PostgreSQL keeps none, so its id there.
SEQUENCE = "plan_runs_seq"
_NUMBER = (
    "UPDATE plan_runs SET seq = numbered.n FROM ("
    "SELECT id, row_number() OVER ("
    "ORDER BY started_at, finished_at IS NULL, finished_at, {inserted}) AS n "
    "FROM plan_runs) AS numbered "
    "WHERE numbered.id = plan_runs.id"
)
# The warehouse copies a SQLite registry's table again only when its change version
# moved (rollout.registry.changes): adding a column moves nothing, and its copy of
# plan_runs would lack the column its models now read.
_CHANGED = "UPDATE registry_changes SET version = version + 1 WHERE table_name = 'plan_runs'"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(f"CREATE SEQUENCE {SEQUENCE} AS BIGINT")
    with op.batch_alter_table("plan_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(_NUMBER.format(inserted="id" if postgres else "rowid"))
    if postgres:
        # Past the runs numbered; any writer of a run gets the next one by default.
        op.execute(
            f"SELECT setval('{SEQUENCE}', coalesce(max(seq), 1), max(seq) IS NOT NULL) "
            "FROM plan_runs"
        )
        op.execute(f"ALTER TABLE plan_runs ALTER COLUMN seq SET DEFAULT nextval('{SEQUENCE}')")
        op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY plan_runs.seq")
    with op.batch_alter_table("plan_runs", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_plan_runs_seq"), ["seq"])
    op.execute(_CHANGED)


def downgrade() -> None:
    with op.batch_alter_table("plan_runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_plan_runs_seq"), type_="unique")
        batch_op.drop_column("seq")
    # PostgreSQL's sequence went with the column that owned it.
    op.execute(_CHANGED)

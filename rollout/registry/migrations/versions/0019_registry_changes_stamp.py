"""registry_changes.stamp: a restored registry's copies are read again

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-10
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


# The warehouse skipped a SQLite registry's table whose change version was the one its
# copy held (rollout.registry.changes). A registry restored from an older backup has
# its versions taken back too, and the next changes count them up to the one the copy
# holds (or the backup, made before a change was read, already has it): the copy kept
# rows the registry no longer had, until the table changed again. Each time an extract
# reads changes (the claim), the table now gets a random stamp that no backup made
# before can hold, and the warehouse compares it with the version.
#
# The rows get one here, drawn afresh by each upgrade: to the warehouse, whose copies
# have none yet, every table is read once more, and a backup taken below this
# revision and upgraded again is never one it copied.
_STAMP = "UPDATE registry_changes SET stamp = '{}'"


def upgrade() -> None:
    # A plain ADD COLUMN (no table copy on SQLite): the change triggers of the other
    # tables read this one, and SQLite re-checks them when a table is renamed.
    op.add_column("registry_changes", sa.Column("stamp", sa.String(length=32), nullable=True))
    op.execute(_STAMP.format(uuid.uuid4().hex))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN on both backends (SQLite 3.35 and later), for the same
    # reason. The warehouse's copies then compare versions alone, as before.
    op.drop_column("registry_changes", "stamp")

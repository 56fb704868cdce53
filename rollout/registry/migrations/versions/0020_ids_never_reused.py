"""ids never given twice on SQLite: the registry's deletable tables AUTOINCREMENT

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-12
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


# SQLite gives a new row the largest id plus one: the newest account, session, token,
# org... deleted, the next one made took its id, and with it what the ledger keeps under
# that id. A closed account's successor was already notified, snoozed or invited; a new
# session, given the id of a revoked one the registry had deleted, failed every later
# enforcement run on the audit key of the first revocation (revoke-session:<id>).
# AUTOINCREMENT keeps the largest id ever given (sqlite_sequence) and never goes back.
# PostgreSQL's sequences never did: nothing to do there.
#
# The tables are copied (SQLite cannot change a key in place); their rows, checks and
# indexes come through, and env.py puts the change triggers back.
TABLES = (
    "accounts",
    "tfa_factors",
    "web_sessions",
    "tokens",
    "orgs",
    "org_members",
    "teams",
)

# An id deleted before this revision is past the largest id left, and not remembered:
# the ledger still names some, and the sequence starts past those too (the copy sets
# it to the largest id copied). A subject is 'web_session:<id>' or 'token:<id>'.
_NAMED = {
    "accounts": (
        "SELECT max(account_id) FROM actions",
        "SELECT max(account_id) FROM notifications",
        "SELECT max(account_id) FROM deadline_snoozes",
        "SELECT max(account_id) FROM org_invitations",
    ),
    "web_sessions": (
        "SELECT max(CAST(substr(subject, 13) AS INTEGER)) FROM actions "
        "WHERE substr(subject, 1, 12) = 'web_session:'",
    ),
    "tokens": (
        "SELECT max(CAST(substr(subject, 7) AS INTEGER)) FROM actions "
        "WHERE substr(subject, 1, 6) = 'token:'",
    ),
    "orgs": ("SELECT max(org_id) FROM org_invitations",),
    "teams": ("SELECT max(team_id) FROM org_invitations",),
}


def _rebuild(autoincrement: bool) -> None:
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def _start_past_named_ids() -> None:
    connection = op.get_bind()
    for table, queries in _NAMED.items():
        named = [connection.exec_driver_sql(query).scalar() for query in queries]
        largest = max((int(n) for n in named if n is not None), default=0)
        if not largest:
            continue
        # The copy left a row here for a table with rows; an empty table has none yet.
        connection.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (largest, table)
        )
        connection.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
            (table, largest, table),
        )


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild(autoincrement=True)
    _start_past_named_ids()


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Ids may be given again, as before; the sequences go with the tables.
    _rebuild(autoincrement=False)

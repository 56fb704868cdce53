"""Fresh planner statistics on PostgreSQL for the tables a run is about to query.

A run that follows a bulk change (a cohort built, a day's emails queued and sent, a
sample loaded) can query tables PostgreSQL has never analyzed, or not since they grew
tenfold: autovacuum looks at most once a minute and analyzes after 10% + 50 rows
changed. With no statistics the planner takes every table for a row or two and picks
nested loops: the deadline audiences (rollout.registry.deadlines.due_by) then read
every sent notice once per cohort member, eight times over (0.5 s a query at 700
accounts, 50 ms after ANALYZE). Here the same threshold as autovacuum's, checked when
the run starts, so the run does not wait for autovacuum's next look.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

# What the outbox, the deadlines and the previews read.
CAMPAIGN_TABLES = (
    "accounts",
    "cohort_memberships",
    "deadline_snoozes",
    "email_suppressions",
    "notifications",
    "phase_requirements",
    "tfa_factors",
    "tokens",
)


def refresh_statistics(
    connection: Connection, tables: Iterable[str] = CAMPAIGN_TABLES
) -> list[str]:
    """ANALYZE those of ``tables`` (in the connection's schema) changed by more than
    autovacuum's threshold since last analyzed; returns them. Nothing on SQLite."""
    if connection.dialect.name != "postgresql":
        return []
    stale = list(
        connection.execute(
            text(
                "select s.relname from pg_stat_user_tables s"
                " join pg_class c on c.oid = s.relid"
                " where s.schemaname = current_schema() and s.relname = any(:tables)"
                " and s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)"
                " order by s.relname"
            ),
            {"tables": list(tables)},
        ).scalars()
    )
    if stale:
        quote = connection.dialect.identifier_preparer.quote
        # SKIP_LOCKED: not behind an autovacuum already at it.
        connection.execute(text(f"ANALYZE (SKIP_LOCKED) {', '.join(map(quote, stale))}"))
    return stale

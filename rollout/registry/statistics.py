"""Fresh planner statistics on PostgreSQL for the tables a run is about to query.

A run that follows a bulk change (a cohort built, a day's emails queued and sent, a
sample loaded) can query tables PostgreSQL has never analyzed, or not since they grew
tenfold: autovacuum looks at most once a minute and analyzes after 10% + 50 rows
changed. With no statistics the planner takes every table for a row or two and picks
nested loops: the deadline audiences (rollout.registry.deadlines.due_by) then read
every sent notice once per cohort member, eight times over (0.5 s a query at 700
accounts, 50 ms after ANALYZE). Here autovacuum's threshold (not the per-table
settings), checked when the run starts, so the run does not wait for autovacuum's next
look; and a table never analyzed at all counts as stale, since the counters behind the
threshold reach ``pg_stat_user_tables`` only when the writing session flushes them
(once a second at most), after a bulk change made an instant before.

Only ever an optimisation: a registry where it cannot run (a hot standby, a read-only
role or transaction, a role that does not own the tables, a lock or statement timeout)
keeps working as before, with a line in the log.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from rollout.registry.engine import RegistryStatementCancelled, RegistryURLRefused

log = logging.getLogger(__name__)

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

_STALE = text(
    "select s.relname from pg_stat_user_tables s"
    " join pg_class c on c.oid = s.relid"
    " where s.schemaname = current_schema() and s.relname = any(:tables)"
    " and (s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)"
    "      or coalesce(s.last_analyze, s.last_autoanalyze) is null)"
    " order by s.relname"
)

_WRITABLE = text(
    "select not pg_is_in_recovery() and current_setting('transaction_read_only') = 'off'"
)


def refresh_statistics(engine: Engine) -> list[str]:
    """ANALYZE the campaign tables (in the registry's schema) changed by more than
    autovacuum's threshold since last analyzed, or never analyzed, in a transaction of
    its own; returns them. Nothing on SQLite, on a registry it cannot write, or when
    PostgreSQL refuses (logged)."""
    if engine.dialect.name != "postgresql":
        return []
    try:
        with engine.begin() as connection:
            if not connection.execute(_WRITABLE).scalar():
                return []
            stale = list(connection.execute(_STALE, {"tables": list(CAMPAIGN_TABLES)}).scalars())
            if stale:
                quote = connection.dialect.identifier_preparer.quote
                # SKIP_LOCKED: not behind an autovacuum already at it. A table the
                # role does not own is skipped by PostgreSQL with a warning.
                connection.execute(text(f"ANALYZE (SKIP_LOCKED) {', '.join(map(quote, stale))}"))
    except DBAPIError as error:
        log.warning("planner statistics not refreshed: %s", str(error.orig).strip())
        return []
    except (RegistryURLRefused, RegistryStatementCancelled) as error:
        # Its password changed since the run began, say; or the role's statement_timeout.
        log.warning("planner statistics not refreshed: %s", error.reason)
        return []
    if stale:
        log.info("analyzed %s", ", ".join(stale))
    return stale

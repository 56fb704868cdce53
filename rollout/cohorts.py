"""Cohorts: which packages, and so which accounts, must use 2FA.

``build_cohorts`` reads a day's package metrics, adds the packages that qualify under
each cohort rule of the plan to the registry's ``cohort_packages`` (sticky: nothing
leaves except by ``release_package``), derives the accounts that can publish them
into ``cohort_memberships``, and snapshots both in the warehouse for analysts.
Every entry, exit and release writes an audit row keyed so that a rerun adds none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
from sqlalchemy import Connection, Engine, Table, and_, case, func, select, update

from rollout import warehouse
from rollout.core.calendar import cohorts_step
from rollout.core.clock import day_end, require_data_day
from rollout.core.controls import quoted
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.plan import CohortRule, Plan
from rollout.core.words import by_count, counted, percent, them
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.engine import begin_writing
from rollout.registry.ledger import (
    insert_ignoring_existing,
    record_actions,
    recorded_run,
    upsert,
    utc_now,
)
from rollout.registry.models import CohortMembership, CohortPackage, Org, current_membership
from rollout.warehouse.extract import extract_registry
from rollout.warehouse.manifests import latest_manifests

# The registry tables a cohort build reads: who can publish, and their 2FA factors.
COHORT_INPUTS = (
    "accounts",
    "tfa_factors",
    "orgs",
    "org_members",
    "teams",
    "team_members",
    "team_packages",
    "cohort_packages",
    "cohort_memberships",
)
COHORT_PACKAGES = CohortPackage.__table__
MEMBERSHIPS = CohortMembership.__table__


@dataclass
class CohortResult:
    cohort: str
    as_of: date
    packages: int
    packages_qualifying_today: int
    packages_entered: list[str] = field(default_factory=list)
    accounts: int = 0
    accounts_without_2fa: int = 0
    accounts_entered: int = 0
    accounts_left: int = 0
    unresolved_maintainers: int = 0
    # Where the plan requires a security key of some cohort (Plan.security_key_phases):
    # of this cohort's accounts, those without one (TOTP alone falls short), as its
    # phases, the report and the notebooks count them; None for a cohort asked any 2FA.
    # A plan requiring no key shows no such count (``plan_asks_keys``).
    accounts_short_of_a_key: int | None = None
    plan_asks_keys: bool = False

    LABELS: ClassVar[dict[str, str]] = {
        "qualifying_today": "qualifying today",
        "without_2fa": "without 2FA",
        "short_of_a_security_key": "short of a security key",
    }

    def summary(self) -> dict[str, Any]:
        """The build of one cohort (rollout.core.output.Presentable)."""
        return {
            "cohort": self.cohort,
            "as_of": self.as_of,
            "packages": self.packages,
            "qualifying_today": self.packages_qualifying_today,
            "packages_entered": len(self.packages_entered),
            "accounts": self.accounts,
            "without_2fa": self.accounts_without_2fa,
            **(
                {"short_of_a_security_key": self.accounts_short_of_a_key}
                if self.plan_asks_keys
                else {}
            ),
            "accounts_entered": self.accounts_entered,
            "accounts_left": self.accounts_left,
            "unresolved_maintainers": self.unresolved_maintainers,
        }


@dataclass
class CohortSizes:
    """A what-if: cohort size under other thresholds, nothing written."""

    packages: int
    accounts: int
    accounts_without_2fa: int
    accounts_with_totp: int
    accounts_with_webauthn: int


def rule_parameters(
    rule: CohortRule, as_of: date, weekly_days: int | None = None
) -> dict[str, Any]:
    """``weekly_days``: the plan's weekly window, when the day's metrics were computed
    with another (``require_metrics`` says): ``weekly_downloads_gt`` then sums it from
    the downloads. None: the metrics' weekly downloads."""
    downloads, share = rule.downloads_gt, rule.top_share_by_downloads
    return {
        "as_of": as_of,
        "top_by_dependents": rule.top_by_dependents,
        "weekly_downloads_gt": rule.weekly_downloads_gt,
        "weekly_days": weekly_days if rule.weekly_downloads_gt is not None else None,
        "dependents_gte": rule.dependents_gte,
        "downloads_gt": downloads.count if downloads else None,
        "downloads_days": downloads.days if downloads else None,
        "downloads_total": bool(downloads and downloads.total),
        # As written in the plan (0.07), not as the nearest binary fraction: the cut is
        # ceil(share x packages), and 0.07 x 100 in floating point is 7.000000000000001.
        "top_share": Decimal(repr(share.share)) if share else None,
        # As people write it in the reasons ("top 1%"; 1e-05 and 1.0 are not).
        "top_share_percent": percent(share.share) if share else None,
        "share_days": share.days if share else None,
        "every_maintainer": rule.every_maintainer,
    }


# 2FA as it stands now (every factor held, none removed): a build of the latest day.
NOW_ON = datetime(9999, 12, 31)


def accounts_query(
    rule: CohortRule, as_of: date, cohort: str, *, tfa_at: datetime | None = None
) -> tuple[str, dict[str, Any]]:
    """The query (and its parameters) of the accounts ``rule`` puts in ``cohort`` while
    ``_selected`` holds its packages: ``marts/cohort_accounts``, narrowed by
    ``intermediate/int_cohort_account_filter`` only when the rule has account filters,
    so a rule without them costs what it did. ``cohort=""``: a what-if, every account
    judged afresh (no cohort's sticky members). Each account's 2FA is as it stood at
    ``tfa_at``: by default as ``as_of`` ended (a what-if of a past day, a backfill);
    :data:`NOW_ON` for the factors held now."""
    accounts = warehouse.render("marts/cohort_accounts")
    status_at = {"day_end": tfa_at or day_end(as_of)}
    active = rule.active_within
    if active is None and not rule.orgs:
        return accounts, status_at
    allowed = warehouse.render("intermediate/int_cohort_account_filter")
    return (
        f"select * from ({accounts}) where account_id in (select account_id from ({allowed}))",
        {
            **status_at,
            "as_of": as_of,
            "cohort": cohort,
            "active_days": active.days if active else None,
            "active_by": list(active.by) if active else [],
            "orgs": list(rule.orgs or []),
        },
    )


def day_ranges(days: list[date]) -> str:
    """Days as runs of consecutive days: ``2022-01-01..2022-01-07, 2022-01-09``."""
    runs: list[list[date]] = []
    for day in sorted(days):
        if runs and day - runs[-1][-1] == timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


def _days_without_downloads(
    con: duckdb.DuckDBPyConnection, as_of: date, weekly_days: int
) -> list[date]:
    """The ``weekly_days`` before ``as_of`` with no download data loaded at all, as the
    metrics find their gaps (int_download_gaps, over a window of that one length)."""
    params = {"as_of": as_of, "weekly_days": weekly_days, "monthly_days": weekly_days}
    gaps = con.execute(warehouse.render("intermediate/int_download_gaps"), params).fetchall()
    return [row[0] for row in gaps]


def _latest_download_day(con: duckdb.DuckDBPyConnection) -> date | None:
    try:
        return warehouse.scalar(con, "select max(day) from stg_downloads")
    except duckdb.Error:  # no downloads loaded at all: the message says enough without
        return None


def require_metrics(
    con: duckdb.DuckDBPyConnection, as_of: date, *, allow_gaps: bool, weekly_days: int = 7
) -> int | None:
    """Refuse a day without metrics, or whose weekly window has days without download data.

    ``missing_days`` holds the whole monthly window's gaps; only those of the weekly
    window (the ``weekly_days`` before ``as_of``) stop the cohorts, and only they are named.

    Returns the weekly window ``weekly_downloads_gt`` is to sum from the downloads
    (``rule_parameters``): ``weekly_days`` when the day's metrics were computed with
    another weekly window (a what-if of another plan's, ROLLOUT_PLAN's changed since)
    or one not recorded (metrics computed before it was), its gaps then judged on the
    downloads loaded; None when the metrics' own weekly downloads are the plan's.
    """
    run = warehouse.one(
        con,
        "select weekly_window_complete, missing_days, weekly_window_days "
        "from metrics_runs where as_of = $d",
        {"d": as_of},
    )
    if run is None:
        raise BadInput(
            None,
            None,
            f"no package metrics for {as_of}: run `rollout metrics --as-of {as_of}` first",
        )
    complete, missing, computed_with = run
    resummed = None if computed_with == weekly_days else weekly_days
    start, end = as_of - timedelta(days=weekly_days), as_of - timedelta(days=1)
    if resummed is not None:
        missing = _days_without_downloads(con, as_of, weekly_days)
        complete = not missing
    if complete or allow_gaps:
        return resummed
    weekly = [d for d in missing if start <= d <= end]
    if len(weekly) == weekly_days:
        # Typically a day past the data (a default as-of of today): say where it ends.
        latest = _latest_download_day(con)
        gap = f"every day of {as_of}'s weekly window ({start}..{end})"
        gap += f"; the latest download data loaded is for {latest}" if latest else ""
    else:
        gap = (
            f"{len(weekly)} of the {counted(weekly_days, 'day')} of {as_of}'s weekly window "
            f"({start}..{end}): {day_ranges(weekly)}"
        )
    raise BadInput(
        None,
        None,
        f"download data is missing for {gap}. Load it, or allow gaps (--allow-gaps; "
        "allow_gaps in the flows) to decide on partial data",
    )


@contextmanager
def _selected(con: duckdb.DuckDBPyConnection, query: str, params: dict[str, Any]) -> Iterator[None]:
    """Fill temp tables ``selected_packages`` (package_key) and ``selected_manifests``
    (their latest manifests' maintainers) for the account models. Both models read
    the maintainers; finding the latest of 4M manifests once, not in each, was 2.6 s
    of an npm-scale cohort build."""
    con.execute(f"create or replace temp table selected_packages as {query}", params)
    try:
        con.execute(
            "create or replace temp table selected_manifests as "
            + warehouse.render("intermediate/int_selected_manifests")
        )
        yield
    finally:
        con.execute("drop table if exists selected_manifests")
        con.execute("drop table if exists selected_packages")


def _qualified_today(
    con: duckdb.DuckDBPyConnection, rule: CohortRule, as_of: date, weekly_days: int | None
) -> list[tuple[str, str, list[str]]]:
    return con.execute(
        warehouse.render("marts/cohort_qualified_packages"),
        rule_parameters(rule, as_of, weekly_days),
    ).fetchall()


def _add_packages(
    engine: Engine,
    cohort: str,
    as_of: date,
    qualified: list[tuple[str, str, list[str]]],
    run_id: str,
    actor: str,
) -> list[str]:
    """Upsert today's qualifying packages; returns the ones that entered today."""
    with begin_writing(engine) as connection:
        existing = {
            key
            for (key,) in connection.execute(
                select(COHORT_PACKAGES.c.package_key).where(COHORT_PACKAGES.c.cohort == cohort)
            )
        }
        rows = [
            {
                "cohort": cohort,
                "package_key": key,
                "package": package,
                "first_qualified_on": as_of,
                "last_qualified_on": as_of,
                "reasons": reasons,
                "run_id": run_id,
            }
            for package, key, reasons in qualified
        ]
        # New packages are inserted; those already in only have their days moved.
        entered = [row for row in rows if row["package_key"] not in existing]
        insert_ignoring_existing(connection, COHORT_PACKAGES, entered, ["cohort", "package_key"])
        kept = [row["package_key"] for row in rows if row["package_key"] in existing]
        _seen_again(connection, COHORT_PACKAGES, cohort, "package_key", kept, as_of)
        record_actions(
            connection,
            (
                {
                    "effect_key": f"cohort-package-enter:{cohort}:{row['package_key']}",
                    "action": "cohort_package_enter",
                    "subject": row["package"],
                    "phase": cohort,
                    "reason": "; ".join(row["reasons"]),
                    "actor": actor,
                    "run_id": run_id,
                    "details": {"as_of": as_of.isoformat()},
                }
                for row in entered
            ),
        )
    return [row["package"] for row in entered]


def _seen_again(
    connection: Connection,
    table: Table,
    cohort: str,
    key: str,
    keys: list[Any],
    as_of: date,
    **also: Any,
) -> None:
    """The rows of ``cohort`` already there whose ``key`` is in ``keys``, seen again on
    ``as_of``: the first day moves back to it and the last forward (never the other
    way: a backfill), with the columns of ``also``. A few statements, not one a row."""
    c = table.c
    for chunk in in_chunks(keys):
        connection.execute(
            update(table)
            .where(and_(c.cohort == cohort, c[key].in_(chunk)))
            .values(
                first_qualified_on=_least(c.first_qualified_on, as_of),
                last_qualified_on=_greatest(c.last_qualified_on, as_of),
                **also,
            )
        )


def _least(a: Any, b: Any) -> Any:
    return case((a <= b, a), else_=b)


def _greatest(a: Any, b: Any) -> Any:
    return case((a >= b, a), else_=b)


def _update_memberships(
    engine: Engine, cohort: str, as_of: date, accounts: pa.Table, run_id: str, actor: str
) -> tuple[int, int]:
    """Upsert today's accounts, mark the ones no longer there as left; (entered, left).

    A build of a day before the cohort's latest (a rebuild of past days, a backfill)
    only adds history: an existing member's first day may move earlier, an account
    never recorded joins (membership is sticky), but no one leaves and no one's
    current standing (packages, left) goes back to that day's. It marked every
    member absent that day as left, and phases then skipped them."""
    today = accounts.to_pylist()
    with begin_writing(engine) as connection:
        c = MEMBERSHIPS.c
        before = {
            account_id: (left_on, packages)
            for account_id, left_on, packages in connection.execute(
                select(c.account_id, c.left_on, c.packages).where(c.cohort == cohort)
            )
        }
        latest = connection.execute(
            select(func.max(c.last_qualified_on)).where(c.cohort == cohort)
        ).scalar_one()
        if latest is not None and as_of < latest:
            return _add_history(connection, cohort, as_of, today, before, run_id, actor)
        rows = [_membership(cohort, row, as_of, run_id) for row in today]
        # A member still in through the same packages: only the days and the run move
        # (what the upsert would set).
        same = {
            row["account_id"]
            for row in rows
            if before.get(row["account_id"]) == (None, row["packages"])
        }
        _seen_again(
            connection, MEMBERSHIPS, cohort, "account_id", sorted(same), as_of, run_id=run_id
        )
        upsert(
            connection,
            MEMBERSHIPS,
            [row for row in rows if row["account_id"] not in same],
            ["cohort", "account_id"],
            {
                "packages": lambda new: new.packages,
                "first_qualified_on": lambda new: _least(
                    c.first_qualified_on, new.first_qualified_on
                ),
                "last_qualified_on": lambda new: _greatest(
                    c.last_qualified_on, new.last_qualified_on
                ),
                "left_on": lambda new: new.left_on,
                "run_id": lambda new: new.run_id,
            },
        )
        present = {row["account_id"] for row in today}
        entered = [
            row
            for row in today
            if row["account_id"] not in before or before[row["account_id"]][0] is not None
        ]
        gone = [a for a, (left_on, _) in before.items() if a not in present and left_on is None]
        for chunk in in_chunks(gone):
            connection.execute(
                update(MEMBERSHIPS)
                .where(and_(c.cohort == cohort, c.account_id.in_(chunk)))
                .values(left_on=as_of, run_id=run_id)
            )
        record_actions(
            connection,
            [
                *(_entered_action(cohort, as_of, row, run_id, actor) for row in entered),
                *(
                    {
                        "effect_key": f"cohort-leave:{cohort}:{account_id}:{as_of}",
                        "action": "cohort_leave",
                        "account_id": account_id,
                        "phase": cohort,
                        "reason": "no longer publishes any package of the cohort",
                        "actor": actor,
                        "run_id": run_id,
                    }
                    for account_id in gone
                ),
            ],
        )
    return len(entered), len(gone)


def _membership(cohort: str, row: dict[str, Any], as_of: date, run_id: str) -> dict[str, Any]:
    """The membership row of an account in ``cohort`` found on ``as_of``."""
    return {
        "cohort": cohort,
        "account_id": row["account_id"],
        "packages": row["packages"],
        "first_qualified_on": as_of,
        "last_qualified_on": as_of,
        "left_on": None,
        "run_id": run_id,
    }


def _add_history(
    connection: Connection,
    cohort: str,
    as_of: date,
    today: list[dict[str, Any]],
    before: dict[int, tuple[date | None, list[str]]],
    run_id: str,
    actor: str,
) -> tuple[int, int]:
    """``_update_memberships`` for a day before the cohort's latest build."""
    c = MEMBERSHIPS.c
    known = sorted(row["account_id"] for row in today if row["account_id"] in before)
    for chunk in in_chunks(known):
        connection.execute(
            update(MEMBERSHIPS)
            .where(and_(c.cohort == cohort, c.account_id.in_(chunk)))
            .values(first_qualified_on=_least(c.first_qualified_on, as_of), run_id=run_id)
        )
    new = [row for row in today if row["account_id"] not in before]
    upsert(
        connection,
        MEMBERSHIPS,
        [_membership(cohort, row, as_of, run_id) for row in new],
        ["cohort", "account_id"],
        {"first_qualified_on": lambda new: _least(c.first_qualified_on, new.first_qualified_on)},
    )
    record_actions(connection, [_entered_action(cohort, as_of, row, run_id, actor) for row in new])
    return len(new), 0


def _entered_action(
    cohort: str, as_of: date, row: dict[str, Any], run_id: str, actor: str
) -> dict[str, Any]:
    packages = row["packages"]
    more = f" and {len(packages) - 5} more" if len(packages) > 5 else ""
    return {
        "effect_key": f"cohort-enter:{cohort}:{row['account_id']}:{as_of}",
        "action": "cohort_enter",
        "account_id": row["account_id"],
        "phase": cohort,
        "reason": "can publish " + ", ".join(packages[:5]) + more,
        "actor": actor,
        "run_id": run_id,
    }


def _snapshot(
    con: duckdb.DuckDBPyConnection,
    cohort: str,
    as_of: date,
    accounts: pa.Table,
    qualified_keys: list[str],
) -> None:
    con.register("today_accounts", accounts)
    con.register("today_keys", pa.table({"package_key": pa.array(qualified_keys, pa.string())}))
    try:
        with warehouse.transaction(con):
            params = {"cohort": cohort, "as_of": as_of}
            con.execute(
                "delete from cohort_package_snapshots where as_of = $as_of and cohort = $cohort",
                params,
            )
            con.execute(
                "delete from cohort_account_snapshots where as_of = $as_of and cohort = $cohort",
                params,
            )
            # The build itself, so one that writes no row still reads as the cohort's
            # latest day, empty (cohort_latest_builds).
            con.execute(
                "insert or replace into cohort_builds "
                "values ($as_of, $cohort, timezone('UTC', now()))",
                params,
            )
            con.execute(
                """
                insert into cohort_package_snapshots
                select $as_of, $cohort, package, first_qualified_on,
                    from_json(reasons, '["VARCHAR"]'),
                    package_key in (select package_key from today_keys)
                from registry.cohort_packages
                where cohort = $cohort and released_at is null
                    -- A backfilled day holds what had qualified by then, not what came later.
                    and first_qualified_on <= $as_of
                """,
                params,
            )
            con.execute(
                """
                insert into cohort_account_snapshots
                select $as_of, $cohort, today.account_id, today.username, today.tfa_status,
                    today.tfa_methods, today.last_login_at, memberships.first_qualified_on,
                    today.packages, today.via
                from today_accounts as today
                -- Not only current members (current_members): the day's accounts, each
                -- with its first day; a backfilled day's may have left since.
                inner join registry.cohort_memberships as memberships
                    on memberships.cohort = $cohort and memberships.account_id = today.account_id
                """,
                params,
            )
    finally:
        con.unregister("today_accounts")
        con.unregister("today_keys")


def _accounts(
    con: duckdb.DuckDBPyConnection, cohort: str, rule: CohortRule, as_of: date, tfa_at: datetime
) -> tuple[pa.Table, int]:
    """The accounts ``rule`` puts in ``cohort`` today, from the packages in it as just
    extracted, and the maintainers listed that no account matches."""
    # Sticky: every package that qualified by ``as_of`` and was not released. Not one
    # that first qualified after it: a day built again later (a backfill) would put in
    # its maintainers as of that day, and move their first day back to it.
    in_cohort = (
        "select package_key from registry.cohort_packages "
        "where cohort = $cohort and released_at is null and first_qualified_on <= $as_of"
    )
    with _selected(con, in_cohort, {"cohort": cohort, "as_of": as_of}):
        query, params = accounts_query(rule, as_of, cohort, tfa_at=tfa_at)
        accounts = con.sql(query, params=params).to_arrow_table()
        unresolved = warehouse.scalar(
            con, f"select count(*) from ({warehouse.render('marts/unresolved_maintainers')})"
        )
    return accounts, unresolved or 0


def _tfa_at(con: duckdb.DuckDBPyConnection, cohort: str, as_of: date) -> datetime:
    """When the accounts' 2FA is judged for a build of ``as_of``: now, for the daily
    build of yesterday or today that is the cohort's latest (what `cohorts show` and a
    phase preview see today); as ``as_of`` ended, for any other day. A rebuild of past
    days in date order made each the latest in turn, and so showed today's 2FA on every
    one of them: a day's status depended on the order days were built."""
    latest = latest_build(con, cohort)
    recent = as_of >= utc_now().date() - timedelta(days=1)
    return NOW_ON if recent and (latest is None or as_of >= latest) else day_end(as_of)


def _not_fixed_on(
    plan: Plan, as_of: date, names: Iterable[str] | None = None
) -> dict[str, tuple[date, str]]:
    """Of ``names`` (every cohort of the plan), those a build on ``as_of`` comes too
    early for, with the day and phase that fix them (``Plan.cohort_fixed_from``)."""
    return {
        name: fixed
        for name in (plan.cohorts if names is None else names)
        if (fixed := plan.cohort_fixed_from(name)) is not None and as_of < fixed[0]
    }


def cohorts_built_on(plan: Plan, as_of: date, named: list[str] | None = None) -> list[str]:
    """The cohorts a build on ``as_of`` builds: the ``named`` ones, or all the plan's,
    less those not fixed yet (``Plan.cohort_fixed_from``). A cohort is fixed from its
    phase's ``cohort_as_of``: the daily build before it added every package that
    qualified on any earlier day, for good (sticky), and the phase then emailed and
    enforced maintainers of packages that did not qualify on its day. Named, a cohort
    built before its day is refused."""
    if named:
        for name in named:
            plan.cohort(name)  # an unknown name is bad input, as before
        if early := _not_fixed_on(plan, as_of, named):
            name, (day, phase) = next(iter(early.items()))
            raise BadInput(
                None,
                None,
                f"cohort {name} is fixed from {day} (phase {phase}'s cohort_as_of): "
                f"a build on {as_of} would add packages that qualify only before it; "
                f"build it on {day} or later",
            )
        return list(named)
    early = _not_fixed_on(plan, as_of)
    return [name for name in plan.cohorts if name not in early]


def cohorts_not_fixed_yet(plan: Plan, as_of: date) -> list[str]:
    """What a build on ``as_of`` leaves out, said for a person: "high-impact (fixed from
    2022-03-14 by phase high-impact)" for each cohort whose day has not come."""
    return [
        f"{name} (fixed from {day} by phase {phase})"
        for name, (day, phase) in _not_fixed_on(plan, as_of).items()
    ]


def orgs_not_in_registry(connection: Connection, rules: dict[str, CohortRule]) -> list[str]:
    """One line for each of ``rules`` (by cohort name) whose ``orgs`` names an org the
    registry does not have: its filter lets no member of it in (org names are exact, as
    the registry compares them). Another spelling of the same name, if the registry has
    one, is said. Reads only."""
    orgs = Org.__table__

    def spelt_alike(names: Sequence[str]) -> list[str]:
        folded = sorted({name.lower() for name in names})
        return list(
            connection.execute(
                select(orgs.c.name).where(
                    orgs.c.name.in_(names) | func.lower(orgs.c.name).in_(folded)
                )
            ).scalars()
        )

    return _unknown_orgs(rules, spelt_alike, "the registry")


def orgs_not_in_extract(con: duckdb.DuckDBPyConnection, rules: dict[str, CohortRule]) -> list[str]:
    """``orgs_not_in_registry`` of the registry as the warehouse last extracted it:
    what a what-if (``plan simulate``) reads, which counts no member of such an org."""

    def spelt_alike(names: Sequence[str]) -> list[str]:
        return [
            name
            for (name,) in con.execute(
                "select name from registry.orgs where name in (select unnest($names)) "
                "or lower(name) in (select unnest($folded))",
                {"names": list(names), "folded": sorted({name.lower() for name in names})},
            ).fetchall()
        ]

    return _unknown_orgs(rules, spelt_alike, "the registry as last extracted")


def _unknown_orgs(
    rules: dict[str, CohortRule], spelt_alike: Callable[[Sequence[str]], list[str]], where: str
) -> list[str]:
    """The lines of ``orgs_not_in_registry``: ``spelt_alike`` gives the names ``where``
    has that are one of those it is given (a chunk at a time), or are in lower case
    (as the database folds it: SQLite folds ASCII only, hence both)."""
    named = sorted({org for rule in rules.values() for org in rule.orgs or []})
    if not named:
        return []
    by_folded: dict[str, set[str]] = {}
    for chunk in in_chunks(named):
        for name in spelt_alike(chunk):
            by_folded.setdefault(name.lower(), set()).add(name)
    present = {name for names in by_folded.values() for name in names}
    lines = []
    for cohort, rule in rules.items():
        missing = [org for org in rule.orgs or [] if org not in present]
        if not missing:
            continue
        said = ", ".join(
            quoted(org)
            + (
                f" ({where} has {', '.join(quoted(o) for o in sorted(by_folded[org.lower()]))})"
                if org.lower() in by_folded
                else ""
            )
            for org in missing
        )
        lines.append(
            f"cohort {cohort}: orgs names {said}, which {where} does not have: its "
            f"filter lets no member of {them(len(missing))} in"
        )
    return lines


def require_known_orgs(registry: Registry, rules: dict[str, CohortRule]) -> None:
    """BadInput (exit 2), before anything is built, when a cohort's ``orgs`` names an
    org the registry does not have: a misspelt name gave the cohort none of the org's
    members, and its phases no one to warn or enforce, without a word."""
    with registry.engine.connect() as connection:
        lines = orgs_not_in_registry(connection, rules)
    if lines:
        raise BadInput(
            None,
            None,
            "; ".join(lines)
            + ". Correct the name in the plan, or take out an org the registry does not have "
            "(yet, or any more); nothing was built",
        )


def build_cohorts(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    plan: Plan,
    as_of: date,
    *,
    actor: str,
    cohorts: list[str] | None = None,
    allow_gaps: bool = False,
    refresh_registry: bool = True,
) -> list[CohortResult]:
    """Build the plan's cohorts (or the named ones) for ``as_of``.

    ``refresh_registry=False`` uses the warehouse's registry extract as it is (who can
    publish, 2FA factors): for a run that extracted it minutes ago (the daily flow
    ingests first). The cohort tables themselves are always read fresh.
    """
    require_data_day(as_of)
    resummed = require_metrics(
        con, as_of, allow_gaps=allow_gaps, weekly_days=plan.metrics.weekly_window_days
    )
    names = cohorts_built_on(plan, as_of, cohorts)
    if not names:
        return []
    for name in names:
        require_download_window(con, plan.cohort(name), as_of, allow_gaps=allow_gaps)
    rules = {name: plan.cohorts[name] for name in names}
    key_phases = plan.security_key_phases()
    require_known_orgs(registry, rules)
    engine = registry.engine
    with registry.lock("cohorts") as held:
        # Each cohort's account models read the latest manifests: the kept ones.
        with (
            recorded_run(
                engine,
                plan=plan.name,
                step=cohorts_step(as_of),
                mode="apply",
                actor=actor,
                lock="cohorts",
                parameters={"as_of": as_of.isoformat(), "cohorts": names},
            ) as run,
            latest_manifests(con),
        ):
            # In stages, each over every cohort, so the registry is read back twice a
            # build rather than twice a cohort (each read is a transaction of its
            # own: two thirds of a small registry's daily build went to them).
            # Every cohort's packages first; then what the account models read: the
            # packages as just written, the memberships as they stood (a rule's
            # account filters keep its members), and, unless the caller has just
            # extracted them, who can publish and their factors.
            qualified = {
                name: _qualified_today(con, rules[name], as_of, resummed) for name in names
            }
            # Before each cohort's writes: the lock gone with its PostgreSQL session,
            # another build may be at work (a rerun of the day finishes this one's).
            entered = {}
            for name in names:
                held.check()
                entered[name] = _add_packages(engine, name, as_of, qualified[name], run.id, actor)
            extract_registry(
                con,
                registry,
                COHORT_INPUTS if refresh_registry else ("cohort_packages", "cohort_memberships"),
            )
            # Each cohort's 2FA judged as _tfa_at says: now for the daily build, as the
            # day ended for any other.
            found = {
                name: _accounts(con, name, rules[name], as_of, _tfa_at(con, name, as_of))
                for name in names
            }
            moved = {}
            for name in names:
                held.check()
                moved[name] = _update_memberships(
                    engine, name, as_of, found[name][0], run.id, actor
                )
            # The snapshots take each account's first day from the memberships.
            extract_registry(con, registry, ("cohort_memberships",))
            results: list[CohortResult] = []
            for name in names:
                today, unresolved = found[name]
                _snapshot(con, name, as_of, today, [key for _, key, _ in qualified[name]])
                # As the snapshot counts them: a backfilled day had only the packages
                # that had qualified by then.
                total = warehouse.scalar(
                    con,
                    "select count(*) from registry.cohort_packages where cohort = $cohort "
                    "and released_at is null and first_qualified_on <= $as_of",
                    {"cohort": name, "as_of": as_of},
                )
                result = CohortResult(
                    cohort=name,
                    as_of=as_of,
                    packages=total,
                    packages_qualifying_today=len(qualified[name]),
                    packages_entered=entered[name],
                    accounts=today.num_rows,
                    accounts_without_2fa=today.column("tfa_status").to_pylist().count("none"),
                    accounts_entered=moved[name][0],
                    accounts_left=moved[name][1],
                    unresolved_maintainers=unresolved,
                )
                if key_phases:
                    result.plan_asks_keys = True
                    if name in key_phases:
                        statuses = today.column("tfa_status").to_pylist()
                        result.accounts_short_of_a_key = len(statuses) - statuses.count("webauthn")
                results.append(result)
                run.summary[name] = {
                    "packages": result.packages,
                    "accounts": result.accounts,
                    "entered": len(result.packages_entered),
                }
        return results


@dataclass(frozen=True)
class ReleasePreview:
    """What a release of a package from a cohort would change: the package as the
    cohort records it, since when and why it is in (or when it was released), and how
    many accounts are in the cohort only through it (they leave at the next build)."""

    package: str
    cohort: str
    first_qualified_on: date
    reasons: list[str]
    released_at: datetime | None
    accounts_leaving: int

    def record(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "cohort": self.cohort,
            "first_qualified_on": self.first_qualified_on,
            "reasons": self.reasons,
            "released_at": self.released_at,
            "accounts_leaving": self.accounts_leaving,
        }

    def sentence(self) -> str:
        state = (
            f"released on {self.released_at:%Y-%m-%d}"
            if self.released_at
            else f"in {self.cohort} since {self.first_qualified_on} ({'; '.join(self.reasons)})"
        )
        only_this = self.accounts_leaving
        return (
            f"{self.package}: {state}; {counted(only_this, 'account')} "
            f"{by_count(only_this, 'is', 'are')} in {self.cohort} only through it "
            "and would leave at the next build"
        )


def release_preview(registry: Registry, cohort: str, package: str) -> str:
    """What a release would change, in words, for the preview that comes first."""
    return release_outlook(registry, cohort, package).sentence()


def release_outlook(registry: Registry, cohort: str, package: str) -> ReleasePreview:
    """What a release would change (:class:`ReleasePreview`), read before it is done."""
    with registry.engine.connect() as connection:
        c = COHORT_PACKAGES.c
        row = connection.execute(
            select(c.package, c.first_qualified_on, c.reasons, c.released_at).where(
                and_(c.cohort == cohort, c.package_key == package.lower())
            )
        ).first()
        if row is None:
            raise BadInput(None, None, f"{quoted(package)} is not in cohort {cohort}")
        # What keeps an account in once this is out: another package of the cohort
        # not released (one released since the last build no longer does).
        others = {
            key
            for (key,) in connection.execute(
                select(c.package_key).where(
                    and_(
                        c.cohort == cohort,
                        c.released_at.is_(None),
                        c.package_key != package.lower(),
                    )
                )
            )
        }
        m = MEMBERSHIPS.c
        members = [
            packages
            for (packages,) in connection.execute(
                select(m.packages).where(current_membership(cohort))
            )
        ]
    # By key: an account's packages are named as it publishes them (a team's grant may
    # spell the name in other capitals than the cohort's entry).
    only_this = sum(
        1
        for packages in members
        if package.lower() in {name.lower() for name in packages}
        and not others.intersection(name.lower() for name in packages)
    )
    return ReleasePreview(
        package=row.package,
        cohort=cohort,
        first_qualified_on=row.first_qualified_on,
        reasons=list(row.reasons),
        released_at=row.released_at,
        accounts_leaving=only_this,
    )


@dataclass(frozen=True)
class Released:
    """A package's release from a cohort: its name as recorded, when, why and by whom;
    ``now``: released by this call (False: an earlier one had, and nothing changed)."""

    package: str
    released_at: datetime
    reason: str
    by: str
    now: bool

    def already(self, cohort: str) -> str:
        """What a release run again says: it was done, and by whom, and why."""
        return (
            f"{self.package} was already released from {cohort} on "
            f"{self.released_at:%Y-%m-%d} by {self.by} ({self.reason}): nothing changed"
        )


def release_package(
    registry: Registry, cohort: str, package: str, *, reason: str, actor: str
) -> Released:
    """Take a package out of a cohort for good, once: run again (after a crash, or a
    lost terminal) it finds the release done and changes nothing (``Released.now``
    False), with no second audit row, the first reason kept.

    Under the cohorts lock, as a build: a build at work read the packages before the
    release and would keep in, past its end, the accounts the release lets go "at the
    next build". So the release is refused (GuardRefused) until it ends."""
    if not reason.strip():
        raise BadInput(None, None, "a release needs a --reason")
    key = package.lower()
    with registry.lock("cohorts") as held, begin_writing(registry.engine) as connection:
        c = COHORT_PACKAGES.c
        row = connection.execute(
            select(c.id, c.package, c.released_at, c.released_reason, c.released_by).where(
                and_(c.cohort == cohort, c.package_key == key)
            )
        ).first()
        if row is None:
            raise BadInput(None, None, f"{quoted(package)} is not in cohort {cohort}")
        if row.released_at is not None:
            # Done by an earlier run (this one's, before a crash): the job is finished.
            return Released(
                row.package,
                row.released_at,
                row.released_reason or "",
                row.released_by or "",
                False,
            )
        now = utc_now()
        # Guarded on the state read: a second release that read the same unreleased
        # row commits after this one and finds it released (not a silent overwrite).
        released = connection.execute(
            update(COHORT_PACKAGES)
            .where(and_(c.id == row.id, c.released_at.is_(None)))
            .values(released_at=now, released_reason=reason, released_by=actor)
        ).rowcount
        if released != 1:
            raise GuardRefused(
                f"{row.package} was released from {cohort} by another run meanwhile; "
                "see `rollout cohorts show`"
            )
        record_actions(
            connection,
            [
                {
                    "effect_key": f"cohort-package-release:{cohort}:{key}",
                    "action": "cohort_package_release",
                    "subject": row.package,
                    "phase": cohort,
                    "reason": reason,
                    "actor": actor,
                }
            ],
        )
        held.check()  # before the commit: no release beside a build that began since
        return Released(row.package, now, reason, actor, True)


def require_download_window(
    con: duckdb.DuckDBPyConnection, rule: CohortRule, as_of: date, *, allow_gaps: bool
) -> None:
    """Refuse a rule whose download window (``downloads_gt`` over days,
    ``top_share_by_downloads``) has days without download data, unless ``allow_gaps``:
    a window with a gap undercounts every package, so fewer would qualify."""
    days = rule.download_window_days()
    if days is None or allow_gaps:
        return
    start = as_of - timedelta(days=days)
    loaded = warehouse.scalar(
        con,
        "select count(distinct day) from stg_downloads where day >= $start and day < $as_of",
        {"start": start, "as_of": as_of},
    )
    if loaded < days:
        raise BadInput(
            None,
            None,
            f"the cohort rule sums downloads over the {counted(days, 'day')} {start}.."
            f"{as_of - timedelta(days=1)}, but only {loaded} of them are loaded: load the "
            "missing days' downloads, or pass --allow-gaps to build on what there is",
        )


@contextmanager
def selecting(
    con: duckdb.DuckDBPyConnection,
    rule: CohortRule,
    as_of: date,
    *,
    allow_gaps: bool = False,
    weekly_days: int = 7,
) -> Iterator[None]:
    """While open, ``marts/cohort_accounts`` reads the accounts ``rule`` selects on
    ``as_of``'s metrics (temp tables only: the warehouse may be opened read-only).
    A day without metrics is refused (no zeros for answers), and unless ``allow_gaps``
    so is a rule whose downloads have gaps, as a build refuses it: its download window
    (``require_download_window``), or the metrics' weekly window (``weekly_days``
    long) for ``weekly_downloads_gt``, whose sums a gap undercounts (a what-if of a
    day past the data counted no package above a weekly threshold, without a word)."""
    weekly_free = allow_gaps or rule.weekly_downloads_gt is None
    resummed = require_metrics(con, as_of, allow_gaps=weekly_free, weekly_days=weekly_days)
    require_download_window(con, rule, as_of, allow_gaps=allow_gaps)
    query = f"select package_key from ({warehouse.render('marts/cohort_qualified_packages')})"
    with _selected(con, query, rule_parameters(rule, as_of, resummed)):
        yield


def simulate(
    con: duckdb.DuckDBPyConnection,
    rule: CohortRule,
    as_of: date,
    *,
    allow_gaps: bool = False,
    weekly_days: int = 7,
) -> CohortSizes:
    """Cohort sizes under ``rule`` on ``as_of``'s metrics (gaps in its downloads refused
    unless ``allow_gaps``: ``selecting``); writes nothing."""
    query, params = accounts_query(rule, as_of, cohort="")
    with selecting(con, rule, as_of, allow_gaps=allow_gaps, weekly_days=weekly_days):
        packages = warehouse.scalar(con, "select count(*) from selected_packages")
        sizes = warehouse.one(
            con,
            f"""
            select count(*), count(*) filter (where tfa_status = 'none'),
                count(*) filter (where tfa_status = 'totp'),
                count(*) filter (where tfa_status = 'webauthn')
            from ({query})
            """,
            params,
        )
    accounts, none, totp, webauthn = sizes or (0, 0, 0, 0)
    return CohortSizes(packages, accounts, none, totp, webauthn)


def latest_as_of(
    con: duckdb.DuckDBPyConnection, table: str, cohort: str | None = None
) -> date | None:
    """The latest day ``table`` holds (of ``cohort`` only, when given: a build of one
    cohort is not a day of the others)."""
    if cohort is None:
        return warehouse.scalar(con, f"select max(as_of) from {table}")
    return warehouse.scalar(
        con, f"select max(as_of) from {table} where cohort = $cohort", {"cohort": cohort}
    )


def latest_build(con: duckdb.DuckDBPyConnection, cohort: str) -> date | None:
    """The latest day ``cohort`` was built, whatever the build wrote (one whose packages
    put no account in it writes no account row, one whose packages were all released
    no row at all: its accounts that day are none, not the build before's)."""
    return warehouse.scalar(
        con, "select as_of from cohort_latest_builds where cohort = $cohort", {"cohort": cohort}
    )


def snapshot_exists(con: duckdb.DuckDBPyConnection, day: date, cohort: str | None = None) -> bool:
    """Whether a cohort build of ``day`` ran for ``cohort`` (or any cohort), empty or not."""
    which = "" if cohort is None else " and cohort = $cohort"
    params: dict[str, Any] = {"day": day} | ({} if cohort is None else {"cohort": cohort})
    return bool(
        warehouse.scalar(
            con,
            f"select exists (select 1 from cohort_builds where as_of = $day{which}) "
            f"or exists (select 1 from cohort_package_snapshots where as_of = $day{which}) "
            f"or exists (select 1 from cohort_account_snapshots where as_of = $day{which})",
            params,
        )
    )

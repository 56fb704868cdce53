"""Cohorts on a hand-made registry, on SQLite and PostgreSQL: who is in, why, and that
membership is sticky, audited and exactly-once."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import func, select, update

from rollout import cohorts, metrics
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.output import labelled_rows
from rollout.core.plan import ActiveWithin, CohortRule, DownloadsOver, Plan, TopShare
from rollout.phases.simulate import simulate_plan
from rollout.registry import Registry, batches
from rollout.registry.engine import session_scope
from rollout.registry.locks import RunLockLost
from rollout.registry.models import (
    Account,
    Action,
    CohortMembership,
    CohortPackage,
    Org,
    OrgMember,
    Team,
    TeamMember,
    TeamPackage,
    TfaFactor,
)
from rollout.report.reporting import report_from_registry
from rollout.warehouse import ingest
from rollout.warehouse.extract import extract_registry
from tests.support.run_locks import lose_run_lock_during

from .conftest import postgres_only

T0 = datetime(2021, 6, 1)
D1 = date(2022, 2, 1)
D2 = date(2022, 2, 8)

MANIFESTS = [
    {"name": "big", "version": "1.0.0", "maintainers": ["alice"]},
    {"name": "core", "version": "2.0.0", "maintainers": ["bob", "ghost"]},
    {"name": "small", "version": "0.1.0", "maintainers": ["erin"]},
    *(
        {
            "name": f"app{i}",
            "version": "1.0.0",
            "dependencies": {"core": "^2"},
            "maintainers": ["erin"],
        }
        for i in range(3)
    ),
]


@pytest.fixture
def small_cohorts_plan(plan: Plan) -> Plan:
    """The reference plan with cohorts the few packages here can fill: top-1 and a
    high-impact of lower thresholds, fixed from the days built here (its phase's
    cohort_as_of moved to top-100's: a cohort is not built before it)."""
    return plan.model_copy(
        update={
            "cohorts": {
                "top-1": CohortRule(top_by_dependents=1),
                "high-impact": CohortRule(weekly_downloads_gt=1000, dependents_gte=3),
            },
            "phases": [
                phase.model_copy(update={"cohort_as_of": plan.phases[0].cohort_as_of})
                for phase in plan.phases
            ],
        }
    )


def write_downloads(folder: Path, first: date, days: int, per_day: dict[str, int]) -> None:
    lines = ["package,day,downloads"]
    for offset in range(days):
        day = first + timedelta(days=offset)
        lines += [f"{package},{day},{count}" for package, count in per_day.items()]
    (folder / f"downloads-{first}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def con(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """The fresh warehouse of tests/conftest.py with MANIFESTS and 37 days of downloads
    ingested: big over the weekly threshold until D1, when it dips."""
    landing = tmp_path / "landing"
    (landing / "manifests").mkdir(parents=True)
    (landing / "downloads").mkdir()
    (landing / "manifests" / "manifests.jsonl").write_text(
        "\n".join(json.dumps(m) for m in MANIFESTS) + "\n"
    )
    # 200 a day for big: 1,400 a week, over the 1,000 threshold, until it dips.
    write_downloads(
        landing / "downloads", D1 - timedelta(days=30), 30, {"big": 200, "core": 10, "small": 5}
    )
    write_downloads(landing / "downloads", D1, 7, {"big": 20, "core": 10, "small": 5})
    report = ingest.ingest(
        con, [landing], quarantine_limit=0.01, landing_root=landing, now=datetime(2022, 3, 1)
    )
    assert report.rejected == []
    return con


@pytest.fixture
def people(registry: Registry) -> dict[str, int]:
    with session_scope(registry.engine) as session:
        accounts = {
            name: Account(
                username=name, email=f"{name}@example.com", email_verified=True, created_at=T0
            )
            for name in ("alice", "bob", "carol", "dave", "erin")
        }
        session.add_all(accounts.values())
        session.flush()
        ids = {name: account.id for name, account in accounts.items()}
        session.add(TfaFactor(account_id=ids["bob"], kind="totp", created_at=T0))
        session.add(TfaFactor(account_id=ids["carol"], kind="webauthn", created_at=T0))
        session.add(TfaFactor(account_id=ids["carol"], kind="totp", created_at=T0))
        org = Org(name="corp", created_at=T0)
        session.add(org)
        session.flush()
        team = Team(org_id=org.id, name="publishers", created_at=T0)
        readers = Team(org_id=org.id, name="readers", created_at=T0)
        session.add_all([team, readers])
        session.flush()
        session.add_all(
            [
                OrgMember(org_id=org.id, account_id=ids["carol"], role="owner", joined_at=T0),
                # dave left the org: his team membership no longer lets him publish.
                OrgMember(
                    org_id=org.id,
                    account_id=ids["dave"],
                    role="developer",
                    joined_at=T0,
                    removed_at=T0 + timedelta(days=30),
                    removed_reason="left",
                ),
                OrgMember(org_id=org.id, account_id=ids["erin"], role="developer", joined_at=T0),
                TeamMember(team_id=team.id, account_id=ids["carol"]),
                TeamMember(team_id=team.id, account_id=ids["dave"]),
                TeamMember(team_id=readers.id, account_id=ids["erin"]),
                TeamPackage(team_id=team.id, package_name="core", permission="write"),
                TeamPackage(team_id=readers.id, package_name="core", permission="read"),
            ]
        )
    return ids


def build(
    con: duckdb.DuckDBPyConnection, registry: Registry, plan: Plan, day: date
) -> dict[str, cohorts.CohortResult]:
    metrics.compute_metrics(con, day, plan.metrics)
    return {r.cohort: r for r in cohorts.build_cohorts(con, registry, plan, day, actor="test")}


def accounts_of(con: duckdb.DuckDBPyConnection, cohort: str, day: date) -> dict[str, tuple]:
    rows = con.execute(
        "select username, tfa_status, packages, via from cohort_account_snapshots "
        "where cohort = $c and as_of = $d",
        {"c": cohort, "d": day},
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def action_count(registry: Registry) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(Action)).scalar_one()


def test_maintainers_and_team_publishers_make_the_cohort(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    results = build(con, registry, small_cohorts_plan, D1)
    assert sorted(results["high-impact"].packages_entered) == ["big", "core"]
    assert accounts_of(con, "high-impact", D1) == {
        "alice": ("none", ["big"], ["maintainer"]),
        "bob": ("totp", ["core"], ["maintainer"]),
        "carol": ("webauthn", ["core"], ["team corp/publishers"]),
    }
    assert accounts_of(con, "top-1", D1).keys() == {"bob", "carol"}
    assert results["high-impact"].accounts_without_2fa == 1
    # "ghost" maintains core but has no account: counted, not silently dropped.
    assert results["high-impact"].unresolved_maintainers == 1
    reasons = dict(
        con.execute(
            "select package, reasons from cohort_package_snapshots where cohort = 'high-impact'"
        ).fetchall()
    )
    assert reasons == {
        "big": ["1400 weekly downloads (more than 1000)"],
        "core": ["3 dependents (at least 3)"],
    }


def test_a_package_that_dips_stays_in_its_cohort(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    build(con, registry, small_cohorts_plan, D1)
    later = build(con, registry, small_cohorts_plan, D2)["high-impact"]
    assert later.packages == 2 and later.packages_qualifying_today == 1
    assert con.execute(
        "select package, first_qualified_on, qualifies_today from cohort_package_snapshots "
        "where cohort = 'high-impact' and as_of = $d order by package",
        {"d": D2},
    ).fetchall() == [("big", D1, False), ("core", D1, True)]
    assert "alice" in accounts_of(con, "high-impact", D2)


def test_rerunning_a_day_writes_nothing_twice(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    build(con, registry, small_cohorts_plan, D1)
    before = action_count(registry)
    again = build(con, registry, small_cohorts_plan, D1)
    assert action_count(registry) == before
    assert again["high-impact"].packages_entered == []
    assert again["high-impact"].accounts_entered == 0
    with registry.engine.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(CohortMembership)).scalar_one() == 5
        )


# With one key a statement as well: the updates go in slices (rollout.registry.batches).
@pytest.mark.parametrize("in_list_max", [batches.IN_LIST_MAX, 1])
def test_a_backfilled_day_moves_the_first_day_back_and_never_the_last(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    in_list_max: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batches, "IN_LIST_MAX", in_list_max)

    def packages() -> dict[tuple[str, str], tuple[date, date]]:
        with registry.engine.connect() as connection:
            c = CohortPackage
            rows = connection.execute(
                select(c.cohort, c.package, c.first_qualified_on, c.last_qualified_on)
            )
            return {(cohort, p): (first, last) for cohort, p, first, last in rows}

    def members() -> dict[tuple[str, int], tuple[date, date, date | None, str]]:
        with registry.engine.connect() as connection:
            m = CohortMembership
            rows = connection.execute(
                select(
                    m.cohort,
                    m.account_id,
                    m.first_qualified_on,
                    m.last_qualified_on,
                    m.left_on,
                    m.run_id,
                )
            )
            return {(cohort, a): tuple(rest) for cohort, a, *rest in rows}

    def qualifying(table: str, column: str, day: date) -> set[tuple[str, Any]]:
        where = " and qualifies_today" if table == "cohort_package_snapshots" else ""
        return set(
            con.execute(
                f"select cohort, {column} from {table} where as_of = $d{where}", {"d": day}
            ).fetchall()
        )

    build(con, registry, small_cohorts_plan, D2)
    members_d2 = members()
    # A backfill of the week before.
    build(con, registry, small_cohorts_plan, D1)
    both = qualifying("cohort_package_snapshots", "package", D1) & qualifying(
        "cohort_package_snapshots", "package", D2
    )
    assert both
    after = packages()
    assert {after[key] for key in both} == {(D1, D2)}
    # The members of both days: the first day moves back, the last stays, still in,
    # and the row names the run that saw it last, the backfill's.
    kept = qualifying("cohort_account_snapshots", "account_id", D1) & qualifying(
        "cohort_account_snapshots", "account_id", D2
    )
    assert kept
    backfilled = members()
    assert {backfilled[key][:3] for key in kept} == {(D1, D2, None)}
    assert all(backfilled[key][3] != members_d2[key][3] for key in kept)
    # D2 again moves neither day.
    build(con, registry, small_cohorts_plan, D2)
    assert {packages()[key] for key in both} == {(D1, D2)}
    assert {members()[key][:3] for key in kept} == {(D1, D2, None)}


def test_a_backfilled_day_is_judged_by_what_it_had_not_by_what_came_later(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """Built again for D1 after D2: alice's TOTP, added between the two, does not count
    on D1, and a package that first qualified on D2 (small, erin's) is not in D1's
    cohort, nor is erin moved in on D1."""
    build(con, registry, small_cohorts_plan, D2)
    with session_scope(registry.engine) as session:
        session.add(
            TfaFactor(account_id=people["alice"], kind="totp", created_at=datetime(2022, 2, 5))
        )
        session.add(
            CohortPackage(
                cohort="high-impact",
                package_key="small",
                package="small",
                first_qualified_on=D2,
                last_qualified_on=D2,
                reasons=["qualified on D2"],
            )
        )
        # As D2's build would have recorded erin, had small been in the cohort then.
        session.add(
            CohortMembership(
                cohort="high-impact",
                account_id=people["erin"],
                packages=["small"],
                first_qualified_on=D2,
                last_qualified_on=D2,
            )
        )
    build(con, registry, small_cohorts_plan, D1)
    on_d1 = accounts_of(con, "high-impact", D1)
    assert on_d1["alice"][0] == "none"
    assert "erin" not in on_d1
    packages_d1 = {
        row[0]
        for row in con.execute(
            "select package from cohort_package_snapshots where cohort = 'high-impact' "
            "and as_of = $d",
            {"d": D1},
        ).fetchall()
    }
    assert packages_d1 == {"big", "core"}
    with registry.engine.connect() as connection:
        erin = connection.execute(
            select(CohortMembership.first_qualified_on, CohortMembership.left_on).where(
                CohortMembership.cohort == "high-impact",
                CohortMembership.account_id == people["erin"],
            )
        ).one_or_none()
        leaves = connection.execute(
            select(func.count()).where(Action.action == "cohort_leave")
        ).scalar_one()
    # Still a member as of D2, the latest build: absent on an earlier day is history,
    # not a leave (the phases read left_on, and skipped her).
    assert tuple(erin) == (D2, None)
    assert leaves == 0


def test_days_built_in_order_judge_2fa_as_each_day_ended(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """A rebuild of past days, oldest first: alice enrolled after D1, so she had no 2FA
    on D1, whichever order the days were built in (D1 built first, the latest then,
    took the factors held now)."""
    with session_scope(registry.engine) as session:
        session.add(
            TfaFactor(account_id=people["alice"], kind="totp", created_at=datetime(2022, 2, 5))
        )
    build(con, registry, small_cohorts_plan, D1)
    build(con, registry, small_cohorts_plan, D2)
    first = accounts_of(con, "high-impact", D1)["alice"][0]
    build(con, registry, small_cohorts_plan, D1)
    assert first == accounts_of(con, "high-impact", D1)["alice"][0] == "none"
    assert accounts_of(con, "high-impact", D2)["alice"][0] == "totp"


def test_a_what_if_on_a_day_without_metrics_is_refused_not_zeros(
    con: duckdb.DuckDBPyConnection, registry: Registry, small_cohorts_plan: Plan
) -> None:
    with pytest.raises(BadInput, match=f"no package metrics for {D1}"):
        cohorts.simulate(con, small_cohorts_plan.cohort("top-1"), D1)


def test_a_build_reads_the_registry_back_twice_however_many_cohorts(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read is a warehouse transaction of its own: a small registry's daily build
    spent two thirds of its time on them when there were two a cohort."""
    reads: list[tuple[str, ...]] = []
    original = cohorts.extract_registry

    def counted(
        con: duckdb.DuckDBPyConnection, registry: Registry, tables: tuple[str, ...]
    ) -> dict[str, int]:
        reads.append(tables)
        return original(con, registry, tables)

    monkeypatch.setattr(cohorts, "extract_registry", counted)
    plan = with_cohort(small_cohorts_plan, CohortRule(every_maintainer=True, orgs=["corp"]))
    plan = plan.model_copy(
        update={"cohorts": {**plan.cohorts, "third": CohortRule(top_by_dependents=2)}}
    )
    built = build(con, registry, plan, D1)
    assert len(built) == 3
    # Who can publish and the packages as just written, then the memberships as written.
    assert reads == [cohorts.COHORT_INPUTS, ("cohort_memberships",)]
    # The snapshots read the memberships written by this build: every account's first day.
    first_days = con.execute(
        "select distinct cohort, first_qualified_on from cohort_account_snapshots"
    ).fetchall()
    assert {cohort for cohort, _ in first_days} == set(plan.cohorts)
    assert {day for _, day in first_days} == {D1}


def test_release_previews_then_takes_the_package_out_with_an_audit_row(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    build(con, registry, small_cohorts_plan, D1)
    preview = cohorts.release_preview(registry, "high-impact", "BIG")
    assert "1 account is in high-impact only through it" in preview
    cohorts.release_package(registry, "high-impact", "big", reason="inflated downloads", actor="rm")
    with registry.engine.connect() as connection:
        released = connection.execute(
            select(CohortPackage.released_reason, CohortPackage.released_by).where(
                CohortPackage.package == "big"
            )
        ).one()
        audit = connection.execute(
            select(Action.action, Action.reason, Action.actor).where(
                Action.action == "cohort_package_release"
            )
        ).all()
    assert tuple(released) == ("inflated downloads", "rm")
    assert [tuple(a) for a in audit] == [("cohort_package_release", "inflated downloads", "rm")]
    after = build(con, registry, small_cohorts_plan, D2)["high-impact"]
    assert after.accounts_left == 1
    assert "alice" not in accounts_of(con, "high-impact", D2)
    # Run again: done already, nothing changed, the first reason kept, no second row.
    again = cohorts.release_package(registry, "high-impact", "big", reason="again", actor="rm")
    assert (again.now, again.reason) == (False, "inflated downloads")
    with registry.engine.connect() as connection:
        assert (
            connection.scalar(select(func.count()).where(Action.action == "cohort_package_release"))
            == 1
        )


@postgres_only
def test_a_build_whose_run_lock_session_ends_writes_no_cohort_more(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL: the cohorts lock went with its session (a server restart, a pooler,
    a keepalive timeout) while the first cohort's packages were written, and another
    build may be at work: no cohort's write more, no member taken in; the day built
    again finishes it, as a build never stopped would have."""
    metrics.compute_metrics(con, D1, small_cohorts_plan.metrics)
    with (
        monkeypatch.context() as patched,
        pytest.raises(RunLockLost, match="the cohorts run lock was lost"),
    ):
        lose_run_lock_during(patched, cohorts, "_add_packages", registry, "cohorts")
        cohorts.build_cohorts(con, registry, small_cohorts_plan, D1, actor="test")
    with registry.engine.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(CohortMembership)).scalar_one() == 0
        )
        written = connection.execute(select(CohortPackage.cohort).distinct()).scalars().all()
    assert len(written) == 1  # the first cohort's packages, committed before the loss
    results = build(con, registry, small_cohorts_plan, D1)
    assert sorted(results["high-impact"].packages_entered) == ["big", "core"]
    assert accounts_of(con, "high-impact", D1).keys() == {"alice", "bob", "carol"}
    assert accounts_of(con, "top-1", D1).keys() == {"bob", "carol"}


@postgres_only
def test_a_release_whose_run_lock_session_ends_releases_nothing(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a build: a release whose lock went (a build may have begun since, reading the
    package in) commits nothing: the package is not released; run again, it is."""
    build(con, registry, small_cohorts_plan, D1)
    with (
        monkeypatch.context() as patched,
        pytest.raises(RunLockLost, match="the cohorts run lock was lost"),
    ):
        lose_run_lock_during(patched, cohorts, "record_actions", registry, "cohorts")
        cohorts.release_package(registry, "high-impact", "big", reason="inflated", actor="rm")
    with registry.engine.connect() as connection:
        assert (
            connection.execute(
                select(CohortPackage.released_at).where(CohortPackage.package == "big")
            ).scalar_one()
            is None
        )
    done = cohorts.release_package(registry, "high-impact", "big", reason="inflated", actor="rm")
    assert (done.now, done.reason) == (True, "inflated")


def test_a_release_while_a_build_is_at_work_is_refused_until_it_ends(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The build read the packages before the release and would keep the accounts in
    through the released one after it: "they leave at the next build" would not hold
    of the build that ended last. A release takes the cohorts lock as a build does, so
    it is refused while one is at work, and writes nothing."""
    build(con, registry, small_cohorts_plan, D1)
    update_memberships = cohorts._update_memberships
    refusals: list[GuardRefused] = []

    def release_meanwhile(*args: Any, **kwargs: Any) -> tuple[int, int]:
        with pytest.raises(GuardRefused, match="another cohorts run") as refused:
            cohorts.release_package(registry, "high-impact", "big", reason="inflated", actor="rm")
        refusals.append(refused.value)
        return update_memberships(*args, **kwargs)

    monkeypatch.setattr(cohorts, "_update_memberships", release_meanwhile)
    build(con, registry, small_cohorts_plan, D2)
    assert refusals
    with registry.engine.connect() as connection:
        released = connection.execute(
            select(CohortPackage.package).where(CohortPackage.released_at.is_not(None))
        ).all()
    assert released == []
    monkeypatch.setattr(cohorts, "_update_memberships", update_memberships)
    cohorts.release_package(registry, "high-impact", "big", reason="inflated", actor="rm")
    # The next build (of the same day, again) lets its only account go.
    assert build(con, registry, small_cohorts_plan, D2)["high-impact"].accounts_left == 1


def test_a_release_racing_another_is_refused_not_written_over(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Alice's release starts while Bob's is at work (it has read the package
    unreleased): Alice is refused by the cohorts lock, and Bob's reason and audit row
    stand, alone."""
    from rollout.registry import ledger

    build(con, registry, small_cohorts_plan, D1)
    now = ledger.utc_now

    def alice_meanwhile() -> datetime:
        monkeypatch.setattr(cohorts, "utc_now", now)
        with pytest.raises(GuardRefused, match="another cohorts run"):
            cohorts.release_package(registry, "high-impact", "big", reason="alice", actor="alice")
        return now()

    monkeypatch.setattr(cohorts, "utc_now", alice_meanwhile)
    cohorts.release_package(registry, "high-impact", "big", reason="bob", actor="bob")
    with registry.engine.connect() as connection:
        released = connection.execute(
            select(CohortPackage.released_reason, CohortPackage.released_by)
        ).all()
        audit = connection.execute(
            select(Action.actor).where(Action.action == "cohort_package_release")
        ).all()
    assert [tuple(r) for r in released if r[0]] == [("bob", "bob")]
    assert [a.actor for a in audit] == ["bob"]


def test_cohorts_need_that_days_metrics(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
) -> None:
    with pytest.raises(
        BadInput,
        match="no package metrics for 2022-02-01: run `rollout metrics --as-of 2022-02-01` first",
    ):
        cohorts.build_cohorts(con, registry, small_cohorts_plan, D1, actor="test")


def test_a_gap_in_the_weekly_window_refuses_unless_allowed(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    late = date(2022, 2, 10)  # the window runs to 2022-02-09; data ends 2022-02-07
    report = metrics.compute_metrics(con, late, small_cohorts_plan.metrics)
    assert report.missing_days == [date(2022, 2, 8), date(2022, 2, 9)]
    with pytest.raises(
        BadInput,
        match=r"missing for 2 of the 7 days of 2022-02-10's weekly window "
        r"\(2022-02-03\.\.2022-02-09\): 2022-02-08\.\.2022-02-09\. Load it",
    ):
        cohorts.build_cohorts(con, registry, small_cohorts_plan, late, actor="test")
    assert cohorts.build_cohorts(
        con, registry, small_cohorts_plan, late, actor="test", allow_gaps=True
    )


def test_a_day_past_the_data_names_the_weekly_window_and_where_the_data_ends(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    later = date(2022, 6, 1)  # data ends 2022-02-07: the whole monthly window is missing
    assert len(metrics.compute_metrics(con, later, small_cohorts_plan.metrics).missing_days) == 30
    with pytest.raises(BadInput) as refused:
        cohorts.build_cohorts(con, registry, small_cohorts_plan, later, actor="test")
    assert str(refused.value) == (
        "download data is missing for every day of 2022-06-01's weekly window "
        "(2022-05-25..2022-05-31); the latest download data loaded is for 2022-02-07. "
        "Load it, or allow gaps (--allow-gaps; allow_gaps in the flows) to decide on "
        "partial data"
    )


def test_day_ranges_joins_consecutive_days() -> None:
    days = [date(2022, 1, 3), date(2022, 1, 1), date(2022, 1, 2), date(2022, 1, 5)]
    assert cohorts.day_ranges(days) == "2022-01-01..2022-01-03, 2022-01-05"
    assert cohorts.day_ranges([]) == ""


def test_simulate_writes_nothing(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    metrics.compute_metrics(con, D1, small_cohorts_plan.metrics)
    from rollout.warehouse.extract import extract_registry

    extract_registry(con, registry)
    sizes = cohorts.simulate(con, CohortRule(weekly_downloads_gt=100), D1)
    assert (sizes.packages, sizes.accounts, sizes.accounts_without_2fa) == (1, 1, 1)
    assert action_count(registry) == 0


def test_a_what_if_on_weekly_downloads_refuses_a_gap_in_the_weekly_window_as_a_build_does(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    # A what-if of a day whose weekly window the data does not cover counted every
    # package's weekly downloads short: no package above a weekly threshold, and a
    # release manager comparing a warn and a require threshold read zeros, exit 0.
    late = date(2022, 2, 10)  # the window runs to 2022-02-09; data ends 2022-02-07
    metrics.compute_metrics(con, late, small_cohorts_plan.metrics)
    extract_registry(con, registry)
    gap = (
        r"missing for 2 of the 7 days of 2022-02-10's weekly window "
        r"\(2022-02-03\.\.2022-02-09\): 2022-02-08\.\.2022-02-09\. Load it, or allow gaps"
    )
    weekly = CohortRule(weekly_downloads_gt=50)  # big: 20 a day over the 5 days loaded
    high_impact = small_cohorts_plan.model_copy(
        update={"phases": [small_cohorts_plan.phase("high-impact")]}
    )
    with pytest.raises(BadInput, match=gap):
        cohorts.simulate(con, weekly, late)
    with pytest.raises(BadInput, match=gap):
        simulate_plan(con, high_impact, late)  # its cohort counts weekly downloads
    # Allowed, it counts what there is; a rule on dependents alone has no weekly sums.
    assert cohorts.simulate(con, weekly, late, allow_gaps=True).packages == 1
    [what_if] = simulate_plan(con, high_impact, late, allow_gaps=True)
    assert what_if.phase == "high-impact"
    assert cohorts.simulate(con, CohortRule(top_by_dependents=1), late).packages == 1


def test_a_download_rule_over_a_longer_window_needs_every_day_of_it(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    # Downloads run from D1 - 30 to D2 - 1 (37 days): a 30-day window at D2 is covered,
    # a 60-day one is not.
    def plan_with(days: int) -> Plan:
        rule = CohortRule(downloads_gt=DownloadsOver(count=1000, days=days))
        return small_cohorts_plan.model_copy(
            update={"cohorts": {**small_cohorts_plan.cohorts, "top-1": rule}}
        )

    metrics.compute_metrics(con, D2, small_cohorts_plan.metrics)
    [built, _] = cohorts.build_cohorts(con, registry, plan_with(30), D2, actor="test")
    # big: 200 a day for 23 days and 20 a day for 7 (4,740); core 300; small 150.
    assert (built.cohort, built.packages) == ("top-1", 1)
    with pytest.raises(
        BadInput,
        match=r"sums downloads over the 60 days 2021-12-10\.\.2022-02-07, but only 37 of "
        r"them are loaded",
    ):
        cohorts.build_cohorts(con, registry, plan_with(60), D2, actor="test")
    assert cohorts.build_cohorts(con, registry, plan_with(60), D2, actor="test", allow_gaps=True)


def _land_capital_big(con: duckdb.DuckDBPyConnection, tmp_path: Path, *, daily: int) -> None:
    """Ingest the package Big (maintained by dave; npm's legacy capitals: not big) with
    ``daily`` downloads a day over the 37 days up to a week after D1."""
    landing = tmp_path / "more"
    (landing / "manifests").mkdir(parents=True)
    (landing / "downloads").mkdir()
    (landing / "manifests" / "manifests-big.jsonl").write_text(
        json.dumps({"name": "Big", "version": "1.0.0", "maintainers": ["dave"]}) + "\n"
    )
    write_downloads(landing / "downloads", D1 - timedelta(days=30), 37, {"Big": daily})
    report = ingest.ingest(
        con, [landing], quarantine_limit=0.01, landing_root=landing, now=datetime(2022, 3, 1)
    )
    assert report.rejected == []


def test_packages_whose_names_differ_in_capitals_count_their_own_downloads(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    tmp_path: Path,
) -> None:
    """npm's legacy names: Big is not big. Summed by lower-cased name, big was credited
    with Big's downloads too (and each row of the two matched twice)."""
    _land_capital_big(con, tmp_path, daily=1)

    def qualified(count: int) -> list[tuple[str, list[str]]]:
        rule = CohortRule(downloads_gt=DownloadsOver(count=count, days=30))
        build(con, registry, with_cohort(small_cohorts_plan, rule), D2)
        return con.execute(
            "select package, reasons from cohort_package_snapshots "
            "where cohort = 'top-1' and as_of = $day and qualifies_today order by package",
            {"day": D2},
        ).fetchall()

    # big: 4,740 in the 30 days (Big's 30 are its own): not over 4,740.
    assert qualified(4740) == []
    assert qualified(4739) == [
        ("big", ["4740 downloads in the 30 days before 2022-02-08 (more than 4739)"])
    ]


def test_names_differing_in_capitals_qualifying_the_same_day_are_one_cohort_entry(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    tmp_path: Path,
) -> None:
    """Big and big are two packages, each judged on its own downloads, and one entry of
    the cohort (keyed big, the maintainers of both its accounts): both qualifying on one
    day is one package qualifying and entering, as the cohort's own count says, not two."""
    _land_capital_big(con, tmp_path, daily=200)
    rule = CohortRule(downloads_gt=DownloadsOver(count=4739, days=30))
    built = build(con, registry, with_cohort(small_cohorts_plan, rule), D2)["top-1"]
    assert (built.packages, built.packages_qualifying_today) == (1, 1)
    assert built.packages_entered == ["Big"]
    assert con.execute(
        "select package, reasons from cohort_package_snapshots "
        "where cohort = 'top-1' and as_of = $day",
        {"day": D2},
    ).fetchall() == [
        (
            "Big",
            [
                "Big: 6000 downloads in the 30 days before 2022-02-08 (more than 4739)",
                "big: 4740 downloads in the 30 days before 2022-02-08 (more than 4739)",
            ],
        )
    ]
    # Its accounts: Big's maintainer and big's.
    assert "dave" in accounts_of(con, "top-1", D2)
    assert cohorts.simulate(con, rule, D2).packages == 1


def ingest_activity(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """alice published 3 days before D1, erin 40 days before; bob logged in 2 days
    before D1 and dave failed to, the day before."""
    landing = tmp_path / "activity"
    (landing / "publishes").mkdir(parents=True)
    (landing / "logins").mkdir()
    (landing / "publishes" / "publishes.csv").write_text(
        "occurred_at,package,username,via,token_kind,second_factor\n"
        f"{D1 - timedelta(days=3)}T10:00:00,big,alice,token,publish,none\n"
        f"{D1 - timedelta(days=40)}T10:00:00,small,erin,session,,totp\n"
    )
    (landing / "logins" / "logins.csv").write_text(
        "occurred_at,username,second_factor,outcome\n"
        f"{D1 - timedelta(days=2)}T09:00:00,bob,totp,success\n"
        f"{D1 - timedelta(days=1)}T09:00:00,dave,none,failed\n"
    )
    report = ingest.ingest(
        con, [landing], quarantine_limit=0.01, landing_root=landing, now=datetime(2022, 3, 1)
    )
    assert report.rejected == []


def with_cohort(plan: Plan, rule: CohortRule) -> Plan:
    return plan.model_copy(update={"cohorts": {**plan.cohorts, "top-1": rule}})


@pytest.mark.parametrize(
    ("active_by", "expected"),
    [(["published"], {"alice"}), (["published", "logged_in"], {"alice", "bob"})],
)
def test_only_accounts_active_lately_enter_a_cohort_that_asks_for_activity(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    tmp_path: Path,
    active_by: list[str],
    expected: set[str],
) -> None:
    ingest_activity(con, tmp_path)
    rule = CohortRule(every_maintainer=True, active_within=ActiveWithin(days=30, by=active_by))
    build(con, registry, with_cohort(small_cohorts_plan, rule), D1)
    # erin published, but 40 days ago; dave's login failed; carol did nothing.
    assert accounts_of(con, "top-1", D1).keys() == expected


def test_an_active_member_stays_once_idle_and_a_what_if_judges_afresh(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    tmp_path: Path,
) -> None:
    ingest_activity(con, tmp_path)
    rule = CohortRule(every_maintainer=True, active_within=ActiveWithin(days=5, by=["published"]))
    plan = with_cohort(small_cohorts_plan, rule)
    assert build(con, registry, plan, D1)["top-1"].accounts == 1
    # A week on, alice's publish is 10 days old: she stays, nobody joins, nobody leaves.
    later = build(con, registry, plan, D2)["top-1"]
    assert (later.accounts, later.accounts_entered, later.accounts_left) == (1, 0, 0)
    assert accounts_of(con, "top-1", D2).keys() == {"alice"}
    assert cohorts.simulate(con, rule, D2).accounts == 0


def test_a_cohort_of_org_members_takes_only_current_members(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    rule = CohortRule(every_maintainer=True, orgs=["corp"])
    build(con, registry, with_cohort(small_cohorts_plan, rule), D1)
    # carol publishes core through corp's team, erin maintains small in her own name;
    # dave left corp, alice and bob were never in it.
    assert accounts_of(con, "top-1", D1).keys() == {"carol", "erin"}


def test_a_build_naming_an_org_the_registry_does_not_have_is_refused_and_builds_nothing(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """A misspelt org (`Corp` for corp) gave the cohort none of corp's members, and its
    phases no one to warn, without a word: refused, naming the cohort and the name."""
    rule = CohortRule(every_maintainer=True, orgs=["Corp"])
    with pytest.raises(
        BadInput,
        match=r"cohort top-1: orgs names 'Corp' \(the registry has 'corp'\), which the "
        r"registry does not have.*nothing was built",
    ):
        build(con, registry, with_cohort(small_cohorts_plan, rule), D1)
    with registry.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(CohortMembership)).scalar() == 0
        assert connection.execute(select(func.count()).select_from(CohortPackage)).scalar() == 0


def test_a_cohort_is_fixed_from_its_phase_s_day_not_from_the_builds_before_it(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """high-impact's phase fixes it on D2, when big has dipped under the threshold. The
    daily build of D1 added big for good (sticky), and the phase then emailed and
    enforced its maintainer though it did not qualify on the phase's day. Before its
    day a cohort is left out of the daily build, and refused when named."""
    fixed_on_d2 = small_cohorts_plan.model_copy(
        update={
            "phases": [
                p.model_copy(update={"cohort_as_of": D2}) if p.cohort == "high-impact" else p
                for p in small_cohorts_plan.phases
            ]
        }
    )
    early = build(con, registry, fixed_on_d2, D1)
    assert "high-impact" not in early and "top-1" in early  # top-1: no phase fixes it
    with pytest.raises(
        BadInput, match=r"cohort high-impact is fixed from 2022-02-08 \(phase high-impact"
    ):
        cohorts.build_cohorts(con, registry, fixed_on_d2, D1, actor="test", cohorts=["high-impact"])
    on_its_day = build(con, registry, fixed_on_d2, D2)
    assert sorted(on_its_day["high-impact"].packages_entered) == ["core"]
    assert set(accounts_of(con, "high-impact", D2)) == {"bob", "carol"}


def ingest_registry_of(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, per_day: dict[str, int], days: int = 37
) -> None:
    """A registry of ``per_day``'s packages (maintained by erin), each downloaded that
    many times a day on the ``days`` days before D2."""
    landing = tmp_path / "registry-of"
    (landing / "manifests").mkdir(parents=True)
    (landing / "downloads").mkdir()
    (landing / "manifests" / "manifests-many.jsonl").write_text(
        "".join(
            json.dumps({"name": name, "version": "1.0.0", "maintainers": ["erin"]}) + "\n"
            for name in per_day
        )
    )
    write_downloads(landing / "downloads", D2 - timedelta(days=days), days, per_day)
    report = ingest.ingest(
        con, [landing], quarantine_limit=0.01, landing_root=landing, now=datetime(2022, 3, 1)
    )
    assert report.rejected == []


def test_a_top_share_is_that_share_of_the_packages_however_the_share_is_written(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    tmp_path: Path,
) -> None:
    """100 packages with metrics (the 6 of MANIFESTS and 94 more, each downloaded a
    different number of times, more than those 6): the top 7% is 7 packages, the top
    14% is 14. In binary floating point 0.07 * 100 is 7.000000000000001, and its
    ceiling put an eighth package in (a fifteenth for 14%)."""
    ingest_registry_of(con, tmp_path, {f"pkg{i:02d}": 1000 + i for i in range(94)})
    metrics.compute_metrics(con, D2, small_cohorts_plan.metrics)
    assert con.execute(
        "select count(*) from package_metrics_daily where as_of = $d", {"d": D2}
    ).fetchone() == (100,)
    extract_registry(con, registry)
    for share, count in ((0.07, 7), (0.14, 14), (0.29, 29), (0.57, 57), (0.5, 50)):
        rule = CohortRule(top_share_by_downloads=TopShare(share=share, days=30))
        assert cohorts.simulate(con, rule, D2).packages == count, share


def test_a_package_with_no_downloads_or_no_dependents_is_never_top_by_them(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """Of MANIFESTS' 6 packages only big, core and small were downloaded, and only core
    has dependents. The top 60% by downloads cut at rank 4, where app0..app2 tie at no
    downloads: all three came in (ties at the cut are in), so a top share took every
    package of a registry where most had none. The top 2 by dependents took app0, first
    by name of the five with none."""
    metrics.compute_metrics(con, D2, small_cohorts_plan.metrics)
    extract_registry(con, registry)

    def qualified(rule: CohortRule) -> list[str]:
        with cohorts.selecting(con, rule, D2):
            return [
                key
                for (key,) in con.execute(
                    "select package_key from selected_packages order by 1"
                ).fetchall()
            ]

    by_share = CohortRule(top_share_by_downloads=TopShare(share=0.6, days=30))
    assert qualified(by_share) == ["big", "core", "small"]
    everything = CohortRule(top_share_by_downloads=TopShare(share=1.0, days=30))
    assert qualified(everything) == ["big", "core", "small"]
    assert qualified(CohortRule(top_by_dependents=2)) == ["core"]
    assert qualified(CohortRule(top_by_dependents=1)) == ["core"]


def test_a_backfilled_day_counts_the_packages_it_had_not_those_that_came_later(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
    tmp_path: Path,
) -> None:
    """new is downloaded 500 times a day from D1 on: high-impact from D2. Built again
    for D1 after D2, high-impact had 2 packages then (big, core), as its snapshot says;
    the build said 3, counting new, which entered on D2."""
    ingest_registry_of(con, tmp_path, {"new": 500}, days=7)
    assert build(con, registry, small_cohorts_plan, D1)["high-impact"].packages == 2
    assert build(con, registry, small_cohorts_plan, D2)["high-impact"].packages == 3
    again = build(con, registry, small_cohorts_plan, D1)["high-impact"]
    snapshot = con.execute(
        "select count(*) from cohort_package_snapshots where cohort = 'high-impact' and as_of = $d",
        {"d": D1},
    ).fetchone()
    assert (again.packages, snapshot) == (2, (2,))


def test_a_release_preview_counts_who_leaves_once_their_other_packages_are_released(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """erin maintains small and app0..app2, all in a cohort of every maintainer. With
    the three apps released (no build since), releasing small takes her out at the next
    build: the preview said nobody would leave, reading her packages as of the last
    build, apps and all."""
    plan = with_cohort(small_cohorts_plan, CohortRule(every_maintainer=True))
    build(con, registry, plan, D1)
    assert "0 accounts are in top-1 only through it" in cohorts.release_preview(
        registry, "top-1", "app0"
    )
    for app in ("app0", "app1", "app2"):
        cohorts.release_package(registry, "top-1", app, reason="test", actor="rm")
    preview = cohorts.release_preview(registry, "top-1", "small")
    assert "1 account is in top-1 only through it" in preview
    cohorts.release_package(registry, "top-1", "small", reason="test", actor="rm")
    assert build(con, registry, plan, D2)["top-1"].accounts_left == 1


def test_a_release_preview_does_not_count_a_member_who_has_left_the_cohort(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """erin is in top-1 only through small once app0..app2 are released, but she has
    left the cohort since: releasing small takes nobody out at the next build. Her
    membership row stays (its left_on set); counted, the preview would say she leaves
    again."""
    plan = with_cohort(small_cohorts_plan, CohortRule(every_maintainer=True))
    build(con, registry, plan, D1)
    for app in ("app0", "app1", "app2"):
        cohorts.release_package(registry, "top-1", app, reason="test", actor="rm")
    assert "1 account is in top-1 only through it" in cohorts.release_preview(
        registry, "top-1", "small"
    )
    with registry.engine.begin() as connection:
        connection.execute(
            update(CohortMembership)
            .where(CohortMembership.account_id == people["erin"])
            .values(left_on=D2)
        )
    assert "0 accounts are in top-1 only through it" in cohorts.release_preview(
        registry, "top-1", "small"
    )


def test_a_day_after_today_is_refused_by_the_library_until_midnight_utc(
    con: duckdb.DuckDBPyConnection, registry: Registry, plan: Plan, tmp_path: Path
) -> None:
    """Metrics, cohorts and the report of a day not come are refused wherever they are
    asked for (the CLI, a flow run's as_of, a script): it has no data yet, and its
    metrics would stand as the latest day. From its midnight (UTC) on, it is today."""
    day = date(2022, 2, 1)
    clock = SimulatedClock(datetime(2022, 1, 31, 23, 59, 59))
    refused = r"^as_of: 2022-02-01 is after today \(2022-01-31, UTC\): it has no data yet$"
    with use_clock(clock):
        with pytest.raises(BadInput, match=refused):
            metrics.compute_metrics(con, day, plan.metrics)
        with pytest.raises(BadInput, match=refused):
            cohorts.build_cohorts(con, registry, plan, day, actor="test")
        with pytest.raises(BadInput, match=refused):
            report_from_registry(con, registry, plan, day, tmp_path / "reports")
        assert con.execute("select count(*) from package_metrics_daily").fetchone() == (0,)
        assert con.execute("select count(*) from metrics_runs").fetchone() == (0,)
        assert not (tmp_path / "reports").exists()
        clock.move_to(datetime(2022, 2, 1, 0, 0))
        assert metrics.compute_metrics(con, day, plan.metrics).as_of == day


def test_a_cohort_whose_packages_are_all_released_reads_as_empty(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """Every package of high-impact released and none qualifying on D2: the build writes
    no row, and the analyst views showed D1's accounts and packages as its latest."""
    build(con, registry, small_cohorts_plan, D1)
    packages = [
        row[0]
        for row in con.execute(
            "select package from cohort_packages where cohort = 'high-impact'"
        ).fetchall()
    ]
    assert packages and accounts_of(con, "high-impact", D1)
    for package in packages:
        cohorts.release_package(registry, "high-impact", package, reason="mistake", actor="rm")
    build(con, registry, small_cohorts_plan, D2)
    for view in ("cohort_accounts", "cohort_packages"):
        rows = con.execute(f"select as_of from {view} where cohort = 'high-impact'").fetchall()
        assert rows == [], view
    assert cohorts.latest_build(con, "high-impact") == D2
    assert cohorts.snapshot_exists(con, D2, "high-impact")
    # The other cohort's day is its own.
    assert con.execute("select distinct as_of from cohort_accounts").fetchall() == [(D2,)]


def test_a_tiny_top_share_reads_as_people_write_it_in_the_reasons(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """The top 0.0001% of the 6 packages is the first one: its reason said "top 0.0%"
    (the share rounded to 4 places), and "top 1.0%" for 0.01."""
    plan = small_cohorts_plan.model_copy(
        update={
            "cohorts": {
                "top-1": CohortRule(top_share_by_downloads=TopShare(share=1e-06, days=7)),
                "high-impact": CohortRule(top_share_by_downloads=TopShare(share=0.01, days=7)),
            }
        }
    )
    build(con, registry, plan, D2)
    reasons = con.execute(
        "select cohort, package, reasons from cohort_packages order by cohort"
    ).fetchall()
    assert reasons == [
        ("high-impact", "big", ["top 1% by downloads over 7 days (rank 1 of 6, 140 downloads)"]),
        ("top-1", "big", ["top 0.0001% by downloads over 7 days (rank 1 of 6, 140 downloads)"]),
    ]


def test_the_daily_cohort_step_goes_beside_a_phase_run_and_is_refused_by_a_cohorts_run(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """docs/runbook-operator.md ("The daily run and the run locks"): a phase run (the
    enforce lock, held while it enforces) does not hold the daily build off; another
    cohorts run (a release manager's `cohorts release` or `cohorts build`) refuses it at
    once, nothing written, and the daily run fails in one line (not retried)."""
    with Registry(registry.url) as release_manager, release_manager.lock("enforce"):
        assert build(con, registry, small_cohorts_plan, D1)["high-impact"].accounts_entered
    before = action_count(registry)
    with (
        Registry(registry.url) as release_manager,
        release_manager.lock("cohorts"),
        pytest.raises(GuardRefused, match="another cohorts run") as refused,
    ):
        build(con, registry, small_cohorts_plan, D2)
    assert refused.value.exit_code == 3
    assert action_count(registry) == before
    assert "high-impact" in build(con, registry, small_cohorts_plan, D2)  # once it has gone


def test_a_cohort_a_phase_requires_a_security_key_of_counts_its_accounts_short_of_one(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    """high-impact's phase requires a security key (two_factor: phishing_resistant): of
    alice (no 2FA), bob (TOTP) and carol (a key and TOTP), one is without 2FA but two
    fall short, as the phase and the report count them. The build says both, each
    named; top-1, asked any 2FA, has no such count."""
    plan = small_cohorts_plan.model_copy(
        update={
            "phases": [
                phase.model_copy(
                    update={
                        "requires": phase.requires.model_copy(
                            update={"two_factor": "phishing_resistant"}
                        )
                    }
                )
                if phase.cohort == "high-impact"
                else phase
                for phase in small_cohorts_plan.phases
            ]
        }
    )
    results = build(con, registry, plan, D1)
    wide = results["high-impact"].summary()
    assert (wide["without_2fa"], wide["short_of_a_security_key"]) == (1, 2)
    assert results["top-1"].summary()["short_of_a_security_key"] is None
    assert ("short of a security key", 2) in labelled_rows(results["high-impact"])


def test_a_plan_requiring_no_security_key_builds_cohorts_said_as_before(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    small_cohorts_plan: Plan,
    people: dict[str, int],
) -> None:
    results = build(con, registry, small_cohorts_plan, D1)
    assert "short_of_a_security_key" not in results["high-impact"].summary()

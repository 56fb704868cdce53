"""An account's stays in a cohort, as the adoption marts read them
(sql/intermediate/int_memberships_known), after cohort builds through the real writer
(rollout.cohorts._update_memberships), on SQLite and PostgreSQL: leaving and coming
back, a day built again (the last build of a day decides), and a backfill."""

from __future__ import annotations

from datetime import date, datetime

import duckdb
import pyarrow as pa
import pytest
from sqlalchemy import select

from rollout import cohorts, warehouse
from rollout.registry import Registry, ledger
from rollout.registry.models import Action, CohortMembership
from tests.factories import AccountFactory

FEB = {n: date(2022, 2, n) for n in range(1, 29)}


class Builds:
    """Cohort c built on a day, at a time of the wall clock (the ledger's created_at)."""

    def __init__(self, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
        self.registry = registry
        self.now = datetime(2022, 2, 1)
        monkeypatch.setattr(ledger, "utc_now", lambda: self.now)

    def build(self, day: date, hour: int, *account_ids: int, at: date | None = None) -> None:
        self.now = datetime.combine(at or day, datetime.min.time()).replace(hour=hour)
        with self.registry.engine.begin() as connection:
            run = ledger.start_run(
                connection, plan="p", step=f"cohorts {day}", mode="apply", actor="t", parameters={}
            )
        today = pa.table(
            {
                "account_id": pa.array(account_ids, pa.int64()),
                "packages": pa.array([["pkg"]] * len(account_ids), pa.list_(pa.string())),
            }
        )
        cohorts._update_memberships(self.registry.engine, "c", day, today, run, "t")

    def stays(self, as_of: date) -> list[tuple[int, date, date | None]]:
        """(account, first day, left) of each stay known on ``as_of``."""
        con = duckdb.connect()
        con.execute("create schema registry")
        con.execute(
            "create table registry.cohort_memberships "
            "(cohort varchar, account_id bigint, first_qualified_on date, left_on date)"
        )
        con.execute(
            "create table registry.actions (id bigint, effect_key varchar, action varchar, "
            "account_id bigint, phase varchar, created_at timestamp)"
        )
        m, a = CohortMembership, Action
        with self.registry.engine.connect() as connection:
            memberships = connection.execute(
                select(m.cohort, m.account_id, m.first_qualified_on, m.left_on)
            ).all()
            actions = connection.execute(
                select(a.id, a.effect_key, a.action, a.account_id, a.phase, a.created_at)
            ).all()
        con.executemany("insert into registry.cohort_memberships values (?, ?, ?, ?)", memberships)
        con.executemany("insert into registry.actions values (?, ?, ?, ?, ?, ?)", actions)
        query = warehouse.render("intermediate/int_memberships_known")
        return con.execute(
            f"select account_id, first_qualified_on, left_on from ({query}) order by all",
            {"as_of": as_of},
        ).fetchall()


@pytest.fixture
def builds(registry: Registry, factories: None, monkeypatch: pytest.MonkeyPatch) -> Builds:
    return Builds(registry, monkeypatch)


def test_a_day_built_again_that_brings_an_account_back_undoes_its_departure(
    builds: Builds,
) -> None:
    a, b = AccountFactory().id, AccountFactory().id
    builds.build(FEB[1], 3, a, b)
    builds.build(FEB[3], 3, b)  # a missing from day 3's data
    builds.build(FEB[3], 9, a, b)  # day 3 built again once the data is fixed
    assert builds.stays(FEB[20]) == [(a, FEB[1], None), (b, FEB[1], None)]


def test_a_first_day_built_again_without_the_account_leaves_it_out_until_it_comes(
    builds: Builds,
) -> None:
    a, b = AccountFactory().id, AccountFactory().id
    builds.build(FEB[1], 3, a, b)
    builds.build(FEB[1], 9, b)  # day 1 built again: a was not in after all
    builds.build(FEB[5], 3, a, b)
    assert builds.stays(FEB[20]) == [
        (a, FEB[1], FEB[1]),  # empty: never in on day 1
        (a, FEB[5], None),
        (b, FEB[1], None),
    ]


def test_leaving_and_coming_back_and_a_backfill_give_each_stay(builds: Builds) -> None:
    a, b = AccountFactory().id, AccountFactory().id
    for day, ids in ((5, (a, b)), (7, (b,)), (9, (a, b)), (11, (b,)), (13, (a, b))):
        builds.build(FEB[day], 3, *ids)
    builds.build(FEB[2], 3, a, b, at=FEB[14])  # a backfill moves the first day earlier
    builds.build(FEB[8], 3, b, at=FEB[14])  # a backfill of a day a was out: no change
    assert builds.stays(FEB[20]) == [
        (a, FEB[2], FEB[7]),
        (a, FEB[9], FEB[11]),
        (a, FEB[13], None),
        (b, FEB[2], None),
    ]
    assert builds.stays(FEB[10]) == [(a, FEB[2], FEB[7]), (a, FEB[9], None), (b, FEB[2], None)]

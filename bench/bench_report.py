"""Benchmark: the adoption report job at npm scale (issue 6), against the 15 s target.

Usage:
    python bench/bench_report.py [--registry bench/out/npm/registry.db] \\
        [--landing bench/out/npm/landing] [--work bench/out/report] \\
        [--as-of 2022-05-10] [--runs 3] [--skip-setup]

What is measured is ``rollout.report.reporting.report_from_registry`` (the registry extract,
the adoption marts rebuilt, the HTML/Markdown/CSV files written), each run in a
child process of its own so its peak memory is its own; its three parts are timed
inside the same call (``extract_registry``, ``build_adoption``, ``build_report``,
and within the last: the context, the two renders, the CSVs).

The setup before it is not measured. The npm sample (bench/bench_sample.py; made
here when missing) has no cohorts, emails, enforcement or brown-outs, so the setup
plays the reference plan over a simulated calendar (``rollout.core.clock``) on copies
(``--work``, git-ignored; the sample itself is never changed):

- the registry copied and upgraded to this rollout's schema; a fresh warehouse
  ingested from the sample's landing files;
- real cohorts: ``compute_metrics`` and ``build_cohorts`` on each phase's
  ``cohort_as_of`` day, or on the last day the downloads' weekly window covers when
  that day is later (high-impact: 2022-02-01, not 2022-03-14: the sample's downloads
  end 2022-01-31);
- the plan's own jobs, each on its day: ``brownouts.schedule``, every mailing
  through ``queue_due`` (notices, reminders, brown-out heads-ups to every
  account without 2FA, the ELV heads-up), ``enforce_phase`` for both phases,
  ``brownouts.enroll_all``;
- synthesized (set-based or vectorised, seeded): the outbox drain (queued rows
  marked sent in one UPDATE, instead of 5M emails through SendGrid), and what
  maintainers do from 2022-02-01 on, at ``rollout.demo.story.Responses`` rates: logins
  (with the ELV challenge a brown-out or ELV for all makes), 2FA enrolments after
  notices, reminders, challenges and enforcement, organic enrolment at the sample's
  January rate. The logins go to an extra landing file, ingested like any other.

``--skip-setup`` measures again on the work folder as the last setup left it.

Checked after the runs (not timed), exiting non-zero with the reasons otherwise: every
run extracted the same rows, built the same mart rows and wrote the same files; the
rows extracted of each table are the registry's; ``adoption_daily`` has one row per
day and population; and its as-of day, recounted straight from the registry with
SQLite (accounts created by then; cohort members by their qualified and left days;
accounts with a TOTP or WebAuthn factor created by the day's end and not removed by
then, WebAuthn counting as the strongest; first-ever factors that day), agrees for
every population.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_plan import fitted_plan
from peak import children_peak_mib, own_peak_mib
from registry_copy import copy_registry

ROOT = Path(__file__).resolve().parents[1]
ACTOR = "bench"
US = 1_000_000
DAY_US = 86_400 * US
SECOND_FACTORS = ["none", "elv", "totp", "webauthn"]
OUTCOMES = ["success", "failed", "abandoned"]
BENCH_LOGINS = "logins-bench.parquet"


def at(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute)


def us(moment: datetime | date) -> int:
    if not isinstance(moment, datetime):
        moment = at(moment)
    return int(np.datetime64(moment, "us").astype(np.int64))


def calendar(start: date, end: date) -> Iterator[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


def registry_times(values: np.ndarray) -> list[str]:
    """Microseconds since the epoch as the registry stores times (SQLAlchemy's format)."""
    text = np.datetime_as_string(values.astype("datetime64[us]"), unit="us")
    return [t.replace("T", " ") for t in text]


# --- setup: copies, warehouse, cohorts -----------------------------------------------------


def ensure_sample(registry: Path, landing: Path) -> None:
    if registry.exists() and (landing / "logins").is_dir():
        return
    from rollout.demo.sample import generate_sample
    from rollout.registry import Registry

    print(f"no npm sample at {registry}: generating it (about 85 s, 4.2 GB peak)")
    generate_sample("npm", 1, registry=Registry(f"sqlite:///{registry}"), landing_dir=landing)


def cohort_days(plan: Any, last_download_day: date) -> dict[date, list[str]]:
    """Each phase's cohort is built on its ``cohort_as_of``, or, when the downloads end
    before that, on the last day whose weekly window they cover."""
    days: dict[date, list[str]] = {}
    for phase in plan.phases:
        day = min(phase.cohort_as_of, last_download_day + timedelta(days=1))
        days.setdefault(day, []).append(phase.cohort)
    return days


# --- setup: what maintainers do (synthesized, vectorised) ----------------------------------


class People:
    """Every account as arrays: 2FA method, activity, enforcement, kept in step with
    what the setup writes to the registry."""

    def __init__(self, database: Path, active_since: datetime) -> None:
        with sqlite3.connect(database) as c:
            rows = c.execute(
                "select id, username, last_login_at >= ? from accounts order by id",
                (registry_times(np.array([us(active_since)]))[0],),
            ).fetchall()
            methods = c.execute(
                "select account_id, max(case kind when 'webauthn' then 2 else 1 end) "
                "from tfa_factors where removed_at is null group by account_id"
            ).fetchall()
        self.database = database
        self.ids = np.array([r[0] for r in rows], np.int64)
        self.usernames = pa.array([r[1] for r in rows], pa.string())
        self.active = np.array([bool(r[2]) for r in rows])
        self.method = np.zeros(len(self.ids), np.int8)
        if methods:
            who, kind = zip(*methods, strict=True)
            self.method[self.positions(np.array(who))] = np.array(kind, np.int8)
        self.required_at = np.full(len(self.ids), np.iinfo(np.int64).max, np.int64)

    def positions(self, account_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, account_ids)

    def refresh_required(self) -> None:
        with sqlite3.connect(self.database) as c:
            rows = c.execute(
                "select id, tfa_required_at from accounts where tfa_required_at is not null"
            ).fetchall()
        if rows:
            who, when = zip(*rows, strict=True)
            moments = np.array([w.replace(" ", "T") for w in when], "datetime64[us]")
            self.required_at[self.positions(np.array(who))] = moments.astype(np.int64)


class Simulation:
    """The plan's calendar, day by day: the real jobs at their hours under a simulated
    clock; email delivery and what maintainers do synthesized."""

    def __init__(self, url: str, database: Path, con: Any, plan: Any, seed: int) -> None:
        from rollout.core.clock import SimulatedClock
        from rollout.demo.story import Responses
        from rollout.registry import Registry

        self.url, self.database, self.con, self.plan = url, database, con, plan
        self.registry = Registry(url)  # the run's, closed when it ends (run)
        self.rng = np.random.default_rng(seed)
        self.responses = Responses()
        self.clock = SimulatedClock(datetime(2000, 1, 1))
        self.sent_phase_emails: dict[date, tuple[np.ndarray, np.ndarray]] = {}
        self.enrolled: Counter[str] = Counter()
        self.logins: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.milestones: list[str] = []
        self.windows = [(us(b.starts_at), us(b.ends_at)) for b in plan.brownouts]

    def move(self, day: date, hour: int, minute: int = 0) -> None:
        self.clock.move_to(max(self.clock(), at(day, hour, minute)))

    def note(self, day: date, what: str) -> None:
        self.milestones.append(f"{day} {what}")
        print(f"  {day} {what}", flush=True)

    # The plan's jobs, as the deployments run them.

    def drain(self, day: date, hour: int) -> int:
        """The outbox drain, synthesized: every queued email sent within the hour."""
        start = registry_times(np.array([us(at(day, hour))]))[0]
        sent_at = "strftime('%Y-%m-%d %H:%M:%S', ?, '+' || (id % 3600) || ' seconds') || '.000000'"
        with sqlite3.connect(self.database) as c:
            changed = c.execute(
                f"update notifications set state = 'sent', attempts = attempts + 1, "
                f"sent_at = {sent_at}, updated_at = {sent_at}, message_id = 'bench-' || id "
                "where state = 'queued'",
                (start, start),
            ).rowcount
            phase_emails = c.execute(
                "select account_id, email = 'reminder' from notifications "
                "where email in ('phase_notice', 'reminder') and state = 'sent' "
                "and sent_at >= ? and sent_at < ?",
                (start, registry_times(np.array([us(at(day, hour + 1))]))[0]),
            ).fetchall()
        if phase_emails:
            who, reminder = zip(*phase_emails, strict=True)
            self.sent_phase_emails[day] = (
                self.people.positions(np.array(who)),
                np.array(reminder, bool),
            )
        return changed

    def jobs(self, day: date, builds: dict[date, list[str]], due: set[date]) -> None:
        from rollout import cohorts, metrics
        from rollout.notify.queue import queue_due
        from rollout.phases import brownouts, enforce

        self.move(day, 0)
        if day == self.plan.elv.enroll_all_on:
            enrolled = brownouts.enroll_all(self.registry, self.plan, actor=ACTOR)
            self.note(day, f"ELV for all: {enrolled:,} accounts")
        self.move(day, 2, 30)
        if day in builds:
            metrics.compute_metrics(self.con, day, self.plan.metrics)
            for r in cohorts.build_cohorts(
                self.con,
                self.registry,
                self.plan,
                day,
                actor=ACTOR,
                cohorts=builds[day],
                allow_gaps=True,
            ):
                self.note(
                    day,
                    f"cohort {r.cohort}: {r.packages:,} packages, {r.accounts:,} accounts, "
                    f"{r.accounts_without_2fa:,} without 2FA",
                )
        self.move(day, 9)
        if day in due:
            for o in queue_due(self.registry, self.plan, day, actor=ACTOR):
                if o.added:
                    self.note(day, f"{o.occasion.step}: {o.added:,} emails queued or skipped")
            self.note(day, f"drain: {self.drain(day, 9):,} emails sent")
        self.move(day, 10)
        for phase in self.plan.phases:
            if phase.enforce_on != day:
                continue
            expect = enforce.preview_phase(self.registry, self.plan, phase).count
            result = enforce.enforce_phase(
                self.registry, self.plan, phase.name, expect=expect, actor=ACTOR
            )
            self.note(
                day,
                f"phase {phase.name} enforced: {result.accounts_flagged:,} accounts, "
                f"{result.sessions_revoked:,} sessions revoked",
            )
            self.drain(day, 10)
            self.people.refresh_required()

    # What maintainers do.

    def enrol(self, positions: np.ndarray, moments: np.ndarray, cause: str) -> np.ndarray:
        kinds = np.where(self.rng.random(len(positions)) < self.responses.webauthn_share, 2, 1)
        self.people.method[positions] = kinds
        self.new_factors.append((positions, kinds, moments))
        self.enrolled[cause] += len(positions)
        return kinds

    def respond(self, day: date, logins_from: date, organic_per_day: float) -> None:
        p, r, rng = self.people, self.responses, self.rng
        self.new_factors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        midnight = us(day)
        if day >= logins_from:
            # Organic adoption, at the sample's own recent rate.
            without = np.flatnonzero(p.method == 0)
            who = rng.choice(
                without, min(rng.poisson(organic_per_day), len(without)), replace=False
            )
            self.enrol(who, midnight + rng.integers(0, DAY_US, len(who)), "organic")
            # Logins through the day, each meeting what the registry asks of it then.
            chance = np.where(p.active, r.login_active, r.login_dormant)
            who = np.flatnonzero(rng.random(len(p.ids)) < chance)
            when = midnight + rng.integers(6 * 3600, 23 * 3600, len(who)) * US
            method = p.method[who].astype(np.int64)
            factor = np.where(method == 2, 3, 2)
            second = np.where(method > 0, factor, 0)
            outcome = np.zeros(len(who), np.int64)
            required = (method == 0) & (p.required_at[who] <= when)
            forced = required & (rng.random(len(who)) < r.at_forced_setup)
            kinds = self.enrol(who[forced], when[forced], "enforcement")
            second[forced] = np.where(kinds == 2, 3, 2)
            outcome[required & ~forced] = 2  # told to set up 2FA, went away
            in_window = np.zeros(len(who), bool)
            for starts, ends in self.windows:
                in_window |= (when >= starts) & (when < ends)
            elv_for_all = day >= self.plan.elv.enroll_all_on
            challenged = (method == 0) & ~required & (in_window | elv_for_all)
            second[challenged] = 1
            outcome[challenged] = rng.choice(3, challenged.sum(), p=list(r.elv_outcomes))
            odds = np.where(in_window, r.after_challenge, r.after_challenge / 6)
            converts = challenged & (rng.random(len(who)) < odds)
            for cause, where in (
                ("after a brown-out challenge", converts & in_window),
                ("after an ELV challenge", converts & ~in_window),
            ):
                self.enrol(who[where], when[where] + 5 * 60 * US, cause)
            self.logins.append((who, when, second, outcome))
        # Emails read during the day: notices of the last 14 days, reminders of the last 3.
        notified, reminded = [], []
        for sent_on, (positions, is_reminder) in self.sent_phase_emails.items():
            age = (day - sent_on).days
            if 0 <= age <= 14:
                notified.append(positions[~is_reminder])
            if 0 <= age <= 3:
                reminded.append(positions[is_reminder])
        recent_reminder = np.unique(np.concatenate(reminded)) if reminded else np.array([], int)
        recent = np.unique(np.concatenate([*notified, recent_reminder]))
        recent = recent[p.method[recent] == 0]
        was_reminded = np.isin(recent, recent_reminder)
        odds = np.where(was_reminded, r.after_reminder, r.after_notice)
        reads = rng.random(len(recent)) < odds
        hours = rng.integers(10 * 3600, 22 * 3600, len(recent)) * US
        for cause, chosen in (
            ("after a reminder", was_reminded),
            ("after a notice", ~was_reminded),
        ):
            pick = reads & chosen
            self.enrol(recent[pick], midnight + hours[pick], cause)
        self.write_factors()

    def write_factors(self) -> None:
        if not self.new_factors:
            return
        positions = np.concatenate([f[0] for f in self.new_factors])
        kinds = np.concatenate([f[1] for f in self.new_factors])
        moments = np.concatenate([f[2] for f in self.new_factors])
        if not len(positions):
            return
        rows = zip(
            self.people.ids[positions].tolist(),
            np.where(kinds == 2, "webauthn", "totp").tolist(),
            registry_times(moments),
            strict=True,
        )
        with sqlite3.connect(self.database) as c:
            c.executemany(
                "insert into tfa_factors (account_id, kind, created_at) values (?, ?, ?)", rows
            )

    def write_logins(self, path: Path) -> int:
        who = np.concatenate([x[0] for x in self.logins])
        when = np.concatenate([x[1] for x in self.logins])
        second = np.concatenate([x[2] for x in self.logins])
        outcome = np.concatenate([x[3] for x in self.logins])
        order = np.lexsort((who, when))
        table = pa.table(
            {
                "occurred_at": pa.array(
                    when[order].astype("datetime64[us]"), pa.timestamp("us", tz="UTC")
                ),
                "username": self.people.usernames.take(pa.array(who[order])),
                "second_factor": pa.array(np.array(SECOND_FACTORS)[second[order]]),
                "outcome": pa.array(np.array(OUTCOMES)[outcome[order]]),
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return table.num_rows

    def run(self, start: date, end: date, logins_from: date) -> None:
        from rollout.core.clock import use_clock
        from rollout.notify.queue import plan_occasions
        from rollout.phases import brownouts

        last_download_day = logins_from - timedelta(days=1)
        builds = cohort_days(self.plan, last_download_day)
        due = {o.due_on for o in plan_occasions(self.plan)}
        self.people = People(self.database, at(logins_from) - timedelta(days=90))
        with sqlite3.connect(self.database) as c:
            recent = c.execute(
                "select count(*) from tfa_factors where created_at >= ?",
                (registry_times(np.array([us(logins_from - timedelta(days=28))]))[0],),
            ).fetchone()[0]
        organic_per_day = recent / 28
        with use_clock(self.clock), self.registry:
            self.move(start, 1)
            brownouts.schedule(self.registry, self.plan, actor=ACTOR)
            for day in calendar(start, end):
                self.jobs(day, builds, due)
                self.move(day, 11)
                self.respond(day, logins_from, organic_per_day)


def setup(args: argparse.Namespace) -> dict[str, Any]:
    from rollout import warehouse
    from rollout.warehouse import ingest

    started = time.perf_counter()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    ensure_sample(args.registry, args.landing)
    url = copy_registry(args.registry, work)
    print(f"registry copied to {work / 'registry.db'} and upgraded", flush=True)
    for stale in ("warehouse.duckdb", "warehouse.duckdb.wal"):
        (work / stale).unlink(missing_ok=True)
    shutil.rmtree(work / "landing", ignore_errors=True)
    shutil.rmtree(work / "reports", ignore_errors=True)
    with warehouse.open_warehouse(work / "warehouse.duckdb") as con:
        report = ingest.ingest(
            con, [args.landing], quarantine_limit=0.01, landing_root=args.landing
        )
        print(f"ingested {report.loaded} landing files, {report.rows_loaded:,} rows", flush=True)
        last_download_day = warehouse.scalar(con, "select max(day) from stg_downloads")
        plan = fitted_plan(last_download_day + timedelta(days=1))
        first_day = min(p.cohort_as_of for p in plan.phases)
        sim = Simulation(url, work / "registry.db", con, plan, args.seed)
        sim.run(first_day, args.as_of, last_download_day + timedelta(days=1))
        path = work / "landing" / "logins" / BENCH_LOGINS
        logins = sim.write_logins(path)
        ingest.ingest(con, [path], quarantine_limit=0.01, landing_root=work / "landing")
        login_days = warehouse.one(con, "select min(day), max(day), count(*) from stg_logins")
    with sqlite3.connect(work / "registry.db") as c:
        counts = {
            table: c.execute(f"select count(*) from {table}").fetchone()[0]
            for table in (
                "accounts",
                "tfa_factors",
                "cohort_memberships",
                "notifications",
                "actions",
                "brownout_windows",
                "web_sessions",
            )
        }
        notifications = c.execute(
            "select email, state, count(*) from notifications group by 1, 2 order by 1, 2"
        ).fetchall()
        actions = c.execute("select action, count(*) from actions group by 1 order by 1").fetchall()
        cohorts = c.execute(
            "select cohort, count(*) from cohort_memberships group by 1 order by 1"
        ).fetchall()
    return {
        "seconds": time.perf_counter() - started,
        "registry": counts,
        "cohorts": cohorts,
        "notifications": notifications,
        "actions": actions,
        "enrolled": dict(sim.enrolled),
        "bench_logins": logins,
        "logins": login_days,
        "peak_mib": own_peak_mib(),
    }


# --- the measured job ----------------------------------------------------------------------


def measure(work: Path, as_of: date) -> dict[str, Any]:
    """One report job, as the report flow runs it, with its parts timed inside it."""
    from rollout import warehouse
    from rollout.registry import Registry
    from rollout.report import adoption, reporting
    from rollout.warehouse import extract

    seconds: Counter[str] = Counter()
    results: dict[str, Any] = {}

    def timed(module: Any, name: str) -> None:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                results[name] = original(*args, **kwargs)
                return results[name]
            finally:
                seconds[name] += time.perf_counter() - started

        setattr(module, name, wrapper)

    # report_from_registry imports the first two at call time, and calls the others by
    # their module-level names: patched, they time the real job's own steps.
    timed(extract, "extract_registry")
    timed(adoption, "build_adoption")
    for name in ("build_report", "build_context", "render_html", "render_markdown"):
        timed(reporting, name)
    opening = time.perf_counter()
    with (
        Registry(f"sqlite:///{work / 'registry.db'}") as registry,
        warehouse.open_warehouse(work / "warehouse.duckdb") as con,
    ):
        opened = time.perf_counter() - opening
        # The plan the setup played: fitted to the sample's last download day.
        plan = fitted_plan(warehouse.scalar(con, "select max(day) + 1 from stg_downloads"))
        started = time.perf_counter()
        files = reporting.report_from_registry(con, registry, plan, as_of, work / "reports")
        total = time.perf_counter() - started
    return {
        "total": total,
        "open_warehouse": opened,
        "seconds": dict(seconds),
        "extracted": results["extract_registry"],
        "marts": results["build_adoption"].rows,
        "files": {path.name: path.stat().st_size for path in files.paths},
        "peak_mib": own_peak_mib(),
        # The largest SQLite exporter's, or this process's size when it started them.
        "exporter_peak_mib": children_peak_mib(),
    }


ADOPTION_ON_DAY = """
with active as (
    select account_id, max(kind = 'webauthn') as webauthn
    from tfa_factors
    where kind in ('totp', 'webauthn') and created_at < :next
        and (removed_at is null or removed_at >= :next)
    group by account_id
),
first_factors as (
    select account_id, min(created_at) as first_at from tfa_factors group by account_id
),
populations as (
    select 'all' as population, id as account_id from accounts where created_at < :next
    union all
    select 'cohort:' || cohort, account_id from cohort_memberships
    where first_qualified_on <= :day and (left_on is null or left_on > :day)
)
select
    population,
    count(*),
    count(active.account_id),
    coalesce(sum(active.webauthn = 0), 0),
    coalesce(sum(active.webauthn = 1), 0),
    coalesce(sum(first_factors.first_at >= :day and first_factors.first_at < :next), 0)
from populations
left join active using (account_id)
left join first_factors using (account_id)
group by population
"""

# Every cohort built by the day, members on it or not (adoption_daily's populations,
# int_cohorts_built): named by a succeeded cohort build for a day up to it, or with a
# member by then. One with no member on the day has a row of zeros.
BUILT_COHORTS = """
select cohorts.value
from plan_runs, json_each(plan_runs.parameters, '$.cohorts') as cohorts
where plan_runs.step like 'cohorts %' and plan_runs.mode = 'apply'
    and plan_runs.state = 'succeeded' and json_extract(plan_runs.parameters, '$.as_of') <= :day
union
select cohort from cohort_memberships where first_qualified_on <= :day
"""


def check(work: Path, as_of: date, runs: list[dict[str, Any]]) -> list[str]:
    """The runs against each other and the report against the registry."""
    from rollout.report.reporting import report_dir

    problems = []
    for number, run in enumerate(runs[1:], 2):
        for what in ("extracted", "marts"):
            if run[what] != runs[0][what]:
                problems.append(f"run {number} {what} {run[what]}, run 1 {runs[0][what]}")
        if set(run["files"]) != set(runs[0]["files"]):
            problems.append(
                f"run {number} wrote {sorted(run['files'])}, run 1 {sorted(runs[0]['files'])}"
            )
    with sqlite3.connect(work / "registry.db") as db:
        for table, rows in runs[-1]["extracted"].items():
            held = db.execute(f"select count(*) from {table}").fetchone()[0]
            if held != rows:
                problems.append(f"{table}: {rows:,} rows extracted, the registry holds {held:,}")
        day = as_of.isoformat()
        following = (as_of + timedelta(days=1)).isoformat()
        expected = {
            row[0]: [int(v) for v in row[1:]]
            for row in db.execute(ADOPTION_ON_DAY, {"day": day, "next": following})
        }
        for (cohort,) in db.execute(BUILT_COHORTS, {"day": day}):
            expected.setdefault(f"cohort:{cohort}", [0, 0, 0, 0, 0])
    with (report_dir(work / "reports", as_of) / "adoption_daily.csv").open(newline="") as f:
        daily = list(csv.DictReader(f))
    days = {row["day"] for row in daily}
    populations = {row["population"] for row in daily}
    if len(daily) != len(days) * len(populations):
        problems.append(
            f"adoption_daily has {len(daily):,} rows for {len(days)} days x "
            f"{len(populations)} populations"
        )
    if populations != set(expected):
        problems.append(
            f"adoption_daily populations {sorted(populations)}, the registry's {sorted(expected)}"
        )
    columns = ("accounts", "with_2fa", "totp", "webauthn", "newly_enrolled")
    for row in daily:
        if row["day"] != day or row["population"] not in expected:
            continue
        got = [int(row[c]) for c in columns]
        if got != expected[row["population"]]:
            problems.append(
                f"adoption_daily {day} {row['population']} {dict(zip(columns, got, strict=True))}, "
                f"the registry {dict(zip(columns, expected[row['population']], strict=True))}"
            )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "bench/out/npm/registry.db")
    parser.add_argument("--landing", type=Path, default=ROOT / "bench/out/npm/landing")
    parser.add_argument("--work", type=Path, default=ROOT / "bench/out/report")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2022, 5, 10))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-setup", action="store_true", help="reuse --work as it is")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child: one report job, its figures as JSON on stdout
        print(json.dumps(measure(args.work, args.as_of)))
        return

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; date {date.today()}")
    if not args.skip_setup:
        print("setup (not measured):", flush=True)
        done = setup(args)
        print(
            f"setup took {done['seconds']:.0f} s (peak {done['peak_mib']:,.0f} MiB)\n"
            f"  registry rows: {done['registry']}\n  cohort memberships: {done['cohorts']}\n"
            f"  notifications: {done['notifications']}\n  actions: {done['actions']}\n"
            f"  2FA enrolments added: {done['enrolled']}\n"
            f"  login events: {done['bench_logins']:,} added; warehouse {done['logins']}"
        )
    # The setup's writes (GBs) reach the disk now, not during the first measured run.
    os.sync()

    runs = []
    for _ in range(args.runs):
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--measure",
                "--work",
                str(args.work),
                "--as-of",
                args.as_of.isoformat(),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))

    print(
        "\n| run | extract_registry s (SQLite export and DuckDB load, overlapped) | "
        "build_adoption s | "
        "build_report s (context / HTML / Markdown / CSVs) | report_from_registry s | "
        "peak RSS MiB (job / exporter) |\n|---|---|---|---|---|---|"
    )
    for number, run in enumerate(runs, 1):
        s = run["seconds"]
        csvs = s["build_report"] - s["build_context"] - s["render_html"] - s["render_markdown"]
        print(
            f"| {number} | {s['extract_registry']:.1f} | "
            f"{s['build_adoption']:.1f} | "
            f"{s['build_report']:.1f} ({s['build_context']:.2f} / {s['render_html']:.2f} / "
            f"{s['render_markdown']:.2f} / {csvs:.2f}) | **{run['total']:.1f}** | "
            f"{run['peak_mib']:,.0f} / {run['exporter_peak_mib']:,.0f} |"
        )
    last = runs[-1]
    print(f"\nwarehouse opened in {last['open_warehouse']:.2f} s (before the job, not counted)")
    print(
        "registry rows extracted: " + ", ".join(f"{k} {v:,}" for k, v in last["extracted"].items())
    )
    print("mart rows: " + ", ".join(f"{k} {v:,}" for k, v in last["marts"].items()))
    print("files: " + ", ".join(f"{k} {v / 1024:,.0f} KiB" for k, v in last["files"].items()))
    totals = [run["total"] for run in runs]
    verdict = "met" if max(totals) <= 15 else "NOT met"
    print(f"target 15 s: {verdict} (runs {', '.join(f'{t:.1f}' for t in totals)} s)")
    problems = check(args.work, args.as_of, runs)
    if problems:
        raise SystemExit("FAIL: " + "\n  ".join(problems))
    print("checked: the runs agree; extracted rows and adoption_daily agree with the registry")


if __name__ == "__main__":
    main()

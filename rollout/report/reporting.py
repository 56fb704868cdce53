"""The adoption report: marts -> report context -> HTML / Markdown / CSV.

``build_report`` reads only the adoption marts (``docs/adoption-marts.md``) and writes
``reports/<as_of>/``:

- ``adoption.html``: one self-contained page (inline CSS and SVG charts, no script, no
  font, image or link that loads anything; a Content-Security-Policy says so too);
- ``adoption.md``: the same story in GitHub-flavoured Markdown (published as a
  Prefect artifact by the flow, so it stays small: top rows only);
- ``<mart>.csv``: every row of each mart, for analysts and spreadsheets.

Each file is written to a temporary file first; only when all of them are complete
are they moved into place (``os.replace``), the HTML last, so a crash leaves the
previous report as it was and never half a file.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Undefined

from rollout.core.calendar import plan_calendar
from rollout.core.clock import require_data_day
from rollout.core.errors import RolloutError
from rollout.core.files import close_to_others, duckdb_path, make_folder, private_folder_beside
from rollout.core.links import REPORT_HTML, report_folder
from rollout.core.output import csv_cells, html_text, markdown_text
from rollout.core.plan import Phase, Plan
from rollout.core.resources import resource_dir
from rollout.core.stopping import stop_requested_by_signals
from rollout.report.adoption import adoption_since
from rollout.report.charts import (
    BrownoutBars,
    FunnelPhase,
    MethodMix,
    Milestone,
    Series,
    adoption_chart,
    brownout_chart,
    finite,
    funnel_chart,
    method_mix_chart,
)
from rollout.report.spec import report_spec

if TYPE_CHECKING:
    from rollout.registry import Registry


@dataclass(frozen=True)
class PopulationFigures:
    """One population on the report's last day (``adoption_daily``)."""

    population: str  # as in the mart: "all", "cohort:top-100", ...
    label: str
    day: date
    accounts: int
    with_2fa: int
    share: float | None  # with_2fa / accounts; None with no accounts (shown as "—")
    totp: int
    webauthn: int
    change_7d: float | None  # share minus the share 7 days before (None: no such day)
    change_30d: float | None
    enrolled_last_7d: int  # newly_enrolled over the 7 days ending on ``day``
    # A cohort built with nobody in it (its rule met by no package, or narrowed to no
    # one): 0 accounts every day, no line on the chart, but a cohort of the plan all the
    # same (it was in no section but the funnel's and the milestones').
    selected_no_one: bool = False
    # The phases of the plan that require a security key (two_factor:
    # phishing_resistant) of this cohort: then ``share`` and its changes count the
    # accounts with one (``webauthn``), TOTP alone falling short, and ``with_2fa`` keeps
    # any factor. Empty: ``share`` is of any 2FA.
    key_phases: tuple[str, ...] = ()

    @property
    def counts_a_key(self) -> bool:
        return bool(self.key_phases)

    @property
    def compliant(self) -> int:
        """The accounts with what the cohort's phases require: a security key, or any
        second factor."""
        return self.webauthn if self.counts_a_key else self.with_2fa

    @property
    def any_2fa_share(self) -> float | None:
        """with_2fa / accounts (None with no accounts), whatever the phases require."""
        return _share(self.with_2fa, self.accounts)

    @property
    def webauthn_share(self) -> float | None:
        """Of the accounts with 2FA, the share whose strongest method is WebAuthn."""
        total = self.webauthn + self.totp
        return self.webauthn / total if total else None


@dataclass(frozen=True)
class ReportFiles:
    out_dir: Path
    html: Path
    markdown: Path
    csvs: Mapping[str, Path]  # mart table -> its CSV
    as_of: date
    data_through: date | None  # the last day of adoption_daily up to as_of
    populations: tuple[PopulationFigures, ...] = ()
    # Enforced phases (enforce_on <= as_of, not rolled back): cohort accounts still
    # without 2FA.
    still_without_2fa: Mapping[str, int] = field(default_factory=dict)
    # Phases rolled back as of as_of: when the rollback finished.
    rolled_back: Mapping[str, datetime] = field(default_factory=dict)

    @property
    def all_accounts(self) -> PopulationFigures | None:
        return next((p for p in self.populations if p.population == "all"), None)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.html, self.markdown, *self.csvs.values())


def report_dir(reports_dir: Path, as_of: date) -> Path:
    """Where the report of ``as_of`` goes: ``<reports_dir>/<YYYY-MM-DD>/`` (the rule the
    release managers' summary links by: rollout.core.links)."""
    return Path(reports_dir) / report_folder(as_of)


# --- the plan's milestones --------------------------------------------------------


def plan_milestones(plan: Plan) -> list[Milestone]:
    """The dates marked on the adoption chart, in calendar order: the calendar's steps
    that have a chart label."""
    return [
        Milestone(step.on, step.chart_label, step.kind, step.ends)
        for step in plan_calendar(plan)
        if step.chart_label is not None
    ]


# --- reading the marts -----------------------------------------------------------


def _columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Each mart's columns, contract columns first; a missing table or column is an error,
    and so is a row order (reports/adoption.yml) that does not run on its mart: refused
    naming its line (it was a traceback from DuckDB), before any file is written."""
    found: dict[str, list[str]] = {}
    problems: list[str] = []
    spec = report_spec()
    for table, required in spec.marts.items():
        try:
            description = con.execute(f"select * from {table} limit 0").description
        except duckdb.CatalogException:
            problems.append(f"table {table} is missing")
            continue
        actual = [column[0] for column in description]
        missing = [c for c in required if c not in actual]
        if missing:
            problems.append(f"{table} lacks {', '.join(missing)}")
            continue
        found[table] = [*required, *(c for c in actual if c not in required)]
        try:
            con.execute(f"select * from {table} order by {spec.csv_order[table]} limit 0")
        except duckdb.Error as error:
            problem = " ".join(str(error).split("\n")[0].split())
            raise spec.bad_order(table, problem) from None
    if problems:
        raise RolloutError(
            "the warehouse's adoption marts do not match docs/adoption-marts.md ("
            + "; ".join(problems)
            + "): build them first (rollout.report.adoption.build_adoption)"
        )
    return found


def _rows(
    con: duckdb.DuckDBPyConnection, query: str, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    result = con.execute(query, dict(params or {}))
    names = [column[0] for column in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def _int(value: object) -> int:
    return int(finite(value))


def _share(part: object, whole: object) -> float | None:
    """``part`` of ``whole``; None of an empty whole (no accounts, members, maintainers,
    publishes...): the report's one rule for a share of no one, shown as "—", never 0%."""
    whole_ = finite(whole)
    return finite(part) / whole_ if whole_ > 0 else None


def _day(value: object) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else None


def population_label(population: str) -> str:
    if population == "all":
        return "All accounts"
    if population.startswith("cohort:"):
        return f"Cohort {population.removeprefix('cohort:')}"
    return population


def key_phases(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Per population (``cohort:<name>``), the phases that require a security key of it
    (``two_factor: phishing_resistant``): its adoption is measured as the share with one,
    as those phases count it (compliance_funnel, enforcement). A cohort no such phase
    names, and ``all``, are measured by any 2FA (``Plan.security_key_phases``, the rule
    every reader shares)."""
    return {f"cohort:{cohort}": phases for cohort, phases in plan.security_key_phases().items()}


def _series_label(population: str, keys: Mapping[str, tuple[str, ...]]) -> str:
    """A population's name on the chart and in the daily tables, which show one share:
    "(a security key)" where that share is of the accounts with one."""
    label = population_label(population)
    return f"{label} (a security key)" if population in keys else label


def _population_order(plan: Plan, populations: Sequence[str]) -> list[str]:
    rank = {"all": (0, 0)}
    for index, cohort in enumerate(plan.cohorts):
        rank[f"cohort:{cohort}"] = (1, index)
    return sorted(populations, key=lambda p: (*rank.get(p, (2, 0)), p))


# --- the context -----------------------------------------------------------------


def _adoption(con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date) -> dict[str, Any]:
    rows = _rows(
        con,
        "select day, population, accounts, with_2fa, totp, webauthn, share, newly_enrolled "
        "from adoption_daily where day <= $as_of order by day, population",
        {"as_of": as_of},
    )
    by_population: dict[str, list[dict[str, Any]]] = {}
    built: set[str] = set()  # every population with rows: a cohort built by as_of
    keys = key_phases(plan)
    for row in rows:
        row["day"] = _day(row["day"])
        if row["day"] is None:
            continue
        population = str(row["population"])
        # A day with no accounts has no share (the mart's 0 there is no 0%: "—", and
        # no point on the chart); else the mart's, or with_2fa / accounts when it is
        # not a share (NULL, NaN). A cohort a phase requires a security key of: the
        # share with one (webauthn: an account with both kinds counts once), as its
        # phase counts it, not the mart's share of any 2FA.
        share = finite(row["share"], default=-1.0)
        row["share"] = (
            None
            if _int(row["accounts"]) <= 0
            else _share(row["webauthn"], row["accounts"])
            if population in keys
            else share
            if 0.0 <= share <= 1.0
            else _share(row["with_2fa"], row["accounts"])
        )
        built.add(population)
        if population != "all" and _int(row["accounts"]) == 0 and population not in by_population:
            # A cohort before its first build has no one: not a share of 0%. Its line,
            # its changes ("+48.8 pp in 7 days" against such a day) and its rows start
            # with its first member; a cohort no build has filled yet is not shown.
            continue
        by_population.setdefault(population, []).append(row)
    order = _population_order(plan, list(by_population))
    # Cohorts built with nobody in them: rows of 0 accounts only. Shown with 0 accounts
    # (no share, no line); a cohort of the plan not built yet is said to be so.
    selected_no_one = _population_order(plan, [p for p in built if p not in by_population])
    data_through = max((r["day"] for r in rows if r["day"] is not None), default=None)

    figures: list[PopulationFigures] = []
    for population in order:
        series = by_population[population]
        last = series[-1]
        share_on = {r["day"]: r["share"] for r in series}
        before_7, before_30 = (share_on.get(last["day"] - timedelta(days=n)) for n in (7, 30))
        week = [r for r in series if r["day"] > last["day"] - timedelta(days=7)]
        accounts = _int(last["accounts"])
        # No accounts on the day (a cohort whose members all left, a registry with none):
        # no share (the row's, None), and no change of share, rather than 0%.
        share = last["share"]
        figures.append(
            PopulationFigures(
                population=population,
                label=population_label(population),
                day=last["day"],
                accounts=accounts,
                with_2fa=_int(last["with_2fa"]),
                share=share,
                totp=_int(last["totp"]),
                webauthn=_int(last["webauthn"]),
                change_7d=None if before_7 is None or share is None else share - before_7,
                change_30d=None if before_30 is None or share is None else share - before_30,
                enrolled_last_7d=sum(_int(r["newly_enrolled"]) for r in week),
                key_phases=keys.get(population, ()),
            )
        )
    for population in selected_no_one:
        figures.append(
            PopulationFigures(
                population=population,
                label=population_label(population),
                day=data_through or as_of,
                accounts=0,
                with_2fa=0,
                share=None,
                totp=0,
                webauthn=0,
                change_7d=None,
                change_30d=None,
                enrolled_last_7d=0,
                selected_no_one=True,
                key_phases=keys.get(population, ()),
            )
        )
    ranked = _population_order(plan, [f.population for f in figures])
    figures.sort(key=lambda f: ranked.index(f.population))

    start = min(days_[0]["day"] for days_ in by_population.values()) if rows else None
    chart = adoption_chart(
        [
            Series(_series_label(p, keys), [(r["day"], r["share"]) for r in by_population[p]])
            for p in order
        ],
        plan_milestones(plan),
        start or min(adoption_since(plan), as_of),
        data_through or as_of,
    )
    # The chart's data table: one row a day, the share of each population.
    shares: dict[date, dict[str, float | None]] = {}
    for population in order:
        for r in by_population[population]:
            shares.setdefault(r["day"], {})[population] = r["share"]
    daily = [{"day": day, "shares": [shares[day].get(p) for p in order]} for day in sorted(shares)]
    # The Markdown's: one row a week, ending on the last day.
    weekly_days = set()
    if data_through is not None and start is not None:
        day = data_through
        while day >= start:
            weekly_days.add(day)
            day -= timedelta(days=7)
    weekly = [row for row in daily if row["day"] in weekly_days]
    methods = method_mix_chart(
        [
            MethodMix(f.label, f.with_2fa, f.totp, f.webauthn)
            for f in figures
            if not f.selected_no_one
        ],
        data_through or as_of,
    )
    return {
        "data_through": data_through,
        "populations": figures,
        "selected_no_one": [population_label(p) for p in selected_no_one],
        "not_built": _cohorts_not_built(plan, built),
        "population_labels": [_series_label(p, keys) for p in order],
        # The populations measured by a security key: their label, and the phases that
        # require one of them (the headline, the chart and its tables say so).
        "key_populations": [
            {"label": population_label(p), "phases": ", ".join(keys[p])}
            for p in _population_order(plan, list(built & set(keys)))
        ],
        "daily": daily,
        "weekly": weekly,
        "adoption_chart": chart,
        "methods_chart": methods,
    }


def _cohorts_not_built(plan: Plan, built: set[str]) -> list[dict[str, Any]]:
    """The plan's cohorts no build had made by the report's day (no rows in
    adoption_daily): not yet built, so no figures, rather than 0 accounts. With the day
    the plan first builds each (its phase's ``cohort_as_of``); None for a cohort no
    phase names (`plan check` warns of it), which the next cohort build makes (the
    report says so)."""
    out = []
    for cohort in plan.cohorts:
        if f"cohort:{cohort}" in built:
            continue
        fixed = plan.cohort_fixed_from(cohort)
        out.append(
            {
                "cohort": cohort,
                "label": population_label(f"cohort:{cohort}"),
                "first_build": fixed[0] if fixed else None,
            }
        )
    return out


# compliance_funnel's columns that are no count: the phase, its days, its rollback.
_FUNNEL_LABELS = ("phase", "cohort", "notice_on", "enforce_on", "rolled_back_at")
# Its counts of a span after the notice (within 7, 14, 30 days, before enforcement):
# null until the span is over by $as_of, shown as NOT_YET.
_ENROLMENT_SPANS = ("enrolled_7d", "enrolled_14d", "enrolled_30d", "enrolled_by_enforcement")


class _NotYet:
    """A count of a span not over by the report's day: shown as "not yet" (a count so
    far would read as the whole span's), as a brown-out not held yet is."""

    def __repr__(self) -> str:
        return "NOT_YET"


NOT_YET = _NotYet()
# Its counts that follow 2FA: shown as "—" for a phase that asks none.
_TWO_FACTOR_STAGES = (
    "without_2fa_at_notice",
    "notified",
    "enrolled_7d",
    "enrolled_14d",
    "enrolled_30d",
    "enrolled_by_enforcement",
    "without_2fa_at_enforcement",
    "enforced",
    "enrolled_after_enforcement",
    "still_without",
    "never_noticed",
)


def _requires_only_2fa(phase: Phase | None) -> bool:
    """Whether the accounts ``phase`` applies to (compliance_funnel's required,
    notice_reach's enforced) are the accounts it requires 2FA of: it requires 2FA
    (require_2fa) and asks nothing else. A phase not in the plan is read as npm's."""
    return phase is None or (phase.does("require_2fa") and phase.requires.asks_only_2fa)


# The steps that per-account deadlines repeat daily, each account on its own day:
# notices, reminders, enforcement (their Milestone.until is the last such day).
_DAILY_STEPS = ("notice", "reminder", "enforce")


def _milestone(m: Milestone, as_of: date) -> dict[str, Any]:
    """A row of the milestones table. A step of per-account deadlines runs daily from its
    day until its last (``until``): "done" only once that is past, "under way" between
    (its first day alone read as done, and enforcement as over, on its first day)."""
    until = m.until if m.kind in _DAILY_STEPS and m.until and m.until > m.on else None
    return {
        "on": m.on,
        "label": m.label,
        "kind": m.kind,
        "until": until,
        "past": (until or m.on) <= as_of,
        "under_way": until is not None and m.on <= as_of < until,
    }


def _enforcement(phase: Phase | None, enforce_on: date | None) -> str:
    """When ``phase`` is enforced, as the report says it: its day, or with per-account
    deadlines the span of them (its enforce_on is only the first own deadline possible,
    the notice day's; the last is the last notice's, snoozed)."""
    if phase is not None and phase.deadline is not None:
        return f"own deadlines {phase.enforce_on} to {phase.enforce_until}"
    return str(enforce_on or "?")


def _funnel(con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date) -> dict[str, Any]:
    spec = report_spec()
    count_columns = [c for c in spec.marts["compliance_funnel"] if c not in _FUNNEL_LABELS]
    rows = {
        str(r["phase"]): r
        for r in _rows(con, "select * from compliance_funnel order by notice_on, phase")
    }
    histogram: dict[str, list[tuple[int, int]]] = {}
    for r in _rows(
        con,
        "select phase, days_after_notice, accounts from time_to_comply "
        "order by phase, days_after_notice",
    ):
        histogram.setdefault(str(r["phase"]), []).append(
            (_int(r["days_after_notice"]), _int(r["accounts"]))
        )

    def quantile(phase: str, q: float) -> int | None:
        counts = histogram.get(phase, [])
        total = sum(n for _, n in counts)
        if total <= 0:
            return None
        running = 0
        for days, n in counts:
            running += n
            if running >= q * total:
                return days
        return counts[-1][0]

    plan_names = [p.name for p in plan.phases]
    names = plan_names + [name for name in rows if name not in plan_names]
    table: list[dict[str, Any]] = []
    chart_phases: list[FunnelPhase] = []
    for name in names:
        planned = next((p for p in plan.phases if p.name == name), None)
        row = rows.get(name)
        notice_on = _day(row["notice_on"]) if row else planned.notice_on if planned else None
        enforce_on = _day(row["enforce_on"]) if row else planned.enforce_on if planned else None
        cohort = str(row["cohort"]) if row else planned.cohort if planned else ""
        rolled_back_at = row["rolled_back_at"] if row else None
        rolled_back_at = rolled_back_at if isinstance(rolled_back_at, datetime) else None
        # Per-account deadlines: enforce_on is only the first own deadline possible;
        # each account is enforced (and judged, in the funnel) at its own.
        deadline = planned.deadline if planned is not None else None
        enforcement = _enforcement(planned, enforce_on)
        subtitle = f"cohort {cohort}, notice {notice_on or '?'}, enforcement {enforcement}"
        if rolled_back_at is not None:
            subtitle += f", rolled back {rolled_back_at:%Y-%m-%d}"
        # A phase asking a security key counts only WebAuthn (compliance_funnel's "2FA"
        # is a factor the phase counts): its "without 2FA" is without a security key,
        # TOTP users included, and the report says so wherever it shows those counts.
        counts_a_key = planned is not None and planned.requires.two_factor == "phishing_resistant"
        if counts_a_key:
            subtitle += ", 2FA counted: a security key"
        # A phase asking no second factor (token rules alone) has no 2FA funnel: its
        # stages would count 2FA it never asked for ("enforced" as the accounts without
        # 2FA it happened to act on). It is told by the accounts it acted on.
        asks_2fa = planned is None or planned.requires.two_factor != "none"
        to_come = notice_on is not None and notice_on > as_of
        started = row is not None and not to_come
        if to_come:
            note = f"notices go out on {notice_on}"
        elif row is None:
            note = "no data yet"
        elif not asks_2fa:
            note = "asks no 2FA: see required by the phase, and token readiness"
        else:
            note = ""
        counts = {c: _int(row[c]) for c in count_columns if row[c] is not None} if row else {}
        # A span not over by as_of (null in the mart) is not yet known: not 0.
        open_spans = [c for c in _ENROLMENT_SPANS if row is not None and row[c] is None]
        shown: dict[str, int | _NotYet | None] = dict(counts)
        shown.update(dict.fromkeys(open_spans, NOT_YET))
        if not asks_2fa:
            shown.update(dict.fromkeys(_TWO_FACTOR_STAGES, None))
        base = counts.get("without_2fa_at_notice", 0)
        chart_phases.append(
            FunnelPhase(
                name,
                subtitle,
                [(label, counts.get(key, 0)) for key, label in spec.funnel_stages],
                base,
                note,
            )
        )
        if row is not None:
            table.append(
                {
                    "phase": name,
                    "cohort": cohort,
                    "notice_on": notice_on,
                    "enforce_on": enforce_on,
                    # What enforcement is: the day, or the span of own deadlines.
                    "enforcement": enforcement,
                    # After "enforced": "2022-02-01", or "at each account's own deadline,
                    # 2023-04-27 to 2024-01-07" (not "enforced 2023-04-27", the first).
                    "enforced_when": enforcement
                    if planned is None or planned.deadline is None
                    else f"at each account's own deadline, {planned.enforce_on} to "
                    f"{planned.enforce_until}",
                    "own_deadlines": deadline is not None,
                    "days_after_notice": deadline.days_after_notice if deadline else None,
                    "snooze_days": deadline.snooze_days if deadline else None,
                    "started": started,
                    # Enforced by the day: the phase requires accounts, or its funnel
                    # counts some enforced (its date in the plan alone is not: the
                    # headline read "enforced" for a phase nobody had enforced), and not
                    # rolled back (it requires nothing then: its accounts are not
                    # "still without 2FA after enforcement").
                    "enforced_yet": enforce_on is not None
                    and enforce_on <= as_of
                    and (counts.get("required", 0) > 0 or counts.get("enforced", 0) > 0)
                    and rolled_back_at is None,
                    "rolled_back_at": rolled_back_at,
                    # A phase asking more or other than 2FA (a security key, token rules)
                    # is told by the accounts it acts on, not "still without 2FA".
                    "asks_only_2fa": planned is None or planned.requires.asks_only_2fa,
                    # What it requires of its accounts is 2FA alone (require_2fa, no other
                    # rule): "requires 2FA of" is true of its required. A token, banner or
                    # security-key phase applies to accounts for other reasons too.
                    "requires_2fa": _requires_only_2fa(planned),
                    "asks_2fa": asks_2fa,
                    # Its 2FA columns count a security key (WebAuthn), not any factor.
                    "counts_a_key": counts_a_key,
                    "asks": "; ".join(planned.requires.describe()) if planned else "",
                    # Some enrolment span is not over on as_of (and shown): "not yet".
                    "spans_open": asks_2fa and bool(open_spans),
                    **shown,
                    "base": base,
                    "median_days": quantile(name, 0.5) if asks_2fa else None,
                    "p90_days": quantile(name, 0.9) if asks_2fa else None,
                }
            )
    return {"funnel": table, "funnel_chart": funnel_chart(chart_phases)}


def _reach(con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date) -> list[dict[str, Any]]:
    """Per phase, in the plan's order (then any other phase of the mart), how far its
    warnings got: notice_reach's counts."""
    spec = report_spec()
    count_columns = [c for c in spec.marts["notice_reach"] if c not in ("phase", "cohort")]
    order = spec.csv_order["notice_reach"]
    rows = {str(r["phase"]): r for r in _rows(con, f"select * from notice_reach order by {order}")}
    planned = {p.name: p for p in plan.phases}
    names = [name for name in planned if name in rows]
    names += [name for name in rows if name not in planned]
    table = []
    for name in names:
        row = rows[name]
        phase = planned.get(name)
        table.append(
            {
                "phase": name,
                "cohort": str(row["cohort"]),
                # Its notices still to come: the row is all zeros, shown as the future.
                "started": phase is None or phase.notice_on <= as_of,
                **{c: _int(row[c]) for c in count_columns},
            }
        )
    return table


def _brownouts(con: duckdb.DuckDBPyConnection, as_of: date) -> dict[str, Any]:
    """The brown-out table and chart. A window not begun by ``as_of`` is listed as not
    held yet, its measures blank and no bars: its zeros read as a rehearsal nobody met.
    One whose enrolment window is still open on ``as_of`` has its enrolments marked as
    counted so far, and its baseline's as counted over as many days."""
    spec = report_spec()
    order = spec.csv_order["brownout_impact"]
    rows = _rows(con, f"select * from brownout_impact order by {order}")
    # Measured from the hours before the report's day began (the mart counts up to the
    # start of as_of, as the day is still running): one begun on as_of is under way, its
    # counts not begun yet; one begun before and not over has its hours so far.
    day_start = datetime.combine(as_of, datetime.min.time())
    held = {
        str(r["brownout"])
        for r in rows
        if r["period"] == "brownout" and _before(r["starts_at"], day_start)
    }
    under_way = {
        str(r["brownout"])
        for r in rows
        if r["period"] == "brownout"
        and not _before(r["ends_at"], day_start + timedelta(microseconds=1))
        and _before(r["starts_at"], day_start + timedelta(days=1))
    }
    windows: dict[str, dict[str, dict[str, float]]] = {}
    open_windows: set[str] = set()
    table = []
    for r in rows:
        name, period = str(r["brownout"]), str(r["period"])
        measured = name in held
        values = {key: finite(r[key]) for key, _ in spec.brownout_measures}
        # False, not null: a window the mart says is still open (counts so far).
        so_far = measured and r["enrolments_complete"] is False
        if measured:
            windows.setdefault(name, {})[period] = values
        if so_far:
            open_windows.add(name)
        table.append(
            {
                "brownout": name,
                "held": measured,
                # Its hours not all over when as_of began: counted so far (held), or
                # none yet (begun on as_of).
                "under_way": name in under_way,
                "period": period,
                "starts_at": r["starts_at"],
                "ends_at": r["ends_at"],
                **{key: _int(r[key]) if measured else None for key, _ in spec.brownout_measures},
                "enrolments_until": r["enrolments_until"] if measured else None,
                "enrolments_note": (
                    ("so far" if period == "brownout" else "as many days") if so_far else ""
                ),
                "completion": _share(r["elv_completed"], r["elv_challenges"]) if measured else None,
            }
        )
    bars = [
        BrownoutBars(
            name,
            periods.get("baseline", {}),
            periods.get("brownout", {}),
            so_far=frozenset(
                (key for key, _ in spec.brownout_measures)
                if name in under_way
                else {"enrolments"}
                if name in open_windows
                else ()
            ),
        )
        for name, periods in windows.items()
    ]
    return {
        "brownouts": table,
        "brownout_chart": brownout_chart(bars, spec.brownout_measures),
        "brownout_measures": spec.brownout_measures,
    }


def _before(value: object, moment: datetime) -> bool:
    """Whether a mart's timestamp is before ``moment`` (an unreadable one: not)."""
    return isinstance(value, datetime) and value < moment


def _orgs(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    top = _rows(
        con,
        "select org, members, with_2fa, share, owners, owners_with_2fa, tfa_enforced_at "
        "from adoption_by_org order by members desc nulls last, org limit $n",
        {"n": report_spec().top_orgs},
    )
    for r in top:
        r["org"] = "" if r["org"] is None else str(r["org"])
        r["share"] = _share(r["with_2fa"], r["members"])
        for key in ("members", "with_2fa", "owners", "owners_with_2fa"):
            r[key] = _int(r[key])
    totals = _rows(
        con,
        "select count(*) as orgs, count(tfa_enforced_at) as enforcing, "
        "count(*) filter (where members > 0 and with_2fa >= members) as all_members_2fa "
        "from adoption_by_org",
    )[0]
    return {"orgs": top, "org_totals": {k: _int(v) for k, v in totals.items()}}


# token_readiness's columns that are null for a cohort no phase caps a token's lifetime of.
_UNCAPPED_NULL = frozenset({"token_cap_days", "over_cap_in_use"})


def lifetime_capped(plan: Plan) -> bool:
    """A phase of the plan caps how long a token is valid (token_max_lifetime_days,
    write_token_max_lifetime_days): the token readiness table then shows the columns of
    token expiry."""
    return any(p.requires.write_token_cap is not None for p in plan.phases)


def _tokens(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    rows = _rows(con, "select * from token_readiness order by cohort")
    out = []
    for r in rows:
        # A cohort no phase caps has no cap, and no count over it (null, shown "—").
        counts = {
            c: None if r[c] is None and c in _UNCAPPED_NULL else _int(r[c])
            for c in report_spec().marts["token_readiness"][1:]
        }
        # A cohort built with nobody in it: 0 maintainers, and no share of them ("—").
        out.append(
            {
                "cohort": str(r["cohort"]),
                **counts,
                "ready_share": _share(counts["ready"], counts["maintainers"]),
                "webauthn_share": _share(counts["with_webauthn"], counts["maintainers"]),
            }
        )
    return out


def _phase_names(phases: Sequence[Phase]) -> str:
    return ("Phase " if len(phases) == 1 else "Phases ") + ", ".join(p.name for p in phases)


def _revoke_or_forbid(phases: Sequence[Phase]) -> str:
    """What ``phases`` do to the tokens their rule names, agreeing with their count."""
    verb = "revoke" if all(p.does("revoke_tokens") for p in phases) else "forbid"
    return verb + ("s" if len(phases) == 1 else "")


def token_notes(plan: Plan, as_of: date) -> list[str]:
    """What the token readiness table says of this plan, a sentence a column group, as
    its phases use them: the ready columns stop the CI of a phase requiring 2FA
    (npm 2022), the classic and bypass columns are what a token phase revokes, the
    security key share what a security-key phase asks. (The section said npm 2022's
    "enforcement would stop their CI" of every plan: of npm 2025's, which requires no
    2FA to publish, too.)"""
    phases = plan.phases
    two_factor = [p for p in phases if p.does("require_2fa")]
    window = f"in the 90 days to {as_of}"
    if two_factor:
        one = len(two_factor) == 1
        # An automation token gets through 2FA, not through a token rule of the same
        # phase that revokes (a cap on a token's lifetime or age, classic tokens...):
        # "keep working" was false of one it revokes, whose maintainer counts as ready.
        ruled = [p for p in two_factor if p.requires.token_rules and p.does("revoke_tokens")]
        automation = (
            "Automation tokens keep working."
            if not ruled
            else "Automation tokens get through 2FA, but not through a token rule, so a "
            "maintainer counted ready may still see CI stop: "
            + "; ".join(
                f"{_phase_names([p])} revokes tokens against: "
                + ", ".join(r for r in p.requires.describe() if r.startswith("no "))
                for p in ruled
            )
            + "."
        )
        notes = [
            f"{_phase_names(two_factor)} require{'s' if one else ''} 2FA: maintainers who "
            f"published {window} with a legacy (unnamed) or a personal publish token are "
            f"not ready, as {'its' if one else 'their'} enforcement would stop their CI. "
            + automation
        ]
    else:
        notes = [
            f"No phase of plan {plan.name} requires 2FA: the ready columns (maintainers "
            f"who published {window} with a legacy (unnamed) or a personal publish token "
            "are not ready) say whose CI a phase requiring it would stop, not what this "
            "plan does."
        ]
    for flag, tokens in (
        ("no_classic_tokens", "classic tokens"),
        ("no_bypass_2fa_tokens", "tokens that bypass 2FA"),
    ):
        asking = [p for p in phases if getattr(p.requires, flag)]
        if not asking:
            continue
        notes.append(
            f"{_phase_names(asking)} {_revoke_or_forbid(asking)} {tokens}: using {tokens} "
            f"counts the maintainers who used one {window}, whose publishing it stops."
        )
    capping = [p for p in phases if p.requires.write_token_cap is not None]
    if capping:
        verb = _revoke_or_forbid(capping)
        rules = "; ".join(
            f"{p.name}: "
            + ", ".join(
                r
                for r in p.requires.describe()
                if r.startswith(("no tokens valid", "no publishing tokens valid"))
            )
            for p in capping
        )
        notes.append(
            f"{_phase_names(capping)} cap{'s' if len(capping) == 1 else ''} how long a token "
            f"is valid ({rules}), and {verb} the tokens over it: using tokens over the cap "
            f"counts the maintainers who used one {window} that never expires or expires "
            "more days after it was made than a cap of their cohort's phases allows (the "
            "token cap: the fewest days for a publishing token), whose publishing or "
            "reading it stops; using tokens that never expire, those who used one that "
            "never expires. A cohort no phase caps has neither figure (—)."
        )
    keys = [p for p in phases if p.requires.two_factor == "phishing_resistant"]
    if keys:
        notes.append(
            f"{_phase_names(keys)} require{'s' if len(keys) == 1 else ''} a security key "
            "(TOTP alone falls short): the security key share is of the maintainers with one."
        )
    return notes


_VIA_LABELS = {"session": "a logged-in session", "trusted": "trusted publishing"}


def _method(via: str, token_kind: object) -> str:
    """How a publish was made, as the publishing tables label it."""
    return f"{token_kind} token" if via == "token" else _VIA_LABELS.get(via, via)


def _without_2fa(via: object, second_factor: object) -> bool:
    """A publish through a token with no second factor: what token hardening removes."""
    return via == "token" and second_factor == "none"


def _publishing(con: duckdb.DuckDBPyConnection, as_of: date) -> dict[str, Any]:
    """Publishes of the last ``publishing_days`` by how they proved who made them."""
    days = report_spec().publishing_days
    rows = _rows(
        con,
        "select via, token_kind, second_factor, sum(publishes) as publishes "
        "from publishes_daily where day > $start and day <= $as_of "
        "group by all order by publishes desc, via, token_kind nulls first, second_factor",
        {"as_of": as_of, "start": as_of - timedelta(days=days)},
    )
    total = sum(_int(r["publishes"]) for r in rows)
    methods = []
    for r in rows:
        count = _int(r["publishes"])
        methods.append(
            {
                "method": _method(str(r["via"]), r["token_kind"]),
                "second_factor": str(r["second_factor"]),
                "publishes": count,
                "share": _share(count, total),
            }
        )
    without = sum(_int(r["publishes"]) for r in rows if _without_2fa(r["via"], r["second_factor"]))
    return {
        "publishing": methods,
        "publishing_days": days,
        "publishing_total": total,
        "publishing_without_2fa": _share(without, total),
    }


# Weeks of the publishing-over-time table: a token campaign shows as publishes moving
# from tokens without a second factor to granular tokens and trusted publishing.
PUBLISHING_WEEKS = 8


def _publishing_weeks(con: duckdb.DuckDBPyConnection, as_of: date) -> dict[str, Any]:
    """Publishes per week (the 7 days ending each row's day), by how they were made."""
    start = as_of - timedelta(days=7 * PUBLISHING_WEEKS)
    rows = _rows(
        con,
        "select day, via, token_kind, second_factor, sum(publishes) as publishes "
        "from publishes_daily where day > $start and day <= $as_of group by all",
        {"as_of": as_of, "start": start},
    )
    methods: dict[str, int] = {}
    weeks = [
        {"ends": as_of - timedelta(days=7 * n), "counts": {}, "total": 0, "without_2fa": 0}
        for n in range(PUBLISHING_WEEKS)
    ]
    for r in rows:
        method = _method(str(r["via"]), r["token_kind"])
        count = _int(r["publishes"])
        week = weeks[(as_of - _day(r["day"])).days // 7]  # type: ignore[operator]
        week["counts"][method] = week["counts"].get(method, 0) + count
        week["total"] += count
        if _without_2fa(r["via"], r["second_factor"]):
            week["without_2fa"] += count
        methods[method] = methods.get(method, 0) + count
    for week in weeks:
        # No publishes that week: no share to show ("—"), not 0%.
        week["without_2fa_share"] = _share(week["without_2fa"], week["total"])
    return {
        "publishing_methods": sorted(methods, key=lambda m: (-methods[m], m)),
        "publishing_weeks": list(reversed(weeks)) if methods else [],
    }


def _deadlines(con: duckdb.DuckDBPyConnection, plan: Plan) -> list[dict[str, Any]]:
    """Per phase with per-account deadlines, its survival curve at the days that tell it:
    each week, the deadline, the deadline snoozed, and the last day reached. Each day N
    of the mart is the start of notice day + N, so an account's deadline, notice day +
    days_after_notice as enforcement judges it, is day days_after_notice."""
    out = []
    for phase in plan.phases:
        deadline = phase.deadline
        if deadline is None:
            continue
        rows = _rows(
            con,
            "select * from deadline_survival where phase = $phase order by days_since_notice",
            {"phase": phase.name},
        )
        if not rows:
            continue
        due, snoozed = deadline.days_after_notice, deadline.days_after_notice + deadline.snooze_days
        last = _int(rows[-1]["days_since_notice"])
        shown = []
        for r in rows:
            n = _int(r["days_since_notice"])
            if n % 7 == 0 or n in (due, snoozed, last):
                shown.append(
                    {
                        "days": n,
                        "marks": ", ".join(
                            label
                            for label, at in (("deadline", due), ("snoozed deadline", snoozed))
                            if n == at and (label == "deadline" or deadline.snooze_days)
                        ),
                        "accounts": _int(r["accounts"]),
                        "still_without": _int(r["still_without"]),
                        "snoozed": _int(r["snoozed"]),
                        "share": _share(r["still_without"], r["accounts"]),
                    }
                )
        # Who the curves cannot show: accounts still short that were never sent the
        # notice (an unverified or suppressed address) have no deadline, so no
        # enforcement ever acts on them (github-2023's story: 388 of 902).
        left = _rows(
            con,
            "select still_without, never_noticed from compliance_funnel where phase = $phase",
            {"phase": phase.name},
        )
        out.append(
            {
                "phase": phase.name,
                "days_after_notice": due,
                "snooze_days": deadline.snooze_days,
                "rows": shown,
                "still_without": _int(left[0]["still_without"]) if left else 0,
                "never_noticed": _int(left[0]["never_noticed"]) if left else 0,
            }
        )
    return out


def _ledger(con: duckdb.DuckDBPyConnection, as_of: date) -> list[dict[str, Any]]:
    rows = _rows(
        con,
        'select activity, sum("count") as total, '
        'coalesce(sum("count") filter (where day > $week_ago and day <= $as_of), 0) as last_7d, '
        "min(day) as first_day, max(day) as last_day "
        "from ledger_activity group by activity order by total desc, activity",
        {"as_of": as_of, "week_ago": as_of - timedelta(days=7)},
    )
    for r in rows:
        r["activity"] = str(r["activity"])
        r["total"], r["last_7d"] = _int(r["total"]), _int(r["last_7d"])
    return rows


def build_context(con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date) -> dict[str, Any]:
    """Everything the templates show, from the marts and the plan."""
    columns = _columns(con)
    context: dict[str, Any] = {
        "plan": plan,
        "as_of": as_of,
        "marts": list(report_spec().marts),
        "columns": columns,
        "top_orgs": report_spec().top_orgs,
        "milestones": [_milestone(m, as_of) for m in plan_milestones(plan)],
    }
    context.update(_adoption(con, plan, as_of))
    context.update(_funnel(con, plan, as_of))
    context["reach"] = _reach(con, plan, as_of)
    # Every phase's required are accounts it requires 2FA of: the report may say so.
    context["requires_only_2fa"] = all(_requires_only_2fa(p) for p in plan.phases)
    context.update(_brownouts(con, as_of))
    context.update(_orgs(con))
    context["tokens"] = _tokens(con)
    context["token_notes"] = token_notes(plan, as_of)
    context["lifetime_capped"] = lifetime_capped(plan)
    context.update(_publishing(con, as_of))
    context.update(_publishing_weeks(con, as_of))
    context["deadlines"] = _deadlines(con, plan)
    context["ledger"] = _ledger(con, as_of)
    context["headline"] = next((p for p in context["populations"] if p.population == "all"), None)
    return context


# --- rendering -------------------------------------------------------------------


def _defined(value: Any) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _count(value: Any) -> str:
    _defined(value)
    if value is NOT_YET:
        return "not yet"
    return "—" if value is None else f"{_int(value):,}"


def _pct(value: Any) -> str:
    _defined(value)
    return "—" if value is None else f"{finite(value) * 100:.1f}%"


def _pp(value: Any) -> str:
    """A change of share in percentage points, signed."""
    _defined(value)
    return "—" if value is None else f"{finite(value) * 100:+.1f} pp"


def _when(value: Any) -> str:
    _defined(value)
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return str(value)


def _md(value: Any) -> str:
    """Every ``{{ value }}`` of the Markdown: shown as text, never as markup."""
    _defined(value)
    return markdown_text(value)


def _environment(markdown: bool) -> Environment:
    env = Environment(
        # reports/templates: the checkout's (editable install) or the wheel's copy.
        loader=FileSystemLoader(resource_dir("reports") / "templates"),
        undefined=StrictUndefined,
        # HTML escapes everything that is not Markup, its control characters shown first
        # as the terminal and Markdown show them; Markdown escapes every {{ value }}.
        autoescape=not markdown,
        finalize=_md if markdown else html_text,
        keep_trailing_newline=True,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(count=_count, pct=_pct, pp=_pp, when=_when)
    return env


@cache
def _html_env() -> Environment:
    return _environment(markdown=False)


@cache
def _markdown_env() -> Environment:
    return _environment(markdown=True)


def render_html(context: Mapping[str, Any]) -> str:
    return _html_env().get_template("adoption.html").render(context)


def render_markdown(context: Mapping[str, Any]) -> str:
    return _markdown_env().get_template("adoption.md").render(context)


# --- writing ---------------------------------------------------------------------


class _Staging:
    """Temporary files in one hidden folder of this user's beside their targets
    (``rollout.core.files.private_folder_beside``: nobody else can plant a link where
    DuckDB's COPY writes), closed to others and moved into place together."""

    def __init__(self, out_dir: Path, folder: Path) -> None:
        self.out_dir = out_dir
        self.folder = folder
        self.moves: list[tuple[Path, Path]] = []

    def temporary(self, name: str) -> Path:
        """A fresh path for ``name``, not made: DuckDB's COPY makes its own file."""
        path = self.folder / name
        self.moves.append((path, self.out_dir / name))
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.temporary(name)
        with path.open("x", encoding="utf-8", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        return self.out_dir / name

    def commit(self) -> None:
        for temporary, _ in self.moves:
            close_to_others(temporary)
        # Ctrl-C or SIGTERM between two moves would leave a new CSV beside an old page:
        # taken as a request, and acted on once every file is in place (a move takes
        # microseconds). Not by blocking the signals: another thread (DuckDB's) would
        # take them.
        with stop_requested_by_signals() as stop:
            for temporary, target in self.moves:
                os.replace(temporary, target)
            self.moves = []
        stop.raise_if_set()


@contextmanager
def _staged(out_dir: Path) -> Iterator[_Staging]:
    """What is not moved into place goes with the folder."""
    with private_folder_beside(out_dir / "report") as folder:
        staging = _Staging(out_dir, folder)
        yield staging
        staging.commit()


def _copy_csv(
    con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], path: Path
) -> None:
    """A mart as CSV: its rows in the grain's order, text cells through the CSV cell rule
    (no formulas for a spreadsheet), written by DuckDB as it writes any CSV."""
    select = ", ".join(f'"{c}"' for c in columns)
    order = report_spec().csv_order[table]
    ordered = con.sql(f"select {select} from {table} order by {order}").to_arrow_table()
    cells = pa.table(
        [
            csv_cells(c, f"{table}.{n}")
            for n, c in zip(ordered.column_names, ordered.columns, strict=True)
        ],
        names=ordered.column_names,
    )
    view = f"_csv_{secrets.token_hex(8)}"
    target = duckdb_path(path).replace("'", "''")
    con.register(view, cells)
    try:
        # A scan of an Arrow table keeps its rows' order (DuckDB's insertion order).
        con.execute(f"copy (select * from {view}) to '{target}' (format csv, header true)")
    finally:
        con.unregister(view)


def build_report(
    con: duckdb.DuckDBPyConnection, plan: Plan, as_of: date, out_dir: Path
) -> ReportFiles:
    """Write the report of ``as_of`` into ``out_dir`` (normally ``report_dir(...)``)."""
    out_dir = Path(out_dir)
    context = build_context(con, plan, as_of)
    html = render_html(context)
    markdown = render_markdown(context)
    make_folder(out_dir)
    # What a killed report left beside its files (the warehouse's one writer is this):
    # its staging folder, or an older rollout's temporary files.
    for left in out_dir.glob(".*.tmp"):
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)
    csvs: dict[str, Path] = {}
    with _staged(out_dir) as staging:
        for table, columns in context["columns"].items():
            name = f"{table}.csv"
            _copy_csv(con, table, columns, staging.temporary(name))
            csvs[table] = out_dir / name
        markdown_path = staging.write_text("adoption.md", markdown)
        html_path = staging.write_text(REPORT_HTML, html)
    funnel = context["funnel"]
    return ReportFiles(
        out_dir=out_dir,
        html=html_path,
        markdown=markdown_path,
        csvs=csvs,
        as_of=as_of,
        data_through=context["data_through"],
        populations=tuple(context["populations"]),
        still_without_2fa={
            r["phase"]: r["still_without"] for r in funnel if r["enforced_yet"] and r["asks_2fa"]
        },
        rolled_back={r["phase"]: r["rolled_back_at"] for r in funnel if r["rolled_back_at"]},
    )


def report_from_registry(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    plan: Plan,
    as_of: date,
    reports_dir: Path,
    *,
    refresh_registry: bool = True,
) -> ReportFiles:
    """The whole report job: the registry's current rows into the warehouse, the
    adoption marts rebuilt for ``as_of``, then the files under ``reports/<as_of>/``."""
    from rollout.report.adoption import build_adoption, registry_inputs
    from rollout.warehouse.extract import extract_registry

    require_data_day(as_of)
    if refresh_registry:
        # Only what the marts and the notebooks read: at npm scale the whole registry is
        # twice the work.
        extract_registry(con, registry, registry_inputs())
    build_adoption(con, plan, as_of)
    return build_report(con, plan, as_of, report_dir(reports_dir, as_of))

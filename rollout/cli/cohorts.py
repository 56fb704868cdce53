"""`rollout metrics` and `rollout cohorts`: reach, and who must use 2FA."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Annotated

import typer

from rollout.cli.app import (
    AsOfOption,
    FormatOption,
    _data_day,
    _day_or_latest,
    _given_day,
    _parse_day,
    _runtime,
    app,
    reports_errors,
)
from rollout.core.errors import EXIT_BAD_INPUT, RolloutError
from rollout.core.output import Format, Shown, emit, emit_record, in_words, labelled, stderr
from rollout.core.words import counted

if TYPE_CHECKING:
    import duckdb

    from rollout.core.plan import Plan

# --- metrics and cohorts -------------------------------------------------------------

cohorts_app = typer.Typer(help="Cohorts: who must use 2FA, and why.", no_args_is_help=True)
app.add_typer(cohorts_app, name="cohorts")


@app.command()
@reports_errors
def metrics(
    ctx: typer.Context,
    as_of: Annotated[
        str,
        typer.Option(
            "--as-of", help="The day, YYYY-MM-DD: weekly downloads are the 7 full days before it."
        ),
    ],
    rebuild: Annotated[
        bool,
        typer.Option(
            help="Sum the download windows over all their days, rank every manifest for "
            "each package's latest and count the dependents over them, instead of moving "
            "the ones kept from the last run (same numbers, slower)."
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Compute every package's reach on a day: downloads, dependents, ranks."""
    from rollout.metrics import compute_metrics

    runtime, day = _runtime(ctx), _data_day(as_of, "--as-of")
    plan = runtime.plan
    with runtime.warehouse() as con:
        report = compute_metrics(con, day, plan.metrics, rebuild=rebuild)
    emit_record(report.summary(), fmt, title=f"package metrics {day}")
    if not report.weekly_window_complete:
        stderr.print(labelled("warning:", "yellow", f"download data missing for {report.missing}"))


@cohorts_app.command("build")
@reports_errors
def cohorts_build(
    ctx: typer.Context,
    as_of: Annotated[str, typer.Option("--as-of", help="The metrics day, YYYY-MM-DD.")],
    cohort: Annotated[list[str] | None, typer.Option(help="Only this cohort (repeatable).")] = None,
    allow_gaps: Annotated[
        bool, typer.Option(help="Decide even if download days are missing from the weekly window.")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Add the packages that qualify on a day to their cohorts; derive the accounts."""
    from rollout.cohorts import build_cohorts, cohorts_built_on, cohorts_not_fixed_yet

    runtime = _runtime(ctx)
    settings, day = runtime.settings, _data_day(as_of, "--as-of")
    if cohort:
        # A cohort named wrong, or before its day, is said as such first (as `cohorts
        # show` does): not as the warehouse or the day's metrics missing for a build
        # that would never be.
        cohorts_built_on(runtime.plan, day, cohort)
    with runtime.warehouse() as con:
        results = build_cohorts(
            con,
            runtime.registry,
            runtime.plan,
            day,
            actor=settings.actor,
            cohorts=cohort,
            allow_gaps=allow_gaps,
        )
    emit([r.summary() for r in results], fmt, title=f"cohorts {day}")
    later = cohorts_not_fixed_yet(runtime.plan, day) if not cohort else []
    if later:
        stderr.print(f"not built before their day: {', '.join(later)}", highlight=False)


@cohorts_app.command("show")
@reports_errors
def cohorts_show(
    ctx: typer.Context,
    cohort: Annotated[str, typer.Argument(help="The cohort, as named in the plan.")],
    as_of: AsOfOption = None,
    packages: Annotated[
        bool, typer.Option("--packages", help="List the cohort's packages instead of its accounts.")
    ] = False,
    without_2fa: Annotated[
        bool, typer.Option("--without-2fa", help="Only accounts with no 2FA factor.")
    ] = False,
    short: Annotated[
        bool,
        typer.Option(
            "--short",
            help="Only accounts short of what the cohort's phases require: no 2FA, or no "
            "security key where a phase requires one (TOTP alone falls short).",
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """The accounts (or packages) of a cohort on a day, with 2FA status and why."""

    from rollout.cohorts import latest_build, snapshot_exists

    filters = [name for name, on in (("--without-2fa", without_2fa), ("--short", short)) if on]
    if packages and filters:
        raise RolloutError(
            f"{filters[0]} filters accounts; --packages lists packages: give one"
        ).with_exit(EXIT_BAD_INPUT)
    if len(filters) > 1:
        raise RolloutError(
            "--without-2fa lists the accounts with no 2FA; --short those short of what the "
            "cohort's phases require: give one"
        ).with_exit(EXIT_BAD_INPUT)
    runtime = _runtime(ctx)
    given = _given_day(as_of)
    runtime.plan.cohort(cohort)
    # The one rule for "compliant" (Plan.security_key_phases, as the report's): a
    # cohort a phase requires a security key of is compliant with one.
    key_phases = runtime.plan.security_key_phases().get(cohort, ())
    with runtime.warehouse(read_only=True) as con:
        # The cohort's latest build, of its packages or its accounts alike: one that put
        # no account in it has no account row, and its accounts are none that day.
        latest = latest_build(con, cohort) if as_of is None else None
        day = latest or _day_or_latest(con, given, "cohort_account_snapshots", cohort)
        if not snapshot_exists(con, day, cohort):
            # Zeros would read as an empty cohort, not as a day never built.
            raise RolloutError(
                f"no build of cohort {cohort} for {day}: run `rollout cohorts build --as-of "
                f"{day}` first, or pick a day it was built"
            ).with_exit(EXIT_BAD_INPUT)
        if packages:
            query = (
                "select package, first_qualified_on, qualifies_today, reasons from "
                "cohort_package_snapshots where cohort = $cohort and as_of = $as_of "
                "order by package"
            )
        else:
            query = (
                "select username, tfa_status, last_login_at, first_qualified_on, "
                "packages, via from cohort_account_snapshots where cohort = $cohort "
                "and as_of = $as_of"
                + (" and tfa_status = 'none'" if without_2fa else "")
                + (
                    (" and tfa_status <> 'webauthn'" if key_phases else " and tfa_status = 'none'")
                    if short
                    else ""
                )
                + " order by username"
            )
        result = con.execute(query, {"cohort": cohort, "as_of": day})
        names = [d[0] for d in result.description]
        rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    if fmt is Format.table:
        # A long list shows its first few and how many more; each name quoted, as every
        # list in a cell is (CSV: a JSON array, whole).
        for row in rows:
            for key, value in row.items():
                if isinstance(value, list):
                    row[key] = Shown(in_words(value, limit=3))
    emit(
        rows,
        fmt,
        title=f"{cohort} on {day}: {counted(len(rows), 'package' if packages else 'account')}",
        columns=names,
    )
    if without_2fa and key_phases:
        # Not who has to act: a TOTP user falls short of such a phase too.
        stderr.print(
            f"phase{'s' if len(key_phases) > 1 else ''} {', '.join(key_phases)} "
            f"require{'' if len(key_phases) > 1 else 's'} a security key of cohort {cohort}: "
            "its accounts with TOTP alone fall short too, and are not listed; --short lists "
            "every account short of it",
            highlight=False,
            markup=False,
        )


@cohorts_app.command("diff")
@reports_errors
def cohorts_diff(
    ctx: typer.Context,
    first: Annotated[str, typer.Argument(help="The earlier day, YYYY-MM-DD.")],
    second: Annotated[str, typer.Argument(help="The later day, YYYY-MM-DD.")],
    cohort: Annotated[str | None, typer.Option(help="Only this cohort.")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Who entered and who left a cohort between two days, and why."""
    from rollout import warehouse

    runtime = _runtime(ctx)
    days = {"d1": _parse_day(first, "D1"), "d2": _parse_day(second, "D2"), "cohort": cohort}
    if cohort is not None:
        runtime.plan.cohort(cohort)  # an unknown cohort is a typo, not an empty diff
    from rollout.cohorts import snapshot_exists

    with runtime.warehouse(read_only=True) as con:
        for day in (days["d1"], days["d2"]):
            # A day no build wrote (of this cohort, when one is named) would show everyone
            # as entered (or left).
            if not snapshot_exists(con, day, cohort):
                fixed = runtime.plan.cohort_fixed_from(cohort) if cohort else None
                if fixed is not None and day < fixed[0]:
                    raise RolloutError(
                        f"cohort {cohort} is fixed from {fixed[0]} (phase {fixed[1]}'s "
                        f"cohort_as_of): it has no build for {day}; pick days from then on"
                    ).with_exit(EXIT_BAD_INPUT)
                which = "no cohorts were" if cohort is None else f"cohort {cohort} was not"
                raise RolloutError(
                    f"{which} built for {day}: run `rollout cohorts build --as-of "
                    f"{day}` first, or pick a day they were built"
                ).with_exit(EXIT_BAD_INPUT)
        if cohort is None:
            _refuse_cohorts_built_on_one_day(con, runtime.plan, days["d1"], days["d2"])
        result = con.execute(warehouse.render("marts/cohort_diff"), days)
        names = [d[0] for d in result.description]
        rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    emit(rows, fmt, title=f"cohort changes {first} → {second}", columns=names)


def _refuse_cohorts_built_on_one_day(
    con: duckdb.DuckDBPyConnection, plan: Plan, d1: date, d2: date
) -> None:
    """Every cohort's diff: a cohort built on one of the days and not the other (a
    `cohorts build --cohort` of another) would show all its accounts as entered or
    left. Only a day before the cohort is fixed (no build can have it) is no build
    missing: its accounts came in as it came to be."""
    from rollout.cohorts import snapshot_exists

    for name in plan.cohorts:
        built = {day: snapshot_exists(con, day, name) for day in (d1, d2)}
        if all(built.values()) or not any(built.values()):
            continue
        missing = d1 if not built[d1] else d2
        fixed = plan.cohort_fixed_from(name)
        if fixed is not None and missing < fixed[0]:
            continue
        raise RolloutError(
            f"cohort {name} was not built for {missing} (only for "
            f"{d2 if missing == d1 else d1}): its accounts would all read as "
            f"{'entered' if missing == d1 else 'left'}; run `rollout cohorts build --as-of "
            f"{missing} --cohort {name}` first, or name another with --cohort"
        ).with_exit(EXIT_BAD_INPUT)


@cohorts_app.command("simulate")
@reports_errors
def cohorts_simulate(
    ctx: typer.Context,
    weekly_downloads_gt: Annotated[
        int | None, typer.Option(min=0, help="More than this many weekly downloads qualifies.")
    ] = None,
    dependents_gte: Annotated[
        int | None, typer.Option(min=1, help="At least this many dependents qualifies.")
    ] = None,
    top: Annotated[
        int | None, typer.Option(min=1, help="The top N packages by dependents qualify.")
    ] = None,
    as_of: AsOfOption = None,
    allow_gaps: Annotated[
        bool,
        typer.Option(
            help="Count even if download days are missing from the weekly window "
            "(--weekly-downloads-gt)."
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """What-if: cohort sizes under other thresholds. Writes nothing. With
    --weekly-downloads-gt, a weekly window missing download days is refused (exit 2),
    as `cohorts build` refuses it, unless --allow-gaps."""
    from rollout.cohorts import simulate
    from rollout.core.plan import CohortRule

    if weekly_downloads_gt is None and dependents_gte is None and top is None:
        raise RolloutError(
            "give at least one of --weekly-downloads-gt, --dependents-gte, --top"
        ).with_exit(EXIT_BAD_INPUT)
    rule = CohortRule(
        weekly_downloads_gt=weekly_downloads_gt,
        dependents_gte=dependents_gte,
        top_by_dependents=top,
    )
    runtime = _runtime(ctx)
    given = _given_day(as_of)
    with runtime.warehouse(read_only=True) as con:
        day = _day_or_latest(con, given, "package_metrics_daily")
        weekly_days = runtime.plan.metrics.weekly_window_days
        sizes = simulate(con, rule, day, allow_gaps=allow_gaps, weekly_days=weekly_days)
    emit_record(
        {
            "as_of": day,
            "packages": sizes.packages,
            "accounts": sizes.accounts,
            "accounts_without_2fa": sizes.accounts_without_2fa,
            "accounts_with_totp": sizes.accounts_with_totp,
            "accounts_with_webauthn": sizes.accounts_with_webauthn,
        },
        fmt,
        title="simulated cohort",
    )


@cohorts_app.command("release")
@reports_errors
def cohorts_release(
    ctx: typer.Context,
    package: Annotated[str, typer.Argument(help="The package to take out.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit ledger.")],
    cohort: Annotated[str, typer.Option(help="The cohort to take it out of.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Do it (without: only show what would change).")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Take a package out of a cohort for good, with a reason and an audit row."""
    from rollout.cohorts import release_outlook, release_package

    runtime = _runtime(ctx)
    settings = runtime.settings
    runtime.plan.cohort(cohort)
    preview = release_outlook(runtime.registry, cohort, package)
    stderr.print(preview.sentence(), highlight=False)
    record = {**preview.record(), "applied": False}
    if not apply:
        emit_record(record, fmt, title=f"release from {cohort} (preview)")
        stderr.print(
            "preview only: add --apply to release it"
            if preview.released_at is None
            else "already released: nothing to release",
            highlight=False,
        )
        return
    released = release_package(
        runtime.registry, cohort, package, reason=reason, actor=settings.actor
    )
    emit_record(
        {**record, "released_at": released.released_at, "applied": True},
        fmt,
        title=f"release from {cohort}",
    )
    stderr.print(
        f"released {released.package} from {cohort}; accounts leave at the next "
        "`rollout cohorts build`"
        if released.now
        else released.already(cohort),
        highlight=False,
    )

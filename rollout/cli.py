"""The ``rollout`` command: one command per job, each a thin call into the library.

Exit codes (DESIGN.md): 0 success, 1 failure, 2 bad usage or bad input, 3 refused by a
safety guard. Messages and progress go to stderr; stdout carries only the listing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rollout import __version__
from rollout.core.clock import naive_utc
from rollout.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, RolloutError
from rollout.core.output import Format, emit, emit_record, labelled, progress_for, stderr, visible
from rollout.core.stopping import Stopped
from rollout.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="rollout",
    help="Move a package registry's maintainers to mandatory two-factor authentication.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The registry database: migrations and status.", no_args_is_help=True)
app.add_typer(db_app, name="db")
plan_app = typer.Typer(help="The rollout plan: validate and inspect it.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")

FormatOption = Annotated[
    Format, typer.Option("--format", "-f", help="Output format: table, csv or json.")
]


def _runtime(ctx: typer.Context) -> Runtime:
    """This invocation's runtime (settings, plan, registry, warehouse), which the callback
    made, with its settings read.

    Read here, in the command and under ``reports_errors``: a bad setting is the one-line
    error (exit code 2) the command reports first, before a bad option value, as it
    always was. A command that needs no settings (``plan check FILE``) does not ask."""
    runtime = ctx.find_object(Runtime)
    if runtime is None:  # pragma: no cover - every command runs under the callback
        raise RuntimeError("no runtime: run the command through the `rollout` app")
    _ = runtime.settings
    return runtime


def reports_errors(function: F) -> F:
    """Turn the library's errors into a message on stderr and the promised exit code."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RolloutError as error:
            stderr.print(labelled("error:", "bold red", error))
            raise typer.Exit(error.exit_code) from error
        except Stopped as stopped:  # SIGTERM/SIGINT: every child is gone, nothing half-done
            stderr.print(str(stopped), highlight=False, markup=False)
            raise typer.Exit(stopped.exit_code) from None

    return wrapper  # type: ignore[return-value]


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """rollout: measure reach, pick cohorts, warn, rehearse, enforce and report 2FA."""
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    # One runtime for the invocation: nothing is read or opened until a command uses it,
    # and what it opened (the registry's engine) is closed when the command ends.
    runtime = Runtime()
    ctx.obj = runtime
    ctx.call_on_close(runtime.close)


# --- db ----------------------------------------------------------------------------


@db_app.command("upgrade")
@reports_errors
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the registry database to the newest schema."""
    from rollout.registry import migrate
    from rollout.registry.engine import make_engine

    # A bare engine, not the runtime's registry: that one refuses a schema not this code's.
    engine = make_engine(_runtime(ctx).settings.registry_url)
    try:
        migrate.upgrade(engine)
        stderr.print(f"registry at revision {migrate.current_revision(engine)}")
    finally:
        # A pooled connection left for the garbage collector would still be open
        # when `sample` writes the same SQLite file through ADBC, in this process.
        engine.dispose()


@db_app.command("status")
@reports_errors
def db_status(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Show the registry's schema revision and whether it is up to date."""
    from rollout.registry import migrate
    from rollout.registry.engine import make_engine

    # A bare engine, as for `db upgrade`: the status of a registry at any schema.
    engine = make_engine(_runtime(ctx).settings.registry_url)
    try:
        current, head = migrate.current_revision(engine), migrate.head_revision()
    finally:
        engine.dispose()
    emit_record(
        {
            "registry": engine.url.render_as_string(hide_password=True),
            "revision": current,
            "newest": head,
            "up_to_date": current == head,
        },
        fmt,
    )


# --- plan --------------------------------------------------------------------------


@plan_app.command("check")
@reports_errors
def plan_check(
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Argument(help="The plan (default: $ROLLOUT_PLAN, plans/npm-2022.yaml).")
    ] = None,
) -> None:
    """Validate a plan file: dates in order, known cohorts, no overlapping brown-outs."""
    from rollout.core.plan import parse_plan, read_plan_text

    path = file or _runtime(ctx).settings.plan_path
    plan, problems = parse_plan(read_plan_text(path), path)
    for problem in problems:
        stderr.print(labelled("error:", "bold red", problem))
    if problems:
        raise typer.Exit(EXIT_BAD_INPUT)
    assert plan is not None
    stderr.print(
        f"{path}: plan {plan.name} is valid: {len(plan.cohorts)} cohorts, "
        f"{len(plan.phases)} phases, {len(plan.brownouts)} brown-outs",
        highlight=False,
    )


@plan_app.command("show")
@reports_errors
def plan_show(
    ctx: typer.Context,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Show states as of this UTC time (default: now)."),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """The plan's timeline and each step's state: pending, previewed, applied, rolled back."""
    from rollout.phases.timeline import step_states

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    moment = _parse_time(at) if at else None
    states = step_states(runtime.registry, plan, moment, settings.reports_dir)
    emit(
        [
            {
                "on": s.step.on,
                "step": s.step.label,
                "state": s.state,
                "when": s.at.replace(microsecond=0) if s.at else None,
                "run": s.run_id[:12] if s.run_id and fmt is Format.table else s.run_id,
                "by": s.actor,
                "detail": s.detail,
            }
            for s in states
        ],
        fmt,
        title=f"plan {plan.name}",
        columns=["on", "step", "state", "when", "run", "by", "detail"],
    )
    interrupted = [s for s in states if s.state == "interrupted"]
    for s in interrupted:
        stderr.print(
            f"{s.step.label}: run {s.run_id} stopped before finishing; re-run it to resume "
            "(done batches are not redone)",
            highlight=False,
        )


# --- sample ------------------------------------------------------------------------


@app.command()
@reports_errors
def sample(
    ctx: typer.Context,
    scale: Annotated[
        str, typer.Option(help="tiny (~1k packages), small (~20k), medium (~250k) or npm (4M).")
    ] = "small",
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same registry and files.")] = 1,
    end: Annotated[
        str, typer.Option(help="Last day of download history, YYYY-MM-DD.")
    ] = "2022-01-31",
    days: Annotated[
        int | None, typer.Option(min=1, help="Days of download history (default: the scale's).")
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(help="Replace a sample registry (with --confirm) and its landing files."),
    ] = False,
    confirm: Annotated[
        str | None,
        typer.Option(
            help="With --replace: the database's name typed back (the SQLite file's name, "
            "or the PostgreSQL database, database/schema when the URL sets a search_path)."
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Write a seeded, realistic sample registry database and landing files.

    An empty database is filled; one with rows only previews what replacing it would
    lose, and only a registry `rollout sample` made can be replaced (--replace --confirm).
    """
    from rollout.demo import sample as sample_module

    if scale not in sample_module.SCALES:
        raise RolloutError(
            f"unknown scale {scale!r}: use one of {', '.join(sample_module.SCALES)}"
        ).with_exit(EXIT_BAD_INPUT)
    if confirm is not None and not replace:
        raise RolloutError("--confirm goes with --replace").with_exit(EXIT_BAD_INPUT)
    runtime = _runtime(ctx)
    settings = runtime.settings
    contents = sample_module.registry_contents(runtime.registry)
    if contents.has_rows and contents.is_sample and not replace:
        # The preview (DESIGN.md rule 1): what --replace would destroy, and how.
        stderr.print(
            f"preview only: {contents.describe()}.\nTo replace it, add: "
            f"--replace --confirm {contents.name}",
            highlight=False,
        )
        return
    # Refused here (exit 3), before ensure_home creates anything.
    sample_module.check_replace(contents, replace, confirm)
    settings.ensure_home()
    with progress_for(fmt) as progress:
        task = progress.add_task("sample", total=None)

        def report(stage: str, done: int, total: int) -> None:
            progress.update(task, description=stage, completed=done, total=total or None)

        summary = sample_module.generate_sample(
            scale,
            seed,
            registry=runtime.registry,
            landing_dir=settings.landing_dir,
            end=_parse_day(end, "--end"),
            days=days,
            replace=replace,
            confirm=confirm,
            progress=report,
        )
    record = {k: v for k, v in vars(summary).items() if k != "landing_files"}
    record["landing_files"] = len(summary.landing_files)
    emit_record(record, fmt, title=f"sample registry ({scale}, seed {seed})")


def _parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as error:
        raise RolloutError(f"{option}: {text!r} is not a date (YYYY-MM-DD)").with_exit(
            EXIT_BAD_INPUT
        ) from error


def _parse_time(text: str, option: str = "--at") -> datetime:
    """A UTC time, YYYY-MM-DD[THH:MM[:SS]]; stored naive, as the registry keeps UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise RolloutError(
            f"{option}: {text!r} is not a time (YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
        ).with_exit(EXIT_BAD_INPUT) from error
    return naive_utc(moment)


# --- ingest ------------------------------------------------------------------------


@app.command()
@reports_errors
def ingest(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Landing files or folders (default: $ROLLOUT_HOME/landing)."),
    ] = None,
    registry: Annotated[
        bool, typer.Option(help="Also extract the registry tables into the warehouse.")
    ] = True,
    full_extract: Annotated[
        bool,
        typer.Option(
            help="Read every registry table, even those unchanged since the last extract "
            "(on SQLite the extract reads only the tables that changed)."
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Load landing files into the warehouse, validated; bad rows go to quarantine."""
    from rollout.warehouse import extract
    from rollout.warehouse import ingest as ingest_module

    runtime = _runtime(ctx)
    settings = runtime.settings
    targets = paths or [settings.landing_dir]
    root = settings.landing_dir if not paths else None
    with (
        runtime.warehouse() as con,
        progress_for(fmt) as progress,
    ):
        task = progress.add_task("ingest", total=None)

        def report(file: Any, done: int, total: int) -> None:
            progress.update(
                task, description=f"ingest {visible(file.path.name)}", completed=done, total=total
            )

        result = ingest_module.ingest(
            con,
            targets,
            quarantine_limit=settings.quarantine_limit,
            landing_root=root,
            progress=report,
        )
        registry_counts: dict[str, int] = {}
        if registry:
            progress.update(task, description="extract registry")
            registry_counts = extract.extract_registry(con, runtime.registry, full=full_extract)
    rows = [
        {
            "file": str(f.path) if fmt is not Format.table else _short(f.path, targets),
            "kind": f.kind,
            "status": f.status,
            "rows": f.rows_read,
            "loaded": f.rows_loaded,
            "duplicates": f.rows_duplicate,
            "quarantined": f.rows_quarantined,
            "message": f.message,
        }
        for f in result.files
    ]
    columns = list(rows[0]) if rows else None
    if fmt is Format.table and columns and not any(r["message"] for r in rows):
        columns.remove("message")
    emit(rows, fmt, title="landing files", columns=columns)
    stderr.print(
        f"{result.loaded} loaded, {result.skipped} skipped (already loaded), "
        f"{len(result.rejected)} refused; {result.rows_loaded:,} rows loaded, "
        f"{result.rows_quarantined:,} quarantined"
        + (f"; registry: {registry_counts.get('accounts', 0):,} accounts" if registry else ""),
        highlight=False,
    )
    for refused in result.rejected:
        stderr.print(labelled("refused:", "bold red", refused.message))
    if result.rejected:
        raise typer.Exit(EXIT_BAD_INPUT)


def _short(path: Path, roots: list[Path]) -> str:
    """A path as people read it in a table: relative to the folder they named."""
    for root in roots:
        if root.is_dir():
            try:
                return str(path.relative_to(root))
            except ValueError:
                continue
    return path.name


@app.command()
@reports_errors
def quarantine(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many rows.")] = 100,
    fmt: FormatOption = Format.table,
) -> None:
    """List rows refused by ingest validation, with file, line and reason."""

    with _runtime(ctx).warehouse(read_only=True) as con:
        rows = con.execute(
            "select path as file, line, reason, record from quarantine "
            "order by quarantined_at, path, line limit $limit",
            {"limit": limit},
        ).fetchall()
    emit(
        [{"file": r[0], "line": r[1], "reason": r[2], "record": r[3]} for r in rows],
        fmt,
        title="quarantine",
        columns=["file", "line", "reason", "record"],
    )


@app.command()
@reports_errors
def summary(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """What the warehouse holds: packages, dependency edges, accounts, 2FA share, files."""
    from rollout import warehouse

    with _runtime(ctx).warehouse(read_only=True) as con:
        result = con.execute(warehouse.sql_text("summary/warehouse_summary"))
        names = [d[0] for d in result.description]
        values = result.fetchall()[0]
    emit_record(dict(zip(names, values, strict=True)), fmt, title="warehouse")


@app.command()
@reports_errors
def doctor(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Health checks: registry, schema, warehouse, plan, SendGrid key, Prefect worker.

    One row per check, ok, warn or fail; exits 1 if any fails. Reads only: it sends no
    email and opens the warehouse read-only, skipping it (warn) while a run holds it."""
    import os

    from rollout.ops.doctor import COLUMNS, any_failed, run_checks

    results = run_checks(_runtime(ctx), os.environ)
    emit([result.row() for result in results], fmt, title="rollout doctor", columns=COLUMNS)
    if any_failed(results):
        raise typer.Exit(EXIT_FAILURE)


def run() -> None:  # pragma: no cover - the console script
    sys.exit(app())


# --- metrics and cohorts -------------------------------------------------------------

cohorts_app = typer.Typer(help="Cohorts: who must use 2FA, and why.", no_args_is_help=True)
app.add_typer(cohorts_app, name="cohorts")

AsOfOption = Annotated[
    str | None, typer.Option("--as-of", help="The day, YYYY-MM-DD (default: the latest computed).")
]


def _day_or_latest(con: Any, text: str | None, table: str) -> date:
    if text is not None:
        return _parse_day(text, "--as-of")
    from rollout.cohorts import latest_as_of

    latest = latest_as_of(con, table)
    if latest is None:
        raise RolloutError(f"nothing computed yet ({table} is empty): pass --as-of").with_exit(
            EXIT_BAD_INPUT
        )
    return latest


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
    fmt: FormatOption = Format.table,
) -> None:
    """Compute every package's reach on a day: downloads, dependents, ranks."""
    from rollout.metrics import compute_metrics

    runtime, day = _runtime(ctx), _parse_day(as_of, "--as-of")
    plan = runtime.plan
    with runtime.warehouse() as con:
        report = compute_metrics(con, day, plan.metrics)
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
    from rollout.cohorts import build_cohorts

    runtime = _runtime(ctx)
    settings, day = runtime.settings, _parse_day(as_of, "--as-of")
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
    fmt: FormatOption = Format.table,
) -> None:
    """The accounts (or packages) of a cohort on a day, with 2FA status and why."""

    runtime = _runtime(ctx)
    runtime.plan.cohort(cohort)
    with runtime.warehouse(read_only=True) as con:
        table = "cohort_package_snapshots" if packages else "cohort_account_snapshots"
        day = _day_or_latest(con, as_of, table)
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
                + " order by username"
            )
        result = con.execute(query, {"cohort": cohort, "as_of": day})
        names = [d[0] for d in result.description]
        rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    if fmt is not Format.json:
        for row in rows:
            for key, value in row.items():
                if isinstance(value, list):
                    row[key] = _joined(
                        value,
                        "; " if key == "reasons" else ", ",
                        limit=3 if fmt is Format.table else None,
                    )
    emit(
        rows,
        fmt,
        title=f"{cohort} on {day}: {len(rows)} {'packages' if packages else 'accounts'}",
        columns=names,
    )


def _joined(values: list[str], separator: str, limit: int | None) -> str:
    """A list as one cell; tables show the first few and how many more."""
    if limit is None or len(values) <= limit:
        return separator.join(values)
    return separator.join(values[:limit]) + f" (+{len(values) - limit} more)"


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
    if cohort is not None:
        runtime.plan.cohort(cohort)  # an unknown cohort is a typo, not an empty diff
    days = {"d1": _parse_day(first, "D1"), "d2": _parse_day(second, "D2"), "cohort": cohort}
    with runtime.warehouse(read_only=True) as con:
        for day in (days["d1"], days["d2"]):
            # A day no cohort build wrote would show everyone as entered (or left).
            if not warehouse.scalar(
                con,
                "select exists (select 1 from cohort_package_snapshots where as_of = $day) "
                "or exists (select 1 from cohort_account_snapshots where as_of = $day)",
                {"day": day},
            ):
                raise RolloutError(
                    f"no cohorts were built for {day}: run `rollout cohorts build --as-of "
                    f"{day}` first, or pick a day they were built"
                ).with_exit(EXIT_BAD_INPUT)
        result = con.execute(warehouse.render("marts/cohort_diff"), days)
        names = [d[0] for d in result.description]
        rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    if fmt is not Format.json:
        for row in rows:
            row["packages"] = ", ".join(row["packages"])
    emit(rows, fmt, title=f"cohort changes {first} → {second}", columns=names)


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
    fmt: FormatOption = Format.table,
) -> None:
    """What-if: cohort sizes under other thresholds. Writes nothing."""
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
    with _runtime(ctx).warehouse(read_only=True) as con:
        day = _day_or_latest(con, as_of, "package_metrics_daily")
        sizes = simulate(con, rule, day)
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
) -> None:
    """Take a package out of a cohort for good, with a reason and an audit row."""
    from rollout.cohorts import release_package, release_preview

    runtime = _runtime(ctx)
    settings = runtime.settings
    runtime.plan.cohort(cohort)
    preview = release_preview(runtime.registry, cohort, package)
    stderr.print(preview, highlight=False)
    if not apply:
        stderr.print("preview only: add --apply to release it", highlight=False)
        return
    name = release_package(runtime.registry, cohort, package, reason=reason, actor=settings.actor)
    stderr.print(
        f"released {name} from {cohort}; accounts leave at the next `rollout cohorts build`",
        highlight=False,
    )


# --- phases ------------------------------------------------------------------------------

phase_app = typer.Typer(
    help="Rollout phases: preview, enforce, roll back (previews by default).",
    no_args_is_help=True,
)
app.add_typer(phase_app, name="phase")


@phase_app.command("preview")
@reports_errors
def phase_preview(
    ctx: typer.Context,
    phase: Annotated[str, typer.Argument(help="The phase, as named in the plan.")],
    fmt: FormatOption = Format.table,
) -> None:
    """Exactly who enforcing a phase would change: accounts without 2FA, their sessions.

    Writes nothing to the registry; saves the list as a CSV under reports/previews/
    with a record beside it that `rollout plan show` reads."""
    from rollout.phases.enforce import preview_phase
    from rollout.phases.previews import COLUMNS, preview_rows, save_preview

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    preview = preview_phase(runtime.registry, plan, plan.phase(phase))
    saved = save_preview(plan, preview, settings.reports_dir, actor=settings.actor)
    emit(
        preview_rows(preview),
        fmt,
        title=f"phase {phase}: {preview.count} accounts, {preview.sessions} web sessions",
        columns=COLUMNS,
    )
    if preview.required_by_phase:
        # The phase was applied: its accounts still without 2FA stay on the list (the
        # count --expect checks), but enforcing again changes only the new ones.
        who = (
            f"{preview.count} accounts without 2FA in cohort {preview.cohort}: "
            f"{preview.required_by_phase} already required by this phase (enforced), "
            f"{preview.newly_required} would be newly required; "
            f"{preview.sessions} live web sessions would be signed out"
        )
    else:
        who = (
            f"{preview.count} accounts without 2FA in cohort {preview.cohort} would be "
            f"required to enrol and signed out of {preview.sessions} web sessions"
        )
    stderr.print(
        f"{who}; {preview.compliant} already use 2FA; "
        f"exempted: {', '.join(preview.exempted) or 'none'}.\n"
        f"The list: {saved.csv_path}\n"
        f"To apply: rollout phase enforce {phase} --apply --expect {preview.count}",
        highlight=False,
    )


@phase_app.command("enforce")
@reports_errors
def phase_enforce(
    ctx: typer.Context,
    phase: Annotated[str, typer.Argument(help="The phase, as named in the plan.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Make the change (without: preview only).")
    ] = False,
    expect: Annotated[
        int | None, typer.Option(min=0, help="The account count the preview showed, typed back.")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Require 2FA of the phase's non-compliant accounts and revoke their web sessions."""
    from rollout.phases.enforce import enforce_phase

    if not apply:
        phase_preview(ctx, phase, fmt)
        return
    if expect is None:
        raise RolloutError(
            "--apply needs --expect N, the count `rollout phase preview` showed"
        ).with_exit(EXIT_BAD_INPUT)
    runtime = _runtime(ctx)
    settings = runtime.settings
    with progress_for(fmt) as progress:
        task = progress.add_task(f"phase {phase}: accounts", total=expect)
        result = enforce_phase(
            runtime.registry,
            runtime.plan,
            phase,
            expect=expect,
            actor=settings.actor,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    emit_record(result.summary(), fmt, title=f"phase {phase} enforced")


@phase_app.command("rollback")
@reports_errors
def phase_rollback(
    ctx: typer.Context,
    phase: Annotated[str, typer.Argument(help="The phase, as named in the plan.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Make the change (without: preview only).")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Withdraw a phase's 2FA requirement (revoked sessions stay revoked).

    An account stays required while another applied phase requires it: the preview
    lists every account the phase requires and what the rollback does to each."""
    from rollout.phases.enforce import rollback_phase, rollback_preview

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    plan.phase(phase)
    preview = rollback_preview(runtime.registry, phase)
    if not apply:
        emit(
            [
                {
                    "account_id": a.account_id,
                    "username": a.username,
                    "outcome": "cleared"
                    if a.cleared
                    else f"still required by {', '.join(a.still_required_by)}",
                }
                for a in preview.accounts
            ],
            fmt,
            title=f"rollback of phase {phase}",
            columns=["account_id", "username", "outcome"],
        )
    stderr.print(
        f"rollback of {phase} would withdraw its 2FA requirement from "
        f"{len(preview.accounts)} accounts: {len(preview.cleared)} no longer required, "
        f"{len(preview.kept)} still required by another applied phase; "
        f"{preview.queued_emails} queued emails of its enforcement withdrawn; "
        "revoked sessions stay revoked",
        highlight=False,
    )
    if not apply:
        stderr.print("preview only: add --apply to roll back", highlight=False)
        return
    result = rollback_phase(runtime.registry, plan, phase, actor=settings.actor)
    emit_record(result.summary(), fmt, title=f"phase {phase} rolled back")


# --- approvals of phase-enforce runs (Prefect's REST API) -------------------------------


@app.command("approvals")
@reports_errors
def approvals(fmt: FormatOption = Format.table) -> None:
    """List the phase-enforce runs waiting for an approval, with their full ids.

    Reads the Prefect server PREFECT_API_URL names. Each row: the run's id and name,
    its phase, since when it waits and until when, the preview's account and session
    counts, the preview's CSV and its artifact key."""
    from rollout.phases.approvals import COLUMNS, api_from_environ, waiting_approvals

    with api_from_environ() as api:
        waiting = waiting_approvals(api)
    emit([w.row() for w in waiting], fmt, title="runs waiting for approval", columns=COLUMNS)
    stderr.print(
        f"{len(waiting)} run(s) waiting; approve one with: "
        "rollout approve RUN_ID --expect ACCOUNTS [--as NAME]",
        highlight=False,
    )


@app.command("approve")
@reports_errors
def approve(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's full id, as `rollout approvals` lists.")],
    expect: Annotated[
        int, typer.Option(min=0, help="The account count the preview showed, typed back.")
    ],
    approved_by: Annotated[
        str | None,
        typer.Option("--as", help="Who approves (default: $ROLLOUT_ACTOR, else $USER)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the run to its end and report how it ended.")
    ] = True,
    timeout: Annotated[
        int, typer.Option(min=1, help="Seconds to follow the run before giving up waiting.")
    ] = 3600,
    fmt: FormatOption = Format.table,
) -> None:
    """Approve a waiting phase-enforce run: resume it with the count typed back.

    The server refuses an approval its form does not accept (exit 2; the run keeps
    waiting). The run checks the count against a fresh preview under the enforce lock;
    a wrong one fails it, changing nothing (exit 3, the guard's reason on stderr)."""
    from rollout.phases.approvals import (
        api_from_environ,
        outcome,
        parse_run_id,
        raise_for_outcome,
        wait_for_outcome,
    )
    from rollout.phases.approvals import approve as resume

    run = parse_run_id(run_id)
    name = _runtime(ctx).settings.actor if approved_by is None else approved_by
    with api_from_environ() as api:
        waited = resume(api, run, expect=expect, approved_by=name)
        stderr.print(
            f"approved flow run {waited.run_name} ({run}) as {name} for {expect} accounts",
            highlight=False,
        )
        found = wait_for_outcome(api, run, timeout=timeout) if wait else outcome(api, run)
    emit_record(
        {
            "run_id": found.run_id,
            "run_name": found.run_name,
            "state": found.state_name,
            "message": found.message,
        },
        fmt,
        title=f"flow run {found.run_name}",
    )
    if wait:
        raise_for_outcome(found)


# --- notify --------------------------------------------------------------------------------

notify_app = typer.Typer(
    help="Emails: preview them, queue what the plan calls for, send the outbox.",
    no_args_is_help=True,
)
app.add_typer(notify_app, name="notify")


@notify_app.command("preview")
@reports_errors
def notify_preview(
    ctx: typer.Context,
    email: Annotated[
        str | None, typer.Argument(help="The email's name (default: every email).")
    ] = None,
    account: Annotated[
        str | None, typer.Option(help="Render it for this account (username) instead.")
    ] = None,
) -> None:
    """Render examples of an email to outbox/preview/: subject, text and HTML."""
    from rollout.notify.drain import account_recipient
    from rollout.notify.emails import EMAILS
    from rollout.notify.examples import example_stored, preview_examples, write_preview
    from rollout.notify.render import render

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    if email is not None and email not in EMAILS:
        raise RolloutError(f"no email named {email!r} (emails: {', '.join(EMAILS)})").with_exit(
            EXIT_BAD_INPUT
        )
    names = [email] if email else list(EMAILS)
    directory = settings.outbox_dir / "preview"
    if account is None:
        written = preview_examples(plan, names, directory)
    else:
        written = []
        for name in names:
            stored = example_stored(name, plan)
            recipient = account_recipient(runtime.registry, plan, account, stored.get("phase"))
            rendered = render(name, recipient, stored, plan)
            written += write_preview(directory, f"{name}-{account}", rendered)
    for path in written:
        typer.echo(str(path))
    stderr.print(f"{len(written)} files under {directory}", highlight=False)


@notify_app.command("queue")
@reports_errors
def notify_queue(
    ctx: typer.Context,
    as_of: Annotated[
        str | None, typer.Option(help="The day, YYYY-MM-DD (default: today, UTC).")
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Queue them (without: preview).")] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Queue the emails the plan calls for on a day (notices, reminders, heads-ups)."""
    from rollout.notify.queue import queue_due, queue_preview
    from rollout.registry.ledger import utc_now

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    day = _parse_day(as_of, "--as-of") if as_of else utc_now().date()
    if apply:
        outcomes = queue_due(runtime.registry, plan, day, actor=settings.actor)
    else:
        outcomes = queue_preview(runtime.registry, plan, day)
    emit(
        [
            {
                "step": o.occasion.step,
                "email": o.occasion.email,
                "due_on": o.occasion.due_on,
                "audience": o.audience,
                "new": o.added,
                "already": o.already,
            }
            for o in outcomes
        ],
        fmt,
        title=f"emails due on {day}" + ("" if apply else " (preview)"),
        columns=["step", "email", "due_on", "audience", "new", "already"],
    )
    if not outcomes:
        stderr.print(f"nothing is due on {day}", highlight=False)
    elif not apply:
        stderr.print("preview only: add --apply to queue them", highlight=False)


@notify_app.command("send")
@reports_errors
def notify_send(
    ctx: typer.Context,
    apply: Annotated[bool, typer.Option("--apply", help="Send (without: count only).")] = False,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Messages sent at once, per process (SendGrid; the file outbox writes "
            "500 at a time).",
        ),
    ] = 8,
    processes: Annotated[
        int, typer.Option(min=1, max=16, help="Processes rendering and sending.")
    ] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="Send at most this many.")] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Queue failed emails again first.")
    ] = False,
) -> None:
    """Drain the outbox: render and send every queued email, exactly once."""
    from rollout.notify.drain import drain
    from rollout.notify.outbox import check_sender, failed_count, pending
    from rollout.notify.senders import make_sender

    runtime = _runtime(ctx)
    settings, plan, registry = runtime.settings, runtime.plan, runtime.registry
    sender = make_sender(
        settings,
        from_address=plan.notifications.from_address,
        from_name=plan.notifications.from_name,
    )
    queued = pending(registry)
    failed = failed_count(registry) if retry_failed else 0
    for email, count in queued.items():
        stderr.print(f"  {email}: {count}", highlight=False)
    stderr.print(f"{sum(queued.values())} emails queued; sender: {sender.name}", highlight=False)
    if retry_failed:
        stderr.print(f"{failed} failed emails to queue again first", highlight=False)
    # The preview refuses as the send would: the file outbox never takes an email
    # last attempted through SendGrid (the key is missing from this shell).
    check_sender(registry, sender.name, include_failed=retry_failed)
    if not apply:
        stderr.print("preview only: add --apply to send them", highlight=False)
        return
    # A stop (SIGTERM/SIGINT) raises Stopped once every worker is gone: reports_errors.
    with progress_for() as progress:
        task = progress.add_task("sending", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = drain(
            registry,
            plan,
            sender,
            concurrency=concurrency,
            processes=processes,
            limit=limit,
            progress=advance,
            retry_failed=retry_failed,
        )
    if retry_failed:
        stderr.print(f"{report.requeued} failed emails queued again", highlight=False)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    stderr.print(
        f"sent {report.sent}, failed {report.failed}, skipped {sum(report.skipped.values())} "
        f"({skipped}); resent after a crash: {report.resumed}; "
        f"retried after 5xx/429: {report.retried}",
        highlight=False,
    )
    for outbox_id, reason in report.failures[:20]:
        stderr.print(f"  failed #{outbox_id}: {reason}", highlight=False)
    if report.failed:
        stderr.print(report.failure_message(), highlight=False)
        raise typer.Exit(EXIT_FAILURE)


@notify_app.command("status")
@reports_errors
def notify_status(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """The outbox: emails by kind, state and reason (skipped: why; failed: the error)."""
    from rollout.notify.outbox import outbox_status

    rows = outbox_status(_runtime(ctx).registry)
    emit(rows, fmt, title="outbox", columns=["email", "state", "reason", "count"])


@notify_app.command("suppress")
@reports_errors
def notify_suppress(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The email address to stop writing to.")],
    reason: Annotated[str, typer.Option(help="Why (bounced, complained, asked).")],
) -> None:
    """Stop every email to an address (recorded as a skip with the reason 'suppressed')."""
    from rollout.notify.outbox import suppress

    runtime = _runtime(ctx)
    added = suppress(runtime.registry, address, reason=reason, actor=runtime.settings.actor)
    stderr.print(
        f"{address}: " + ("suppressed" if added else "was already suppressed"), highlight=False
    )


@notify_app.command("withdraw")
@reports_errors
def notify_withdraw(
    ctx: typer.Context,
    phase: Annotated[
        str | None, typer.Option(help="Only emails of this phase (or org:NAME, or '' for none).")
    ] = None,
    email: Annotated[
        str | None, typer.Option(help="Only emails of this kind, e.g. enforcement_notice.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why they must not go (kept with each).")] = "",
    apply: Annotated[
        bool, typer.Option("--apply", help="Withdraw them (without: preview only).")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Take back queued emails that must no longer go, by phase, kind or both.

    They stay in the outbox as skipped ('withdrawn: REASON'), audited; emails already
    sent or being sent are not touched."""
    from rollout.notify.emails import EMAILS
    from rollout.notify.withdraw import Selection, withdraw, withdraw_preview

    if phase is None and email is None:
        raise RolloutError("say which emails: --phase, --email or both").with_exit(EXIT_BAD_INPUT)
    if email is not None and email not in EMAILS:
        raise RolloutError(
            f"no email named {email!r}: one of {', '.join(sorted(EMAILS))}"
        ).with_exit(EXIT_BAD_INPUT)
    selection = Selection(phase=phase, email=email)
    runtime = _runtime(ctx)
    settings, registry = runtime.settings, runtime.registry
    with registry.engine.connect() as connection:
        queued = withdraw_preview(connection, selection)
    emit(queued, fmt, title="queued emails to withdraw", columns=["phase", "email", "queued"])
    total = sum(row["queued"] for row in queued)
    if not apply:
        stderr.print(
            f"{total} queued emails would be withdrawn; preview only: add --apply --reason '...'",
            highlight=False,
        )
        return
    withdrawn = withdraw(registry, selection, reason=reason, actor=settings.actor)
    stderr.print(f"withdrew {withdrawn} queued emails", highlight=False)


# --- report --------------------------------------------------------------------------------


@app.command()
@reports_errors
def report(
    ctx: typer.Context,
    as_of: Annotated[
        str | None, typer.Option(help="The last day reported, YYYY-MM-DD (default: today).")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Write the adoption report of a day: HTML, Markdown and one CSV per adoption mart.

    Refreshes the registry's rows in the warehouse and rebuilds the adoption marts
    first, so the report is as of now."""
    from rollout.registry.ledger import utc_now
    from rollout.report.reporting import report_from_registry

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    day = _parse_day(as_of, "--as-of") if as_of else utc_now().date()
    with runtime.warehouse() as con:
        files = report_from_registry(con, runtime.registry, plan, day, settings.reports_dir)
    everyone = files.all_accounts
    emit_record(
        {
            "as_of": day,
            "data_through": files.data_through or "no data",
            "accounts": everyone.accounts if everyone else 0,
            "with_2fa": everyone.with_2fa if everyone else 0,
            "share": round(everyone.share, 4) if everyone else 0,
            "html": files.html,
            "markdown": files.markdown,
        },
        fmt,
        title=f"adoption report {day}",
    )


# --- demo ----------------------------------------------------------------------------------


@app.command()
@reports_errors
def demo(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First day of the calendar.")] = "2021-12-01",
    end: Annotated[str, typer.Option(help="Last day of the calendar.")] = "2022-05-10",
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same story.")] = 7,
    fmt: FormatOption = Format.table,
) -> None:
    """Run the plan day by day over a simulated calendar on the sample registry.

    Maintainers respond as people do (some enrol after a notice, more after a
    brown-out, most once enforcement signs them out); emails go to the file outbox.
    Run `rollout sample` first (its downloads must reach the last cohort day)."""
    from rollout.demo.story import Story

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    first, last = _parse_day(start, "--start"), _parse_day(end, "--end")
    if last < first:
        raise RolloutError("--end is before --start").with_exit(EXIT_BAD_INPUT)
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    with progress_for(
        fmt, TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("day", total=(last - first).days + 1)

        def on_day(day: date, number: int, days: int) -> None:
            progress.update(task, description=f"day {number} of {days}  {day}", completed=number)

        # Milestones through the progress display's console: above the bar on a
        # terminal, plain lines when piped.
        story = Story(
            runtime,
            first,
            last,
            seed=seed,
            log=lambda line: progress.console.print(line, highlight=False),
            on_day=on_day,
        )
        report = story.run()
    emit_record(
        {
            "days": (last - first).days + 1,
            "logins": report.logins,
            "elv_challenges": report.elv_challenges,
            "token_uses": report.token_uses,
            "emails_sent": report.emails["sent"],
            **{f"enforced {phase}": n for phase, n in report.enforced.items()},
            "sessions_revoked": report.sessions_revoked,
            "elv_enrolled": report.elv_enrolled,
            **{f"enrolled after {cause}": n for cause, n in sorted(report.enrolled.items())},
            "seconds": round(report.seconds, 1),
            **{f"seconds {job}": round(t, 1) for job, t in report.job_seconds.items()},
        },
        fmt,
        title=f"the plan from {first} to {last}",
    )
    stderr.print("\n" + "\n".join(_story_lines(report, plan)), highlight=False)
    if report.files is not None:
        stderr.print(
            f"\nThe adoption report: {report.files.html}\n"
            f"Emails sent: {settings.outbox_dir} (one .eml each)\n"
            f"The warehouse: {settings.warehouse_path} (docs/warehouse.md)\n"
            f"Where each step stands: rollout plan show",
            highlight=False,
        )


def _story_lines(report: Any, plan: Any) -> list[str]:
    """The few numbers that tell the demo's story: 2FA share before and after, by
    cohort; who was required to use 2FA; emails; what the brown-outs did."""

    def share(value: float | None) -> str:
        return "?" if value is None else f"{value:.0%}"

    lines = ["The story:"]
    for population in [*(f"cohort:{c}" for c in plan.cohorts), "all"]:
        if population in report.shares:
            before, after = report.shares[population]
            name = population.removeprefix("cohort:")
            lines.append(f"  {name}: 2FA {share(before)} -> {share(after)}")
    for phase, accounts in report.enforced.items():
        lines.append(f"  phase {phase}: {accounts:,} accounts required to use 2FA")
    lines.append(f"  emails sent: {report.emails['sent']:,}")
    lines.append(
        f"  enrolled in response to a brown-out: {report.enrolled['brown-out']:,} "
        f"(unprompted, over all {(report.end - report.start).days + 1} days: "
        f"{report.enrolled['organic']:,})"
    )
    return lines


# --- dev -----------------------------------------------------------------------------------

dev_app = typer.Typer(help="Development tools.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")


@dev_app.command("sendgrid")
@reports_errors
def dev_sendgrid(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 3030,
    api_key: Annotated[
        str | None,
        typer.Option(help="The key clients must send (default: $SENDGRID_API_KEY or a dev key)."),
    ] = None,
    record: Annotated[
        Path | None, typer.Option(help="Append each accepted message to this JSON lines file.")
    ] = None,
) -> None:
    """A local server that speaks SendGrid's v3 mail/send API, for development and tests.

    Point rollout at it: ROLLOUT_SENDGRID_URL=http://HOST:PORT SENDGRID_API_KEY=KEY."""
    import logging

    from rollout.dev.sendgrid_api import DEFAULT_API_KEY, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = _runtime(ctx).settings
    key = api_key or (
        settings.sendgrid_api_key.get_secret_value() if settings.sendgrid_api_key else None
    )
    serve(host, port, key or DEFAULT_API_KEY, record)


# --- orgs ----------------------------------------------------------------------------------

orgs_app = typer.Typer(help="Org 2FA: audit members, turn enforcement on.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")


def _members_rows(members: list[Any], fmt: Format) -> list[dict[str, Any]]:
    return [
        {
            "username": m.username,
            "role": m.role,
            "tfa_status": m.tfa_status,
            "tfa_methods": m.tfa_methods if fmt is Format.json else ", ".join(m.tfa_methods),
            "joined_at": m.joined_at,
        }
        for m in members
    ]


@orgs_app.command("audit")
@reports_errors
def orgs_audit(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org's name.")],
    without_2fa: Annotated[
        bool, typer.Option("--without-2fa", help="Only members with no 2FA.")
    ] = False,
    role: Annotated[
        str | None, typer.Option(help="Only this role: owner, admin or developer.")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Every member of an org with 2FA status and method; filter by status or role."""
    from rollout.phases.orgs import audit_org

    if role is not None and role not in ("owner", "admin", "developer"):
        raise RolloutError(f"--role {role!r}: use owner, admin or developer").with_exit(
            EXIT_BAD_INPUT
        )
    members = audit_org(_runtime(ctx).registry, org)
    shown = [
        m
        for m in members
        if (not without_2fa or m.tfa_status == "none") and (role is None or m.role == role)
    ]
    emit(
        _members_rows(shown, fmt),
        fmt,
        title=f"{org}: {len(shown)} of {len(members)} members",
        columns=["username", "role", "tfa_status", "tfa_methods", "joined_at"],
    )


@orgs_app.command("enforce")
@reports_errors
def orgs_enforce(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org's name.")],
    confirm: Annotated[
        str | None, typer.Option(help="The org's name typed back: applies (without: preview only).")
    ] = None,
    owner: Annotated[
        str | None, typer.Option(help="The owner turning enforcement on (must use 2FA).")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Turn on 2FA enforcement for an org; members without 2FA are removed."""
    from rollout.phases.orgs import enforce_org, enforcement_preview

    runtime = _runtime(ctx)
    settings = runtime.settings
    members = enforcement_preview(runtime.registry, org)
    if confirm is None:
        emit(
            _members_rows(members, fmt),
            fmt,
            title=f"{org}: {len(members)} members would be removed",
            columns=["username", "role", "tfa_status", "tfa_methods", "joined_at"],
        )
        stderr.print(
            f"preview only: to remove these {len(members)} members run "
            f"rollout orgs enforce {org} --owner YOU --confirm {org}",
            highlight=False,
        )
        return
    if owner is None:
        raise RolloutError("--confirm needs --owner: the owner turning enforcement on").with_exit(
            EXIT_BAD_INPUT
        )
    result = enforce_org(runtime.registry, org, confirm=confirm, owner=owner, actor=settings.actor)
    emit_record(
        {
            "org": result.org,
            "run_id": result.run_id,
            "removed": len(result.removed),
            "removed_members": ", ".join(result.removed) or "none",
            "owners_notified": result.owners_notified,
            "was_already_enforced": result.already_enforced,
        },
        fmt,
        title=f"{org}: 2FA enforced",
    )


# --- brown-outs and ELV --------------------------------------------------------------------

brownout_app = typer.Typer(
    help="Brown-outs: 24 h rehearsals of enhanced login verification.", no_args_is_help=True
)
app.add_typer(brownout_app, name="brownout")
elv_app = typer.Typer(help="Enhanced login verification (ELV).", no_args_is_help=True)
app.add_typer(elv_app, name="elv")

ApplyOption = Annotated[
    bool, typer.Option("--apply", help="Make the change (without: preview only).")
]


@brownout_app.command("status")
@reports_errors
def brownout_status(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Every brown-out window and its state now: scheduled, active, ended, ended early."""
    from rollout.phases.brownouts import status

    windows = status(_runtime(ctx).registry)
    emit(
        [vars(w) for w in windows],
        fmt,
        title="brown-out windows",
        columns=["name", "state", "starts_at", "ends_at", "ended_early_at"],
    )


@brownout_app.command("schedule")
@reports_errors
def brownout_schedule(ctx: typer.Context, apply: ApplyOption = False) -> None:
    """Create the plan's brown-out windows (or move ones that have not started)."""
    from rollout.phases.brownouts import schedule, schedule_preview

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    changes = schedule_preview(runtime.registry, plan)
    for name, what in changes:
        stderr.print(f"{name}: {what}", highlight=False)
    if not apply:
        stderr.print("preview only: add --apply to schedule", highlight=False)
        return
    schedule(runtime.registry, plan, actor=settings.actor)
    stderr.print("scheduled", highlight=False)


@brownout_app.command("start")
@reports_errors
def brownout_start(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The window, as named in the plan.")],
    reason: Annotated[str, typer.Option(help="Why now: recorded in the audit ledger.")],
    apply: ApplyOption = False,
) -> None:
    """Begin a scheduled brown-out now (it keeps its planned length)."""
    from rollout.phases.brownouts import change_preview, start_now

    runtime = _runtime(ctx)
    settings = runtime.settings
    if not apply:
        preview = change_preview(runtime.registry, name, "start")
        stderr.print(f"{preview}; preview only: add --apply", highlight=False)
        return
    window = start_now(runtime.registry, name, actor=settings.actor, reason=reason)
    stderr.print(
        f"{name} is {window.state} until {window.ends_at:%Y-%m-%d %H:%M} UTC", highlight=False
    )


@brownout_app.command("end")
@reports_errors
def brownout_end(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The window to stop.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit ledger.")],
    apply: ApplyOption = False,
) -> None:
    """The emergency stop: a brown-out stops applying now, whatever its state."""
    from rollout.phases.brownouts import change_preview, end_now

    runtime = _runtime(ctx)
    settings = runtime.settings
    if not apply:
        preview = change_preview(runtime.registry, name, "end")
        stderr.print(f"{preview}; preview only: add --apply", highlight=False)
        return
    window = end_now(runtime.registry, name, actor=settings.actor, reason=reason)
    stderr.print(f"{name}: {window.state}", highlight=False)


@elv_app.command("enroll-all")
@reports_errors
def elv_enroll_all(
    ctx: typer.Context,
    apply: ApplyOption = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Accounts per transaction.")] = 50_000,
) -> None:
    """Enrol every account in ELV, in resumable batches with a progress bar."""
    from sqlalchemy import func, select

    from rollout.phases.brownouts import enroll_all
    from rollout.registry.models import Account

    runtime = _runtime(ctx)
    settings = runtime.settings
    with runtime.registry.engine.connect() as connection:
        pending = connection.execute(
            select(func.count()).select_from(Account).where(Account.elv_enrolled_at.is_(None))
        ).scalar_one()
    stderr.print(f"{pending:,} accounts are not enrolled in ELV yet", highlight=False)
    if not apply:
        stderr.print("preview only: add --apply to enrol them", highlight=False)
        return
    with progress_for() as progress:
        task = progress.add_task("enrolling", total=pending)
        enrolled = enroll_all(
            runtime.registry,
            actor=settings.actor,
            batch_size=batch_size,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    stderr.print(f"enrolled {enrolled:,} accounts", highlight=False)

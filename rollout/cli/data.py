"""The data commands: `rollout sample`, `ingest`, `quarantine`, `summary`,
`copy-warehouse`, and `doctor`."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from rollout.cli.app import (
    FormatOption,
    _parse_day,
    _runtime,
    app,
    path_given,
    reports_errors,
)
from rollout.core.clock import real_now
from rollout.core.controls import quoted, shell_word
from rollout.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, RolloutError
from rollout.core.output import Format, emit, emit_record, labelled, progress_for, stderr, visible
from rollout.core.words import counted

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
    for_plan: Annotated[
        bool,
        typer.Option(
            "--for-plan",
            help="Fit --end and --days to the plan's cohort days ($ROLLOUT_PLAN), for its demo.",
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Write a seeded, realistic sample registry database and landing files.

    An empty database is filled; one with rows only previews what replacing it would
    lose, and only a registry `rollout sample` made can be replaced (--replace --confirm).
    """
    from rollout.demo import sample as sample_module

    if scale not in sample_module.SCALES:
        raise RolloutError(
            f"unknown scale {quoted(scale)}: use one of {', '.join(sample_module.SCALES)}"
        ).with_exit(EXIT_BAD_INPUT)
    if confirm is not None and not replace:
        raise RolloutError("--confirm goes with --replace").with_exit(EXIT_BAD_INPUT)
    runtime = _runtime(ctx)
    settings = runtime.settings
    last_day = _parse_day(end, "--end")
    if for_plan:
        from rollout.demo.story import sample_window

        last_day, days = sample_window(runtime.plan)
    # Before the registry is opened (which makes its file) or the home made.
    sample_module.check_history(scale, last_day, days)
    # Refused (exit 3) before the registry is opened (which makes a SQLite file) or the
    # home made: a landing folder, outbox, reports or warehouse the sample did not make
    # (ROLLOUT_HOME left on the worker's home, ROLLOUT_WAREHOUSE on production's).
    locations = sample_module.Locations.of(settings)
    sample_module.check_locations(locations)
    contents = sample_module.registry_contents(runtime.registry)
    if contents.has_rows and contents.is_sample and not replace:
        # The preview (DESIGN.md rule 1): what --replace would destroy, and how.
        emit_record(
            {
                "registry": contents.url,
                "name": contents.name,
                "accounts": contents.accounts,
                "emails": contents.emails,
                "runs": contents.runs,
                "complete": contents.complete,
            },
            fmt,
            title="sample registry: what --replace would lose (preview)",
        )
        redo = (
            []
            if contents.complete
            else ["To write the whole sample again, replace it (the same options as before)."]
        )
        stderr.print(
            f"preview only: {contents.describe()}.",
            *redo,
            "To replace it (and drop its warehouse, outbox and reports), add: "
            f"--replace --confirm {shell_word(contents.name)}",
            sep="\n",
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
            end=last_day,
            days=days,
            replace=replace,
            confirm=confirm,
            progress=report,
        )
    if replace:
        _drop_replaced(locations)
    record = {k: v for k, v in vars(summary).items() if k != "landing_files"}
    record["landing_files"] = len(summary.landing_files)
    emit_record(record, fmt, title=f"sample registry ({scale}, seed {seed})")


def _drop_replaced(locations: Any) -> None:
    """What the replaced sample's demo and ingest made of it: its warehouse held its
    data (the next ingest refused the new sample's files as conflicting with the old
    ones, and metrics read the old days), its outbox the old story's emails and its
    reports folder the old story's reports and previews. A sample's warehouse is rebuilt
    from its files (`rollout ingest`). check_locations showed each the sample's."""
    import shutil

    path = locations.warehouse
    stale = [p for p in (path, path.with_name(path.name + ".wal")) if p.exists()]
    for file in stale:
        file.unlink()
    if stale:
        stderr.print(
            f"removed the replaced sample's warehouse {visible(path)}: "
            "`rollout ingest` builds it for the new one",
            highlight=False,
        )
    for what, folder in (("outbox", locations.outbox), ("reports", locations.reports)):
        if folder.is_dir():
            shutil.rmtree(folder)
            stderr.print(f"removed the replaced sample's {what} {visible(folder)}", highlight=False)


# --- ingest ------------------------------------------------------------------------


@app.command()
@reports_errors
def ingest(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            parser=path_given, help="Landing files or folders (default: $ROLLOUT_HOME/landing)."
        ),
    ] = None,
    registry: Annotated[
        bool,
        typer.Option(
            help="Also give the registry's notifications their delivery states from the "
            "SendGrid events loaded, and extract the registry tables into the warehouse."
        ),
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
    from rollout.notify.delivery import apply_delivery
    from rollout.warehouse import extract, landing
    from rollout.warehouse import ingest as ingest_module

    runtime = _runtime(ctx)
    settings = runtime.settings
    targets = paths or [settings.landing_dir]
    root = settings.landing_dir if not paths else None
    landing.require_existing(targets)
    if registry:  # checked before the warehouse is made (on a first ingest)
        runtime.registry.check_schema()
    with (
        runtime.warehouse(create=True) as con,
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
        delivered = None
        if registry:
            # Before the extract, so the warehouse's copy has the states too.
            progress.update(task, description="delivery states")
            delivered = apply_delivery(con, runtime.registry)
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
        f"{len(result.rejected)} refused; {counted(result.rows_loaded, 'row')} loaded, "
        f"{result.rows_quarantined:,} quarantined"
        + (
            f"; registry: {counted(registry_counts.get('accounts', 0), 'account')}"
            if registry
            else ""
        ),
        highlight=False,
    )
    if delivered is not None and (delivered.notifications or delivered.unknown):
        stderr.print(
            f"delivery events: states written for "
            f"{counted(delivered.notifications, 'notification')}"
            + (
                f", {counted(delivered.unknown, 'outbox id')} naming no notification"
                if delivered.unknown
                else ""
            ),
            highlight=False,
        )
    if delivered is not None and delivered.gone:
        stderr.print(
            f"delivery events: {counted(delivered.gone, 'email')} whose send got no answer "
            "went after all: recorded as sent (not sent again)",
            highlight=False,
        )
    for repaired in result.repairs:
        stderr.print(labelled("note:", "bold yellow", repaired))
    for warning in result.quarantine_warnings():
        stderr.print(labelled("warning:", "bold yellow", warning))
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
    days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only the rows quarantined in the last this many days (what `rollout "
            "doctor`'s quarantine row counts), not every row since the warehouse was built.",
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """List rows refused by ingest validation, with file, line and reason."""
    since = datetime.min if days is None else _days_ago(days)
    with _runtime(ctx).warehouse(read_only=True) as con:
        rows = con.execute(
            "select path as file, line, reason, record from quarantine "
            "where quarantined_at >= $since "
            "order by quarantined_at, path, line limit $limit",
            {"limit": limit, "since": since},
        ).fetchall()
        total = (
            len(rows)
            if len(rows) < limit
            else con.execute(
                "select count(*) from quarantine where quarantined_at >= $since",
                {"since": since},
            ).fetchone()[0]
        )
    emit(
        [{"file": r[0], "line": r[1], "reason": r[2], "record": r[3]} for r in rows],
        fmt,
        title="quarantine",
        columns=["file", "line", "reason", "record"],
    )
    if total > len(rows):
        # The doctor says "`rollout quarantine --days 7` lists them" of thousands: the
        # first 100 alone, said nowhere, read as all of them.
        span = "" if days is None else f" in the last {counted(days, 'day')}"
        stderr.print(
            f"the first {len(rows):,} of {counted(total, 'row')} quarantined{span}: "
            f"--limit {total} lists them all",
            highlight=False,
        )


def _days_ago(days: int) -> datetime:
    """The moment ``days`` days before now, naive UTC; the first moment there is when that
    is before it (`--days 1000000000`: the rows of every day, as asked, not a traceback
    of the date's overflow)."""
    try:
        return real_now() - timedelta(days=days)
    except OverflowError:
        return datetime.min


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


@app.command("copy-warehouse")
@reports_errors
def copy_warehouse(
    ctx: typer.Context,
    target: Annotated[
        Path,
        typer.Argument(
            parser=path_given, help="The copy: a new DuckDB file, or a folder to make it in."
        ),
    ],
    replace: Annotated[
        bool, typer.Option(help="Replace an earlier copy there (a DuckDB file only).")
    ] = False,
) -> None:
    """Copy the warehouse into a file of your own, to query for as long as you like.

    Opens it read-only, as a reader: while a run writes it, refused at once (run again
    in a minute); while the copy is made, the pipeline's runs wait for it. The copy is
    one committed state, written beside TARGET and moved into place whole; unlike `cp`,
    never half of a run's write, and with what a run's log (`.wal`) still holds."""
    from rollout import warehouse

    with _runtime(ctx).warehouse(read_only=True) as con:
        written = warehouse.copy_warehouse(con, target, replace=replace)
    stderr.print(
        f"copied the warehouse to {visible(written)}: open it with "
        f"duckdb.connect({str(written)!r}, read_only=True), or point ROLLOUT_WAREHOUSE at it",
        highlight=False,
        markup=False,
    )


@app.command()
@reports_errors
def doctor(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Health checks: registry, schema, warehouse, landing and reports folders, plan,
    SendGrid key, Prefect worker.

    One row per check, ok, warn or fail; exits 1 if any fails. Reads only: it sends no
    email and opens the warehouse read-only, skipping it (warn) while a run holds it."""
    import os

    from rollout.ops.doctor import COLUMNS, any_failed, run_checks

    results = run_checks(_runtime(ctx), os.environ)
    emit([result.row() for result in results], fmt, title="rollout doctor", columns=COLUMNS)
    if any_failed(results):
        raise typer.Exit(EXIT_FAILURE)

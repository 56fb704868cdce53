"""`rollout db`: the registry database's migrations and status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from rollout.cli.app import (
    ApplyOption,
    FormatOption,
    _runtime,
    app,
    reports_errors,
)
from rollout.core.controls import quoted
from rollout.core.output import Format, emit_record, labelled, stderr

if TYPE_CHECKING:
    from rollout.registry.migrate import DowngradePreview

db_app = typer.Typer(help="The registry database: migrations and status.", no_args_is_help=True)
app.add_typer(db_app, name="db")


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


@db_app.command("downgrade")
@reports_errors
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Argument(help="The revision to go back to (`rollout db status` names them).")
    ],
    apply: ApplyOption = False,
    from_revision: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="With --apply: the revision the registry is at, typed back from the preview.",
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Take the registry's schema back to an earlier revision: the way back after an
    upgrade of the code is undone. Previews by default: the revisions undone, and the
    tables, columns and rows they drop (found by doing it and rolling back); --apply
    needs --from, the revision the preview started from. Each migration undoes itself
    on the data it produced, or refuses with "cannot downgrade below ...; nothing was
    changed". Refused (exit 3) while a run holds its run lock. Back the registry up
    first."""
    from rollout.cli.app import _typed_back
    from rollout.core.controls import shell_word
    from rollout.core.errors import EXIT_BAD_INPUT, GuardRefused, RolloutError
    from rollout.registry import migrate
    from rollout.registry.engine import make_engine, require_sqlite_file

    preview_command = f"rollout db downgrade {shell_word(revision)}"
    if apply:
        # Before anything is read: as every apply of a previewed change.
        _typed_back(
            "--apply",
            preview_command,
            [("--from REVISION", "the revision the registry is at", from_revision)],
        )
    elif from_revision is not None:
        raise RolloutError("--from goes with --apply").with_exit(EXIT_BAD_INPUT)
    url = _runtime(ctx).settings.registry_url
    # There is nothing to take back where no registry is: opening it would make an
    # empty one (and its folder) wherever a mistyped ROLLOUT_HOME points.
    require_sqlite_file(url)
    engine = make_engine(url)
    try:
        current = migrate.current_revision(engine)
        # A newer rollout's revision: this code knows no way down from it.
        migrate.require_known_revision(current)
        if not migrate.is_known(revision):
            raise RolloutError(
                f"revision {quoted(revision)} is not one of this code's migrations"
            ).with_exit(EXIT_BAD_INPUT)
        if current is None or not migrate.is_before(revision, current):
            raise RolloutError(
                f"the registry is at revision {current}: {revision} is not before it"
            ).with_exit(EXIT_BAD_INPUT)
        if not apply:
            preview = migrate.preview_downgrade(engine, revision)
            _print_preview(preview)
            emit_record(_preview_record(preview), fmt, title="downgrade (preview)")
            stderr.print(
                "preview only: back the registry up, then run "
                f"`{preview_command} --apply --from {shell_word(current)}`",
                highlight=False,
                markup=False,
            )
            return
        if from_revision != current:
            raise GuardRefused(
                f"--from {from_revision}: the registry is at revision {current} now; "
                f"preview again (`{preview_command}`)"
            )
        migrate.downgrade(engine, revision, expect_current=from_revision)
        now = migrate.current_revision(engine)
        emit_record(
            {"from_revision": from_revision, "to_revision": now, "applied": True},
            fmt,
            title="downgrade",
        )
        stderr.print(f"registry at revision {now}")
    finally:
        engine.dispose()


def _preview_record(preview: DowngradePreview) -> dict[str, object]:
    """A downgrade's preview as one record: the revisions it would undo, newest first,
    and the tables, columns and rows it would drop, counted."""
    return {
        "from_revision": preview.current,
        "to_revision": preview.target,
        "revisions_undone": [rev for rev, _ in preview.revisions],
        "tables_dropped": preview.tables,
        "columns_dropped": preview.columns,
        "rows_removed": preview.rows,
        "applied": False,
    }


def _print_preview(preview: DowngradePreview) -> None:
    lines = [
        f"would take the registry from revision {preview.current} back to {preview.target}, "
        "undoing:"
    ]
    # Each revision's title: its docstring's first paragraph, on one line.
    lines += [
        f"  {rev}: {' '.join(doc.split(chr(10) * 2)[0].split())}" for rev, doc in preview.revisions
    ]
    lost = [f"  drops table {t} ({n} rows)" for t, n in preview.tables.items()]
    lost += [f"  drops column {c} ({n} values)" for c, n in preview.columns.items()]
    lost += [f"  removes {n} rows of {t}" for t, n in preview.rows.items()]
    lines += ["what it drops:", *lost] if lost else ["it drops no table, column or row"]
    for line in lines:
        stderr.print(line, highlight=False, markup=False)


@db_app.command("status")
@reports_errors
def db_status(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Show the registry's schema revision and whether it is up to date."""
    from rollout.core.errors import RolloutError
    from rollout.registry import migrate
    from rollout.registry.engine import make_engine, registry_url_shown, require_sqlite_file
    from rollout.registry.locks import migration_holding

    # A bare engine, as for `db upgrade`: the status of a registry at any schema. Of a
    # SQLite file that is not there, that it is not (the runbooks check where the
    # registry is before `db upgrade` makes it): opening it would make an empty one.
    url = _runtime(ctx).settings.registry_url
    current: str | None = None
    migrating = False
    try:
        require_sqlite_file(url)
    except RolloutError as missing:
        stderr.print(labelled("note:", "yellow", str(missing)))
    else:
        engine = make_engine(url)
        try:
            # Asked before the revision, as doctor asks: a migration that ends between
            # the two leaves its newest revision, not an old one said to be at work.
            with engine.connect() as connection:
                migrating = migration_holding(url, connection)
            current = migrate.current_revision(engine)
        finally:
            engine.dispose()
    head = migrate.head_revision()
    if migrating:
        # Not up to date for now, and not for `rollout db upgrade` to fix: it is at work
        # (or a downgrade is), and the commands that read the registry refuse meanwhile.
        stderr.print(
            labelled(
                "note:",
                "yellow",
                "a schema migration (`rollout db upgrade` or `db downgrade`) is at work on "
                "the registry: its revision is the one it is changing; run `rollout db "
                "status` again once it has finished",
            )
        )
    emit_record(
        {
            "registry": registry_url_shown(url),
            "revision": current,
            "newest": head,
            "up_to_date": current == head,
            "migration_at_work": migrating,
        },
        fmt,
    )

"""`rollout report`: the adoption report."""

from __future__ import annotations

from typing import Annotated

import typer

from rollout.cli.app import (
    FormatOption,
    _data_day,
    _runtime,
    app,
    reports_errors,
)
from rollout.core.output import Format, emit_record

# --- report --------------------------------------------------------------------------------


@app.command()
@reports_errors
def report(
    ctx: typer.Context,
    as_of: Annotated[
        str | None, typer.Option(help="The last day reported, YYYY-MM-DD (default: today, UTC).")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Write the adoption report of a day: HTML, Markdown and one CSV per adoption mart.

    Refreshes the registry's rows in the warehouse and rebuilds the adoption marts
    first, so the report is as of now."""
    from rollout.registry.ledger import utc_now
    from rollout.report.reporting import report_from_registry

    runtime = _runtime(ctx)
    day = _data_day(as_of, "--as-of") if as_of is not None else utc_now().date()
    settings, plan = runtime.settings, runtime.plan
    # The registry is checked before the warehouse is made (on a first report).
    runtime.registry.check_schema()
    with runtime.warehouse(create=True) as con:
        files = report_from_registry(con, runtime.registry, plan, day, settings.reports_dir)
    everyone = files.all_accounts
    emit_record(
        {
            "as_of": day,
            # None (JSON null, an empty CSV cell) when no day has adoption data; said in
            # words for people.
            "data_through": files.data_through
            if files.data_through is not None or fmt is not Format.table
            else "no data",
            "accounts": everyone.accounts if everyone else 0,
            "with_2fa": everyone.with_2fa if everyone else 0,
            # No share of no accounts: null, not a 0 % adoption.
            "share": round(everyone.share, 4) if everyone and everyone.share is not None else None,
            "html": files.html,
            "markdown": files.markdown,
        },
        fmt,
        title=f"adoption report {day}",
    )

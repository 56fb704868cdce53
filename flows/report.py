"""The ``report`` flow: the adoption report of a day, also as a markdown artifact."""

from __future__ import annotations

from datetime import date

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import (
    IO_RETRIES,
    FlowDay,
    artifact_key,
    data_day_or_today,
    fail_on_user_error,
    runtime,
    with_runtime,
)
from rollout.report.reporting import ReportFiles, report_from_registry


@task(name="build-report", cache_policy=NO_CACHE, **IO_RETRIES)
def build(day: date) -> ReportFiles:
    run = runtime()
    # The registry is checked before the warehouse is made (on a first report).
    run.registry.check_schema()
    with run.warehouse(create=True) as con:
        return report_from_registry(con, run.registry, run.plan, day, run.settings.reports_dir)


@flow(name="report", description="The adoption report: HTML, Markdown and CSV per mart.")
@fail_on_user_error
@with_runtime
def report(as_of: FlowDay | None = None) -> str:
    """Rebuild the adoption marts for ``as_of`` (default: today, UTC) and write the
    report under reports/<as_of>/; the Markdown is published as an artifact."""
    day = data_day_or_today(as_of)
    files = build(day)
    create_markdown_artifact(
        markdown=files.markdown.read_text(),
        key=artifact_key("adoption", day),
        description=f"2FA adoption {day}",
    )
    return str(files.html)

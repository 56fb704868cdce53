"""The ``metrics`` flow: ingest the landing files, then compute a day's package metrics.

Same as ``rollout ingest`` then ``rollout metrics --as-of DAY``, with a markdown
artifact ``metrics-DAY`` that says what the numbers rest on.
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import (
    IO_RETRIES,
    FlowDay,
    artifact_key,
    cell,
    data_day_or_today,
    fail_on_user_error,
    runtime,
    table,
    with_runtime,
)
from rollout.core.output import Markdown, labelled_rows
from rollout.metrics import MetricsReport, compute_metrics
from rollout.notify.delivery import apply_delivery
from rollout.warehouse.extract import extract_registry
from rollout.warehouse.ingest import IngestReport, ingest
from rollout.warehouse.landing import require_existing


@task(name="ingest", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest_landing() -> IngestReport:
    """Load new landing files (a refused one is reported, not raised), extract the registry."""
    run = runtime()
    settings = run.settings
    require_existing([settings.landing_dir])
    run.registry.check_schema()  # before the warehouse is made (on a first ingest)
    with run.warehouse(create=True) as con:
        report = ingest(
            con,
            [settings.landing_dir],
            quarantine_limit=settings.quarantine_limit,
            landing_root=settings.landing_dir,
        )
        # Before the extract, so the warehouse's copy of the notifications has them too.
        delivered = apply_delivery(con, run.registry)
        extract_registry(con, run.registry)
    logger = get_run_logger()
    logger.info(
        "%d files loaded, %d skipped, %d refused; %d rows loaded, %d quarantined",
        report.loaded,
        report.skipped,
        len(report.rejected),
        report.rows_loaded,
        report.rows_quarantined,
    )
    for refused in report.rejected:
        logger.warning("landing file refused, nothing of it loaded: %s", refused.message)
    for repaired in report.repairs:
        logger.warning("%s", repaired)
    for warning in report.quarantine_warnings():
        logger.warning("%s", warning)
    if delivered.notifications or delivered.unknown:
        logger.info(
            "delivery events: %d notifications' states written, %d outbox ids unknown",
            delivered.notifications,
            delivered.unknown,
        )
    if delivered.gone:
        logger.info(
            "delivery events: %d emails whose send got no answer went after all: "
            "recorded as sent (not sent again)",
            delivered.gone,
        )
    return report


@task(name="compute-metrics", cache_policy=NO_CACHE, **IO_RETRIES)
def compute_package_metrics(as_of: date) -> MetricsReport:
    run = runtime()
    plan = run.plan
    with run.warehouse() as con:
        report = compute_metrics(con, as_of, plan.metrics)
    if not report.weekly_window_complete:
        get_run_logger().warning(
            "download data missing for %s", ", ".join(str(d) for d in report.missing_days)
        )
    return report


def metrics_markdown(report: MetricsReport, ingested: IngestReport | None) -> str:
    """The artifact: what the day's metrics rest on, gaps and refused files first."""
    parts = [f"# Package metrics {report.as_of}"]
    if not report.weekly_window_complete:
        parts.append(
            f"> **Warning: the weekly window is incomplete.** Download data is missing for "
            f"{report.missing}. Weekly downloads are undercounted; `cohorts` refuses this day "
            "unless run with `allow_gaps`."
        )
    if ingested is not None and ingested.rejected:
        parts.append(
            f"> **Warning: {len(ingested.rejected)} landing file(s) refused**, nothing of "
            "them loaded; the metrics use the files that did load."
        )
    if ingested is not None and ingested.wholly_quarantined:
        names = ", ".join(cell(f.path.name) for f in ingested.wholly_quarantined)
        parts.append(
            f"> **Warning: {len(ingested.wholly_quarantined)} landing file(s) wholly "
            f"quarantined**, every row bad, nothing of them loaded: {names}. "
            "`rollout quarantine --days 1` lists the rows."
        )
    complete = "yes" if report.weekly_window_complete else Markdown("**no**")
    rows: list[tuple[str, object]] = [
        (label, complete if label == "weekly window complete" else value)
        for label, value in labelled_rows(report)
        if label != "as of"  # the heading says it
    ]
    if ingested is None:
        rows.append(("ingest", Markdown("skipped (ingest_first=false)")))
    else:
        rows += [
            ("files loaded", ingested.loaded),
            ("files skipped (already loaded)", ingested.skipped),
            ("files refused", len(ingested.rejected)),
            ("rows loaded", ingested.rows_loaded),
            ("rows quarantined", ingested.rows_quarantined),
        ]
    parts.append(table(rows))
    if ingested is not None and ingested.rejected:
        # The message names the file and line, then the reason.
        lines = [f"- {cell(f.message)}" for f in ingested.rejected]
        parts.append("## Refused landing files\n\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


@flow(name="metrics", description="Ingest landing files, then compute a day's package metrics.")
@fail_on_user_error
@with_runtime
def metrics(as_of: FlowDay | None = None, ingest_first: bool = True) -> MetricsReport:
    """Package metrics for ``as_of`` (default: today, UTC; the week is the 7 days before)."""
    day = data_day_or_today(as_of)
    ingested = ingest_landing() if ingest_first else None
    report = compute_package_metrics(day)
    create_markdown_artifact(
        markdown=metrics_markdown(report, ingested),
        key=artifact_key("metrics", day),
        description=f"Package metrics for {day}",
    )
    return report

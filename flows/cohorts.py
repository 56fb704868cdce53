"""The ``cohorts`` flow (build a day's cohorts) and ``daily`` (metrics, then cohorts).

``cohorts`` is ``rollout cohorts build --as-of DAY`` with a markdown artifact
``cohorts-DAY``; it refuses a day whose weekly download window has gaps unless
``allow_gaps``. ``daily`` is the scheduled run: metrics first, then cohorts, same day.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.brownouts import call_off_dropped_brownouts
from flows.common import (
    IO_RETRIES,
    FlowDay,
    artifact_key,
    cell,
    data_day_or_today,
    fail_on_user_error,
    run_actor,
    runtime,
    table,
    with_runtime,
)
from flows.metrics import metrics
from rollout.cohorts import CohortResult, build_cohorts, cohorts_not_fixed_yet
from rollout.core.output import labelled_rows, markdown_quoted

ENTERED_LISTED = 20


@task(name="build-cohorts", cache_policy=NO_CACHE, **IO_RETRIES)
def build_all_cohorts(
    as_of: date, allow_gaps: bool, actor: str, refresh_registry: bool = True
) -> list[CohortResult]:
    run = runtime()
    plan = run.plan
    with run.warehouse() as con:
        return build_cohorts(
            con,
            run.registry,
            plan,
            as_of,
            actor=actor,
            allow_gaps=allow_gaps,
            refresh_registry=refresh_registry,
        )


def entered_list(packages: Sequence[str], limit: int = ENTERED_LISTED) -> str:
    if not packages:
        return "none"
    # Each quoted: a package named "a, b" reads as one (markdown_quoted).
    shown = ", ".join(markdown_quoted(p) for p in packages[:limit])
    more = len(packages) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def cohorts_markdown(
    as_of: date, results: Sequence[CohortResult], later: Sequence[str] = ()
) -> str:
    """The artifact: one table per cohort, and the cohorts not built before their day."""
    parts = [f"# Cohorts {as_of}"]
    if later:
        parts.append(f"Not built before their day: {cell(', '.join(later))}.")
    for r in results:
        # The cohort and the day are the heading's.
        rows = [(k, v) for k, v in labelled_rows(r) if k not in ("cohort", "as of")]
        parts.append(
            f"## {cell(r.cohort)}\n\n{table(rows)}\n\n"
            f"Packages entered: {entered_list(r.packages_entered)}"
        )
    return "\n\n".join(parts) + "\n"


@flow(name="cohorts", description="Build a day's cohorts from its package metrics.")
@fail_on_user_error
@with_runtime
def cohorts(
    as_of: FlowDay | None = None, allow_gaps: bool = False, refresh_registry: bool = True
) -> list[CohortResult]:
    """Cohorts for ``as_of`` (default: today, UTC); the day's metrics must exist.

    ``refresh_registry=False`` trusts the registry extract a preceding ingest made.
    """
    day = data_day_or_today(as_of)
    results = build_all_cohorts(day, allow_gaps, run_actor(runtime().settings), refresh_registry)
    create_markdown_artifact(
        markdown=cohorts_markdown(day, results, cohorts_not_fixed_yet(runtime().plan, day)),
        key=artifact_key("cohorts", day),
        description=f"Cohorts for {day}",
    )
    return results


@flow(name="daily", description="The daily run: package metrics, then cohorts, for one day.")
@fail_on_user_error
@with_runtime
def daily(
    as_of: FlowDay | None = None, ingest_first: bool = True, allow_gaps: bool = False
) -> list[CohortResult]:
    """``metrics`` then ``cohorts`` as subflows; a failed metrics run stops the cohorts.
    First, the brown-out windows the plan dropped that have not started are cancelled
    (``call_off_dropped_brownouts``): nothing else would stop them applying at login.

    A subflow failed by a user error (missing download days, say) raises that error
    here, and this run fails with the same one line."""
    day = data_day_or_today(as_of)
    # First: a metrics run that fails must not leave a dropped window to start.
    call_off_dropped_brownouts(run_actor(runtime().settings))
    metrics(as_of=day, ingest_first=ingest_first)
    # The ingest just extracted the registry: no need to read it again.
    return cohorts(as_of=day, allow_gaps=allow_gaps, refresh_registry=not ingest_first)

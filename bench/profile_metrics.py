"""Profile (not a benchmark: no target, no peer): where ``compute_metrics`` spends
its time at npm scale, piece by piece.

Usage:
    python bench/profile_metrics.py [--landing bench/out/npm/landing]
        [--work bench/out/metrics-profile] [--as-of 2022-01-31]

The first run ingests the landing folder (all but the last daily file, and the
manifests) into ``--work``/warehouse.duckdb, which later runs reuse. It then times
``compute_metrics`` twice (the dependency counts and download windows kept in the
warehouse by an earlier run, the first time only if one made them), and the pieces of
one run apart.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def timed(label: str, step: Callable[[], Any]) -> None:
    started = time.perf_counter()
    step()
    print(f"  {label}: {time.perf_counter() - started:.2f} s", flush=True)


def main() -> None:
    from rollout import metrics, warehouse
    from rollout.core.plan import load_plan
    from rollout.warehouse import ingest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, default=ROOT / "bench/out/npm/landing")
    parser.add_argument("--work", type=Path, default=ROOT / "bench/out/metrics-profile")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2022, 1, 31))
    args = parser.parse_args()
    plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "warehouse.duckdb"
    fresh = not path.exists()
    con = warehouse.connect(path)
    if fresh:
        started = time.perf_counter()
        daily = sorted((args.landing / "downloads").glob("downloads-*.parquet"))
        ingest.ingest(
            con,
            [*daily[:-1], args.landing / "manifests"],
            quarantine_limit=0.01,
            landing_root=args.landing,
        )
        print(f"setup ingest (once): {time.perf_counter() - started:.1f} s", flush=True)
    timed(
        "compute_metrics, first in this process",
        lambda: metrics.compute_metrics(con, args.as_of, plan.metrics),
    )
    timed(
        "compute_metrics again, same connection",
        lambda: metrics.compute_metrics(con, args.as_of, plan.metrics),
    )
    print("its pieces:")
    params = metrics.window_parameters(args.as_of, plan.metrics)
    timed(
        "materialize stg_manifests",
        lambda: con.execute(
            "create or replace temp table stg_manifests as select package, "
            "self_dependency_kinds, file_id, ordinal from main.stg_manifests"
        ),
    )
    counted = warehouse.scalar(con, "select coalesce(max(file_id), 0) from ingested_files")
    timed("dependency counts, kept", lambda: metrics._dependency_counts(con, counted, False))
    timed(
        "dependency counts, counted whole",
        lambda: metrics._dependency_counts(con, counted, True),
    )
    timed(
        "download gaps",
        lambda: con.execute(warehouse.render("intermediate/int_download_gaps"), params).fetchall(),
    )
    timed(
        "exclusions",
        lambda: warehouse.one(con, warehouse.render("intermediate/int_dependency_exclusions")),
    )
    con.execute("begin")
    timed(
        "download windows (moved)", lambda: metrics._download_windows(con, params, counted, False)
    )
    model = warehouse.render("marts/package_metrics")
    timed(
        "the mart into a temp table",
        lambda: con.execute(f"create temp table day_metrics as {model}", {"as_of": args.as_of}),
    )
    timed(
        "delete the day",
        lambda: con.execute(
            "delete from package_metrics_daily where as_of = $as_of", {"as_of": args.as_of}
        ),
    )
    timed(
        "insert the day",
        lambda: con.execute("insert into package_metrics_daily by name select * from day_metrics"),
    )
    timed("commit", lambda: con.execute("commit"))
    con.close()


if __name__ == "__main__":
    main()

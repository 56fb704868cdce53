"""Benchmark: the daily path, day after day, as the `daily` deployment runs it.

Usage:
    python bench/bench_daily.py --registry bench/out/npm/registry.db \\
        --landing bench/out/npm/landing [--days 7]
    python bench/bench_daily.py --generate small      # a quick check on a fresh sample

A fresh warehouse ingests the sample's landing files except the last ``--days``
downloads files and computes the metrics and cohorts of the day after the last one
loaded (not timed: the state a deployment has the morning before). Then, day by day,
each of the held-back files goes through the daily path, each step timed:

- ``rollout ingest`` of the day's file, with the registry extract;
- ``compute_metrics`` for the next day: the kept download windows moved by a day;
- ``build_cohorts`` on that day's metrics (the registry as just extracted).

Each day, the metrics are then computed again from scratch (``rebuild=True``: the
windows summed over every day), timed as the in-run baseline, and every package's row
of the two is compared: any difference fails the run (exit 1). Peak RSS of the
process is reported at the end.

Issue 16's peers computed from the raw files (a polars script, a DuckDB script and an
expert pandas version) are not part of this bench yet; `bench_metrics.py` holds the
expert pandas baseline of the same definitions for one day.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from registry_copy import copy_registry

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "plans" / "npm-2022.yaml"
METRICS = "select * from package_metrics_daily where as_of = $as_of order by package"


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def generate(scale: str, seed: int, work: Path) -> tuple[Path, Path]:
    """A sample of ``scale`` with Parquet landing files (as at npm scale)."""
    from rollout.demo.sample import SCALES, generate_sample
    from rollout.registry import Registry

    source = work / "source"
    source.mkdir()
    generate_sample(
        dataclasses.replace(SCALES[scale], formats="parquet"),
        seed,
        registry=Registry(f"sqlite:///{source / 'registry.db'}"),
        landing_dir=source / "landing",
    )
    return source / "registry.db", source / "landing"


def day_of(path: Path) -> date:
    return date.fromisoformat(path.stem.removeprefix("downloads-"))


def run(registry_db: Path, landing: Path, days: int, work: Path) -> int:
    from rollout import cohorts, metrics, warehouse
    from rollout.core.plan import load_plan
    from rollout.registry import Registry
    from rollout.warehouse import extract, ingest

    plan = load_plan(PLAN)
    daily = sorted((landing / "downloads").glob("downloads-*.parquet"), key=day_of)
    if len(daily) <= days:
        raise SystemExit(f"FAIL: {landing} has {len(daily)} daily files, need more than {days}")
    held, before = daily[-days:], daily[:-days]
    registry = Registry(copy_registry(registry_db, work))
    failures = 0
    timings: dict[str, list[float]] = {"ingest": [], "metrics": [], "cohorts": [], "rebuild": []}
    with registry, warehouse.open_warehouse(work / "warehouse.duckdb") as con:
        started = time.perf_counter()
        others = [landing / kind for kind in ("manifests", "logins", "publishes")]
        setup = ingest.ingest(
            con,
            [*before, *(path for path in others if path.exists())],
            quarantine_limit=0.01,
            landing_root=landing,
        )
        if setup.rejected:
            raise SystemExit(f"FAIL: the sample did not ingest cleanly: {setup.rejected}")
        extract.extract_registry(con, registry)
        as_of = day_of(before[-1]) + timedelta(days=1)
        metrics.compute_metrics(con, as_of, plan.metrics)
        cohorts.build_cohorts(
            con, registry, plan, as_of, actor="bench", refresh_registry=False, allow_gaps=True
        )
        setup_seconds = time.perf_counter() - started
        print(f"setup (not timed): {len(before)} daily files, {setup_seconds:.1f} s")
        print("day         ingest  metrics  cohorts  | rebuild  same")
        for path in held:
            as_of = day_of(path) + timedelta(days=1)
            clock = time.perf_counter()
            ingest.ingest(con, [path], quarantine_limit=0.01, landing_root=landing)
            extract.extract_registry(con, registry)
            timings["ingest"].append(time.perf_counter() - clock)
            clock = time.perf_counter()
            metrics.compute_metrics(con, as_of, plan.metrics)
            timings["metrics"].append(time.perf_counter() - clock)
            clock = time.perf_counter()
            cohorts.build_cohorts(
                con, registry, plan, as_of, actor="bench", refresh_registry=False, allow_gaps=True
            )
            timings["cohorts"].append(time.perf_counter() - clock)
            moved = con.execute(METRICS, {"as_of": as_of}).fetchall()
            clock = time.perf_counter()
            metrics.compute_metrics(con, as_of, plan.metrics, rebuild=True)
            timings["rebuild"].append(time.perf_counter() - clock)
            rebuilt = con.execute(METRICS, {"as_of": as_of}).fetchall()
            same = moved == rebuilt and len(moved) > 0
            failures += not same
            if not same:
                differing = [a[1] for a, b in zip(moved, rebuilt, strict=False) if a != b][:5]
                print(f"FAIL {as_of}: {len(moved)} rows against {len(rebuilt)}; first: {differing}")
            print(
                f"{as_of}  {timings['ingest'][-1]:6.1f}  {timings['metrics'][-1]:7.1f}  "
                f"{timings['cohorts'][-1]:7.1f}  | {timings['rebuild'][-1]:7.1f}  {same}"
            )
    path_seconds = [
        i + m + c
        for i, m, c in zip(timings["ingest"], timings["metrics"], timings["cohorts"], strict=True)
    ]
    print(
        f"daily path (ingest + metrics + cohorts): min {min(path_seconds):.1f} s, "
        f"median {statistics.median(path_seconds):.1f} s, max {max(path_seconds):.1f} s"
    )
    for step, values in timings.items():
        print(f"  {step}: min {min(values):.2f} s, max {max(values):.2f} s")
    print(f"peak RSS {peak_gib():.2f} GiB")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--landing", type=Path)
    parser.add_argument("--generate", choices=("tiny", "small", "medium"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    if not args.generate and not (args.registry and args.landing):
        parser.error("give --registry and --landing, or --generate SCALE")
    with tempfile.TemporaryDirectory(prefix="bench-daily-") as scratch:
        work = Path(scratch)
        if args.generate:
            registry_db, landing = generate(args.generate, args.seed, work)
        else:
            registry_db, landing = args.registry.resolve(), args.landing.resolve()
        failures = run(registry_db, landing, args.days, work)
    if failures:
        raise SystemExit(f"FAIL: the moved metrics differed from a rebuild on {failures} day(s)")
    print("OK: every day's metrics equal a rebuild's, package by package")


if __name__ == "__main__":
    main()

"""Benchmark: the daily path, day after day, as the `daily` deployment runs it, against
peers computing the same day from the raw landing files.

Usage:
    python bench/bench_daily.py --registry bench/out/npm/registry.db \\
        --landing bench/out/npm/landing [--days 7] [--peers pandas,duckdb,polars] \\
        [--manifests 20000]
    python bench/bench_daily.py --generate small      # a quick check on a fresh sample

The polars peer needs the bench extra: `pip install -e '.[bench]'`.

A fresh warehouse ingests the sample's landing files except the last ``--days``
downloads files and computes the metrics and cohorts of the day after the last one
loaded (not timed: the state a deployment has the morning before). Then, day by day,
each held-back file goes through the daily path in a child process of its own (as a
flow run is), each step on a connection of its own (as the flow's tasks open it), timed:

- ``rollout ingest`` of the day's file, with the registry extract;
- ``compute_metrics`` for the next day: the kept download windows moved by a day, the
  kept dependents counts reused;
- ``build_cohorts`` on that day's metrics (the registry as just extracted).

With ``--manifests N`` each day also brings a manifests file, as a registry's day does:
N packages published again (each drops a dependency and most take another) and N/40 new
ones, written before the day (not timed) from the sample's manifests into the bench's
own landing folder (the sample's files linked in); the day's ingest loads it with the
downloads file, the kept latest manifests and dependents counts move by it, and the
peers read it too.

Its peak RSS is the daily path's. Then, each day (not part of the path):

- the metrics are computed again from scratch (``rebuild=True``) in a copy of the
  warehouse (the next day moves what the day kept), timed: the in-run baseline; every
  package's row of the two, and what the dependents counts leave out, are compared;
- each peer of ``bench_metrics.py`` (expert pandas + pyarrow, a DuckDB script, a polars
  script) computes the day's metrics and both cohorts from the landing files, in a
  child process, timed whole (its scans and the registry tables it reads included, as
  rollout's path includes the ingest and the registry extract); every package's row is
  compared with rollout's, and each cohort's packages qualifying that day, their
  accounts and those without 2FA with rollout's snapshot of the day.

Any difference fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from bench_plan import PLAN, fitted_plan
from peak import own_peak_gib as peak_gib
from registry_copy import copy_registry

ROOT = Path(__file__).resolve().parents[1]
METRICS = "select * from package_metrics_daily where as_of = $as_of order by package"
EXCLUSIONS = (
    "select self_dependencies, unknown_dependencies, unknown_packages "
    "from metrics_runs where as_of = $as_of"
)


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


def linked_landing(landing: Path, work: Path) -> Path:
    """A landing folder of the bench's own, its files hard links to the sample's (a
    copy across file systems), where each day's manifests file is written."""
    own = work / "landing"
    for source in sorted(landing.rglob("*")):
        if source.is_file():
            target = own / source.relative_to(landing)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                print(f"copying {source} (no hard link across file systems)")
                shutil.copy2(source, target)
    return own


def write_manifests(landing: Path, day: date, count: int) -> Path:
    """The manifests published on ``day``: ``count`` of the sample's packages again,
    each with a new version, its first dependency dropped and another package taken
    on (when one of two drawn is not among its dependencies already), and
    ``count // 40`` new packages depending on three each. Named to sort after the
    sample's manifests.parquet and the days before, the order rollout loaded them in,
    which the peers read the latest manifest by."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    bulk = landing / "manifests" / "manifests.parquet"
    rng = np.random.default_rng(day.toordinal())
    names = pq.read_table(bulk, columns=["name"]).column("name")
    if count > len(names):
        raise SystemExit(f"FAIL: --manifests {count}: the sample has {len(names)} packages")
    picked = names.take(rng.choice(len(names), size=count, replace=False)).to_pylist()
    rows = pq.read_table(bulk, filters=[("name", "in", picked)]).to_pylist()
    others = names.take(rng.integers(0, len(names), size=count * 2)).to_pylist()
    for row, first, second in zip(rows, others[::2], others[1::2], strict=True):
        row["version"] = f"{row['version']}-r{day:%Y%m%d}"
        taken = {key for key, _ in row["dependencies"][1:]} | {row["name"]}
        added = [(name, "^1.0.0") for name in (first, second) if name not in taken][:1]
        row["dependencies"] = row["dependencies"][1:] + added
    for index in range(count // 40):
        depends = {name: "^1.0.0" for name in others[3 * index : 3 * index + 3]}
        rows.append(
            {
                "name": f"bench-published-{day:%Y%m%d}-{index}",
                "version": "1.0.0",
                "dependencies": list(depends.items()),
                "devDependencies": [],
                "peerDependencies": [],
                "maintainers": rows[index]["maintainers"],
            }
        )
    path = landing / "manifests" / f"manifests_{day}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(bulk)), path)
    order = sorted((landing / "manifests").glob("*.parquet"))
    if order[0] != bulk or order[-1] != path:
        raise SystemExit(f"FAIL: {path.name} does not sort after the manifests before it")
    return path


def setup(registry_url: str, before: list[Path], landing: Path, work: Path) -> date:
    """The morning before: everything but the held-back files loaded, that day's
    metrics and cohorts built. Returns the day."""
    from rollout import cohorts, metrics, warehouse
    from rollout.registry import Registry
    from rollout.warehouse import extract, ingest

    as_of = day_of(before[-1]) + timedelta(days=1)
    plan = fitted_plan(as_of)
    with (
        Registry(registry_url) as registry,
        warehouse.open_warehouse(work / "warehouse.duckdb") as con,
    ):
        others = [landing / kind for kind in ("manifests", "logins", "publishes")]
        report = ingest.ingest(
            con,
            [*before, *(path for path in others if path.exists())],
            quarantine_limit=0.01,
            landing_root=landing,
        )
        if report.rejected:
            raise SystemExit(f"FAIL: the sample did not ingest cleanly: {report.rejected}")
        extract.extract_registry(con, registry)
        metrics.compute_metrics(con, as_of, plan.metrics)
        cohorts.build_cohorts(
            con, registry, plan, as_of, actor="bench", refresh_registry=False, allow_gaps=True
        )
    return as_of


def daily_path(
    work: Path,
    landing: Path,
    path: Path,
    memory_limit: str | None = None,
    manifests: Path | None = None,
) -> dict[str, float]:
    """One day's path (run in a child): each step opens the warehouse, as the flow's
    tasks do, so nothing is carried over in a connection; with DuckDB's memory limit
    ``memory_limit`` (ROLLOUT_DUCKDB_MEMORY_LIMIT in a deployment) when given. The
    day's ``manifests`` file, if any, is ingested with its downloads file."""
    from rollout import cohorts, metrics, warehouse
    from rollout.registry import Registry
    from rollout.warehouse import extract, ingest

    as_of = day_of(path) + timedelta(days=1)
    # Fitted to this day: a cohort the setup's day fixed is fixed on every later one.
    plan = fitted_plan(as_of)
    warehouse_path = work / "warehouse.duckdb"
    seconds: dict[str, float] = {}
    with Registry(f"sqlite:///{work / 'registry.db'}") as registry:
        clock = time.perf_counter()
        with warehouse.open_warehouse(warehouse_path, memory_limit=memory_limit) as con:
            files = [path] if manifests is None else [path, manifests]
            report = ingest.ingest(con, files, quarantine_limit=0.01, landing_root=landing)
            if report.rejected:
                raise SystemExit(f"FAIL: the day's files did not ingest cleanly: {report.rejected}")
            extract.extract_registry(con, registry)
        seconds["ingest"] = time.perf_counter() - clock
        seconds["peak_after_ingest"] = peak_gib()
        clock = time.perf_counter()
        with warehouse.open_warehouse(warehouse_path, memory_limit=memory_limit) as con:
            metrics.compute_metrics(con, as_of, plan.metrics)
        seconds["metrics"] = time.perf_counter() - clock
        seconds["peak_after_metrics"] = peak_gib()
        clock = time.perf_counter()
        with warehouse.open_warehouse(warehouse_path, memory_limit=memory_limit) as con:
            cohorts.build_cohorts(
                con, registry, plan, as_of, actor="bench", refresh_registry=False, allow_gaps=True
            )
        seconds["cohorts"] = time.perf_counter() - clock
    return {**seconds, "peak_gib": peak_gib()}


# Rollout's cohorts of the day, as the peers compute them: the packages qualifying that
# day (the snapshot keeps earlier ones too: cohorts are sticky), their accounts, and
# those without 2FA.
QUALIFYING = """
select distinct lower(package) from cohort_package_snapshots
where as_of = $as_of and cohort = $cohort and qualifies_today
"""
ACCOUNTS = """
select account_id, tfa_status = 'none' from cohort_account_snapshots
where as_of = $as_of and cohort = $cohort
  and list_has_any(list_transform(packages, lambda p: lower(p)), $keys)
"""


def rollout_answer(con: object, as_of: date, work: Path) -> dict[str, dict]:
    """The day's metrics into rollout-metrics.parquet, and its cohorts."""
    from bench_metrics import ROLLOUT_METRICS, cohort_answer

    target = str(work / ROLLOUT_METRICS).replace("'", "''")
    con.execute(  # type: ignore[attr-defined]
        f"copy (select * exclude (as_of) from package_metrics_daily where as_of = $as_of) "
        f"to '{target}' (format parquet)",
        {"as_of": as_of},
    )
    answer = {}
    cohorts = con.execute(  # type: ignore[attr-defined]
        "select distinct cohort from cohort_package_snapshots where as_of = $as_of",
        {"as_of": as_of},
    ).fetchall()
    for (cohort,) in cohorts:
        params = {"as_of": as_of, "cohort": cohort}
        keys = [row[0] for row in con.execute(QUALIFYING, params).fetchall()]  # type: ignore[attr-defined]
        accounts = con.execute(ACCOUNTS, {**params, "keys": keys}).fetchall()  # type: ignore[attr-defined]
        answer[cohort] = cohort_answer(
            keys, [a for a, _ in accounts], [a for a, without in accounts if without]
        )
    return answer


def run(
    registry_db: Path,
    landing: Path,
    days: int,
    peers: list[str],
    work: Path,
    memory_limit: str | None = None,
    manifests: int = 0,
) -> int:
    from bench_metrics import compare_cohorts, compare_metrics, run_child, run_part

    from rollout import metrics, warehouse
    from rollout.core.plan import load_plan

    plan = load_plan(PLAN)
    daily = sorted((landing / "downloads").glob("downloads-*.parquet"), key=day_of)
    if len(daily) <= days:
        raise SystemExit(f"FAIL: {landing} has {len(daily)} daily files, need more than {days}")
    held, before = daily[-days:], daily[:-days]
    if manifests:
        landing = linked_landing(landing, work)
        held = [landing / "downloads" / path.name for path in held]
        before = [landing / "downloads" / path.name for path in before]
    registry_url = copy_registry(registry_db, work)
    started = time.perf_counter()
    setup(registry_url, before, landing, work)
    print(f"setup (not timed): {len(before)} daily files, {time.perf_counter() - started:.1f} s")
    failures = 0
    steps = ("ingest", "metrics", "cohorts", "path", "peak_gib", "rebuild", *peers)
    timings: dict[str, list[float]] = {step: [] for step in steps}
    print("day         " + "  ".join(f"{step:>8}" for step in steps) + "  same")
    for path in held:
        as_of = day_of(path) + timedelta(days=1)
        limit = ["--memory-limit", memory_limit] if memory_limit else []
        if manifests:
            published = write_manifests(landing, day_of(path), manifests)
            limit += ["--day-manifests", str(published)]
        os.sync()  # the writes before (the day's manifests too) flushed first
        arguments = ["--day", str(path), "--work", str(work), "--landing", str(landing)]
        day = run_child(__file__, [*arguments, *limit], f"the daily path of {as_of}")
        day["path"] = day["ingest"] + day["metrics"] + day["cohorts"]
        problems: list[str] = []
        with warehouse.open_warehouse(work / "warehouse.duckdb") as con:
            answer = rollout_answer(con, as_of, work)
            moved = con.execute(METRICS, {"as_of": as_of}).fetchall()
            moved_run = con.execute(EXCLUSIONS, {"as_of": as_of}).fetchone()
        # The rebuild in a copy: the next day moves what this one kept, as in a
        # deployment (a rebuild in place would hand it counts made whole every day).
        copy = work / "rebuild.duckdb"
        shutil.copyfile(work / "warehouse.duckdb", copy)
        with warehouse.open_warehouse(copy) as con:
            clock = time.perf_counter()
            metrics.compute_metrics(con, as_of, plan.metrics, rebuild=True)
            day["rebuild"] = time.perf_counter() - clock
            rebuilt = con.execute(METRICS, {"as_of": as_of}).fetchall()
            rebuilt_run = con.execute(EXCLUSIONS, {"as_of": as_of}).fetchone()
        copy.unlink()
        if moved != rebuilt or not moved:
            differing = [a[1] for a, b in zip(moved, rebuilt, strict=False) if a != b][:5]
            problems.append(f"rebuild: {len(moved)} rows against {len(rebuilt)}; {differing}")
        if moved_run != rebuilt_run:
            problems.append(f"exclusions: {moved_run} kept against {rebuilt_run} rebuilt")
        for peer in peers:
            result = run_part(peer, work, as_of, landing)
            # From the raw files, reading the registry tables included (rollout's
            # path includes its registry extract too).
            day[peer] = result["seconds"] + result["load_seconds"]
            problems += [f"{peer}: {line}" for line in compare_metrics(work, peer)]
            problems += [
                f"{peer}: {line}" for line in compare_cohorts(answer, peer, result["cohorts"])
            ]
        for step in steps:
            timings[step].append(day[step])
        # The process's peak as it stood after each step: which step raised it.
        print(
            f"  peak GiB after ingest {day['peak_after_ingest']:.2f}, after metrics "
            f"{day['peak_after_metrics']:.2f}, after cohorts {day['peak_gib']:.2f}"
        )
        failures += bool(problems)
        print(f"{as_of}  " + "  ".join(f"{day[step]:8.1f}" for step in steps) + f"  {not problems}")
        print(
            "  rollout's cohorts: "
            + ", ".join(f"{cohort} {found['sizes']}" for cohort, found in answer.items())
            + " (packages qualifying, accounts, without 2FA)"
        )
        for line in problems:
            print(f"  FAIL {line}")
    print("\nover the days (min, median, max):")
    for step, values in timings.items():
        print(
            f"  {step}: {min(values):.2f}, {statistics.median(values):.2f}, {max(values):.2f}"
            + (" GiB" if step == "peak_gib" else " s")
        )
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--landing", type=Path)
    parser.add_argument("--generate", choices=("tiny", "small", "medium"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument(
        "--peers",
        default="pandas,duckdb,polars",
        help="comma-separated peers of bench_metrics.py to run each day ('' for none)",
    )
    parser.add_argument(
        "--memory-limit", help="DuckDB's memory limit for the daily path (e.g. 5GB)"
    )
    parser.add_argument(
        "--manifests",
        type=int,
        default=0,
        metavar="N",
        help="each day also brings a manifests file: N packages published again, N/40 new",
    )
    parser.add_argument("--day", type=Path, help=argparse.SUPPRESS)  # a child: one day
    parser.add_argument("--day-manifests", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.day:
        path = daily_path(args.work, args.landing, args.day, args.memory_limit, args.day_manifests)
        print(json.dumps(path))
        return
    peers = [peer for peer in args.peers.split(",") if peer]
    if not args.generate and not (args.registry and args.landing):
        parser.error("give --registry and --landing, or --generate SCALE")
    with tempfile.TemporaryDirectory(prefix="bench-daily-") as scratch:
        work = Path(scratch)
        if args.generate:
            registry_db, landing = generate(args.generate, args.seed, work)
        else:
            registry_db, landing = args.registry.resolve(), args.landing.resolve()
        failures = run(
            registry_db, landing, args.days, peers, work, args.memory_limit, args.manifests
        )
    if failures:
        raise SystemExit(f"FAIL: rollout differed from a rebuild or a peer on {failures} day(s)")
    print("OK: every day's metrics equal a rebuild's and every peer's, package by package")


if __name__ == "__main__":
    main()

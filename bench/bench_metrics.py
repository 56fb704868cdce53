"""Benchmark: metrics plus cohorts at npm scale, against plain pandas and the bare floor.

Usage:
    python bench/bench_metrics.py --warehouse bench/out/warehouse/warehouse.duckdb \\
        --registry bench/out/npm/registry.db [--as-of 2022-02-01]

Inputs come from bench/bench_sample.py (npm scale) and bench/bench_ingest.py. Both
are copied to a scratch folder first, so the run is repeatable. Each part runs in a
child process of its own so its peak memory is its own:

- rollout: the registry extract (timed apart: in the daily flow the ingest does it),
  then ``compute_metrics`` and ``build_cohorts`` (both cohorts of the reference plan,
  registry writes, snapshots);
- floor: the bare DuckDB aggregates (weekly/monthly sums, dependents by name);
- pandas: the same definitions written plainly in pandas, from the same raw tables
  (loading them into pandas is timed apart and not counted), and checked to give
  the same cohort sizes.

Targets (issue 3): rollout at most 60 s and 6 GB; at least 5x faster than pandas.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from registry_copy import copy_registry


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def run_rollout(work: Path, as_of: date) -> dict[str, object]:
    """As the daily flow runs it: the registry extract belongs to the ingest before
    (timed apart, like pandas' loading), then metrics and cohorts."""
    from rollout import cohorts, extract, metrics, warehouse
    from rollout.plan import load_plan

    plan = load_plan(Path(__file__).resolve().parents[1] / "plans" / "npm-2022.yaml")
    registry = f"sqlite:///{work / 'registry.db'}"
    with warehouse.open_warehouse(work / "warehouse.duckdb") as con:
        extracting = time.perf_counter()
        extract.extract_registry(con, registry)
        extract_seconds = time.perf_counter() - extracting
        os.sync()  # what the extract wrote is flushed before the timed part, as above
        started = time.perf_counter()
        metrics.compute_metrics(con, as_of, plan.metrics)
        metrics_seconds = time.perf_counter() - started
        results = cohorts.build_cohorts(
            con, registry, plan, as_of, actor="bench", refresh_registry=False
        )
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "metrics_seconds": metrics_seconds,
        "extract_seconds": extract_seconds,
        "peak_gib": peak_gib(),
        "sizes": {r.cohort: [r.packages, r.accounts, r.accounts_without_2fa] for r in results},
    }


def run_floor(work: Path, as_of: date) -> dict[str, object]:
    import duckdb

    con = duckdb.connect(str(work / "warehouse.duckdb"), read_only=True)
    # Results stay in DuckDB (temp tables): fetching millions of rows into Python
    # would measure the fetch, not the aggregate.
    started = time.perf_counter()
    con.execute(
        "create temp table windows as "
        "select package, sum(downloads) filter (where day >= $w), sum(downloads) "
        "from raw_downloads where day between $m and $e group by package",
        {
            "w": as_of - timedelta(days=7),
            "m": as_of - timedelta(days=30),
            "e": as_of - timedelta(days=1),
        },
    )
    con.execute(
        "create temp table counts as "
        "select dependency, kind, count(*) from raw_dependencies group by all"
    )
    return {"seconds": time.perf_counter() - started, "peak_gib": peak_gib()}


def run_pandas(work: Path, as_of: date) -> dict[str, object]:
    import duckdb
    import numpy as np
    import pandas as pd

    con = duckdb.connect(str(work / "warehouse.duckdb"), read_only=True)
    loading = time.perf_counter()
    downloads = con.execute("select package, day, downloads from raw_downloads").df()
    manifests = con.execute("select name, maintainers, file_id, ordinal from raw_manifests").df()
    dependencies = con.execute(
        "select file_id, ordinal, dependency, kind from raw_dependencies"
    ).df()
    accounts = con.execute("select id, username from registry.accounts").df()
    factors = con.execute(
        "select account_id, kind from registry.tfa_factors where removed_at is null"
    ).df()
    teams = con.execute(
        "select tp.package_name, tm.account_id from registry.team_packages tp "
        "join registry.team_members tm using (team_id) join registry.teams t on t.id = tp.team_id "
        "join registry.org_members om on om.org_id = t.org_id and om.account_id = tm.account_id "
        "where tp.permission = 'write' and om.removed_at is null"
    ).df()
    load_seconds = time.perf_counter() - loading

    started = time.perf_counter()
    # Latest manifest per package: the newest file wins.
    latest = manifests.sort_values("file_id").drop_duplicates("name", keep="last")
    # Downloads windows.
    downloads["day"] = pd.to_datetime(downloads["day"])
    end = pd.Timestamp(as_of - timedelta(days=1))
    monthly_rows = downloads[downloads["day"].between(end - pd.Timedelta(days=29), end)]
    monthly = monthly_rows.groupby("package")["downloads"].sum()
    weekly = (
        monthly_rows[monthly_rows["day"] >= end - pd.Timedelta(days=6)]
        .groupby("package")["downloads"]
        .sum()
    )
    # Dependents: edges of latest manifests, no self-dependencies, known packages only.
    edges = dependencies.merge(latest[["file_id", "ordinal", "name"]], on=["file_id", "ordinal"])
    edges = edges[edges["dependency"] != edges["name"]]
    edges = edges[edges["dependency"].isin(latest["name"])]
    dependents = edges.groupby(["dependency", "kind"]).size().unstack(fill_value=0)
    table = pd.DataFrame({"package": latest["name"].to_numpy()})
    table["weekly"] = table["package"].map(weekly).fillna(0).astype("int64")
    table["monthly"] = table["package"].map(monthly).fillna(0).astype("int64")
    for kind in ("prod", "dev", "peer"):
        column = dependents[kind] if kind in dependents else pd.Series(dtype="int64")
        table[kind] = table["package"].map(column).fillna(0).astype("int64")
    table = table.sort_values(["prod", "package"], ascending=[False, True])
    table["rank_by_dependents"] = np.arange(1, len(table) + 1)
    table = table.sort_values(["weekly", "package"], ascending=[False, True])
    table["rank_by_downloads"] = np.arange(1, len(table) + 1)
    # Cohorts: qualifying packages, then the accounts that can publish them.
    rules = {
        "top-100": table["rank_by_dependents"] <= 100,
        "high-impact": (table["weekly"] > 1_000_000) | (table["prod"] >= 500),
    }
    usernames = latest[["name", "maintainers"]].explode("maintainers")
    with_2fa = set(factors["account_id"])
    sizes = {}
    for cohort, selected in rules.items():
        keys = set(table.loc[selected, "package"].str.lower())
        listed = usernames[usernames["name"].str.lower().isin(keys)]
        via_listing = listed.merge(accounts, left_on="maintainers", right_on="username")["id"]
        via_team = teams[teams["package_name"].str.lower().isin(keys)]["account_id"]
        members = set(via_listing) | set(via_team)
        sizes[cohort] = [len(keys), len(members), len(members - with_2fa)]
    return {
        "seconds": time.perf_counter() - started,
        "load_seconds": load_seconds,
        "peak_gib": peak_gib(),
        "sizes": sizes,
    }


PARTS = {"rollout": run_rollout, "floor": run_floor, "pandas": run_pandas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path)
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2022, 2, 1))
    parser.add_argument("--part", choices=sorted(PARTS))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.part:  # a child: one part, its result as JSON on stdout
        print(json.dumps(PARTS[args.part](args.work, args.as_of)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        work = Path(scratch)
        shutil.copy(args.warehouse, work / "warehouse.duckdb")
        copy_registry(args.registry, work)
        results = {}
        for part in ("rollout", "floor", "pandas"):
            # The copies above (3 GB) and the part before leave dirty pages: flushed
            # now, or the kernel writes them back during the part and it measures that.
            os.sync()
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--part",
                    part,
                    "--work",
                    str(work),
                    "--as-of",
                    args.as_of.isoformat(),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[part] = json.loads(done.stdout.strip().splitlines()[-1])
    rollout, floor, pandas = results["rollout"], results["floor"], results["pandas"]
    print("| part | wall s | peak GiB | note |\n|---|---|---|---|")
    print(
        f"| rollout metrics + cohorts | {rollout['seconds']:.1f} | {rollout['peak_gib']:.2f} "
        f"| metrics {rollout['metrics_seconds']:.1f} s; +{rollout['extract_seconds']:.1f} s "
        f"registry extract before, not counted; sizes {rollout['sizes']} |"
    )
    print(
        f"| bare DuckDB aggregates (floor) | {floor['seconds']:.1f} | {floor['peak_gib']:.2f} | |"
    )
    print(
        f"| plain pandas | {pandas['seconds']:.1f} | {pandas['peak_gib']:.2f} | "
        f"+{pandas['load_seconds']:.1f} s loading, not counted; sizes {pandas['sizes']} |"
    )
    print(f"\nratio pandas / rollout: {pandas['seconds'] / rollout['seconds']:.1f}x")
    same = rollout["sizes"] == pandas["sizes"]
    print(f"cohort sizes agree: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

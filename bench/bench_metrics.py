"""Benchmark: metrics plus cohorts from scratch, against three peers and the floor.

Usage:
    python bench/bench_metrics.py --warehouse bench/out/warehouse/warehouse.duckdb \\
        --registry bench/out/npm/registry.db --landing bench/out/npm/landing \\
        [--as-of 2022-02-01]
    python bench/bench_metrics.py --generate small    # a quick check on a fresh sample

Inputs come from bench/bench_sample.py (npm scale) and bench/bench_ingest.py (the
warehouse ingested from that sample's landing folder). The warehouse and registry are
copied to a scratch folder first, so the run is repeatable. ``--generate SCALE``
instead makes a sample of that scale in the scratch folder (Parquet landing files
only, as at npm scale) and ingests it with ``rollout.warehouse.ingest``: seconds, not minutes,
for checking that the two computations agree. Each part runs in a child process of
its own so its peak memory is its own:

- rollout: the registry extract (timed apart: in the daily flow the ingest does it),
  then ``compute_metrics`` from scratch (``rebuild=True``: nothing an earlier run kept
  is used) and ``build_cohorts`` (both cohorts of the reference plan, registry writes,
  snapshots);
- floor: the bare DuckDB aggregates (weekly/monthly sums, dependents by name);
- pandas: the same definitions as an expert writes them with pandas and pyarrow, from
  the landing Parquet files rollout ingested: pyarrow dataset scans with the day
  window pushed down to the Parquet statistics, Arrow-backed strings throughout,
  dependency map keys flattened through the Arrow list offsets and matched to
  packages by one hash lookup, counts and sums on integer codes, each rank one stable
  sort of the name-sorted table. The scans (and reading the registry tables from the
  warehouse's extract) are timed apart from the computation, as rollout's ingest and
  extract are;
- duckdb: the same as one DuckDB SQL script over ``read_parquet`` of the landing files;
- polars: the same as a polars script (lazy scans, ``map.keys()``, group-bys, ordinal
  ranks after one sort by name; needs the bench extra, ``pip install -e '.[bench]'``).
  For both, only reading the registry tables is timed apart.

Checked afterwards, exiting non-zero on any difference: every column of every
package's ``package_metrics_daily`` row for the as-of day (downloads, dependents,
ranks) between rollout and each peer, reporting the first differing packages; each
cohort's packages, accounts and accounts without 2FA (as sets, and as the counts
``build_cohorts`` reports); the floor's download totals and edge counts by kind
against the same totals from the pandas scans.

Targets: rollout at most 60 s and 6 GB (issue 3); from scratch, within 1.5x of the
floor (issue 16). Issue 3's "5x faster than pandas" was against a weak baseline and
does not hold against this one (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench_plan import PLAN, fitted_plan
from peak import own_peak_gib as peak_gib
from registry_copy import copy_registry

ROOT = Path(__file__).resolve().parents[1]
ROLLOUT_METRICS = "rollout-metrics.parquet"
MAPS = {"dependencies": "prod", "devDependencies": "dev", "peerDependencies": "peer"}
SHOW = 5  # differing packages shown


def windows(as_of: date) -> tuple[date, date, date]:
    """First day of the monthly window, first day of the weekly one, the last day."""
    from rollout.core.plan import load_plan

    metrics = load_plan(PLAN).metrics
    return (
        as_of - timedelta(days=metrics.monthly_window_days),
        as_of - timedelta(days=metrics.weekly_window_days),
        as_of - timedelta(days=1),
    )


def judged_at(as_of: date) -> str:
    """When a cohort build of ``as_of`` judges each account's 2FA, as rollout does for a
    past day (``rollout.cohorts._tfa_at``: as the day ended): the sample's registry also
    holds the factors its later days add and remove, which the registry's current rows
    (``removed_at is null``) would count. A SQL timestamp literal, as stored."""
    return f"{as_of + timedelta(days=1):%Y-%m-%d} 00:00:00.000000"


def factors_held(as_of: date, table: str = "registry.tfa_factors") -> str:
    """The accounts holding a factor as a build of ``as_of`` judges them."""
    at = judged_at(as_of)
    return (
        f"select distinct account_id from {table} where created_at < '{at}' "
        f"and (removed_at is null or removed_at >= '{at}')"
    )


def run_rollout(work: Path, as_of: date, landing: Path) -> dict[str, Any]:
    """As the daily flow runs it: the registry extract belongs to the ingest before
    (timed apart, like pandas' loading), then metrics and cohorts."""
    from rollout import cohorts, metrics, warehouse
    from rollout.registry import Registry
    from rollout.warehouse import extract

    plan = fitted_plan(as_of)
    registry = Registry(f"sqlite:///{work / 'registry.db'}")
    with registry, warehouse.open_warehouse(work / "warehouse.duckdb") as con:
        extracting = time.perf_counter()
        extract.extract_registry(con, registry)
        extract_seconds = time.perf_counter() - extracting
        os.sync()  # what the extract wrote is flushed before the timed part, as above
        started = time.perf_counter()
        # From scratch, as the peers compute: the windows summed whole and the
        # dependents counted whole, whatever an earlier run kept in the warehouse.
        metrics.compute_metrics(con, as_of, plan.metrics, rebuild=True)
        metrics_seconds = time.perf_counter() - started
        results = cohorts.build_cohorts(
            con, registry, plan, as_of, actor="bench", refresh_registry=False
        )
        seconds = time.perf_counter() - started
        peak = peak_gib()
        # Not timed: the answer, for the comparison with pandas.
        target = str(work / ROLLOUT_METRICS).replace("'", "''")
        con.execute(
            f"copy (select * exclude (as_of) from package_metrics_daily where as_of = $as_of) "
            f"to '{target}' (format parquet)",
            {"as_of": as_of},
        )
    with sqlite3.connect(work / "registry.db") as db:
        packages = db.execute(
            "select cohort, package_key from cohort_packages where released_at is null"
        ).fetchall()
        members = db.execute(
            "select cohort, account_id from cohort_memberships "
            "where left_on is null and released_at is null"
        ).fetchall()
        with_2fa = {row[0] for row in db.execute(factors_held(as_of, "tfa_factors"))}
    answer: dict[str, Any] = {}
    for r in results:
        accounts = sorted(a for c, a in members if c == r.cohort)
        answer[r.cohort] = {
            "sizes": [r.packages, r.accounts, r.accounts_without_2fa],
            "packages": sorted(k for c, k in packages if c == r.cohort),
            "accounts": accounts,
            "without_2fa": sorted(set(accounts) - with_2fa),
        }
    return {
        "seconds": seconds,
        "metrics_seconds": metrics_seconds,
        "extract_seconds": extract_seconds,
        "peak_gib": peak,
        "cohorts": answer,
    }


def run_floor(work: Path, as_of: date, landing: Path) -> dict[str, Any]:
    import duckdb

    month, week, end = windows(as_of)
    con = duckdb.connect(str(work / "warehouse.duckdb"), read_only=True)
    # Results stay in DuckDB (temp tables): fetching millions of rows into Python
    # would measure the fetch, not the aggregate.
    started = time.perf_counter()
    con.execute(
        "create temp table windows as "
        "select package, sum(downloads) filter (where day >= $w) as weekly, "
        "sum(downloads) as monthly "
        "from raw_downloads where day between $m and $e group by package",
        {"w": week, "m": month, "e": end},
    )
    con.execute(
        "create temp table counts as "
        "select dependency, kind, count(*) as edges from raw_dependencies group by all"
    )
    seconds = time.perf_counter() - started
    peak = peak_gib()
    # Not timed: totals to check against the pandas scans.
    packages, weekly, monthly = con.execute(
        "select count(*), coalesce(sum(weekly), 0)::bigint, coalesce(sum(monthly), 0)::bigint "
        "from windows"
    ).fetchone()
    edges = dict(
        con.execute("select kind, sum(edges)::bigint from counts group by kind").fetchall()
    )
    return {
        "seconds": seconds,
        "peak_gib": peak,
        "totals": {
            "packages with downloads": packages,
            "weekly downloads": weekly,
            "monthly downloads": monthly,
            **{f"{kind} edges": edges.get(kind, 0) for kind in MAPS.values()},
        },
    }


def run_pandas(work: Path, as_of: date, landing: Path) -> dict[str, Any]:
    """Package metrics and cohorts from the landing files, with pandas and pyarrow."""
    import duckdb
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from rollout.core.plan import load_plan

    plan = load_plan(PLAN)
    month, week, end = windows(as_of)

    # --- loading: the scans, and the registry tables from the warehouse's extract ---
    loading = time.perf_counter()
    downloads = ds.dataset(landing / "downloads", format="parquet").to_table(
        columns=["package", "day", "downloads"],
        # Pushed down: row groups (here whole daily files) outside the window are skipped
        # on their statistics, never decoded.
        filter=(pc.field("day") >= pa.scalar(month)) & (pc.field("day") <= pa.scalar(end)),
    )
    # Files in name order; a package's latest manifest is the last file's (rollout
    # loads a folder in the same order, and the newest loaded file wins).
    manifest_files = sorted((landing / "manifests").glob("*.parquet"))
    manifests = pa.concat_tables(
        pq.read_table(path, columns=["name", *MAPS, "maintainers"]) for path in manifest_files
    )
    con = duckdb.connect(str(work / "warehouse.duckdb"), read_only=True)

    def registry(query: str) -> pd.DataFrame:
        return con.sql(query).to_arrow_table().to_pandas(types_mapper=pd.ArrowDtype)

    accounts = registry("select id, username from registry.accounts")
    factors = registry(factors_held(as_of))
    team_packages = registry(
        "select team_id, package_name from registry.team_packages where permission = 'write'"
    )
    teams = registry("select id as team_id, org_id from registry.teams")
    orgs = registry("select id as org_id from registry.orgs")
    team_members = registry("select team_id, account_id from registry.team_members")
    org_members = registry(
        "select org_id, account_id from registry.org_members where removed_at is null"
    )
    con.close()
    load_seconds = time.perf_counter() - loading

    # --- the computation ---
    started = time.perf_counter()
    if len(manifest_files) > 1:  # the latest manifest per name: the last file's row
        latest = ~manifests.column("name").to_pandas().duplicated(keep="last").to_numpy()
        manifests = manifests.filter(pa.array(latest))
    names = manifests.column("name").combine_chunks()
    count = len(names)
    table = pd.DataFrame({"package": names.to_pandas(types_mapper=pd.ArrowDtype)})
    # Packages as a categorical of their positions: a count or sum grouped by it comes
    # out in the table's order, zeros included, with no hashing of the codes.
    positions = pd.CategoricalDtype(pd.RangeIndex(count))

    # Each dependency map's keys, flattened through its list offsets (no per-manifest
    # Python), with the position of the manifest that lists them.
    keys, owners, edges = [], [], {}
    for column, kind in MAPS.items():
        maps = manifests.column(column).combine_chunks()
        offsets = maps.offsets.to_numpy()
        keys.append(maps.keys.slice(offsets[0], offsets[-1] - offsets[0]))
        owners.append(np.repeat(np.arange(count, dtype=np.int32), np.diff(offsets)))
        edges[f"{kind} edges"] = int(offsets[-1] - offsets[0])
    # Every name (dependency keys, then the downloads' packages) matched to a package
    # position in one hash lookup: one hash table of the 4M names, not one per column.
    # A name with no manifest gets -1 and drops out of the counts and sums.
    pieces = [*keys, *downloads.column("package").chunks]
    found = pc.fill_null(pc.index_in(pa.chunked_array(pieces), value_set=names), -1)
    bounds = np.cumsum([0, *(len(piece) for piece in pieces)])

    def codes(first: int, last: int) -> np.ndarray:
        return found.slice(bounds[first], bounds[last] - bounds[first]).to_numpy()

    # Dependents: an edge to the manifest's own package is not a dependent.
    for i, column in enumerate(("dependents", "dev_dependents", "peer_dependents")):
        target = codes(i, i + 1)
        target = np.where(target == owners[i], -1, target)
        counts = pd.Series(pd.Categorical.from_codes(target, dtype=positions))
        table[column] = counts.value_counts(sort=False).to_numpy(np.int64)

    # Download windows (the scan kept the monthly one), grouped by package position.
    day = downloads.column("day")
    monthly = downloads.column("downloads").to_numpy()
    frame = pd.DataFrame(
        {
            "package": pd.Categorical.from_codes(codes(len(keys), len(pieces)), dtype=positions),
            "weekly_downloads": np.where(
                pc.greater_equal(day, pa.scalar(week)).to_numpy(), monthly, 0
            ),
            "monthly_downloads": monthly,
        }
    )
    sums = frame.groupby("package", observed=False)[["weekly_downloads", "monthly_downloads"]]
    table[["weekly_downloads", "monthly_downloads"]] = sums.sum().to_numpy(np.int64)

    # Ranks break ties by name: the table sorted by name once, then one stable sort on
    # the count for each rank.
    by_name = table.sort_values("package", kind="stable").index.to_numpy()
    for rank, value in (
        ("rank_by_dependents", "dependents"),
        ("rank_by_downloads", "weekly_downloads"),
    ):
        values = table[value].to_numpy()[by_name]
        order = by_name[np.argsort(-values, kind="stable")]
        ranks = np.empty(count, np.int64)
        ranks[order] = np.arange(1, count + 1)
        table[rank] = ranks

    # Cohorts: the packages meeting a rule (criteria OR), their latest manifests'
    # maintainers by lower-cased name, and the current org members of teams with write
    # access to them.
    lowered = pc.utf8_lower(names).to_pandas(types_mapper=pd.ArrowDtype)
    maintainers = manifests.column("maintainers").combine_chunks()
    listed = pd.DataFrame(
        {
            "owner": pc.list_parent_indices(maintainers).to_numpy(),
            "username": pc.utf8_trim(pc.list_flatten(maintainers), characters=" ").to_pandas(
                types_mapper=pd.ArrowDtype
            ),
        }
    )
    team_packages["key"] = team_packages["package_name"].str.lower()
    teams = teams.merge(orgs, on="org_id")
    with_2fa = pd.Index(factors["account_id"].unique())
    answer: dict[str, Any] = {}
    for cohort, rule in plan.cohorts.items():
        selected = np.zeros(count, bool)
        if rule.top_by_dependents is not None:
            selected |= (table["rank_by_dependents"].to_numpy() <= rule.top_by_dependents) & (
                table["dependents"].to_numpy() > 0
            )
        if rule.weekly_downloads_gt is not None:
            selected |= table["weekly_downloads"].to_numpy() > rule.weekly_downloads_gt
        if rule.dependents_gte is not None:
            selected |= table["dependents"].to_numpy() >= rule.dependents_gte
        package_keys = lowered[selected].unique()
        chosen = np.flatnonzero(lowered.isin(package_keys).to_numpy())
        via_listing = listed[listed["owner"].isin(chosen)].merge(accounts, on="username")["id"]
        via_team = (
            team_packages[team_packages["key"].isin(package_keys)]
            .merge(teams, on="team_id")
            .merge(team_members, on="team_id")
            .merge(org_members, on=["org_id", "account_id"])["account_id"]
        )
        members = pd.Index(pd.concat([via_listing, via_team]).unique())
        without = members.difference(with_2fa)
        answer[cohort] = {
            "sizes": [len(package_keys), len(members), len(without)],
            "packages": sorted(str(k) for k in package_keys),
            "accounts": sorted(int(a) for a in members),
            "without_2fa": sorted(int(a) for a in without),
        }
    seconds = time.perf_counter() - started
    peak = peak_gib()

    # Not timed: the answer for the comparison, and totals for the floor's check.
    pq.write_table(
        pa.Table.from_pandas(table, preserve_index=False), work / "pandas-metrics.parquet"
    )
    in_week = pc.greater_equal(downloads.column("day"), pa.scalar(week))
    # The floor counts every file's edges; these are the latest manifests' only.
    all_edges = {} if len(manifest_files) > 1 else edges
    totals = {
        "packages with downloads": pc.count_distinct(downloads.column("package")).as_py(),
        "weekly downloads": pc.sum(pc.filter(downloads.column("downloads"), in_week)).as_py() or 0,
        "monthly downloads": pc.sum(downloads.column("downloads")).as_py() or 0,
        **all_edges,
    }
    return {
        "seconds": seconds,
        "load_seconds": load_seconds,
        "peak_gib": peak,
        "cohorts": answer,
        "totals": totals,
        "rows": {"downloads in window": downloads.num_rows, "manifests": count},
    }


# The registry tables every peer's cohorts read, from the warehouse's extract (as
# pandas reads them above): loading, timed apart, as rollout's extract is. With the
# factors held as the day's build judges them (registry_queries).
REGISTRY_QUERIES = {
    "accounts": "select id, username from registry.accounts",
    "team_packages": "select team_id, package_name from registry.team_packages "
    "where permission = 'write'",
    "teams": "select id as team_id, org_id from registry.teams",
    "orgs": "select id as org_id from registry.orgs",
    "team_members": "select team_id, account_id from registry.team_members",
    "org_members": "select org_id, account_id from registry.org_members where removed_at is null",
}


def registry_queries(as_of: date) -> dict[str, str]:
    return {**REGISTRY_QUERIES, "factors": factors_held(as_of)}


def cohort_answer(package_keys: list[str], members: list[int], without: list[int]) -> dict:
    return {
        "sizes": [len(package_keys), len(members), len(without)],
        "packages": sorted(package_keys),
        "accounts": sorted(members),
        "without_2fa": sorted(without),
    }


def run_duckdb(work: Path, as_of: date, landing: Path) -> dict[str, Any]:
    """The same definitions as an analyst writes them in DuckDB SQL, from the landing
    files: one query for the metrics, one per cohort."""
    import duckdb

    from rollout.core.plan import load_plan

    plan = load_plan(PLAN)
    month, week, end = windows(as_of)
    con = duckdb.connect()
    target = str(work / "warehouse.duckdb").replace("'", "''")
    con.execute(f"attach '{target}' as wh (read_only)")
    loading = time.perf_counter()
    for name, query in registry_queries(as_of).items():
        con.execute(f"create temp table {name} as {query.replace('registry.', 'wh.registry.')}")
    load_seconds = time.perf_counter() - loading
    started = time.perf_counter()
    files = {
        "downloads": sorted(str(p) for p in (landing / "downloads").glob("*.parquet")),
        "manifests": sorted(str(p) for p in (landing / "manifests").glob("*.parquet")),
    }
    # The latest manifest per name: the last file's (files in name order, as rollout).
    con.execute(
        """
        create temp table latest as
        select name, maintainers, dependencies, devDependencies, peerDependencies
        from read_parquet($manifests, filename = true)
        qualify row_number() over (partition by name order by filename desc) = 1
        """,
        {"manifests": files["manifests"]},
    )
    con.execute(
        """
        create temp table metrics as
        with edges as (
            select name, unnest(map_keys(dependencies)) as dependency, 'prod' as kind from latest
            union all
            select name, unnest(map_keys(devDependencies)), 'dev' from latest
            union all
            select name, unnest(map_keys(peerDependencies)), 'peer' from latest
        ),
        counts as (
            select dependency,
                count(*) filter (where kind = 'prod') as dependents,
                count(*) filter (where kind = 'dev') as dev_dependents,
                count(*) filter (where kind = 'peer') as peer_dependents
            from edges where dependency <> name group by dependency
        ),
        sums as (
            select package, sum(downloads) filter (where day >= $week) as weekly,
                sum(downloads) as monthly
            from read_parquet($downloads) where day between $month and $end group by package
        ),
        joined as (
            select latest.name as package,
                coalesce(sums.weekly, 0)::bigint as weekly_downloads,
                coalesce(sums.monthly, 0)::bigint as monthly_downloads,
                coalesce(counts.dependents, 0) as dependents,
                coalesce(counts.dev_dependents, 0) as dev_dependents,
                coalesce(counts.peer_dependents, 0) as peer_dependents
            from latest
            left join sums on sums.package = latest.name
            left join counts on counts.dependency = latest.name
        )
        select *,
            row_number() over (order by dependents desc, package) as rank_by_dependents,
            row_number() over (order by weekly_downloads desc, package) as rank_by_downloads
        from joined
        """,
        {"downloads": files["downloads"], "month": month, "week": week, "end": end},
    )
    answer: dict[str, Any] = {}
    for cohort, rule in plan.cohorts.items():
        criteria = [
            f"(rank_by_dependents <= {rule.top_by_dependents} and dependents > 0)"
            if rule.top_by_dependents is not None
            else None,
            f"weekly_downloads > {rule.weekly_downloads_gt}"
            if rule.weekly_downloads_gt is not None
            else None,
            f"dependents >= {rule.dependents_gte}" if rule.dependents_gte is not None else None,
        ]
        where = " or ".join(c for c in criteria if c) or "false"
        con.execute(
            f"create or replace temp table chosen as "
            f"select distinct lower(package) as key from metrics where {where}"
        )
        con.execute(
            """
            create or replace temp table members as
            select accounts.id as account_id
            from (select trim(unnest(maintainers)) as username from latest
                  where lower(name) in (select key from chosen)) listed
            join accounts using (username)
            union
            select team_members.account_id
            from team_packages
            join teams using (team_id)
            join orgs using (org_id)
            join team_members using (team_id)
            join org_members using (org_id, account_id)
            where lower(team_packages.package_name) in (select key from chosen)
            """
        )
        keys = [row[0] for row in con.execute("select key from chosen").fetchall()]
        members = [row[0] for row in con.execute("select account_id from members").fetchall()]
        without = [
            row[0]
            for row in con.execute(
                "select account_id from members anti join factors using (account_id)"
            ).fetchall()
        ]
        answer[cohort] = cohort_answer(keys, members, without)
    seconds = time.perf_counter() - started
    peak = peak_gib()
    out = str(work / "duckdb-metrics.parquet").replace("'", "''")
    con.execute(f"copy metrics to '{out}' (format parquet)")
    return {"seconds": seconds, "load_seconds": load_seconds, "peak_gib": peak, "cohorts": answer}


def run_polars(work: Path, as_of: date, landing: Path) -> dict[str, Any]:
    """The same definitions as a polars user writes them: lazy scans with the day
    window pushed down, group-bys and joins, one sort per rank."""
    import duckdb
    import polars as pl

    from rollout.core.plan import load_plan

    plan = load_plan(PLAN)
    month, week, end = windows(as_of)
    loading = time.perf_counter()
    con = duckdb.connect(str(work / "warehouse.duckdb"), read_only=True)
    registry = {name: con.sql(query).pl() for name, query in registry_queries(as_of).items()}
    con.close()
    load_seconds = time.perf_counter() - loading
    started = time.perf_counter()
    manifest_files = sorted(str(p) for p in (landing / "manifests").glob("*.parquet"))
    # The latest manifest per name: the last file's (files scanned in name order, as
    # rollout loads them; a scan keeps the files' order).
    latest = pl.scan_parquet(manifest_files).select("name", "maintainers", *MAPS)
    if len(manifest_files) > 1:
        latest = latest.unique("name", keep="last", maintain_order=True)
    latest = latest.collect()
    edges = pl.concat(
        [
            latest.lazy()
            .select("name", pl.col(column).map.keys())
            .explode(column)
            .rename({column: "dependency"})
            .with_columns(kind=pl.lit(kind))
            for column, kind in MAPS.items()
        ]
    )
    counts = (
        edges.filter(pl.col("dependency").is_not_null() & (pl.col("dependency") != pl.col("name")))
        .group_by("dependency")
        .agg(
            dependents=(pl.col("kind") == "prod").sum(),
            dev_dependents=(pl.col("kind") == "dev").sum(),
            peer_dependents=(pl.col("kind") == "peer").sum(),
        )
    )
    sums = (
        pl.scan_parquet(sorted(str(p) for p in (landing / "downloads").glob("*.parquet")))
        .filter(pl.col("day").is_between(month, end))
        .group_by("package")
        .agg(
            weekly_downloads=pl.col("downloads").filter(pl.col("day") >= week).sum(),
            monthly_downloads=pl.col("downloads").sum(),
        )
    )
    metrics = (
        latest.lazy()
        .select(package="name")
        .join(sums, on="package", how="left")
        .join(counts, left_on="package", right_on="dependency", how="left")
        .with_columns(
            pl.col(
                "weekly_downloads",
                "monthly_downloads",
                "dependents",
                "dev_dependents",
                "peer_dependents",
            )
            .fill_null(0)
            .cast(pl.Int64)
        )
        # Sorted by name first: an ordinal rank then breaks ties by name.
        .sort("package")
        .with_columns(
            rank_by_dependents=pl.col("dependents").rank("ordinal", descending=True),
            rank_by_downloads=pl.col("weekly_downloads").rank("ordinal", descending=True),
        )
        .with_columns(pl.col("rank_by_dependents", "rank_by_downloads").cast(pl.Int64))
        .collect()
    )
    maintainers = (
        latest.select("name", "maintainers")
        .explode("maintainers")
        .select(
            key=pl.col("name").str.to_lowercase(),
            username=pl.col("maintainers").str.strip_chars(" "),
        )
        .join(registry["accounts"], on="username")
    )
    team_access = (
        registry["team_packages"]
        .with_columns(key=pl.col("package_name").str.to_lowercase())
        .join(registry["teams"], on="team_id")
        .join(registry["orgs"], on="org_id")
        .join(registry["team_members"], on="team_id")
        .join(registry["org_members"], on=["org_id", "account_id"])
    )
    with_2fa = registry["factors"]["account_id"].unique()
    answer: dict[str, Any] = {}
    for cohort, rule in plan.cohorts.items():
        selected = pl.lit(False)
        if rule.top_by_dependents is not None:
            selected |= (pl.col("rank_by_dependents") <= rule.top_by_dependents) & (
                pl.col("dependents") > 0
            )
        if rule.weekly_downloads_gt is not None:
            selected |= pl.col("weekly_downloads") > rule.weekly_downloads_gt
        if rule.dependents_gte is not None:
            selected |= pl.col("dependents") >= rule.dependents_gte
        keys = metrics.filter(selected)["package"].str.to_lowercase().unique()
        members = pl.concat(
            [
                maintainers.filter(pl.col("key").is_in(keys.implode()))["id"],
                team_access.filter(pl.col("key").is_in(keys.implode()))["account_id"],
            ]
        ).unique()
        without = members.filter(~members.is_in(with_2fa.implode()))
        answer[cohort] = cohort_answer(keys.to_list(), members.to_list(), without.to_list())
    seconds = time.perf_counter() - started
    peak = peak_gib()
    metrics.write_parquet(work / "polars-metrics.parquet")
    return {"seconds": seconds, "load_seconds": load_seconds, "peak_gib": peak, "cohorts": answer}


PARTS = {
    "rollout": run_rollout,
    "floor": run_floor,
    "pandas": run_pandas,
    "duckdb": run_duckdb,
    "polars": run_polars,
}
PEERS = ("pandas", "duckdb", "polars")


def compare_metrics(work: Path, peer: str) -> list[str]:
    """Every column of rollout's rows against the peer's, package by package."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ours = pq.read_table(work / ROLLOUT_METRICS)
    theirs = pq.read_table(work / f"{peer}-metrics.parquet")
    # polars writes large strings; the names compare the same either way.
    at = theirs.schema.get_field_index("package")
    theirs = theirs.set_column(at, "package", theirs.column(at).cast(pa.string()))
    problems = []
    columns = [c for c in ours.column_names if c != "package"]
    missing = [c for c in columns if c not in theirs.column_names]
    if missing:
        return [f"{peer} has no {', '.join(missing)} (rollout's row has)"]
    for name, t in (("rollout", ours), (peer, theirs)):
        repeated = t.num_rows - pc.count_distinct(t.column("package")).as_py()
        if repeated:
            problems.append(f"{name} has {repeated} repeated package rows")
    joined = ours.join(
        theirs.select(["package", *columns]),
        keys="package",
        join_type="full outer",
        left_suffix=" rollout",
        right_suffix=f" {peer}",
    )
    differs = pa.array(np.zeros(joined.num_rows, bool))
    for c in columns:
        unequal = pc.fill_null(pc.not_equal(joined[f"{c} rollout"], joined[f"{c} {peer}"]), True)
        differs = pc.or_(differs, unequal)
    bad = joined.filter(differs).sort_by("package")
    if bad.num_rows:
        problems.append(
            f"{bad.num_rows:,} of {joined.num_rows:,} packages differ (rollout {ours.num_rows:,} "
            f"rows, {peer} {theirs.num_rows:,}); the first {min(SHOW, bad.num_rows)}:"
        )
        for row in bad.slice(0, SHOW).to_pylist():
            diffs = [
                f"{c} {row[f'{c} rollout']} vs {row[f'{c} {peer}']}"
                for c in columns
                if row[f"{c} rollout"] != row[f"{c} {peer}"]
            ]
            problems.append(f"  {row['package']}: " + "; ".join(diffs) + f" (rollout vs {peer})")
    return problems


def compare_cohorts(rollout: dict[str, Any], peer: str, answer: dict[str, Any]) -> list[str]:
    problems = []
    for cohort in sorted(set(rollout) | set(answer)):
        ours, theirs = rollout.get(cohort), answer.get(cohort)
        if ours is None or theirs is None:
            problems.append(f"cohort {cohort}: only in {peer if ours is None else 'rollout'}")
            continue
        counted = [len(ours["packages"]), len(ours["accounts"]), len(ours["without_2fa"])]
        if ours["sizes"] != counted:
            problems.append(
                f"cohort {cohort}: build_cohorts reports {ours['sizes']}, the registry holds "
                f"{counted} (packages, accounts, without 2FA)"
            )
        for what in ("packages", "accounts", "without_2fa"):
            a, b = set(ours[what]), set(theirs[what])
            if a != b:
                problems.append(
                    f"cohort {cohort} {what}: rollout {len(a):,}, {peer} {len(b):,}; only in "
                    f"rollout {sorted(a - b)[:SHOW]}, only in {peer} {sorted(b - a)[:SHOW]}"
                )
    return problems


def compare_totals(floor: dict[str, Any], pandas: dict[str, Any]) -> list[str]:
    return [
        f"floor {what}: {value:,}, pandas scans {pandas[what]:,}"
        for what, value in floor.items()
        if what in pandas and value != pandas[what]
    ]


def generate(scale: str, seed: int, work: Path) -> Path:
    """A sample with Parquet landing files (as at npm scale), ingested into a fresh
    warehouse in ``work``; returns the landing folder."""
    from rollout import warehouse
    from rollout.demo.sample import SCALES, generate_sample
    from rollout.registry import Registry
    from rollout.warehouse import ingest

    landing = work / "landing"
    generate_sample(
        dataclasses.replace(SCALES[scale], formats="parquet"),
        seed,
        registry=Registry(f"sqlite:///{work / 'registry.db'}"),
        landing_dir=landing,
    )
    with warehouse.open_warehouse(work / "warehouse.duckdb") as con:
        report = ingest.ingest(
            con,
            [landing / "downloads", landing / "manifests"],
            quarantine_limit=0.01,
            landing_root=landing,
        )
    if report.rejected or any(f.rows_quarantined for f in report.files):
        raise SystemExit(f"FAIL: the generated sample did not ingest cleanly: {report.files}")
    return landing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path)
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--landing", type=Path, help="the landing folder the warehouse holds")
    parser.add_argument(
        "--generate",
        choices=("tiny", "small", "medium"),
        help="make a sample of this scale (Parquet files) and its warehouse instead",
    )
    parser.add_argument("--seed", type=int, default=1, help="with --generate")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2022, 2, 1))
    parser.add_argument("--part", choices=sorted(PARTS))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.part:  # a child: one part, its result as JSON on stdout
        print(json.dumps(PARTS[args.part](args.work, args.as_of, args.landing)))
        return
    if not args.generate and not (args.warehouse and args.registry and args.landing):
        parser.error("give --warehouse, --registry and --landing, or --generate SCALE")
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        work = Path(scratch)
        if args.generate:
            landing = generate(args.generate, args.seed, work)
        else:
            landing = args.landing.resolve()
            shutil.copy(args.warehouse, work / "warehouse.duckdb")
            copy_registry(args.registry, work)
        results = {part: run_part(part, work, args.as_of, landing) for part in PARTS}
        metric_problems = {peer: compare_metrics(work, peer) for peer in PEERS}
    rollout, floor = results["rollout"], results["floor"]
    sizes = {c: r["sizes"] for c, r in rollout["cohorts"].items()}
    print(f"inputs: {results['pandas']['rows']}; as of {args.as_of}")
    print("| part | wall s | peak GiB | note |\n|---|---|---|---|")
    print(
        f"| rollout metrics + cohorts | {rollout['seconds']:.1f} | {rollout['peak_gib']:.2f} "
        f"| metrics {rollout['metrics_seconds']:.1f} s; +{rollout['extract_seconds']:.1f} s "
        f"registry extract before, not counted; sizes {sizes} |"
    )
    print(
        f"| bare DuckDB aggregates (floor) | {floor['seconds']:.1f} | {floor['peak_gib']:.2f} | |"
    )
    for peer in PEERS:
        result = results[peer]
        print(
            f"| {peer} | {result['seconds']:.1f} | {result['peak_gib']:.2f} | "
            f"+{result['load_seconds']:.1f} s registry tables (and pandas' scans), not counted; "
            f"{result['seconds'] / rollout['seconds']:.2f}x rollout's time |"
        )
    print(f"\nrollout / floor: {rollout['seconds'] / floor['seconds']:.2f}x")
    problems = {
        **{f"package metrics, {peer}": found for peer, found in metric_problems.items()},
        **{
            f"cohorts, {peer}": compare_cohorts(rollout["cohorts"], peer, results[peer]["cohorts"])
            for peer in PEERS
        },
        "floor totals": compare_totals(floor["totals"], results["pandas"]["totals"]),
    }
    for what, found in problems.items():
        print(f"{what}: {'DIFFER' if found else 'agree'}")
    failures = [f"{what}: {line}" for what, found in problems.items() for line in found]
    if failures:
        raise SystemExit("FAIL: rollout and a peer disagree\n" + "\n".join(failures))


def run_part(part: str, work: Path, as_of: date, landing: Path) -> dict[str, Any]:
    """One part in a child process of its own, so its peak memory is its own."""
    # The copies (3 GB) and the part before leave dirty pages: flushed now, or the
    # kernel writes them back during the part and it measures that.
    os.sync()
    arguments = ["--part", part, "--work", str(work), "--as-of", as_of.isoformat()]
    return run_child(__file__, [*arguments, "--landing", str(landing)], f"the {part} part")


def run_child(script: str, arguments: list[str], what: str) -> dict[str, Any]:
    """``script`` run with ``arguments`` in a child process: the JSON object its last
    line of output prints. A child that fails fails the bench, with its stderr."""
    done = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"FAIL: {what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

"""Benchmark: ingest npm-scale landing files into DuckDB.

Usage:
    python bench/bench_ingest.py --landing DIR [--work DIR]

DIR is a landing folder written by ``rollout sample --scale npm`` (see
bench/bench_sample.py). Downloads and manifests are ingested into a fresh
warehouse, each kind timed on its own; the figures print as Markdown rows for
bench/RESULTS.md. Target (issue 2): at least 5M download rows/s.

Checked after each kind (not timed), exiting non-zero with the reasons otherwise:
every file loaded, none refused, no row quarantined, each file's rows read = loaded +
duplicates, a Parquet file's rows read = its footer's row count; the warehouse then
holds exactly the rows loaded (``raw_downloads``, ``raw_manifests``); with Parquet
landing files (npm scale) also the same download total as the files and as many
``raw_dependencies`` rows of each kind as the manifests' maps have entries.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from peak import own_peak_gib

from rollout import warehouse
from rollout.warehouse import ingest, landing


def shuffle_downloads(source: Path, target: Path, seed: int = 1) -> Path:
    """A copy of the landing folder whose downloads files have their rows shuffled,
    written with the sample's Parquet settings (zstd, 1M-row groups)."""
    rng = np.random.default_rng(seed)
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        copy = target / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name == "downloads" and path.suffix == ".parquet":
            table = pq.read_table(path)
            shuffled = table.take(rng.permutation(table.num_rows))
            pq.write_table(shuffled, copy, compression="zstd", row_group_size=1 << 20)
        else:
            shutil.copy(path, copy)
    return target


MAPS = {"dependencies": "prod", "devDependencies": "dev", "peerDependencies": "peer"}


def check(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    chosen: list[landing.LandingFile],
    report: ingest.IngestReport,
) -> list[str]:
    """What one kind's ingest loaded, against its files; the problems found."""
    problems = []
    if report.rejected or report.loaded != len(chosen):
        problems.append(f"{report.loaded} of {len(chosen)} files loaded: {report.rejected}")
    for f in report.files:
        if f.rows_quarantined or f.rows_read != f.rows_loaded + f.rows_duplicate:
            problems.append(
                f"{f.path.name}: read {f.rows_read:,}, loaded {f.rows_loaded:,}, duplicate "
                f"{f.rows_duplicate:,}, quarantined {f.rows_quarantined:,}"
            )
        if f.path.suffix == ".parquet" and f.rows_read != pq.read_metadata(f.path).num_rows:
            problems.append(
                f"{f.path.name}: read {f.rows_read:,} rows of {pq.read_metadata(f.path).num_rows:,}"
            )
    table = {"downloads": "raw_downloads", "manifests": "raw_manifests"}[kind]
    held = warehouse.scalar(con, f"select count(*) from {table}")
    if held != report.rows_loaded:
        problems.append(f"{table} holds {held:,} rows, {report.rows_loaded:,} were loaded")
    parquet = [f.path for f in report.files if f.path.suffix == ".parquet"]
    if len(parquet) != len(report.files) or not parquet:
        return problems
    if kind == "downloads" and not any(f.rows_duplicate for f in report.files):
        total = sum(
            pc.sum(pq.read_table(path, columns=["downloads"]).column(0)).as_py() or 0
            for path in parquet
        )
        loaded = warehouse.scalar(con, "select coalesce(sum(downloads), 0) from raw_downloads")
        if loaded != total:
            problems.append(f"raw_downloads sums to {loaded:,} downloads, the files {total:,}")
    if kind == "manifests":
        expected = dict.fromkeys(MAPS.values(), 0)
        for path in parquet:
            for column, map_kind in MAPS.items():
                for chunk in pq.read_table(path, columns=[column]).column(0).chunks:
                    offsets = chunk.offsets
                    expected[map_kind] += offsets[-1].as_py() - offsets[0].as_py()
        held = dict(
            con.execute("select kind, count(*) from raw_dependencies group by kind").fetchall()
        )
        for map_kind, count in expected.items():
            if held.get(map_kind, 0) != count:
                problems.append(
                    f"raw_dependencies holds {held.get(map_kind, 0):,} {map_kind} rows, "
                    f"the manifests' maps {count:,} entries"
                )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--landing", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--shuffled",
        type=Path,
        default=None,
        help="first write the landing files into this folder with each downloads file's "
        "rows in random order (seeded), and load those: a real export may not be sorted",
    )
    args = parser.parse_args()
    if args.shuffled:
        args.landing = shuffle_downloads(args.landing, args.shuffled)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "warehouse.duckdb"
    db.unlink(missing_ok=True)
    files = landing.discover([args.landing], args.landing)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; date {date.today()}")
    with warehouse.open_warehouse(db) as con:
        for kind in ("downloads", "manifests"):
            chosen = [f for f in files if f.kind == kind]
            started = time.perf_counter()
            # What `rollout ingest` runs, one kind's folder at a time.
            report = ingest.ingest(
                con, [args.landing / kind], quarantine_limit=0.01, landing_root=args.landing
            )
            seconds = time.perf_counter() - started
            problems = check(con, kind, chosen, report)
            if problems:
                raise SystemExit(f"FAIL: {kind}: " + "\n  ".join(problems))
            rows = sum(f.rows_read for f in report.files)
            extra = ""
            if kind == "manifests":
                edges = warehouse.scalar(con, "select count(*) from raw_dependencies")
                extra = f", {edges:,} dependency rows"
            print(
                f"| ingest {kind} | {len(chosen)} files, {rows:,} rows{extra} | "
                f"{seconds:.1f} s | {rows / seconds / 1e6:.2f} M rows/s | "
                f"peak RSS so far {own_peak_gib():.2f} GiB | counts checked against the files |",
                flush=True,
            )
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

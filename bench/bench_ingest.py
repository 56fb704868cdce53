"""Benchmark: ingest npm-scale landing files into DuckDB.

Usage:
    python bench/bench_ingest.py --landing DIR [--work DIR]

DIR is a landing folder written by ``rollout sample --scale npm`` (see
bench/bench_sample.py). Downloads and manifests are ingested into a fresh
warehouse, each kind timed on its own; the figures print as Markdown rows for
bench/RESULTS.md. Target (issue 2): at least 5M download rows/s.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rollout import ingest, landing, warehouse


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


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
            if report.rejected or report.loaded != len(chosen):
                raise SystemExit(f"{kind}: not every file loaded: {report.files}")
            rows = sum(f.rows_read for f in report.files)
            extra = ""
            if kind == "manifests":
                edges = warehouse.scalar(con, "select count(*) from raw_dependencies")
                extra = f", {edges:,} dependency rows"
            print(
                f"| ingest {kind} | {len(chosen)} files, {rows:,} rows{extra} | "
                f"{seconds:.1f} s | {rows / seconds / 1e6:.2f} M rows/s | "
                f"peak RSS so far {peak_rss_gib():.2f} GiB |"
            )
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

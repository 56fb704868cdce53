"""Benchmark: ingest of a backfill, many small daily files, batched and one by one.

Usage:
    python bench/bench_backfill.py [--plan plans/pypi-2023.yaml] [--runs 2]

The landing folder of the tiny sample fitted to the plan (pypi-2023: 905 daily
downloads files, half CSV and half Parquet, as `make demo PLAN=...` makes it) is
ingested into fresh warehouses, alternately with the batches (up to
``ingest.BATCH_BYTES`` of small downloads files share one check and one commit) and one
file at a time (``BATCH_BYTES = 0``). Fails (exit 1) unless both give the same files
with the same counts and the same rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def ingested(landing: Path, warehouse_path: Path, batch_bytes: int) -> tuple[float, object]:
    from rollout import warehouse
    from rollout.warehouse import ingest

    with (
        mock.patch.object(ingest, "BATCH_BYTES", batch_bytes),
        warehouse.open_warehouse(warehouse_path) as con,
    ):
        started = time.perf_counter()
        report = ingest.ingest(con, [landing], quarantine_limit=0.01, landing_root=landing)
        seconds = time.perf_counter() - started
        files = sorted(
            (f.path.name, f.status, f.rows_read, f.rows_loaded, f.rows_duplicate)
            for f in report.files
        )
        rows = con.execute(
            "select count(*), sum(downloads), sum(hash(package, day, downloads)) from raw_downloads"
        ).fetchone()
    return seconds, (files, rows)


def main() -> None:
    from rollout.core.plan import load_plan
    from rollout.demo.sample import generate_sample
    from rollout.demo.story import sample_window
    from rollout.registry import Registry
    from rollout.warehouse import ingest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=ROOT / "plans" / "pypi-2023.yaml")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as scratch:
        work = Path(scratch)
        end, days = sample_window(load_plan(args.plan))
        generate_sample(
            "tiny",
            7,
            registry=Registry(f"sqlite:///{work / 'registry.db'}"),
            landing_dir=work / "landing",
            end=end,
            days=days,
        )
        # Not the sample's hidden mark (.rollout-sample): ingest passes it over.
        files = sum(1 for p in (work / "landing").rglob("*.*") if not p.name.startswith("."))
        print(f"{args.plan.name}: {files} landing files, {days} days of downloads")
        timings: dict[str, list[float]] = {"batched": [], "one by one": []}
        answers = []
        for _ in range(args.runs):
            for label, batch_bytes in (("batched", ingest.BATCH_BYTES), ("one by one", 0)):
                path = work / "warehouse.duckdb"
                seconds, answer = ingested(work / "landing", path, batch_bytes)
                timings[label].append(seconds)
                answers.append(answer)
                path.unlink()
                print(f"  {label}: {seconds:.1f} s")
    for label, values in timings.items():
        print(f"{label}: min {min(values):.1f} s, max {max(values):.1f} s")
    if any(answer != answers[0] for answer in answers):
        raise SystemExit("FAIL: batched and one-by-one ingest loaded different files or rows")
    print("OK: the same files, counts and rows both ways")


if __name__ == "__main__":
    main()

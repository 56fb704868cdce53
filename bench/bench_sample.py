"""Time the sample generator at one scale and print a Markdown table row.

    python bench/bench_sample.py --scale npm --out bench/out/npm

Writes a fresh SQLite registry and landing folder under --out (emptied first), then
prints wall time, peak RSS and the summary counts. Record the rows in bench/RESULTS.md.

Checked afterwards (not timed), exiting non-zero with the reasons otherwise: the
summary's counts are what was written. The registry holds that many accounts,
accounts with an active 2FA factor, web sessions, tokens and orgs; the landing
folder holds every file the summary lists, the manifests file that many packages and
map entries of each kind, the daily downloads files that many rows, the logins file
that many events.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from peak import children_peak_mib, own_peak_mib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.demo.sample import SCALES, SampleSummary, generate_sample
from rollout.registry import Registry

COLUMNS = (
    "scale",
    "seed",
    "wall s",
    "peak RSS MiB",
    "children RSS MiB",
    "packages",
    "dependencies",
    "devDependencies",
    "accounts",
    "with 2FA",
    "web sessions",
    "tokens",
    "orgs",
    "download rows",
    "login events",
    "landing MiB",
)


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _row(summary: SampleSummary, wall: float, landing: Path) -> str:
    values = (
        summary.scale,
        summary.seed,
        f"{wall:.1f}",
        f"{own_peak_mib():,.0f}",
        f"{children_peak_mib():,.0f}",
        f"{summary.packages:,}",
        f"{summary.dependency_edges:,}",
        f"{summary.dev_dependency_edges:,}",
        f"{summary.accounts:,}",
        f"{summary.accounts_with_2fa:,}",
        f"{summary.web_sessions:,}",
        f"{summary.tokens:,}",
        f"{summary.orgs:,}",
        f"{summary.download_rows:,}",
        f"{summary.login_events:,}",
        f"{_size_mib(landing):,.0f}",
    )
    return "| " + " | ".join(str(v) for v in values) + " |"


def check(summary: SampleSummary, registry: Path, landing: Path) -> list[str]:
    """The summary's counts against the registry and landing files; the differences."""
    import duckdb

    with sqlite3.connect(registry) as db:

        def count(query: str) -> int:
            return db.execute(query).fetchone()[0]

        found = {
            "accounts": count("select count(*) from accounts"),
            "accounts_with_2fa": count(
                "select count(distinct account_id) from tfa_factors where removed_at is null"
            ),
            "web_sessions": count("select count(*) from web_sessions"),
            "tokens": count("select count(*) from tokens"),
            "orgs": count("select count(*) from orgs"),
        }
    con = duckdb.connect()
    [manifests] = (landing / "manifests").glob("manifests.*")
    maps = ("dependencies", "devDependencies", "peerDependencies")
    if manifests.suffix == ".parquet":
        source = f"read_parquet('{manifests}')"
        lengths = [f'len(map_keys("{m}"))' for m in maps]
    else:
        columns = {m: "JSON" for m in maps}
        source = f"read_json('{manifests}', format = 'newline_delimited', columns = {columns})"
        lengths = [f'json_array_length(json_keys("{m}"))' for m in maps]
    found["packages"], *edges = con.execute(
        "select count(*), "
        + ", ".join(f"coalesce(sum({x}), 0)" for x in lengths)
        + f" from {source}"
    ).fetchone()
    found["dependency_edges"], found["dev_dependency_edges"], found["peer_dependency_edges"] = edges
    daily = sorted((landing / "downloads").glob("downloads-*"))
    found["download_rows"] = sum(
        pq.read_metadata(path).num_rows
        if path.suffix == ".parquet"
        else con.execute(f"select count(*) from read_csv('{path}')").fetchone()[0]
        for path in daily
    )
    found["login_events"] = sum(
        pq.read_metadata(path).num_rows for path in (landing / "logins").glob("*.parquet")
    )
    problems = [
        f"{name}: the summary says {getattr(summary, name):,}, {value:,} were written"
        for name, value in found.items()
        if getattr(summary, name) != value
    ]
    missing = [str(path) for path in summary.landing_files if not Path(path).is_file()]
    if missing:
        problems.append(f"landing files missing: {missing[:5]}")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the output folder")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-sample-"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    last_stage = [""]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != last_stage[0]:
            last_stage[0] = stage
            print(f"  {time.perf_counter() - started:7.1f}s  {stage}", file=sys.stderr)

    started = time.perf_counter()
    summary = generate_sample(
        args.scale,
        args.seed,
        registry=Registry(f"sqlite:///{out / 'registry.db'}"),
        landing_dir=out / "landing",
        progress=progress,
    )
    wall = time.perf_counter() - started
    problems = check(summary, out / "registry.db", out / "landing")
    if problems:
        raise SystemExit("FAIL: " + "\n  ".join(problems))
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    print(_row(summary, wall, out / "landing"))
    print("checked: the registry and the landing files hold the summary's counts")
    print(f"registry: {(out / 'registry.db').stat().st_size / 2**20:,.0f} MiB", file=sys.stderr)
    if not args.keep and args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

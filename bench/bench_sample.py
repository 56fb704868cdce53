"""Time the sample generator at one scale and print a Markdown table row.

    python bench/bench_sample.py --scale npm --out bench/out/npm

Writes a fresh SQLite registry and landing folder under --out (emptied first), then
prints wall time, peak RSS and the summary counts. Record the rows in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.sample import SCALES, SampleSummary, generate_sample

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


def _peak_rss_mib(who: int) -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale / 2**20


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _row(summary: SampleSummary, wall: float, landing: Path) -> str:
    values = (
        summary.scale,
        summary.seed,
        f"{wall:.1f}",
        f"{_peak_rss_mib(resource.RUSAGE_SELF):,.0f}",
        f"{_peak_rss_mib(resource.RUSAGE_CHILDREN):,.0f}",
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
        registry_url=f"sqlite:///{out / 'registry.db'}",
        landing_dir=out / "landing",
        progress=progress,
    )
    wall = time.perf_counter() - started
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    print(_row(summary, wall, out / "landing"))
    print(f"registry: {(out / 'registry.db').stat().st_size / 2**20:,.0f} MiB", file=sys.stderr)
    if not args.keep and args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

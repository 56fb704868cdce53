"""Write the inputs of golden/package_metrics/thresholds, run once by hand: 500
consumer manifests are too many to type. The expected rows of the consumers follow
from the rules by hand (see golden/package_metrics/thresholds/case.yaml), never from
running the pipeline.

    .venv/bin/python tests/sql/make_thresholds_case.py
"""

from __future__ import annotations

import json
from pathlib import Path

CASE = Path(__file__).parent / "golden" / "package_metrics" / "thresholds"
CONSUMERS = 500
COLUMNS = (
    "package,weekly_downloads,monthly_downloads,dependents,dev_dependents,"
    "peer_dependents,rank_by_dependents,rank_by_downloads"
)


def consumer(number: int) -> str:
    return f"consumer-{number:03d}"


def manifests() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {"name": name, "version": "1.0.0", "maintainers": [f"owner-of-{name}"]}
        for name in ("dl-exact", "dl-over", "dep-exact", "dep-under")
    ]
    for number in range(1, CONSUMERS + 1):
        # Every consumer depends on dep-exact (500 dependents), all but the last one
        # on dep-under (499 dependents).
        dependencies = {"dep-exact": "^1.0.0"}
        if number < CONSUMERS:
            dependencies["dep-under"] = "^1.0.0"
        rows.append(
            {
                "name": consumer(number),
                "version": "1.0.0",
                "dependencies": dependencies,
                "maintainers": ["consumer-team"],
            }
        )
    return rows


def expected_metrics() -> list[str]:
    # By dependents: dep-exact (500) 1, dep-under (499) 2, then the zero-dependent
    # packages by name: consumer-001..consumer-500 (3..502), dl-exact 503, dl-over 504.
    # By weekly downloads: dl-over (1,000,001) 1, dl-exact (1,000,000) 2, then the
    # zero-download packages by name: consumers (3..502), dep-exact 503, dep-under 504.
    lines = [
        COLUMNS,
        "dep-exact,0,0,500,0,0,1,503",
        "dep-under,0,0,499,0,0,2,504",
        "dl-exact,1000000,6000000,0,0,0,503,2",
        "dl-over,1000001,1000001,0,0,0,504,1",
    ]
    lines += [f"{consumer(n)},0,0,0,0,0,{n + 2},{n + 2}" for n in range(1, CONSUMERS + 1)]
    return lines


def main() -> None:
    with (CASE / "inputs" / "landing" / "manifests.jsonl").open("w") as handle:
        for row in manifests():
            handle.write(json.dumps(row) + "\n")
    (CASE / "expected" / "package_metrics_daily.csv").write_text(
        "\n".join(expected_metrics()) + "\n"
    )


if __name__ == "__main__":
    main()

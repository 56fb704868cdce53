"""The dependents counts kept between metrics runs, reused while no manifests come and
moved by the packages whose latest manifest changed when some do, equal the counts
made whole over every latest manifest: new packages, changed and removed dependencies,
packages depending on themselves or on names with no manifest, repeated files. So do
the latest manifests kept beside them, and what the counts leave out of the metrics."""

from __future__ import annotations

import json
import tempfile
from datetime import date, timedelta
from pathlib import Path
from unittest import mock

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout import metrics, warehouse
from rollout.core.plan import MetricsWindows
from rollout.warehouse.ingest import ingest
from rollout.warehouse.manifests import COLUMNS

WINDOWS = MetricsWindows(weekly_window_days=3, monthly_window_days=7)
PACKAGES = ("a", "b", "@s/c", "d")
# "ghost" never gets a manifest: an unknown name depended on.
NAMES = (*PACKAGES, "ghost")
KINDS = ("dependencies", "devDependencies", "peerDependencies")
AS_OF = date(2022, 3, 1)

# One manifest: a package and its maps (each name at most once per map, as ingest
# requires), possibly naming itself.
manifest = st.tuples(
    st.sampled_from(PACKAGES),
    st.fixed_dictionaries({kind: st.sets(st.sampled_from(NAMES), max_size=3) for kind in KINDS}),
)
# A file holds each package at most once (a repeat within a file is refused).
manifests_file = st.lists(manifest, min_size=1, max_size=4, unique_by=lambda m: m[0])
steps = st.lists(
    st.one_of(st.tuples(st.just("file"), manifests_file), st.tuples(st.just("metrics"))),
    min_size=2,
    max_size=12,
)


def counts_made_whole(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    model = warehouse.render("intermediate/int_dependency_counts")
    return con.execute(f"select * from ({model}) order by dependency").fetchall()


def latest_made_whole(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Every manifest ranked again by the staging view."""
    return con.execute(f"select {COLUMNS} from stg_manifests order by package").fetchall()


def latest_kept(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(f"select {COLUMNS} from latest_manifests order by package").fetchall()


def exclusions_recorded(con: duckdb.DuckDBPyConnection, day: date) -> tuple:
    query = (
        "select self_dependencies, unknown_dependencies, unknown_packages "
        "from metrics_runs where as_of = $as_of"
    )
    return con.execute(query, {"as_of": day}).fetchone()


def counts_kept(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("select * from dependency_counts order by dependency").fetchall()


class Run:
    def __init__(self, folder: Path, con: duckdb.DuckDBPyConnection) -> None:
        self.folder, self.con, self.files, self.day = folder, con, 0, AS_OF
        self.rendered: list[str] = []

    def load(self, drawn: list[tuple[str, dict[str, set[str]]]]) -> None:
        self.files += 1
        path = self.folder / "manifests" / f"manifests-{self.files:03}.jsonl"
        path.parent.mkdir(exist_ok=True)
        lines = [
            json.dumps(
                {
                    "name": name,
                    "version": f"1.0.{self.files}",
                    "maintainers": ["m"],
                    **{
                        kind: {dep: "^1.0.0" for dep in sorted(deps)} for kind, deps in maps.items()
                    },
                }
            )
            for name, maps in drawn
        ]
        path.write_text("\n".join(lines) + "\n")
        report = ingest(self.con, [path], quarantine_limit=0.0)
        assert report.rejected == [], [f.message for f in report.files]

    def metrics(self) -> None:
        self.day += timedelta(1)
        real_render = warehouse.render

        def render(name: str) -> str:
            self.rendered.append(name)
            return real_render(name)

        with mock.patch.object(warehouse, "render", render):
            metrics.compute_metrics(self.con, self.day, WINDOWS)
        assert counts_kept(self.con) == counts_made_whole(self.con), self.day
        assert latest_kept(self.con) == latest_made_whole(self.con), self.day
        # Kept from the day the counts last moved: as counted today.
        excluded = warehouse.one(
            self.con, warehouse.render("intermediate/int_dependency_exclusions")
        )
        assert exclusions_recorded(self.con, self.day) == excluded, self.day

    def counted(self, model: str) -> int:
        return self.rendered.count(f"intermediate/{model}")


@settings(max_examples=60, deadline=None, database=None)
@given(steps=steps)
def test_counts_kept_from_day_to_day_equal_the_counts_made_whole(
    steps: list[tuple],
) -> None:
    with (
        tempfile.TemporaryDirectory() as scratch,
        warehouse.open_warehouse(Path(scratch) / "warehouse.duckdb") as con,
    ):
        run = Run(Path(scratch), con)
        for step in steps:
            if step[0] == "file":
                run.load(step[1])
            else:
                run.metrics()


def deps(*names: str) -> dict[str, set[str]]:
    return {"dependencies": set(names), "devDependencies": set(), "peerDependencies": set()}


def dependents(con: duckdb.DuckDBPyConnection, day: date) -> dict[str, int]:
    query = "select package, dependents from package_metrics_daily where as_of = $as_of"
    return dict(con.execute(query, {"as_of": day}).fetchall())


def test_counts_are_reused_without_new_manifests_and_moved_when_some_come(
    tmp_path: Path,
) -> None:
    with warehouse.open_warehouse(tmp_path / "warehouse.duckdb") as con:
        run = Run(tmp_path, con)
        run.load([("a", deps()), ("b", deps("a")), ("@s/c", deps("a", "b")), ("d", deps("a"))])
        run.metrics()
        assert run.counted("int_dependency_counts") == 1
        assert dependents(con, run.day) == {"a": 3, "b": 1, "@s/c": 0, "d": 0}
        # A day with downloads only: the kept counts, exclusions and latest manifests
        # serve as they are.
        run.metrics()
        assert run.counted("int_dependency_counts") == 1
        assert run.counted("int_dependency_counts_step") == 0
        assert run.counted("int_dependency_exclusions") == 1
        assert run.counted("int_latest_manifests_step") == 0
        # d drops a and takes b; a new file moves the counts, not a recount.
        run.load([("d", deps("b"))])
        run.metrics()
        assert run.counted("int_dependency_counts") == 1
        assert run.counted("int_dependency_counts_step") == 1
        assert run.counted("int_dependency_exclusions") == 1
        assert run.counted("int_dependency_exclusions_step") == 1
        assert run.counted("int_latest_manifests_step") == 1
        assert dependents(con, run.day) == {"a": 2, "b": 2, "@s/c": 0, "d": 0}


def test_names_with_no_manifest_move_with_the_counts(tmp_path: Path) -> None:
    """What the counts leave out is moved with them (no recount of every name against
    every package): a name gets its first manifest, a new one is depended on, and an
    unknown one is no longer, each checked against the full count by Run.metrics."""
    with warehouse.open_warehouse(tmp_path / "warehouse.duckdb") as con:
        run = Run(tmp_path, con)
        run.load([("a", deps("b", "ghost", "a")), ("@s/c", deps("b"))])
        run.metrics()
        # b and ghost have no manifest: 3 declarations of 2 names; a names itself once.
        assert exclusions_recorded(con, run.day) == (1, 3, 2)
        # b is published, ghost is dropped by a, and @s/c takes on d, still unpublished.
        run.load([("b", deps()), ("a", deps("b")), ("@s/c", deps("b", "d"))])
        run.metrics()
        assert exclusions_recorded(con, run.day) == (0, 1, 1)
        assert run.counted("int_dependency_exclusions") == 1
        assert run.counted("int_dependency_exclusions_step") == 1


def test_the_counts_survive_the_connection(tmp_path: Path) -> None:
    """The daily deployment runs each day in a new process: the counts are kept in
    the warehouse, not in the connection."""
    path = tmp_path / "warehouse.duckdb"
    with warehouse.open_warehouse(path) as con:
        run = Run(tmp_path, con)
        run.load([("a", deps()), ("b", deps("a"))])
        run.metrics()
    with warehouse.open_warehouse(path) as con:
        run.con = con
        run.metrics()
        assert run.counted("int_dependency_counts") == 1
        assert dependents(con, run.day) == {"a": 1, "b": 0}


def test_a_rebuild_counts_whole_and_gives_the_same_metrics(tmp_path: Path) -> None:
    with warehouse.open_warehouse(tmp_path / "warehouse.duckdb") as con:
        run = Run(tmp_path, con)
        run.load([("a", deps("a", "ghost")), ("b", deps("a"))])
        run.metrics()
        run.load([("b", deps("ghost")), ("@s/c", deps("a", "b"))])
        run.metrics()
        query = "select * from package_metrics_daily where as_of = $as_of order by package"
        moved = con.execute(query, {"as_of": run.day}).fetchall()
        moved_run = con.execute(
            "select * exclude (computed_at, seconds) from metrics_runs order by as_of"
        ).fetchall()
        metrics.compute_metrics(con, run.day, WINDOWS, rebuild=True)
        assert con.execute(query, {"as_of": run.day}).fetchall() == moved
        assert (
            con.execute(
                "select * exclude (computed_at, seconds) from metrics_runs order by as_of"
            ).fetchall()
            == moved_run
        )
        # a's self-dependency and the two declarations of ghost are left out.
        assert moved_run[-1][4:7] == (1, 2, 1)
        # and the windows the day was computed with (a plan with another week sums its own)
        assert moved_run[-1][7:] == (3, 7)

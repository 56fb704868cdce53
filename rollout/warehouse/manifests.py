"""The latest manifest of each package, kept between runs.

``stg_manifests`` ranks every manifest ever loaded each time it is read: 4M manifests
at npm scale, 2-3 s a read, and a day's metrics and cohort build read it in both.
It changes only when a manifests file is loaded, so ``latest_manifests`` keeps its
rows, with the last ingested file they count (``latest_manifests_state``): brought up
to date by the manifests of the files loaded since (``int_latest_manifests_step``),
made whole when nothing is kept or on ``rebuild``. Within ``latest_manifests(con)``,
``stg_manifests`` and every view and model built on it read the kept rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from rollout import warehouse

COLUMNS = "package, package_key, version, maintainers, self_dependency_kinds, file_id, ordinal"


@contextmanager
def latest_manifests(con: duckdb.DuckDBPyConnection, *, rebuild: bool = False) -> Iterator[None]:
    """Within the block, ``stg_manifests`` reads the kept latest manifests, first
    brought up to the manifests loaded now (``rebuild``: made whole again).

    DuckDB resolves a name to the temp schema before ``main``, inside views too, so a
    temp view of the same name redirects every reader. Not to be nested: the inner
    block would drop the outer's view.
    """
    refresh(con, rebuild=rebuild)
    con.execute(
        f"create or replace temp view stg_manifests as select {COLUMNS} from main.latest_manifests"
    )
    try:
        yield
    finally:
        con.execute("drop view if exists temp.stg_manifests")


def loaded_since(con: duckdb.DuckDBPyConnection, file_id: int) -> bool:
    """Whether a manifests file was loaded after ingested file ``file_id``: what moves
    the latest manifests, and whatever is kept from them. The zone maps of
    ``raw_manifests`` (appended file by file) answer it without reading the rows."""
    return bool(
        warehouse.scalar(
            con,
            "select exists (select 1 from raw_manifests where file_id > $file_id)",
            {"file_id": file_id},
        )
    )


def refresh(con: duckdb.DuckDBPyConnection, *, rebuild: bool = False) -> None:
    """Bring ``latest_manifests`` up to the manifests loaded now. Writes nothing (no
    transaction to commit) when no manifests file came since it was last brought up."""
    kept = (
        None
        if rebuild
        else warehouse.scalar(con, "select max(counted_file_id) from latest_manifests_state")
    )
    if kept is not None and not loaded_since(con, kept):
        return
    with warehouse.transaction(con):
        counted = warehouse.scalar(con, "select coalesce(max(file_id), 0) from raw_manifests")
        if kept is None:
            # main.: the whole ranking, whatever a caller's temp view says. Its strings
            # uncompressed: compressing 4M names, keys and maintainers' lists cost more
            # than ranking them (warehouse.strings_uncompressed).
            with warehouse.strings_uncompressed(con):
                con.execute(
                    f"create or replace table latest_manifests as "
                    f"select {COLUMNS} from main.stg_manifests"
                )
        else:
            step = warehouse.render("intermediate/int_latest_manifests_step")
            con.execute(
                f"create or replace temp table manifests_since as {step}",
                {"counted_file_id": kept},
            )
            con.execute(
                "delete from latest_manifests where package in "
                "(select package from manifests_since)"
            )
            con.execute(f"insert into latest_manifests select {COLUMNS} from manifests_since")
            con.execute("drop table manifests_since")
        con.execute("delete from latest_manifests_state")
        con.execute("insert into latest_manifests_state values ($counted)", {"counted": counted})

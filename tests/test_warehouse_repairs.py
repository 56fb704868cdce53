"""A warehouse an older rollout loaded, opened by this one: rows that rollout loaded and
this one would not have are repaired in place by the first command that writes it (the
upgrade's `rollout ingest`), the operator is told what was removed and which days'
reports to write again, and until then the commands that only read it refuse it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from rollout import warehouse
from rollout.core.errors import RolloutError
from rollout.ops.doctor import Status, check_warehouse
from rollout.warehouse import ingest, landing
from tests.support.ingest import NOW, load

LOGINS_HEADER = "occurred_at,username,second_factor,outcome"
LOGINS = [
    "2022-01-10T10:00:00Z,gaearon,none,success",
    "2022-01-10T11:00:00Z,acdlite,elv,abandoned",
    # Two failed tries in one second: two logins, in every file that holds them.
    "2022-01-11T12:00:00Z,hzoo,totp,failed",
    "2022-01-11T12:00:00Z,hzoo,totp,failed",
]
PUBLISHES_HEADER = "occurred_at,package,username,via,token_kind,second_factor"
PUBLISHES = [
    "2022-01-10T10:00:00Z,left-pad,alice,token,automation,none",
    "2022-01-10T11:00:00Z,react,carol,trusted,,none",
]


def write(folder: Path, name: str, header: str, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def landing_files(root: Path) -> list[Path]:
    """What landed: the logins file again corrected (one row added, and a third copy of
    the repeated row), the publishes file again with CRLF line ends."""
    logins, publishes = root / "logins", root / "publishes"
    return [
        write(logins, "logins-2022-01-10.csv", LOGINS_HEADER, LOGINS),
        write(publishes, "publishes-2022-01-10.csv", PUBLISHES_HEADER, PUBLISHES),
        write(
            logins,
            "logins-2022-01-10-corrected.csv",
            LOGINS_HEADER,
            [
                *LOGINS,
                "2022-01-11T12:00:00Z,hzoo,totp,failed",
                "2022-01-11T13:00:00Z,mjackson,webauthn,success",
            ],
        ),
        crlf(write(publishes, "publishes-2022-01-10-again.csv", PUBLISHES_HEADER, PUBLISHES)),
    ]


def crlf(path: Path) -> Path:
    """The file with its lines ended CRLF: the same rows, another checksum."""
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    return path


def as_an_older_rollout_loaded(path: Path, files: list[Path]) -> None:
    """The warehouse as a rollout before the duplicate check left it: every good row of
    every file loaded under its file, none counted a duplicate, no repairs recorded."""
    with warehouse.open_warehouse(path) as con:
        for file in files:
            result = load(con, file)
            kind = result.kind
            con.execute(f"delete from raw_{kind} where file_id = $id", {"id": result.file_id})
            staged = landing.classify(file)
            columns = (
                "occurred_at, username, second_factor, outcome"
                if kind == "logins"
                else "occurred_at, package, username, via, token_kind, second_factor"
            )
            con.execute(
                f"insert into raw_{kind} select {columns}, $id from ("
                f"select * from read_csv($path, header = true, all_varchar = true))",
                {"id": result.file_id, "path": str(staged.path)},
            )
            con.execute(
                "update ingested_files set rows_loaded = rows_read, rows_duplicate = 0 "
                "where file_id = $id",
                {"id": result.file_id},
            )
        con.execute("drop table warehouse_repairs")


def contents(con: duckdb.DuckDBPyConnection) -> tuple[object, ...]:
    """What the counts rest on: the rows of each kind, and each file's counts."""
    return (
        con.execute("select * from stg_logins order by all").fetchall(),
        con.execute("select * from stg_publishes order by all").fetchall(),
        con.execute(
            "select path, rows_read, rows_loaded, rows_duplicate from ingested_files "
            "order by file_id"
        ).fetchall(),
    )


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return landing_files(tmp_path / "landing")


def test_rows_an_older_rollout_loaded_twice_are_removed_as_a_rebuild_would_load_them(
    tmp_path: Path, files: list[Path]
) -> None:
    old = tmp_path / "old.duckdb"
    as_an_older_rollout_loaded(old, files)
    with warehouse.open_warehouse(old, read_only=False) as con:
        repaired = contents(con)
    with warehouse.open_warehouse(tmp_path / "rebuilt.duckdb") as con:
        for file in files:
            load(con, file)
        rebuilt = contents(con)
    assert repaired == rebuilt
    logins, publishes, recorded = repaired
    assert len(logins) == 6 and len(publishes) == 2  # three tries by hzoo, mjackson's login
    assert [r[1:] for r in recorded] == [(4, 4, 0), (2, 2, 0), (6, 2, 4), (2, 0, 2)]


def test_the_next_ingest_tells_the_operator_what_was_removed_and_which_reports_to_write(
    tmp_path: Path, files: list[Path]
) -> None:
    path = tmp_path / "warehouse.duckdb"
    as_an_older_rollout_loaded(path, files)
    with warehouse.open_warehouse(path) as con:
        first = ingest.ingest(con, files, quarantine_limit=0.01, now=NOW)
        again = ingest.ingest(con, files, quarantine_limit=0.01, now=NOW)
    assert first.skipped == 4 and first.repairs == [
        "repaired the warehouse: removed 4 logins rows, 2 publishes rows an older rollout had "
        "loaded twice (logins and publishes rows loaded twice, from a file and another "
        "holding them too (re-sent compressed or corrected, an export overlapping the "
        "last)), of 2022-01-10 to 2022-01-11: the reports of those days counted them "
        "twice; write each again with `rollout report --as-of DAY`"
    ]
    assert again.repairs == []  # once


def test_a_warehouse_not_repaired_yet_is_refused_by_readers_and_the_doctor_says_ingest(
    tmp_path: Path, files: list[Path]
) -> None:
    path = tmp_path / "warehouse.duckdb"
    as_an_older_rollout_loaded(path, files)
    with pytest.raises(
        RolloutError, match="not checked yet for rows that rollout loaded wrongly"
    ) as refused:
        warehouse.connect(path, read_only=True)
    assert "run `rollout ingest`" in str(refused.value)
    checked = check_warehouse(path)
    assert checked.status is Status.warn and "run `rollout ingest`" in checked.detail
    warehouse.connect(path).close()  # any writer repairs it
    with warehouse.open_warehouse(path, read_only=True) as con:
        assert con.execute("select count(*) from stg_logins").fetchone() == (6,)
    assert check_warehouse(path).status is Status.ok


def test_a_new_warehouse_and_one_without_doubles_need_no_repair_and_report_none(
    tmp_path: Path, files: list[Path]
) -> None:
    with warehouse.open_warehouse(tmp_path / "new.duckdb") as con:
        assert warehouse.repairs_pending(con) == []
        assert ingest.ingest(con, files, quarantine_limit=0.01, now=NOW).repairs == []
    clean = tmp_path / "clean.duckdb"
    as_an_older_rollout_loaded(clean, files[:2])
    with warehouse.open_warehouse(clean) as con:
        assert ingest.ingest(con, files[:2], quarantine_limit=0.01, now=NOW).repairs == []
        assert con.execute("select count(*) from stg_logins").fetchone() == (4,)

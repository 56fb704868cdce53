"""A landing file that changes while ingest reads it (a writer still writing, a sync
replacing it) is refused, nothing of it loaded: otherwise it was recorded under the
checksum of one content with the rows of another, and the next ingest, meeting a new
checksum, loaded the rows again. The next ingest, once the file is complete, loads it
once, recorded under the checksum of what it loaded."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path

import duckdb
import pytest

from rollout import warehouse
from rollout.warehouse import ingest, landing
from tests.support.ingest import LIMIT, NOW

from .conftest import typed_parquet_downloads


def _downloads_csv(path: Path, rows: int) -> None:
    lines = [f"pkg-{i},2022-01-10,{i + 1}" for i in range(rows)]
    path.write_text("package,day,downloads\n" + "\n".join(lines) + "\n")


def _downloads_parquet(path: Path, rows: int) -> None:
    typed_parquet_downloads(path, [(f"pkg-{i}", date(2022, 1, 10), i + 1) for i in range(rows)])


def _logins_csv(path: Path, rows: int) -> None:
    lines = [f"2022-01-10T10:{i:02d}:00Z,user{i},none,success" for i in range(rows)]
    path.write_text("occurred_at,username,second_factor,outcome\n" + "\n".join(lines) + "\n")


def _manifests_jsonl(path: Path, rows: int) -> None:
    path.write_text(
        "".join(
            json.dumps({"name": f"pkg-{i}", "version": "1.0.0", "maintainers": [f"user{i}"]}) + "\n"
            for i in range(rows)
        )
    )


def _events_json(path: Path, rows: int) -> None:
    stamp = int(NOW.timestamp()) - 86_400
    path.write_text(
        json.dumps(
            [
                {
                    "email": f"user{i}@example.com",
                    "timestamp": stamp + i,
                    "event": "delivered",
                    "sg_event_id": f"event-{i}",
                    "sg_message_id": f"message-{i}.filter0001.1.0",
                    "outbox_id": str(i + 1),
                }
                for i in range(rows)
            ]
        )
    )


# Each kind's path through ingest: in place (typed Parquet), staged and checked in
# place (a small CSV), staged (logins, manifests), read into a table (events).
DAY = "downloads/downloads-2022-01-10"
KINDS: dict[str, tuple[str, Callable[[Path, int], None], str]] = {
    "downloads parquet": (f"{DAY}.parquet", _downloads_parquet, "raw_downloads"),
    "downloads csv": (f"{DAY}.csv", _downloads_csv, "raw_downloads"),
    "logins": ("logins/logins-2022-01-10.csv", _logins_csv, "raw_logins"),
    "manifests": ("manifests/manifests.jsonl", _manifests_jsonl, "raw_manifests"),
    "events": ("events/post-1.json", _events_json, "raw_events"),
}


def _ingest(con: duckdb.DuckDBPyConnection, root: Path) -> ingest.IngestReport:
    return ingest.ingest(con, [root], quarantine_limit=LIMIT, landing_root=root, now=NOW)


def _recorded(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    return con.execute("select sha256, bytes from ingested_files").fetchall()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["replaced", "written to"])
def test_a_file_that_changes_after_it_was_hashed_is_refused_then_loads_once(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    how: str,
) -> None:
    relative, write, table = KINDS[kind]
    root = tmp_path / "landing"
    path = root / relative
    path.parent.mkdir(parents=True)
    write(path, 3)
    hashed = landing.fingerprint

    def then_changed(target: Path) -> landing.Fingerprint:
        """The file's fingerprint, then a change before ingest reads it: an atomic
        swap (a sync's rename) or a writer rewriting it where it stands."""
        seen = hashed(target)
        if how == "replaced":
            fresh = target.with_name("incoming." + target.name)
            write(fresh, 5)
            os.replace(fresh, target)
        else:
            write(target, 5)
        return seen

    monkeypatch.setattr(landing, "fingerprint", then_changed)
    report = _ingest(con, root)
    [refused] = report.rejected
    assert "changed while it was being read" in refused.message
    assert str(path) in refused.message
    assert warehouse.scalar(con, f"select count(*) from {table}") == 0
    assert _recorded(con) == []

    monkeypatch.setattr(landing, "fingerprint", hashed)
    again = _ingest(con, root)
    assert again.rejected == [] and again.rows_loaded == 5
    assert warehouse.scalar(con, f"select count(*) from {table}") == 5
    content = path.read_bytes()
    assert _recorded(con) == [(hashlib.sha256(content).hexdigest(), len(content))]
    # Once: a third ingest finds it loaded.
    assert _ingest(con, root).rows_loaded == 0


def test_a_file_written_to_while_it_is_hashed_is_refused(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change lands between the first look at the open file and the last."""
    root = tmp_path / "landing"
    path = root / "logins" / "logins-2022-01-10.csv"
    path.parent.mkdir(parents=True)
    _logins_csv(path, 3)
    looks = iter([os.fstat, lambda fd: (_logins_csv(path, 5), os.fstat(fd))[1]])
    real_fstat = os.fstat
    monkeypatch.setattr(landing.os, "fstat", lambda fd: next(looks, real_fstat)(fd))
    [refused] = _ingest(con, root).rejected
    assert "changed while it was being read" in refused.message
    assert warehouse.scalar(con, "select count(*) from raw_logins") == 0

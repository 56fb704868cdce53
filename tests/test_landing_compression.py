"""Compressed landing files: every text kind and format reads the same plain, as
``.gz`` and as ``.zst`` (docs/data-contracts.md): the same rows load, a bad row is
named with its file and physical line, the quarantine limit applies, a second load
is a no-op, and a refused file leaves nothing behind."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from rollout import warehouse
from rollout.core.errors import BadInput
from rollout.warehouse import landing
from tests.support.ingest import NOTHING, load, row_counts


def zstd(data: bytes) -> bytes:
    # Two frames, as multi-threaded and streaming compressors write: both must be read.
    middle = len(data) // 2
    return b"".join(
        pa.compress(part, codec="zstd", asbytes=True) for part in (data[:middle], data[middle:])
    )


COMPRESSIONS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "plain": ("", lambda data: data),
    "gz": (".gz", gzip.compress),
    "zst": (".zst", zstd),
}


# Each documented text kind and format: (kind, extension, clean lines, the same with one
# bad line, that line's number, the reason named, the raw table it loads into). A blank
# line comes before the bad one, so its physical line is not its record number.
CASES = {
    "downloads-csv": (
        "downloads",
        ".csv",
        [
            "package,day,downloads",
            "react,2022-01-10,120",
            "",
            "lodash,2022-01-10,300",
            "vue,2022-01-10,{count}",
        ],
        5,
        "downloads -5 is negative",
        "raw_downloads",
    ),
    "downloads-json": (
        "downloads",
        ".json",
        [
            '{"package": "react", "start": "2022-01-10", "end": "2022-01-12", "downloads": [',
            '  {"day": "2022-01-10", "downloads": 120},',
            "",
            '  {"day": "2022-01-11", "downloads": 125},',
            '  {"day": "2022-01-12", "downloads": {count}}',
            "]}",
        ],
        1,  # the range format's rows are named by the line of their document
        "downloads -5 is negative",
        "raw_downloads",
    ),
    "downloads-jsonl": (
        "downloads",
        ".jsonl",
        [
            '{"package": "react", "start": "2022-01-10", "end": "2022-01-10",'
            ' "downloads": [{"day": "2022-01-10", "downloads": 120}]}',
            "",
            '{"package": "lodash", "start": "2022-01-10", "end": "2022-01-10",'
            ' "downloads": [{"day": "2022-01-10", "downloads": 300}]}',
            '{"package": "vue", "start": "2022-01-10", "end": "2022-01-10",'
            ' "downloads": [{"day": "2022-01-10", "downloads": {count}}]}',
        ],
        4,
        "downloads -5 is negative",
        "raw_downloads",
    ),
    "manifests-jsonl": (
        "manifests",
        ".jsonl",
        [
            '{"name": "react", "version": "17.0.2",'
            ' "dependencies": {"loose-envify": "^1.1.0"}, "maintainers": ["gaearon"]}',
            "",
            '{"name": "lodash", "version": "4.17.21", "maintainers": ["jdalton"]}',
            '{"name": "vue", "version": "2.6.14", "maintainers": {maintainers}}',
        ],
        4,
        "maintainers must be a non-empty list",
        "raw_manifests",
    ),
    "logins-csv": (
        "logins",
        ".csv",
        [
            "occurred_at,username,second_factor,outcome",
            "2022-01-10T10:00:00Z,alice,none,success",
            "",
            "2022-01-10T10:05:00Z,carol,totp,success",
            "2022-01-10T10:06:00Z,bob,elv,{outcome}",
        ],
        5,
        "outcome 'lost' is not one of success, failed, abandoned",
        "raw_logins",
    ),
    "publishes-csv": (
        "publishes",
        ".csv",
        [
            "occurred_at,package,username,via,token_kind,second_factor",
            "2022-01-10T10:00:00Z,react,alice,token,automation,none",
            "",
            "2022-01-10T10:05:00Z,vue,carol,session,,webauthn",
            "2022-01-10T10:06:00Z,lodash,bob,{via},,totp",
        ],
        5,
        "via 'pigeon' is not one of token, session, trusted",
        "raw_publishes",
    ),
    # A post of SendGrid's Event Webhook: its rows are named by their place in the array.
    "events-json": (
        "events",
        ".json",
        [
            '[{"sg_event_id": "e1", "event": "processed", "timestamp": 1641808800,',
            '  "email": "ann@example.com", "outbox_id": "7"},',
            "",
            ' {"sg_event_id": "e2", "event": "delivered", "timestamp": 1641808805,',
            '  "email": "ann@example.com", "outbox_id": "7"},',
            ' {"sg_event_id": "e3", "event": "{event}", "timestamp": 1641808806,',
            '  "email": "bob@example.com", "outbox_id": "8"}]',
        ],
        3,
        "event 'Lost!' is not an event type (lowercase letters and _)",
        "raw_events",
    ),
    "events-jsonl": (
        "events",
        ".jsonl",
        [
            '{"sg_event_id": "e1", "event": "processed", "timestamp": 1641808800,'
            ' "email": "ann@example.com", "outbox_id": "7"}',
            "",
            '{"sg_event_id": "e2", "event": "delivered", "timestamp": 1641808805,'
            ' "email": "ann@example.com", "outbox_id": "7"}',
            '{"sg_event_id": "e3", "event": "{event}", "timestamp": 1641808806,'
            ' "email": "bob@example.com", "outbox_id": "8"}',
        ],
        4,
        "event 'Lost!' is not an event type (lowercase letters and _)",
        "raw_events",
    ),
}
CLEAN = {
    "count": "5",
    "maintainers": '["evan"]',
    "outcome": "failed",
    "via": "session",
    "event": "bounce",
}
BAD = {"count": "-5", "maintainers": "[]", "outcome": "lost", "via": "pigeon", "event": "Lost!"}


def write(tmp_path: Path, case: str, compression: str, values: dict[str, str]) -> Path:
    kind, extension, lines, *_ = CASES[case]
    suffix, compress = COMPRESSIONS[compression]
    text = "\n".join(lines) + "\n"
    for name, value in values.items():  # str.format would trip on the JSON's braces
        text = text.replace("{" + name + "}", value)
    data = text.encode()
    path = tmp_path / "landing" / kind / f"{kind}-2022-01-10{extension}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(data))
    return path


def loaded(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[object, ...]]:
    columns = [
        c
        for (c,) in con.execute(
            "select column_name from information_schema.columns "
            "where table_name = $table and column_name <> 'file_id' order by ordinal_position",
            {"table": table},
        ).fetchall()
    ]
    return con.execute(f"select {', '.join(columns)} from {table} order by all").fetchall()


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", CASES)
def test_a_clean_file_loads_the_rows_its_plain_copy_loads(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, case: str, compression: str
) -> None:
    table = CASES[case][-1]
    path = write(tmp_path, case, compression, CLEAN)
    assert landing.classify(path).format == CASES[case][1].lstrip(".")
    result = load(con, path)
    with warehouse.connect(tmp_path / "plain.duckdb") as plain:
        expected = load(plain, write(tmp_path / "plain", case, "plain", CLEAN))
        expected_rows = loaded(plain, table)
    assert (result.status, result.rows_read, result.rows_loaded, result.rows_quarantined) == (
        "loaded",
        expected.rows_read,
        expected.rows_loaded,
        0,
    )
    assert expected.rows_loaded == 3
    assert loaded(con, table) == expected_rows
    # The checksum is the compressed file's: loading it again changes nothing.
    before = row_counts(con)
    assert load(con, path).status == "skipped"
    assert row_counts(con) == before


def quarantined_one(
    con: duckdb.DuckDBPyConnection, path: Path, line: int, reason: str, table: str
) -> None:
    """Two rows of the three in ``table``, the bad one in the quarantine, named by its
    file and line, for its reason."""
    assert warehouse.scalar(con, f"select count(*) from {table}") == 2
    [(quarantined_path, quarantined_line, quarantined_reason)] = con.execute(
        "select path, line, reason from quarantine"
    ).fetchall()
    assert (quarantined_path, quarantined_line) == (str(path), line)
    assert reason in quarantined_reason


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", CASES)
def test_a_bad_row_within_the_limit_is_quarantined_with_its_file_and_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, case: str, compression: str
) -> None:
    _, _, _, line, reason, table = CASES[case]
    path = write(tmp_path, case, compression, BAD)
    result = load(con, path, limit=0.5)
    assert (result.status, result.rows_read, result.rows_loaded, result.rows_quarantined) == (
        "loaded",
        3,
        2,
        1,
    )
    quarantined_one(con, path, line, reason, table)


# An events file is a signed post nobody can correct: its bad events are quarantined
# whatever their share (rollout.warehouse.ingest._load_events); every other kind is
# refused whole over the limit.
OVER_THE_LIMIT_REFUSED = [case for case in CASES if not case.startswith("events-")]
EVENTS_CASES = [case for case in CASES if case.startswith("events-")]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", OVER_THE_LIMIT_REFUSED)
def test_a_bad_row_over_the_limit_refuses_the_file_naming_file_and_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, case: str, compression: str
) -> None:
    _, _, _, line, reason, _ = CASES[case]
    path = write(tmp_path, case, compression, BAD)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value).startswith(
        f"{path}:{line}: 1 of 3 lines is bad (33.3%, over the 1.0% limit); nothing was loaded"
    )
    assert reason in str(refused.value)
    assert row_counts(con) == NOTHING


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("case", EVENTS_CASES)
def test_a_bad_event_over_the_limit_is_quarantined_with_its_file_and_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, case: str, compression: str
) -> None:
    _, _, _, line, reason, table = CASES[case]
    path = write(tmp_path, case, compression, BAD)
    result = load(con, path)  # the default limit, 1%: one event in three is 33%
    assert (result.status, result.rows_loaded, result.rows_quarantined) == ("loaded", 2, 1)
    quarantined_one(con, path, line, reason, table)


# Files that cannot be parsed are refused whole, wherever the parse happens (the CSV
# header and the downloads range format in Python, the rest in DuckDB).
MALFORMED = [
    pytest.param(
        "downloads",
        ".csv",
        b"package,day\nreact,2022-01-10\n",
        1,
        "missing column downloads",
        id="csv-header",
    ),
    pytest.param(
        "downloads",
        ".csv",
        b"package,day,downloads\n\nreact,2022-01-10,1,2\n",
        3,
        "malformed CSV",
        id="csv-row",
    ),
    pytest.param(
        "downloads",
        ".json",
        b'{"package": "react",\n"downloads": [}\n',
        2,
        "malformed JSON",
        id="downloads-json",
    ),
    pytest.param(
        "manifests",
        ".jsonl",
        b'{"name": "react"}\n\n{"name": \n',
        3,
        "malformed JSON",
        id="manifests-jsonl",
    ),
]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize(("kind", "extension", "data", "line", "reason"), MALFORMED)
def test_a_malformed_file_is_refused_naming_its_line(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    kind: str,
    extension: str,
    data: bytes,
    line: int,
    reason: str,
    compression: str,
) -> None:
    suffix, compress = COMPRESSIONS[compression]
    path = tmp_path / kind / f"{kind}{extension}{suffix}"
    path.parent.mkdir()
    path.write_bytes(compress(data))
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert refused.value.line == line
    assert str(refused.value).startswith(f"{path}:{line}: {reason}")
    assert row_counts(con) == NOTHING


@pytest.mark.parametrize("compression", ["gz", "zst"])
@pytest.mark.parametrize("case", CASES)
def test_a_damaged_compressed_stream_is_refused_and_nothing_is_loaded(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, case: str, compression: str
) -> None:
    path = write(tmp_path, case, compression, CLEAN)
    path.write_bytes(path.read_bytes()[:-6])  # cut short: the last frame is incomplete
    with pytest.raises(BadInput) as refused:
        load(con, path)
    # Named at the first line it loses (what the lines before it held was read), the
    # path once.
    message = str(refused.value)
    assert message.startswith(f"{path}:{refused.value.line}: the compressed file is cut short")
    assert refused.value.line is not None and refused.value.line >= 1
    assert message.count(str(path)) == 1
    assert row_counts(con) == NOTHING


@pytest.mark.parametrize("compression", ["gz", "zst"])
def test_a_compressed_file_cut_mid_way_is_named_at_the_first_line_it_loses(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, compression: str
) -> None:
    """A copy cut short: the lines before the break were whole."""
    suffix, compress = COMPRESSIONS[compression]
    path = tmp_path / "logins" / f"logins-2022-01-10.csv{suffix}"
    path.parent.mkdir()
    rows = "".join(f"2022-01-10T10:00:00Z,u{i},none,success\n" for i in range(20_000))
    whole = compress(("occurred_at,username,second_factor,outcome\n" + rows).encode())
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert "the compressed file is cut short or damaged from this line on" in str(refused.value)
    # What a decoder gets from the half it has: the lines before the break (zstd's
    # stream is read a kilobyte at a time: the line named may be a few early).
    lost = readable_lines(whole[: len(whole) // 2], compression) + 1
    line = refused.value.line
    assert line == lost if compression == "gz" else lost - 40 <= line <= lost  # type: ignore[operator]
    assert row_counts(con) == NOTHING


def readable_lines(data: bytes, compression: str) -> int:
    """The whole lines a decoder gets from a cut-short stream."""
    if compression == "gz":
        return zlib.decompressobj(31).decompress(data).count(b"\n")
    import pyarrow as pa

    stream = pa.input_stream(pa.BufferReader(data), compression="zstd")
    lines = 0
    with contextlib.suppress(OSError):
        while chunk := stream.read(16):
            lines += chunk.count(b"\n")
    return lines


@pytest.mark.parametrize(("compression", "said"), [("gz", "gzip"), ("zst", "zstd")])
@pytest.mark.parametrize("case", CASES)
def test_a_file_compressed_under_a_plain_name_is_said_to_be_compressed(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, case: str, compression: str, said: str
) -> None:
    compressed = write(tmp_path, case, compression, CLEAN)
    path = compressed.with_suffix("")  # downloads-2022-01-10.csv, its bytes gzip's
    compressed.rename(path)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value) == (
        f"{path}: a {said}-compressed file, not text: decompress it first "
        f"(or name it {COMPRESSIONS[compression][0]})"
    )
    assert row_counts(con) == NOTHING

"""Landing files that are hostile or broken in ways no row check sees: bytes that are
not UTF-8, a file that cannot be read, Parquet columns of the wrong type, JSON nested
past any parser's depth, stray files, CSV errors deep in a file. Each is refused by
itself, naming the file, the line where there is one, and the reason, in one line; the
other files of the run still load (docs/data-contracts.md, "What happens to bad input")."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rollout import warehouse
from rollout.cli import app
from rollout.core.controls import quoted
from rollout.core.errors import BadInput
from rollout.core.files import written_in_place
from rollout.warehouse import ingest
from tests.support.ingest import LIMIT, NOTHING, NOW, load, row_counts

from .conftest import DATA

GOOD_CSV = DATA / "good" / "downloads-2022-01-10.csv"
STAMP = int((NOW - timedelta(days=1)).timestamp())
DAY = date(2022, 1, 10)


def event(number: int, event_id: str | None = None) -> dict[str, object]:
    return {
        "sg_event_id": event_id or f"event-{number}",
        "event": "delivered",
        "timestamp": STAMP + number,
        "email": f"user{number}@example.com",
    }


def landing_with_a_good_file(tmp_path: Path) -> Path:
    """A landing area holding one good downloads file: what must still load."""
    root = tmp_path / "landing"
    (root / "downloads").mkdir(parents=True)
    shutil.copy(GOOD_CSV, root / "downloads" / GOOD_CSV.name)
    return root


def put(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def run(con: duckdb.DuckDBPyConnection, root: Path) -> ingest.IngestReport:
    return ingest.ingest(con, [root], quarantine_limit=LIMIT, landing_root=root, now=NOW)


def the_one_refused(report: ingest.IngestReport, path: Path) -> str:
    """The refusal of ``path``, having checked it is the only one and the good file
    loaded."""
    [refused] = report.rejected
    assert refused.path == path
    assert [f.path.name for f in report.files if f.status == "loaded"] == [GOOD_CSV.name]
    assert "\n" not in refused.message
    return refused.message


# --- bytes that are not UTF-8 -----------------------------------------------------------

LATIN1 = "caf\xe9".encode("latin-1")
GOOD_MANIFEST = b'{"name": "a", "version": "1.0.0", "maintainers": ["u"]}\n'

# (file, its bytes with a latin-1 byte, the line it is on)
NOT_UTF8 = [
    pytest.param(
        "downloads/api-latin1.json",
        b'{"package": "' + LATIN1 + b'",\n "downloads": [{"day": "2022-01-10", "downloads": 1}]}',
        1,
        id="downloads-json",
    ),
    pytest.param(
        "downloads/api-latin1.jsonl",
        b'{"package": "a", "downloads": [{"day": "2022-01-10", "downloads": 1}]}\n\n'
        b'{"package": "' + LATIN1 + b'", "downloads": []}\n',
        3,
        id="downloads-jsonl",
    ),
    pytest.param(
        "manifests/manifests-latin1.jsonl",
        GOOD_MANIFEST + b'{"name": "' + LATIN1 + b'", "version": "1", "maintainers": ["u"]}\n',
        2,
        id="manifests-jsonl",
    ),
    pytest.param(
        "events/events-latin1.jsonl",
        json.dumps(event(1)).encode()
        + b"\n"
        + json.dumps(event(2)).encode()[:-1]
        + b', "email_name": "'
        + LATIN1
        + b'"}\n',
        2,
        id="events-jsonl",
    ),
    pytest.param(
        "events/events-latin1.json",
        b"[\n" + json.dumps(event(1)).encode() + b',\n{"sg_event_id": "' + LATIN1 + b'"}]',
        3,
        id="events-json",
    ),
]


@pytest.mark.parametrize(("relative", "data", "line"), NOT_UTF8)
def test_a_latin1_json_file_is_refused_naming_its_line_and_the_others_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, relative: str, data: bytes, line: int
) -> None:
    root = landing_with_a_good_file(tmp_path)
    path = put(root, relative, data)
    message = the_one_refused(run(con, root), path)
    assert message.startswith(f"{path}:{line}: not UTF-8 text: byte 0xe9")


def test_a_latin1_events_post_among_others_is_refused_alone(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Events posts are read as one batch: the one that is not UTF-8 fails the read, the
    batch is split until it is alone, and the others load."""
    root = tmp_path / "landing"
    for number in (1, 3):
        put(root, f"events/events-{number}.json", json.dumps([event(number)]).encode())
    bad = put(root, "events/events-2.json", b'[{"sg_event_id": "' + LATIN1 + b'"}]')
    report = run(con, root)
    assert [(f.path.name, f.status) for f in report.files] == [
        ("events-1.json", "loaded"),
        ("events-2.json", "rejected"),
        ("events-3.json", "loaded"),
    ]
    assert report.rejected[0].message.startswith(f"{bad}:1: not UTF-8 text: byte 0xe9")


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".gz", gzip.compress), (".zst", lambda data: pa.compress(data, "zstd", asbytes=True))],
    ids=["gz", "zst"],
)
def test_a_compressed_latin1_file_is_named_by_its_line_too(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    suffix: str,
    compress: Callable[[bytes], bytes],
) -> None:
    data = GOOD_MANIFEST * 3 + b'{"name": "' + LATIN1 + b'"}\n'
    path = put(tmp_path, f"manifests/manifests.jsonl{suffix}", compress(data))
    with pytest.raises(BadInput, match=r":4: not UTF-8 text: byte 0xe9") as refused:
        load(con, path)
    assert refused.value.line == 4
    assert row_counts(con) == NOTHING


def test_a_latin1_byte_below_the_csv_header_is_named_on_its_line_not_the_header(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # 4.4 KB: Python's reader decodes it all (8 KB a read) to give the header.
    rows = [f"pkg{n},2022-01-10,{n}" for n in range(200)]
    text = (
        "\n".join(["package,day,downloads", *rows]).encode() + b"\n" + LATIN1 + b",2022-01-10,1\n"
    )
    path = put(tmp_path, "downloads/latin1.csv", text)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value).startswith(f"{path}:202: not UTF-8 text: byte 0xe9")
    assert "header" not in str(refused.value)


# --- a file that cannot be read ------------------------------------------------------------

UNREADABLE = Path("/proc/self/mem")  # open() works, read() fails: EIO


@pytest.mark.skipif(not UNREADABLE.exists(), reason="needs Linux's /proc/self/mem")
def test_an_unreadable_file_is_refused_with_the_os_reason_and_the_others_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    root = landing_with_a_good_file(tmp_path)
    path = tmp_path / "named" / "downloads" / "api-unreadable.json"
    path.parent.mkdir(parents=True)
    # Named, a link is followed (found in a folder, one out of it is refused).
    path.symlink_to(UNREADABLE)
    good = root / "downloads" / GOOD_CSV.name
    report = ingest.ingest(con, [good, path], quarantine_limit=LIMIT, now=NOW)
    message = the_one_refused(report, path)
    assert message == f"{path}: cannot read the file: {os.strerror(5)}"
    with pytest.raises(BadInput, match="cannot read the file: Input/output error"):
        load(con, path)


def test_a_file_without_read_permission_is_refused_with_the_os_reason(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root, chmod 000 reads anyway: the refusal is what opening the file raises.
    root = landing_with_a_good_file(tmp_path)
    locked = put(root, "downloads/downloads-locked.csv", GOOD_CSV.read_bytes())
    real_open = Path.open

    def opening(path: Path, *args: object, **kwargs: object) -> object:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", opening)
    message = the_one_refused(run(con, root), locked)
    assert message == f"{locked}: cannot read the file: Permission denied"


def test_a_landing_name_on_something_not_a_file_is_refused_not_passed_over(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A day's file that is a link to nothing, or a pipe, would be a day missing unsaid."""
    root = landing_with_a_good_file(tmp_path)
    dangling = root / "downloads" / "downloads-2022-02-03.csv"
    dangling.symlink_to(tmp_path / "nowhere.csv")
    message = the_one_refused(run(con, root), dangling)
    assert message == f"{dangling}: a symbolic link to nothing: its target does not exist"
    dangling.unlink()
    pipe = root / "downloads" / "downloads-2022-02-02.csv"
    os.mkfifo(pipe)
    [refused] = run(con, root).rejected  # (the good file: loaded the first time)
    assert refused.path == pipe
    assert refused.message.endswith(
        "not a regular file (a pipe, a socket or a device): nothing to read"
    )


def test_a_folder_where_a_days_file_should_be_is_refused_not_passed_over(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A folder named like a day's file with nothing ingest reads in it, or a link to a
    folder outside the landing area (os.walk does not follow it), was passed over
    unsaid: the day missing, the run a success. A folder named so that holds landing
    files (Spark writes `x.csv/part-0.csv`) loads them."""
    root = landing_with_a_good_file(tmp_path)
    empty = root / "downloads" / "downloads-2022-02-01.csv"
    empty.mkdir()
    (empty / "_SUCCESS").touch()
    outside = tmp_path / "archive"
    outside.mkdir()
    put(outside, "downloads-2022-02-02.csv", GOOD_CSV.read_bytes())
    linked = root / "downloads" / "feb"
    linked.symlink_to(outside)
    spark = root / "downloads" / "downloads-2022-02-03.csv"
    put(spark, "part-0.csv", b"package,day,downloads\nvue,2022-01-20,7\n")
    report = run(con, root)
    assert {f.path.name: f.status for f in report.files} == {
        GOOD_CSV.name: "loaded",
        "part-0.csv": "loaded",
        empty.name: "rejected",
        linked.name: "rejected",
    }
    messages = {f.path: f.message for f in report.rejected}
    assert messages[empty] == (
        f"{empty}: a folder holding no landing file, not a file: nothing to read"
    )
    assert messages[linked].startswith(f"{linked}: a symbolic link to a folder outside {root}")
    # Named on the command line, as the day's file, it is refused too.
    [named] = ingest.ingest(con, [empty], quarantine_limit=LIMIT, now=NOW).files
    assert (named.path, named.status) == (empty, "rejected")


def test_a_subfolder_that_cannot_be_listed_is_refused_with_the_os_reason(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root, chmod 000 lists anyway: the refusal is what listing the folder raises.
    root = landing_with_a_good_file(tmp_path)
    locked = root / "downloads" / "feb"
    put(root, "downloads/feb/downloads-2022-02-01.csv", GOOD_CSV.read_bytes())
    real_scandir = os.scandir

    def listing(path: object) -> object:
        if Path(os.fsdecode(path)) == locked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", listing)
    report = run(con, root)
    message = the_one_refused(report, locked)
    assert message == f"{locked}: cannot read the folder: Permission denied"
    assert report.rejected[0].kind == "downloads"


# --- Parquet manifests with columns of the wrong type ------------------------------------


def manifests_parquet(directory: Path, **columns: pa.Array | list[object]) -> Path:
    table = {"name": ["a", "b"], "version": ["1.0.0", "2.0.0"], "maintainers": [["u"], ["v"]]}
    path = directory / "manifests" / "manifests.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({**table, **columns}), path)
    return path


@pytest.mark.parametrize(
    ("column", "values", "shown", "expected"),
    [
        (
            "dependencies",
            pa.array([[1], [2]], pa.list_(pa.int64())),
            "BIGINT[]",
            "a map of string to string",
        ),
        ("devDependencies", ["x", "y"], "VARCHAR", "a map of string to string"),
        (
            "peerDependencies",
            pa.array([[("a", 1)], None], pa.map_(pa.string(), pa.int64())),
            "MAP(VARCHAR, BIGINT)",
            "a map of string to string",
        ),
        ("maintainers", [1, 2], "BIGINT", "a list of strings"),
        (
            "maintainers",
            [[{"name": "u"}], [{"name": "v"}]],
            'STRUCT("name" VARCHAR)[]',
            "a list of strings",
        ),
        ("name", [1, 2], "BIGINT", "a string"),
        ("version", [1.0, 2.0], "DOUBLE", "a string"),
    ],
)
def test_a_parquet_manifests_column_of_the_wrong_type_is_refused_naming_it(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    column: str,
    values: pa.Array | list[object],
    shown: str,
    expected: str,
) -> None:
    path = manifests_parquet(tmp_path, **{column: values})
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value) == f"{path}: column {column} is {shown}: expected {expected}"
    assert row_counts(con) == NOTHING


# A text column of another kind's Parquet file, given another type: the file's rows,
# the other columns typed as the kind takes them.
TIMED = {"occurred_at": pa.array([datetime(2022, 1, 10, 9)], pa.timestamp("us", "UTC"))}
OTHER_KINDS = {
    "downloads": {"package": ["a"], "day": [date(2022, 1, 10)], "downloads": [5]},
    "logins": {**TIMED, "username": ["u"], "second_factor": ["none"], "outcome": ["success"]},
    "publishes": {
        **TIMED,
        "package": ["a"],
        "username": ["u"],
        "via": ["session"],
        "token_kind": ["publish"],
        "second_factor": ["totp"],
    },
}


@pytest.mark.parametrize(
    ("kind", "column"),
    [
        ("downloads", "package"),
        ("logins", "username"),
        ("logins", "outcome"),
        ("publishes", "package"),
        ("publishes", "via"),
    ],
)
def test_a_parquet_text_column_given_as_numbers_is_refused_naming_it(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, kind: str, column: str
) -> None:
    """Cast, 1234 would load as the package (or user) "1234": a file of ids, not names."""
    path = tmp_path / kind / f"{kind}-2022-01-10.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({**OTHER_KINDS[kind], column: [1234]}), path)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value) == f"{path}: column {column} is BIGINT: expected a string"
    assert row_counts(con) == NOTHING


@pytest.mark.parametrize("kind", ["downloads", "logins", "publishes"])
def test_a_parquet_file_repeating_a_column_is_refused_naming_it(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, kind: str
) -> None:
    """Which of the two is meant? DuckDB would quietly read the first."""
    path = tmp_path / kind / f"{kind}-2022-01-10.parquet"
    path.parent.mkdir(parents=True)
    columns = OTHER_KINDS[kind]
    last = list(columns)[-1]
    arrays = [pa.array(v) if not isinstance(v, pa.Array) else v for v in columns.values()]
    table = pa.Table.from_arrays([*arrays, arrays[-1]], names=[*columns, last])
    pq.write_table(table, path)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value) == f"{path}: column {last} appears twice"
    assert row_counts(con) == NOTHING


def test_a_parquet_column_repeated_in_another_case_is_refused_too(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """DuckDB matches names whatever their case: `Package` would be read as `package`."""
    path = tmp_path / "downloads" / "downloads-2022-01-10.parquet"
    path.parent.mkdir(parents=True)
    day = [date(2022, 1, 10)]
    names = ["Package", "package", "day", "downloads"]
    arrays = [pa.array(["old-name"]), pa.array(["left-pad"]), pa.array(day), pa.array([5])]
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value) == f"{path}: column package appears twice"
    assert row_counts(con) == NOTHING


def test_parquet_strings_stored_as_plain_binary_load_as_the_text_they_are(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Spark and Hive write strings as binary without the UTF-8 annotation."""
    path = tmp_path / "downloads" / "downloads-2022-01-10.parquet"
    path.parent.mkdir(parents=True)
    names = pa.array([b"left-pad", b"@scope/is-odd"], pa.binary())
    pq.write_table(
        pa.table({"package": names, "day": [date(2022, 1, 10)] * 2, "downloads": [5, 7]}), path
    )
    assert load(con, path).rows_loaded == 2
    assert con.execute("select package, downloads from raw_downloads order by 1").fetchall() == [
        ("@scope/is-odd", 7),
        ("left-pad", 5),
    ]


def test_a_parquet_manifests_column_with_no_value_at_all_still_loads(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # pandas writes a column of only missing values with Arrow's null type.
    path = manifests_parquet(tmp_path, dependencies=pa.nulls(2))
    assert load(con, path).rows_loaded == 2


# --- JSON nested past any parser's depth ---------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
# A .json file is named by the line its trouble is on, below a first object whose
# brackets inside a string (text, not nesting) outnumber the deep part's.
RANGE = b'{"package": "' + b"[" * 200_000 + b'", "downloads": []}'
DEEP_RANGES = b"[\n" + RANGE + b",\n" + DEEP + b"\n]"
DEEP_EVENTS = (
    b"[\n" + json.dumps({**event(1), "note": "{" * 200_000}).encode() + b",\n" + DEEP + b"]"
)


# A number of 5,000 digits: Python's parser refuses it with a ValueError of its own.
LONG_NUMBER = b"1" * 5000
DEEPLY = "nested too deeply"
TOO_LONG = "Exceeds the limit (4300 digits)"


@pytest.mark.parametrize(
    ("relative", "data", "line", "reason"),
    [
        ("downloads/api-deep.json", DEEP_RANGES, 3, DEEPLY),
        ("downloads/api-deep.jsonl", b'{"package": "a", "downloads": []}\n' + DEEP, 2, DEEPLY),
        ("manifests/manifests-deep.jsonl", GOOD_MANIFEST + DEEP + b"\n", 2, DEEPLY),
        ("events/events-deep.json", DEEP_EVENTS, 3, DEEPLY),
        ("events/events-deep.jsonl", json.dumps(event(1)).encode() + b"\n" + DEEP, 2, DEEPLY),
        (
            "downloads/api-long.json",
            b'{"package": "' + b"1" * 5000 + b'",\n "downloads": ' + LONG_NUMBER + b"}",
            2,
            TOO_LONG,
        ),
        (
            "downloads/api-long.jsonl",
            b'{"package": "a", "downloads": []}\n' + LONG_NUMBER,
            2,
            TOO_LONG,
        ),
        ("manifests/manifests-long.jsonl", GOOD_MANIFEST + LONG_NUMBER + b"\n", 2, TOO_LONG),
        (
            "events/events-long.json",
            b"[\n1." + b"5" * 5000 + b",\n" + LONG_NUMBER + b"]",
            3,
            TOO_LONG,
        ),
        (
            "events/events-long.jsonl",
            json.dumps(event(1)).encode() + b"\n" + LONG_NUMBER,
            2,
            TOO_LONG,
        ),
    ],
    ids=[
        *(f"deep-{kind}" for kind in ("downloads-json", "downloads-jsonl", "manifests-jsonl")),
        *(f"deep-{kind}" for kind in ("events-json", "events-jsonl")),
        *(f"long-{kind}" for kind in ("downloads-json", "downloads-jsonl", "manifests-jsonl")),
        *(f"long-{kind}" for kind in ("events-json", "events-jsonl")),
    ],
)
def test_json_python_cannot_parse_is_refused_and_the_others_load(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    relative: str,
    data: bytes,
    line: int | None,
    reason: str,
) -> None:
    """Nested deeper than Python's parser recurses, or a number longer than it reads."""
    root = landing_with_a_good_file(tmp_path)
    path = put(root, relative, data)
    message = the_one_refused(run(con, root), path)
    where = f"{path}:{line}" if line else f"{path}"
    assert message.startswith(f"{where}: malformed JSON: {reason}")


# Past the depth the parser gave up at, text it never read: a string left open there,
# full of escaped quotes, each of which the line scan once took for a string's start and
# read to the line's end (quadratic: 40 kB took 12 s, a 1 MB file hours).
OPEN_STRING = b"[" * 3_000 + b'"' + b'\\"' * 50_000


@pytest.mark.parametrize("relative", ["downloads/api-deep.json", "events/events-deep.json"])
def test_a_deep_json_file_with_a_string_left_open_is_refused_at_once(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, relative: str
) -> None:
    root = landing_with_a_good_file(tmp_path)
    path = put(root, relative, OPEN_STRING)
    started = time.monotonic()
    message = the_one_refused(run(con, root), path)
    assert time.monotonic() - started < 10
    assert message.startswith(f"{path}:1: malformed JSON: {DEEPLY}")


@pytest.mark.parametrize(
    ("name", "joined", "line"),
    [("api.jsonl", b"{}\n{}\n", 2), ("api.json", b"[{},\n\n{}]", 3)],
    ids=["jsonl", "json-array"],
)
def test_half_a_surrogate_pair_in_a_downloads_json_file_is_refused_naming_its_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, name: str, joined: bytes, line: int
) -> None:
    # Valid JSON, and Python reads it, but into a string that has no UTF-8.
    good = b'{"package": "a", "downloads": [{"day": "2022-01-10", "downloads": 1}]}'
    bad = b'{"package": "caf\\ud800", "downloads": [{"day": "2022-01-10", "downloads": 1}]}'
    path = put(tmp_path, f"downloads/{name}", joined.replace(b"{}", good, 1).replace(b"{}", bad))
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value) == (
        f"{path}:{line}: malformed JSON: package holds \\ud800, half of a UTF-16 surrogate "
        "pair, not a character"
    )


def test_an_events_post_duckdb_cannot_quote_is_refused_as_not_utf8(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # DuckDB's message quotes the bytes, and its Python error cannot be decoded.
    root = landing_with_a_good_file(tmp_path)
    path = put(root, "events/events-1.json", b"\xff\xfe\x00a")
    message = the_one_refused(run(con, root), path)
    assert message.startswith(f"{path}:1: not UTF-8 text: byte 0xff")


def invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A Parquet string column holding bytes that are not UTF-8 (pyarrow checks what it
    builds, so the buffers are laid out by hand), as another writer may leave one."""
    offsets = [0]
    for value in values:
        offsets.append(offsets[-1] + len(value))
    buffers = [None, pa.array(offsets, pa.int32()).buffers()[1], pa.py_buffer(b"".join(values))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers)


@pytest.mark.parametrize("kind", ["downloads", "manifests"])
def test_a_parquet_string_that_is_not_utf8_is_refused_and_the_others_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, kind: str
) -> None:
    root = landing_with_a_good_file(tmp_path)
    path = root / kind / f"{kind}-latin1.parquet"
    path.parent.mkdir(exist_ok=True)
    names = invalid_utf8_strings([b"react", LATIN1])
    if kind == "downloads":
        days = pa.array([DAY, DAY], pa.date32())
        table = pa.table({"package": names, "day": days, "downloads": [1, 2]})
    else:
        table = pa.table({"name": names, "version": ["1", "2"], "maintainers": [["u"], ["v"]]})
    pq.write_table(table, path)
    message = the_one_refused(run(con, root), path)
    assert message == (
        f'{path}: malformed Parquet: Invalid string encoding found: value "caf\\xE9" '
        "is not valid UTF8!"
    )


# --- stray files ----------------------------------------------------------------------------


def test_a_stray_file_in_the_landing_area_is_refused_and_the_others_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    root = landing_with_a_good_file(tmp_path)
    notes = put(root, "misc/notes.csv", b"a,b\n1,2\n")
    extra = put(root, "logins/logins-extra.json", b"{}\n")
    report = run(con, root)
    assert [(f.path, f.kind, f.status) for f in report.files] == [
        (root / "downloads" / GOOD_CSV.name, "downloads", "loaded"),
        (extra, "logins", "rejected"),
        (notes, "unknown", "rejected"),
    ]
    assert [f.message for f in report.rejected] == [
        f"{extra}: logins files must be .csv, .parquet",
        f"{notes}: cannot tell what this file holds: put it under downloads/, manifests/, "
        "logins/, publishes/ or events/, or start its name with one of those",
    ]
    assert warehouse.scalar(con, "select count(*) from ingested_files") == 1


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "downloads/downloads-2022-01-11.csv.bz2",
            "compressed as .bz2, which ingest does not read: compress landing files with "
            "gzip (.gz) or zstd (.zst), or land them plain",
        ),
        ("logins/logins-2022-01-11.csv.xz", "compressed as .xz, which ingest does not read"),
        ("manifests/manifests.jsonl.zip", "compressed as .zip, which ingest does not read"),
        ("downloads/downloads-2022-01-11.CSV.ZSTD", "compressed as .zstd, which"),
        (
            "downloads/downloads-2022-01-11.parquet.gz",
            "compressed as .gz, which ingest does not read: Parquet compresses its own "
            "columns: land it as .parquet",
        ),
    ],
)
def test_a_landing_file_compressed_in_a_way_ingest_cannot_read_is_refused_not_passed_over(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, name: str, reason: str
) -> None:
    # bzip2, xz, zip...: a day's file a release manager or an export tool landed that
    # way brought nothing, and ingest said "0 refused" (exit 0): a day missing unsaid.
    root = landing_with_a_good_file(tmp_path)
    compressed = put(root, name, b"\x42\x5a\x68 whatever the codec wrote")
    assert the_one_refused(run(con, root), compressed).startswith(f"{compressed}: {reason}")


def test_a_file_still_being_fetched_beside_its_landing_name_is_left_alone(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # Not a landing file yet (a download's .part, a checksum beside it): nothing to say.
    root = landing_with_a_good_file(tmp_path)
    put(root, "downloads/downloads-2022-01-11.csv.part", b"package,day,downl")
    put(root, "downloads/downloads-2022-01-11.csv.sha256", b"0" * 64)
    report = run(con, root)
    assert [(f.path.name, f.status) for f in report.files] == [(GOOD_CSV.name, "loaded")]


def test_a_file_a_writer_has_not_moved_into_place_yet_is_never_read(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The sample and the demo write each landing file inside a hidden folder beside it
    (rollout.core.files.written_in_place) and rename it into place: ingest walked into
    that folder and loaded the file there, half written (an ingest running meanwhile) or
    left by a killed sample, and would load it again under its real name. A hidden
    folder another user's writer made (0700) is not refused as unlistable either."""
    root = landing_with_a_good_file(tmp_path)
    final = root / "downloads" / "downloads-2022-01-11.csv"
    with pytest.raises(KeyboardInterrupt), written_in_place(final) as temporary:
        temporary.write_bytes(b"package,day,downloads\nvue,2022-01-11,7\nreact,2022-01")
        report = run(con, root)
        raise KeyboardInterrupt  # stopped there: nothing moves into place
    assert not final.exists()
    assert [(f.path.name, f.status) for f in report.files] == [(GOOD_CSV.name, "loaded")]
    # A killed writer's folder, left behind, is passed over too, readable or not.
    left = root / "downloads" / ".downloads-2022-01-12.csv.0123456789abcdef.tmp"
    put(left, "downloads-2022-01-12.csv", b"package,day,downl")
    report = run(con, root)
    assert [f.path.name for f in report.files] == [GOOD_CSV.name] and report.rejected == []
    real_scandir = os.scandir

    def listing(path: object) -> object:
        if Path(os.fsdecode(path)) == left:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "scandir", listing)
        report = run(con, root)
    assert [f.path.name for f in report.files] == [GOOD_CSV.name] and report.rejected == []


def test_a_named_file_that_is_no_landing_file_is_refused_and_the_other_named_files_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    stray = put(tmp_path, "notes.csv", b"a,b\n")
    report = ingest.ingest(con, [stray, GOOD_CSV], quarantine_limit=LIMIT, now=NOW)
    assert [(f.path, f.status) for f in report.files] == [
        (GOOD_CSV, "loaded"),
        (stray, "rejected"),
    ]
    # A path that does not exist is a mistyped argument, not a file to judge.
    with pytest.raises(BadInput, match="no such file or folder"):
        ingest.ingest(con, [tmp_path / "missing.csv"], quarantine_limit=LIMIT, now=NOW)


def test_a_named_path_with_nothing_to_read_is_said_as_what_it_is_not_as_missing(
    rollout_home: Path, tmp_path: Path
) -> None:
    pipe = tmp_path / "downloads-2022-01-11.csv"
    os.mkfifo(pipe)
    dangling = tmp_path / "downloads-2022-01-12.csv"
    dangling.symlink_to(tmp_path / "gone.csv")
    for path, reason in [
        (pipe, "not a regular file (a pipe, a socket or a device): nothing to read"),
        (dangling, "a symbolic link to nothing: its target does not exist"),
        (Path("/dev/null"), "not a regular file (a pipe, a socket or a device)"),
    ]:
        result = CliRunner().invoke(app, ["ingest", "--no-registry", str(path)])
        assert result.exit_code == 2, result.stderr
        assert f"{path}: {reason}" in result.stderr
    assert not (rollout_home / "warehouse.duckdb").exists()


def test_the_cli_lists_a_stray_file_as_refused_loads_the_rest_and_exits_2(
    rollout_home: Path,
) -> None:
    root = landing_with_a_good_file(rollout_home)
    notes = put(root, "misc/notes.csv", b"a,b\n")
    result = CliRunner().invoke(app, ["ingest", "--no-registry", "--format", "json"])
    assert result.exit_code == 2, result.stderr
    assert [(f["file"], f["status"]) for f in json.loads(result.stdout)] == [
        (str(root / "downloads" / GOOD_CSV.name), "loaded"),
        (str(notes), "rejected"),
    ]
    assert f"{notes}: cannot tell what this file holds" in result.stderr


# --- CSV errors keep DuckDB's reason -----------------------------------------------------

HEADER_AND_ROWS = "\n".join(
    ["package,day,downloads", *(f"pkg{n},2022-01-10,{n}" for n in range(1, 201))]
)


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (
            b'bad,"2022-01-10,1\nx,2022-01-10,2\n',
            "malformed CSV: Value with unterminated quote found.",
        ),
        (
            b"x" * 2_100_000 + b",2022-01-10,1\n",
            "malformed CSV: Maximum line size of 2000000 bytes exceeded.",
        ),
        # Past Python's first 8 KB read (the header's), so DuckDB finds it.
        (
            "".join(f"p{n},2022-01-10,{n}\n" for n in range(600)).encode()
            + LATIN1
            + b",2022-01-10,1\n",
            "not UTF-8 text: byte 0xe9",
        ),
    ],
    ids=["unterminated-quote", "line-too-long", "latin1-after-8-kb"],
)
def test_a_csv_error_keeps_its_reason_in_one_short_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, tail: bytes, reason: str
) -> None:
    path = put(tmp_path, "downloads/d.csv", HEADER_AND_ROWS.encode() + b"\n" + tail)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    message = str(refused.value)
    line = 802 if "UTF-8" in reason else 202
    assert message.startswith(f"{path}:{line}: {reason}")
    assert "\n" not in message and len(message) < len(str(path)) + 300


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    ("text", "line", "ends"),
    [
        ("{header}\r\n{rows}\r\nvue,2022-01-10,2\nlodash,2022-01-10,3\r\n", 402, "LF, ... CRLF"),
        ("{header}\n{rows}\nvue,2022-01-10,2\r\n", 402, "CRLF, ... LF"),
        ("{header}\n{rows}\nvue\r,2022-01-10,2\n", 402, "CR, ... LF"),
        # A line end inside a quoted value is the value's: the row's own end is LF.
        ('{header},note\n"react",2022-01-10,1,"a\r\nb"\nvue\r,2022-01-10,2,c\n', 4, "CR, ... LF"),
    ],
    ids=["lf-among-crlf", "crlf-among-lf", "lone-cr", "quoted-crlf"],
)
def test_a_csv_file_mixing_line_ends_is_refused_at_the_first_odd_line(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    text: str,
    line: int,
    ends: str,
    compress: bool,
) -> None:
    """DuckDB refuses a row ending otherwise than the first line, saying only that its
    "state machine reached an invalid state": no line, in a file of thousands."""
    rows = "\n".join(f"p{n},2022-01-10,{n}" for n in range(400))
    if text.startswith("{header}\r\n"):
        rows = rows.replace("\n", "\r\n")
    data = text.format(header="package,day,downloads", rows=rows).encode()
    name = "downloads/d.csv" + (".gz" if compress else "")
    path = put(tmp_path, name, gzip.compress(data) if compress else data)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    odd, usual = ends.split(", ... ")
    assert str(refused.value) == (
        f"{path}:{line}: malformed CSV: the line ends with {odd}, the lines before it with "
        f"{usual}: write the file with one kind of line end"
    )
    assert row_counts(con) == NOTHING


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("Package,day,downloads,package", "'Package', 'package'"),
        ("package,DAY,downloads,day", "'DAY', 'day'"),
        ("\npackage,day,downloads,Note,note", "'Note', 'note'"),
        ("package,day,downloads,O'Neil,o'neil", "'O\\'Neil', 'o\\'neil'"),
    ],
    ids=["package", "day", "column-nobody-reads-below-a-blank-line", "holding-a-quote"],
)
def test_a_csv_column_named_twice_in_another_case_is_refused_at_the_header(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, header: str, named: str
) -> None:
    """DuckDB's names are not case-sensitive: it refused `package` beside `Package` with
    its own words ("table read_csv has duplicate column name"), naming no line."""
    path = put(tmp_path, "downloads/d.csv", f"{header}\nreact,2022-01-10,5,x\n".encode())
    with pytest.raises(BadInput) as refused:
        load(con, path)
    line = header.count("\n") + 1
    assert str(refused.value) == (
        f"{path}:{line}: a column name appears twice in the header ({named}; names are "
        "not case-sensitive)"
    )
    assert row_counts(con) == NOTHING


LOGINS_HEADER = "occurred_at,username,second_factor,outcome"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        # Read leniently, the quote took the whole file for the header's one name: "missing
        # columns ... (found: <every row of the file>)".
        (
            f'"{LOGINS_HEADER}\n2022-01-10T10:00:00Z,ann,none,success\n',
            1,
            "malformed CSV header: a quote opened on this line is never closed",
        ),
        (
            '\n"occurred_at"x,username,second_factor,outcome\n',
            2,
            "malformed CSV header: a quoted value is followed by more text before its comma",
        ),
        # A name written twice, not a header missing three.
        (
            "username,username\nann,ann\n",
            1,
            "a column name appears twice in the header ('username'; names are not case-sensitive)",
        ),
    ],
    ids=["quote-never-closed", "text-after-a-closing-quote", "username-twice"],
)
def test_a_csv_header_is_refused_for_what_is_wrong_with_it(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = put(tmp_path, "logins/logins-2022-01-10.csv", text.encode())
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value).startswith(f"{path}:{line}: {reason}")
    assert row_counts(con) == NOTHING


def test_a_parquet_file_naming_a_column_twice_is_refused_for_that_not_for_the_others(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = tmp_path / "logins" / "logins-2022-01-10.parquet"
    path.parent.mkdir()
    table = pa.Table.from_arrays([pa.array(["ann"]), pa.array(["ann"])], ["username", "Username"])
    pq.write_table(table, path)
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert str(refused.value) == f"{path}: column username appears twice"


def test_a_csv_row_with_too_many_columns_quotes_only_the_start_of_a_huge_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = put(
        tmp_path, "downloads/d.csv", b"package,day,downloads\na,2022-01-10,1," + b"y" * 50_000
    )
    with pytest.raises(
        BadInput, match=r":2: malformed CSV: expected 3 columns, found 4: a,"
    ) as refused:
        load(con, path)
    assert len(str(refused.value)) < len(str(path)) + 300


def test_a_bad_row_with_a_field_over_python_csvs_limit_is_named_by_its_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # 500 KB: DuckDB reads it (lines up to 2 MB); Python's csv module, which finds the
    # line of a bad row, refused fields over 128 KB.
    name = "." + "x" * 500_000
    path = put(
        tmp_path, "downloads/d.csv", f"package,day,downloads\n\n{name},2022-01-10,1\n".encode()
    )
    with pytest.raises(BadInput, match=r":3: 1 of 1 line is bad") as refused:
        load(con, path)
    assert refused.value.line == 3
    # The refusal quotes the start of the name; the quarantine, had it been within the
    # limit, keeps it whole.
    assert len(str(refused.value)) < len(str(path)) + 400
    assert load(con, path, limit=1.0).rows_quarantined == 1
    assert con.execute("select line, length(reason) > 500000 from quarantine").fetchall() == [
        (3, True)
    ]


# --- a downloads .json array names each object's line -----------------------------------


def test_each_range_object_of_a_json_array_is_named_by_its_own_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    def ranged(package: str, count: int) -> str:
        return json.dumps(
            {"package": package, "downloads": [{"day": "2022-01-10", "downloads": count}]}
        )

    objects = [ranged("react", 1), ranged("vue", -1), ranged("zod", 2), ranged("Not Valid!", 3)]
    path = put(tmp_path, "downloads/api.json", ("[\n" + ",\n\n".join(objects) + "\n]\n").encode())
    result = load(con, path, limit=0.5)
    assert (result.rows_loaded, result.rows_quarantined) == (2, 2)
    assert con.execute("select line, reason from quarantine order by line").fetchall() == [
        (4, "downloads -1 is negative"),
        (8, "package name 'Not Valid!' is not a valid npm package name"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('[{"package": "a", "downloads": []}\n\n{"package": "b"}]', 3, "Expecting ',' delimiter"),
        ('[{"package": "a", "downloads": []},\n]', 2, "Expecting value"),
        ('[{"package": "a", "downloads": []}]\n\nx', 3, "Extra data"),
        ('[{"package": "a", "downloads": []},\n\n  7]', 3, 'expected {"package", "start"'),
    ],
    ids=["missing-comma", "trailing-comma", "extra-data", "not-an-object"],
)
def test_a_broken_json_array_is_refused_at_the_line_json_names(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = put(tmp_path, "downloads/api.json", text.encode())
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert refused.value.line == line
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("bounds", "reason"),
    [
        (
            '"start": "2022-01-10", "end": "2022-01-10"',
            "day 2022-01-11 is outside the object's range (start 2022-01-10 end 2022-01-10)",
        ),
        ('"end": "2022-01-10"', "day 2022-01-11 is outside the object's range (end 2022-01-10)"),
        ('"start": "2022-01-12", "end": "2022-01-10"', "start 2022-01-12 is after end 2022-01-10"),
        ('"start": "last week", "end": "2022-01-11"', "start 'last week' is not a YYYY-MM-DD date"),
        ('"start": "2022-01-10", "end": "2022-02-30"', "end '2022-02-30' is not a YYYY-MM-DD date"),
        ('"start": null, "end": "2022-01-11"', "start null is not a YYYY-MM-DD date"),
        ('"start": "2022-01-10", "end": 20220111', "end 20220111 is not a YYYY-MM-DD date"),
        ('"start": ["2022-01-10"]', 'start ["2022-01-10"] is not a YYYY-MM-DD date'),
        # Named as every value is (rollout.core.controls.quoted), not in repr's quotes.
        (
            '"start": "o\'neil\\u001b\\\\x", "end": "2022-01-11"',
            "start 'o\\'neil\\x1b\\\\x' is not a YYYY-MM-DD date",
        ),
    ],
    ids=[
        "day-after-end",
        "end-only",
        "start-after-end",
        "start-not-a-day",
        "impossible-end",
        "start-null",
        "end-a-number",
        "start-an-array",
        "start-holding-a-quote-and-esc",
    ],
)
def test_a_range_object_whose_days_contradict_its_start_and_end_is_refused_on_its_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, bounds: str, reason: str
) -> None:
    """The API's start and end claim the range; a day beyond them is a file put together
    wrongly, so nothing of it loads (the first object, within its range, neither)."""
    days = (
        '"downloads": [{"day": "2022-01-10", "downloads": 1}, '
        '{"day": "2022-01-11", "downloads": 2}]'
    )
    text = (
        '[{"package": "vue", "start": "2022-01-10", "end": "2022-01-11", ' + days + "},\n"
        '{"package": "react", ' + bounds + ", " + days + "}]"
    )
    path = put(tmp_path, "downloads/api.json", text.encode())
    with pytest.raises(BadInput) as refused:
        load(con, path)
    assert (refused.value.line, refused.value.reason) == (2, reason)
    assert con.execute("select count(*) from stg_downloads").fetchone() == (0,)


def test_a_range_object_without_start_and_end_loads_by_its_days(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    text = '{"package": "react", "downloads": [{"day": "2022-01-10", "downloads": 1}]}\n'
    path = put(tmp_path, "downloads/api.jsonl", text.encode())
    assert load(con, path).rows_loaded == 1


RANGE = '{"package": "react", "start": "2022-01-10", "end": "2022-01-10", '
TWICE = "malformed JSON: key 'package' appears twice in one object"


@pytest.mark.parametrize(
    ("relative", "text", "line", "reason"),
    [
        (
            "downloads/api-twice.json",
            "[\n"
            + RANGE
            + '"downloads": [{"day": "2022-01-10", "downloads": 1}]},\n'
            + RANGE
            + '"package": "lodash", "downloads": [{"day": "2022-01-10", "downloads": 1}]}\n]',
            3,
            TWICE,
        ),
        (
            "downloads/api-twice.jsonl",
            RANGE + '"downloads": [{"day": "2022-01-10", "downloads": 1, "downloads": 999}]}\n',
            1,
            "malformed JSON: key 'downloads' appears twice in one object",
        ),
        (
            "events/events-twice.json",
            json.dumps([event(1), event(2)])[:-1] + ',\n{"event": "open", "event": "click"}]',
            2,
            "malformed JSON: key 'event' appears twice in one object",
        ),
        (
            "events/events-twice.jsonl",
            json.dumps(event(1)) + '\n{"event": "open", "event": "click"}\n',
            2,
            "malformed JSON: key 'event' appears twice in one object",
        ),
    ],
    ids=["downloads-json", "downloads-jsonl", "events-json", "events-jsonl"],
)
def test_a_key_named_twice_in_one_object_is_refused_by_line(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    relative: str,
    text: str,
    line: int,
    reason: str,
) -> None:
    """Python's parser keeps the last of the two, silently: a range object's second
    "package" took the first's counts."""
    root = landing_with_a_good_file(tmp_path)
    path = put(root, relative, text.encode())
    assert the_one_refused(run(con, root), path) == f"{path}:{line}: {reason}"


def test_a_key_named_twice_is_named_quoted(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """The key, a value of the file, is named as every value is (rollout.core.controls
    .quoted): a quote or an ESC it holds reads one way, not as Python's repr had it."""
    root = landing_with_a_good_file(tmp_path)
    key = "o'neil\x1b\\x1b"
    row = '{"package": "react", "day": "2022-01-10", "downloads": 1, %s: 1, %s: 2}'
    named = json.dumps(key)
    path = put(root, "downloads/twice.jsonl", (row % (named, named)).encode())
    refused = the_one_refused(run(con, root), path)
    assert refused == f"{path}:1: malformed JSON: key {quoted(key)} appears twice in one object"


# --- names and links -----------------------------------------------------------------


def test_a_file_whose_name_is_not_utf8_is_refused_and_the_others_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A name of bytes that are not UTF-8 (a sync job's Latin-1 file) crashed the whole
    run recording it; its content is fine, its name is what is refused."""
    root = landing_with_a_good_file(tmp_path)
    folder = os.fsencode(root / "downloads")
    for name in (b"downloads-\xff.jsonl", b"downloads-\x9b2J.csv"):
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(GOOD_CSV.read_bytes() if name.endswith(b".csv") else b"")
    report = run(con, root)
    assert [f.status for f in report.files if f.path.name == GOOD_CSV.name] == ["loaded"]
    assert len(report.rejected) == 2
    for refused in report.rejected:
        assert refused.message.endswith("the file's name (or its folder's) is not UTF-8: rename it")
    assert warehouse.scalar(con, "select count(*) from ingested_files") == 1


def test_the_cli_shows_a_name_that_is_not_utf8_escaped(rollout_home: Path) -> None:
    """Its bytes came back raw to the terminal: 0x9b is CSI, a C1 control in 8 bits."""
    root = landing_with_a_good_file(rollout_home)
    with open(os.path.join(os.fsencode(root / "downloads"), b"downloads-\x9b2J.csv"), "wb") as f:
        f.write(GOOD_CSV.read_bytes())
    result = CliRunner().invoke(app, ["ingest", "--no-registry"])
    assert result.exit_code == 2, result.stderr
    for said in (result.stdout, result.stderr):
        assert "\udc9b" not in said and "\x9b" not in said
    assert "downloads-\\udc9b2J.csv" in result.stderr


def _downloads_parquet(path: Path, day: object) -> None:
    pq.write_table(pa.table({"package": ["react"], "day": [day], "downloads": [5]}), path)


# (file under a folder `column=value`, what it holds, the table and the column its rows
# load into, the value the file holds there)
HIVE_LAYOUTS: list[tuple[str, Callable[[Path], object], str, str, object]] = [
    (
        "downloads/day=2022-01-11/part-0.parquet",  # typed: loaded in place
        lambda path: _downloads_parquet(path, DAY),
        "raw_downloads",
        "day",
        DAY,
    ),
    (
        "downloads/day=2022-01-11/part-0.parquet",  # a day of text: staged
        lambda path: _downloads_parquet(path, DAY.isoformat()),
        "raw_downloads",
        "day",
        DAY,
    ),
    (
        "downloads/downloads=7/d.csv",
        lambda path: path.write_text("package,day,downloads\nreact,2022-01-10,5\n"),
        "raw_downloads",
        "downloads",
        5,
    ),
    (
        "logins/username=mallory/logins.csv",
        lambda path: path.write_text(
            "occurred_at,username,second_factor,outcome\n2022-01-10T10:00:00Z,alice,totp,success\n"
        ),
        "raw_logins",
        "username",
        "alice",
    ),
    (
        "manifests/name=evil/manifests.jsonl",
        lambda path: path.write_bytes(GOOD_MANIFEST),
        "raw_manifests",
        "name",
        "a",
    ),
    (
        "events/email=someone@example.com/events-1.json",
        lambda path: path.write_text(json.dumps([event(1)])),
        "raw_events",
        "email",
        "user1@example.com",
    ),
]


@pytest.mark.parametrize(
    ("relative", "write", "table", "column", "held"),
    HIVE_LAYOUTS,
    ids=["typed-parquet", "staged-parquet", "csv", "logins", "manifests", "events"],
)
def test_a_folder_named_like_a_column_does_not_change_the_rows_of_the_files_in_it(
    con: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    relative: str,
    write: Callable[[Path], object],
    table: str,
    column: str,
    held: object,
) -> None:
    """DuckDB's readers take a folder `key=value` above a file for Hive's layout and give
    every row that value in column `key`: a day's counts loaded under another day, alice's
    logins as mallory's (or an events post refused: its email is no JSON)."""
    root = tmp_path / "landing"
    path = root / relative
    path.parent.mkdir(parents=True)
    write(path)
    report = run(con, root)
    assert [f.status for f in report.files] == ["loaded"], report.files[0].message
    assert con.execute(f"select {column} from {table}").fetchall() == [(held,)]


def test_a_link_to_a_file_outside_the_landing_folder_is_refused_without_its_contents(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A link to /proc/self/environ put the process's environment, secrets and all, in
    the refusal ("missing columns ... (found: ...)"). A link within the folder still
    loads."""
    root = landing_with_a_good_file(tmp_path)
    secret = put(tmp_path, "elsewhere/settings.csv", b"API_KEY=hunter2,other\n1,2\n")
    outward = root / "downloads" / "downloads-2022-02-03.csv"
    outward.symlink_to(secret)
    inward = root / "downloads" / "downloads-2022-01-11.csv"
    inward.symlink_to(root / "downloads" / GOOD_CSV.name)
    report = run(con, root)
    message = the_one_refused(report, outward)
    assert message == (
        f"{outward}: a symbolic link to a file outside {root}: ingest reads only files in "
        "the folders it is given; copy the file there instead"
    )
    assert "hunter2" not in message
    # The link inside the folder names a file already loaded: the same checksum.
    assert {f.path.name: f.status for f in report.files}[inward.name] != "rejected"


def test_a_refused_header_shows_the_start_of_what_it_found_not_all_of_it(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    root = landing_with_a_good_file(tmp_path)
    wide = put(
        root,
        "downloads/downloads-2022-02-04.csv",
        ",".join(f"c{n:04}" for n in range(400)).encode() + b"\n",
    )
    message = the_one_refused(run(con, root), wide)
    assert "missing columns package, day, downloads (found: c0000, c0001" in message
    assert message.endswith("... (400 columns))")
    assert "c0399" not in message


# --- lines longer than any landing line ----------------------------------------------


def test_a_jsonl_line_longer_than_the_limit_is_refused_at_its_line_without_holding_it(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 14 MB .jsonl.gz held one line of 3 GB: DuckDB refused it, and the Python reader
    naming the line read it whole, past 6 GB. The line is refused at its number, held
    no further than the limit (here 64 KB, as 16 MB is in use)."""
    from rollout.warehouse import landing

    monkeypatch.setattr(landing, "LINE_LIMIT", 64 * 1024)
    root = landing_with_a_good_file(tmp_path)
    good = json.dumps({"name": "ok", "version": "1.0.0", "maintainers": ["ann"]}) + "\n"
    huge = json.dumps({"name": "big", "version": "1.0.0", "readme": "x" * 200_000}) + "\n"
    # Line 3 breaks the file for DuckDB: the Python reader then looks for the line.
    text = good + huge + '{"name": "cut\n'
    bomb = put(root, "manifests/manifests-2022-02-01.jsonl.gz", gzip.compress(text.encode()))
    message = the_one_refused(run(con, root), bomb)
    assert message == (
        f"{bomb}:2: the line is longer than 65,536 characters: more than a landing line may "
        "be (the file is refused whole)"
    )


def test_a_csv_line_longer_than_duckdb_reads_is_named_not_called_empty(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB stages nothing of a CSV whose data line is tens of MB long: the file was
    refused as "no rows: the file is empty"."""
    from rollout.warehouse import landing

    monkeypatch.setattr(landing, "CSV_LINE_LIMIT", 1_000)
    root = landing_with_a_good_file(tmp_path)
    long = put(
        root,
        "downloads/downloads-2022-02-05.csv",
        b"package,day,downloads\n" + b"x" * 5_000 + b",2022-02-05,1\n",
    )
    assert landing.no_rows(landing.classify(long)).line == 2
    assert landing.no_rows(landing.classify(long)).reason.startswith(
        "the line is longer than 1,000 characters"
    )
    empty = put(tmp_path, "downloads/downloads-2022-02-06.csv", b"package,day,downloads\n")
    assert landing.no_rows(landing.classify(empty)).reason == "no rows: the file is empty"


def test_a_json_document_over_the_limit_is_refused_before_it_is_held(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rollout.warehouse import landing

    monkeypatch.setattr(landing, "DOCUMENT_LIMIT", 1_000)
    root = landing_with_a_good_file(tmp_path)
    ranges = [{"package": f"p{n}", "day": "2022-02-07", "downloads": n} for n in range(100)]
    big = put(root, "downloads/downloads-2022-02-07.json", json.dumps(ranges).encode())
    message = the_one_refused(run(con, root), big)
    assert message == (
        f"{big}: over 1,000 characters of JSON, which ingest reads whole: write it as JSON "
        "lines (.jsonl) or Parquet"
    )


# --- a carriage return inside a JSON line -----------------------------------------------


def test_a_carriage_return_inside_a_downloads_json_line_is_whitespace_not_a_line_end(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """JSON takes a CR for whitespace and a JSON-lines file ends its lines with LF (as
    DuckDB reads the other kinds): the object is read whole, not cut at the CR."""
    text = (
        '{"package": "react",\r "downloads": [{"day": "2022-01-10", "downloads": 1}]}\n'
        '{"package": "vue", "downloads": [{"day": "2022-01-10",\r\r "downloads": 2}]}\n'
    )
    path = put(tmp_path, "downloads/api.jsonl", text.encode())
    assert load(con, path).rows_loaded == 2
    assert con.execute("select package, downloads from stg_downloads order by 1").fetchall() == [
        ("react", 1),
        ("vue", 2),
    ]


def test_a_bad_manifest_after_a_carriage_return_is_named_at_its_own_line(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    text = (
        '{"name": "a", "version": "1.0.0",\r\r "maintainers": ["u"]}\n'
        '{"name": "b", "version": "1.0.0", "maintainers": ["u"]}\n'
        '{"name": "Not Valid!", "version": "1.0.0", "maintainers": ["u"]}\n'
    )
    path = put(tmp_path, "manifests/m.jsonl", text.encode())
    assert load(con, path, limit=0.5).rows_loaded == 2
    assert con.execute("select line, reason from quarantine").fetchall() == [
        (3, "package name 'Not Valid!' is not a valid npm package name")
    ]


# --- a range object's values of the wrong JSON type -------------------------------------


def test_a_range_package_or_day_that_is_no_string_is_named_as_sent_not_missing(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A package or a day sent as a number (an id, 20220110) is there, only not text:
    the reason and the quarantined record say what was sent, as for a count."""
    objects = [
        {"package": "react", "downloads": [{"day": "2022-01-10", "downloads": 1}]},
        {"package": 123, "downloads": [{"day": "2022-01-10", "downloads": 2}]},
        {"package": "vue", "downloads": [{"day": 20220110, "downloads": 3}]},
        {"package": ["zod"], "downloads": [{"day": "2022-01-10", "downloads": 4}]},
        {"package": None, "downloads": [{"day": None, "downloads": 5}]},
    ]
    text = "".join(json.dumps(o) + "\n" for o in objects)
    result = load(con, put(tmp_path, "downloads/api.jsonl", text.encode()), limit=0.9)
    assert (result.rows_loaded, result.rows_quarantined) == (1, 4)
    quarantined = con.execute("select line, reason, record from quarantine order by line")
    assert [
        (line, reason, json.loads(record)) for line, reason, record in quarantined.fetchall()
    ] == [
        (
            2,
            "package name 123 is not a string",
            {"package": "123", "day": "2022-01-10", "downloads": "2"},
        ),
        (
            3,
            "day '20220110' is not a real date (expected YYYY-MM-DD)",
            {"package": "vue", "day": "20220110", "downloads": "3"},
        ),
        (
            4,
            'package name ["zod"] is not a string',
            {"package": '["zod"]', "day": "2022-01-10", "downloads": "4"},
        ),
        (5, "package name is missing", {"package": None, "day": None, "downloads": "5"}),
    ]


@pytest.mark.parametrize(
    ("value", "found"),
    [("[1]", "an array"), ('"x"', "a string"), ("7", "a number"), ("true", "a boolean")],
)
def test_a_json_line_that_is_no_object_is_named_in_json_words(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, value: str, found: str
) -> None:
    text = '{"name": "a", "version": "1.0.0", "maintainers": ["u"]}\n' + value + "\n"
    with pytest.raises(BadInput) as refused:
        load(con, put(tmp_path, "manifests/m.jsonl", text.encode()))
    assert (refused.value.line, refused.value.reason) == (
        2,
        f"malformed JSON lines: expected one object per line, found {found}",
    )

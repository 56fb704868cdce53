"""Landing files: which kind and format a file is, and how to read it into DuckDB.

Each reader stages one file into the temp table ``incoming`` in a common shape per
kind (see ``STAGED_COLUMNS``) so that validation is one SQL file per kind, whatever
the format. Parse errors become ``BadInput`` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any, Literal, NoReturn

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from rollout.core.controls import quoted
from rollout.core.counts import WHOLE_COUNT_PATTERN
from rollout.core.errors import BadInput
from rollout.core.files import compressed_as, csv_reason, duckdb_path, links_outside
from rollout.core.words import counted

Kind = Literal["downloads", "manifests", "logins", "publishes", "events"]
# Events last: they are SendGrid's delivery events, loaded in batches (rollout.warehouse.ingest).
KINDS: tuple[Kind, ...] = ("downloads", "manifests", "logins", "publishes", "events")

REQUIRED_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "downloads": ("package", "day", "downloads"),
    "manifests": ("name", "version", "maintainers"),
    "logins": ("occurred_at", "username", "second_factor", "outcome"),
    "publishes": ("occurred_at", "package", "username", "via", "token_kind", "second_factor"),
    # Not the email: SendGrid's account events (account_status_change) name no recipient.
    "events": ("sg_event_id", "event", "timestamp"),
}
MANIFEST_MAPS = ("dependencies", "devDependencies", "peerDependencies")

_COMPRESSION = (".gz", ".zst")
# What other tools compress a file as (bzip2, xz, zip, Spark's codecs, the long spellings
# of gzip and zstd): a landing file's name followed by one of these is a landing file
# ingest cannot read, refused rather than passed over (the day it brings would be
# missing unsaid). Another suffix after a landing file's name (a download's `.part`,
# a checksum's `.sha256`) is not a landing file yet, and is left alone.
_UNREAD_COMPRESSION = frozenset(
    {".bz2", ".xz", ".lzma", ".lz4", ".zip", ".7z", ".snappy", ".deflate", ".br", ".z"}
    | {".lzo", ".gzip", ".zstd", ".zlib"}
)
# Every compression a file's name may say, read or not: what makes `x.csv.<this>` a CSV
# file compressed (snooze requests, which are read plain only, refuse them all).
COMPRESSED_SUFFIXES = frozenset(_COMPRESSION) | _UNREAD_COMPRESSION
_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_SUPPORTED: dict[Kind, tuple[str, ...]] = {
    "downloads": ("csv", "parquet", "json", "jsonl"),
    "manifests": ("jsonl", "parquet"),
    "logins": ("csv", "parquet"),
    "publishes": ("csv", "parquet"),
    # What `rollout notify events serve` writes (a post's JSON array), or one a line.
    "events": ("json", "jsonl"),
}


@dataclass(frozen=True)
class LandingFile:
    path: Path
    kind: Kind
    format: str

    @property
    def lines_need_mapping(self) -> bool:
        """Whether the staged ``line`` is a record ordinal, not the physical line: text
        that DuckDB reads skipping blank lines, and a downloads ``.json`` file, staged
        with each object's place in its array (:func:`_range_documents`). Parquet has
        rows; a downloads ``.jsonl`` file is parsed here, keeping its real lines."""
        if self.kind == "downloads":
            return self.format in ("csv", "json")
        return self.format in ("csv", "jsonl")

    @property
    def row_word(self) -> str:
        """Parquet has rows, text files have lines, an events post has events (its
        ``line`` is an event's position in the array): errors say which."""
        if self.kind == "events" and self.format == "json":
            return "event"
        return "row" if self.format == "parquet" else "line"


def _unread_compression(path: Path) -> str | None:
    """The suffix of a compression ingest does not read after a landing format's
    (``.csv.bz2``: ``.bz2``), or after gzip's or zstd's on a Parquet file (``.parquet.gz``:
    Parquet compresses its own columns, and DuckDB reads no compressed Parquet file)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) < 2 or suffixes[-2] not in _FORMATS:
        return None
    last = suffixes[-1]
    if last in _UNREAD_COMPRESSION or (last in _COMPRESSION and suffixes[-2] == ".parquet"):
        return last
    return None


def _named_like_landing(path: Path) -> bool:
    """Whether ``path``'s name is a landing file's, readable or not
    (:func:`_unread_compression`)."""
    return _format_of(path) is not None or _unread_compression(path) is not None


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def _kind_of(path: Path, root: Path | None) -> Kind | None:
    parts: list[str] = []
    if root is not None:
        try:
            parts = list(path.resolve().relative_to(root.resolve()).parts[:-1])
        except ValueError:
            parts = []
    for part in [*parts, path.parent.name]:
        if part in KINDS:
            return part  # type: ignore[return-value]
    for kind in KINDS:
        if path.name.lower().startswith(kind):
            return kind
    return None


# Every DuckDB reader of a landing file says this: by default a folder named `key=value`
# above a file (Hive's layout: downloads/day=2022-01-10/part-0.parquet) makes a column
# `key` of every row, and one the file has takes the folder's value: a file's counts
# loaded under another day, its logins under another user. A landing file's rows are
# what it holds, wherever it lies.
NO_HIVE_PARTITIONS = "hive_partitioning = false"

# DuckDB's readers expand these in a path as a glob: `d[12].parquet` would read d1.parquet.
_GLOB_CHARACTERS = re.compile(r"[*?\[\]]")


def require_plain_path(file: LandingFile) -> None:
    """Refuse a path DuckDB would read as a pattern, which could load another file's
    rows under this file's checksum."""
    if _GLOB_CHARACTERS.search(str(file.path)):
        raise BadInput(
            file.path,
            None,
            "the path has a character DuckDB reads as a pattern (*, ?, [ or ]): "
            "rename the file or its folder",
        )


def classify(path: Path, root: Path | None = None) -> LandingFile:
    fmt = _format_of(path)
    kind = _kind_of(path, root)
    unread = _unread_compression(path)
    if kind is not None and unread is not None:
        how = (
            "Parquet compresses its own columns: land it as .parquet"
            if unread in _COMPRESSION
            else "compress landing files with gzip (.gz) or zstd (.zst), or land them plain"
        )
        raise BadInput(path, None, f"compressed as {unread}, which ingest does not read: {how}")
    if kind is None:
        raise BadInput(
            path,
            None,
            "cannot tell what this file holds: put it under "
            "downloads/, manifests/, logins/, publishes/ or events/, or start its name with "
            "one of those",
        )
    if fmt is None or fmt not in _SUPPORTED[kind]:
        allowed = ", ".join(f".{f}" for f in _SUPPORTED[kind])
        raise BadInput(path, None, f"{kind} files must be {allowed}")
    return LandingFile(path, kind, fmt)


# Folders of the landing area that other readers own: a folder scanned for landing
# files leaves them alone (ingest refused the whole run on the first file there).
OTHER_READERS: dict[str, str] = {
    "snoozes": "snooze requests, read by the daily pickup (rollout.phases.snoozes)",
}


def _owned_by_another_reader(path: Path, scanned: Path) -> bool:
    parts = path.relative_to(scanned).parts
    return len(parts) > 1 and parts[0] in OTHER_READERS


@dataclass(frozen=True)
class Unreadable:
    """A file named or found that is no landing file rollout reads (no kind, or a format
    its kind does not take): refused on its own, like a file that fails its checks."""

    path: Path
    kind: str  # its kind when the folder or name says one, else "unknown"
    refusal: BadInput


def survey(
    paths: Iterable[Path], root: Path | None = None
) -> tuple[list[LandingFile], list[Unreadable]]:
    """The landing files named or found under ``paths``, in a stable order, and the
    files that cannot be read as one: a stray file (notes.csv, a format its kind does
    not take), a landing file's name on something that is not a file (a symbolic link
    to nothing, a pipe) and a subfolder that cannot be listed are refused by themselves,
    and the others still load. A folder's subfolders that other readers own
    (:data:`OTHER_READERS`) are passed over; a path that does not exist is ``BadInput``
    (a mistyped argument: there is no file to judge)."""
    found: list[LandingFile] = []
    strays: list[Unreadable] = []
    days: dict[Path, str | None] = {}

    def add(path: Path, root: Path | None, scanned: Path | None = None) -> None:
        try:
            _require_utf8_name(path)
            if scanned is not None:
                _require_inside(path, scanned)
            found.append(classify(path, root))
            days[path] = day_named(path, scanned)
        except BadInput as error:
            strays.append(Unreadable(path, _kind_of(path, root) or "unknown", error))

    def refuse(path: Path, root: Path | None, reason: str) -> None:
        strays.append(
            Unreadable(path, _kind_of(path, root) or "unknown", BadInput(path, None, reason))
        )

    for path in paths:
        if path.is_dir():
            unlisted: list[OSError] = []
            # Subfolders named like a landing file (downloads-2022-01-31.csv/): each must
            # hold a file ingest reads, or the day it names would be missing unsaid.
            named_like_files = [path] if _named_like_landing(path) else []
            for folder, subfolders, names in os.walk(path, onerror=unlisted.append):
                # A hidden folder is never walked into: a writer's, holding a file not
                # moved into place yet (rollout.core.files.written_in_place: half
                # written, or left by a kill), under its landing name.
                subfolders[:] = [name for name in subfolders if not name.startswith(".")]
                for child in (Path(folder) / name for name in subfolders):
                    if _owned_by_another_reader(child / "-", path):
                        continue
                    if child.is_symlink():
                        # os.walk does not follow it: its files would be passed over.
                        # One to a folder inside this one is read there, by its path.
                        try:
                            _require_inside(child, path, "folder")
                        except BadInput as error:
                            strays.append(
                                Unreadable(child, _kind_of(child, root or path) or "unknown", error)
                            )
                        continue
                    if _named_like_landing(child):
                        named_like_files.append(child)
                for child in (Path(folder) / name for name in names):
                    if child.name.startswith(".") or not _named_like_landing(child):
                        continue
                    if _owned_by_another_reader(child, path):
                        continue
                    if child.is_file():
                        add(child, root or path, path)
                    else:
                        # Named like a landing file, but nothing to read: said, not
                        # passed over (the day it should have brought would be missing).
                        refuse(child, root or path, _not_a_file(child))
            for folder in named_like_files:
                if not any(
                    item.path.is_relative_to(folder)
                    for item in (*found, *strays)
                    if item.path != folder
                ):
                    refuse(folder, root or path, _not_a_file(folder))
            # A subfolder ingest may not list: its files would be missed unsaid.
            for error in unlisted:
                folder = Path(error.filename)
                if not _owned_by_another_reader(folder / "-", path):
                    refuse(folder, root or path, f"cannot read the folder: {_os_reason(error)}")
        elif path.is_file():
            add(path, root)
        else:
            require_existing([path])
    # Older downloads and manifests first (the newest manifests file loaded holds each
    # package's latest manifest): by the day the file's name or its folders name, as
    # exports lay them out (downloads-2022-01-31.csv, Hive's day=2022-01-31/part-0.parquet,
    # Spark's part-00000-<uuid>.parquet in it, or both ways mixed), then by name. A file
    # naming no day comes after those that do, as its name sorted before.
    found.sort(
        key=lambda f: (
            KINDS.index(f.kind),
            days[f.path] is None,
            days[f.path] or "",
            f.path.name,
            str(f.path),
        )
    )
    strays.sort(key=lambda stray: str(stray.path))
    return found, strays


_DAY = re.compile(r"(?<![0-9])([0-9]{4})-([0-9]{2})-([0-9]{2})(?![0-9])")
_HIVE_DAY = re.compile(
    r"(?:^|/)year=([0-9]{4})/month=([0-9]{1,2})/day=([0-9]{1,2})(?=/|$)", re.IGNORECASE
)


def day_named(path: Path, scanned: Path | None = None) -> str | None:
    """The day (``YYYY-MM-DD``) a landing file's path names, below the folder scanned:
    the last one written ``YYYY-MM-DD`` in its name or, failing that, in its folders
    (``downloads-2022-01-31.csv``, ``day=2022-01-31/part-0.parquet``), or Hive's
    ``year=2022/month=1/day=31/`` folders. None when it names none. Only what orders
    the files of a run: a file's rows are what it holds, whatever day it names."""
    try:
        relative = path.relative_to(scanned) if scanned is not None else Path(path.name)
    except ValueError:
        relative = Path(path.name)
    for text in (relative.name, relative.as_posix()):
        found = _DAY.findall(text)
        if found:
            return "-".join(found[-1])
    parts = _HIVE_DAY.findall(relative.parent.as_posix())
    if parts:
        year, month, day = parts[-1]
        return f"{year}-{int(month):02d}-{int(day):02d}"
    return None


def _require_utf8_name(path: Path) -> None:
    """Refuse a file whose name is not UTF-8 (the bytes Python keeps as surrogates): the
    warehouse records each file by its name, and the whole run failed on it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadInput(
            path, None, "the file's name (or its folder's) is not UTF-8: rename it"
        ) from error


def _require_inside(path: Path, scanned: Path, what: str = "file") -> None:
    """Refuse a file found in a scanned folder that is a symbolic link to a file outside
    it: ingest reads the landing folder, not what a link there points to anywhere (a
    link to /proc/self/environ put the process's secrets in the refusal's message).
    ``what``: "folder" for a link to a folder, which ingest does not follow."""
    if links_outside(path, scanned):
        raise BadInput(
            path,
            None,
            f"a symbolic link to a {what} outside {scanned}: ingest reads only files in "
            f"the folders it is given; copy the {what} there instead",
        )


def _not_a_file(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "a symbolic link to nothing: its target does not exist"
    if path.is_dir():
        return "a folder holding no landing file, not a file: nothing to read"
    return "not a regular file (a pipe, a socket or a device): nothing to read"


def require_existing(paths: Iterable[Path]) -> None:
    """``BadInput`` for the first path that is neither a file nor a folder: a mistyped
    argument, or ``ROLLOUT_HOME``, checked before anything (the warehouse) is made."""
    for path in paths:
        if not (path.is_dir() or path.is_file()):
            # There, but nothing to read (a pipe, a device, a link to nothing): said as
            # what it is, not as a path mistyped.
            there = os.path.lexists(path)
            raise BadInput(path, None, _not_a_file(path) if there else "no such file or folder")


def discover(paths: Iterable[Path], root: Path | None = None) -> list[LandingFile]:
    """:func:`survey`'s landing files, for a caller that takes no stray: the first one
    is raised as ``BadInput``."""
    found, strays = survey(paths, root)
    if strays:
        raise strays[0].refusal
    return found


def _os_reason(error: OSError) -> str:
    """An OS error's reason without its path (the message names the file already)."""
    return error.strerror or str(error)


# What the file system says of a file that any write or replacement changes: device,
# inode, size, modification and change times (ns). The change time cannot be set back.
Identity = tuple[int, int, int, int, int]

CHANGED_WHILE_READ = (
    "the file changed while it was being read (written to, or replaced): nothing of it "
    "was loaded; ingest it again once it is complete"
)


def _identity(stat: os.stat_result) -> Identity:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass(frozen=True)
class Fingerprint:
    """A landing file's SHA-256, the checksum ``ingested_files`` keeps it by, and the
    file's identity as it was hashed: a load checks the file is still that one when it
    has read it (:func:`require_unchanged`), or a file rewritten or swapped meanwhile
    would be recorded under one checksum with another's rows, and loaded again."""

    sha256: str
    identity: Identity

    @property
    def size(self) -> int:
        return self.identity[2]


def fingerprint(path: Path) -> Fingerprint:
    """The file's :class:`Fingerprint`. A file that cannot be read (no permission, an
    I/O error), or that changed while it was hashed, is ``BadInput`` with the reason:
    refused on its own, not a traceback that stops the run."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            before = _identity(os.fstat(handle.fileno()))
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
            after = _identity(os.fstat(handle.fileno()))
    except OSError as error:
        raise BadInput(path, None, f"cannot read the file: {_os_reason(error)}") from error
    if after != before:
        raise BadInput(path, None, CHANGED_WHILE_READ)
    return Fingerprint(digest.hexdigest(), after)


def require_unchanged(path: Path, fingerprint: Fingerprint) -> None:
    """``BadInput`` unless the file at ``path`` is still the one fingerprinted: checked
    after its rows were read, so what was read is what was hashed."""
    try:
        now = _identity(path.stat())
    except OSError as error:
        raise BadInput(path, None, f"cannot read the file: {_os_reason(error)}") from error
    if now != fingerprint.identity:
        raise BadInput(path, None, CHANGED_WHILE_READ)


# UTF-8, with or without the byte-order mark spreadsheet programs write first: DuckDB's
# readers skip it, so the Python readers must too (else the first column is not found).
_TEXT_ENCODING = "utf-8-sig"


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed as its extension says, streamed: DuckDB's
    readers take ``.gz`` and ``.zst`` by extension too, so both sides read the same."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".zst":
        # pyarrow (a dependency already) bundles zstd; it reads multi-frame files too.
        return pa.input_stream(str(path), compression="zstd")
    return path.open("rb")


# Where a line ends. A CSV line ends with LF, CRLF or a bare CR (the csv module and
# DuckDB's reader take each; a mix is refused: _mixed_line_end). A JSON line ends with
# LF only: a CR is JSON's whitespace, which DuckDB's JSON reader reads past inside an
# object, so a reader here splitting there refused a good file or named the wrong line.
_CSV_LINES = ""
_JSON_LINES = "\n"


@contextmanager
def open_text(path: Path, *, newline: str = _CSV_LINES) -> Iterator[io.TextIOBase]:
    """A landing text file, plain, ``.gz`` or ``.zst``, as text (UTF-8, with or
    without a byte-order mark), its lines ending as ``newline`` says (``_JSON_LINES``
    for JSON), never translated. A damaged compressed stream, an unreadable file or
    bytes that are not UTF-8 (read anywhere in the ``with`` block) are ``BadInput``."""
    try:
        with io.TextIOWrapper(_open_binary(path), encoding=_TEXT_ENCODING, newline=newline) as text:
            yield text
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error.reason) from error
    except _STREAM_ERRORS as error:
        damaged = _damaged_stream(path) if _compressed(path) and path.exists() else None
        if damaged is not None:
            raise damaged from error
        reason = _os_reason(error) if isinstance(error, OSError) else str(error)
        raise BadInput(path, None, f"cannot read the file: {reason}") from error


# What a damaged compressed stream raises as it is read: gzip's BadGzipFile (an
# OSError) or EOFError when cut short; zstd's ArrowIOError (an OSError) or ArrowInvalid.
_STREAM_ERRORS = (OSError, EOFError, pa.ArrowInvalid)


def _compressed(path: Path) -> bool:
    return path.suffix.lower() in _COMPRESSION


def _damaged_stream(path: Path) -> BadInput | None:
    """A compressed file that cannot be read to its end (cut short by a copy, damaged),
    as ``BadInput`` naming the first line it loses, as the plain file's line would be;
    None when it reads whole. Its lines are counted up to where the stream fails, only
    now that a reader failed on it."""
    complete = 0
    try:
        with _open_binary(path) as stream:
            # gzip's read1 gives what is there, so every line before the break counts;
            # pyarrow's zstd stream fails a read whole at the break, so its reads are
            # small: the line named is then at most a kilobyte's lines early.
            if isinstance(stream, gzip.GzipFile):
                read, size = stream.read1, 1 << 16
            else:
                read, size = stream.read, 1 << 10
            while chunk := read(size):
                complete += chunk.count(b"\n")
    except _STREAM_ERRORS as error:
        reason = _os_reason(error) if isinstance(error, OSError) else str(error)
        return BadInput(
            path,
            complete + 1,
            f"the compressed file is cut short or damaged from this line on ({reason}); "
            "nothing of it was loaded",
        )
    return None


# The most of one line the Python readers hold (DuckDB's maximum_object_size for
# JSON): a compressed file of a few MB may hold one line of gigabytes, which read
# whole ran ingest out of memory. A longer line is refused at its number.
LINE_LIMIT = 16 * 1024 * 1024
# DuckDB's CSV reader takes lines of up to 2,000,000 bytes (its max_line_size).
CSV_LINE_LIMIT = 2_000_000
# The most of a ``.json`` document (read whole: a JSON array) the Python readers hold.
DOCUMENT_LIMIT = 256 * 1024 * 1024


def _byte_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """A binary stream's lines, without their line feeds. Read in chunks: pyarrow's
    zstd stream has no readline. (No UTF-8 sequence holds the line feed byte, so a line
    of bytes decodes on its own.) A line over ``LINE_LIMIT`` bytes comes as its first
    ``LINE_LIMIT`` bytes, the rest passed over unheld."""
    rest, skipping = b"", False
    while chunk := stream.read(1 << 20):
        if skipping:
            end = chunk.find(b"\n")
            if end < 0:
                continue
            chunk, skipping = chunk[end + 1 :], False
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
        if len(rest) > LINE_LIMIT:
            yield rest[:LINE_LIMIT]
            rest, skipping = b"", True
    if rest:
        yield rest


def text_lines(path: Path, handle: io.TextIOBase, limit: int | None = None) -> Iterator[str]:
    """The lines of a text file open as ``handle``, each held whole only up to
    ``limit`` characters (``LINE_LIMIT``): a longer one is ``BadInput`` at its number,
    read no further."""
    limit = LINE_LIMIT if limit is None else limit
    number = 0
    while line := handle.readline(limit + 1):
        number += 1
        if len(line) > limit and not line.endswith("\n"):
            raise BadInput(
                path,
                number,
                f"the line is longer than {counted(limit, 'character')}: more than a landing "
                "line "
                "may be (the file is refused whole)",
            )
        yield line


# Kinds whose file is an export of the events of a span: one with its header (or its
# Parquet columns) and no rows is a span in which nothing happened, loaded as 0 rows.
# A downloads or manifests file with no rows is an export that went wrong: refused.
QUIET_SPAN_KINDS = frozenset({"logins", "publishes"})


def no_rows(file: LandingFile) -> BadInput | None:
    """Why a file that staged no rows is refused: a CSV line longer than DuckDB reads
    (it then stages nothing, and a file of one such line read as "empty"), at its
    number; else, unless it is a span in which nothing happened (QUIET_SPAN_KINDS: None,
    loaded as 0 rows), that it is empty."""
    if file.format == "csv":
        try:
            with open_text(file.path) as handle:
                for _ in text_lines(file.path, handle, CSV_LINE_LIMIT):
                    pass
        except BadInput as too_long:
            return too_long
    if file.kind in QUIET_SPAN_KINDS:
        return None
    return BadInput(file.path, None, "no rows: the file is empty")


def read_document(path: Path, handle: io.TextIOBase) -> str:
    """A whole ``.json`` document, up to ``DOCUMENT_LIMIT`` characters."""
    text = handle.read(DOCUMENT_LIMIT + 1)
    if len(text) > DOCUMENT_LIMIT:
        raise BadInput(
            path,
            None,
            f"over {counted(DOCUMENT_LIMIT, 'character')} of JSON, which ingest reads whole: write "
            "it as JSON lines (.jsonl) or Parquet",
        )
    return text


def _not_utf8(path: Path, reason: str) -> BadInput:
    """Where a text file stops being UTF-8, as ``BadInput`` naming the line. Decoders
    work on chunks (Python's text reader 8 KB at a time, even for a CSV header), so
    where they fail says neither the line nor what was being read: the file's lines
    are read again as bytes, only now that it is refused, to find the bad byte. A file
    compressed under a plain name (gzip's bytes in ``downloads.csv``) is said so."""
    try:
        with _open_binary(path) as stream:
            compression = compressed_as(stream.read(8))
        if compression is not None:
            named = {"gzip": " (or name it .gz)", "zstd": " (or name it .zst)"}
            return BadInput(
                path,
                None,
                f"a {compression}-compressed file, not text: decompress it first"
                + named.get(compression, ""),
            )
        with _open_binary(path) as stream:
            for number, line in enumerate(_byte_lines(stream), start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as error:
                    if len(line) == LINE_LIMIT and error.start >= LINE_LIMIT - 3:
                        continue  # a character cut where the line was (not a bad byte)
                    return BadInput(
                        path,
                        number,
                        f"not UTF-8 text: byte 0x{line[error.start]:02x} at byte "
                        f"{error.start + 1} of the line ({error.reason})",
                    )
    except (OSError, EOFError, pa.ArrowInvalid):
        pass  # the reason the first reader gave is all there is to say
    return BadInput(path, None, f"not UTF-8 text: {reason}")


# --- physical line numbers ----------------------------------------------------------
# DuckDB skips blank lines, so the n-th record is not always on line n + header.
# Mapping back is only done for the few rows that have a problem.


# DuckDB reads a CSV line of up to 2,000,000 bytes (its max_line_size); Python's csv
# module refuses a field over 131,072 characters, so naming the line of a bad row
# DuckDB read (a 500 KB package name) failed with csv.Error. The limit is the
# process's: it is raised to DuckDB's, never lowered.
_DUCKDB_MAX_LINE = 2_000_000


def _allow_fields_duckdb_reads() -> None:
    if csv.field_size_limit() < _DUCKDB_MAX_LINE:
        csv.field_size_limit(_DUCKDB_MAX_LINE)


def record_lines(file: LandingFile, ordinals: Iterable[int]) -> dict[int, int]:
    """Physical line of each 1-based record ordinal of a CSV or JSON-lines file."""
    wanted = set(ordinals)
    if not wanted:
        return {}
    if file.kind == "downloads" and file.format == "json":
        return {row[0]: row[1] for row in _range_rows(file, exact_lines=True) if row[0] in wanted}
    result: dict[int, int] = {}
    last = max(wanted)
    with open_text(
        file.path, newline=_CSV_LINES if file.format == "csv" else _JSON_LINES
    ) as handle:
        if file.format == "csv":
            _allow_fields_duckdb_reads()
            reader = csv.reader(text_lines(file.path, handle, CSV_LINE_LIMIT))
            ordinal = -1  # the header is record 0
            ended = 0  # the line the record before ended on
            for row in reader:
                # A record is named by the line it starts on (a quoted value may run
                # over several: line_num is where it ended), as the snooze reader does.
                starts, ended = ended + 1, reader.line_num
                if not row:
                    continue
                ordinal += 1
                if ordinal in wanted:
                    result[ordinal] = starts
                if ordinal >= last:
                    break
        else:
            ordinal = 0
            for number, line in enumerate(text_lines(file.path, handle), start=1):
                if not line.strip():
                    continue
                ordinal += 1
                if ordinal in wanted:
                    result[ordinal] = number
                if ordinal >= last:
                    break
    return result


# --- staging -----------------------------------------------------------------------

_LINE_IN_MESSAGE = re.compile(r"(?:in line|on Line:?)\s*(\d+)", re.IGNORECASE)
# What a message quotes from a file (DuckDB's "Original Line", a bad row's value), at
# most: a message is one line a person reads, not a 20 MB field.
_QUOTED = 200


def shorten(text: str) -> str:
    """``text`` as a message quotes it: its first 200 characters."""
    return text if len(text) <= _QUOTED else text[:_QUOTED] + "..."


def _csv_reason(lines: list[str]) -> str | None:
    """The reason in DuckDB's CSV error, one line. The message is: the line number,
    "Original Line: " and the record (which may span lines), the reason, then
    "Possible fixes"/"Possible Solution" and the reader's options. Read from the end,
    the record's text cannot be taken for the reason."""
    end = len(lines)
    while end and (
        not lines[end - 1].strip() or lines[end - 1].startswith(("Possible ", "* ", "  "))
    ):
        end -= 1
    if end < 2 or lines[end - 1].startswith(("Original Line: ", "Invalid Input Error: ")):
        return None
    return shorten(lines[end - 1].strip())


def _parse_error(file: LandingFile, error: duckdb.Error, what: str) -> BadInput:
    message = str(error)
    if _compressed(file.path):
        # DuckDB's reason for a damaged stream names the stream and the path, and no
        # line; or it reads a zstd stream up to the break and blames the last line.
        damaged = _damaged_stream(file.path)
        if damaged is not None:
            return damaged
    match = _LINE_IN_MESSAGE.search(message)
    line = int(match.group(1)) if match else None
    lines = [part.strip() for part in message.splitlines() if part.strip()]
    reason = re.sub(r"^[A-Za-z ]+Error: ", "", lines[0]) if lines else message
    # The message names the file already.
    reason = reason.replace(f' in Parquet file "{file.path}"', "")
    if lines and lines[0].startswith("Invalid Input Error: CSV Error"):
        found = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", message)
        original = next(
            (p[len("Original Line: ") :] for p in lines if p.startswith("Original Line: ")), ""
        )
        if found:
            reason = (
                f"expected {counted(int(found.group(1)), 'column')}, found {found.group(2)}: "
                f"{shorten(original)}"
            )
        else:
            # The first line only says where ("CSV Error on Line: 202"); the why is
            # further down (an unterminated quote, a line over the size limit).
            reason = _csv_reason(message.splitlines()) or reason
    return BadInput(file.path, line, f"malformed {what}: {reason}")


# What Python's JSON parser raises besides JSONDecodeError: RecursionError for a value
# nested deeper than it recurses (1,000 levels, less the stack in use; the downloads
# range format nests 3), ValueError for a number of over 4,300 digits.
_JSON_ERRORS = (ValueError, RecursionError)


class _DuplicateKey(ValueError):
    """A JSON object naming a key twice: Python's parser keeps the last, silently (a
    range object's second "package" took its counts); DuckDB refuses it. ``line``: the
    line the object starts on, where known."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {quoted(key)} appears twice in one object")
        self.line: int | None = None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return document


class _JsonFloat(float):
    """A JSON number with a fraction or an exponent, keeping the text it was written
    as: a count is judged by that text (``5.0`` is whole, ``1e3`` is exponent
    notation), as a CSV cell is (rollout.core.counts)."""

    text: str

    def __new__(cls, text: str) -> _JsonFloat:
        number = super().__new__(cls, text)
        number.text = text
        return number


# Every JSON landing file rollout parses in Python, parsed so.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_JsonFloat)
_loads = _DECODER.decode


def _json_refusal(
    path: Path, line: int | None, error: ValueError | RecursionError, text: str | None = None
) -> BadInput:
    """``BadInput`` for JSON that Python's parser refused. ``line``: where the text
    parsed starts (a JSON-lines line), or None for a whole file (``text``), whose parse
    error says its own line, or whose line is found in the text."""
    if isinstance(error, json.JSONDecodeError):
        return BadInput(path, line or error.lineno, f"malformed JSON: {error.msg}")
    if isinstance(error, _DuplicateKey):
        return BadInput(path, line or error.line, f"malformed JSON: {error}")
    if line is None and text is not None:
        line = _unparsable_line(text, deepest=isinstance(error, RecursionError))
    if isinstance(error, RecursionError):
        return BadInput(path, line, "malformed JSON: nested too deeply")
    # "Exceeds the limit (4300 digits) for integer string conversion: ...; use sys..."
    return BadInput(path, line, f"malformed JSON: {str(error).split(';')[0]}")


# The JSON tokens that say where a document is too deep or a number too long for
# Python's parser: strings (skipped whole: brackets and digits inside them are text),
# brackets, integers past its 4,300 digits (not a float's parts: a float of as many
# digits parses), line ends. A string left open (in text past where the parser gave
# up, which it never read) ends with its line, as no JSON string holds a line break:
# required to close, each escaped quote in it was tried as a string's start and read
# to the line's end, quadratic in a hostile file's line.
_JSON_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"?|[\[\]{}\n]|(?<![\d.eE+-])-?\d{4301,}(?![\d.eE])')


def _unparsable_line(text: str, *, deepest: bool) -> int | None:
    """The line of a whole JSON file where the parser gave up without saying where:
    where the nesting first reaches its deepest (``deepest``), else the first integer
    of more digits than it converts. None if the text holds neither."""
    line, depth, deepest_depth, found = 1, 0, 0, None
    for token in _JSON_TOKEN.finditer(text):
        match token.group()[0]:
            case "\n":
                line += 1
            case "[" | "{":
                depth += 1
                if deepest and depth > deepest_depth:
                    deepest_depth, found = depth, line
            case "]" | "}":
                depth -= 1
            case '"':
                pass
            case _ if not deepest:
                return line
    return found


def _first_bad_json_line(file: LandingFile) -> BadInput | None:
    """Where a JSON-lines file first breaks its contract: one object per line.

    DuckDB's parser reports where it noticed the damage, which for an unclosed
    object is the next line; a line-by-line read names the line at fault.
    """
    try:
        with open_text(file.path, newline=_JSON_LINES) as handle:
            for number, text in enumerate(text_lines(file.path, handle), start=1):
                if not text.strip():
                    continue
                try:
                    document = _loads(text)
                except _JSON_ERRORS as error:
                    return _json_refusal(file.path, number, error)
                if not isinstance(document, dict):
                    return BadInput(
                        file.path,
                        number,
                        "malformed JSON lines: expected one "
                        f"object per line, found {_json_kind(document)}",
                    )
    except BadInput as error:  # not UTF-8 (naming its line), or unreadable
        return error
    return None


def _csv_header(file: LandingFile) -> tuple[list[str], int]:
    """The header's names and the line it is on: the first line that is not blank, as
    DuckDB skips blank lines below it (told where it is, or it takes a blank line above
    it for the header, and the header for a row)."""
    with open_text(file.path) as handle:
        try:
            _allow_fields_duckdb_reads()
            # Strict: read leniently, a quote never closed took the rest of the file
            # for the header's one name ("missing columns", the file's rows quoted).
            reader = csv.reader(text_lines(file.path, handle, CSV_LINE_LIMIT), strict=True)
            line = 1
            for row in reader:
                if row:  # (a blank line is one empty row: no quoted value spans it)
                    return [c.strip() for c in row], line
                line = reader.line_num + 1
        # Bytes that are not UTF-8 are open_text's to name: the reader decodes 8 KB at
        # a time, so they may be far below the header.
        except csv.Error as error:
            reason = csv_reason(error).removeprefix("not valid CSV: ")
            raise BadInput(file.path, line, f"malformed CSV header: {reason}") from error
    raise BadInput(file.path, 1, "empty file: expected a CSV header")


def _require_columns(file: LandingFile, present: Iterable[str], line: int | None) -> None:
    present_set = set(present)
    missing = [c for c in REQUIRED_COLUMNS[file.kind] if c not in present_set]
    if missing:
        found = ", ".join(sorted(present_set)) or "none"
        if len(found) > FOUND_SHOWN:
            # A header is names, not a page of text: what a wrong file holds (an export
            # of something else, a secret) stays out of the message past a glance.
            found = found[:FOUND_SHOWN] + f"... ({counted(len(present_set), 'column')})"
        raise BadInput(
            file.path,
            line,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {found})",
        )


# The most of a refused file's header a message shows.
FOUND_SHOWN = 120


def _stage_csv_as_text(con: duckdb.DuckDBPyConnection, file: LandingFile) -> None:
    header, header_line = _csv_header(file)
    # DuckDB's names are not case-sensitive: `package` and `PACKAGE` are one name twice.
    # Said before what is missing: `username,username` is a name written twice (a
    # spreadsheet's column pasted over the one beside it), not a header without one.
    folded = [name.lower() for name in header]
    repeated = sorted({name for name in header if folded.count(name.lower()) > 1})
    if repeated:
        raise BadInput(
            file.path,
            header_line,
            "a column name appears twice in the header "
            f"({shorten(', '.join(quoted(name) for name in repeated))}; names are not "
            "case-sensitive)",
        )
    _require_columns(file, header, header_line)
    columns = {name: "VARCHAR" for name in header}
    wanted = ", ".join(f'"{c}"' for c in REQUIRED_COLUMNS[file.kind])
    try:
        con.execute(
            f"""
            create or replace temp table incoming_raw as
            select {wanted} from read_csv($path, header = true, auto_detect = false,
                delim = ',', quote = '"', escape = '"', columns = $columns,
                skip = $blank_lines, hive_partitioning = false)
            """,
            {"path": duckdb_path(file.path), "columns": columns, "blank_lines": header_line - 1},
        )
    except duckdb.Error as error:
        if "not utf-8 encoded" in str(error):
            # Said as for a JSON or a short CSV file (open_text), with the physical line.
            raise _not_utf8(file.path, "invalid byte sequence") from error
        refusal = _parse_error(file, error, "CSV")
        if refusal.line is None:
            # DuckDB's parser takes the first line's end for every line's, and where
            # another ends a row it says only that its "state machine reached an
            # invalid state", naming no line.
            refusal = _mixed_line_end(file) or refusal
        raise refusal from error


_LINE_END_NAMES = {"\r\n": "CRLF", "\n": "LF", "\r": "CR"}


def _mixed_line_end(file: LandingFile) -> BadInput | None:
    """The first line of a CSV file ending a row otherwise than the first line does
    (a line break inside a quoted value is the value's), or None."""
    first = None
    quoted = False
    with open_text(file.path) as handle:
        for number, line in enumerate(text_lines(file.path, handle, CSV_LINE_LIMIT), start=1):
            quoted ^= line.count('"') % 2 == 1
            body = line.rstrip("\r\n")
            ending = line[len(body) :]
            if quoted or not ending:
                continue
            if first is None:
                first = ending
            elif ending != first:
                return BadInput(
                    file.path,
                    number,
                    f"malformed CSV: the line ends with {_LINE_END_NAMES.get(ending, repr(ending))}"
                    f", the lines before it with {_LINE_END_NAMES.get(first, repr(first))}: "
                    "write the file with one kind of line end",
                )
    return None


def _stage_parquet(con: duckdb.DuckDBPyConnection, file: LandingFile) -> dict[str, str]:
    """Parquet keeps its types; returns the DuckDB type of each required column, having
    refused a text column of another type (``_PARQUET_TYPES``)."""
    try:
        schema = pq.read_schema(file.path)
    except (pa.ArrowInvalid, OSError) as error:
        raise BadInput(file.path, None, f"not a readable Parquet file: {error}") from error
    names = [c for c in (*REQUIRED_COLUMNS[file.kind], *MANIFEST_MAPS) if c in schema.names]
    # DuckDB matches column names whatever their case, and reads the first of two (the
    # other becomes "<name>_1"): which one is meant? A column nobody reads may repeat.
    # Said before what is missing, as for a CSV header.
    folded = [name.lower() for name in schema.names]
    repeated = [name for name in names if folded.count(name.lower()) > 1]
    if repeated:
        raise BadInput(file.path, None, f"column {', '.join(repeated)} appears twice")
    _require_columns(file, schema.names, None)
    wanted = ", ".join(f'"{c}"' for c in names)
    try:
        # A view: Parquet is already columnar and typed, so the one copy made is
        # the typed `incoming` table built over it.
        con.execute(
            f"create or replace temp view incoming_raw as "
            f"select {wanted}, file_row_number + 1 as ordinal "
            # binary_as_string: some writers (Spark, Hive) store strings as plain binary.
            f"from read_parquet({_sql_string(duckdb_path(file.path))}, file_row_number = true, "
            f"binary_as_string = true, {NO_HIVE_PARTITIONS})"
        )
    except duckdb.Error as error:
        raise _parse_error(file, error, "Parquet") from error
    described = con.execute("describe incoming_raw").fetchall()
    types = {row[0]: row[1] for row in described}
    _require_types(file, types)
    return types


def loads_in_place(file: LandingFile) -> bool:
    """Whether a downloads file can go straight into ``raw_downloads``: Parquet whose
    package, day and count already have the stored types, so nothing needs converting
    and a row can only be wrong in ways the checks see after it is in."""
    if file.kind != "downloads" or file.format != "parquet":
        return False
    try:
        schema = pq.read_schema(file.path)
    except (pa.ArrowInvalid, OSError):
        return False  # staging says what is wrong with it
    if len({name.lower() for name in schema.names}) != len(schema.names):
        return False  # a repeated column name (DuckDB's are not case-sensitive): staging
    types = dict(zip(schema.names, schema.types, strict=True))
    if not all(name in types for name in REQUIRED_COLUMNS["downloads"]):
        return False
    return (
        (pa.types.is_string(types["package"]) or pa.types.is_large_string(types["package"]))
        and pa.types.is_date32(types["day"])
        and pa.types.is_integer(types["downloads"])
    )


def _sql_string(text: str) -> str:
    """A SQL string literal: views cannot take parameters, so the path is quoted here."""
    return "'" + text.replace("'", "''") + "'"


def _text_or_typed(column: str, types: dict[str, str] | None) -> str:
    return "VARCHAR" if types is None else types.get(column, "VARCHAR")


# Integer types whose every value fits the stored BIGINT.
_ALWAYS_BIGINT = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UINTEGER", "USMALLINT", "UTINYINT")
_INTEGER_TYPES = (
    "BIGINT",
    "INTEGER",
    "SMALLINT",
    "TINYINT",
    "UBIGINT",
    "UINTEGER",
    "USMALLINT",
    "UTINYINT",
    "HUGEINT",
)


def _downloads_expressions(types: dict[str, str] | None) -> tuple[str, str, str, str]:
    """SQL for a downloads row's typed day and count, and their values as sent.

    The as-sent values only serve messages, so where the file's own type is already
    right they are NULL: a constant column costs nothing, a copy of 4M values does.
    """
    day_type = _text_or_typed("day", types)
    day_raw = "day"
    if day_type == "DATE":
        day, day_raw = "day", "cast(null as varchar)"
    elif day_type.startswith("TIMESTAMP"):
        day = "case when day = date_trunc('day', day) then cast(day as date) end"
    else:
        day = (
            "case when regexp_full_match(trim(cast(day as varchar)), '\\d{4}-\\d{2}-\\d{2}') "
            "then try_cast(trim(cast(day as varchar)) as date) end"
        )
    count_type = _text_or_typed("downloads", types)
    count_raw = "downloads"
    if count_type in _ALWAYS_BIGINT:
        count, count_raw = "cast(downloads as bigint)", "cast(null as varchar)"
    elif count_type in _INTEGER_TYPES:
        # Wider than BIGINT: the text is kept, so a count too large says so.
        count, count_raw = "try_cast(downloads as bigint)", "cast(downloads as varchar)"
    elif count_type in ("DOUBLE", "FLOAT") or count_type.startswith("DECIMAL"):
        count = "case when downloads = floor(downloads) then try_cast(downloads as bigint) end"
        # A whole count too large for BIGINT is out of range, not "not a whole number":
        # its text is its digits (a double's is 1e+20, a decimal's 1...0.00).
        digits = (
            "cast(floor(downloads) as varchar)"
            if count_type.startswith("DECIMAL")
            else "printf('%.0f', downloads)"
        )
        count_raw = (
            f"case when isfinite(downloads) and downloads = floor(downloads) then {digits} "
            "else cast(downloads as varchar) end"
        )
    else:
        # Text: try_cast would round '10.5' and accept '1e3'. A whole count is digits,
        # with a fraction of zeros allowed (5.0), as rollout.core.counts says.
        text = "trim(cast(downloads as varchar))"
        count = (
            f"case when regexp_full_match({text}, {_sql_string(WHOLE_COUNT_PATTERN)}) "
            f"then try_cast(split_part({text}, '.', 1) as bigint) end"
        )
    return day, day_raw, count, count_raw


def _finish_downloads(
    con: duckdb.DuckDBPyConnection, types: dict[str, str] | None, has_ordinal: bool
) -> None:
    """Materialize what varies by row in ``incoming_rows``; ``incoming`` is a view
    adding what does not (for a typed Parquet file, the line is the row number and
    there are no as-sent texts), so no constant column is ever copied."""
    day, day_raw, count, count_raw = _downloads_expressions(types)
    ordinal = "ordinal" if has_ordinal else "rowid + 1"
    stored = [
        f"{ordinal} as ordinal",
        "cast(package as varchar) as package",
        f"{day} as day",
        f"{count} as downloads",
    ]
    line = "ordinal"
    constant = "cast(null as varchar)"
    package_raw = constant
    if has_ordinal and types is None:  # the JSON range format knows its lines
        stored.append("line")
        line = "line"
        package_raw = "package_raw"  # and a package may be a JSON number, not text
    for value, name in (
        (package_raw, "package_raw"),
        (day_raw, "day_raw"),
        (count_raw, "downloads_raw"),
    ):
        if value != constant:
            stored.append(f"{value} as {name}")
    con.execute(
        f"create or replace temp table incoming_rows as select {', '.join(stored)} "
        "from incoming_raw"
    )
    day_raw_column = "day_raw" if day_raw != constant else constant
    count_raw_column = "downloads_raw" if count_raw != constant else constant
    con.execute(
        f"""
        create or replace temp view incoming as
        select ordinal, {line} as line, package, {package_raw} as package_raw,
            {day_raw_column} as day_raw, day,
            {count_raw_column} as downloads_raw, downloads
        from incoming_rows
        """
    )


def _json_count(value: object) -> str | None:
    """A count of the range format as text, judged as a CSV cell is: a number as it was
    written (5, 5.0, 1e3), a string as it is ("5"); anything else (true, [5]) as its
    JSON text, which is no whole number."""
    if value is None:
        return None
    if isinstance(value, _JsonFloat):
        return value.text
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _after_space(text: str, position: int) -> int:
    match = _JSON_SPACE.match(text, position)
    return match.end() if match else position


def _json_documents(text: str) -> list[tuple[int, object]]:
    """The range objects of a ``.json`` file, each with the line it starts on: the file
    is one object, or an array of them. An array is read value by value (``raw_decode``)
    so that each object's rows are named by its own line, not all by the array's: a few
    steps an object, none a row. Malformed JSON raises ``JSONDecodeError`` at its line
    (``json.loads`` of the whole text says where, when the array itself is broken)."""
    position = _after_space(text, 0)
    if not text.startswith("[", position):
        line = text.count("\n", 0, position) + 1
        try:
            return [(line, _loads(text))]
        except _DuplicateKey as error:
            error.line = line
            raise
    documents: list[tuple[int, object]] = []
    line, counted = 1, 0
    position = _after_space(text, position + 1)
    closed = text.startswith("]", position)  # an empty array
    while not closed:
        line, counted = line + text.count("\n", counted, position), position
        try:
            document, end = _DECODER.raw_decode(text, position)
        except _DuplicateKey as error:
            error.line = line
            raise
        documents.append((line, document))
        position = _after_space(text, end)
        closed = text.startswith("]", position)
        if not closed:
            if not text.startswith(",", position):
                _raise_json_error(text, position)
            position = _after_space(text, position + 1)
    if _after_space(text, position + 1) != len(text):
        _raise_json_error(text, position + 1)  # something follows the array
    return documents


def _raise_json_error(text: str, position: int) -> NoReturn:
    """The error ``json.loads`` gives for ``text``, which is not JSON: its message is the
    one every malformed JSON file gets."""
    json.loads(text)
    raise json.JSONDecodeError("unexpected text", text, position)  # not reached


def _range_documents(file: LandingFile, *, exact_lines: bool = False) -> list[tuple[int, object]]:
    """Each range object of a downloads ``.json`` or ``.jsonl`` file with its line. In a
    ``.json`` file, unless ``exact_lines``, an object's place in the array stands for
    its line (the file is one object or an array of them): the whole text in one
    ``json.loads`` stages a third faster than object by object, and lines are only
    needed for the few objects that have a problem (:func:`_object_line`)."""
    with open_text(file.path, newline=_JSON_LINES) as handle:
        if file.format == "json":
            text = read_document(file.path, handle)
            try:
                if exact_lines:
                    return _json_documents(text)
                try:
                    document = _loads(text)
                except _DuplicateKey:
                    _json_documents(text)  # again, object by object: the line of the one
                    raise
            except _JSON_ERRORS as error:
                raise _json_refusal(file.path, None, error, text) from error
            return list(enumerate(document if isinstance(document, list) else [document], 1))
        documents = []
        for number, line in enumerate(text_lines(file.path, handle), start=1):
            if not line.strip():
                continue
            try:
                documents.append((number, _loads(line)))
            except _JSON_ERRORS as error:
                raise _json_refusal(file.path, number, error) from error
        return documents


# (ordinal, line, package, day, count): a row of the downloads API's range format.
RangeRow = tuple[int, int, object, object, str | None]


def _object_line(file: LandingFile, line: int) -> int:
    """The physical line of the range object staged with ``line``: in a ``.json`` file
    its place in the array, found by reading the file again object by object (only
    when it is refused or has bad rows)."""
    if file.format != "json":
        return line
    return _range_documents(file, exact_lines=True)[line - 1][0]


def _range_rows(file: LandingFile, *, exact_lines: bool = False) -> Iterator[RangeRow]:
    """(ordinal, line, package, day, count) from the downloads API's range format; the
    line as :func:`_range_documents` gives it."""
    ordinal = 0
    for line, document in _range_documents(file, exact_lines=exact_lines):
        problem = None
        if not isinstance(document, dict) or not isinstance(document.get("downloads"), list):
            problem = (
                'expected {"package", "start", "end", "downloads": [{"day", "downloads"}, ...]}'
            )
        elif "package" not in document:
            problem = "missing field package"
        else:
            problem = _range_problem(document)
        if problem is not None:
            raise BadInput(file.path, line if exact_lines else _object_line(file, line), problem)
        package = document["package"]
        for entry in document["downloads"]:
            ordinal += 1
            if not isinstance(entry, dict) or "day" not in entry or "downloads" not in entry:
                yield ordinal, line, package, None, None
                continue
            yield ordinal, line, package, entry["day"], _json_count(entry["downloads"])


def _range_day(value: object) -> date | None:
    """The day a YYYY-MM-DD string names, else None (Python reads 20220131 and
    2022-W05-1 too: a day in that form is its own isoformat)."""
    if not isinstance(value, str):
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    return day if day.isoformat() == value else None


def _quoted(value: object) -> str:
    """A JSON value as a message quotes it: a string in quotes (as the row checks quote
    a value: rollout.core.controls.quoted), anything else as its JSON text (null, not
    Python's None), shortened."""
    if isinstance(value, str):
        return shorten(quoted(value))
    return shorten(json.dumps(value))


def _range_problem(document: dict[str, Any]) -> str | None:
    """Why a range object contradicts itself, or None. Its ``start`` and ``end`` are
    optional (the rows carry their days), but where given they are the object's claim:
    dates, in order, and bounding every day it counts. A day outside them is a file put
    together wrongly (another range's rows, a shifted export), not one bad count."""
    bounds = {}
    for field in ("start", "end"):
        if field in document:
            bounds[field] = _range_day(document[field])
            if bounds[field] is None:
                return f"{field} {_quoted(document[field])} is not a YYYY-MM-DD date"
    start, end = bounds.get("start"), bounds.get("end")
    if start is not None and end is not None and start > end:
        return f"start {start} is after end {end}"
    if start is None and end is None:
        return None
    for entry in document["downloads"]:
        # A day that is no date is the row's own problem, named by the row checks.
        day = _range_day(entry.get("day")) if isinstance(entry, dict) else None
        if day is not None and (
            (start is not None and day < start) or (end is not None and day > end)
        ):
            claimed = " ".join(f"{field} {value}" for field, value in bounds.items())
            return f"day {day} is outside the object's range ({claimed})"
    return None


def _json_text(value: object) -> str | None:
    """A JSON value that is there but no string (a number, an array, true), as its JSON
    text: what a message and the quarantine quote. None for a string or null."""
    return None if value is None or isinstance(value, str) else json.dumps(value)


def _text_column(
    file: LandingFile, rows: list[RangeRow], index: int, name: str, *, as_sent: bool = False
) -> pa.Array:
    """Each row's ``index``-th value, where it is a string; with ``as_sent``, any other
    value but null as its JSON text (a day of 20220110 is there, and no date). JSON may
    escape half of a UTF-16 surrogate pair ("\\ud800"), which Python reads into a string
    that is no text (it has no UTF-8): the file is refused at the first one, found only
    then."""
    values = [
        r[index] if isinstance(r[index], str) else _json_text(r[index]) if as_sent else None
        for r in rows
    ]
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError as error:
        for row, value in zip(rows, values, strict=True):
            if value is not None and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as bad:
                    code = ord(value[bad.start])
                    raise BadInput(
                        file.path,
                        _object_line(file, row[1]),
                        f"malformed JSON: {name} holds \\u{code:04x}, half of a UTF-16 "
                        "surrogate pair, not a character",
                    ) from error
        raise


def _stage_json_range(con: duckdb.DuckDBPyConnection, file: LandingFile) -> None:
    rows = list(_range_rows(file))
    table = pa.table(
        {
            "ordinal": pa.array([r[0] for r in rows], pa.int64()),
            "line": pa.array([r[1] for r in rows], pa.int64()),
            "package": _text_column(file, rows, 2, "package"),
            # A package that is no string is no name (an id?): kept apart, as sent.
            "package_raw": pa.array([_json_text(r[2]) for r in rows], pa.string()),
            "day": _text_column(file, rows, 3, "day", as_sent=True),
            "downloads": pa.array([r[4] for r in rows], pa.string()),
        }
    )
    con.register("range_rows", table)
    try:
        con.execute("create or replace temp table incoming_raw as select * from range_rows")
    finally:
        con.unregister("range_rows")


def stage_downloads(con: duckdb.DuckDBPyConnection, file: LandingFile) -> None:
    if file.format == "csv":
        _stage_csv_as_text(con, file)
        _finish_downloads(con, None, has_ordinal=False)
    elif file.format == "parquet":
        types = _stage_parquet(con, file)
        _finish_downloads(con, types, has_ordinal=True)
    else:
        _stage_json_range(con, file)
        _finish_downloads(con, None, has_ordinal=True)


_MAP_TYPE = "MAP(VARCHAR, VARCHAR)"

# The type each text column of a Parquet file must have (docs/data-contracts.md), as
# DuckDB names it, and how a message says it. Another type is refused whole, naming the
# column: cast, an integer name would load as "1" (a valid package name) and a list of
# maintainer objects as their text, and a list where a map belongs fails the shaping
# query itself. Times and counts are read typed or as text (_occurred_at,
# _downloads_expressions). "NULL": a column holding no value at all (as pandas writes
# one); its rows are bad.
_STRING = (re.compile(r'VARCHAR|"NULL"'), "a string")
_PARQUET_TYPES: dict[str, dict[str, tuple[re.Pattern[str], str]]] = {
    "downloads": {"package": _STRING},
    "manifests": {
        "name": _STRING,
        "version": _STRING,
        "maintainers": (re.compile(r'VARCHAR\[\d*\]|"NULL"'), "a list of strings"),
        **dict.fromkeys(
            MANIFEST_MAPS,
            (re.compile(r'MAP\(VARCHAR, VARCHAR\)|"NULL"'), "a map of string to string"),
        ),
    },
    "logins": dict.fromkeys(("username", "second_factor", "outcome"), _STRING),
    "publishes": dict.fromkeys(
        ("package", "username", "via", "token_kind", "second_factor"), _STRING
    ),
}


def _require_types(file: LandingFile, types: dict[str, str]) -> None:
    for column, (allowed, expected) in _PARQUET_TYPES.get(file.kind, {}).items():
        if column in types and not allowed.fullmatch(types[column]):
            raise BadInput(
                file.path,
                None,
                f"column {column} is {types[column]}: expected {expected}",
            )


def _shape_parquet_manifests(types: dict[str, str]) -> str:
    maps = []
    for name in MANIFEST_MAPS:
        if name in types:
            # An Arrow map may repeat a key; a manifest's may not (it would count twice).
            maps.append(
                f'try_cast("{name}" as {_MAP_TYPE}) as "{name}", '
                f'("{name}" is not null and try_cast("{name}" as {_MAP_TYPE}) is null'
                # A range is a string: a null one is no range (as in a JSON manifest).
                f' or coalesce(len(list_filter(map_values("{name}"), lambda range: range is null))'
                f" > 0, false))"
                f' as "{name}_malformed", '
                f'coalesce(len(map_keys("{name}")) <> len(list_distinct(map_keys("{name}"))),'
                f' false) as "{name}_repeats"'
            )
        else:
            maps.append(
                f'cast(null as {_MAP_TYPE}) as "{name}", false as "{name}_malformed", '
                f'false as "{name}_repeats"'
            )
    return f"""
        select ordinal, ordinal as line,
            try_cast(name as varchar) as name,
            try_cast(version as varchar) as version,
            try_cast(maintainers as varchar[]) as maintainers,
            (maintainers is not null and try_cast(maintainers as varchar[]) is null)
                as maintainers_malformed,
            {", ".join(maps)}
        from incoming_raw
    """


def _shape_json_manifests(con: duckdb.DuckDBPyConnection, file: LandingFile) -> str:
    columns = {c: "JSON" for c in ("name", "version", "maintainers", *MANIFEST_MAPS)}
    try:
        con.execute(
            "create or replace temp table incoming_raw as "
            "select * from read_json($path, format = 'newline_delimited', columns = $columns, "
            f"{NO_HIVE_PARTITIONS})",
            {"path": duckdb_path(file.path), "columns": columns},
        )
    except duckdb.Error as error:
        raise (_first_bad_json_line(file) or _parse_error(file, error, "JSON")) from error
    # JSON allows an object to repeat a key (JSON.parse keeps the last); DuckDB's cast
    # to a map then gives NULL. Either way the manifest is ambiguous: flagged, not
    # silently loaded without its dependencies.
    maps = ", ".join(
        f"""case when json_type("{m}") = 'OBJECT' then try_cast("{m}" as {_MAP_TYPE}) end
                as "{m}",
            coalesce(json_type("{m}") not in ('OBJECT', 'NULL'), false)
                -- A range is a string: a number, null, object or boolean is none (cast,
                -- it loaded as its JSON text, or NULL, and counted as a dependent).
                or coalesce(json_type("{m}") = 'OBJECT' and len(list_filter(
                    map_values(try_cast("{m}" as MAP(VARCHAR, JSON))),
                    lambda range: coalesce(json_type(range), 'NULL') <> 'VARCHAR')) > 0, false)
                as "{m}_malformed",
            coalesce(json_type("{m}") = 'OBJECT'
                and len(json_keys("{m}")) <> len(list_distinct(json_keys("{m}"))), false)
                as "{m}_repeats\""""
        for m in MANIFEST_MAPS
    )
    # Registries' own manifests list maintainers as {"name", "email"}: take the name.
    return f"""
        select rowid + 1 as ordinal, rowid + 1 as line,
            case when json_type(name) = 'VARCHAR' then name ->> '$' end as name,
            case when json_type(version) = 'VARCHAR' then version ->> '$' end as version,
            case when json_type(maintainers) = 'ARRAY' then list_transform(
                json_extract(maintainers, '$[*]'),
                lambda m: case json_type(m) when 'VARCHAR' then m ->> '$'
                                       when 'OBJECT' then m ->> 'name' end)
            end as maintainers,
            coalesce(json_type(maintainers) not in ('ARRAY', 'NULL'), false)
                as maintainers_malformed,
            {maps}
        from incoming_raw
    """


def stage_manifests(con: duckdb.DuckDBPyConnection, file: LandingFile) -> None:
    """Stage manifests as ``incoming`` (a table, one row a manifest) and
    ``incoming_dependencies`` (a view, one row a declared dependency by ordinal and
    kind).

    The dependencies stay a view: at npm scale they are ~40M rows, read twice (the
    name check and the load), and streaming them costs less than a copy in memory.
    """
    if file.format == "parquet":
        types = _stage_parquet(con, file)
        shaped = _shape_parquet_manifests(types)
    else:
        shaped = _shape_json_manifests(con, file)
    con.execute(f"create or replace temp view manifests_shaped as {shaped}")
    con.execute(
        """
        create or replace temp table incoming as
        select ordinal, line, name, version, maintainers, maintainers_malformed,
            dependencies_malformed, devDependencies_malformed, peerDependencies_malformed,
            dependencies_repeats, devDependencies_repeats, peerDependencies_repeats,
            -- Which of its own maps list the package itself: known here for 4M rows,
            -- it spares the metrics a 40M-row string comparison.
            list_filter(
                [case when list_contains(map_keys(dependencies), name) then 'prod' end,
                 case when list_contains(map_keys(devDependencies), name) then 'dev' end,
                 case when list_contains(map_keys(peerDependencies), name) then 'peer' end],
                lambda kind: kind is not null
            ) as self_dependency_kinds
        from manifests_shaped
        """
    )
    con.execute(
        """
        create or replace temp view incoming_dependencies as
        select ordinal, unnest(map_keys(dependencies)) as dependency,
            unnest(map_values(dependencies)) as range, 'prod' as kind
        from manifests_shaped where dependencies is not null
        union all
        select ordinal, unnest(map_keys(devDependencies)), unnest(map_values(devDependencies)),
            'dev'
        from manifests_shaped where devDependencies is not null
        union all
        select ordinal, unnest(map_keys(peerDependencies)), unnest(map_values(peerDependencies)),
            'peer'
        from manifests_shaped where peerDependencies is not null
        """
    )


# ISO 8601 as exports write it: date, time, optional fraction and offset.
# An offset is one the world's clocks use, -12:00 to +14:00 (DuckDB itself takes
# +99:99 and moves the time by four days).
_UTC_OFFSET = r"(Z|[+-]((0\d|1[0-3]):?[0-5]\d|14:?00))"
_ISO_TIMESTAMP = rf"\d{{4}}-\d{{2}}-\d{{2}}[T ]\d{{2}}:\d{{2}}(:\d{{2}}(\.\d+)?)?{_UTC_OFFSET}?"


def _occurred_at(types: dict[str, str] | None) -> str:
    """``occurred_at`` as a naive UTC timestamp: typed, zoned, or ISO 8601 text (NULL
    when the text is not one)."""
    kind = _text_or_typed("occurred_at", types)
    if kind == "TIMESTAMP":
        return "occurred_at"
    if kind.startswith("TIMESTAMP"):  # with time zone, or another unit
        return "cast(timezone('UTC', cast(occurred_at as timestamptz)) as timestamp)"
    text = "trim(cast(occurred_at as varchar))"
    return (
        f"case when regexp_full_match({text}, '{_ISO_TIMESTAMP}') "
        f"then cast(timezone('UTC', try_cast({text} as timestamptz)) as timestamp) end"
    )


def _stage_timed_rows(con: duckdb.DuckDBPyConnection, file: LandingFile, columns: str) -> None:
    """Stage a file of timed rows (CSV or Parquet, one ``occurred_at`` a row): its timestamp
    read the one way (``_occurred_at``), its raw text kept for messages, and ``columns``,
    the kind's other columns as select expressions over ``incoming_raw``."""
    if file.format == "csv":
        _stage_csv_as_text(con, file)
        types, ordinal = None, "rowid + 1"
    else:
        types, ordinal = _stage_parquet(con, file), "ordinal"
    con.execute(
        f"""
        create or replace temp table incoming as
        select {ordinal} as ordinal, {ordinal} as line,
            cast(occurred_at as varchar) as occurred_at_text,
            {_occurred_at(types)} as occurred_at,
            {columns}
        from incoming_raw
        """
    )


def stage_logins(con: duckdb.DuckDBPyConnection, file: LandingFile) -> None:
    _stage_timed_rows(
        con,
        file,
        """trim(cast(username as varchar)) as username,
            trim(cast(second_factor as varchar)) as second_factor,
            trim(cast(outcome as varchar)) as outcome""",
    )


def stage_publishes(con: duckdb.DuckDBPyConnection, file: LandingFile) -> None:
    # An empty CSV cell is no value: nullif, as for a missing token kind.
    _stage_timed_rows(
        con,
        file,
        """trim(cast(package as varchar)) as package,
            trim(cast(username as varchar)) as username,
            trim(cast(via as varchar)) as via,
            nullif(trim(cast(token_kind as varchar)), '') as token_kind,
            trim(cast(second_factor as varchar)) as second_factor""",
    )


STAGERS = {
    "downloads": stage_downloads,
    "manifests": stage_manifests,
    "logins": stage_logins,
    "publishes": stage_publishes,
}
_FORMAT_WORDS = {"csv": "CSV", "parquet": "Parquet", "json": "JSON", "jsonl": "JSON lines"}


def stage(con: duckdb.DuckDBPyConnection, file: LandingFile) -> None:
    """Stage ``file`` as its kind's stager does. What DuckDB meets in a file that the
    stager does not check for first (a Parquet string that is not UTF-8) is ``BadInput``
    with DuckDB's reason: the file is refused, not the run stopped."""
    try:
        STAGERS[file.kind](con, file)
    except duckdb.Error as error:
        raise _parse_error(file, error, _FORMAT_WORDS[file.format]) from error
    except UnicodeDecodeError as error:  # DuckDB's message quoted the file's bytes
        if file.format != "parquet":
            raise _not_utf8(file.path, error.reason) from error
        reason = f"malformed Parquet: not UTF-8 text ({error.reason})"
        raise BadInput(file.path, None, reason) from error


# --- SendGrid delivery events ----------------------------------------------------------

# The fields of an event rollout keeps; SendGrid sends more (ip, useragent, category, ...).
# Each is read as JSON and taken as text whether a string or a number: a custom arg is
# always a string at SendGrid, a timestamp a number, and either may come the other way
# from elsewhere. An array, object or boolean is no value of any field (read as text, it
# would load as its JSON text): the check names it.
EVENT_FIELDS = (
    "sg_event_id",
    "event",
    "timestamp",
    "email",
    "outbox_id",
    "email_name",
    "sg_message_id",
    "type",
    "reason",
    "response",
)


class RefusedPost(ValueError):
    """A post of events that would be refused once landed: the reason."""


def events_in_post(payload: str) -> int:
    """The number of events of a post, or :class:`RefusedPost` with why it would be
    refused once landed: what the Event Webhook receiver refuses before writing the
    file, since a landed file ingest refuses is refused again every day. Not JSON (a key
    twice in one object, nesting deeper than the parser goes), not an array of objects,
    or no events. An event without one of the fields every event has (sg_event_id,
    event, timestamp) is no reason: ingest quarantines it alone and loads the others,
    as it does an event whose fields are bad (refusing the post lost the good events
    beside it, SendGrid retrying it, refused again, for 24 hours)."""
    try:
        events = _loads(payload)
    except _DuplicateKey as error:
        raise RefusedPost(f"the body is not JSON ingest reads: {error}") from None
    except _JSON_ERRORS:
        raise RefusedPost("the body is not a JSON array of events") from None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise RefusedPost("the body is not a JSON array of events")
    if not events:
        raise RefusedPost("the post has no events")
    return len(events)


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


def _events_parse_error(file: LandingFile, error: Exception) -> BadInput:
    """Where an events file breaks its contract (a JSON array of objects, or one object
    a line), found by reading it in Python: DuckDB's message names neither."""
    if file.format == "jsonl":
        return _first_bad_json_line(file) or BadInput(
            file.path, None, f"malformed JSON lines: {error}"
        )
    text = None
    try:
        with open_text(file.path, newline=_JSON_LINES) as handle:
            text = read_document(file.path, handle)
        documents = _json_documents(text)  # (a repeated key named by its object's line)
        array = text.startswith("[", _after_space(text, 0))
    except _JSON_ERRORS as parse_error:
        return _json_refusal(file.path, None, parse_error, text)
    except BadInput as unreadable:  # not UTF-8 (naming its line), or unreadable
        return unreadable
    if not array:
        found = _json_kind(documents[0][1])
        return BadInput(file.path, None, f"expected a JSON array of events, found {found}")
    for position, (line, event) in enumerate(documents, start=1):
        if not isinstance(event, dict):
            return BadInput(
                file.path, line, f"event {position} is {_json_kind(event)}, not an object"
            )
    # DuckDB's own reason, without the tuning advice on the lines after it.
    reason = (str(error).splitlines() or [""])[0]
    return BadInput(file.path, None, f"cannot read the events: {reason}")


_NOT_SCALAR = {"[": "an array", "{": "an object", "t": "a boolean", "f": "a boolean"}


def _not_scalar(field: str) -> str:
    """SQL naming ``field`` when its JSON value is no string or number, else NULL. (DuckDB
    hands a JSON value over minified: its first character says its type, which is
    cheaper to read than json_type's parse.)"""
    kinds = " ".join(f"when '{kind}' then '{words}'" for kind, words in _NOT_SCALAR.items())
    return (
        f"'{field} is ' || (case left({field}::varchar, 1) {kinds} end)"
        " || ', not a string or a number'"
    )


# What the read keeps of each event: its file, the first field that is neither a string
# nor a number (NULL: none), and each field as text.
_EVENT_VALUES = ", ".join(
    [
        "source_path",
        f"coalesce({', '.join(_not_scalar(field) for field in EVENT_FIELDS)}) as shape_problem",
        *(f"{field}->>'$' as {field}" for field in EVENT_FIELDS),
    ]
)


def stage_events(con: duckdb.DuckDBPyConnection, files: list[LandingFile]) -> None:
    """Stage the events of ``files`` (one format, all JSON arrays or all JSON lines) as
    ``incoming``: one row an event, ``file_index`` its file's place in ``files``,
    ``ordinal`` its place among all, ``line`` its place in its file (for a JSON-lines
    file the record number, mapped to the physical line only for a bad one).

    One read for many files: SendGrid posts small batches, and a file at a time cost
    tens of milliseconds each (a day of a big campaign is thousands of files). A file
    that is not what the format says fails the read: ``BadInput`` names it when there
    is one file (the caller splits a batch to find it)."""
    formats = {f.format for f in files}
    assert len(formats) == 1 and files, "one format a batch"
    shape = "array" if files[0].format == "json" else "newline_delimited"
    paths = [duckdb_path(f.path) for f in files]
    try:
        # Outside a transaction the staged table's rowids are the read order: file by
        # file, event by event (DuckDB keeps insertion order).
        con.execute(
            f"create or replace temp table incoming_raw as select {_EVENT_VALUES} "
            "from read_json($paths, format = $shape, columns = $columns, "
            f"filename = 'source_path', {NO_HIVE_PARTITIONS})",
            {"paths": paths, "shape": shape, "columns": dict.fromkeys(EVENT_FIELDS, "JSON")},
        )
    # UnicodeDecodeError: DuckDB's message quoted bytes of the file that are not UTF-8.
    except (duckdb.Error, UnicodeDecodeError) as error:
        if len(files) == 1:
            raise _events_parse_error(files[0], error) from error
        raise BadInput(
            None, None, f"one of {counted(len(files), 'events file')} is unreadable"
        ) from error

    # Typed once into a table: the check and the load each read it (as a view, each
    # read converted all the values again, 0.5 s a million events).
    con.execute(
        """
        create or replace temp table incoming_files as
        with

        listed as (
            select unnest($paths) as source_path, unnest(range(len($paths))) as file_index
        ),

        firsts as (
            select source_path, min(rowid) as first_position from incoming_raw group by all
        )

        select source_path, file_index, first_position from listed join firsts using (source_path)
        """,
        {"paths": paths},
    )
    con.execute(
        r"""
        create or replace temp table incoming as
        select
            raw.rowid + 1 as ordinal,
            files.file_index,
            raw.rowid - files.first_position + 1 as line,
            shape_problem,
            trim(sg_event_id) as sg_event_id,
            trim(event) as event,
            trim(timestamp) as timestamp_text,
            case when regexp_full_match(trim(timestamp), '\d{1,11}')
                then make_timestamp(cast(trim(timestamp) as bigint) * 1000000) end
                as occurred_at,
            -- None for an account event (account_status_change): no recipient.
            nullif(trim(email), '') as email,
            outbox_id as outbox_id_text,
            case when regexp_full_match(trim(outbox_id), '0*[1-9]\d{0,18}')
                then try_cast(trim(outbox_id) as bigint) end as outbox_id,
            email_name,
            sg_message_id,
            type as bounce_type,
            -- A remote server's words: kept to a length a preview or an email can show.
            left(coalesce(reason, response), 1000) as reason
        from incoming_raw as raw
        join incoming_files as files using (source_path)
        """
    )

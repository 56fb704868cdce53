"""Files written whole or not at all: a reader, or a crash, never sees half of one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rollout.core.errors import BadInput


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write ``data`` to a hidden temp file beside ``path`` (:func:`written_in_place`:
    the umask's permissions, as ``open`` gives), flush it to disk, then rename it into
    place (a rename within one directory is atomic)."""
    with written_in_place(path) as temporary, temporary.open("xb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
        out.flush()
        os.fsync(out.fileno())


@contextmanager
def written_in_place(path: Path) -> Iterator[Path]:
    """A hidden temp path beside ``path`` for a writer that takes a path (Arrow's CSV
    and Parquet writers, DuckDB's COPY), renamed into place when the block ends and
    removed if it fails: a landing file is never seen half written, by an ingest
    running meanwhile or after a kill (ingest passes hidden files over). Not flushed
    to disk first, unlike :func:`write_atomically`: these are the sample's and the
    demo's gigabytes, made again by running them again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named, not made: the writer makes it, with the umask's permissions (mkstemp's
    # would be 0600, and the worker reading the landing folder may be another user).
    temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# What a compressed file starts with, by the tool that made it: such a file given where
# text is read (a plan, a file of snooze requests) is said to be compressed, not "not
# UTF-8 text: byte 0x8b" (gzip's second byte).
COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


def compressed_as(data: bytes) -> str | None:
    """The compression ``data`` starts with (``gzip``, ``zstd``, ...), or None."""
    return next((name for magic, name in COMPRESSED_MAGIC if data.startswith(magic)), None)


def utf8_text(path: Path, data: bytes) -> str:
    """``data``, read from ``path``, as UTF-8 text (a byte-order mark skipped, as
    spreadsheets write one), or BadInput naming the line and byte where it is not, or,
    for a compressed file, saying so (decompress it first)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # Only bytes that are not text are taken for a compressed file: a text file that
        # happens to start like one (``BZh``) is read as the text it is.
        compression = compressed_as(data)
        if compression is not None:
            raise BadInput(
                path, None, f"a {compression}-compressed file, not text: decompress it first"
            ) from None
        start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        raise BadInput(
            path,
            line,
            f"not UTF-8 text: byte 0x{data[error.start]:02x} at byte "
            f"{error.start - start + 1} of the line ({error.reason})",
        ) from None


def duckdb_path(path: Path | str) -> str:
    """``path`` as DuckDB must be given it to open that very file. DuckDB reads a
    leading ``~`` as the home folder (``~x/y`` as the home folder's path followed by
    ``x/y``), which Python, and every check rollout makes before DuckDB opens it, does
    not: such a path is made absolute, so both name one file."""
    text = str(path)
    return os.path.abspath(text) if text.startswith("~") else text

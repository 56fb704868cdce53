"""Files written whole or not at all: a reader, or a crash, never sees half of one."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write ``data`` to a hidden temp file beside ``path``, flush it to disk, then
    rename it into place (a rename within one directory is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise


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

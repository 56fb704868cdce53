"""Files written whole or not at all: a reader, or a crash, never sees half of one.

And never seen by everyone. Files rollout writes hold personal data (email addresses,
usernames, who has 2FA), so every file and folder it makes is closed to others: a file
gets the permissions the umask leaves, less every bit for others (0640 under umask 022,
0660 under 002, 0600 under 077), a folder the same (0750, 0770, 0700). The owner and
group are the operator's to choose, with the umask (docs/runbook-operator.md); others
never read. Temporary files are made exclusively, at a name nobody could guess, and a
link already there is never followed."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from rollout.core.errors import BadInput

# Asked for when a file or folder is made; the umask then takes away what it takes away.
# Never a bit for others.
FILE_MODE = 0o660
FOLDER_MODE = 0o770
_OTHERS = stat.S_IRWXO
# The end of every temporary name made here (FileSender.remove_leftovers finds them by it).
TEMP_SUFFIX = ".tmp"


def make_folder(path: Path) -> None:
    """``path`` and each missing folder above it, made closed to others (FOLDER_MODE, less
    the umask; ``Path.mkdir(parents=True)`` makes the ones above with the umask's
    permissions alone). A folder already there is left as it is: its permissions are
    its owner's."""
    path = Path(path)
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    missing.reverse()
    for index, folder in enumerate(missing):
        try:
            folder.mkdir(FOLDER_MODE)
        except FileExistsError:
            if folder.is_dir():
                continue  # made meanwhile by another process
            if index + 1 < len(missing):
                # A file where a folder above ``path`` should be: what making the next
                # one in it says, naming it (as Path.mkdir(parents=True) says it), not
                # "File exists" of a name the caller never asked for.
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(missing[index + 1])
                ) from None
            raise  # ``path`` itself a file, or a link to none: mkdir's own error


def file_in_the_way(folder: Path) -> Path | None:
    """The file standing where ``folder``, or the nearest folder above it that is there,
    should be a folder; None when there is none (the folders missing can be made)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder if folder.exists() and not folder.is_dir() else None


def temp_name(path: Path) -> Path:
    """A hidden name beside ``path`` nobody can guess: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def open_temporary(path: Path) -> tuple[int, Path]:
    """A new temp file beside ``path`` (:func:`temp_name`), open for writing: made by this
    call and no other (``O_EXCL``: a file or link planted at the name is an error, never
    written through), closed to others (FILE_MODE less the umask). Its folder is made if
    missing (:func:`make_folder`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(100):
        temp = temp_name(path)
        try:
            return os.open(temp, flags, FILE_MODE), temp
        except FileNotFoundError:
            if attempt:
                raise
            make_folder(path.parent)
        except NotADirectoryError:
            # A file where the folder (or one above it) should be: os.open names the
            # hidden temporary name, which nobody asked for and which is not there.
            # Said of the file in the way, which is not a directory.
            in_the_way = file_in_the_way(path.parent) or path.parent
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(in_the_way)
            ) from None
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name beside {path.name}")


# A temporary file or private folder no write has touched for this long is a killed
# writer's (a SIGKILL runs no clean-up): a live one is written as it goes, and the
# slowest, a sample's gigabytes, touch theirs every few seconds.
STALE_TEMPORARY_SECONDS = 3600.0


def is_temporary_name(name: str) -> bool:
    """A name :func:`temp_name` or :func:`private_folder_beside` makes:
    ``.<name>.<random>.tmp``."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _last_touched(path: Path) -> float | None:
    """When ``path`` was last written: a folder's newest entry counts (a writer inside
    it changes the file, not the folder). None when it is gone meanwhile."""
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for entry in os.scandir(path):
                with suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return None
    return newest


def stale_temporaries(
    root: Path,
    *,
    below: bool = True,
    older_than: float = STALE_TEMPORARY_SECONDS,
    now: float | None = None,
) -> list[Path]:
    """The temporary files and private folders in ``root`` (and, ``below``, in every
    folder below it, but not inside one of them) no write has touched for
    ``older_than`` seconds: what processes killed mid-write left. Sorted; none when
    ``root`` is not there."""
    found, _ = stale_temporaries_by(root, below=below, older_than=older_than, now=now)
    return found


# How many entries of a folder are read between two looks at the clock.
_ENTRIES_BETWEEN_LOOKS = 1024


def stale_temporaries_by(
    root: Path,
    *,
    below: bool = True,
    older_than: float = STALE_TEMPORARY_SECONDS,
    now: float | None = None,
    deadline: float | None = None,
) -> tuple[list[Path], bool]:
    """:func:`stale_temporaries`, looking until ``deadline`` (``time.monotonic()``) at
    most, even inside one folder of a million files (a file outbox of a season's
    emails): (what was found, sorted; whether every folder was looked through). Links
    are not followed, folders whose names start with a dot not entered."""
    now = time.time() if now is None else now
    found: list[Path] = []
    folders = [Path(root)]
    while folders:
        here = folders.pop()
        try:
            entries = os.scandir(here)
        except OSError:
            continue  # not there, gone meanwhile, unreadable: as os.walk passes it over
        with entries:
            for count, entry in enumerate(entries):
                if (
                    deadline is not None
                    and count % _ENTRIES_BETWEEN_LOOKS == 0
                    and time.monotonic() > deadline
                ):
                    return sorted(found), False
                name = entry.name
                if is_temporary_name(name):
                    touched = _last_touched(here / name)
                    if touched is not None and now - touched > older_than:
                        found.append(here / name)
                elif below and not name.startswith("."):
                    with suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(here / name)
    return sorted(found), True


def remove_stale_temporaries(
    folder: Path, *, older_than: float = STALE_TEMPORARY_SECONDS, now: float | None = None
) -> int:
    """Remove what :func:`stale_temporaries` finds directly in ``folder`` (a writer's
    own folder, before it writes: never a live writer's, by the age rule); a link is
    removed, never followed. Returns how many."""
    removed = 0
    for path in stale_temporaries(folder, below=False, older_than=older_than, now=now):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # removed meanwhile by another writer
            except OSError:
                continue  # a folder made read-only: the writer says so when it writes
        removed += 1
    return removed


def close_to_others(path: Path) -> None:
    """Take every bit for others off ``path``, a file a writer rollout does not control
    made (DuckDB, Arrow: with the umask's permissions); a link is refused, not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & _OTHERS:
            os.fchmod(fd, mode & ~_OTHERS)
    finally:
        os.close(fd)


def open_appending(path: Path) -> IO[str]:
    """``path`` open to append text to (a record of messages, one JSON line each), made
    if missing, closed to others, and its folder too (:func:`make_folder`); a link
    there is refused, not followed."""
    make_folder(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, FILE_MODE), "a", encoding="utf-8")


def write_atomically(path: Path, data: bytes | str, *, sync: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path`` (:func:`open_temporary`: made
    exclusively, closed to others), flush it to disk (unless not ``sync``), then rename
    it into place (a rename within one directory is atomic)."""
    fd, temp = open_temporary(path)
    try:
        try:
            view = memoryview(data.encode() if isinstance(data, str) else data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextmanager
def private_folder_beside(path: Path) -> Iterator[Path]:
    """A new hidden folder beside ``path`` (:func:`temp_name`), only this user's (0700,
    made by ``mkdtemp``: exclusively, a link planted there never followed), removed with
    all it holds when the block ends."""
    make_folder(path.parent)
    folder = Path(tempfile.mkdtemp(suffix=TEMP_SUFFIX, prefix=f".{path.name}.", dir=path.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def written_in_place(path: Path) -> Iterator[Path]:
    """A path for a writer that takes a path (Arrow's CSV and Parquet writers, DuckDB's
    COPY and ATTACH), renamed onto ``path`` when the block ends, and removed if it
    fails: a landing file is never seen half written, by an ingest running meanwhile or
    after a kill (ingest passes hidden files and folders over). The path is inside a
    hidden folder of this user's alone (:func:`private_folder_beside`), so nobody can
    plant a link where the writer writes; what it wrote is closed to others before it
    moves. Not flushed to disk first, unlike :func:`write_atomically`: these are the
    sample's and the demo's gigabytes, made again by running them again."""
    with private_folder_beside(path) as folder:
        temp = folder / path.name
        yield temp
        close_to_others(temp)
        os.replace(temp, path)


def links_outside(path: Path, folder: Path) -> bool:
    """Whether ``path``, found in ``folder``, is a symbolic link to something outside it
    (or to nothing that resolves): a reader of a landing folder reads that folder, not
    what a link there points to anywhere (a link to /proc/self/environ put the process's
    secrets in a refusal's message, which quotes what it read)."""
    if not path.is_symlink():
        return False
    try:
        return not path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except OSError:
        return True


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


MIB = 1 << 20


def read_whole(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a file a user hands rollout to read whole (a plan, a file of snooze
    requests), or ``BadInput`` naming it when it is not one a reader could finish: a
    folder, a pipe (whose reader waits for a writer that may never come), a device
    (``/dev/zero`` never ends), or more than ``limit`` bytes (read no further: a log or
    a warehouse given by mistake filled the memory). ``what`` names the file in the
    reason ("plan"). An ``OSError`` opening or reading it is the caller's to word.

    Opened without blocking, so a pipe is refused rather than waited on; a regular
    file reads as ever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadInput(path, None, f"a folder, not a {what}: name the file in it")
        if not stat.S_ISREG(mode):
            raise BadInput(
                path, None, f"not a regular file (a pipe, a socket or a device), not a {what}"
            )
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BadInput(
            path, None, f"larger than {limit // MIB} MiB, more than any {what} holds: nothing read"
        )
    return data


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


# --- CSV read strictly --------------------------------------------------------------
# Python's csv module, left lenient, reads a quote never closed (`"bob,2`) as one value
# running to the end of the file: a file's last request, or its header, swallowed every
# line below it, refused as a row of 1 value or a header naming none of its columns.
# Read strictly (csv.reader(..., strict=True)), it raises csv.Error; its words are the
# parser's, said here as what is wrong with the file.
_CSV_REASONS = {
    "unexpected end of data": "a quote opened on this line is never closed",
    "',' expected after '\"'": "a quoted value is followed by more text before its comma "
    '(a quote inside a quoted value is written twice: "")',
}


def csv_reason(error: Exception) -> str:
    """Why a CSV file the csv module (strict) refused is not valid CSV, one line."""
    said = str(error)
    return _CSV_REASONS.get(said, f"not valid CSV: {said}")

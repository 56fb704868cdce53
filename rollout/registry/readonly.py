"""Reading a SQLite registry this process may not write.

An analyst given read access (a folder shared read-only, a read-only mount, a snapshot)
must still read the registry: every read-only command does. SQLite opened as usual asks
for write access to the file and makes its ``-wal`` and ``-shm`` files beside it, and
fails ("unable to open database file") where it may not. So a file this process may not
write is opened ``mode=ro``; the registry is in WAL mode, whose readers need the
``-shm`` file: one a writer at work keeps there is read; with none there and none to be
made, the file is opened ``immutable=1`` only when nothing can change it (its file
system's own superblock mounted read-only, on this machine: not a read-only view of a
writable one, a bind mount, nor a network share another machine writes), and otherwise
refused in one line that says why. A writer on such a file is refused in one line
naming the file and why (:func:`read_only_refusal`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from rollout.core.controls import controls_shown, visible
from rollout.core.errors import RolloutError

# File systems another machine (or the host of a virtual machine) may write though this
# one mounts them read-only: never read as immutable.
SHARED_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph")
SHARED_PREFIXES = ("fuse", "gluster", "lustre", "gpfs", "afs", "overlay")

# /proc/self/mountinfo: where this process's mount table is read (a test may point it
# elsewhere).
MOUNTINFO = Path("/proc/self/mountinfo")


def why_read_only(database: str | Path) -> str | None:
    """Why this process may not write the SQLite file ``database`` (and the ``-wal`` and
    ``-shm`` files SQLite writes beside it), or None when it may. A symbolic link is
    followed: SQLite opens the file it names, and writes those files beside that one."""
    path = _opened(database)
    folder = path.parent
    made = path.exists()
    if not made:
        # Still to be made (``db upgrade`` on a new path): in the nearest folder there,
        # where it and the folders between are made.
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    try:
        if os.statvfs(path if made else folder).f_flag & os.ST_RDONLY:
            return f"the file system holding {folder} is mounted read-only"
    except OSError:
        return None  # not to be stat'ed: the open says why
    if made and not os.access(path, os.W_OK):
        return f"{path.name} is not writable for this user"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is not writable for this user"
    return None


def _opened(database: str | Path) -> Path:
    """The file SQLite opens for ``database``, its symbolic links followed: SQLite's
    ``-wal`` and ``-shm`` files are beside it, not beside a link to it."""
    return Path(os.path.realpath(database))


def file_uri(path: str | Path) -> str:
    """``path`` as a SQLite ``file:`` URI without options: absolute, every character
    SQLite's URIs read (``?``, ``#``, ``%``) quoted, so a folder named so stays data."""
    return "file:" + quote(str(Path(path).absolute()), safe="/")


def _unescape(field: str) -> str:
    # mountinfo writes a space, a tab, a line break and a backslash as octal escapes.
    for octal, character in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(octal, character)
    return field


def cannot_change(database: str | Path) -> bool:
    """Whether nothing on this machine can change ``database``: the mount holding it is
    read-only and so is its file system's superblock (no other, writable mount of it),
    and the file system is no network share. False whenever it cannot be told."""
    try:
        real = os.path.realpath(database)
        table = MOUNTINFO.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    best: tuple[int, list[str], list[str]] | None = None
    for line in table:
        mine, _, theirs = line.partition(" - ")
        fields, rest = mine.split(), theirs.split()
        if len(fields) < 6 or len(rest) < 3:
            continue
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fields, rest)
    if best is None:
        return False
    _, fields, (kind, _source, super_options) = best
    if kind in SHARED_FILE_SYSTEMS or kind.startswith(SHARED_PREFIXES):
        return False
    return "ro" in fields[5].split(",") and "ro" in super_options.split(",")


def _in_wal_mode(path: Path) -> bool:
    """Whether the database file's header says WAL (its read and write versions, 2)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def read_only_uri(database: str | Path, reason: str) -> str:
    """The URI to open ``database`` with, read-only, that this process may not write
    (``reason``, from :func:`why_read_only`). RolloutError, one line, when it cannot be
    read at all (WAL mode, no ``-shm`` file there, none to be made, and the file may
    change under the reader)."""
    path = _opened(database)
    uri = file_uri(path)
    shm = path.with_name(path.name + "-shm")
    if not _in_wal_mode(path) or shm.exists():
        return uri + "?mode=ro"
    if cannot_change(path):
        return uri + "?mode=ro&immutable=1"
    raise RolloutError(
        f"{visible(path)}: cannot read the registry: it may not be written here "
        f"({controls_shown(reason)}), and SQLite reads a registry in WAL mode only with its "
        f"{visible(shm.name)} file beside it, which no process has open now and this one "
        "may not make; give this user write access to the folder, or read it on a file "
        "system mounted read-only where nothing writes it, or from a copy "
        '(docs/runbook-operator.md, section 12, "Backups")'
    )


def read_only_refusal(database: str | Path, reason: str) -> RolloutError:
    """The one line a writer on a registry this process may not write is refused with."""
    return RolloutError(
        f"{visible(database)}: this command writes the registry, which may not be "
        f"written here ({controls_shown(reason)}); run it as the registry's operator, where "
        "it may be written. Nothing was changed"
    )


def reading_uri(database: str | Path) -> str:
    """The URI a reader of its own (sqlite3's, ADBC's) opens ``database`` with: read-only,
    as :func:`read_only_uri` says when this process may not write it."""
    reason = why_read_only(database)
    if reason is None:
        return file_uri(_opened(database)) + "?mode=ro"
    return read_only_uri(database, reason)
